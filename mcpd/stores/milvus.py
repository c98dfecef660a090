# -*- test-case-name: tests.test_milvus -*-
"""The search index on Milvus, through pymilvus' `MilvusClient`.

``--milvus-uri`` names a Milvus Lite file (``milvus.db`` in the data directory by default: the
engine runs inside mcpd) or a Milvus server (``http://host:19530``, token from ``MILVUS_TOKEN``;
``milvus-lite server`` answers the same way). Each index collection has a BM25 function over its
text, so keyword search needs no model; a collection built for semantic search also has a dense
vector field, and the embedding model and dimension it was built with are kept as properties of
the collection. Every row carries its tenant, and every search, query and delete is filtered by
it. Collections are named ``<prefix><name>`` so several applications can share one server.
A rebuilt collection is a new one (``<name>__b<stamp>``) that ``<prefix><name>`` becomes an alias
of once it is full (`swap_collection`): searches use the old one until then.

Every pymilvus call blocks, so all of them run in this store's own thread pool; pymilvus itself
(~80 MB, with pyarrow, pandas and grpc) is imported there, on the first call, never when this
module is imported.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mcpd.interfaces import (
    ANALYZERS,
    DEGRADED,
    DOWN,
    HYBRID,
    KEYWORD,
    SEARCH_MODES,
    UP,
    CollectionInfo,
    CollectionSpec,
    EmbeddingModel,
    Hit,
    IndexedChunk,
    IndexMismatch,
    IVectorIndex,
    SearchQuery,
    StoreStatus,
    StoreUnavailable,
    UnknownCollection,
)

if TYPE_CHECKING:
    from pymilvus import MilvusClient
    from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads, IReactorTime

log = Logger(namespace="mcpd.milvus")
T = TypeVar("T")
P = ParamSpec("P")

STORE = "milvus"
DEFAULT_PREFIX = "mcpd_"
SCHEMA_VERSION = "1"
# Properties of a collection saying how it was built.
P_SCHEMA, P_ANALYZER, P_MODEL, P_DIMENSION = "mcpd.schema", "mcpd.analyzer", "mcpd.embedding_model", "mcpd.dimension"
OUTPUT_FIELDS = ["document_id", "text", "metadata", "owner", "tags", "created_at"]
MAX_TEXT_BYTES = 65535  # Milvus' VARCHAR limit
MAX_ID_BYTES = 256
MAX_TAGS, MAX_TAG_LENGTH = 64, 256
MAX_METADATA_BYTES = 65536
MAX_LIMIT = 1000
RRF_K = 60  # the usual constant of reciprocal rank fusion
BATCH_ROWS, BATCH_BYTES = 500, 4 * 1024 * 1024
# Milvus Lite searches what was written since its last flush without an index (rebuilt per search:
# 1.3 s a query at 4,000 unflushed chunks, 16 ms once flushed), and flushes only at 128 MB. So on
# Milvus Lite the index flushes a collection this long after writes to it; a Milvus server seals
# its segments by itself and rate-limits flushes, so it is never asked to.
LITE_FLUSH_DELAY = 0.5
# Milvus Lite builds a segment's BM25 index on the first search that reaches it, in memory, and
# again for each segment its background compaction merges: the first search after writes paid
# for all of them (41-57 s at 100,000 chunks on a loaded 2-core machine; ~1 s for the next). So
# after the writes to a collection stop, the index searches it once for nothing, this many seconds
# after its last flush: the index is built in the store's thread, not during a user's search. The
# second pass catches what the compaction merged meanwhile.
LITE_WARM_DELAYS = (2.0, 20.0)
WARM_TIMEOUT = 600.0
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
ANALYZER_PARAMS: Mapping[str, Mapping[str, Any]] = {
    "standard": {"tokenizer": "standard", "filter": ["lowercase"]},
    "jieba": {"tokenizer": {"type": "jieba", "mode": "search"}, "filter": ["lowercase"]},
}


def _refusals_deferred(method: Callable[P, Deferred[T]]) -> Callable[P, Deferred[T]]:
    """Bad input found before any work (a ValueError) fails the Deferred, as every other error does."""

    @functools.wraps(method)
    def checked(*args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        try:
            return method(*args, **kwargs)
        except ValueError as e:
            return fail(e)

    return checked


def is_local(uri: str) -> bool:
    """Whether ``uri`` names a Milvus Lite file rather than a server."""
    return not re.match(r"^(https?|tcp|unix):", uri)


@implementer(IVectorIndex)
class MilvusIndex(Service):
    """`IVectorIndex` on Milvus: a Twisted service owning the thread pool its calls run in.

    Started with the daemon, it connects in the background (a Milvus that is down does not stop
    start-up: calls fail with `StoreUnavailable` and `status` says down until it answers).
    """

    def __init__(
        self,
        uri: str,
        reactor: IReactorThreads,
        token: str | None = None,
        timeout: float = 10.0,
        threads: int = 4,
        prefix: str = DEFAULT_PREFIX,
        slow: float = 1.0,
        connect_at_start: bool = True,
        warm_delays: Sequence[float] = LITE_WARM_DELAYS,
    ) -> None:
        if not _NAME.match(prefix or "_"):
            raise ValueError(f"index collection prefix {prefix!r}: letters, digits and underscores only")
        self.uri = uri
        self.reactor = reactor
        self.token = token
        self.timeout = timeout
        self.prefix = prefix
        self.slow = slow
        self.threads = threads
        self.connect_at_start = connect_at_start
        self._used = False  # a client was made: Milvus Lite's engine may be running
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name="mcpd-milvus")
        self.pool.threadFactory = functools.partial(threading.Thread, daemon=True)  # type: ignore[assignment]
        self._client: MilvusClient | None = None
        self._lite = False  # known once connected: the server is Milvus Lite
        self._unflushed: set[str] = set()
        self._flush_call: Any = None
        self.warm_delays = tuple(warm_delays)
        self._unwarmed: set[str] = set()
        self._warm_call: Any = None
        self._connecting = threading.Lock()
        self._specs: dict[str, CollectionSpec] = {}
        self._status = StoreStatus(STORE, DOWN, "not started")

    # -- the service --

    def startService(self) -> None:
        super().startService()
        self.pool.start()
        if self.connect_at_start:
            self._status = StoreStatus(STORE, DOWN, "connecting")
            self.check()
        else:
            # The daemon's index connects on first use (a call; for a server, the health probe
            # too): a daemon whose kb and memory packs are idle loads neither pymilvus nor Milvus Lite.
            self._status = StoreStatus(STORE, UP, "not used yet")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for call in (self._flush_call, self._warm_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._warm_call = None
        if not self.pool.started or self.pool.joined:
            return succeed(None)
        if not self._used:
            # Never connected (the daemon's index connects on first use): no thread to join.
            self.pool.stop()
            self._status = StoreStatus(STORE, DOWN, "stopped")
            return succeed(None)
        done: Deferred[None] = Deferred()
        from_threads: IReactorFromThreads = self.reactor  # type: ignore[assignment]

        def close_and_join() -> None:
            # The pool's last job closes the client; then its threads are joined, off the reactor.
            try:
                finished = threading.Event()
                self.pool.callInThread(self._close, finished)
                finished.wait(self.timeout)
                self.pool.stop()
            finally:
                from_threads.callFromThread(done.callback, None)

        threading.Thread(target=close_and_join, name="mcpd-milvus-stop", daemon=True).start()
        return done

    def _close(self, finished: threading.Event) -> None:
        try:
            if self._client is not None and self._unflushed:
                self._flush(self._client, self._take_unflushed())
            self._disconnect()
            if is_local(self.uri) and self._used:
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self.uri)
            self._status = StoreStatus(STORE, DOWN, "stopped")
        except Exception:
            log.failure("Closing the Milvus client failed")
        finally:
            finished.set()

    def _disconnect(self) -> None:
        """Forget the client (closing its channel): the next call connects afresh."""
        with self._connecting:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as e:
                log.debug("Closing the Milvus client: {error}", error=e)

    # -- health --

    def status(self) -> StoreStatus:
        """The state seen last; degraded while calls queue for the index's threads."""
        status = self._status
        waiting = self.pool._queue.qsize()
        if status.state == UP and waiting > self.threads * 4:
            return StoreStatus(STORE, DEGRADED, f"{waiting} index call(s) waiting for a thread", status.latency)
        return status

    def check(self) -> Deferred[StoreStatus]:
        """List the collections (connecting first if need be), timed."""
        if not self.pool.started or self.pool.joined:
            return succeed(StoreStatus(STORE, DOWN, "the index is not running"))
        if not self.connect_at_start and not self._used and is_local(self.uri):
            # Probing would start Milvus Lite's engine (~230 MB) in a daemon whose index is idle.
            return succeed(self._status)
        started = time.monotonic()

        def probe(client: MilvusClient) -> float:
            begun = time.monotonic()  # connected by now: a first connection is not slowness
            client.list_collections(timeout=self.timeout)
            return time.monotonic() - begun

        def measured(latency: float) -> StoreStatus:
            if latency > self.slow:
                self._status = StoreStatus(STORE, DEGRADED, f"answered in {latency:.1f}s", latency)
            else:
                self._status = StoreStatus(STORE, UP, None, latency)
            return self.status()

        def failed(failure: Failure) -> StoreStatus:
            if not failure.check(StoreUnavailable):
                log.failure("Milvus health probe failed", failure)
                self._status = StoreStatus(STORE, DOWN, failure.getErrorMessage(), time.monotonic() - started)
            return self.status()

        return self._run(probe).addCallbacks(measured, failed)

    # -- collections --

    @_refusals_deferred
    def create_collection(self, spec: CollectionSpec) -> Deferred[CollectionInfo]:
        if spec.analyzer not in ANALYZERS:
            raise ValueError(f"analyzer {spec.analyzer!r}: choose one of {', '.join(ANALYZERS)}")
        physical = self._physical(spec.name)

        def create(client: MilvusClient) -> CollectionInfo:
            info = None
            if not client.has_collection(physical, timeout=self.timeout):
                try:
                    self._create(client, physical, spec)
                except Exception as e:
                    if _unavailable(e):
                        raise
                    info = self._created_elsewhere(client, spec.name, e)
            info = info or self._describe(client, spec.name)
            assert info is not None
            if info.spec != spec:
                raise IndexMismatch(f"index collection {spec.name!r} exists, built with {_built_with(info.spec)}")
            return info

        return self._run(create)

    def _created_elsewhere(self, client: MilvusClient, name: str, error: Exception) -> CollectionInfo:
        """The collection another process created at the same moment as this one failed to.

        A Milvus server answers the loser "already exists"; ``milvus-lite server`` may answer
        "File exists" while the winner's creation is still under way (the collection is not
        listed yet, or not described whole). Wait for it, up to the call timeout; ``error`` (the
        creation's own) if it never appears."""
        deadline = time.monotonic() + self.timeout
        delay = 0.05
        while True:
            try:
                info = self._describe(client, name)
            except IndexMismatch as e:
                info, error = None, e  # its properties may not be written yet
            if info is not None:
                return info
            if time.monotonic() + delay > deadline:
                raise error
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    @_refusals_deferred
    def describe_collection(self, name: str) -> Deferred[CollectionInfo | None]:
        self._physical(name)
        return self._run(lambda client: self._describe(client, name))

    def list_collections(self) -> Deferred[list[str]]:
        """The names of the collections (a rebuilt one by the name it answers to)."""

        def names(client: MilvusClient) -> list[str]:
            found = set(client.list_collections(timeout=self.timeout))
            for alias in client.list_aliases(timeout=self.timeout).get("aliases") or ():
                target = self._aliased(client, alias)
                if target is not None:
                    found.discard(target)
                    found.add(alias)
            return sorted(n[len(self.prefix) :] for n in found if n.startswith(self.prefix))

        return self._run(names)

    @_refusals_deferred
    def drop_collection(self, name: str) -> Deferred[bool]:
        physical = self._physical(name)

        def drop(client: MilvusClient) -> bool:
            self._specs.pop(name, None)
            collection = self._aliased(client, physical)
            if collection is not None:
                # A Milvus server drops no collection an alias names: the alias goes first.
                client.drop_alias(physical, timeout=self.timeout)
            else:
                collection = physical
            if not client.has_collection(collection, timeout=self.timeout):
                return False
            client.drop_collection(collection, timeout=self.timeout)
            return True

        return self._run(drop)

    @_refusals_deferred
    def swap_collection(self, name: str, built: str) -> Deferred[None]:
        """Make ``name`` answer from the collection ``built`` (filled by a rebuild), at once:
        ``name`` becomes an alias of it, and the collection it named is dropped."""
        alias, target = self._physical(name), self._physical(built)

        def swap(client: MilvusClient) -> None:
            old = self._aliased(client, alias)
            if old is not None:
                client.alter_alias(target, alias, timeout=self.timeout)
                if old != target:
                    client.drop_collection(old, timeout=self.timeout)
            else:
                # A collection of that name (built before aliases were used, or made again by a
                # write while this one was dropped) gives way to the alias.
                for attempt in range(3):
                    if client.has_collection(alias, timeout=self.timeout):
                        client.drop_collection(alias, timeout=self.timeout)
                    try:
                        client.create_alias(target, alias, timeout=self.timeout)
                        break
                    except Exception as e:
                        if _unavailable(e) or attempt == 2:
                            raise
            self._specs.pop(name, None)
            log.info("Index collection {alias} now answers from {target}", alias=alias, target=target)

        return self._run(swap)

    def _aliased(self, client: MilvusClient, physical: str) -> str | None:
        """The collection the alias ``physical`` names (None: not an alias)."""
        try:
            described = client.describe_alias(physical, timeout=self.timeout)
        except Exception as e:
            if _unavailable(e):
                raise
            return None
        return str(described.get("collection_name") or "") or None

    # -- chunks --

    @_refusals_deferred
    def upsert(
        self, name: str, chunks: Sequence[IndexedChunk], embedding: EmbeddingModel | None = None
    ) -> Deferred[int]:
        physical = self._physical(name)
        rows = [_row(chunk) for chunk in chunks]
        if len({row["id"] for row in rows}) != len(rows):
            # Milvus 2.6+ refuses such a batch; older ones keep every copy.
            raise ValueError("one upsert holds a chunk id twice; give each chunk once")

        def upsert(client: MilvusClient) -> int:
            spec = self._spec(client, name, embedding)
            if spec.embedding is not None:
                if embedding != spec.embedding:
                    raise IndexMismatch(_vectors_refused(name, spec, embedding))
                for chunk, row in zip(chunks, rows, strict=True):
                    if chunk.vector is None or len(chunk.vector) != spec.embedding.dimension:
                        raise ValueError(
                            f"chunk {chunk.id!r}: the collection needs a vector of dimension "
                            f"{spec.embedding.dimension} ({spec.embedding.name})"
                        )
                    row["dense"] = list(chunk.vector)
            elif embedding is not None or any(chunk.vector is not None for chunk in chunks):
                raise IndexMismatch(f"index collection {name!r} was built without embeddings; re-index it to add them")
            for batch in _batches(rows):
                self._loaded(client, physical, client.upsert, physical, batch, timeout=self.timeout)
            return len(rows)

        if not rows:
            return succeed(0)
        return self._run(upsert).addCallback(self._written, physical)

    @_refusals_deferred
    def delete(
        self, name: str, tenant: str, chunk_ids: Sequence[str] = (), document_ids: Sequence[str] = ()
    ) -> Deferred[int]:
        physical = self._physical(name)
        selectors = []
        if chunk_ids:
            selectors.append(f"id in {_list(chunk_ids)}")
        if document_ids:
            selectors.append(f"document_id in {_list(document_ids)}")
        if not selectors:
            return succeed(0)
        expression = f"tenant == {_literal(tenant)} and ({' or '.join(selectors)})"

        def delete(client: MilvusClient) -> int:
            self._spec(client, name)
            result = self._loaded(client, physical, client.delete, physical, filter=expression, timeout=self.timeout)
            if isinstance(result, Mapping):
                return int(result.get("delete_count", 0))
            return len(result) if isinstance(result, Sequence) else 0

        return self._run(delete).addCallback(self._written, physical)

    @_refusals_deferred
    def search(self, names: Sequence[str], query: SearchQuery) -> Deferred[list[Hit]]:
        if query.mode not in SEARCH_MODES:
            raise ValueError(f"search mode {query.mode!r}: choose one of {', '.join(SEARCH_MODES)}")
        if not 1 <= query.limit <= MAX_LIMIT:
            raise ValueError(f"limit must be from 1 to {MAX_LIMIT}, not {query.limit}")
        if query.mode != KEYWORD and query.vector is None:
            raise ValueError(f"{query.mode} search needs the query's vector")
        if not names or (query.owners is not None and not query.owners) or not query.text.strip():
            return succeed([])
        physical = [(name, self._physical(name)) for name in names]
        expression = _filter(query)

        def search(client: MilvusClient) -> list[Hit]:
            hits: list[Hit] = []
            for name, collection in physical:
                spec = self._spec(client, name, query.embedding if query.mode != KEYWORD else False)
                if query.mode != KEYWORD and spec.embedding != query.embedding:
                    raise IndexMismatch(_vectors_refused(name, spec, query.embedding))
                found = self._loaded(client, collection, self._search, client, collection, query, expression)
                hits.extend(_hit(name, raw, query.mode) for raw in found)
            hits.sort(key=lambda hit: hit.score, reverse=True)
            return hits[: query.limit]

        return self._run(search)

    # -- flushing Milvus Lite --

    def _written(self, result: T, physical: str) -> T:
        """After a write: on Milvus Lite, flush the collection shortly (writes close together
        share one flush)."""
        if self._lite and self.running:
            self._unflushed.add(physical)
            if self._flush_call is None or not self._flush_call.active():
                clock: IReactorTime = self.reactor  # type: ignore[assignment]
                self._flush_call = clock.callLater(LITE_FLUSH_DELAY, self._flush_soon)
        return result

    def _take_unflushed(self) -> list[str]:
        names, self._unflushed = sorted(self._unflushed), set()
        return names

    def _flush_soon(self) -> None:
        self._flush_call = None
        names = self._take_unflushed()
        if names and self.running:
            self._run(lambda client: self._flush(client, names)).addCallbacks(
                lambda _: self._warm_later(names),
                lambda failure: log.warn("Flushing the index failed: {why}", why=failure.getErrorMessage()),
            )

    def _flush(self, client: MilvusClient, names: list[str]) -> None:
        for name in names:
            if client.has_collection(name, timeout=self.timeout):
                client.flush(name, timeout=self.timeout)

    def _warm_later(self, names: list[str], step: int = 0) -> None:
        """Warm these collections `LITE_WARM_DELAYS` after their last flush (a flush meanwhile
        starts the count again)."""
        self._unwarmed.update(names)
        if self._warm_call is not None and self._warm_call.active():
            self._warm_call.cancel()
        self._warm_call = None
        if step < len(self.warm_delays) and self.running:
            wait = self.warm_delays[step] - (self.warm_delays[step - 1] if step else 0.0)
            clock: IReactorTime = self.reactor  # type: ignore[assignment]
            self._warm_call = clock.callLater(wait, self._warm_soon, step)
        else:
            self._unwarmed.clear()

    def _warm_soon(self, step: int) -> None:
        self._warm_call = None
        names = sorted(self._unwarmed)
        if names and self.running and self.pool.started and not self.pool.joined:
            # Not through _run: a warm-up that fails or takes long says nothing of the index's state.
            deferToThreadPool(self.reactor, self.pool, self._warm, names).addCallbacks(
                lambda _: self._warm_later([], step + 1),
                lambda failure: log.warn("Warming the index failed: {why}", why=failure.getErrorMessage()),
            )

    def _warm(self, names: list[str]) -> None:
        client = self._client
        if client is None:
            return
        for name in names:
            if client.has_collection(name, timeout=self.timeout):
                # A filter no row matches: each segment's BM25 index is built, nothing is scored.
                client.search(
                    name,
                    data=["warm"],
                    anns_field="sparse",
                    search_params={"metric_type": "BM25"},
                    limit=1,
                    filter='tenant == ""',
                    output_fields=[],
                    timeout=WARM_TIMEOUT,
                )

    # -- in the store's threads --

    def _search(self, client: MilvusClient, collection: str, query: SearchQuery, expression: str) -> list[Any]:
        from pymilvus import AnnSearchRequest, RRFRanker

        keyword = {"data": [query.text], "anns_field": "sparse", "param": {"metric_type": "BM25"}}
        semantic = {"data": [list(query.vector or ())], "anns_field": "dense", "param": {"metric_type": "COSINE"}}
        if query.mode == HYBRID:
            # Each list is filtered on its own: the fusion only ranks what both may show.
            depth = min(max(query.limit * 4, 50), MAX_LIMIT)
            requests = [
                AnnSearchRequest(**keyword, limit=depth, filter=expression),
                AnnSearchRequest(**semantic, limit=depth, filter=expression),
            ]
            result = client.hybrid_search(
                collection,
                requests,
                RRFRanker(RRF_K),
                limit=query.limit,
                output_fields=OUTPUT_FIELDS,
                timeout=self.timeout,
            )
        else:
            request = keyword if query.mode == KEYWORD else semantic
            result = client.search(
                collection,
                data=request["data"],
                anns_field=request["anns_field"],
                search_params=request["param"],
                limit=query.limit,
                filter=expression,
                output_fields=OUTPUT_FIELDS,
                timeout=self.timeout,
            )
        return list(result[0]) if result else []

    def _create(self, client: MilvusClient, physical: str, spec: CollectionSpec) -> None:
        from pymilvus import DataType, Function, FunctionType

        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
        schema.add_field("tenant", DataType.VARCHAR, max_length=MAX_ID_BYTES)
        schema.add_field("document_id", DataType.VARCHAR, max_length=MAX_ID_BYTES)
        schema.add_field("owner", DataType.VARCHAR, max_length=MAX_ID_BYTES)
        schema.add_field(
            "text",
            DataType.VARCHAR,
            max_length=MAX_TEXT_BYTES,
            enable_analyzer=True,
            analyzer_params=dict(ANALYZER_PARAMS[spec.analyzer]),
        )
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field(
            "tags", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_TAGS, max_length=MAX_TAG_LENGTH
        )
        schema.add_field("created_at", DataType.DOUBLE)
        schema.add_function(
            Function(
                name="text_bm25",
                function_type=FunctionType.BM25,
                input_field_names=["text"],
                output_field_names=["sparse"],
            )
        )
        indexes = client.prepare_index_params()
        indexes.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        properties = {P_SCHEMA: SCHEMA_VERSION, P_ANALYZER: spec.analyzer}
        if spec.embedding is not None:
            schema.add_field("dense", DataType.FLOAT_VECTOR, dim=spec.embedding.dimension)
            indexes.add_index("dense", index_type="AUTOINDEX", metric_type="COSINE")
            properties[P_MODEL] = spec.embedding.name
            properties[P_DIMENSION] = str(spec.embedding.dimension)
        client.create_collection(
            physical,
            schema=schema,
            index_params=indexes,
            properties=properties,
            # Read-your-writes for this process; other instances see a write within Milvus' bound.
            consistency_level="Session",
            timeout=self.timeout,
        )
        log.info("Created index collection {name} ({built})", name=physical, built=_built_with(spec))

    def _describe(self, client: MilvusClient, name: str) -> CollectionInfo | None:
        physical = self._physical(name)
        if not client.has_collection(physical, timeout=self.timeout):
            self._specs.pop(name, None)
            return None
        description = client.describe_collection(physical, timeout=self.timeout)
        properties = description.get("properties") or {}
        if properties.get(P_SCHEMA) != SCHEMA_VERSION:
            raise IndexMismatch(
                f"Milvus collection {physical!r} was not made by this version of mcpd; drop it or set another prefix"
            )
        embedding = None
        if properties.get(P_MODEL):
            embedding = EmbeddingModel(properties[P_MODEL], int(properties[P_DIMENSION]))
        spec = CollectionSpec(name, properties.get(P_ANALYZER, "standard"), embedding)
        self._specs[name] = spec
        stats = client.get_collection_stats(physical, timeout=self.timeout)
        return CollectionInfo(spec, int(stats.get("row_count", 0)))

    def _spec(self, client: MilvusClient, name: str, vectors: EmbeddingModel | None | bool = False) -> CollectionSpec:
        """How the collection was built (kept after the first look). With ``vectors`` (the model
        of the vectors a call brings, or None for none): when the kept spec disagrees, look again
        (another instance may have rebuilt the collection) before the caller refuses."""
        spec = self._specs.get(name)
        if spec is not None and vectors is not False and spec.embedding != vectors:
            spec = None
        if spec is None:
            info = self._describe(client, name)
            if info is None:
                raise UnknownCollection(f"no index collection {name!r}")
            spec = info.spec
        return spec

    def _loaded(self, client: MilvusClient, physical: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call(*args, **kwargs)``; if Milvus says the collection is not loaded (Milvus Lite's
        server after a restart), load it and call again."""
        try:
            return call(*args, **kwargs)
        except Exception as e:
            if "load" not in str(e).lower() or _unavailable(e):
                raise
        client.load_collection(physical, timeout=self.timeout)
        return call(*args, **kwargs)

    def _connect(self) -> MilvusClient:
        with self._connecting:
            if self._client is None:
                from pymilvus import MilvusClient

                # pymilvus logs every failed call with its traceback; this store reports them.
                logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
                if is_local(self.uri):
                    os.makedirs(os.path.dirname(os.path.abspath(self.uri)), mode=0o700, exist_ok=True)
                # A connection of its own (not shared by address): closing it at stop really closes it.
                self._used = True
                client = MilvusClient(uri=self.uri, token=self.token or "", timeout=self.timeout, dedicated=True)
                self._lite = str(client.get_server_version(timeout=self.timeout)).startswith("milvus_lite")
                self._client = client
            return self._client

    def _call(self, work: Callable[[MilvusClient], T]) -> T:
        try:
            return work(self._connect())
        except (StoreUnavailable, IndexMismatch, UnknownCollection, ValueError):
            raise
        except Exception as e:
            if _unavailable(e):
                # pymilvus may have closed the channel under the client: start over next time.
                self._disconnect()
                raise StoreUnavailable(STORE, _reason(e)) from e
            if _not_found(e):
                raise UnknownCollection(str(e)) from e
            raise

    def _run(self, work: Callable[[MilvusClient], T]) -> Deferred[T]:
        """Run ``work(client)`` in the store's threads; keep the state its outcome shows."""
        if not self.pool.started or self.pool.joined:
            d: Deferred[T] = Deferred()
            d.errback(StoreUnavailable(STORE, "the index is not running"))
            return d

        def answered(result: T) -> T:
            if self._status.state == DOWN:
                self._status = StoreStatus(STORE, UP)
            return result

        def failed(failure: Failure) -> Failure:
            if failure.check(StoreUnavailable):
                error = failure.value
                assert isinstance(error, StoreUnavailable)
                if self._status.state != DOWN:
                    log.warn("Milvus is unavailable: {detail}", detail=error.detail)
                self._status = StoreStatus(STORE, DOWN, error.detail)
            return failure

        return deferToThreadPool(self.reactor, self.pool, self._call, work).addCallbacks(answered, failed)

    def _physical(self, name: str) -> str:
        if not _NAME.match(name) or len(name) > 200:
            raise ValueError(f"index collection name {name!r}: letters, digits and underscores, at most 200")
        return self.prefix + name


def _unavailable(error: BaseException) -> bool:
    """Whether an error from pymilvus means Milvus could not be reached (rather than a refusal)."""
    import grpc

    gone = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:  # pymilvus raises errors "from" themselves
        seen.add(id(current))
        if isinstance(current, grpc.RpcError) and getattr(current, "code", lambda: None)() in gone:
            return True
        if getattr(current, "code", None) in gone or isinstance(current, (ConnectionError, TimeoutError)):
            return True
        message = str(getattr(current, "message", "") or current)
        signs = ("fail connecting to server", "closed channel", "channel closed", "timed out")
        if any(sign in message.lower() for sign in signs):
            return True
        current = current.__cause__ or current.__context__
    return False


def _not_found(error: BaseException) -> bool:
    return getattr(error, "code", None) == 100 or "can't find collection" in str(error).lower()


def _reason(error: BaseException) -> str:
    message = str(getattr(error, "message", "") or error)
    return message.split("\n", 1)[0][:300]


def _built_with(spec: CollectionSpec) -> str:
    if spec.embedding is None:
        return f"analyzer {spec.analyzer}, no embeddings"
    return f"analyzer {spec.analyzer}, embedding model {spec.embedding.name} (dimension {spec.embedding.dimension})"


def _vectors_refused(name: str, spec: CollectionSpec, embedding: EmbeddingModel | None) -> str:
    if spec.embedding is None:
        return f"index collection {name!r} was built without embeddings (keyword search only); re-index it to add them"
    given = "no embedding service" if embedding is None else f"{embedding.name} (dimension {embedding.dimension})"
    return (
        f"index collection {name!r} was built with embedding model {spec.embedding.name} "
        f"(dimension {spec.embedding.dimension}), not {given}; configure that model or re-index the collection"
    )


def _row(chunk: IndexedChunk) -> dict[str, Any]:
    """The Milvus row of a chunk, checked against the limits of its fields."""
    for field, value in (
        ("id", chunk.id),
        ("tenant", chunk.tenant),
        ("document_id", chunk.document_id),
        ("owner", chunk.owner),
    ):
        if len(value.encode("utf-8")) > MAX_ID_BYTES or (field != "owner" and not value):
            raise ValueError(f"chunk {chunk.id!r}: {field} must be 1 to {MAX_ID_BYTES} bytes")
    if len(chunk.text.encode("utf-8")) > MAX_TEXT_BYTES:
        raise ValueError(f"chunk {chunk.id!r}: its text is over {MAX_TEXT_BYTES} bytes; chunk it smaller")
    if len(chunk.tags) > MAX_TAGS or any(len(tag) > MAX_TAG_LENGTH for tag in chunk.tags):
        raise ValueError(f"chunk {chunk.id!r}: at most {MAX_TAGS} tags of at most {MAX_TAG_LENGTH} characters")
    metadata = dict(chunk.metadata)
    for key, value in metadata.items():
        if not isinstance(key, str) or (value is not None and not isinstance(value, (str, int, float, bool))):
            raise ValueError(f"chunk {chunk.id!r}: metadata must be flat (strings, numbers, booleans); {key!r} is not")
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise ValueError(f"chunk {chunk.id!r}: metadata {key!r} is an integer beyond 64 bits")
    if len(json.dumps(metadata, ensure_ascii=False).encode("utf-8")) > MAX_METADATA_BYTES:
        raise ValueError(f"chunk {chunk.id!r}: metadata over {MAX_METADATA_BYTES} bytes")
    return {
        "id": chunk.id,
        "tenant": chunk.tenant,
        "document_id": chunk.document_id,
        "owner": chunk.owner,
        "text": chunk.text,
        "metadata": metadata,
        "tags": list(chunk.tags),
        "created_at": float(chunk.created_at),
    }


def _batches(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows in batches small enough for one gRPC message."""
    batches: list[list[dict[str, Any]]] = [[]]
    size = 0
    for row in rows:
        weight = len(row["text"].encode("utf-8")) + 8 * len(row.get("dense", ())) + 512
        if batches[-1] and (len(batches[-1]) >= BATCH_ROWS or size + weight > BATCH_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(row)
        size += weight
    return batches


# What a string literal of Milvus' filter expressions escapes: its quote, the backslash and the
# line breaks (its grammar, Plan.g4, takes any other character as itself; Milvus Lite knows no
# other escape, \u0001 and \x01 included, so JSON's are refused there).
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})


def _literal(value: Any) -> str:
    """A value as a literal of Milvus' filter expressions (strings quoted, every one round-trips)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"filter value {value!r} is not a finite number")
        return repr(value)
    if isinstance(value, str):
        return '"' + value.translate(_ESCAPES) + '"'
    raise ValueError(f"filter values must be strings, numbers or booleans, not {type(value).__name__}")


def _list(values: Sequence[Any]) -> str:
    return "[" + ", ".join(_literal(value) for value in values) + "]"


def _filter(query: SearchQuery) -> str:
    """The expression keeping the tenant's chunks that match the query's filters."""
    parts = [f"tenant == {_literal(query.tenant)}"]
    if query.owners is not None:
        parts.append(f"owner in {_list(query.owners)}")
    for key, value in sorted(query.metadata.items()):
        if not isinstance(key, str) or not _KEY.match(key):
            raise ValueError(f"metadata filter key {key!r}: letters, digits, '_', '.', '-', at most 64")
        parts.append(f"metadata[{_literal(key)}] == {_literal(value)}")
    if query.tags:
        parts.append(f"array_contains_all(tags, {_list(query.tags)})")
    return " and ".join(parts)


def _hit(collection: str, raw: Any, mode: str) -> Hit:
    entity = raw.get("entity") or {}
    distance = float(raw.get("distance", 0.0))
    # BM25: Milvus answers the score, Milvus Lite its negation (so that smaller sorts first).
    score = abs(distance) if mode == KEYWORD else distance
    return Hit(
        collection=collection,
        chunk_id=str(raw.get("id")),
        document_id=entity.get("document_id", ""),
        score=score,
        text=entity.get("text", ""),
        metadata=entity.get("metadata") or {},
        owner=entity.get("owner", ""),
        tags=tuple(entity.get("tags") or ()),
        created_at=float(entity.get("created_at") or 0.0),
    )
