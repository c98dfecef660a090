# -*- test-case-name: tests.test_ratelimit -*-
"""The zope interfaces of mcpd: the seams where an implementation can be swapped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from zope.interface import Interface


class IBucketStore(Interface):
    """Token buckets by key: the state behind the rate limit.

    The in-process store (`mcpd.web.ratelimit.MemoryBucketStore`) serves one daemon; a shared
    store (Redis, with an atomic script) makes a limit hold across instances.
    """

    def take(key: str, capacity: float, rate: float) -> object:
        """Take one token from the bucket ``key`` (``capacity`` tokens, refilled at ``rate``
        tokens a second, full when first seen).

        Returns how many seconds the caller must wait before a token is free: 0.0 when one was
        taken. A store that must ask the network returns a Deferred firing with that number.
        """


class ITaskStore(Interface):
    """Where tasks are kept between polls (`mcpd.protocol.tasks`).

    The in-process store (`mcpd.protocol.tasks.MemoryTaskStore`) is bounded and serves one
    daemon; a shared store lets any instance behind a load balancer answer ``tasks/get``.
    """

    def add(task: Any, now: float) -> list[Any]:
        """Keep a new task (the time is ``now``); returns the tasks it dropped: those whose TTL
        had passed, and a finished one that made room. Raises
        `mcpd.protocol.tasks.TaskStoreFull` when there is no room."""

    def get(task_id: str) -> Any:
        """The task with this id, or None."""

    def remove(task_id: str) -> Any:
        """Forget a task; returns it, or None if it was unknown."""

    def owned_by(owner: str) -> list[Any]:
        """Every task of ``owner`` (a caller or a legacy session)."""

    def expire(now: float) -> list[Any]:
        """Drop and return the tasks whose TTL has passed by ``now``."""

    def __iter__() -> Iterator[Any]:
        """Every task kept."""

    def __len__() -> int:
        """How many tasks are kept."""
