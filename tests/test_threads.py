"""Tests for `mcpd.stores.threads.ToolThreads`, the pool that runs blocking tools: threads started
on demand up to the limit, calls waiting beyond it (the queue depth /health and /stats show),
cancellation, stopping, answers batched back to the reactor; and the same in a real daemon
(``--threads``). The SQL store's pools are the same class with every thread started up front."""

from __future__ import annotations

import functools
import json
import socket
import threading
import time
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpd.stores.threads import ThreadPoolService, ToolThreads
from tests.clients import fetch
from tests.daemon import DaemonTestCase, modern_request, post, read_events, wait_for_event_blocking
from tests.test_services import wait_for_joiner


class Reactor:
    """Collects what the threads hand back (``callFromThread``), to run on the test's thread as
    the reactor would."""

    def __init__(self) -> None:
        self.handed: list[Any] = []
        self.lock = threading.Lock()

    def callFromThread(self, f: Any, *args: Any) -> None:  # noqa: N802 (Twisted's name)
        with self.lock:
            self.handed.append((f, args))

    def run_until(self, *waiting: Deferred[Any]) -> None:
        """Run what comes back until every one of ``waiting`` has fired (10 s at most)."""
        deadline = time.monotonic() + 10
        while not all(d.called for d in waiting) and time.monotonic() < deadline:
            with self.lock:
                handed, self.handed = self.handed, []
            for f, args in handed:
                f(*args)
            time.sleep(0.002)


