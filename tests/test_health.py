"""Tests for `mcpd.observe.health`."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
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


class FakeReactor:
    """Runs 'threaded' work at once, as a reactor with a synchronous pool would."""

    def callFromThread(self, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        f(*args, **kwargs)


class SyncPool(ThreadPool):
    def callInThreadWithCallback(self, onResult, func, *args, **kw):  # type: ignore[no-untyped-def]
        onResult(True, func(*args, **kw))


class HealthTests(SynchronousTestCase):
    def test_overall(self) -> None:
        self.assertEqual(overall([CheckResult("a", OK, 0.0)]), "healthy")
        self.assertEqual(overall([CheckResult("a", OK, 0.0), CheckResult("b", DEGRADED, 0.0)]), "degraded")
        self.assertEqual(overall([CheckResult("b", DOWN, 0.0)]), "unhealthy")
        self.assertEqual(overall([CheckResult("b", DOWN, 0.0, required=False)]), "degraded")

    def test_stopped_pool_is_down(self) -> None:
        pool = ThreadPool()
        result = self.successResultOf(HealthChecks([thread_pool_check(pool, FakeReactor(), Clock())]).run())  # type: ignore[arg-type]
        self.assertEqual(result[0].status, DOWN)

    def test_pool_round_trip(self) -> None:
        pool = SyncPool()
        pool.start()
        self.addCleanup(pool.stop)
        result = self.successResultOf(thread_pool_check(pool, FakeReactor(), Clock()).probe())  # type: ignore[arg-type]
        self.assertEqual(result.status, OK)
        self.assertGreaterEqual(result.latency, 0.0)

    def test_slow_pool_is_degraded(self) -> None:
        class Stuck(ThreadPool):
            def callInThreadWithCallback(self, onResult, func, *args, **kw):  # type: ignore[no-untyped-def]
                pass  # never answers

        pool, clock = Stuck(), Clock()
        pool.start()
        self.addCleanup(pool.stop)
        d = thread_pool_check(pool, FakeReactor(), clock, timeout=2.0).probe()  # type: ignore[arg-type]
        self.assertNoResult(d)
        clock.advance(2.0)
        self.assertEqual(self.successResultOf(d).status, DEGRADED)

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
