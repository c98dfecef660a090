# -*- test-case-name: tests.test_lifecycle -*-
"""Start-up and graceful shutdown of the daemon's service tree.

The tree starts in dependency order (thread pool, engine, stores, then listeners) and stops in the
reverse order *one service after the other* (`OrderedMultiService`; Twisted's `MultiService`
stops its children all at once). On SIGTERM / SIGINT:

1. `ReadinessService` marks the daemon draining: ``/ready`` and ``/health`` answer 503, new
   requests on open connections are refused 503 with ``Retry-After``;
2. the listeners stop accepting;
3. `DrainService` ends subscription streams, lets the calls in flight finish (up to
   ``--shutdown-timeout``), cancels those still running (each is answered with a "server shutting
   down" error on its own stream), closes SSE streams with a ``retry`` hint and WebSockets with
   1001, then closes the connections once their answers are written;
4. the engine cancels what is left (tasks), the stores stop, the thread pool is joined.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from mcpd import notify

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

log = Logger(namespace="mcpd.lifecycle")

STARTING, SERVING, DRAINING, STOPPED = "starting", "serving", "draining", "stopped"
# The SSE reconnection delay sent to clients whose streams are closed at shutdown (ms).
RETRY_HINT_MS = 2000
_POLL = 0.05
FLUSH_GRACE = 1.0


class Lifecycle:
    """Where the daemon is in its life: starting, serving, draining or stopped."""

    def __init__(self) -> None:
        self.state = STARTING

    @property
    def ready(self) -> bool:
        return self.state == SERVING

    @property
    def draining(self) -> bool:
        return self.state in (DRAINING, STOPPED)


class StartupError(SystemExit):
    """A service could not start; the message names it and says why."""


class OrderedMultiService(MultiService):
    """Starts children in order, naming the one that fails; stops them in reverse order, each
    after the previous one has finished stopping."""

    def startService(self) -> None:
        Service.startService(self)
        for service in self:
            try:
                service.startService()
            except SystemExit:
                raise
            except Exception as e:
                name = service.name or type(service).__name__
                log.failure("Start-up failed in {name}", name=name)
                raise StartupError(f"mcpd: cannot start {name}: {e}") from e

    @inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        for service in reversed(list(self)):
            try:
                yield maybeDeferred(service.stopService)
            except Exception:
                log.failure("Stopping {name} failed", name=service.name or type(service).__name__)


class ReadinessService(Service):
    """Ready once the whole tree has started; draining from the first moment of shutdown.

    Add it last, so it is the first to stop."""

    def __init__(self, lifecycle: Lifecycle, clock: IReactorTime) -> None:
        self.lifecycle = lifecycle
        self.clock = clock

    def startService(self) -> None:
        super().startService()
        # After the rest of the tree has started (callLater runs once the reactor turns).
        self.clock.callLater(0, self._serving)

    def _serving(self) -> None:
        if self.lifecycle.state == STARTING:
            self.lifecycle.state = SERVING
            log.info("Ready")
            notify.ready()

    def stopService(self) -> None:
        super().stopService()
        if self.lifecycle.state != STOPPED:
            self.lifecycle.state = DRAINING
            log.info("Shutting down: draining (not ready; no new connections)")
            notify.stopping()


class DrainService(Service):
    """On shutdown, after the listeners have stopped: waits for calls in flight, then closes
    streams and connections (see the module docstring)."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        clock: IReactorTime,
        timeout: float,
        *,
        in_flight: Callable[[], int],
        cancel_in_flight: Callable[[], None] = lambda: None,
        end_subscriptions: Callable[[], None] = lambda: None,
        close_streams: Iterable[Callable[[int], int]] = (),
        connections: Callable[[], Iterable[Any]] = tuple,
    ) -> None:
        self.lifecycle = lifecycle
        self.clock = clock
        self.timeout = timeout
        self.in_flight = in_flight
        self.cancel_in_flight = cancel_in_flight
        self.end_subscriptions = end_subscriptions
        self.close_streams = list(close_streams)
        self.connections = connections

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._drain()

    @inlineCallbacks
    def _drain(self) -> Any:
        deadline = self.clock.seconds() + self.timeout
        self.end_subscriptions()
        waiting = self.in_flight()
        if waiting:
            log.info("Waiting up to {timeout}s for {count} call(s) in flight", timeout=self.timeout, count=waiting)
        while self.in_flight() and self.clock.seconds() < deadline:
            yield deferLater(self.clock, _POLL, lambda: None)
        left = self.in_flight()
        if left:
            log.warn(
                "{count} call(s) still in flight after {timeout}s: cancelling them", count=left, timeout=self.timeout
            )
            # Answered now, before their streams and connections close below.
            self.cancel_in_flight()
        closed = sum(close(RETRY_HINT_MS) for close in self.close_streams)
        if closed:
            log.info("Closed {count} stream(s) with a retry hint", count=closed)
        for connection in list(self.connections()):
            connection.loseConnection()
        # Let their last answers reach the clients (what is left of the timeout, at least a second).
        flushed_by = max(deadline, self.clock.seconds() + FLUSH_GRACE)
        while list(self.connections()) and self.clock.seconds() < flushed_by:
            yield deferLater(self.clock, _POLL, lambda: None)
        self.lifecycle.state = STOPPED
        log.info("Drained")
        _exit_cleanly(self.clock)


def _exit_cleanly(reactor: Any) -> None:
    """A drained shutdown is a clean one: twistd would otherwise re-raise the SIGTERM / SIGINT
    that stopped the reactor and exit by the signal (status -15) rather than 0."""
    if getattr(reactor, "_exitSignal", None) in (signal.SIGTERM, signal.SIGINT):
        reactor._exitSignal = None
