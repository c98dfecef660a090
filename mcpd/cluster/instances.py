# -*- test-case-name: tests.test_cluster -*-
"""Who is running: one key per instance (``inst:<id>``), refreshed while it lives.

Each instance writes its host, pid and the identity of each store it uses (the SQL store, the
search index) under a key that expires ``TTL`` seconds after its last refresh, so ``kill -9``
takes an instance out of the registry within that time. At start-up an instance compares its
stores with those of the instances already registered and refuses to start when they would not
be one deployment:

- every instance must use the same SQL store and the same index: otherwise each would answer
  from data of its own (a MariaDB URL against a SQLite file, two SQLite files, two servers);
- SQLite is shared by the processes of one host through its file (WAL), so the same file on
  the same host is fine, but instances on two hosts each have a file of their own;
- Milvus Lite runs inside the process that opened its file: no two instances can share one.

The check sees instances that are running: start the first one, then the others.

An entry also says which process it is (boot, pid namespace, pid and start time, on Linux), so
an instance on the same host can tell at once that another one was killed (`InstanceRegistry.gone`)
instead of waiting for its entry to expire.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

if TYPE_CHECKING:
    from collections.abc import Generator

    from mcpd.cluster.bus import ClusterBus

log = Logger(namespace="mcpd.cluster")

TTL = 15.0
REFRESH = 5.0
# Seconds between tries to write this instance's entry while Redis does not answer, so the
# entry is back as soon as Redis is.
RETRY = 0.5
# How many instances found stopped an instance remembers (their ids are never used again).
STOPPED_KEPT = 1024
# Seconds an instance found stopped is marked so in Redis for every instance: one not `sure`
# yet (just started) would otherwise take the missing entry for nothing known, and answer its
# tasks as working while the instance that found it stopped answers them failed.
STOPPED_TTL = 3600.0


# KEYS: an instance's entry, the set of instances, its stopped mark. ARGV: the entry as read,
# the instance's id, the mark's TTL (ms). Forgets the instance if its entry is still the one
# read, and marks it stopped.
_FORGET = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
return 1
"""


def _read(path: str) -> str | None:
    """A small text file of /proc (kept in memory by the kernel: no disk to wait for)."""
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_state(pid: int | str, proc: str = "/proc") -> tuple[str, str] | None:
    """A process's state letter and start time (clock ticks after boot, ``<proc>/<pid>/stat``),
    or None when that file cannot be read: no process has this pid, or /proc does not show it
    (``ProtectProc=invisible``, another pid namespace's)."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    # After the command name, which may hold any bytes (spaces, ')', not ASCII): its last ')'.
    fields = stat.rpartition(b")")[2].split()
    if len(fields) <= 19:
        return None
    return fields[0].decode("ascii", "replace"), fields[19].decode("ascii", "replace")


def process_exists(pid: int) -> bool:
    """Whether a process has ``pid`` as the kernel says (``kill(pid, 0)``), even one /proc
    does not show or of another user: False only for "no such process"."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, another user's
        return True
    return True


def process_identity() -> dict[str, Any]:
    """What tells this process apart from any other, before and after it (None where /proc
    does not say)."""
    state = process_state("self")
    return {
        "boot": _read("/proc/sys/kernel/random/boot_id"),
        "pidns": _pid_namespace(),
        "pid": os.getpid(),
        "start_ticks": state[1] if state is not None else None,
    }


class SharingConflict(Exception):
    """This instance's stores cannot serve one deployment with the running instances'."""


# Stores that live in a file of their own host: their location is host and real path.
EMBEDDED = frozenset({"sqlite", "milvus-lite"})


@attrs.frozen
class StoreIdentity:
    """Which store an instance uses for a ``role`` (``sql``, ``index``): its ``kind`` and where
    it is (a URL without password; for an embedded store, the host and the file's real path)."""

    role: str
    kind: str
    location: str

    def conflict(self, other: StoreIdentity) -> str | None:
        """Why this store and ``other`` (another instance's) cannot serve one deployment."""
        if self.role != other.role:
            return None
        if self.kind == other.kind == "milvus-lite" and self.location == other.location:
            return f"Milvus Lite's file {self.location} is open in another instance (one process per file)"
        if (self.kind, self.location) != (other.kind, other.location):
            why = "a file of its own host" if EMBEDDED & {self.kind, other.kind} else "another one"
            return (
                f"this instance's {self.role} store is {self.kind} at {self.location}, but another instance uses "
                f"{other.kind} at {other.location} ({why}): the instances would not share their data"
            )
        return None


