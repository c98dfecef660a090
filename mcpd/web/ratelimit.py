# -*- test-case-name: tests.test_ratelimit -*-
"""Token-bucket rate limiting: ``limit`` messages per ``window`` seconds, bursts up to ``burst``.

Every JSON-RPC message counts, whatever carries it. The gate counts each HTTP request before its
body is read (answering 429 with Retry-After); the engine asks `MessageLimiter` about the
messages beyond those — the other messages of a batch, every message on a WebSocket — and
answers one over the limit with a JSON-RPC error in the same stream. Both count in one bucket
per account (the caller's key, or its address without keys).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred
from zope.interface import implementer

from mcpd.interfaces import IBucketStore
from mcpd.protocol.errors import LimitExceeded
from mcpd.web.policy import is_loopback

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from mcpd.tools.api import Caller

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


class MessageLimiter:
    """The engine's ``message_limit``: None while a caller may send, else the error to answer
    its message with (or a Deferred of either, with a remote bucket store).

    The bucket is the caller's account, the gate's too: ``key:NAME``, or ``ip:ADDRESS`` without
    keys, where loopback is not limited; stdio (``local``), one local client who started the
    server, is never limited.
    """

    def __init__(self, limiter: RateLimiter, on_limited: Callable[[], None] | None = None) -> None:
        self.limiter = limiter
        # Told of every message refused (the refusal counters of /metrics and /stats).
        self.on_limited = on_limited

    def __call__(self, caller: Caller) -> Any:
        account = caller.account
        if account.startswith("ip:"):
            if is_loopback(account[3:]):
                return None
        elif not account.startswith("key:"):
            return None
        wait = self.limiter.check(account)
        if isinstance(wait, Deferred):
            return wait.addCallback(self._refusal)
        return self._refusal(wait)

    def _refusal(self, wait: float) -> LimitExceeded | None:
        if wait <= 0:
            return None
        if self.on_limited is not None:
            self.on_limited()
        seconds = retry_after(wait)
        limit = self.limiter.limit
        return LimitExceeded(
            f"Rate limit exceeded: {limit.limit} messages per {limit.window:g} s; retry in {seconds} s",
            limit="rate",
            maximum=limit.limit,
            per_caller=True,
            retry_after=seconds,
        )


def retry_after(wait: float) -> int:
    """The whole seconds of a ``Retry-After`` header for a wait (at least 1)."""
    return max(1, math.ceil(wait))
