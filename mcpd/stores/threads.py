# -*- test-case-name: tests.test_services -*-
"""A thread pool as a service: started and stopped in order with the daemon's service tree.

The general tool pool and each blocking store's own pool are one of these.
"""

from __future__ import annotations

import functools
import threading

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

log = Logger(namespace="mcpd")


class ThreadPoolService(Service):
    """Runs a `ThreadPool` while the service runs.

    On shutdown its threads are joined off the reactor thread, for at most ``grace`` seconds:
    work that ignores cancellation (a plain blocking call) cannot hold the daemon up forever.
    The workers are daemon threads, so one still busy does not keep the process alive.
    """

    def __init__(self, pool: ThreadPool, clock: IReactorTime, grace: float = 5.0) -> None:
        self.pool = pool
        self.grace = grace
        self.clock = clock
        pool.threadFactory = functools.partial(threading.Thread, daemon=True)  # type: ignore[assignment]

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
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
