# -*- test-case-name: tests.test_redis_stores -*-
"""Legacy session records in Redis (`ISessionStore`), so that a session's requests may land on
any instance. A record lives ``ttl`` seconds after it was last saved or touched (the idle
timeout of sessions), so one that no instance serves any more goes away by itself; a sorted set
of expiry times counts the live ones. Deleting a record leaves a tombstone for as long, which
refuses saving it again: an instance that missed the session's end (its "ended" message lost)
cannot bring it back.

A record is a hash: what the handshake fixed as JSON (field ``r``), and the state its requests
change, one field each (``level``, ``tenant``, ``sub:<uri>``, and ``subs`` counting the URIs),
so that instances changing it at once (a subscribe through one, a setLevel through another)
never undo each other's change."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults
from zope.interface import implementer

from mcpd.interfaces import ISessionStore, SessionRecord, StoreFull

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from mcpd.stores.redis.connection import RedisConnection


def _prune(ttl_ms: str, expiry: str, index: str = "KEYS[2]") -> str:
    """Lua dropping from the ``index`` a bounded number of records expired before now (the
    new ``expiry`` less ``ttl_ms``, both ARGV items): each save or touch prunes a few, so the
    index stays about the size of the live records."""
    return f"""
local now = tonumber({expiry}) - tonumber({ttl_ms}) / 1000
local gone = redis.call('ZRANGEBYSCORE', {index}, '-inf', now, 'LIMIT', 0, 16)
if #gone > 0 then redis.call('ZREM', {index}, unpack(gone)) end
"""


# KEYS: the record, the index, its tombstone. ARGV: JSON, ttl ms, expiry time, then the state's
# fields and values. Answers 0 if the session was deleted (its tombstone is there), else 1.
SAVE = (
    _prune("ARGV[2]", "ARGV[3]")
    + """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'r', ARGV[1], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
return 1
"""
)
# KEYS: the record. ARGV: the most URIs it may follow ("": no bound), the field to drop ("":
# none), the fields to set, as many values. Answers 0 when no record is kept (a change never
# brings one back), 2 (changing nothing) when a new URI would pass the bound, else 1. Field
# ``subs`` counts the URIs.
UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cap, drop = tonumber(ARGV[1]), ARGV[2]
local n = (#ARGV - 2) / 2
local added = 0
for i = 3, 2 + n do
  if string.sub(ARGV[i], 1, 4) == 'sub:' and redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then added = added + 1 end
end
local subs = tonumber(redis.call('HGET', KEYS[1], 'subs') or '0')
if cap and added > 0 and subs + added > cap then return 2 end
for i = 3, 2 + n do redis.call('HSET', KEYS[1], ARGV[i], ARGV[n + i]) end
if drop ~= '' and redis.call('HDEL', KEYS[1], drop) == 1 then subs = subs - 1 end
redis.call('HSET', KEYS[1], 'subs', subs + added)
return 1
"""
# KEYS: the record, the index. ARGV: ttl ms, expiry time. Answers 1 if the record is kept.
TOUCH = (
    _prune("ARGV[1]", "ARGV[2]")
    + """
if redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], KEYS[1])
return 1
"""
)
# KEYS: the index, then the records. ARGV: ttl ms, expiry time. Answers, for each record, 1 if
# it is kept, else 0.
TOUCH_MANY = (
    _prune("ARGV[1]", "ARGV[2]", "KEYS[1]")
    + """
local kept = {}
for i = 2, #KEYS do
  if redis.call('PEXPIRE', KEYS[i], ARGV[1]) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[2], KEYS[i])
    kept[i - 1] = 1
  else
    kept[i - 1] = 0
  end
end
return kept
"""
)
# How many records one TOUCH_MANY keeps: a script runs alone in Redis, so a long one would
# hold up every other client (about 1 µs a record).
TOUCH_BATCH = 500
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


# The record's fields kept apart from its JSON, by their field in the hash; a URI subscribed to
# is a field of its own.
_STATE = {"log_level": "level", "subscriptions_tenant": "tenant"}
_SUB = "sub:"
# How many URIs it follows (bounded by `update`'s ``cap``).
_COUNT = "subs"


