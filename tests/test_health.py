"""Tests for `mcpd.observe.health`."""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpd.observe.health import (
    DEGRADED,
    DOWN,
    OK,
    Check,
    CheckResult,
    HealthChecks,
    overall,
    size_check,
    thread_pool_check,
)
from mcpd.services import HealthService
from mcpd.stores.threads import ToolThreads


class Reactor:
    """Collects what the pool's threads hand back, to run on the test's thread as the reactor
    would."""

    def __init__(self) -> None:
        self.handed: list[Any] = []

    def callFromThread(self, f: Any, *args: Any) -> None:  # noqa: N802 (Twisted's name)
        self.handed.append((f, args))

    def run_until(self, *waiting: Deferred[Any]) -> None:
        """Run what comes back until every one of ``waiting`` has fired (10 s at most)."""
        deadline = time.monotonic() + 10
        while not all(d.called for d in waiting) and time.monotonic() < deadline:
            handed, self.handed = self.handed, []
            for f, args in handed:
                f(*args)
            time.sleep(0.005)


def tool_threads(test: SynchronousTestCase, count: int) -> tuple[ToolThreads, Reactor]:
    reactor = Reactor()
    pool = ToolThreads(count, "test-tools", reactor)
    pool.threadFactory = functools.partial(threading.Thread, daemon=True)  # type: ignore[assignment]
    pool.start()
    test.addCleanup(pool.stop)
    return pool, reactor


class HealthTests(SynchronousTestCase):
    def test_overall(self) -> None:
        self.assertEqual(overall([CheckResult("a", OK, 0.0)]), "healthy")
        self.assertEqual(overall([CheckResult("a", OK, 0.0), CheckResult("b", DEGRADED, 0.0)]), "degraded")
        self.assertEqual(overall([CheckResult("b", DOWN, 0.0)]), "unhealthy")
        self.assertEqual(overall([CheckResult("b", DOWN, 0.0, required=False)]), "degraded")

    def test_stopped_pool_is_down(self) -> None:
        pool = ToolThreads(2, "test-tools", Reactor())
        result = self.successResultOf(HealthChecks([thread_pool_check(pool, Clock())]).run())
        self.assertEqual(result[0].status, DOWN)

    def test_pool_round_trip(self) -> None:
        pool, reactor = tool_threads(self, 2)
        d = thread_pool_check(pool, Clock()).probe()
        reactor.run_until(d)
        result = self.successResultOf(d)
        self.assertEqual(result.status, OK)
        self.assertGreaterEqual(result.latency, 0.0)

    def test_slow_pool_is_degraded(self) -> None:
        pool, reactor = tool_threads(self, 1)
        release, running = threading.Event(), threading.Event()

        def hold() -> bool:
            running.set()
            return release.wait(10)

        held = pool.submit(hold)
        self.assertTrue(running.wait(10))
        clock = Clock()
        d = thread_pool_check(pool, clock, timeout=2.0).probe()
        self.assertNoResult(d)
        self.assertEqual(pool.qsize(), 1)  # the probe's own trip waits for the only thread
        clock.advance(2.0)
        result = self.successResultOf(d)
        self.assertEqual((result.status, result.detail), (DEGRADED, "no thread free within 2s (0 queued)"))
        # The next probe sees the call still waiting: degraded, with the queue depth.
        after = thread_pool_check(pool, clock, timeout=2.0).probe()
        self.assertEqual(pool.qsize(), 2)
        release.set()
        reactor.run_until(held, after)
        self.assertEqual(pool._in_hand, 0)  # the first probe's call was skipped and counted out
        self.assertTrue(self.successResultOf(held))
        result = self.successResultOf(after)
        self.assertEqual((result.status, result.detail), (DEGRADED, "1 call(s) waiting for a thread"))

    def test_failing_check_is_down_and_results_kept(self) -> None:
        def broken() -> CheckResult:
            raise RuntimeError("store unreachable")

        checks = HealthChecks([Check("db", broken), size_check("sessions", lambda: 3, "session(s)")])
        results = self.successResultOf(checks.run())
        self.assertEqual([r.status for r in results], [DOWN, OK])
        self.assertEqual(results[0].detail, "store unreachable")
        self.assertEqual(results[1].to_json()["detail"], "3 session(s)")
        self.assertEqual(checks.last, results)
        self.flushLoggedErrors(RuntimeError)

    def test_probes_that_arrive_together_share_one_run(self) -> None:
        from twisted.internet.defer import Deferred

        runs: list[Deferred[CheckResult]] = []

        def slow() -> Deferred[CheckResult]:
            d: Deferred[CheckResult] = Deferred()
            runs.append(d)
            return d

        checks = HealthChecks([Check("pool", slow)])
        first, second = checks.run(), checks.run()
        self.assertEqual(len(runs), 1)
        runs[0].callback(CheckResult("pool", OK, 0.01))
        self.assertEqual([r.status for r in self.successResultOf(first)], [OK])
        self.assertEqual([r.status for r in self.successResultOf(second)], [OK])
        # The next probe, after that run ended, starts a new one.
        checks.run()
        self.assertEqual(len(runs), 2)

    def test_service_runs_periodically(self) -> None:
        runs: list[int] = []
        checks = HealthChecks([Check("x", lambda: runs.append(1) or CheckResult("x", OK, 0.0))])
        clock = Clock()
        service = HealthService(checks, clock, interval=15.0)
        service.startService()
        clock.advance(15.0)
        clock.advance(15.0)
        service.stopService()
        clock.advance(15.0)
        self.assertEqual(len(runs), 2)