def store_identities(
    sql: tuple[str, str] | None, index: tuple[str, str] | None, host: str | None = None
) -> list[StoreIdentity]:
    """The identities of an instance's stores, each given as (kind, URL or file path)."""
    host = host or socket.getfqdn()
    found = []
    for role, store in (("sql", sql), ("index", index)):
        if store is not None:
            kind, where = store
            location = f"{host}:{os.path.realpath(where)}" if kind in EMBEDDED else where
            found.append(StoreIdentity(role, kind, location))
    return found


class InstanceRegistry:
    """This instance's entry in the registry, and what it knows of the others.

    A missing entry means its instance has gone only once this instance has written its own
    entry at every try for longer than ``sure_after`` seconds (`TTL` and a refresh): after a
    Redis outage longer than `TTL` every entry has expired, and a live instance needs that
    long (at worst) to be connected again and write its entry (`sure`)."""

    def __init__(
        self,
        bus: ClusterBus,
        stores: list[StoreIdentity],
        listen: list[str],
        clock: Any = None,
        sure_after: float = TTL + REFRESH,
        proc: str = "/proc",
    ) -> None:
        self.bus = bus
        self.stores = stores
        self.entry = {
            "id": bus.instance,
            "host": socket.getfqdn(),
            **process_identity(),
            "started": time.time(),
            "listen": listen,
            "stores": [attrs.asdict(store) for store in stores],
        }
        self.sure_after = sure_after
        self.proc = proc
        # The instances found stopped here, oldest first (at most `STOPPED_KEPT`): their
        # entries forgotten, they stay gone whatever `sure` says.
        self._stopped: dict[str, None] = {}
        self._refresh = LoopingCall(self.register)
        if clock is not None:
            self._refresh.clock = clock
        self.clock = self._refresh.clock
        # Since when every write of this instance's entry has succeeded (None: the last failed).
        self._since: float | None = None
        self._writing = False
        self._failing = False
        self._retry: Any = None

    def key(self, instance: str) -> str:
        """The registry key of ``instance``."""
        return self.bus.key("inst", instance)

    @inlineCallbacks
    def others(self) -> Generator[Deferred[Any], Any, list[dict[str, Any]]]:
        """The entries of the other running instances (forgetting those that are gone)."""
        redis, members = self.bus.redis, self.bus.key("instances")
        ids = [i for i in (yield redis.execute("SMEMBERS", members)) or () if i != self.bus.instance]
        if not ids:
            return []
        values = yield redis.execute("MGET", *(self.key(i) for i in ids))
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
                    why = mine.conflict(StoreIdentity(**theirs))
                    if why is not None:
                        raise SharingConflict(
                            f"{why}. Instance {other['id']} (pid {other['pid']} on {other['host']}) shares this "
                            "Redis: every instance needs the same MySQL/MariaDB (--db-url) and Milvus server "
                            "(--milvus-uri), or a --redis-url (or --redis-prefix) of its own"
                        )

    def register(self) -> Deferred[Any]:
        """Write (or refresh) this instance's entry; while Redis does not answer, try again
        every `RETRY` seconds."""
        if self._writing:
            return succeed(None)
        self._writing = True
        redis = self.bus.redis
        d = redis.execute("SET", self.key(self.bus.instance), json.dumps(self.entry), "PX", int(TTL * 1000))
        d.addCallback(lambda _ok: redis.execute("SADD", self.bus.key("instances"), self.bus.instance))
        return d.addCallbacks(self._written, self._not_written)

    def _written(self, _added: Any) -> None:
        self._writing = False
        if self._failing:
            log.info("This instance's entry is in Redis again")
            self._failing = False
        if self._since is None:
            self._since = self.clock.seconds()

    def _not_written(self, failure: Any) -> None:
        self._writing = False
        if not self._failing:
            log.warn("Could not refresh this instance in Redis: {e}", e=failure.getErrorMessage())
            self._failing = True
        self._since = None
        if self._refresh.running and self._retry is None:
            self._retry = self.clock.callLater(RETRY, self._again)

    def _again(self) -> None:
        self._retry = None
        self.register()

    def sure(self) -> bool:
        """Whether an instance without an entry has gone: this instance's own entry has been
        written at every try for more than ``sure_after`` seconds, so every instance alive and
        connected to Redis had the time to write its entry again after an outage. Until then
        no instance's tasks are settled as orphans."""
        return self._since is not None and self.clock.seconds() - self._since > self.sure_after

    def alive(self, instance: str) -> Deferred[bool]:
        """Whether ``instance`` has refreshed its entry within the last `TTL` seconds."""
        return self.bus.redis.execute("EXISTS", self.key(instance)).addCallback(lambda n: int(n) > 0)

    def gone(self, instance: str, *, lapsed_is_gone: bool = False) -> Deferred[bool]:
        """Whether ``instance`` is known to have stopped: its entry has lapsed (once `sure`, or
        at once with ``lapsed_is_gone``), or it names a process of this host that is not running
        any more (``kill -9``: not `TTL` seconds later, at once). Such an entry is forgotten and
        the instance marked stopped (for `STOPPED_TTL`), for every instance, and remembered here:
        its other tasks and claims are gone too, on every instance, `sure` or not."""
        if instance in self._stopped:
            return succeed(True)
        redis = self.bus.redis

        def read(values: list[Any]) -> Any:
            data, marked = values
            if data is None:
                # Found stopped by another instance (its mark), else lapsed: gone once `sure`.
                return forgotten(None) if marked else (lapsed_is_gone or self.sure())
            if not self._stopped_here(json.loads(data)):
                return False
            log.info("Instance {id} has stopped (its process is not running): forgetting it", id=instance)
            keys = [self.key(instance), self.bus.key("instances"), self.stopped_key(instance)]
            d = redis.eval(_FORGET, keys, [data, instance, int(STOPPED_TTL * 1000)])
            return d.addCallback(forgotten)

        def forgotten(_deleted: Any) -> bool:
            # Its entry is gone (deleted now, or by another instance of this host before).
            self._stopped[instance] = None
            if len(self._stopped) > STOPPED_KEPT:
                del self._stopped[next(iter(self._stopped))]
            return True

        return redis.execute("MGET", self.key(instance), self.stopped_key(instance)).addCallback(read)

    def found_stopped(self, instance: str) -> bool:
        """Whether `gone` has found ``instance`` stopped here (or marked so by another
        instance): gone for good, no need to ask Redis."""
        return instance in self._stopped

    def stopped_key(self, instance: str) -> str:
        """The mark of an instance found stopped (`gone`), for every instance."""
        return self.bus.key("inst-stopped", instance)

    def _stopped_here(self, entry: dict[str, Any]) -> bool:
        """Whether ``entry`` is of a process of this host (same boot, same pid namespace)
        that is not running: no process has its pid, or another one does, or it is a zombie."""
        for name in ("host", "boot", "pidns"):
            if self.entry[name] is None or entry.get(name) != self.entry[name]:
                return False  # another host (or no /proc): only its entry's TTL tells
        pid, start_ticks = entry.get("pid"), entry.get("start_ticks")
        if type(pid) is not int or pid <= 0 or start_ticks is None:
            return False  # kill(0) or kill(-1) would ask about process groups
        state = process_state(pid, self.proc)
        if state is None:
            # /proc may hide a live process (debian/mcpd.service: ProtectProc=invisible,
            # PrivateUsers=yes): only the kernel's "no such process" says it has stopped.
            return not process_exists(pid)
        return state[1] != start_ticks or state[0] in "ZX"

    def start(self) -> None:
        self._refresh.start(REFRESH, now=True)

    def stop(self) -> Deferred[Any]:
        if self._refresh.running:
            self._refresh.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        redis = self.bus.redis
        d = redis.execute("DEL", self.key(self.bus.instance))
        d.addCallback(lambda _n: redis.execute("SREM", self.bus.key("instances"), self.bus.instance))
        return d.addErrback(lambda _f: None)
