# -*- test-case-name: tests.test_cache -*-
"""The cache pack's keys in Redis (`ICache`).

A key of tenant T is ``<prefix>cache:<T percent-encoded>:<key>``: the encoded tenant has no
``:`` and no glob character, so the tenant part of a name is a literal prefix no other tenant's
names start with, and a scan's MATCH (that prefix, then the caller's pattern) never reaches
another tenant's keys, whatever the pattern. Every key is written with a TTL.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from twisted.internet.defer import Deferred, inlineCallbacks
from zope.interface import implementer

from mcpd.interfaces import ICache, NotAnInteger, StoreError
from mcpd.stores.memory import CACHE_DEFAULT_TTL, CACHE_MAX_TTL, CACHE_MAX_VALUE, is_cache_key

if TYPE_CHECKING:
    from mcpd.stores.redis.connection import RedisConnection

# KEYS[1]: the key. Answers {value or false, milliseconds left}.
GET = "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}"
# KEYS[1]: the key. ARGV: by, ttl ('' to keep the key's own), default ttl. Answers {'ok', value}
# or {'error', message}. The value is the key's string as stored: INCRBY's reply reaches Lua as a
# double, so it loses digits beyond 2^53 and tostring() writes 10^14 as '1e+14'.
INCR = """
local value = redis.pcall('INCRBY', KEYS[1], ARGV[1])
if type(value) == 'table' and value.err then return {'error', value.err} end
if ARGV[2] ~= '' then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
elseif redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return {'ok', redis.call('GET', KEYS[1])}
"""
# SCAN round trips one call may make, and how many slots one SCAN may look at, at most.
MAX_ROUND_TRIPS = 16
MAX_COUNT = 1000


@implementer(ICache)
class RedisCache:
    """`ICache` on Redis (see the module docstring)."""

    def __init__(
        self,
        connection: RedisConnection,
        default_ttl: int = CACHE_DEFAULT_TTL,
        max_ttl: int = CACHE_MAX_TTL,
        max_value: int = CACHE_MAX_VALUE,
    ) -> None:
        self.connection = connection
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.max_value = max_value

    def _namespace(self, tenant: str) -> str:
        return self.connection.key("cache", quote(tenant, safe="")) + ":"

    def get(self, tenant: str, key: str) -> Deferred[tuple[str | None, int | None]]:
        d = self.connection.eval(GET, [self._namespace(tenant) + key], [])

        def found(answer: list[Any]) -> tuple[str | None, int | None]:
            value, left_ms = answer[0] if answer else None, int(answer[1]) if len(answer) > 1 else -2
            if value is None or left_ms == -2:
                return None, None
            return value, -(-left_ms // 1000) if left_ms >= 0 else None

        return d.addCallback(found)

    def set(self, tenant: str, key: str, value: str, ttl: int) -> Deferred[None]:
        d = self.connection.execute("SET", self._namespace(tenant) + key, value, "EX", str(ttl))
        return d.addCallback(lambda _: None)

    def delete(self, tenant: str, key: str) -> Deferred[bool]:
        return self.connection.execute("DEL", self._namespace(tenant) + key).addCallback(lambda n: int(n) > 0)

    def incr(self, tenant: str, key: str, by: int, ttl: int | None) -> Deferred[int]:
        args = [str(by), "" if ttl is None else str(ttl), str(self.default_ttl)]
        d = self.connection.eval(INCR, [self._namespace(tenant) + key], args)

        def added(answer: list[Any]) -> int:
            if answer[0] == "error":
                if "overflow" in str(answer[1]):
                    raise NotAnInteger(f"adding {by} to {key!r} would leave the 64-bit integer range")
                raise NotAnInteger(f"{key!r} holds no integer: cache.incr adds to a key holding an integer (or none)")
            return int(answer[1])

        return d.addCallback(added)

    @inlineCallbacks
    def scan(self, tenant: str, pattern: str, limit: int, position: Any) -> Generator[Any, Any, tuple[list[str], Any]]:
        """SCAN with MATCH, as many round trips as a page needs (at most `MAX_ROUND_TRIPS`). The
        position is Redis' cursor and the keys of its last batch that did not fit in the page,
        so none is lost between pages."""
        namespace = self._namespace(tenant)
        cursor, pending = "0", []
        if position is not None:
            # A cursor's position is the client's to forge: never hand Redis what it refuses.
            if not isinstance(position, dict):
                raise StoreError("cursor is not one this server gave out: call again without cursor")
            cursor, pending = str(position.get("c", "0")), position.get("k", [])
            if not _is_redis_cursor(cursor) or not (
                isinstance(pending, list) and all(is_cache_key(key) for key in pending)
            ):
                raise StoreError("cursor is not one this server gave out: call again without cursor")
        keys, pending = pending[:limit], pending[limit:]
        if position is not None and cursor == "0":  # Redis' scan is over: only what was pending
            return keys, {"c": "0", "k": pending} if pending else None
        count = max(10, limit)
        for _trip in range(MAX_ROUND_TRIPS):
            if len(keys) >= limit:
                break
            answer = yield self.connection.execute("SCAN", cursor, "MATCH", namespace + pattern, "COUNT", str(count))
            cursor = str(answer[0])
            names = [name[len(namespace) :] for name in answer[1] or [] if name.startswith(namespace)]
            room = limit - len(keys)
            keys, pending = keys + names[:room], pending + names[room:]
            if cursor == "0":
                break
            if not names:  # a sparse tenant among many keys: look at more slots a trip
                count = min(MAX_COUNT, count * 2)
        return keys, None if cursor == "0" and not pending else {"c": cursor, "k": pending}


def _is_redis_cursor(text: str) -> bool:
    """Whether SCAN takes ``text`` as its cursor: the ASCII digits of an unsigned 64-bit number."""
    return 0 < len(text) <= 20 and text.isascii() and text.isdigit() and int(text) < 2**64
