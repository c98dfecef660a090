"""Tests for mcpd.stores.retrieval: the index (Milvus Lite, embedded) and an embedding service on
loopback (tests/embedding_service.py) used together, as the kb and memory packs will."""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from mcpd.interfaces import (
    DOWN,
    HYBRID,
    KEYWORD,
    SEMANTIC,
    UP,
    EmbeddingModel,
    EmbeddingUnavailable,
    IndexedChunk,
    IndexMismatch,
)
from mcpd.stores.embedders import make_embedder
from mcpd.stores.milvus import MilvusIndex
from mcpd.stores.retrieval import NO_EMBEDDER, Retriever
from tests.embedding_service import TOY_DIMENSION, TOY_MODEL, EmbeddingService, Fault
from tests.milvus_service import require_milvus

TEXTS = {
    "backup": "Back up the database every night with mysqldump and keep seven copies off site.",
    "deploy": "Deploy the web service with the blue green method; switch the load balancer after checks.",
    "cache": "Redis holds the session cache; flush it only during the maintenance window.",
}


def chunks(tenant: str = "acme") -> list[IndexedChunk]:
    return [IndexedChunk(f"{tenant}-{k}", tenant, f"doc-{k}", text) for k, text in TEXTS.items()]


class RetrieverTests(TestCase):
    def setUp(self) -> None:
        require_milvus()
        self.index = MilvusIndex(os.path.join(self.mktemp(), "milvus.db"), reactor)
        self.index.startService()
        self.addCleanup(self.index.stopService)
        self.service = EmbeddingService()
        self.url = self.service.listen(reactor) + "/v1/embeddings"
        self.addCleanup(self.service.stop)

    def retriever(self, embedding: bool = True, model: str = TOY_MODEL, **options: Any) -> Retriever:
        if not embedding:
            return Retriever(self.index)
        options.setdefault("backoff", 0.01)
        embedder = make_embedder(self.url, model, reactor, document_prefix="passage: ", **options)
        embedder.startService()
        self.addCleanup(embedder.stopService)
        return Retriever(self.index, embedder)

    @inlineCallbacks
    def test_without_an_embedding_service_search_is_keyword_and_says_so(self) -> Any:
        retriever = self.retriever(embedding=False)
        self.assertEqual(retriever.default_mode, KEYWORD)
        yield retriever.index_chunks("kb_team", chunks())
        info = yield self.index.describe_collection("kb_team")
        self.assertIsNone(info.spec.embedding)
        outcome = yield retriever.search(["kb_team"], "acme", "mysqldump backup")
        self.assertEqual((outcome.mode, outcome.notice), (KEYWORD, NO_EMBEDDER))
        self.assertEqual(outcome.hits[0].chunk_id, "acme-backup")
        outcome = yield retriever.search(["kb_team"], "acme", "mysqldump backup", mode=SEMANTIC)
        self.assertEqual(outcome.mode, KEYWORD)
        self.assertIn("semantic search needs an embedding service", outcome.notice)
        outcome = yield retriever.search(["kb_team"], "acme", "mysqldump backup", mode=KEYWORD)
        self.assertIsNone(outcome.notice)
        self.assertEqual([s.store for s in retriever.stores()], ["milvus"])

    @inlineCallbacks
    def test_with_one_collections_are_built_for_it_and_search_is_hybrid(self) -> Any:
        retriever = self.retriever()
        self.assertEqual(retriever.default_mode, HYBRID)
        self.assertEqual((yield retriever.index_chunks("kb_team", chunks(), analyzer="jieba")), 3)
        info = yield self.index.describe_collection("kb_team")
        self.assertEqual((info.spec.analyzer, info.spec.embedding), ("jieba", EmbeddingModel(TOY_MODEL, TOY_DIMENSION)))
        self.assertIn("passage: Redis holds the session cache", str(self.service.requests[-1].body["input"]))
        outcome = yield retriever.search(["kb_team"], "acme", "session cache in redis")
        self.assertEqual((outcome.mode, outcome.notice), (HYBRID, None))
        self.assertEqual(outcome.hits[0].chunk_id, "acme-cache")
        outcome = yield retriever.search(["kb_team"], "acme", "session cache in redis", mode=SEMANTIC, limit=1)
        self.assertEqual([h.chunk_id for h in outcome.hits], ["acme-cache"])
        self.assertEqual([s.state for s in retriever.stores()], [UP, UP])
        yield retriever.remove("kb_team", "acme", document_ids=["doc-cache"])
        outcome = yield retriever.search(["kb_team"], "acme", "session cache in redis", mode=KEYWORD)
        self.assertEqual(outcome.hits, [])

    @inlineCallbacks
    def test_a_failing_embedding_service_falls_back_to_keyword_search(self) -> Any:
        retriever = self.retriever(retries=1)
        yield retriever.index_chunks("kb_team", chunks())
        self.service.faults = [Fault(503), Fault(503)]
        outcome = yield retriever.search(["kb_team"], "acme", "mysqldump backup")
        self.assertEqual(outcome.mode, KEYWORD)
        self.assertIn("the embedding service failed", outcome.notice)
        self.assertEqual(outcome.hits[0].chunk_id, "acme-backup")
        self.assertEqual(retriever.stores()[1].state, DOWN)

    @inlineCallbacks
    def test_indexing_waits_for_the_embedding_service(self) -> Any:
        retriever = self.retriever(retries=0)
        self.service.faults = [Fault(500)]
        # Nothing is indexed without its vectors: the caller keeps the work pending.
        yield self.assertFailure(retriever.index_chunks("kb_team", chunks()), EmbeddingUnavailable)
        self.assertIsNone((yield self.index.describe_collection("kb_team")))
        yield retriever.index_chunks("kb_team", chunks())
        self.service.faults = [Fault(500)]
        yield self.assertFailure(retriever.index_chunks("kb_team", chunks("globex")), EmbeddingUnavailable)

    @inlineCallbacks
    def test_another_model_is_refused_naming_the_one_the_collection_was_built_with(self) -> Any:
        yield self.retriever().index_chunks("kb_team", chunks())
        self.service.model = "bge-m3"
        other = self.retriever(model="bge-m3")
        error = yield self.assertFailure(other.index_chunks("kb_team", chunks()), IndexMismatch)
        self.assertIn(f"built with embedding model {TOY_MODEL} (dimension {TOY_DIMENSION}), not bge-m3", str(error))
        error = yield self.assertFailure(other.search(["kb_team"], "acme", "backup", mode=SEMANTIC), IndexMismatch)
        self.assertIn(f"built with embedding model {TOY_MODEL}", str(error))
        outcome = yield other.search(["kb_team"], "acme", "mysqldump backup")
        self.assertEqual(outcome.mode, KEYWORD)
        self.assertIn(f"built with embedding model {TOY_MODEL}", outcome.notice)
        error = yield self.assertFailure(
            self.retriever(embedding=False).index_chunks("kb_team", chunks()), IndexMismatch
        )
        self.assertIn("no embedding service is configured", str(error))

    @inlineCallbacks
    def test_a_keyword_collection_stays_keyword_until_it_is_rebuilt(self) -> Any:
        yield self.retriever(embedding=False).index_chunks("kb_team", chunks())
        retriever = self.retriever()
        yield retriever.index_chunks("kb_team", chunks("globex"))
        outcome = yield retriever.search(["kb_team"], "globex", "mysqldump backup")
        self.assertEqual(outcome.mode, KEYWORD)
        self.assertIn("built without embeddings", outcome.notice)
        self.assertEqual(outcome.hits[0].chunk_id, "globex-backup")
        # Rebuilding (what `mcpd reindex` will do): drop, then index again from SQL.
        self.assertTrue((yield retriever.drop("kb_team")))
        yield retriever.index_chunks("kb_team", chunks("globex"))
        outcome = yield retriever.search(["kb_team"], "globex", "mysqldump backup")
        self.assertEqual(outcome.mode, HYBRID)

    @inlineCallbacks
    def test_an_unknown_mode_is_refused(self) -> Any:
        retriever = self.retriever(embedding=False)
        yield self.assertFailure(retriever.search(["kb_team"], "acme", "x", mode="fuzzy"), ValueError)