class ToolThreadsTests(SynchronousTestCase):
    up_front = False

    def pool(self, count: int) -> tuple[ToolThreads, Reactor]:
        reactor = Reactor()
        pool = ToolThreads(count, "test-tools", reactor, up_front=self.up_front)
        pool.threadFactory = functools.partial(threading.Thread, daemon=True)  # type: ignore[assignment]
        pool.start()
        self.addCleanup(lambda: pool.stop() if pool.threads else None)
        return pool, reactor

    def hold(self: SynchronousTestCase, pool: ToolThreads) -> tuple[Deferred[Any], threading.Event]:
        """A call that keeps a thread until the returned event is set (started when this returns)."""
        release, running = threading.Event(), threading.Event()

        def held() -> str:
            running.set()
            release.wait(10)
            return "released"

        d = pool.submit(held)
        self.assertTrue(running.wait(10))
        return d, release

    def test_threads_start_on_demand_up_to_the_limit(self) -> None:
        pool, reactor = self.pool(2)
        self.assertEqual(pool.threads, [])  # none until a call needs one
        first, release_first = self.hold(pool)
        self.assertEqual(len(pool.threads), 1)
        second, release_second = self.hold(pool)
        self.assertEqual(len(pool.threads), 2)
        third = pool.submit(lambda: "third")
        self.assertEqual(len(pool.threads), 2)  # the limit: the third call waits
        self.assertEqual(pool.qsize(), 1)
        self.assertEqual(pool.running(), 2)
        release_first.set()
        reactor.run_until(first, third)
        self.assertEqual((self.successResultOf(first), self.successResultOf(third)), ("released", "third"))
        self.assertEqual(pool.qsize(), 0)
        release_second.set()
        reactor.run_until(second)
        # Idle threads stay and take the next calls; no third thread is started.
        more = [pool.submit(lambda n=n: n) for n in range(5)]
        reactor.run_until(*more)
        self.assertEqual([self.successResultOf(d) for d in more], [0, 1, 2, 3, 4])
        self.assertEqual(len(pool.threads), 2)
        self.assertEqual(pool._in_hand, 0)

    def test_a_call_goes_to_the_thread_idle_last(self) -> None:
        """Each call wakes one thread, the one that went idle last; the others stay asleep."""
        pool, reactor = self.pool(3)
        held = [self.hold(pool) for _ in range(3)]
        for d, release in held:
            release.set()
            reactor.run_until(d)
        deadline = time.monotonic() + 10
        while pool.running() and time.monotonic() < deadline:
            time.sleep(0.002)
        last = pool.threads[2].ident
        ran_in = []
        for _ in range(5):
            d = pool.submit(threading.get_ident)
            reactor.run_until(d)
            ran_in.append(self.successResultOf(d))
            while pool.running() and time.monotonic() < deadline:
                time.sleep(0.002)
        self.assertEqual(ran_in, [last] * 5)

    def test_a_call_waiting_on_another_gets_a_thread(self) -> None:
        """Below the limit, every call in hand has a thread: a call that waits for a later one
        (a handler waiting on another tool's work) is not left queued behind it."""
        pool, reactor = self.pool(3)
        done = threading.Event()
        waiter = pool.submit(done.wait, 10)
        setter = pool.submit(done.set)
        reactor.run_until(waiter, setter)
        self.assertTrue(self.successResultOf(waiter))
        self.assertEqual(len(pool.threads), 2)

    def test_failures_come_back_as_failures(self) -> None:
        pool, reactor = self.pool(2)
        caller = threading.get_ident()
        d = pool.submit(lambda: 1 / 0)
        where = pool.submit(threading.get_ident)
        reactor.run_until(d, where)
        self.failureResultOf(d, ZeroDivisionError)
        self.assertNotEqual(self.successResultOf(where), caller)

    def test_a_deferred_returned_by_a_handler_is_a_failure_not_a_stall(self) -> None:
        """A thread's work must return its result: a Deferred (a pack author's mistake) fails
        that call with a TypeError, and the answers delivered with it still arrive."""
        pool, reactor = self.pool(1)
        blocker, release = self.hold(pool)
        wrong = pool.submit(Deferred)
        right = pool.submit(lambda: "fine")
        release.set()  # all three answers come back in one delivery
        reactor.run_until(blocker, wrong, right)
        self.assertEqual(self.successResultOf(right), "fine")
        failure = self.failureResultOf(wrong, TypeError)
        self.assertIn("returned a Deferred", str(failure.value))

    def test_cancelled_while_waiting_is_skipped(self) -> None:
        pool, reactor = self.pool(1)
        held, release = self.hold(pool)
        ran: list[int] = []
        waiting = pool.submit(ran.append, 1)
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        after = pool.submit(ran.append, 2)
        self.assertEqual(pool.qsize(), 2)  # the skipped call leaves the queue when a thread reaches it
        release.set()
        reactor.run_until(held, after)
        self.assertEqual(ran, [2])
        self.assertEqual(pool._in_hand, 0)  # the skipped call was counted out too

    def test_cancelled_while_running_is_not_fired_again(self) -> None:
        pool, reactor = self.pool(1)
        held, release = self.hold(pool)
        held.cancel()
        self.failureResultOf(held, CancelledError)
        release.set()
        probe = pool.submit(lambda: "next")
        reactor.run_until(probe)  # the held call's answer is dropped, not an AlreadyCalledError
        self.assertEqual(self.successResultOf(probe), "next")
        self.assertEqual(pool._in_hand, 0)

    def test_answers_come_back_in_batches(self) -> None:
        """While a wake-up is pending, further answers ride on it: one ``callFromThread`` for
        answers that arrive before the reactor runs it."""
        pool, reactor = self.pool(1)
        calls = [pool.submit(lambda n=n: n) for n in range(20)]
        deadline = time.monotonic() + 10
        while len(pool._answers) < 20 and time.monotonic() < deadline:
            time.sleep(0.002)
        self.assertEqual(len(reactor.handed), 1)
        reactor.run_until(*calls)
        self.assertEqual([self.successResultOf(d) for d in calls], list(range(20)))

    def test_stop_runs_what_was_queued_then_refuses(self) -> None:
        pool, reactor = self.pool(1)
        held, release = self.hold(pool)
        queued = [pool.submit(lambda n=n: n) for n in range(3)]
        stopper = threading.Thread(target=pool.stop)
        stopper.start()
        release.set()
        stopper.join(10)
        self.assertFalse(stopper.is_alive())
        self.assertEqual(pool.threads, [])
        reactor.run_until(held, *queued)
        self.assertEqual([self.successResultOf(d) for d in queued], [0, 1, 2])
        late = pool.submit(lambda: 1)
        self.assertIn("not running", str(self.failureResultOf(late, RuntimeError).value))

    def test_not_started_refuses(self) -> None:
        pool = ToolThreads(2, "test-tools", Reactor())
        self.failureResultOf(pool.submit(lambda: 1), RuntimeError)
        self.assertEqual(pool.threads, [])


