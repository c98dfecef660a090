# -*- test-case-name: tests.test_services -*-
"""The daemon's services: each owns one thing that starts and stops with the process.

`mcpd.daemon.build_service` puts them in an `mcpd.lifecycle.OrderedMultiService`, which starts
them in order and stops them in reverse, one after the other: heap freeze, thread pool, engine,
session stores, reload, health checks, drain, listeners, readiness. Each is handed what it needs
(the reactor included) when it is made.
"""

from __future__ import annotations

import contextlib
import gc
import signal
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, gatherResults, inlineCallbacks
from twisted.internet.error import ReactorNotRunning
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpd import notify
from mcpd.lifecycle import DRAINING, SERVING, STARTING, STOPPED, Lifecycle
from mcpd.stores.threads import ThreadPoolService as ThreadPoolService  # the tree's pools, tool and store alike
from mcpd.transport.stdio import StdioProtocol

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from mcpd.observe.health import HealthChecks
    from mcpd.protocol.engine import Engine
    from mcpd.protocol.session import SessionStore
    from mcpd.protocol.trace import Tracer
    from mcpd.runtime import Runtime
    from mcpd.security.layer import Security

log = Logger(namespace="mcpd")

# The SSE reconnection delay sent to clients whose streams are closed at shutdown (ms).
RETRY_HINT_MS = 2000
_POLL = 0.05
FLUSH_GRACE = 1.0


# The young generation's collection threshold, in objects (Python's default is 700). Calls that
# wait (a blocking tool's, a store's) keep ~45 objects each alive at once, so with 16 in flight
# every wave of them passed 700: the collector ran every ~20 calls (250 young, 20 middle and 2
# full collections a second at 5,000 calls/s: ~4% of the core, the full ones 2-3 ms each). The
# collector still runs once 10,000 more objects are made than freed, so cyclic garbage stays
# bounded; a steady server's waves (far under it) no longer set it off.
YOUNG_THRESHOLD = 10_000


class HeapFreezeService(Service):
    """Once the daemon is up, moves everything allocated so far (modules, schemas, the service
    tree) out of the garbage collector's reach with `gc.freeze`, and raises the young
    generation's threshold to `YOUNG_THRESHOLD`; both undone when it stops.

    Full collections otherwise rescan that heap every few thousand requests: measured here,
    they pushed the p99 of tools/call from ~3 ms to 13-19 ms at 16 clients.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._thresholds: tuple[int, ...] | None = None
        self._call: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        # After the rest of the tree has started (callLater runs once the reactor turns).
        self._call = self.clock.callLater(0, self._freeze)

    def _freeze(self) -> None:
        self._call = None
        gc.collect()
        gc.freeze()
        if self._thresholds is None:
            self._thresholds = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, *self._thresholds[1:])
        log.info("Start-up heap frozen ({count} objects kept out of collections)", count=gc.get_freeze_count())

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()  # stopped before the reactor turned: nothing to freeze
        self._call = None
        gc.unfreeze()
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None


class TraceService(Service):
    """Closes the protocol trace on shutdown, writing what it still holds."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    def stopService(self) -> None:
        super().stopService()
        self.tracer.close()


