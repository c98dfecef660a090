# -*- test-case-name: tests.test_ratelimit -*-
"""Token-bucket rate limiting: ``limit`` messages per ``window`` seconds, bursts up to ``burst``.

Every JSON-RPC message counts, whatever carries it. The gate counts each HTTP request before its
body is read (answering 429 with Retry-After), except a POST to a live legacy /sse session of
the caller's own, whose answer goes on the stream; the engine asks `MessageLimiter` about the
messages beyond those — those session messages, the other messages of a batch, every message on
a WebSocket — and answers one over the limit with a JSON-RPC error in the same stream. Both
count in one bucket per account (the caller's key, or its address without keys). A request
refused for a missing or wrong key beyond loopback takes from its address's bucket (key guessing
ends in 429).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mcpd.interfaces import IBucketStore
from mcpd.protocol.errors import LimitExceeded
from mcpd.security.policy import is_loopback

if TYPE_CHECKING:
    from mcpd.tools.api import Caller


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
        # An in-process store's answer without a Deferred (`MemoryBucketStore.take_now`).
        self._take_now: Callable[[str, float, float], float] | None = getattr(self.store, "take_now", None)

    def check(self, client: str) -> Any:
        """Seconds ``client`` must wait (0.0: go ahead), or a Deferred of it while a remote
        store is asked (an in-process store answers at once: its number is returned)."""
        if self._take_now is not None:
            return self._take_now(client, self._capacity, self._rate)
        return settled(self.store.take(client, self._capacity, self._rate))


def settled(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has already fired, else the Deferred itself: the gate
    answers at once when a store answers at once (the in-process stores), and waits only for
    a store that asks the network."""
    outcome: list[Any] = []
    d.addBoth(_keep, outcome)
    if not outcome or isinstance(outcome[0], Failure):
        return d  # a failed store: the caller's errback answers (503)
    return outcome[0]


def _keep(result: Any, outcome: list[Any]) -> Any:
    outcome.append(result)
    return result


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
