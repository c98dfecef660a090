"""Tests for mcpd.services: the listener and thread pool services, in memory."""

from __future__ import annotations

import functools
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
        for _ in range(500):  # the joiner thread finishes quickly, in real time
            clock.advance(0.001)
            if d.called:
                break
            time.sleep(0.01)
        self.successResultOf(d)
        self.assertTrue(pool.joined)


class QueueThreadsTests(SynchronousTestCase):
    """The SQL store's threads: calls run off the calling thread, answers come back through the
    reactor's ``callFromThread``, failures as failures, and stopping waits for queued calls."""

    def threads(self, count: int) -> tuple[Any, list[Any]]:
        import threading

        from mcpd.stores.threads import QueueThreads

        class Reactor:
            """Collects what the threads hand back, to run here as the reactor would."""

            def __init__(self) -> None:
                self.handed: list[Any] = []
                self.lock = threading.Lock()

            def callFromThread(self, function: Any, *args: Any) -> None:
                with self.lock:
                    self.handed.append((function, args))

        reactor = Reactor()
        pool = QueueThreads(count, "test-db", reactor)
        pool.threadFactory = functools.partial(threading.Thread, daemon=True)
        pool.start()
        self.addCleanup(lambda: pool.stop() if pool.threads else None)
        return pool, reactor.handed

    def deliver(self, handed: list[Any], expected: int) -> None:
        deadline = time.monotonic() + 10
        while len(handed) < expected and time.monotonic() < deadline:
            time.sleep(0.005)
        for function, args in handed:
            function(*args)

    def test_results_and_failures(self) -> None:
        import threading

        pool, handed = self.threads(2)
        caller = threading.get_ident()
        ran_in: list[int] = []

        def work(n: int) -> int:
            ran_in.append(threading.get_ident())
            if n == 3:
                raise ValueError("three")
            return n * 10

        results = [pool.submit(work, n) for n in range(6)]
        self.deliver(handed, 6)
        self.assertEqual([self.successResultOf(d) for i, d in enumerate(results) if i != 3], [0, 10, 20, 40, 50])
        self.assertEqual(str(self.failureResultOf(results[3], ValueError).value), "three")
        self.assertNotIn(caller, ran_in)
        self.assertLessEqual(len(set(ran_in)), 2)

    def test_stop_finishes_what_was_queued(self) -> None:
        import threading

        pool, handed = self.threads(1)
        release = threading.Event()
        first = pool.submit(release.wait, 10)
        queued = [pool.submit(lambda n=n: n) for n in range(3)]
        stopper = threading.Thread(target=pool.stop)
        stopper.start()
        release.set()
        stopper.join(10)
        self.assertFalse(stopper.is_alive())
        self.assertFalse(pool.started)
        self.assertEqual(pool.threads, [])
        self.deliver(handed, 4)
        self.assertTrue(self.successResultOf(first))
        self.assertEqual([self.successResultOf(d) for d in queued], [0, 1, 2])

    def test_runs_as_a_service(self) -> None:
        from mcpd.stores.threads import QueueThreads

        clock = Clock()
        pool = QueueThreads(3, "test-db", clock)
        service = services.ThreadPoolService(pool, clock, grace=1.0)
        service.startService()
        self.assertTrue(pool.started)
        self.assertEqual(len(pool.threads), 3)
        self.assertTrue(all(thread.daemon for thread in pool.threads))
        d = service.stopService()
        for _ in range(500):
            clock.advance(0.001)
            if d.called:
                break
            time.sleep(0.01)
        self.successResultOf(d)
        self.assertEqual(pool.threads, [])


class QueueThreadsCancelAndStopTests(SynchronousTestCase):
    """A cancelled call is skipped when a thread takes it; once stopped, a call fails at once
    rather than land behind the stop markers and never fire."""

    threads = QueueThreadsTests.threads
    deliver = QueueThreadsTests.deliver

    def test_cancelled_call_is_skipped(self) -> None:
        import threading

        from twisted.internet.defer import CancelledError

        pool, handed = self.threads(1)
        release, running = threading.Event(), threading.Event()
        ran: list[int] = []

        def hold() -> bool:
            running.set()
            return release.wait(10)

        first = pool.submit(hold)
        self.assertTrue(running.wait(10))
        waiting = pool.submit(ran.append, 1)
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        after = pool.submit(ran.append, 2)
        self.assertEqual(pool.running(), 1)
        release.set()
        self.deliver(handed, 2)
        self.assertTrue(self.successResultOf(first))
        self.successResultOf(after)
        self.assertEqual(ran, [2])

    def test_cancelled_while_running_is_not_fired_again(self) -> None:
        import threading

        from twisted.internet.defer import CancelledError

        pool, handed = self.threads(1)
        release, running = threading.Event(), threading.Event()

        def work() -> int:
            running.set()
            release.wait(10)
            return 1

        d = pool.submit(work)
        self.assertTrue(running.wait(10))
        d.cancel()
        release.set()
        self.deliver(handed, 1)  # the answer is dropped, not an AlreadyCalledError
        self.failureResultOf(d, CancelledError)

    def test_submit_after_stop_fails(self) -> None:
        from mcpd.stores.threads import QueueThreads

        clock = Clock()
        pool = QueueThreads(2, "test-db", clock)
        service = services.ThreadPoolService(pool, clock, grace=1.0)
        service.startService()
        d = service.stopService()
        self.assertFalse(pool.started)  # on this thread, before the joiner runs
        late = pool.submit(lambda: 1)
        self.assertIn("not running", str(self.failureResultOf(late, RuntimeError).value))
        for _ in range(500):
            clock.advance(0.001)
            if d.called:
                break
            time.sleep(0.01)
        self.successResultOf(d)
