# -*- test-case-name: tests.test_keys -*-
"""API keys: where they come from, how a presented key is recognised, what it may do.

Keys come from ``--api-key`` / ``API_KEYS`` and from ``--api-key-file`` (one a line: ``KEY``, or
``NAME:KEY``, ``NAME:KEY:SCOPES`` or ``NAME:KEY:SCOPES:TENANT``, so keys need not appear in ``ps``
output). A key's tenant is whose records it sees; keys without one are tenant ``default``. Only a digest of
each key is kept; a presented key is compared with every digest in constant time. A key is named
in logs and the audit trail by its name, or by a short hash of it, never by the key itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

import attrs

from mcpd.config import read_lines
from mcpd.security.scopes import ADMIN
from mcpd.tools.api import DEFAULT_TENANT

# A key with no scopes listed may do everything.
DEFAULT_SCOPES = frozenset({ADMIN})
_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_SCOPE_SPLIT = re.compile(r"[\s,]+")


class KeyFileError(ValueError):
    """A key file cannot be read or has a bad line; the message names the file and line."""


def digest(key: str) -> bytes:
    """The SHA-256 digest a key is kept and compared as."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def short_hash(key: str) -> str:
    """How an unnamed key is named: ``key-`` and 8 hex digits of its digest."""
    return "key-" + digest(key).hex()[:8]


@attrs.frozen(repr=False)
class APIKey:
    """One configured key: its name, its digest and its scopes."""

    name: str
    digest: bytes
    scopes: frozenset[str] = DEFAULT_SCOPES
    tenant: str = DEFAULT_TENANT

    def __repr__(self) -> str:
        return f"APIKey(name={self.name!r}, scopes={sorted(self.scopes)!r}, tenant={self.tenant!r})"

    @classmethod
    def from_secret(
        cls, key: str, name: str | None = None, scopes: Iterable[str] = (), tenant: str = DEFAULT_TENANT
    ) -> APIKey:
        """A key from its secret; unnamed keys are named by `short_hash`."""
        if not key or any(c.isspace() for c in key):
            raise ValueError("an API key must be non-empty and contain no whitespace")
        return cls(name or short_hash(key), digest(key), frozenset(scopes) or DEFAULT_SCOPES, tenant)


class KeyRing:
    """The configured keys; `find` recognises a presented key."""

    def __init__(self, keys: Iterable[APIKey] = ()) -> None:
        self.keys = tuple(keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, presented: str) -> APIKey | None:
        """The key ``presented`` is, compared in constant time with every configured key."""
        candidate = digest(presented)
        found = None
        for key in self.keys:
            # No early exit: the time taken does not depend on which key matched.
            if hmac.compare_digest(candidate, key.digest):
                found = key
        return found


def parse_scopes(text: str) -> frozenset[str]:
    """Scopes written comma- or space-separated."""
    return frozenset(part for part in _SCOPE_SPLIT.split(text.strip()) if part)


def parse_key_line(line: str) -> APIKey | None:
    """One line of a key file (None for blank and comment lines); `ValueError` if malformed."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    fields = line.split(":")
    if len(fields) == 1:
        return APIKey.from_secret(fields[0])
    if len(fields) > 4:
        raise ValueError("expected KEY, NAME:KEY, NAME:KEY:SCOPES or NAME:KEY:SCOPES:TENANT")
    name, key = fields[0].strip(), fields[1].strip()
    if not _NAME.match(name):
        raise ValueError(f"key name {name!r} must be 1-64 characters of A-Z a-z 0-9 . _ @ -")
    scopes = parse_scopes(fields[2]) if len(fields) >= 3 else frozenset()
    tenant = fields[3].strip() if len(fields) == 4 else DEFAULT_TENANT
    if not _NAME.match(tenant):
        raise ValueError(f"tenant {tenant!r} must be 1-64 characters of A-Z a-z 0-9 . _ @ -")
    return APIKey.from_secret(key, name, scopes, tenant)


def read_key_file(path: str) -> list[APIKey]:
    """Every key of a key file; `KeyFileError` naming the line that is wrong (not the key)."""
    keys = []
    for number, line in read_lines(path, "--api-key-file", KeyFileError):
        try:
            key = parse_key_line(line)
        except ValueError as e:
            raise KeyFileError(f"--api-key-file {path} line {number}: {e}") from None
        if key is not None:
            keys.append(key)
    names = [key.name for key in keys]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise KeyFileError(f"--api-key-file {path}: key names used twice: {', '.join(duplicated)}")
    return keys


def load_keys(secrets: Iterable[str], key_file: str | None) -> KeyRing:
    """The key ring from ``--api-key`` / ``API_KEYS`` values and the key file, if any."""
    keys = [APIKey.from_secret(secret) for secret in secrets]
    if key_file:
        keys.extend(read_key_file(key_file))
    return KeyRing(keys)
