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

    def test_a_scan_page_looks_at_a_bounded_number_of_names(self) -> None:
        from mcpd.stores import memory

        self.patch(memory, "SCAN_EXAMINED", 5)
        for i in range(20):
            self.settled(self.cache.set("t", f"k{i:02d}", "1", 60))
        self.settled(self.cache.set("t", "wanted", "1", 60))
        pages, position = [], None
        while True:
            keys, position = self.settled(self.cache.scan("t", "w*", 10, position))
            pages.append(keys)
            if position is None:
                break
        self.assertEqual(len(pages), 5)  # 21 names, 5 looked at a call
        self.assertEqual([key for page in pages for key in page], ["wanted"])
