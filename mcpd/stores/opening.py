# -*- test-case-name: tests.test_daemon -*-
"""Stores opened in the background, off the first answer's path.

Opening the SQL store means importing SQLAlchemy and Alembic, connecting and checking the schema:
more than twice the rest of a ``mcpd --stdio`` start-up. Under ``--stdio`` it runs in a thread
once the first answer is written (or `OPEN_WAIT` seconds after the reactor starts, if no client
speaks by then), so that answer does not share the process with it; a call that needs the store
before then (a 2026-07-28 client's first line may be one) starts it at once. Until it is open, a
`StandIn` answers for each interface the store provides: every store method returns a Deferred
(`mcpd.interfaces`), so a call made meanwhile simply waits for the opening. A store that cannot
be opened stops mcpd, as one that fails to open in the foreground does (the message on stderr).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from mcpd.interfaces import DOWN, IStore, StoreStatus, StoreUnavailable

log = Logger(namespace="mcpd.stores")

# With ``after``: the longest the opening waits for it once the reactor runs (a store that cannot
# be opened still stops mcpd soon when no client speaks).
OPEN_WAIT = 1.0

# What ``open_stores`` gives back: the service that runs the opened store, and the provider of
# each interface (`mcpd.interfaces.IStore` among them).
Opened = tuple[Service, Mapping[Any, Any]]


class BackgroundOpening(Service):
    """Runs ``open_stores`` (blocking: it imports, builds and opens the store and returns what
    `Opened` says) in the reactor's thread pool once the reactor runs (with ``after``: once it
    fires, or `OPEN_WAIT` seconds later), then starts the store's service. ``stand_ins`` are
    registered in place of the providers until then."""

    def __init__(
        self,
        name: str,
        interfaces: Iterable[Any],
        open_stores: Callable[[], Opened],
        reactor: Any,
        stop: Callable[[], None] | None = None,
    ) -> None:
        self.store_name = name
        self.open_stores = open_stores
        self.reactor = reactor
        # What a failed opening does after saying why: stop mcpd (the reactor), by default.
        self.stop = stop if stop is not None else self._stop_reactor
        # Calls made before the opening finished, each waiting for it (`StandIn`).
        self.waiters: list[Deferred[None]] = []
        # Its `IStore` side first (health, server.info), then one for each interface it provides.
        self.stand_ins: dict[Any, StandIn] = {IStore: StoreStandIn(self)}
        self.stand_ins.update((interface, StandIn(self, interface)) for interface in interfaces)
        # The store's own service, once it is open.
        self.store_service: Service | None = None
        # Why the store could not be opened (mcpd then stops, exit status 1).
        self.failure: Failure | None = None
        self._opening: Deferred[Any] | None = None
        # What the opening waits for (the first answer under --stdio), if anything.
        self.after: Deferred[None] | None = None
        self._waiting: Any = None

    def startService(self) -> None:
        super().startService()
        if self.after is None:
            self.reactor.callWhenRunning(self._open)
            return
        self._waiting = self.reactor.callLater(OPEN_WAIT, self._open)
        self.after.addCallback(lambda _: self._open())

    def wait(self) -> Deferred[None]:
        """Fires once the opening has finished, which starts now if it has not yet: the call
        waiting for it holds up its own answer, so there may be no first answer to wait for."""
        waiting: Deferred[None] = Deferred()
        self.waiters.append(waiting)
        self._open()
        return waiting

    def _open(self) -> None:
        if self._waiting is not None and self._waiting.active():
            self._waiting.cancel()
        if not self.running or self._opening is not None:
            return
        d = deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self.open_stores)
        self._opening = d.addCallbacks(self._started, self._failed)

    def _started(self, opened: Opened) -> None:
        service, providers = opened
        self.store_service = service
        service.startService()
        for stand_in in self.stand_ins.values():
            stand_in.provider = providers[stand_in.interface]
        self._release()

    def _failed(self, failure: Failure) -> None:
        self.failure = failure
        why = failure.getErrorMessage()
        log.failure("Opening the {name} store failed", failure, name=self.store_name)
        for stand_in in self.stand_ins.values():
            stand_in.unavailable = f"the {self.store_name} store could not be opened: {why}"
        print(f"mcpd: cannot start {self.store_name}: {why}", file=sys.__stderr__)
        self.stop()
        self._release()  # each waiting call fails with StoreUnavailable saying why

    def _stop_reactor(self) -> None:
        if self.reactor.running:
            self.reactor.stop()

    def _release(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiting in waiters:
            waiting.callback(None)

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        if self._waiting is not None and self._waiting.active():
            self._waiting.cancel()
        opening = self._opening if self._opening is not None and not self._opening.called else succeed(None)
        return opening.addCallback(lambda _: self._stop_store())

    def _stop_store(self) -> Any:
        service = self.store_service
        return service.stopService() if service is not None and service.running else None


class StandIn:
    """Answers for one interface of a store being opened: each method waits for the opening,
    then calls the store's own; once open, the store's methods are handed out directly."""

    def __init__(self, opening: BackgroundOpening, interface: Any) -> None:
        self.opening = opening
        self.interface = interface
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
            return self.opening.wait().addCallback(lambda _: getattr(self, name)(*args, **kwargs))

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
