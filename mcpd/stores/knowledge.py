# -*- test-case-name: tests.test_kb,tests.test_memory -*-
"""The knowledge base and the memories: SQL records (`mcpd.stores.sql.knowledge`) made
searchable by the index (`mcpd.stores.retrieval.Retriever`).

A write commits its records and an outbox row in SQL first, then indexes them at once and
clears the row, unless a newer change of the record came meanwhile (SQL's version of it moved:
the row stays for the re-indexer, which indexes what SQL holds then). When the index (or the
embedding service) is down, the write still succeeds: its answer says indexing is pending, the
row stays, and the re-indexer (`mcpd.stores.reindex`) works it off once the index answers. A search asks the index, then checks every hit against
SQL (the caller's tenant, the collections asked, records not deleted since) and says whether
the index is behind; with the index down it falls back to a plain word scan of SQL and says so.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence, Set
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mcpd.interfaces import (
    DEGRADED,
    DOWN,
    KEYWORD,
    UP,
    EmbeddingError,
    IKnowledgeBase,
    IMemoryStore,
    IndexedChunk,
    IndexMismatch,
    IStore,
    StoreError,
    StoreStatus,
    StoreUnavailable,
    UnknownCollection,
)
from mcpd.stores.milvus import is_local
from mcpd.stores.retrieval import Retriever
from mcpd.stores.shown import MAX_DEPTH, more_after, shown_after, shown_key
from mcpd.stores.sql.knowledge import (
    COLLECTION,
    MAX_ATTEMPTS,
    MEMORY_COLLECTION,
    SQLKnowledge,
    Target,
    Work,
    index_collection,
)
from mcpd.stores.sql.notes import search_terms

log = Logger(namespace="mcpd.knowledge")

STORE = "index"
INDEXED, PENDING = "done", "pending"
INDEX_OK, INDEX_DEGRADED = "ok", "degraded"
# A search reaches at most `MAX_DEPTH` hits (what earlier pages showed, and this one), the
# index's own bound too. A search's cursor names what its pages have shown (not an offset):
# between two pages the index may rank differently (the corpus changed, or Milvus Lite sealed or
# compacted segments, each of which keeps its own BM25 statistics), and an offset would then
# repeat results and skip others (`mcpd.stores.shown`).

SCAN_ROWS = 2000  # chunks a degraded (index down) search reads at most
# Seconds a write waits for its indexing before answering "pending" (the indexing goes on): once
# SQL has committed, a client that times out and retries would add the record twice. Well below
# the usual client timeouts (30-60 s); above a first write's cold start of Milvus Lite (~5 s loaded).
WRITE_WAIT = 15.0
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class IndexMetrics:
    """The index's Prometheus series: operation latency and failures, pending work, whether it answers."""

    def __init__(self, store: KnowledgeStore) -> None:
        self.store = store
        self.duration = Histogram(
            "mcp_index_operation_duration_seconds",
            "Time a search-index operation took (index: embed and upsert; search; remove; drop).",
            ["operation"],
            buckets=_BUCKETS,
            registry=None,
        )
        self.errors = Counter(
            "mcp_index_errors",
            "Search-index operations that failed: unavailable (index or embedding service down: left "
            "for the re-indexer), refused (mismatch or bad input), error (unexpected), given_up (a "
            f"record refused {MAX_ATTEMPTS} times, no longer retried).",
            ["operation", "kind"],
            registry=None,
        )

    def collectors(self) -> list[Any]:
        return [self.duration, self.errors, self]

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Any:
        status = self.store.retriever.index.status()
        yield GaugeMetricFamily(
            "mcp_index_up",
            "1 while the search index answered its last call or probe.",
            value=float(status.state != DOWN),
        )
        yield GaugeMetricFamily(
            "mcp_index_pending",
            "Index changes waiting in the SQL outbox (the index was down, or is catching up).",
            value=float(self.store.pending),
        )


