# -*- test-case-name: tests.test_redis_stores -*-
"""Token buckets in Redis (`IBucketStore`): one atomic script per take, so a limit holds across
every instance sharing the server exactly as it holds in one process.

The time is Redis' own (``TIME``, read inside the script), never an instance's clock: instances
whose clocks disagree grant no extra tokens, and a bucket's time never runs backwards (Redis
restarted on a host with a late clock refills nothing). A bucket's key expires once it would be
full again: an idle client costs nothing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from zope.interface import implementer

from mcpd.interfaces import IBucketStore

if TYPE_CHECKING:
    from mcpd.stores.redis.connection import RedisConnection

# KEYS[1]: the bucket (a hash of tokens and the time they were counted). ARGV: capacity, rate
# (tokens a second). Answers the seconds to wait as text (Lua numbers become integers). TIME in a
# script is allowed since Redis 5 (scripts replicate their effects, not the script).
TAKE = """
local capacity, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local kept = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens, last = tonumber(kept[1]), tonumber(kept[2])
if tokens == nil or last == nil then
  tokens, last = capacity, now
end
if now < last then now = last end
tokens = math.min(capacity, tokens + (now - last) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
return tostring(wait)
"""
# Buckets counted by `__len__` are forgotten this long after this process last used them.
_SEEN_FOR = 60.0
_PRUNE_AT = 10_000


@implementer(IBucketStore)
class RedisBucketStore:
    """Token buckets shared by every instance using the same Redis (see the module docstring)."""

    def __init__(self, connection: RedisConnection) -> None:
        self.connection = connection
        # Buckets this process used lately, for `__len__` (what /stats shows of this instance).
        self._seen: dict[str, float] = {}

    def take(self, key: str, capacity: float, rate: float) -> Deferred[float]:
        self._note(key)
        d = self.connection.eval(TAKE, [self.connection.key("bucket", key)], [repr(capacity), repr(rate)])
        return d.addCallback(float)

    def _note(self, key: str) -> None:
        now = time.monotonic()
        if len(self._seen) >= _PRUNE_AT and key not in self._seen:
            self._seen = {k: seen for k, seen in self._seen.items() if now - seen < _SEEN_FOR}
        self._seen[key] = now

    def __len__(self) -> int:
        """How many buckets this instance used in the last minute (others' are not counted)."""
        now = time.monotonic()
        return sum(1 for seen in self._seen.values() if now - seen < _SEEN_FOR)
