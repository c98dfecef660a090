# -*- test-case-name: tests.test_ratelimit -*-
"""Token-bucket rate limiting: ``limit`` requests per ``window`` seconds, bursts up to ``burst``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs
from zope.interface import implementer

from mcpd.interfaces import IBucketStore

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

# Buckets kept before full (idle) ones are forgotten.
_PRUNE_AT = 10_000


@implementer(IBucketStore)
class MemoryBucketStore:
    """Buckets in this process's memory (one daemon; see `IBucketStore`)."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}
        # Prune when the table reaches this size; after a prune that freed little it doubles,
        # so a crowd of active clients does not make every new one pay a full scan.
        self._prune_at = _PRUNE_AT

    def take(self, key: str, capacity: float, rate: float) -> float:
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
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / rate

    def _prune(self, now: float, capacity: float, rate: float) -> None:
        """Forget buckets that have refilled: they would be created full again anyway."""
        for key, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * rate >= capacity:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


@attrs.frozen
class RateLimit:
    """``limit`` requests per ``window`` seconds, with bursts of up to ``burst`` (default: limit)."""

    limit: int
    window: float
    burst: int | None = None

    @property
    def capacity(self) -> float:
        return float(self.burst if self.burst is not None else self.limit)

    @property
    def rate(self) -> float:
        """Tokens added a second."""
        return self.limit / self.window


class RateLimiter:
    """Applies one `RateLimit` to many clients through an `IBucketStore`."""

    def __init__(self, limit: RateLimit, store: Any) -> None:
        self.limit = limit
        self.store = IBucketStore(store)
        self._capacity = limit.capacity
        self._rate = limit.rate

    def check(self, client: str) -> Any:
        """Seconds ``client`` must wait (0.0: go ahead), or a Deferred of it (a remote store)."""
        return self.store.take(client, self._capacity, self._rate)


def retry_after(wait: float) -> int:
    """The whole seconds of a ``Retry-After`` header for a wait (at least 1)."""
    return max(1, math.ceil(wait))
