# -*- test-case-name: tests.test_health -*-
"""Checks of what mcpd depends on, for ``GET /health`` and the ``mcp_store_*`` series.

The in-process checks are the thread pool that runs blocking tools (a round trip through it,
timed) and the session stores; a store that reports its own health (`IHealthReporting`: the SQL
store, the search index, the embedding service) becomes a check with `store_check`. The latest
result of each check is kept for the metrics, refreshed by every /health request and by
`mcpd.services.HealthService` in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpd.interfaces import DEGRADED as STORE_DEGRADED
from mcpd.interfaces import DOWN as STORE_DOWN
from mcpd.interfaces import UP, IHealthReporting, StoreStatus

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from mcpd.stores.threads import ToolThreads

log = Logger(namespace="mcpd.health")

OK, DEGRADED, DOWN = "ok", "degraded", "down"


@attrs.frozen
class CheckResult:
    """How one dependency is: ok, degraded or down, the check's latency and a short detail."""

    name: str
    status: str
    latency: float
    required: bool = True
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status, "latency_ms": round(self.latency * 1000, 3)}
        if self.detail:
            body["detail"] = self.detail
        return body


@attrs.frozen
class Check:
    """A named probe returning a `CheckResult` (or a Deferred of one)."""

    name: str
    probe: Callable[[], Any]


def thread_pool_check(pool: ToolThreads, clock: IReactorTime, timeout: float = 2.0, name: str = "thread_pool") -> Check:
    """A round trip through the pool (`mcpd.stores.threads.ToolThreads`): degraded when calls
    wait for a thread or the trip is slow, down when the pool is not running."""

    def probe() -> Deferred[CheckResult]:
        if not pool.started:
            return succeed(CheckResult(name, DOWN, 0.0, detail="the thread pool is not running"))
        queued = pool.qsize()
        started = time.monotonic()
        d = pool.submit(time.monotonic)
        d.addTimeout(timeout, clock)

        def done(_value: float) -> CheckResult:
            latency = time.monotonic() - started
            detail = f"{queued} call(s) waiting for a thread" if queued else None
            return CheckResult(name, DEGRADED if queued else OK, latency, detail=detail)

        def slow(_failure: Any) -> CheckResult:
            return CheckResult(name, DEGRADED, timeout, detail=f"no thread free within {timeout:g}s ({queued} queued)")

        return d.addCallbacks(done, slow)

    return Check(name, probe)


_STATES = {UP: OK, STORE_DEGRADED: DEGRADED, STORE_DOWN: DOWN}


def store_check(store: IHealthReporting, name: str | None = None, required: bool = False) -> Check:
    """A store that reports its own health (the search index, the embedding service): its probe,
    as a check. Not required by default: mcpd still serves while it is down (searches say so)."""

    def probe() -> Deferred[CheckResult]:
        def result(status: StoreStatus) -> CheckResult:
            return CheckResult(
                name or status.store, _STATES[status.state], status.latency or 0.0, required, status.detail
            )

        return store.check().addCallback(result)

    return Check(name or store.status().store, probe)


def size_check(name: str, size: Callable[[], int], what: str) -> Check:
    """An in-process store: ok while it answers; the detail says how much it holds."""

    def probe() -> CheckResult:
        started = time.monotonic()
        count = size()
        return CheckResult(name, OK, time.monotonic() - started, detail=f"{count} {what}")

    return Check(name, probe)


class HealthChecks:
    """Every check of the daemon, run together; the latest results kept."""

    def __init__(self, checks: Sequence[Check] = ()) -> None:
        self.checks = list(checks)
        self.last: list[CheckResult] = []
        # Callers waiting on the run under way: /health is open to anyone, so probes that
        # arrive together share one run (one trip through the thread pool), not one each.
        self._waiting: list[Deferred[list[CheckResult]]] | None = None

    def run(self) -> Deferred[list[CheckResult]]:
        """Run every check (or join the run under way); a check that raises is reported down."""
        d: Deferred[list[CheckResult]] = Deferred()
        if self._waiting is not None:
            self._waiting.append(d)
            return d
        self._waiting = [d]
        gathered = gatherResults([self._one(check) for check in self.checks]).addCallback(self._keep)
        gathered.addBoth(self._answer)
        return d

    def _answer(self, outcome: Any) -> None:
        waiting, self._waiting = self._waiting or [], None
        for d in waiting:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(list(outcome))

    def _one(self, check: Check) -> Deferred[CheckResult]:
        started = time.monotonic()

        def failed(failure: Any) -> CheckResult:
            log.failure("Health check {name} failed", failure, name=check.name)
            return CheckResult(check.name, DOWN, time.monotonic() - started, detail=failure.getErrorMessage())

        return maybeDeferred(check.probe).addErrback(failed)

    def _keep(self, results: list[CheckResult]) -> list[CheckResult]:
        self.last = results
        return results


def overall(results: Sequence[CheckResult]) -> str:
    """healthy, degraded (something is slow) or unhealthy (a required dependency is down)."""
    if any(r.status == DOWN and r.required for r in results):
        return "unhealthy"
    if any(r.status != OK for r in results):
        return "degraded"
    return "healthy"
