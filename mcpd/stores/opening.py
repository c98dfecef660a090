# -*- test-case-name: tests.test_opening -*-
"""Stores opened in the background, off the client's first calls.

Opening the SQL store means importing SQLAlchemy, connecting and checking the schema: more than
the rest of a ``mcpd --stdio`` start-up. Under ``--stdio`` it runs in a thread when the client is
quiet (no input for `QUIET` seconds: a client that has listed the tools and waits for its user),
when a call needs the store, or at the latest `OPEN_LATEST` seconds after the reactor starts, so
that a client's first burst of calls neither waits behind it nor shares the core with it.

Until it is open, a `StandIn` answers for each interface the store provides: every store method
returns a Deferred (`mcpd.interfaces`), so a call made meanwhile waits for the opening, which it
starts at once. Housekeeping (the audit trail's writes and pruning, named by ``housekeeping``)
waits without starting it: the audit records stay queued in memory until then, and `OpenAtExit`
makes what is still to be written at shutdown open the store; housekeeping that can wait for
another process (pruning, named by ``dropped_at_exit``) is dropped then instead. A store that
cannot be opened stops mcpd, as one that fails to open in the foreground does (the message on
stderr).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ReactorNotRunning
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from mcpd.interfaces import DOWN, IStore, StoreStatus, StoreUnavailable

log = Logger(namespace="mcpd.stores")

# With ``activity``: how long the client must send nothing for the store to open (looked at this
# often), and the longest the opening waits for that once the reactor runs. A store that cannot be
# opened still stops mcpd soon, and the audit records held meanwhile stay few (a client calling
# without a pause at 10,000 calls/s queues 20,000, a fifth of the audit writer's backlog).
QUIET = 0.25
OPEN_LATEST = 2.0

# What ``open_stores`` gives back: the service that runs the opened store, and the provider of
# each interface (`mcpd.interfaces.IStore` among them).
Opened = tuple[Service, Mapping[Any, Any]]


class BackgroundOpening(Service):
    """Runs ``open_stores`` (blocking: it imports, builds and opens the store and returns what
    `Opened` says) in the reactor's thread pool, then starts the store's service. Without
    ``activity`` it opens once the reactor runs; with it (a count of what the client has sent),
    once the count stands still for `QUIET` seconds, or `OPEN_LATEST` seconds after the reactor
    starts. A call through a stand-in opens it at once, except the ``housekeeping`` methods of
    each interface, which wait for the opening until `due` is called; those of them in
    ``dropped_at_exit`` are dropped then (they fail with `StoreUnavailable`) rather than open
    it. ``stand_ins`` are registered in place of the providers until then."""

    def __init__(
        self,
        name: str,
        interfaces: Iterable[Any],
        open_stores: Callable[[], Opened],
        reactor: Any,
        stop: Callable[[], None] | None = None,
        housekeeping: Mapping[Any, Iterable[str]] | None = None,
        dropped_at_exit: Mapping[Any, Iterable[str]] | None = None,
    ) -> None:
        self.store_name = name
        self.open_stores = open_stores
        self.reactor = reactor
        # What a failed opening does after saying why: stop mcpd (the reactor), by default.
        self.stop = stop if stop is not None else self._stop_reactor
        # Calls made before the opening finished, each waiting for it (`StandIn`).
        self.waiters: list[Deferred[None]] = []
        # Those of them that `due` drops rather than open the store for.
        self.droppable: list[Deferred[None]] = []
        patient = housekeeping or {}
        dropped = dropped_at_exit or {}
        # Its `IStore` side first (health, server.info), then one for each interface it provides.
        self.stand_ins: dict[Any, StandIn] = {IStore: StoreStandIn(self)}
        self.stand_ins.update(
            (
                interface,
                StandIn(self, interface, frozenset(patient.get(interface, ())), frozenset(dropped.get(interface, ()))),
            )
            for interface in interfaces
        )
        # The store's own service, once it is open.
        self.store_service: Service | None = None
        # Why the store could not be opened (mcpd then stops, exit status 1).
        self.failure: Failure | None = None
        self._opening: Deferred[Any] | None = None
        # What the client has sent so far (under --stdio, `StdioService.reads`), if anything.
        self.activity: Callable[[], int] | None = None
        # Housekeeping waits open the store too (`due`).
        self.urgent = False
        self._quiet: LoopingCall | None = None
        self._latest: Any = None
        self._seen = 0

    def startService(self) -> None:
        super().startService()
        if self.activity is None:
            self.reactor.callWhenRunning(self._open)
            return
        self._seen = self.activity()
        self._latest = self.reactor.callLater(OPEN_LATEST, self._open)
        self._quiet = LoopingCall(self._look)
        self._quiet.clock = self.reactor
        self._quiet.start(QUIET, now=False)

    def _look(self) -> None:
        """Open once the client has sent nothing since the last look."""
        assert self.activity is not None
        seen, self._seen = self._seen, self.activity()
        if seen == self._seen:
            self._open()

    def wait(self, start: bool = True, droppable: bool = False) -> Deferred[None]:
        """Fires once the opening has finished, which starts now unless ``start`` is false (a
        housekeeping call) and the opening is not `due`: the call waiting for it holds up its
        own answer, so there may be no moment of quiet to wait for. A ``droppable`` wait fails
        with `StoreUnavailable` instead once the opening is due, unless the store is opening."""
        waiting: Deferred[None] = Deferred()
        if droppable and self.urgent and self._opening is None:
            waiting.errback(self._stopping())
            return waiting
        (self.droppable if droppable else self.waiters).append(waiting)
        if start or (self.urgent and not droppable):
            self._open()
        return waiting

    def due(self) -> None:
        """From now on housekeeping opens the store too (mcpd is stopping: `OpenAtExit`), except
        the droppable kind, which fails now if the store is not opening; open it now if some
        call waits."""
        self.urgent = True
        if self._opening is None:
            droppable, self.droppable = self.droppable, []
            for waiting in droppable:
                waiting.errback(self._stopping())
        if self.waiters:
            self._open()

    def _stopping(self) -> StoreUnavailable:
        return StoreUnavailable(self.store_name, "mcpd is stopping before it was opened")

    def _open(self) -> None:
        self._stop_timers()
        if not self.running or self._opening is not None:
            return
        d = deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self.open_stores)
        self._opening = d.addCallbacks(self._started, self._failed)

    def _stop_timers(self) -> None:
        if self._latest is not None and self._latest.active():
            self._latest.cancel()
        if self._quiet is not None and self._quiet.running:
            self._quiet.stop()

    def _started(self, opened: Opened) -> None:
        service, providers = opened
        self.store_service = service
        try:
            service.startService()
            for stand_in in self.stand_ins.values():
                stand_in.provider = providers[stand_in.interface]
        except Exception:
            # Failed as an opening that raised: the waiting calls are told why, and mcpd stops.
            self._failed(Failure())
            return
        self._release()

    def _failed(self, failure: Failure) -> None:
        self.failure = failure
        why = failure.getErrorMessage()
        log.failure("Opening the {name} store failed", failure, name=self.store_name)
        for stand_in in self.stand_ins.values():
            stand_in.provider = None
            stand_in.unavailable = f"the {self.store_name} store could not be opened: {why}"
        print(f"mcpd: cannot start {self.store_name}: {why}", file=sys.__stderr__)
        # The waiting calls first (each fails with StoreUnavailable saying why): stopping mcpd
        # may fail, and at shutdown the audit writer's last flush waits for them.
        self._release()
        self.stop()

    def _stop_reactor(self) -> None:
        with contextlib.suppress(ReactorNotRunning):  # already stopping (stdin closed, SIGTERM)
            self.reactor.stop()

    def _release(self) -> None:
        waiters, self.waiters, self.droppable = [*self.waiters, *self.droppable], [], []
        for waiting in waiters:
            waiting.callback(None)

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        self._stop_timers()
        opening = self._opening if self._opening is not None and not self._opening.called else succeed(None)
        return opening.addCallback(lambda _: self._stop_store())

    def _stop_store(self) -> Any:
        service = self.store_service
        return service.stopService() if service is not None and service.running else None


class StandIn:
    """Answers for one interface of a store being opened: each method waits for the opening
    (started by the call, unless the method is one of ``housekeeping``), then calls the store's
    own; once open, the store's methods are handed out directly."""

    def __init__(
        self,
        opening: BackgroundOpening,
        interface: Any,
        housekeeping: frozenset[str] = frozenset(),
        dropped_at_exit: frozenset[str] = frozenset(),
    ) -> None:
        self.opening = opening
        self.interface = interface
        self.housekeeping = housekeeping
        self.dropped_at_exit = dropped_at_exit
        self.provider: Any = None
        self.unavailable: str | None = None
        alsoProvides(self, interface)

    def __getattr__(self, name: str) -> Any:
        provider = self.__dict__.get("provider")
        if provider is not None:
            return getattr(provider, name)
        if name.startswith("__") or name not in self.interface:
            raise AttributeError(name)

        def later(*args: Any, **kwargs: Any) -> Deferred[Any]:
            if self.unavailable is not None:
                return fail(StoreUnavailable(self.opening.store_name, self.unavailable))
            waiting = self.opening.wait(start=name not in self.housekeeping, droppable=name in self.dropped_at_exit)
            return waiting.addCallback(lambda _: getattr(self, name)(*args, **kwargs))

        return later


@implementer(IStore)
class StoreStandIn(StandIn):
    """The `IStore` side of a store being opened (server.info describes it as starting)."""

    def __init__(self, opening: BackgroundOpening) -> None:
        super().__init__(opening, IStore)

    @property
    def name(self) -> str:
        return self.provider.name if self.provider is not None else self.opening.store_name

    def status(self) -> StoreStatus:
        if self.provider is not None:
            return self.provider.status()  # type: ignore[no-any-return]
        return StoreStatus(self.name, DOWN, self.unavailable or f"the {self.name} store is starting", None)

    def describe(self) -> dict[str, Any]:
        if self.provider is not None:
            return self.provider.describe()  # type: ignore[no-any-return]
        return {"name": self.name, "state": "failed" if self.unavailable else "starting"}

    def collectors(self) -> list[Any]:
        return self.provider.collectors() if self.provider is not None else []  # type: ignore[no-any-return]


class OpenAtExit(Service):
    """Placed after the services whose housekeeping waits for ``opening`` (the audit writer), so
    it stops before them: what they still have to write as they stop opens the store."""

    def __init__(self, opening: BackgroundOpening) -> None:
        self.opening = opening

    def stopService(self) -> None:
        super().stopService()
        self.opening.due()