def _pairs(fields: list[str], values: list[str]) -> list[str]:
    """SAVE's arguments: field, value, field, value…"""
    return [item for pair in zip(fields, values, strict=True) for item in pair]


def _record(reply: Any) -> SessionRecord | None:
    """A record from its hash (HGETALL's answer: a flat list, or a mapping)."""
    if not reply:
        return None
    fields = dict(reply) if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=False))
    if "r" not in fields:
        return None
    data = json.loads(fields["r"])
    for name, field in _STATE.items():
        data[name] = fields.get(field)
    data["subscriptions"] = sorted(field[len(_SUB) :] for field in fields if field.startswith(_SUB))
    return SessionRecord.from_json(data)


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
        fixed = record.to_json()
        state = [_SUB + uri for uri in fixed.pop("subscriptions")]
        values = ["1"] * len(state)
        state, values = [*state, _COUNT], [*values, str(len(state))]
        for name, field in _STATE.items():
            value = fixed.pop(name)
            if value is not None:
                state.append(field)
                values.append(value)
        keys = [*self._keys(record.session_id), self._tombstones + record.session_id]
        data = json.dumps(fixed, separators=(",", ":"))
        d = self.connection.eval(SAVE, keys, [data, self._ttl_ms(), self._expiry(), *_pairs(state, values)])
        return d.addCallback(lambda saved: bool(int(saved)))

    def load(self, session_id: str) -> Deferred[SessionRecord | None]:
        return self.connection.execute("HGETALL", self._prefix + session_id).addCallback(_record)

    def update(
        self,
        session_id: str,
        log_level: str | None = None,
        subscribe: str | None = None,
        unsubscribe: str | None = None,
        tenant: str | None = None,
        cap: int | None = None,
    ) -> Deferred[bool]:
        sets = [
            ("level", log_level),
            ("tenant", tenant),
            (_SUB + (subscribe or ""), None if subscribe is None else "1"),
        ]
        fields = [field for field, value in sets if value is not None]
        values = [value for _field, value in sets if value is not None]
        drop = _SUB + unsubscribe if unsubscribe is not None else ""
        bound = "" if cap is None else str(cap)
        d = self.connection.eval(UPDATE, [self._prefix + session_id], [bound, drop, *fields, *values])
        return d.addCallback(self._updated, session_id, cap)

    def _updated(self, answer: Any, session_id: str, cap: int | None) -> bool:
        if int(answer) == 2:
            raise StoreFull(f"session {session_id} follows {cap} resources, its most", cap or 0)
        return bool(int(answer))

    def touch(self, session_id: str) -> Deferred[bool]:
        d = self.connection.eval(TOUCH, self._keys(session_id), [self._ttl_ms(), self._expiry()])
        return d.addCallback(lambda kept: bool(int(kept)))

    def touch_many(self, session_ids: list[str]) -> Deferred[list[bool]]:
        """`touch` for many records, in one script per `TOUCH_BATCH`."""
        args = [self._ttl_ms(), self._expiry()]
        batches = [
            self.connection.eval(
                TOUCH_MANY, [self._index, *(self._prefix + s for s in session_ids[i : i + TOUCH_BATCH])], args
            )
            for i in range(0, len(session_ids), TOUCH_BATCH)
        ]
        d = gatherResults(batches, consumeErrors=True)
        d.addErrback(lambda failure: failure.value.subFailure)  # a FirstError: what failed
        return d.addCallback(lambda replies: [bool(int(kept)) for reply in replies for kept in reply or ()])

    def delete(self, session_id: str) -> Deferred[bool]:
        keys = [*self._keys(session_id), self._tombstones + session_id]
        return self.connection.eval(DELETE, keys, [self._ttl_ms()]).addCallback(lambda n: bool(int(n)))

    def count(self) -> Deferred[int]:
        return self.connection.eval(COUNT, [self._index], [repr(self.clock.seconds())]).addCallback(int)
