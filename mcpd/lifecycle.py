# -*- test-case-name: tests.test_lifecycle -*-
"""Start-up and graceful shutdown of the daemon's service tree.

The tree starts in dependency order (thread pool, engine, stores, then listeners) and stops in the
reverse order *one service after the other* (`OrderedMultiService`; Twisted's `MultiService`
stops its children all at once). On SIGTERM / SIGINT:

1. `mcpd.services.ReadinessService` marks the daemon draining: ``/ready`` and ``/health`` answer 503, new
   requests on open connections are refused 503 with ``Retry-After``;
2. the listeners stop accepting;
3. `mcpd.services.DrainService` ends subscription streams, lets the calls in flight finish (up to
   ``--shutdown-timeout``), cancels those still running (each is answered with a "server shutting
   down" error on its own stream), closes SSE streams with a ``retry`` hint and WebSockets with
   1001, then closes the connections once their answers are written;
4. the engine cancels what is left (tasks), the stores stop, the thread pool is joined.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import inlineCallbacks, maybeDeferred
from twisted.logger import Logger

log = Logger(namespace="mcpd.lifecycle")

STARTING, SERVING, DRAINING, STOPPED = "starting", "serving", "draining", "stopped"


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
