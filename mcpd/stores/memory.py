# -*- test-case-name: tests.test_stores -*-
"""The in-process stores: one daemon's state in its own memory, behind the interfaces of
`mcpd.interfaces` (every method returns a Deferred that has already fired, as klein's
``MemorySessionStore`` does). Records are kept as JSON data, as a shared store would keep them,
so what a caller changes after saving is not changed in the store."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from mcpd.interfaces import TERMINAL, IBucketStore, ISessionStore, ITaskStore, SessionRecord, StoreFull, TaskRecord

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

# Buckets kept before full (idle) ones are forgotten.
_PRUNE_AT = 10_000
# Tasks kept at once (running, or finished and waiting to be fetched).
TASK_CAPACITY = 1000


@implementer(IBucketStore)
class MemoryBucketStore:
    """Token buckets in this process's memory (one daemon; see `IBucketStore`)."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}
        # Prune when the table reaches this size; after a prune that freed little it doubles,
        # so a crowd of active clients does not make every new one pay a full scan.
        self._prune_at = _PRUNE_AT

    def take(self, key: str, capacity: float, rate: float) -> Deferred[float]:
        now = self.clock.seconds()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune(now, capacity, rate)
                self._prune_at = max(_PRUNE_AT, 2 * len(self._buckets))
            bucket = self._buckets[key] = [capacity, now]
        tokens = min(capacity, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return succeed(0.0)
        bucket[0] = tokens
        return succeed((1.0 - tokens) / rate)

    def _prune(self, now: float, capacity: float, rate: float) -> None:
        """Forget buckets that have refilled: they would be created full again anyway."""
        for key, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * rate >= capacity:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


@implementer(ITaskStore)
class MemoryTaskStore:
    """Task records of this process, at most ``capacity`` of them; a record is dropped once its
    TTL has passed, and the oldest finished records make room for new ones."""

    def __init__(self, capacity: int = TASK_CAPACITY) -> None:
        self.capacity = capacity
        self._records: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()

    def add(self, record: TaskRecord, now: float) -> Deferred[list[TaskRecord]]:
        dropped = self._expire(now)
        if len(self._records) >= self.capacity:
            oldest = next((data for data in self._records.values() if data["status"] in TERMINAL), None)
            if oldest is None:
                return fail(
                    StoreFull(
                        f"The server is running {len(self._records)} tasks, its limit; try again when one has finished",
                        self.capacity,
                    )
                )
            del self._records[oldest["task_id"]]
            dropped.append(TaskRecord.from_json(oldest))
        self._records[record.task_id] = record.to_json()
        return succeed(dropped)

    def save(self, record: TaskRecord) -> Deferred[None]:
        if record.task_id in self._records:
            self._records[record.task_id] = record.to_json()
        return succeed(None)

    def get(self, task_id: str) -> Deferred[TaskRecord | None]:
        data = self._records.get(task_id)
        return succeed(TaskRecord.from_json(data) if data is not None else None)

    def remove(self, task_id: str) -> Deferred[TaskRecord | None]:
        data = self._records.pop(task_id, None)
        return succeed(TaskRecord.from_json(data) if data is not None else None)

    def owned_by(self, owner: str) -> Deferred[list[TaskRecord]]:
        mine = [TaskRecord.from_json(data) for data in self._records.values() if data["owner"] == owner]
        return succeed(sorted(mine, key=lambda record: (record.created, record.task_id)))

    def expire(self, now: float) -> Deferred[list[TaskRecord]]:
        return succeed(self._expire(now))

    def _expire(self, now: float) -> list[TaskRecord]:
        gone = [
            data
            for data in self._records.values()
            if data["ttl_ms"] is not None and now >= data["created"] + data["ttl_ms"] / 1000
        ]
        for data in gone:
            del self._records[data["task_id"]]
        return [TaskRecord.from_json(data) for data in gone]

    def count(self) -> Deferred[int]:
        return succeed(len(self._records))


@implementer(ISessionStore)
class MemorySessionStore:
    """Legacy session records of this process (see `ISessionStore`)."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, Any]] = {}

    def save(self, record: SessionRecord) -> Deferred[None]:
        self._records[record.session_id] = record.to_json()
        return succeed(None)

    def load(self, session_id: str) -> Deferred[SessionRecord | None]:
        data = self._records.get(session_id)
        return succeed(SessionRecord.from_json(data) if data is not None else None)

    def touch(self, session_id: str) -> Deferred[bool]:
        return succeed(session_id in self._records)

    def delete(self, session_id: str) -> Deferred[bool]:
        return succeed(self._records.pop(session_id, None) is not None)

    def count(self) -> Deferred[int]:
        return succeed(len(self._records))