class ConcurrentCreationTests(TestCase):
    """A write and the re-indexer indexing the first record of a collection at the same moment
    both find it missing: one creation is made, both succeed (a milvus-lite server asked to create
    a collection twice at once failed the second with "File exists")."""

    timeout = 120

    @inlineCallbacks
    def test_concurrent_first_uses_create_the_collection_once(self) -> Any:
        from twisted.internet.defer import gatherResults

        from tests.milvus_service import shared_server, unique_prefix

        require_milvus()
        index = MilvusIndex(shared_server().uri, reactor, prefix=unique_prefix())
        index.startService()
        self.addCleanup(index.stopService)
        retriever = Retriever(index)
        for attempt in range(3):
            name = f"race{attempt}"
            infos = yield gatherResults([retriever.ensure_collection(name) for _ in range(4)])
            self.assertEqual({info.spec.name for info in infos}, {name})
            indexed = yield gatherResults(
                [retriever.index_chunks(name, [c]) for c in chunks(f"t{attempt}")], consumeErrors=True
            )
            self.assertEqual(indexed, [1, 1, 1])


class WarmTests(TestCase):
    """Milvus Lite builds a segment's BM25 index on the first search that reaches it; after
    writes, the index builds it itself, so no user's search pays for it (41-57 s at 100,000
    chunks, bench/README)."""

    @inlineCallbacks
    def test_after_writes_the_keyword_index_is_built_before_any_search(self) -> Any:
        require_milvus()
        path = os.path.abspath(os.path.join(self.mktemp(), "milvus.db"))
        index = MilvusIndex(path, reactor, warm_delays=(0.2, 0.4))
        index.startService()
        self.addCleanup(index.stopService)
        retriever = Retriever(index)
        yield retriever.index_chunks("kb_warm", chunks())
        yield retriever.index_chunks("kb_warm", chunks("globex"))
        deadline = time.monotonic() + 30
        while True:
            segments = yield deferToThread(lite_segments, path, "mcpd_kb_warm")
            if segments and all("sparse" in segment.sparse_indexes for segment in segments):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"BM25 indexes not built: {[sorted(s.sparse_indexes) for s in segments]}")
            yield deferLater(reactor, 0.2, lambda: None)
        outcome = yield retriever.search(["kb_warm"], "acme", "mysqldump backup")
        self.assertEqual(outcome.hits[0].chunk_id, "acme-backup")


def lite_segments(path: str, collection: str) -> list[Any]:
    """The sealed segments of a collection of the Milvus Lite running in this process (its
    engine's own objects: whether their BM25 index is built shows nowhere else)."""
    from milvus_lite.server_manager import server_manager_instance

    _server, db, _port = server_manager_instance._servers[path]
    return list(db.get_collection(collection)._segments_snapshot())