class UpFrontTests(SynchronousTestCase):
    """``up_front`` (the SQL store's readers, writer and probe): every thread starts with the
    pool, and calls, cancellation and stopping work as on demand."""

    up_front = True
    pool = ToolThreadsTests.pool
    hold = ToolThreadsTests.hold

    def test_every_thread_starts_with_the_pool(self) -> None:
        pool, reactor = self.pool(3)
        self.assertEqual(len(pool.threads), 3)  # before any call
        caller = threading.get_ident()
        ran_in: list[int] = []

        def work(n: int) -> int:
            ran_in.append(threading.get_ident())
            if n == 3:
                raise ValueError("three")
            return n * 10

        results = [pool.submit(work, n) for n in range(6)]
        reactor.run_until(*results)
        self.assertEqual([self.successResultOf(d) for i, d in enumerate(results) if i != 3], [0, 10, 20, 40, 50])
        self.assertEqual(str(self.failureResultOf(results[3], ValueError).value), "three")
        self.assertNotIn(caller, ran_in)
        self.assertEqual(len(pool.threads), 3)  # no more started
        self.assertEqual(pool._in_hand, 0)

    def test_the_system_shows_each_threads_name(self) -> None:
        """Each thread carries the pool's name where `top -H`, perf and py-spy read it (the
        system's name for it, 15 bytes at most, without the ``mcpd-`` every pool shares)."""
        reactor = Reactor()
        pool = ToolThreads(2, "mcpd-db-writer", reactor, up_front=True)
        pool.start()
        self.addCleanup(pool.stop)

        both = threading.Barrier(2, timeout=10)  # the two calls run at once: one per thread

        def comm() -> str:
            both.wait()
            with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
                return f.read().strip()

        first, second = pool.submit(comm), pool.submit(comm)
        reactor.run_until(first, second)
        self.assertEqual(
            sorted([self.successResultOf(first), self.successResultOf(second)]), ["db-writer-0", "db-writer-1"]
        )

    def test_a_deferred_returned_by_work_is_a_failure(self) -> None:
        """As for a blocking tool: the store's work returns its result; a Deferred fails the
        call with a TypeError rather than reach ``Deferred.callback``."""
        pool, reactor = self.pool(1)
        wrong = pool.submit(Deferred)
        right = pool.submit(lambda: "fine")
        reactor.run_until(wrong, right)
        self.assertIn("returned a Deferred", str(self.failureResultOf(wrong, TypeError).value))
        self.assertEqual(self.successResultOf(right), "fine")

    def test_cancelled_while_waiting_is_skipped(self) -> None:
        pool, reactor = self.pool(1)
        held, release = self.hold(pool)
        ran: list[int] = []
        waiting = pool.submit(ran.append, 1)
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        after = pool.submit(ran.append, 2)
        self.assertEqual((pool.running(), pool.qsize()), (1, 2))
        release.set()
        reactor.run_until(held, after)
        self.assertEqual(ran, [2])

    def test_stop_finishes_what_was_queued(self) -> None:
        pool, reactor = self.pool(2)
        first, release_first = self.hold(pool)
        second, release_second = self.hold(pool)
        queued = [pool.submit(lambda n=n: n) for n in range(3)]
        stopper = threading.Thread(target=pool.stop)
        stopper.start()
        release_first.set()
        release_second.set()
        stopper.join(10)
        self.assertFalse(stopper.is_alive())
        self.assertEqual(pool.threads, [])
        reactor.run_until(first, second, *queued)
        self.assertEqual([self.successResultOf(d) for d in queued], [0, 1, 2])

    def test_runs_as_a_service(self) -> None:
        """`ThreadPoolService` starts the threads (daemon threads), and once it stops, a call
        fails at once rather than land behind the stop markers and never fire."""
        clock = Clock()
        pool = ToolThreads(3, "test-db", clock, up_front=True)
        service = ThreadPoolService(pool, clock, grace=1.0)
        service.startService()
        self.assertTrue(pool.started)
        self.assertEqual(len(pool.threads), 3)
        self.assertTrue(all(thread.daemon for thread in pool.threads))
        d = service.stopService()
        self.assertFalse(pool.started)  # on this thread, before the joiner runs
        late = pool.submit(lambda: 1)
        self.assertIn("not running", str(self.failureResultOf(late, RuntimeError).value))
        wait_for_joiner(clock, d)
        self.successResultOf(d)
        self.assertEqual(pool.threads, [])


