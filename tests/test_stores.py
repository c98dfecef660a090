"""The shared store suites of `mcpd.testing` against the in-process stores (`mcpd.stores.memory`);
a Redis or SQL store runs the same suites."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpd.stores.memory import MemoryBucketStore, MemorySessionStore, MemoryTaskStore
from mcpd.testing import BucketStoreTests, SessionStoreTests, TaskStoreTests


class MemoryBucketStoreTests(BucketStoreTests, SynchronousTestCase):
    def make_store(self, clock: Clock) -> Any:
        return MemoryBucketStore(clock)


class MemoryTaskStoreTests(TaskStoreTests, SynchronousTestCase):
    def make_store(self, capacity: int) -> Any:
        return MemoryTaskStore(capacity=capacity)


class MemorySessionStoreTests(SessionStoreTests, SynchronousTestCase):
    def make_store(self) -> Any:
        return MemorySessionStore()
