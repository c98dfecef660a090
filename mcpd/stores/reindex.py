# -*- test-case-name: tests.test_kb -*-
"""Keeping the search index in line with SQL.

`Reindexer` is a service of the daemon's tree: it works off the SQL outbox of index changes a
write could not make (the index or the embedding service was down, or mcpd stopped first),
oldest first, at start-up and whenever a write leaves work; while the index stays down it waits
longer and longer between tries (up to `MAX_BACKOFF`), and it looks again every `IDLE_INTERVAL`
for work another instance left. Every change it makes reflects what SQL holds then, so doing one
twice, or late, is harmless; a row whose record changed while it was being indexed stays (see
`SQLKnowledge.settle`) and is done again at once.

`rebuild` re-creates index collections from SQL (``mcpd reindex``): after the embedding model
changed, or the index's data was lost. It builds a new collection and swaps it in when full:
searches use the old one meanwhile. It holds a lease on each collection it rebuilds (a marker
row, see `SQLKnowledge.rebuilding`), renewed as it goes (every `RENEW_EVERY` seconds at most):
one rebuild of a collection at a time, and the markers of a rebuild that died expire, the
re-indexer deleting them.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from mcpd.interfaces import StoreError, StoreUnavailable
from mcpd.stores.knowledge import KnowledgeStore
from mcpd.stores.milvus import MilvusIndex

log = Logger(namespace="mcpd.reindex")

BATCH = 200  # outbox rows read (and indexed together) at once
FIRST_BACKOFF, MAX_BACKOFF = 0.5, 15.0
IDLE_INTERVAL = 30.0
REBUILD_PAGE = 500
GRACE = 2.0  # seconds a rebuild waits after its swap for writes under way to settle
BUILT = "__b"  # a rebuilt collection's name: <index collection>__b<milliseconds>
RENEW_EVERY = 30.0  # seconds between renewals of a rebuild's leases (a tenth of MARKER_LEASE)


class Reindexer(Service):
    """Drains the outbox of a `KnowledgeStore` (see the module docstring)."""

    def __init__(self, store: KnowledgeStore, clock: Any, idle: float = IDLE_INTERVAL) -> None:
        self.store = store
        self.clock = clock
        self.idle = idle
        self.backoff = 0.0
        self._call: Any = None
        self._pass: Deferred[None] | None = None
        self._again = False
        store.on_pending = self.kick

    def startService(self) -> None:
        super().startService()
        self._schedule(1.0)  # once the tree has started: work left by the last run

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return self._pass  # the pass under way ends (its index calls are bounded by their timeouts)

    def kick(self) -> None:
        """Work was left in the outbox: a pass soon (after the current backoff)."""
        if self._pass is not None:
            self._again = True
            return
        self._schedule(self.backoff or FIRST_BACKOFF)

    def _schedule(self, delay: float) -> None:
        if not self.running:
            return
        if self._call is not None and self._call.active():
            if self._call.getTime() <= self.clock.seconds() + delay:
                return
            self._call.cancel()
        self._call = self.clock.callLater(delay, self._start)

    def _start(self) -> None:
        self._call = None
        if self._pass is not None or not self.running:
            return
        self._again = False
        self._pass = Deferred.fromCoroutine(self.drain())
        self._pass.addErrback(lambda failure: log.failure("Re-indexing pass failed", failure))
        self._pass.addBoth(self._ended)

    def _ended(self, _: Any) -> None:
        self._pass = None
        if self.backoff:
            self._schedule(self.backoff)
        elif self._again:
            self._schedule(0)
        else:
            self._schedule(self.idle)

    def _wait(self) -> None:
        self.backoff = min(MAX_BACKOFF, max(FIRST_BACKOFF, self.backoff * 2)) * random.uniform(0.8, 1.2)

    async def drain(self) -> None:
        """One pass over the outbox; on an outage, the next try waits longer."""
        sql = self.store.sql
        after = 0
        done = 0
        try:
            for collection in await sql.expire_markers():
                log.warn(
                    "Rebuild of {name} died (its lease expired): its kept changes are indexed now", name=collection
                )
            while self.running:
                items = await sql.pending_work(BATCH, after)
                if not items:
                    break
                targets = await sql.targets(items)
                outcomes = await self.store.apply(targets)
                left = await sql.settle([target for target, error in outcomes if error is None])
                for target, error in outcomes:
                    if error is not None:
                        await self.store.refused(target.work, error)
                done += sum(1 for _, error in outcomes if error is None) - len(left)
                if left:
                    self._again = True  # raced newer changes: another pass indexes those
                after = items[-1].seq
        except StoreUnavailable as e:
            self._wait()
            self.store.index_down = True
            log.info("Re-indexing waits {delay:.1f}s: {why}", delay=self.backoff, why=e)
        except Exception:
            self._wait()
            log.failure("Re-indexing failed; trying again in {delay:.1f}s", delay=self.backoff)
        else:
            if self.backoff or done:
                log.info("Re-indexed {count} change(s) from the outbox", count=done)
            self.backoff = 0.0
        with contextlib.suppress(StoreUnavailable):
            self.store.pending = await sql.pending_count()


async def rebuild(
    store: KnowledgeStore, only: Callable[[str, str], bool] = lambda _tenant, _name: True, grace: float = GRACE
) -> list[tuple[str, str, str, int]]:
    """Re-create index collections from SQL: each one ``only`` accepts (given its tenant and kb
    collection name; "" and "memory" for the memories) is built anew, with the current embedding
    model, as a new collection filled with every chunk, which then takes the old one's place at
    once (searches use the old one until then). Changes made meanwhile reached the old one: their
    outbox rows were kept, and are applied to the new one after the swaps (``grace`` seconds
    after the last, so that writes under way have settled). Returns (tenant, name, index collection,
    chunks) for each."""
    sql = store.sql
    index = store.retriever.index
    if not isinstance(index, MilvusIndex):
        raise StoreError("this search index cannot be rebuilt in place of the old one")
    by = f"{socket.gethostname()} pid {os.getpid()}"
    rebuilt: list[tuple[str, str, str, int]] = []
    leases = _Leases(store)
    try:
        for collection, analyzer, tenant, name in await sql.index_collections():
            if not only(tenant, name):
                continue
            marker = await sql.rebuilding(collection, by)
            if marker is None:
                continue  # dropped since it was listed
            leases.markers.append(marker)
            count = await _rebuild(store, index, collection, analyzer, marker, leases)
            rebuilt.append((tenant, name, collection, count))
    finally:
        if rebuilt:
            # One grace for all: writes under way when a collection was swapped have settled.
            await deferLater(store.clock, grace, lambda: None)
        failed: Exception | None = None
        # A collection whose build failed holds the last marker and has no entry in ``rebuilt``:
        # its marker is given back at once (its held work becomes ordinary outbox work).
        for marker in leases.markers[len(rebuilt) :]:
            try:
                await sql.unmark(marker)
            except Exception:
                log.failure("Giving back the rebuild marker {marker} failed", marker=marker)
        for (_, _, collection, count), marker in zip(rebuilt, leases.markers[: len(rebuilt)], strict=True):
            try:
                try:
                    caught = await _catch_up(store, collection, leases)
                finally:
                    await sql.unmark(marker)  # this collection's, whatever happens to the next
                caught += await _catch_up(store, collection, None)  # kept between the last look and the unmark
            except Exception as e:  # what is left is ordinary work now: the re-indexer does it
                failed = failed or e
                log.failure("Catching up on the rebuilt {name} failed", name=collection)
                continue
            log.info(
                "Rebuilt index collection {name}: {count} chunk(s), {caught} change(s) made meanwhile",
                name=collection,
                count=count,
                caught=caught,
            )
        if failed is not None:
            raise failed
    return rebuilt


class _Leases:
    """A rebuild's markers (its leases), renewed together."""

    def __init__(self, store: KnowledgeStore) -> None:
        self.sql = store.sql
        self.clock = store.clock
        self.markers: list[int] = []
        self.renewed = self.clock.seconds()  # no marker taken before this is older

    async def renew(self, marker: int | None = None) -> None:
        """Renew the leases once `RENEW_EVERY` seconds have passed since they were last renewed
        (or taken; until then none can have expired); `StoreError` when ``marker``'s has gone (it
        expired, and another rebuild may own the collection now)."""
        now = self.clock.seconds()
        if not self.markers or now - self.renewed < RENEW_EVERY:
            return
        kept = await self.sql.renew(self.markers)
        self.renewed = now
        if marker is not None and marker not in kept:
            raise StoreError("this rebuild lost its lease (it was stalled too long): run mcpd reindex again")


