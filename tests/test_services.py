"""Tests for mcpd.services: the listener and thread pool services, in memory."""

from __future__ import annotations

import gc
import time
from typing import Any

from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpd import services
from mcpd.config import Settings
from mcpd.runtime import Runtime
from mcpd.tools import ToolRegistry


def wait_for_joiner(clock: Clock, stopped: Deferred[Any]) -> None:
    """Advance ``clock`` until ``stopped`` (a `ThreadPoolService` stopping) fires: its joiner
    thread finishes quickly, in real time (5 s at most)."""
    for _ in range(500):
        clock.advance(0.001)
        if stopped.called:
            return
        time.sleep(0.01)


class LateEndpoint:
    """An endpoint whose listen() answers later, counting how often it is asked."""

    def __init__(self) -> None:
        self.listens: list[Deferred[Any]] = []

    def listen(self, factory: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.listens.append(d)
        return d


class Port:
    def getHost(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 9999)

    def stopListening(self) -> None:
        pass


class HeapFreezeServiceTests(SynchronousTestCase):
    def test_freezes_the_heap_and_raises_the_young_threshold_until_stopped(self) -> None:
        """Once the reactor turns: the start-up heap frozen and the young generation's threshold
        raised (at Python's 700, 16 blocking calls in flight set off a collection every ~20
        calls); both undone on stop."""
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        clock = Clock()
        service = services.HeapFreezeService(clock)
        service.startService()
        self.assertEqual(gc.get_threshold(), before)  # not before the tree has started
        clock.advance(0)
        self.addCleanup(gc.unfreeze)
        self.assertEqual(gc.get_threshold(), (services.YOUNG_THRESHOLD, *before[1:]))
        self.assertGreater(gc.get_freeze_count(), 0)
        service.stopService()
        self.assertEqual(gc.get_threshold(), before)
        self.assertEqual(gc.get_freeze_count(), 0)

    def test_stopped_before_the_reactor_turns_freezes_nothing(self) -> None:
        """A start-up that fails before the first turn: the freeze is called off, and a second
        start and stop still give back Python's own threshold, not the raised one."""
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.addCleanup(gc.unfreeze)
        clock = Clock()
        service = services.HeapFreezeService(clock)
        service.startService()
        service.stopService()
        clock.advance(0)
        self.assertEqual((gc.get_threshold(), gc.get_freeze_count()), (before, 0))
        service.startService()
        clock.advance(0)
        service.stopService()
        self.assertEqual((gc.get_threshold(), gc.get_freeze_count()), (before, 0))


class ListenerServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.endpoint = LateEndpoint()
        # ListenerService imports the endpoints module when it listens (a --stdio daemon never does).
        self.patch(endpoints, "serverFromString", lambda reactor, description: self.endpoint)
        self.service = services.ListenerService("late:9999", object(), Runtime(Settings(), ToolRegistry()), Clock())

    def test_an_endpoint_that_binds_later_is_asked_once(self) -> None:
        self.service.privilegedStartService()
        self.service.startService()
        self.assertEqual(len(self.endpoint.listens), 1)
        self.endpoint.listens[0].callback(Port())
        self.assertEqual(self.service.runtime.listeners, ["http://127.0.0.1:9999/mcp"])
        self.assertIsNone(self.service.failure)

    def test_stopping_before_it_binds_cancels_the_listen(self) -> None:
        self.service.privilegedStartService()
        self.service.startService()
        self.service.stopService()
        self.assertIsNone(self.service.failure)
        self.assertTrue(self.endpoint.listens[0].called)


class ThreadPoolServiceTests(SynchronousTestCase):
    def test_a_stuck_tool_thread_does_not_hold_shutdown(self) -> None:
        import threading

        from twisted.internet.task import Clock
        from twisted.python.threadpool import ThreadPool

        clock = Clock()
        pool = ThreadPool(minthreads=0, maxthreads=2, name="test-tools")
        service = services.ThreadPoolService(pool, clock, grace=1.0)
        service.startService()
        release = threading.Event()
        started = threading.Event()

        def stuck() -> None:
            started.set()
            release.wait(10)  # a handler that ignores cancellation

        pool.callInThread(stuck)
        self.assertTrue(started.wait(5))
        self.assertTrue(all(thread.daemon for thread in pool.threads))
        d = service.stopService()
        clock.advance(0)
        self.assertNoResult(d)
        clock.pump([0.05] * 25)  # past the grace period
        self.successResultOf(d)
        release.set()

    def test_idle_pool_stops_at_once(self) -> None:
        from twisted.internet.task import Clock
        from twisted.python.threadpool import ThreadPool

        clock = Clock()
        pool = ThreadPool(minthreads=1, maxthreads=2, name="test-tools")
        service = services.ThreadPoolService(pool, clock, grace=1.0)
        service.startService()
        d = service.stopService()
        wait_for_joiner(clock, d)
        self.successResultOf(d)
        self.assertTrue(pool.joined)