@implementer(IKnowledgeBase, IMemoryStore, IStore)
class KnowledgeStore:
    """The kb and memory packs' store; for /health and server.info, the search index."""

    name = STORE

    def __init__(self, sql: SQLKnowledge, retriever: Retriever, uri: str, clock: Any) -> None:
        self.sql = sql
        self.retriever = retriever
        self.uri = uri
        self.clock = clock
        self.metrics = IndexMetrics(self)
        # Outbox rows last counted; writes skip the index (straight to pending) while it is down.
        self.pending = 0
        self.index_down = False
        # Told when work is left in the outbox (the re-indexer's kick).
        self.on_pending: Callable[[], None] = lambda: None

    # -- IStore ---------------------------------------------------------------------------------

    def status(self) -> StoreStatus:
        status = self.retriever.index.status()
        if status.state == UP and self.pending:
            return StoreStatus(STORE, DEGRADED, f"{self.pending} index change(s) pending", status.latency)
        return StoreStatus(STORE, status.state, status.detail, status.latency)

    def check(self) -> Deferred[StoreStatus]:
        def counted(status: StoreStatus) -> Deferred[StoreStatus]:
            def shown(pending: Any) -> StoreStatus:
                if isinstance(pending, int):
                    self.pending = pending
                if status.state == UP and self.pending:
                    return StoreStatus(STORE, DEGRADED, f"{self.pending} index change(s) pending", status.latency)
                return StoreStatus(STORE, status.state, status.detail, status.latency)

            # Within the database's own time limit: a frozen database must not hold /health
            # (the count last seen stands meanwhile).
            count = self.sql.pending_count().addTimeout(self.sql.database.config.timeout, self.clock)
            return count.addBoth(shown)

        return self.retriever.index.check().addCallback(counted)

    def describe(self) -> dict[str, Any]:
        status = self.status()
        embedder = self.retriever.embedder
        described: dict[str, Any] = {
            "name": STORE,
            "backend": "milvus-lite" if is_local(self.uri) else "milvus",
            "uri": self.uri,
            "state": {UP: "ok", DEGRADED: "degraded", DOWN: "down"}[status.state],
            "pending": self.pending,
            "search_mode": self.retriever.default_mode,
            "embedding_model": getattr(embedder, "model_name", None),
        }
        if status.detail:
            described["detail"] = status.detail
        return described

    def collectors(self) -> list[Any]:
        return self.metrics.collectors()

    # -- indexing -------------------------------------------------------------------------------

    def apply(self, targets: Sequence[Target]) -> Deferred[list[tuple[Target, str | None]]]:
        """Bring the index in line with SQL for each target; fires with each one's outcome (None,
        or why it was refused). Fails with `StoreUnavailable` when the index or the embedding
        service is down (nothing is lost: the outbox keeps the rows)."""
        return Deferred.fromCoroutine(self._apply(list(targets)))

    async def _apply(self, targets: list[Target]) -> list[tuple[Target, str | None]]:
        outcomes: list[tuple[Target, str | None]] = []
        # New records of one collection go in together; the rest one by one.
        batches: dict[tuple[str, str], list[Target]] = {}
        singles: list[Target] = []
        for target in targets:
            simple = target.exists and not target.work.stale and target.work.kind != COLLECTION
            if simple:
                batches.setdefault((target.work.collection, target.analyzer), []).append(target)
            else:
                singles.append(target)
        for (collection, analyzer), batch in batches.items():
            # Rows of one record (an add, then changes made while the index was down) load the
            # same chunks: each id once, the newest row's (Milvus 2.6+ refuses an id twice).
            chunks = list({chunk.id: chunk for target in batch for chunk in target.chunks}.values())
            error = await self._timed("index", self._index(collection, chunks, analyzer))
            if error is not None and len(batch) > 1:
                # Refused, not down: one record's fault must not hold back the others.
                for target in batch:
                    outcome = await self._timed("index", self._index(collection, list(target.chunks), analyzer))
                    outcomes.append((target, outcome))
                continue
            outcomes += [(target, error) for target in batch]
        for target in singles:
            outcomes.append((target, await self._timed("index", self._one(target))))
        self.index_down = False
        return outcomes

    async def _index(self, collection: str, chunks: list[IndexedChunk], analyzer: str) -> None:
        await self.retriever.index_chunks(collection, chunks, analyzer)

    async def _one(self, target: Target) -> None:
        work = target.work
        if work.kind == COLLECTION:
            await self.retriever.drop(work.collection)
            return
        try:
            if not target.exists or work.stale:
                await self.retriever.remove(work.collection, work.tenant, document_ids=[work.target])
        except UnknownCollection:
            pass
        if target.exists and target.chunks:
            await self.retriever.index_chunks(work.collection, list(target.chunks), target.analyzer)

    async def _timed(self, operation: str, step: Any) -> str | None:
        """Run an index step: None when done, the reason when the index refused it or failed
        otherwise; raises `StoreUnavailable` (counted) when it is down."""
        started = time.monotonic()
        try:
            await step
        except StoreUnavailable:
            self.metrics.errors.labels(operation, "unavailable").inc()
            raise
        except (IndexMismatch, EmbeddingError, ValueError) as e:
            self.metrics.errors.labels(operation, "refused").inc()
            return str(e)
        except Exception as e:
            # Not an outage (those are StoreUnavailable): the index or its client choked on
            # this step's records; the outbox keeps them and gives up after a few tries.
            self.metrics.errors.labels(operation, "error").inc()
            log.failure("Index step {operation} failed", operation=operation)
            return f"the index failed unexpectedly ({type(e).__name__}: {e})"
        self.metrics.duration.labels(operation).observe(time.monotonic() - started)
        return None

    def index_now(self, work: Work) -> Deferred[str]:
        """Index one write's records right away: INDEXED, or PENDING (left to the re-indexer)."""
        return Deferred.fromCoroutine(self._index_now(work))

    async def _index_now(self, work: Work) -> str:
        if self.index_down:
            self.pending += 1
            self.on_pending()
            return PENDING
        try:
            targets = await self.sql.targets([work])
            outcomes = await self._apply(targets)
        except StoreUnavailable as e:
            if not self.index_down:
                log.warn("Indexing is pending until the index answers again: {why}", why=e)
            self.index_down = True
            self.pending += 1
            self.on_pending()
            return PENDING
        except Exception:
            # The records are committed: whatever went wrong with the index, the write stands
            # and the re-indexer tries again.
            log.failure("Indexing {kind} {id} failed; left to the re-indexer", kind=work.kind, id=work.target)
            self.pending += 1
            self.on_pending()
            return PENDING
        error = outcomes[0][1] if outcomes else None
        if error is not None:
            await self.refused(work, error)
            self.pending += 1
            self.on_pending()
            return PENDING
        if await self.sql.settle([target for target, _ in outcomes]):
            # A newer change of the record came meanwhile: the re-indexer indexes what SQL holds.
            self.pending += 1
            self.on_pending()
            return PENDING
        return INDEXED

    def index_within(self, work: Work, seconds: float = WRITE_WAIT) -> Deferred[str]:
        """`index_now`, answered PENDING after ``seconds`` if it is still at work (it goes on,
        and clears the outbox row once done; the re-indexer would retry it otherwise)."""
        indexing = self.index_now(work)
        answer: Deferred[str] = Deferred()

        def settled(outcome: Any) -> None:
            if timer.active():
                timer.cancel()
                answer.callback(outcome)
            elif isinstance(outcome, Failure):
                log.failure("Indexing {kind} {id} failed after its answer", outcome, kind=work.kind, id=work.target)

        def late() -> None:
            log.info("Indexing {kind} {id} is slow; answered as pending", kind=work.kind, id=work.target)
            answer.callback(PENDING)

        timer = self.clock.callLater(seconds, late)
        indexing.addBoth(settled)
        return answer

    async def refused(self, work: Work, error: str) -> None:
        """Count a try of an outbox row the index refused; after `MAX_ATTEMPTS` it is given up
        (no longer pending) so the rest of the outbox drains."""
        await self.sql.failed(work.seq, error)
        if work.attempts + 1 < MAX_ATTEMPTS:
            log.warn("Index refused {kind} {id}: {why}", kind=work.kind, id=work.target, why=error)
            return
        self.metrics.errors.labels("index", "given_up").inc()
        log.error(
            "Index refused {kind} {id} {attempts} times; given up (kept in the outbox with its error): {why}",
            kind=work.kind,
            id=work.target,
            attempts=MAX_ATTEMPTS,
            why=error,
        )

    # -- IKnowledgeBase -------------------------------------------------------------------------

    def create_collection(
        self, tenant: str, name: str, description: str | None, analyzer: str, author: str
    ) -> Deferred[dict[str, Any]]:
        async def create() -> dict[str, Any]:
            collection = await self.sql.create_collection(tenant, name, description, analyzer, author)
            return await self._with_index(collection)

        return Deferred.fromCoroutine(create())

    async def _with_index(self, collection: dict[str, Any]) -> dict[str, Any]:
        """The collection as kb.collections shows it, with how its index is built (created now
        if need be; unknown while the index is down)."""
        shown = {key: collection[key] for key in ("name", "description", "analyzer", "documents", "chunks")}
        shown.update(embedding_model=None, dimension=None)
        try:
            info = await self.retriever.ensure_collection(index_collection(collection["id"]), collection["analyzer"])
        except (StoreUnavailable, IndexMismatch, EmbeddingError) as e:
            shown["notice"] = f"the index of this collection cannot be described now: {e}"
            return shown
        if info.spec.embedding is not None:
            shown.update(embedding_model=info.spec.embedding.name, dimension=info.spec.embedding.dimension)
        return shown

    def list_collections(
        self, tenant: str, limit: int, after: str | None
    ) -> Deferred[tuple[list[dict[str, Any]], str | None]]:
        async def listed() -> tuple[list[dict[str, Any]], str | None]:
            page, following = await self.sql.list_collections(tenant, limit, after)
            shown = await gatherResults([Deferred.fromCoroutine(self._with_index(c)) for c in page])
            return list(shown), following

        return Deferred.fromCoroutine(listed())

    def collection_names(self, tenant: str, prefix: str, limit: int) -> Deferred[list[str]]:
        return self.sql.collection_names(tenant, prefix, limit)

    def drop_collection(self, tenant: str, name: str) -> Deferred[dict[str, Any]]:
        async def drop() -> dict[str, Any]:
            collection, seq = await self.sql.drop_collection(tenant, name)
            work = Work(seq, tenant, index_collection(collection["id"]), COLLECTION, collection["id"], False, 0)
            return {"name": name, "indexing": await self._index_now(work)}

        return Deferred.fromCoroutine(drop())

    def add_document(
        self, tenant: str, collection: str, document: dict[str, Any], author: str
    ) -> Deferred[dict[str, Any]]:
        async def add() -> dict[str, Any]:
            added, work = await self.sql.add_document(tenant, collection, document, document["chunks"], author)
            return {"document": added, "indexing": await self.index_within(work)}

        return Deferred.fromCoroutine(add())

    def get_document(self, tenant: str, collection: str, document_id: str) -> Deferred[dict[str, Any]]:
        return self.sql.get_document(tenant, collection, document_id)

    def update_document(
        self, tenant: str, collection: str, document_id: str, changes: dict[str, Any]
    ) -> Deferred[dict[str, Any]]:
        async def change() -> dict[str, Any]:
            chunks = changes.get("chunks")
            updated, work = await self.sql.update_document(tenant, collection, document_id, changes, chunks)
            return {"document": updated, "indexing": await self.index_within(work)}

        return Deferred.fromCoroutine(change())

    def delete_document(self, tenant: str, collection: str, document_id: str) -> Deferred[bool]:
        async def remove() -> bool:
            work = await self.sql.delete_document(tenant, collection, document_id)
            if work is None:
                return False
            await self._index_now(work)
            return True

        return Deferred.fromCoroutine(remove())

    def document_ids(self, tenant: str, collection: str, prefix: str, limit: int) -> Deferred[list[str]]:
        return self.sql.document_ids(tenant, collection, prefix, limit)

    def search(
        self,
        tenant: str,
        collections: Sequence[str],
        query: str,
        mode: str | None,
        filters: Mapping[str, Any],
        limit: int,
        shown: Set[str] = frozenset(),
    ) -> Deferred[dict[str, Any]]:
        return Deferred.fromCoroutine(
            self._search_kb(tenant, list(dict.fromkeys(collections)), query, mode, dict(filters), limit, shown)
        )

    async def _search_kb(
        self,
        tenant: str,
        names: list[str],
        query: str,
        mode: str | None,
        filters: dict[str, Any],
        limit: int,
        shown: Set[str],
    ) -> dict[str, Any]:
        found = await self.sql.collections_of(tenant, names)
        ids = {row["id"]: name for name, row in found.items()}
        indexes = {index_collection(i): i for i in ids}
        depth = _first_depth(len(shown) + limit + 1)
        while True:
            started = time.monotonic()
            try:
                outcome = await self._search_index(list(indexes), found, tenant, query, mode, depth, metadata=filters)
            except Exception as e:
                return await self._scan_kb(tenant, ids, query, filters, limit, shown, self._search_failed(e))
            self.metrics.duration.labels("search").observe(time.monotonic() - started)
            rows = await self.sql.chunk_rows(tenant, [hit.chunk_id for hit in outcome.hits], list(ids))
            results = []
            for hit in outcome.hits:
                row = rows.get(hit.chunk_id)
                if row is None or shown_key(hit.chunk_id) in shown:
                    continue  # deleted since it was indexed (or not the caller's), or on an earlier page
                metadata = json.loads(row["metadata"])
                if not matches(metadata, filters):
                    continue  # changed since it was indexed, or the index's true == 1
                results.append(_result(row, ids[row["collection_id"]], hit.score, metadata))
            # Equal scores in one order whatever the depth (the index's order of ties is not).
            results.sort(key=lambda result: (-result["score"], result["chunk_id"]))
            deeper = _deeper(depth, outcome.hits, [result["score"] for result in results], limit + 1)
            if deeper is None:
                break
            depth = deeper
        pending = await self.sql.pending_count(tenant, list(indexes))
        notices = [outcome.notice] if outcome.notice else []
        if pending:
            notices.append(f"indexing is pending for {pending} change(s): the newest documents may be missing")
        page = results[:limit]
        return {
            "results": page,
            "mode": outcome.mode,
            "notice": "; ".join(notices) or None,
            "index": INDEX_DEGRADED if pending else INDEX_OK,
            "more": more_after(shown, limit, len(results) > limit),
            "shown": shown_after(shown, [result["chunk_id"] for result in page]),
        }

    def _search_failed(self, error: Exception) -> StoreUnavailable:
        """Why a search falls back to scanning SQL; re-raises what the caller can fix (a mode the
        collection was not built for: `StoreError`, answered as an isError result)."""
        if isinstance(error, (IndexMismatch, ValueError)):
            self.metrics.errors.labels("search", "refused").inc()
            raise StoreError(str(error)) from None
        if isinstance(error, StoreUnavailable):
            self.metrics.errors.labels("search", "unavailable").inc()
            return error
        self.metrics.errors.labels("search", "error").inc()
        log.failure("Search failed; answering from SQL", Failure(error))
        return StoreUnavailable(STORE, "it failed unexpectedly (the server log has the details)")

    async def _search_index(
        self, indexes: list[str], analyzers: Any, tenant: str, query: str, mode: str | None, depth: int, **narrow: Any
    ) -> Any:
        try:
            return await self.retriever.search(indexes, tenant, query, mode=mode, limit=depth, **narrow)
        except UnknownCollection:
            # A collection whose index was never made (created while the index was down): make
            # it (empty) and ask again.
            for name in indexes:
                analyzer = "standard"
                if isinstance(analyzers, Mapping):
                    analyzer = next(
                        (row["analyzer"] for row in analyzers.values() if index_collection(row["id"]) == name),
                        "standard",
                    )
                await self.retriever.ensure_collection(name, analyzer)
            return await self.retriever.search(indexes, tenant, query, mode=mode, limit=depth, **narrow)

    async def _scan_kb(
        self,
        tenant: str,
        ids: dict[str, str],
        query: str,
        filters: dict[str, Any],
        limit: int,
        shown: Set[str],
        why: StoreUnavailable,
    ) -> dict[str, Any]:
        words = search_terms(query)
        rows = await self.sql.scan_chunks(tenant, list(ids), words, SCAN_ROWS)
        scored = []
        for row in rows:
            metadata = json.loads(row["metadata"])
            if not matches(metadata, filters) or shown_key(row["id"]) in shown:
                continue
            text = row["text"].lower()
            score = float(sum(1 for word in words if word in text))
            scored.append((score, row["created_at"], row, metadata))
        scored.sort(key=lambda item: item[1], reverse=True)  # the newest first among equals
        scored.sort(key=lambda item: item[0], reverse=True)
        results = [_result(row, ids[row["collection_id"]], score, metadata) for score, _, row, metadata in scored]
        page = results[:limit]
        return {
            "results": page,
            "mode": KEYWORD,
            "notice": (
                f"the search index is degraded ({why.detail}): these results come from a plain word scan "
                "of the stored documents and are ranked roughly; try again later for ranked search"
            ),
            "index": INDEX_DEGRADED,
            "more": len(results) > limit,
            "shown": shown_after(shown, [result["chunk_id"] for result in page]),
        }

    # -- IMemoryStore ---------------------------------------------------------------------------

    def remember(
        self, tenant: str, owner: str, text: str, tags: Sequence[str], author: str
    ) -> Deferred[dict[str, Any]]:
        async def keep() -> dict[str, Any]:
            memory, work = await self.sql.remember(tenant, owner, text, tags, author)
            return {"memory": memory, "indexing": await self.index_within(work)}

        return Deferred.fromCoroutine(keep())

    def recall(
        self,
        tenant: str,
        owners: Sequence[str],
        query: str,
        tags: Sequence[str],
        limit: int,
        shown: Set[str] = frozenset(),
    ) -> Deferred[dict[str, Any]]:
        return Deferred.fromCoroutine(self._recall(tenant, list(owners), query, list(tags), limit, shown))

    async def _recall(
        self, tenant: str, owners: list[str], query: str, tags: list[str], limit: int, shown: Set[str]
    ) -> dict[str, Any]:
        depth = _first_depth(len(shown) + limit + 1)
        while True:
            started = time.monotonic()
            try:
                outcome = await self._search_index(
                    [MEMORY_COLLECTION], None, tenant, query, None, depth, tags=tags, owners=owners
                )
            except Exception as e:
                return await self._scan_memories(tenant, owners, query, tags, limit, shown, self._search_failed(e))
            self.metrics.duration.labels("search").observe(time.monotonic() - started)
            rows = await self.sql.memory_rows(tenant, owners, [hit.chunk_id for hit in outcome.hits])
            found = []
            for hit in outcome.hits:
                memory = rows.get(hit.chunk_id)
                if memory is None or not set(tags) <= set(memory["tags"]):
                    continue  # forgotten or changed since it was indexed
                if shown_key(hit.chunk_id) in shown:
                    continue  # on an earlier page
                found.append({**memory, "score": round(hit.score, 6)})
            # Relevance first; among equals, the newest (ids grow with creation time, below the second).
            found.sort(key=lambda m: (m["created_at"], m["id"]), reverse=True)
            found.sort(key=lambda m: m["score"], reverse=True)
            deeper = _deeper(depth, outcome.hits, [memory["score"] for memory in found], limit + 1)
            if deeper is None:
                break
            depth = deeper
        pending = await self.sql.pending_count(tenant, [MEMORY_COLLECTION])
        notices = [outcome.notice] if outcome.notice else []
        if pending:
            notices.append(f"indexing is pending for {pending} change(s): the newest memories may be missing")
        page = found[:limit]
        return {
            "memories": page,
            "mode": outcome.mode,
            "notice": "; ".join(notices) or None,
            "index": INDEX_DEGRADED if pending else INDEX_OK,
            "more": more_after(shown, limit, len(found) > limit),
            "shown": shown_after(shown, [memory["id"] for memory in page]),
        }

    async def _scan_memories(
        self,
        tenant: str,
        owners: list[str],
        query: str,
        tags: list[str],
        limit: int,
        shown: Set[str],
        why: StoreUnavailable,
    ) -> dict[str, Any]:
        words = search_terms(query)
        found = []
        after = None
        # Newest first, a page at a time, at most SCAN_ROWS memories read.
        for _ in range(SCAN_ROWS // 100):
            page, after = await self.sql.list_memories(tenant, owners, tags, 100, after)
            for memory in page:
                text = memory["text"].lower()
                score = float(sum(1 for word in words if word in text))
                if score and shown_key(memory["id"]) not in shown:
                    found.append({**memory, "score": score})
            if after is None:
                break
        found.sort(key=lambda m: m["score"], reverse=True)
        page = found[:limit]
        return {
            "memories": page,
            "mode": KEYWORD,
            "notice": (
                f"the search index is degraded ({why.detail}): these memories come from a plain word scan "
                "and are ranked roughly; try again later for ranked recall"
            ),
            "index": INDEX_DEGRADED,
            "more": len(found) > limit,
            "shown": shown_after(shown, [memory["id"] for memory in page]),
        }

    def list_memories(
        self, tenant: str, owners: Sequence[str], tags: Sequence[str], limit: int, after: str | None
    ) -> Deferred[tuple[list[dict[str, Any]], str | None]]:
        return self.sql.list_memories(tenant, owners, tags, limit, after)

    def get_memory(self, tenant: str, owners: Sequence[str], memory_id: str) -> Deferred[dict[str, Any]]:
        return self.sql.get_memory(tenant, owners, memory_id)

    def update_memory(
        self, tenant: str, owners: Sequence[str], memory_id: str, changes: dict[str, Any]
    ) -> Deferred[dict[str, Any]]:
        async def change() -> dict[str, Any]:
            memory, work = await self.sql.update_memory(tenant, owners, memory_id, changes)
            return {"memory": memory, "indexing": await self.index_within(work)}

        return Deferred.fromCoroutine(change())

    def forget(self, tenant: str, owners: Sequence[str], memory_id: str) -> Deferred[bool]:
        async def remove() -> bool:
            work = await self.sql.forget(tenant, owners, memory_id)
            if work is None:
                return False
            await self._index_now(work)
            return True

        return Deferred.fromCoroutine(remove())

    def memory_ids(self, tenant: str, owners: Sequence[str], prefix: str, limit: int) -> Deferred[list[str]]:
        return self.sql.memory_ids(tenant, owners, prefix, limit)


def matches(metadata: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """Whether ``metadata`` holds every pair of ``filters``: a boolean equals only a boolean
    (Milvus, like Python, takes true for 1 and false for 0), while 1 and 1.0 are one JSON number."""
    return all(
        (type(metadata.get(key)) is bool, metadata.get(key)) == (type(value) is bool, value)
        for key, value in filters.items()
    )


def _first_depth(wanted: int) -> int:
    """How deep the first search of a page goes: well past the page, so that hits dropped by the
    SQL check, or a run of equal scores at the page's end (copies of one text), seldom need a
    second search (`_deeper`): a deeper top-k costs the index little, a second search (on Milvus
    Lite, a pass over every row) much more."""
    return min(max(wanted * 2, wanted + 40), MAX_DEPTH)


def _deeper(depth: int, hits: Sequence[Any], kept: Sequence[float], wanted: int) -> int | None:
    """How deep to search again, or None when this search will do. ``kept`` are the scores
    (rounded as shown, best first) of the hits the SQL check kept and earlier pages did not show;
    ``wanted`` is one more than the page.

    Search again, deeper (up to `MAX_DEPTH`, while the index has more), when the SQL check
    dropped hits (records deleted or changed since they were indexed) and the page is short, or
    when hits tied with the page's last result may lie past the depth searched (which of a run
    of equal scores the index returns first depends on the depth). So pages are full whenever
    there are results, and equal scores come in one order (by id) whatever the depth."""
    if len(hits) < depth or depth >= MAX_DEPTH:
        return None  # all there is, or as deep as a search goes
    if len(kept) >= wanted:
        if kept[wanted - 2] > round(min(hit.score for hit in hits), 6):
            return None
        return min(MAX_DEPTH, depth * 4)
    # Ask for what is missing, scaled by the share dropped so far (at least four times as deep).
    missing = (wanted - len(kept)) * len(hits) // max(len(kept), 1)
    return min(MAX_DEPTH, max(depth * 4, depth + missing))


def _result(row: Any, collection: str, score: float, metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "collection": collection,
        "document_id": row["document_id"],
        "chunk_id": row["id"],
        "title": row["title"],
        "text": row["text"],
        "score": round(score, 6),
        "metadata": metadata,
    }
