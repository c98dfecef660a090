"""The shared store suites of `mcpd.testing` against the in-process stores (`mcpd.stores.memory`);
a Redis or SQL store runs the same suites."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpd.interfaces import StoreFull
from mcpd.stores.memory import MemoryBucketStore, MemoryCache, MemorySessionStore, MemoryTaskStore
from mcpd.testing import BucketStoreTests, CacheTests, SessionStoreTests, TaskStoreTests


class MemoryBucketStoreTests(BucketStoreTests, SynchronousTestCase):
    def make_store(self, clock: Clock) -> Any:
        return MemoryBucketStore(clock)


class MemoryTaskStoreTests(TaskStoreTests, SynchronousTestCase):
    def make_store(self, capacity: int) -> Any:
        return MemoryTaskStore(capacity=capacity)


class MemorySessionStoreTests(SessionStoreTests, SynchronousTestCase):
    def make_store(self) -> Any:
        return MemorySessionStore()


class MemoryCacheTests(CacheTests, SynchronousTestCase):
    def make_cache(self, clock: Clock) -> Any:
        return MemoryCache(clock)

    def test_bounded(self) -> None:
        cache = MemoryCache(self.clock, max_keys=2)
        self.settled(cache.set("t", "a", "1", 1))
        self.settled(cache.set("u", "b", "1", 60))
        full = self.refused(cache.set("t", "c", "1", 60), StoreFull)
        self.assertIn("--cache-max-keys", str(full.value))
        self.settled(cache.set("t", "a", "2", 1))  # replacing a key takes no room
        self.clock.advance(2)
        self.settled(cache.set("t", "c", "1", 60))  # an expired key made room