class EngineService(Service):
    """On shutdown, cancels every call still in flight before the thread pool is stopped, so
    handlers that watch for cancellation end and the pool's threads can be joined."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def stopService(self) -> None:
        super().stopService()
        if self.engine.in_flight:
            log.info("Cancelling {count} call(s) in flight", count=self.engine.in_flight)
        if self.engine.tasks.running:
            log.info("Cancelling {count} running task(s)", count=self.engine.tasks.running)
        # Modern subscription streams hear notifications/cancelled before their requests end.
        self.engine.end_subscriptions()
        self.engine.cancel_all()


class SessionService(Service):
    """Expires idle legacy sessions while running; ends them all on shutdown."""

    def __init__(self, sessions: SessionStore) -> None:
        self.sessions = sessions

    def startService(self) -> None:
        super().startService()
        self.sessions.start()

    def stopService(self) -> None:
        super().stopService()
        self.sessions.stop()


class ListenerService(Service):
    """Listens on one endpoint string; a port that cannot be bound stops start-up."""

    def __init__(self, description: str, factory: Any, runtime: Runtime, reactor: Any) -> None:
        self.description = description
        self.reactor = reactor
        self.factory = factory
        self.runtime = runtime
        self.port: Any = None
        # The listen under way (an endpoint that binds later), and why it failed if it did.
        self._listen: Deferred[Any] | None = None
        self.failure: Failure | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        # Imported here: a --stdio daemon loads none of the endpoint and TLS machinery.
        from twisted.internet import endpoints

        d = endpoints.serverFromString(self.reactor, self.description).listen(self.factory)
        if not d.called:
            # An endpoint that binds later (most bind at once): a failure then stops the daemon.
            self._listen = d
            d.addCallbacks(self._listening, self._cannot_listen)
            return
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        if isinstance(outcome[0], Failure):
            # One clear line instead of a traceback, under twistd as under the mcpd command.
            raise SystemExit(f"mcpd: cannot listen on {self.description}: {outcome[0].getErrorMessage()}")
        self._listening(outcome[0])

    def _cannot_listen(self, failure: Failure) -> None:
        self._listen = None
        if failure.check(CancelledError):
            return  # stopped before it bound
        self.failure = failure
        log.critical(
            "Cannot listen on {description}: {why}", description=self.description, why=failure.getErrorMessage()
        )
        self.reactor.stop()

    def startService(self) -> None:
        if self.port is None and self._listen is None and not self.running:
            self.privilegedStartService()
        super().startService()

    def _listening(self, port: Any) -> None:
        self._listen = None
        self.port = port
        address = port.getHost()
        shown = f"http://{_url_host(getattr(address, 'host', '?'))}:{getattr(address, 'port', '?')}/mcp"
        from mcpd.transport.tls import is_tls

        if is_tls(self.description):
            shown = "https" + shown[4:]
        self.runtime.listeners.append(shown)
        log.info("Serving MCP on {url} ({description})", url=shown, description=self.description)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._listen is not None:
            self._listen.cancel()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class StdioService(Service):
    """Serves stdin/stdout; the reactor stops when the client closes stdin."""

    def __init__(self, engine: Engine, max_message_size: int, max_write_buffer: int, reactor: Any) -> None:
        self.engine = engine
        self.max_message_size = max_message_size
        self.max_write_buffer = max_write_buffer
        self.reactor = reactor
        self.protocol: StdioProtocol | None = None

    def startService(self) -> None:
        from twisted.internet.stdio import StandardIO

        super().startService()
        self.protocol = StdioProtocol(
            self.engine, self.max_message_size, on_close=self._closed, max_write_buffer=self.max_write_buffer
        )
        StandardIO(self.protocol, reactor=self.reactor)

    def reads(self) -> int:
        """How many times the client's input has been read (`StdioProtocol.reads`)."""
        return self.protocol.reads if self.protocol is not None else 0

    def connections(self) -> list[Any]:
        """stdin/stdout while open (closed by the drain once the last answers are written)."""
        protocol = self.protocol
        return [protocol.transport] if protocol is not None and protocol.connected else []

    def _closed(self) -> None:
        log.info("stdin closed; stopping")
        with contextlib.suppress(ReactorNotRunning):  # already stopping (SIGTERM)
            self.reactor.stop()


class ReadinessService(Service):
    """Ready once the whole tree has started, and each of ``waits`` (a store's first
    connection: a Deferred that never fails, bounded by the store's timeout) has fired;
    draining from the first moment of shutdown.

    Add it last, so it is the first to stop."""

    def __init__(
        self, lifecycle: Lifecycle, clock: IReactorTime, waits: Iterable[Callable[[], Deferred[Any]]] = ()
    ) -> None:
        self.lifecycle = lifecycle
        self.clock = clock
        self.waits = tuple(waits)

    def startService(self) -> None:
        super().startService()
        if self.waits:
            waiting = gatherResults([wait() for wait in self.waits], consumeErrors=True)
            waiting.addBoth(lambda _: self.clock.callLater(0, self._serving))
            return
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


class HealthService(Service):
    """Runs the checks every ``interval`` seconds, so the metrics stay current between /health calls."""

    def __init__(self, checks: HealthChecks, clock: IReactorTime, interval: float = 15.0) -> None:
        self.health = checks
        self.clock = clock
        self.interval = interval
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.health.run)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False).addErrback(lambda f: log.failure("Health checks stopped", f))

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None


class ReloadService(Service):
    """``kill -HUP`` reloads the key and allowlist files; connections stay open."""

    def __init__(self, security: Security, reactor: Any) -> None:
        self.security = security
        self.reactor = reactor
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._hup)

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _hup(self, _signum: int, _frame: Any) -> None:
        self.reactor.callFromThread(self._reload)

    def _reload(self) -> None:
        log.info("SIGHUP: reloading API keys and allowlist")
        with notify.reloading():  # systemd's ExecReload waits for READY=1 again
            self.security.reload()
