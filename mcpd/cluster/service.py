# -*- test-case-name: tests.test_cluster -*-
"""The cluster's place in the daemon: built by `mcpd.daemon` when ``--redis-url`` is given."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpd.cluster.bus import ClusterBus
from mcpd.cluster.instances import InstanceRegistry, SharingConflict, StoreIdentity
from mcpd.cluster.journal import Journal
from mcpd.cluster.relay import ChangeRelay, TaskRelay
from mcpd.cluster.sessions import ClusterSessions, SSEForwarding
from mcpd.interfaces import StoreUnavailable
from mcpd.observe.health import DOWN, OK, Check, CheckResult

if TYPE_CHECKING:
    from mcpd.protocol.engine import Engine
    from mcpd.protocol.session import SessionStore
    from mcpd.stores.redis import RedisConnection

log = Logger(namespace="mcpd.cluster")


class Cluster(Service):
    """This instance's part in a deployment of several: the bus, its entry in the registry, and
    what makes sessions, tasks and changes work across instances.

    Starting connects the bus and checks the embedded stores against the running instances'; a
    conflict (`SharingConflict`) stops the daemon with one line, before it is marked ready.
    """

    def __init__(
        self,
        redis: RedisConnection,
        engine: Engine,
        sessions: SessionStore,
        sse_sessions: SessionStore,
        *,
        stores: list[StoreIdentity],
        listen: list[str],
        replay_limit: int,
        session_timeout: float,
        clock: Any,
    ) -> None:
        self.clock = clock
        self.bus = ClusterBus(redis, clock=clock)
        self.registry = InstanceRegistry(self.bus, stores, listen, clock=clock)
        self.journal = Journal(self.bus, replay_limit, session_timeout)
        self.sessions = ClusterSessions(self.bus, self.journal, self.registry, sessions, engine.changes)
        self.sse = SSEForwarding(self.bus, sse_sessions)
        sessions.cluster = self.sessions
        sse_sessions.cluster = self.sse
        self.changes = ChangeRelay(self.bus, engine.changes)
        self.tasks = TaskRelay(self.bus, engine.tasks, clock, self.registry)
        self.wait = max(5.0, 3 * redis.config.timeout)
        self.checked: Deferred[None] | None = None

    @property
    def instance(self) -> str:
        return self.bus.instance

    def startService(self) -> None:
        super().startService()
        log.info("Instance {id} of a cluster sharing Redis", id=self.instance)
        deadline = self.clock.seconds() + self.wait
        d = self.bus.start(self.wait)
        d.addCallback(lambda _ready: self._check(deadline))
        d.addCallback(lambda _checked: self.registry.start())
        d.addCallback(lambda _started: self.tasks.start())
        d.addErrback(self._refused)
        self.checked = d

    def _check(self, deadline: float) -> Deferred[None]:
        """The sharing check, once the command connections answer (they connect apart from
        the bus's subscriber): tried again until ``deadline``."""

        def retry(failure: Failure) -> Any:
            failure.trap(StoreUnavailable)
            if self.clock.seconds() >= deadline:
                return failure
            return deferLater(self.clock, 0.2, self._check, deadline)

        return self.registry.check().addErrback(retry)

    def _refused(self, failure: Failure) -> None:
        why = failure.getErrorMessage() if failure.check(SharingConflict) else str(failure.value)
        line = f"mcpd: cannot start cluster: {why}"
        log.critical(line)
        print(line, file=sys.__stderr__, flush=True)
        # The tree has started: stopping the reactor would exit 0. One line and a failing status.
        os._exit(1)

    def health_check(self) -> Check:
        """/health's word on the bus (``cluster_bus``, required): down while it does not listen,
        for this instance then hears nothing from the others (cancels, answers, task and session
        events) until it listens again."""
        bus = self.bus

        def probe() -> CheckResult:
            if bus.connected:
                return CheckResult("cluster_bus", OK, 0.0, detail=f"instance {bus.instance}")
            why = bus.last_error or f"connecting to Redis at {bus.redis.config.shown_url}"
            detail = f"{why}; this instance does not hear the others meanwhile (mcpd reconnects by itself)"
            return CheckResult("cluster_bus", DOWN, 0.0, detail=detail)

        return Check("cluster_bus", probe)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self.tasks.stop()
        d = self.registry.stop()
        d.addBoth(lambda _: self.bus.stop())
        return d