async def _rebuild(
    store: KnowledgeStore, index: MilvusIndex, collection: str, analyzer: str, marker: int, leases: _Leases
) -> int:
    """Fill a new collection from SQL and swap it in for ``collection`` (``marker``, among this
    run's ``leases``, holds the lease until the caller has caught up); how many chunks."""
    sql = store.sql
    up_to = await sql.last_seq()
    built = f"{collection}{BUILT}{int(store.clock.seconds() * 1000)}"
    try:
        for left in await index.list_collections():
            if left.startswith(collection + BUILT):
                await index.drop_collection(left)  # from a rebuild that died: ours is the only live lease
        await store.retriever.ensure_collection(built, analyzer)
        count, after = 0, ""
        while True:
            await leases.renew(marker)
            chunks = await sql.chunks_after(collection, after, REBUILD_PAGE)
            if not chunks:
                break
            await store.retriever.index_chunks(built, chunks, analyzer)
            count += len(chunks)
            after = chunks[-1].id
        await leases.renew(marker)
        await index.swap_collection(collection, built)
    except BaseException:
        with contextlib.suppress(Exception):
            await index.drop_collection(built)
        leases.markers.remove(marker)
        with contextlib.suppress(Exception):
            await sql.unmark(marker)  # the old collection stays as it was (else the lease expires)
        raise
    await sql.clear_work(collection, up_to)
    return count


async def _catch_up(store: KnowledgeStore, collection: str, leases: _Leases | None) -> int:
    """Apply the changes kept while ``collection`` was rebuilt to it (renewing the ``leases``
    held, if any, as it goes); how many."""
    sql = store.sql
    after = done = 0
    while True:
        if leases is not None:
            await leases.renew()
        items = await sql.pending_work(BATCH, after, rebuilt=collection)
        if not items:
            return done
        outcomes = await store.apply(await sql.targets(items))
        left = await sql.settle([target for target, error in outcomes if error is None], rebuilt=True)
        for target, error in outcomes:
            if error is not None:
                await store.refused(target.work, error)
        done += sum(1 for _, error in outcomes if error is None) - len(left)
        after = items[-1].seq
