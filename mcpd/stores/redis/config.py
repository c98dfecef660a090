# -*- test-case-name: tests.test_redis -*-
"""Where Redis is and how to reach it: the URL's parts (its password kept out of logs and
server.info), TLS, the timeout and the key prefix."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import attrs

DEFAULT_PORT = 6379


class RedisConfigError(ValueError):
    """The Redis settings cannot be used; the message names the setting."""


@attrs.frozen
class RedisConfig:
    """How to reach one Redis server (database ``db``), and what to put before every key."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    tls: bool = False
    # PEM CA certificates a rediss:// server is checked against (None: the system's).
    ca_file: str | None = None
    # Seconds to connect, or to wait for one answer.
    timeout: float = 2.0
    prefix: str = "mcpd:"

    @property
    def shown_url(self) -> str:
        """The URL as logs and server.info show it: never the password."""
        scheme = "rediss" if self.tls else "redis"
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{user}{host}:{self.port}/{self.db}"


def redis_config(
    url: str,
    password: str | None = None,
    ca_file: str | None = None,
    timeout: float = 2.0,
    prefix: str = "mcpd:",
) -> RedisConfig:
    """The `RedisConfig` of ``--redis-url`` (``redis[s]://[USER[:PASSWORD]@]HOST[:PORT][/DB]``,
    or ``?db=N``); ``password`` (REDIS_PASSWORD or its file) wins over one in the URL."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or DEFAULT_PORT
    except ValueError as e:
        raise RedisConfigError(f"--redis-url: {e} (expected redis://HOST:6379/DB)") from None
    if parts.scheme not in ("redis", "rediss"):
        raise RedisConfigError("--redis-url: must start redis:// or rediss:// (TLS)")
    if not parts.hostname:
        raise RedisConfigError("--redis-url: name the host, redis://HOST:6379/DB")
    db_text = parts.path.strip("/") or parse_qs(parts.query).get("db", ["0"])[0]
    if not db_text.isdigit():
        raise RedisConfigError(f"--redis-url: the database must be a number (redis://HOST:6379/0), not {db_text!r}")
    return RedisConfig(
        host=parts.hostname,
        port=port,
        db=int(db_text),
        username=unquote(parts.username) if parts.username else None,
        password=password if password is not None else (unquote(parts.password) if parts.password else None),
        tls=parts.scheme == "rediss",
        ca_file=ca_file,
        timeout=timeout,
        prefix=prefix,
    )
