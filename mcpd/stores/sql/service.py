# -*- test-case-name: tests.test_sqlstore -*-
"""The SQL store as a service of the daemon's tree: opened (and migrated) at start-up, its
thread pool started; on shutdown, after the engine has cancelled what was in flight, the pool is
joined and the connections closed."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime

from mcpd.stores.sql.database import SQLDatabase
from mcpd.stores.threads import ThreadPoolService


class SQLStoreService(Service):
    """Runs one `SQLDatabase`."""

    def __init__(self, database: SQLDatabase, clock: IReactorTime) -> None:
        self.database = database
        self.threads = [ThreadPoolService(pool, clock) for pool in database.pools]

    def startService(self) -> None:
        # Blocking, before the reactor serves: a database that cannot be used stops start-up
        # with one line (mcpd.lifecycle.OrderedMultiService names this service).
        if self.database.engine is None:  # not opened already, in a thread (mcpd.stores.opening)
            self.database.open()
        for threads in self.threads:
            threads.startService()
        super().startService()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        d = gatherResults([threads.stopService() for threads in self.threads])
        d.addBoth(lambda _: self.database.close())
        return d
