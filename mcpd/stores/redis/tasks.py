# -*- test-case-name: tests.test_redis_stores -*-
"""Task records in Redis (`ITaskStore`), so that any instance can answer ``tasks/get``,
``tasks/result`` and ``tasks/list``.

Each record is a JSON string under ``task:ID`` with a Redis TTL (its own TTL and a margin, so a
record outlives no deployment that forgot it); sorted sets index the records by age, by deadline
(``created + ttl``), the finished ones by age, and each owner's by age. Every change that touches
more than one key is one Lua script, so instances never see half of one. Capacity is counted
over all instances.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from mcpd.interfaces import ITaskStore, StoreFull, TaskRecord
from mcpd.stores.memory import TASK_CAPACITY

if TYPE_CHECKING:
    from mcpd.stores.redis.connection import RedisConnection

# Seconds a record stays in Redis past its TTL: instances expire records themselves at the TTL
# (`expire`, `add`); Redis' own TTL only cleans up after a deployment that went away.
REDIS_TTL_MARGIN = 300

# Shared by the scripts: a task has ended (or is forgotten): out of its runner's running set.
_ENDED = """
local function ended(p, id)
  local runner = redis.call('HGET', p .. 'tasks:runner', id)
  if runner then
    redis.call('SREM', p .. 'tasks:running:' .. runner, id)
    redis.call('HDEL', p .. 'tasks:runner', id)
  end
end
"""

# Shared by the scripts: forget one task everywhere; its JSON, or false.
_FORGET = (
    _ENDED
    + """
local p = ARGV[1]
local function forget(id)
  local key = p .. 'task:' .. id
  local data = redis.call('GET', key)
  local owner = redis.call('HGET', p .. 'tasks:owners', id)
  redis.call('DEL', key)
  redis.call('ZREM', p .. 'tasks', id)
  redis.call('ZREM', p .. 'tasks:deadline', id)
  redis.call('ZREM', p .. 'tasks:finished', id)
  redis.call('HDEL', p .. 'tasks:owners', id)
  if owner then redis.call('ZREM', p .. 'tasks:owner:' .. owner, id) end
  ended(p, id)
  return data
end
local function expire(now, into)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', p .. 'tasks:deadline', '-inf', now)) do
    local data = forget(id)
    if data then table.insert(into, data) end
  end
end
"""
)

# ARGV: prefix, now, capacity, id, json, owner, created, deadline or '', finished '1'/'0',
# Redis TTL in ms or '', runner or ''. Answers {'ok', dropped...} or {'full', count}. A running
# task of a runner is in that runner's set (``tasks:running:<runner>``, the runners in
# ``tasks:runners``) until it ends, so the sweep finds a gone runner's tasks without reading all.
ADD = (
    _FORGET
    + """
local now, capacity, id, data, owner = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local created, deadline, finished, ttl, runner = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local dropped = {'ok'}
expire(now, dropped)
if redis.call('ZCARD', p .. 'tasks') >= capacity then
  local oldest = redis.call('ZRANGE', p .. 'tasks:finished', 0, 0)[1]
  if not oldest then return {'full', redis.call('ZCARD', p .. 'tasks')} end
  local gone = forget(oldest)
  if gone then table.insert(dropped, gone) end
end
if ttl ~= '' then
  redis.call('SET', p .. 'task:' .. id, data, 'PX', ttl)
else
  redis.call('SET', p .. 'task:' .. id, data)
end
redis.call('ZADD', p .. 'tasks', created, id)
if deadline ~= '' then redis.call('ZADD', p .. 'tasks:deadline', deadline, id) end
if finished == '1' then redis.call('ZADD', p .. 'tasks:finished', created, id) end
redis.call('HSET', p .. 'tasks:owners', id, owner)
redis.call('ZADD', p .. 'tasks:owner:' .. owner, created, id)
if runner ~= '' and finished ~= '1' then
  redis.call('HSET', p .. 'tasks:runner', id, runner)
  redis.call('SADD', p .. 'tasks:running:' .. runner, id)
  redis.call('SADD', p .. 'tasks:runners', runner)
end
return dropped
"""
)

# ARGV: prefix, id, json, created, finished '1'/'0', status. Replaces a kept record (its TTL
# kept), unless that one has ended with another status: the first terminal status stays (an
# instance that wrongly took a task's runner for gone must not turn its result into a cancel,
# nor a late cancel into a result). Answers 1 (saved), 0 (not kept) or the kept JSON (refused).
SAVE = (
    _ENDED
    + """
local p, id, data, created, finished, status = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local kept = redis.call('GET', p .. 'task:' .. id)
if not kept then return 0 end
local was = cjson.decode(kept)['status']
if (was == 'completed' or was == 'failed' or was == 'cancelled') and was ~= status then return kept end
redis.call('SET', p .. 'task:' .. id, data, 'KEEPTTL')
if finished == '1' then
  redis.call('ZADD', p .. 'tasks:finished', created, id)
  ended(p, id)
end
return 1
"""
)

# ARGV: prefix, id, json, created, key of the runner's registry entry. Ends a task whose runner
# is gone with the record given (a failure), unless it has ended already or the runner's entry
# is there: 1 settled, 0 its runner is alive, -1 not kept or ended already. One script, so the
# check and the change are one step and only the first instance to see the runner gone settles.
SETTLE = (
    _ENDED
    + """
