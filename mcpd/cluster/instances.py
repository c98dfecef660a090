# -*- test-case-name: tests.test_cluster -*-
"""Who is running: one key per instance (``inst:<id>``), refreshed while it lives.

Each instance writes its host, pid and the embedded stores it opened (kind, host, real path)
under a key that expires ``TTL`` seconds after its last refresh, so ``kill -9`` takes an instance
out of the registry within that time. At start-up an instance compares its embedded stores with
those of the instances already registered and refuses to start when they cannot be shared:

- Milvus Lite runs inside the process that opened its file: two instances cannot share one, and
  two files are two different indexes. Any other instance using Milvus Lite is a conflict.
- SQLite is shared by processes of one host through its file (WAL); instances on other hosts
  would each have a database of their own. The same file on the same host is fine; any other
  SQLite database is a conflict.

The check sees instances that are running: start the first one, then the others.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

if TYPE_CHECKING:
    from collections.abc import Generator

    from mcpd.cluster.bus import ClusterBus

log = Logger(namespace="mcpd.cluster")

TTL = 15.0
REFRESH = 5.0


class SharingConflict(Exception):
    """This instance's embedded stores cannot be shared with the running instances'."""


@attrs.frozen
class EmbeddedStore:
    """An embedded store an instance opened: what it is, where (host and real path)."""

    kind: str  # "sqlite" or "milvus-lite"
    host: str
    path: str

    def conflict(self, other: EmbeddedStore) -> str | None:
        """Why this store and ``other`` (another instance's) cannot serve one deployment."""
        if self.kind != other.kind:
            return None
        if self.kind == "milvus-lite":
            if (self.host, self.path) == (other.host, other.path):
                return f"Milvus Lite's file {self.path} is open in another instance (one process per file)"
            return f"another instance uses its own Milvus Lite file ({other.host}:{other.path}): two indexes"
        if (self.host, self.path) != (other.host, other.path):
            return f"another instance uses the SQLite database {other.host}:{other.path}, not this one's"
        return None


def embedded_stores(
    sqlite_path: str | None, milvus_lite_path: str | None, host: str | None = None
) -> list[EmbeddedStore]:
    """The embedded stores of an instance, named by host and real path."""
    host = host or socket.getfqdn()
    stores = []
    if sqlite_path is not None:
        stores.append(EmbeddedStore("sqlite", host, os.path.realpath(sqlite_path)))
    if milvus_lite_path is not None:
        stores.append(EmbeddedStore("milvus-lite", host, os.path.realpath(milvus_lite_path)))
    return stores


class InstanceRegistry:
    """This instance's entry in the registry, and what it knows of the others."""

    def __init__(self, bus: ClusterBus, stores: list[EmbeddedStore], listen: list[str], clock: Any = None) -> None:
        self.bus = bus
        self.stores = stores
        self.entry = {
            "id": bus.instance,
            "host": socket.getfqdn(),
            "pid": os.getpid(),
            "started": time.time(),
            "listen": listen,
            "stores": [attrs.asdict(store) for store in stores],
        }
        self._refresh = LoopingCall(self.register)
        if clock is not None:
            self._refresh.clock = clock

    def _key(self, instance: str) -> str:
        return self.bus.key("inst", instance)

    @inlineCallbacks
    def others(self) -> Generator[Deferred[Any], Any, list[dict[str, Any]]]:
        """The entries of the other running instances (forgetting those that are gone)."""
        redis, members = self.bus.redis, self.bus.key("instances")
        ids = [i for i in (yield redis.execute("SMEMBERS", members)) or () if i != self.bus.instance]
        if not ids:
            return []
        values = yield redis.execute("MGET", *(self._key(i) for i in ids))
        gone = [i for i, value in zip(ids, values, strict=True) if not value]
        if gone:
            yield redis.execute("SREM", members, *gone)
        return [json.loads(value) for value in values if value]

    @inlineCallbacks
    def check(self) -> Generator[Deferred[Any], Any, None]:
        """Refuse (`SharingConflict`) embedded stores the running instances make unshareable."""
        for other in (yield self.others()):
            for mine in self.stores:
                for theirs in other.get("stores", ()):
                    why = mine.conflict(EmbeddedStore(**theirs))
                    if why is not None:
                        raise SharingConflict(
                            f"{why}. Instance {other['id']} (pid {other['pid']} on {other['host']}) shares this "
                            "Redis: several instances need MySQL/MariaDB (--database-url) and a Milvus server "
                            "(--milvus-uri), or one --redis-url each"
                        )

    def register(self) -> Deferred[Any]:
        """Write (or refresh) this instance's entry."""
        redis = self.bus.redis
        d = redis.execute("SET", self._key(self.bus.instance), json.dumps(self.entry), "PX", int(TTL * 1000))
        d.addCallback(lambda _ok: redis.execute("SADD", self.bus.key("instances"), self.bus.instance))
        return d.addErrback(lambda f: log.warn("Could not refresh this instance in Redis: {e}", e=f.getErrorMessage()))

    def alive(self, instance: str) -> Deferred[bool]:
        """Whether ``instance`` has refreshed its entry within the last `TTL` seconds."""
        return self.bus.redis.execute("EXISTS", self._key(instance)).addCallback(lambda n: int(n) > 0)

    def start(self) -> None:
        self._refresh.start(REFRESH, now=True)

    def stop(self) -> Deferred[Any]:
        if self._refresh.running:
            self._refresh.stop()
        redis = self.bus.redis
        d = redis.execute("DEL", self._key(self.bus.instance))
        d.addCallback(lambda _n: redis.execute("SREM", self.bus.key("instances"), self.bus.instance))
        return d.addErrback(lambda _f: None)