def _send_call(port: int, request_id: int, label: str, timeout: float) -> socket.socket:
    """POST a ``tests.blocking_wait`` call on a raw connection, left open (closing it cancels)."""
    body, headers = modern_request(
        request_id, "tools/call", {"name": "tests.blocking_wait", "arguments": {"label": label, "timeout": timeout}}
    )
    data = json.dumps(body).encode()
    head = [
        "POST /mcp HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        "Accept: application/json, text/event-stream",
        f"Content-Length: {len(data)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    return connection


class DaemonToolThreadsTests(DaemonTestCase):
    """``--threads 2`` in a real daemon: a third blocking call waits (the queue depth in /stats,
    /health and /metrics), a waiting call cancelled by its client never runs, and a running one
    sees its cancellation through ``ctx.wait_cancelled``."""

    timeout = 60

    def test_limit_queue_depth_and_cancellation(self) -> Deferred[None]:
        daemon = self.start_daemon("--threads", "2")
        port = daemon.port
        assert port is not None

        def check() -> None:
            first = _send_call(port, 1, "a", 30)
            second = _send_call(port, 2, "b", 30)
            wait_for_event_blocking(daemon.events, "started tests.blocking_wait a")
            wait_for_event_blocking(daemon.events, "started tests.blocking_wait b")
            third = _send_call(port, 3, "c", 0)
            deadline = time.monotonic() + 10
            while json.loads(fetch(port, "GET", "/stats")[2])["thread_pool_queue"] != 1:
                self.assertLess(time.monotonic(), deadline, "the third call never showed as waiting")
                time.sleep(0.05)
            metrics = fetch(port, "GET", "/metrics")[2].decode()
            self.assertIn("mcp_thread_pool_queue_depth 1.0", metrics)
            # /health's own trip through the pool waits behind the third call: degraded after 2 s.
            status, _headers, body = fetch(port, "GET", "/health")
            pool = json.loads(body)["checks"]["thread_pool"]
            self.assertEqual((status, pool["status"]), (200, "degraded"))
            self.assertEqual(pool["detail"], "no thread free within 2s (1 queued)")

            third.close()  # cancelled while it waits: it must never start
            time.sleep(0.3)
            first.close()  # cancelled while it runs: ctx.wait_cancelled sees it
            wait_for_event_blocking(daemon.events, "cancelled tests.blocking_wait a")
            status, _headers, answer = post(
                port,
                *modern_request(
                    4, "tools/call", {"name": "tests.blocking_wait", "arguments": {"label": "d", "timeout": 0}}
                ),
            )
            self.assertEqual(status, 200)
            self.assertIn("not cancelled within 0 seconds", json.loads(answer)["result"]["content"][0]["text"])
            self.assertNotIn("started tests.blocking_wait c", read_events(daemon.events))
            second.close()
            wait_for_event_blocking(daemon.events, "cancelled tests.blocking_wait b")
            self.assertEqual(json.loads(fetch(port, "GET", "/stats")[2])["thread_pool_queue"], 0)

        return self.in_thread(check)