local p, id, data, created, entry = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local kept = redis.call('GET', p .. 'task:' .. id)
if not kept then return -1 end
local was = cjson.decode(kept)['status']
if was == 'completed' or was == 'failed' or was == 'cancelled' then return -1 end
if redis.call('EXISTS', entry) == 1 then return 0 end
redis.call('SET', p .. 'task:' .. id, data, 'KEEPTTL')
redis.call('ZADD', p .. 'tasks:finished', created, id)
ended(p, id)
return 1
"""
)

# ARGV: prefix, prefix of the registry's keys, this instance. Answers the JSON of the running
# records whose runner (another instance) has no registry entry: the orphans. Reads one set
# per runner while the runners live (runners without running tasks leave ``tasks:runners``).
ORPHANS = (
    _FORGET
    + """
local entries, me = ARGV[2], ARGV[3]
local found = {}
for _, runner in ipairs(redis.call('SMEMBERS', p .. 'tasks:runners')) do
  local running = p .. 'tasks:running:' .. runner
  if redis.call('SCARD', running) == 0 then
    redis.call('SREM', p .. 'tasks:runners', runner)
  elseif runner ~= me and redis.call('EXISTS', entries .. runner) == 0 then
    for _, id in ipairs(redis.call('SMEMBERS', running)) do
      local data = redis.call('GET', p .. 'task:' .. id)
      if data then table.insert(found, data) else forget(id) end
    end
  end
end
return found
"""
)

# ARGV: prefix, id. Answers the record's JSON, or nil.
REMOVE = _FORGET + "return forget(ARGV[2])\n"

# ARGV: prefix, now. Answers the expired records' JSON.
EXPIRE = _FORGET + "local gone = {}\nexpire(ARGV[2], gone)\nreturn gone\n"

# ARGV: prefix, owner. Answers the owner's records' JSON, oldest first (forgetting any whose
# key Redis has expired).
OWNED_BY = (
    _FORGET
    + """
local found = {}
for _, id in ipairs(redis.call('ZRANGE', p .. 'tasks:owner:' .. ARGV[2], 0, -1)) do
  local data = redis.call('GET', p .. 'task:' .. id)
  if data then table.insert(found, data) else forget(id) end
end
return found
"""
)


@implementer(ITaskStore)
class RedisTaskStore:
    """Task records shared by every instance using the same Redis (see the module docstring)."""

    def __init__(self, connection: RedisConnection, capacity: int = TASK_CAPACITY) -> None:
        self.connection = connection
        self.capacity = capacity

    def _run(self, script: str, *args: Any) -> Deferred[Any]:
        return self.connection.eval(script, [], [self.connection.key(), *args])

    def add(self, record: TaskRecord, now: float) -> Deferred[list[TaskRecord]]:
        ttl = record.ttl_ms
        deadline = "" if ttl is None else repr(record.created + ttl / 1000)
        redis_ttl = "" if ttl is None else str(ttl + REDIS_TTL_MARGIN * 1000)
        d = self._run(
            ADD,
            repr(now),
            str(self.capacity),
            record.task_id,
            _dump(record),
            record.owner,
            repr(record.created),
            deadline,
            "1" if record.terminal else "0",
            redis_ttl,
            record.runner,
        )

        def added(answer: list[Any]) -> list[TaskRecord]:
            if answer[0] == "full":
                raise StoreFull(
                    f"The servers are running {answer[1]} tasks, their limit; try again when one has finished",
                    self.capacity,
                )
            return _records(answer[1:])

        return d.addCallback(added)

    def save(self, record: TaskRecord) -> Deferred[TaskRecord | None]:
        """Fires with None (saved, or not kept), or with the kept record when that one has
        ended with another status (the save is refused: an instance took this task's runner
        for gone and settled it)."""
        d = self._run(
            SAVE, record.task_id, _dump(record), repr(record.created), "1" if record.terminal else "0", record.status
        )
        return d.addCallback(lambda answer: _record(answer) if isinstance(answer, str) else None)

    def get(self, task_id: str) -> Deferred[TaskRecord | None]:
        return self.connection.execute("GET", self.connection.key("task", task_id)).addCallback(_record)

    def remove(self, task_id: str) -> Deferred[TaskRecord | None]:
        return self._run(REMOVE, task_id).addCallback(_record)

    def owned_by(self, owner: str) -> Deferred[list[TaskRecord]]:
        return self._run(OWNED_BY, owner).addCallback(_records)

    def expire(self, now: float) -> Deferred[list[TaskRecord]]:
        return self._run(EXPIRE, repr(now)).addCallback(_records)

    def count(self) -> Deferred[int]:
        return self.connection.execute("ZCARD", self.connection.key("tasks")).addCallback(int)

    # -- several instances (`mcpd.cluster.relay`) ------------------------------------------------

    def settle(self, record: TaskRecord, entry: str) -> Deferred[int]:
        """End a task whose runner is gone: keep ``record`` (its terminal state) unless the
        kept one has ended already or the runner's registry key ``entry`` exists. Fires with 1
        (settled), 0 (the runner is alive) or -1 (not kept, or ended already)."""
        d = self._run(SETTLE, record.task_id, _dump(record), repr(record.created), entry)
        return d.addCallback(int)

    def orphans(self, entries: str, instance: str) -> Deferred[list[TaskRecord]]:
        """The running records of other instances than ``instance`` that have no registry key
        (``entries`` + their id)."""
        return self._run(ORPHANS, entries, instance).addCallback(_records)


def _dump(record: TaskRecord) -> str:
    return json.dumps(record.to_json(), separators=(",", ":"))


def _record(data: str | None) -> TaskRecord | None:
    return TaskRecord.from_json(json.loads(data)) if data else None


def _records(items: list[str]) -> list[TaskRecord]:
    return [TaskRecord.from_json(json.loads(data)) for data in items]
