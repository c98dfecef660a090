# -*- test-case-name: tests.test_cache -*-
"""The cache: the Redis `ICache` runs the suite the in-process one runs (tests/test_stores.py),
on a real redis-server; the ``cache`` pack in memory (`mcpd.testing.PackHarness`); and the pack
through the official SDK over HTTP on both backends, with two tenants."""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpd.stores.redis.cache import RedisCache
from mcpd.testing import CacheTests
from tests.test_redis_stores import RedisSuite


class RedisCacheTests(RedisSuite, CacheTests, SynchronousTestCase):
    def make_cache(self, clock: Clock) -> Any:
        return RedisCache(self.connection())

    def pass_time(self, seconds: float) -> None:
        time.sleep(seconds)  # Redis keeps its own time

    def test_every_key_has_a_ttl_and_its_tenant_in_its_name(self) -> None:
        connection = self.cache.connection
        self.settled(self.cache.set("team a", "k", "1", 60))
        self.settled(self.cache.incr("team a", "n", 1, None))
        names = self.settled(connection.execute("KEYS", connection.key("*")))
        self.assertEqual(
            sorted(names), [connection.key("cache", "team%20a", "k"), connection.key("cache", "team%20a", "n")]
        )
        for name in names:
            self.assertGreater(int(self.settled(connection.execute("TTL", name))), 0)

    def test_a_page_holds_no_more_than_its_limit_when_redis_gives_more(self) -> None:
        for i in range(300):
            self.settled(self.cache.set("t", f"k{i}", "1", 60))
        seen: list[str] = []
        position = None
        while True:
            keys, position = self.settled(self.cache.scan("t", "*", 7, position))
            self.assertLessEqual(len(keys), 7)
            seen.extend(keys)
            if position is None:
                break
        self.assertEqual(set(seen), {f"k{i}" for i in range(300)})
