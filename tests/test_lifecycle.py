"""Tests for `mcpd.lifecycle`: ordered start and stop, readiness and draining, with a Clock."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpd.lifecycle import (
    DRAINING,
    SERVING,
    STARTING,
    STOPPED,
    DrainService,
    Lifecycle,
    OrderedMultiService,
    ReadinessService,
    StartupError,
)


class Step(Service):
    def __init__(self, name: str, journal: list[str], stop: Deferred[None] | None = None, fail: bool = False) -> None:
        self.setName(name)
        self.journal = journal
        self.stop = stop
        self.fail = fail

    def startService(self) -> None:
        if self.fail:
            raise OSError("the disk is gone")
        super().startService()
        self.journal.append(f"start {self.name}")

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.journal.append(f"stop {self.name}")
        return self.stop


class OrderTests(SynchronousTestCase):
    def test_stops_one_after_the_other_in_reverse(self) -> None:
        journal: list[str] = []
        slow: Deferred[None] = Deferred()
        root = OrderedMultiService()
        Step("pool", journal).setServiceParent(root)
        Step("engine", journal, stop=slow).setServiceParent(root)
        Step("listener", journal).setServiceParent(root)
        root.startService()
        d = root.stopService()
        self.assertEqual(journal[3:], ["stop listener", "stop engine"])  # the pool waits for the engine
        slow.callback(None)
        self.successResultOf(d)
        self.assertEqual(
            journal, ["start pool", "start engine", "start listener", "stop listener", "stop engine", "stop pool"]
        )

    def test_readable_startup_failure(self) -> None:
        root = OrderedMultiService()
        Step("pool", []).setServiceParent(root)
        Step("vector store", [], fail=True).setServiceParent(root)
        with self.assertRaises(StartupError) as caught:
            root.startService()
        self.assertEqual(str(caught.exception), "mcpd: cannot start vector store: the disk is gone")
        self.flushLoggedErrors(OSError)


class ReadinessTests(SynchronousTestCase):
    def test_ready_after_start_draining_at_stop(self) -> None:
        lifecycle, clock = Lifecycle(), Clock()
        service = ReadinessService(lifecycle, clock)
        service.startService()
        self.assertEqual(lifecycle.state, STARTING)
        self.assertFalse(lifecycle.ready)
        clock.advance(0)
        self.assertTrue(lifecycle.ready)
        service.stopService()
        self.assertEqual(lifecycle.state, DRAINING)
        self.assertTrue(lifecycle.draining)


class Connection:
    def __init__(self, pool: list[Any]) -> None:
        self.pool = pool

    def loseConnection(self) -> None:
        self.pool.remove(self)


class DrainTests(SynchronousTestCase):
    def make(self, timeout: float = 10.0) -> None:
        self.clock = Clock()
        self.lifecycle = Lifecycle()
        self.lifecycle.state = SERVING
        self.in_flight = 0
        self.events: list[str] = []
        self.connections: list[Any] = []
        self.drain = DrainService(
            self.lifecycle,
            self.clock,
            timeout,
            in_flight=lambda: self.in_flight,
            cancel_in_flight=lambda: self.events.append("calls cancelled"),
            end_subscriptions=lambda: self.events.append("subscriptions ended"),
            close_streams=[lambda retry: self.events.append(f"streams closed, retry {retry}") or 2],
            connections=lambda: self.connections,
        )

    def test_waits_for_calls_in_flight(self) -> None:
        self.make()
        self.in_flight = 1
        self.connections.append(Connection(self.connections))
        d = self.drain.stopService()
        self.assertEqual(self.events, ["subscriptions ended"])
        self.clock.advance(1.0)
        self.assertNoResult(d)
        self.in_flight = 0
        self.clock.advance(0.05)
        self.successResultOf(d)
        self.assertEqual(self.events, ["subscriptions ended", "streams closed, retry 2000"])
        self.assertEqual(self.connections, [])
        self.assertEqual(self.lifecycle.state, STOPPED)

    def test_gives_up_after_the_timeout(self) -> None:
        self.make(timeout=3.0)
        self.in_flight = 1
        d = self.drain.stopService()
        self.clock.pump([0.05] * 59)
        self.assertNoResult(d)
        self.clock.pump([0.05] * 3)
        self.successResultOf(d)
        # The calls are cancelled (and so answered) before their streams close.
        self.assertEqual(self.events, ["subscriptions ended", "calls cancelled", "streams closed, retry 2000"])

    def test_nothing_in_flight_is_quick(self) -> None:
        self.make()
        self.successResultOf(self.drain.stopService())
