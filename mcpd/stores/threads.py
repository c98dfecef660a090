# -*- test-case-name: tests.test_threads -*-
"""Thread pools as services: started and stopped in order with the daemon's service tree.

Both the pool that runs blocking tools (threads started on demand up to ``--threads``) and the
SQL store's (a fixed number, started up front) are `ToolThreads`: calls handed over through C
`queue.SimpleQueue`s, a lighter hand-off than Twisted's `ThreadPool` for calls that take a
fraction of a millisecond. Any pool runs as a `ThreadPoolService`.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

log = Logger(namespace="mcpd")
T = TypeVar("T")


_Call = tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` where the system shows it (Linux: ``top -H``, ``ps -L``,
    perf, py-spy; 15 bytes at most), not only in Python's `threading`; elsewhere, nothing."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm:
            comm.write(name[:15])
    except OSError:
        pass  # no /proc (not Linux): Python's name is the only one


# From a thread's long background job, between two steps: offer the core to any thread that
# waits for it, the GIL let go (the reactor first of all). On a core shared with the reactor, a
# job that never blocks otherwise keeps the core for as long as the scheduler lets it (a tick,
# 4 ms at 250 Hz, or more), stalling every request in flight; with nothing else waiting this
# returns at once (one system call). Not every platform has sched_yield (Windows): a sleep of 0
# still lets the GIL go.
yield_core: Callable[[], None] = getattr(os, "sched_yield", None) or functools.partial(time.sleep, 0)


class ToolThreads:
    """Up to ``count`` threads for blocking tools, each started when a call finds every thread
    busy (as Twisted's ``ThreadPool(0, count)``); an idle thread stays for the next call. With
    ``up_front``, all ``count`` start with the pool (the SQL store's readers and writer).

    A call goes straight to an idle thread (the one idle last: its caches are warm), through
    that thread's own `queue.SimpleQueue`, so each call wakes exactly one thread. (Idle threads
    sharing one queue pass its lock on: every call also woke a second thread for nothing.)
    With no thread idle, the call waits in a list that each thread empties before it idles.
    A call cancelled before a thread takes it is skipped, stopping runs the calls already
    handed over, and a submit after stop fails at once.

    Answers come back in batches: a thread adds its answer to a list and wakes the reactor only
    when no wake-up is pending, so a busy pool costs one ``callFromThread`` per batch.

    `submit` is called on the reactor thread, where the calls in hand are counted (a call counts
    until its answer, or its skipping, has reached the reactor): a call that finds no thread
    idle starts one while there are more calls in hand than threads.
    """

    def __init__(self, count: int, name: str, reactor: Any = None, *, up_front: bool = False) -> None:
        self.count = count
        self.name = name
        self.up_front = up_front
        self.started = False
        self.threads: list[threading.Thread] = []
        self.threadFactory: Callable[..., threading.Thread] = threading.Thread
        self._reactor = reactor
        self._lock = threading.Lock()  # guards _waiting and _idle, taken by every thread
        self._waiting: deque[_Call] = deque()  # calls no thread has taken
        self._idle: list[queue.SimpleQueue[_Call | None]] = []  # idle threads' hand-offs, last idle last
        self._handoffs: list[queue.SimpleQueue[_Call | None]] = []  # every thread's
        self._in_hand = 0  # reactor thread only
        self._answers: deque[tuple[Deferred[Any], bool, Any]] = deque()
        self._waking = False

    def qsize(self) -> int:
        """Calls waiting for a thread (the pool's queue depth)."""
        return len(self._waiting)

    def running(self) -> int:
        """Threads not idle: running a call or about to take one."""
        return len(self.threads) - len(self._idle)

    def start(self) -> None:
        """Start taking calls; the first thread starts with the first call, or every thread
        now (``up_front``). On the reactor thread, as `submit`."""
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        self.started = True
        while self.up_front and len(self.threads) < self.count:
            self._start_thread()

    def stop(self) -> None:
        """Let the threads finish the calls handed over before this, then end (blocking: joins).

        Called off the reactor thread (`ThreadPoolService`), which has already set ``started``
        False there, so no `submit` hands a call over behind the stop markers."""
        self.started = False
        for handoff in self._handoffs:
            handoff.put(None)  # taken once the thread has emptied the waiting list
        for thread in self.threads:
            thread.join()
        self.threads = []
        self._handoffs = []
        self._idle = []

    def submit(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        """``function(*args)`` in one of the threads; its result or failure, on the reactor.

        Cancelling the Deferred before a thread takes the call skips it; once stopped (or before
        starting), the call fails at once."""
        if not self.started:
            return fail(RuntimeError(f"the {self.name} threads are not running"))
        d: Deferred[T] = Deferred(_skip)
        call: _Call = (d, function, args)
        self._in_hand += 1
        with self._lock:
            handoff = self._idle.pop() if self._idle else None
            if handoff is None:
                self._waiting.append(call)
        if handoff is not None:
            handoff.put(call)
        elif self._in_hand > len(self.threads) and len(self.threads) < self.count:
            self._start_thread()
        return d

    def _start_thread(self) -> None:
        handoff: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        thread = self.threadFactory(target=self._work, args=(handoff,), name=f"{self.name}-{len(self.threads)}")
        thread.start()  # first: `stop` joins only threads that started
        self._handoffs.append(handoff)
        self.threads.append(thread)

    def _work(self, handoff: queue.SimpleQueue[_Call | None]) -> None:
        name_os_thread(threading.current_thread().name.removeprefix("mcpd-"))
        lock, waiting, idle, take = self._lock, self._waiting, self._idle, handoff.get
        while True:
            with lock:
                call = waiting.popleft() if waiting else None
                if call is None:
                    idle.append(handoff)
            if call is None and (call := take()) is None:
                return  # stopped
            self._run(*call)
            del call  # hold nothing while idle

    def _run(self, d: Deferred[Any], function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if d.called:  # cancelled while it waited: skipped, but still counted out on the reactor
            answer: tuple[Deferred[Any], bool, Any] = (d, True, None)
        else:
            try:
                answer = (d, True, function(*args))
            except BaseException:  # noqa: BLE001 -- handed to the caller's Deferred
                answer = (d, False, Failure())
        self._answers.append(answer)
        if not self._waking:
            self._waking = True
            self._reactor.callFromThread(self._deliver)

    def _deliver(self) -> None:
        """On the reactor: fire every answer in; cleared first, so an answer added meanwhile
        either is taken here or has asked for a wake-up of its own."""
        self._waking = False
        answers = self._answers
        while answers:
            d, success, result = answers.popleft()
            self._in_hand -= 1
            if not d.called:  # not cancelled while it ran
                if not success:
                    d.errback(result)
                elif isinstance(result, Deferred):
                    # Deferred.callback refuses one (an AssertionError here, which would leave
                    # this call and the answers after it undelivered): a pack author's mistake,
                    # or a store's.
                    d.errback(
                        TypeError(
                            "work run in a thread (a blocking handler, a store's transaction) returned a"
                            " Deferred: it must return its result"
                        )
                    )
                else:
                    d.callback(result)


def _skip(d: Deferred[Any]) -> None:
    """A call's canceller: `Deferred.cancel` fails it with CancelledError, and the
    thread that takes it sees it fired and skips it."""


class ThreadPoolService(Service):
    """Runs a thread pool (`ToolThreads`, a Twisted `ThreadPool`) while the service runs.

    On shutdown its threads are joined off the reactor thread, for at most ``grace`` seconds:
    work that ignores cancellation (a plain blocking call) cannot hold the daemon up forever.
    The workers are daemon threads, so one still busy does not keep the process alive.
    """

    def __init__(self, pool: ThreadPool | ToolThreads, clock: IReactorTime, grace: float = 5.0) -> None:
        self.pool = pool
        self.grace = grace
        self.clock = clock
        pool.threadFactory = functools.partial(threading.Thread, daemon=True)  # type: ignore[assignment]

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        # On the reactor thread, before the joiner queues its stop markers: a call submitted
        # after this fails at once instead of landing behind them and never firing.
        self.pool.started = False
        clock = self.clock
        joiner = threading.Thread(target=self.pool.stop, name=f"{self.pool.name}-join", daemon=True)
        joiner.start()
        deadline = clock.seconds() + self.grace

        done: Deferred[None] = Deferred()

        def poll() -> None:
            if joiner.is_alive() and clock.seconds() < deadline:
                clock.callLater(0.05, poll)
                return
            if joiner.is_alive():
                busy = sum(1 for thread in self.pool.threads if thread.is_alive())
                log.warn(
                    "{busy} thread(s) of {pool} still busy after {grace}s; stopping without them",
                    busy=busy,
                    pool=self.pool.name,
                    grace=self.grace,
                )
            done.callback(None)

        clock.callLater(0, poll)
        return done
