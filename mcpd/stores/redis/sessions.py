# -*- test-case-name: tests.test_redis_stores -*-
"""Legacy session records in Redis (`ISessionStore`), so that a session's requests may land on
any instance. A record lives ``ttl`` seconds after it was last saved or touched (the idle
timeout of sessions), so one that no instance serves any more goes away by itself; a sorted set
of expiry times counts the live ones. Deleting a record leaves a tombstone for as long, which
refuses saving it again: an instance that missed the session's end (its "ended" message lost)
cannot bring it back."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from zope.interface import implementer

from mcpd.interfaces import ISessionStore, SessionRecord

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from mcpd.stores.redis.connection import RedisConnection

# KEYS: the record, the index, its tombstone. ARGV: JSON, ttl ms, expiry time. Answers 0 if
# the session was deleted (its tombstone is there), else 1.
SAVE = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
return 1
"""
# KEYS: the record, the index. ARGV: ttl ms, expiry time. Answers 1 if the record is kept.
TOUCH = """
if redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], KEYS[1])
return 1
"""
# KEYS: the record, the index, its tombstone. ARGV: ttl ms. Answers 1 if it was kept.
DELETE = """
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[1])
return redis.call('DEL', KEYS[1])
"""
# KEYS: the index. ARGV: now. Answers how many records are live.
COUNT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZCARD', KEYS[1])
"""


@implementer(ISessionStore)
class RedisSessionStore:
    """Session records shared by every instance using the same Redis; ``kind`` keeps the
    transports' sessions apart (``streamable``, ``sse``), as their ids never cross."""

    def __init__(self, connection: RedisConnection, clock: IReactorTime, ttl: float, kind: str = "streamable") -> None:
        self.connection = connection
        self.clock = clock
        self.ttl = ttl
        self._index = connection.key("sessions", kind)
        self._prefix = connection.key("session", kind, "")
        self._tombstones = connection.key("ended", kind, "")

    def _keys(self, session_id: str) -> list[str]:
        return [self._prefix + session_id, self._index]

    def _expiry(self) -> str:
        return repr(self.clock.seconds() + self.ttl)

    def _ttl_ms(self) -> str:
        return str(int(self.ttl * 1000))

    def save(self, record: SessionRecord) -> Deferred[bool]:
        data = json.dumps(record.to_json(), separators=(",", ":"))
        keys = [*self._keys(record.session_id), self._tombstones + record.session_id]
        d = self.connection.eval(SAVE, keys, [data, self._ttl_ms(), self._expiry()])
        return d.addCallback(lambda saved: bool(int(saved)))

    def load(self, session_id: str) -> Deferred[SessionRecord | None]:
        d = self.connection.execute("GET", self._prefix + session_id)
        return d.addCallback(lambda data: SessionRecord.from_json(json.loads(data)) if data else None)

    def touch(self, session_id: str) -> Deferred[bool]:
        d = self.connection.eval(TOUCH, self._keys(session_id), [self._ttl_ms(), self._expiry()])
        return d.addCallback(lambda kept: bool(int(kept)))

    def delete(self, session_id: str) -> Deferred[bool]:
        keys = [*self._keys(session_id), self._tombstones + session_id]
        return self.connection.eval(DELETE, keys, [self._ttl_ms()]).addCallback(lambda n: bool(int(n)))

    def count(self) -> Deferred[int]:
        return self.connection.eval(COUNT, [self._index], [repr(self.clock.seconds())]).addCallback(int)
