# -*- test-case-name: tests.test_settings -*-
"""How a knob's text becomes its value: each parser returns the value or raises `ValueError`
with a message that completes "--flag: ..." (the caller adds where the value came from)."""

from __future__ import annotations

import ipaddress
import re


def port(raw: str) -> int:
    """A TCP port number, 1 to 65535."""
    value = positive_int(raw)
    if value > 65535:
        raise ValueError("must be a TCP port number from 1 to 65535")
    return value


def positive_int(raw: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"must be a whole number, not {raw!r}") from None
    if value < 1:
        raise ValueError(f"must be at least 1, not {value}")
    return value


def percent(raw: str) -> int:
    """A percentage from 1 to 100."""
    value = positive_int(raw)
    if value > 100:
        raise ValueError(f"must be a percentage from 1 to 100, not {value}")
    return value


def seconds(raw: str) -> float:
    """A number of seconds, more than 0."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"must be a number of seconds, not {raw!r}") from None
    if not value > 0:  # also refuses nan
        raise ValueError(f"must be more than 0 seconds, not {value}")
    return value


def names(raw: str) -> tuple[str, ...]:
    """Comma-separated names, blanks dropped."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def text(raw: str) -> str:
    """Any text, as given."""
    return raw


def boolean(raw: str) -> bool:
    """1/0, true/false, yes/no, on/off (an empty value is false)."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"must be 1 or 0 (true or false), not {raw!r}")


def audit_choice(raw: str) -> str:
    """``all`` or ``refusals``."""
    value = raw.strip().lower()
    if value not in ("all", "refusals"):
        raise ValueError(f"must be all or refusals, not {raw!r}")
    return value


def state_key(raw: str) -> str:
    """A secret of at least 32 characters."""
    if len(raw) < 32:
        raise ValueError(f"must be at least 32 characters (it signs requestState), not {len(raw)}")
    return raw


def log_format(raw: str) -> str:
    """``text`` or ``json``."""
    value = raw.strip().lower()
    if value not in ("text", "json"):
        raise ValueError(f"must be text or json, not {raw!r}")
    return value


def networks(raw: str) -> tuple[str, ...]:
    """Comma-separated IP addresses or CIDR ranges (IPv4 or IPv6)."""
    entries = names(raw)
    for entry in entries:
        try:
            ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR range") from None
    return entries


def count(raw: str) -> int:
    """A whole number of 0 or more."""
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"must be a whole number, not {raw!r}") from None
    if value < 0:
        raise ValueError(f"must be 0 or more, not {value}")
    return value


def milvus_uri(raw: str) -> str:
    """A Milvus server URL, or a Milvus Lite file (.db)."""
    value = raw.strip()
    if value.startswith(("http://", "https://", "tcp://", "unix:")) or value.endswith(".db"):
        return value
    raise ValueError(
        f"must be a Milvus server URL (http://host:19530) or a Milvus Lite file ending in .db, not {raw!r}"
    )


def index_prefix(raw: str) -> str:
    """A prefix of Milvus collection names: letters, digits and underscores."""
    value = raw.strip()
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", value):
        raise ValueError(f"{raw!r}: a letter or '_' then letters, digits or '_' (at most 64)")
    return value


def http_url(raw: str) -> str:
    """An http:// or https:// URL."""
    from urllib.parse import urlsplit

    value = raw.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http:// or https:// URL, not {raw!r}")
    return value


def embedding_api(raw: str) -> str:
    """``openai`` or ``ollama``."""
    value = raw.strip().lower()
    if value not in ("openai", "ollama"):
        raise ValueError(f"must be openai or ollama, not {raw!r}")
    return value


def db_url(raw: str) -> str:
    scheme = raw.partition(":")[0].lower()
    if not (scheme.startswith("sqlite") or scheme.startswith("mysql") or scheme.startswith("mariadb")):
        raise ValueError(f"must be a sqlite:/// or mysql+pymysql:// URL, not one starting {scheme + ':'!r}")
    return raw


def redis_url(raw: str) -> str:
    """A redis:// or rediss:// URL (checked in full by `mcpd.stores.redis.config`)."""
    scheme = raw.partition(":")[0].lower()
    if scheme not in ("redis", "rediss"):
        raise ValueError(f"must be a redis:// or rediss:// URL, not one starting {scheme + ':'!r}")
    return raw


def redis_prefix(raw: str) -> str:
    """Printable ASCII with no spaces or glob characters (it prefixes keys a scan matches)."""
    if any(not (33 <= ord(c) < 127) or c in "*?[]\\" for c in raw):
        raise ValueError(f"must be printable ASCII without spaces or * ? [ ] \\, not {raw!r}")
    return raw


# A URL's password (scheme://user:PASSWORD@host), never echoed in an error.
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_SOURCE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
# Entries of SQL_SOURCES / SQL_PASSWORD_FILES are separated by blanks or commas before NAME=.
_NEXT_ENTRY = re.compile(r"[\s,]+(?=[A-Za-z][A-Za-z0-9_-]{0,63}=)")


def named_values(raw: str) -> tuple[tuple[str, str], ...]:
    """``NAME=VALUE`` entries (several separated by blanks or commas); a name is a letter, then
    letters, digits, ``_`` or ``-``."""
    entries = []
    for entry in _NEXT_ENTRY.split(raw.strip()):
        name, sep, value = entry.partition("=")
        if not sep or not value.strip():
            shown = _URL_PASSWORD.sub(r"\1***@", entry)
            raise ValueError(f"must be NAME=VALUE, not {shown!r}")
        if ":" in name or "/" in name:  # a URL with = in it, not a name: never echoed
            raise ValueError("must be NAME=VALUE, a name first (--sql-source shop=mysql+pymysql://…)")
        if not _SOURCE_NAME.match(name):
            raise ValueError(f"{name!r} is not a name (a letter, then letters, digits, _ or -; at most 64)")
        entries.append((name, value.strip()))
    return tuple(entries)


def sql_sources(raw: str) -> tuple[tuple[str, str], ...]:
    """``NAME=URL`` entries naming SQLite or MySQL/MariaDB databases."""
    entries = named_values(raw)
    for name, url in entries:
        try:
            db_url(url)
        except ValueError as e:
            raise ValueError(f"source {name}: {e}") from None
    return entries
