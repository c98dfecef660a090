"""Tests for mcpd.stores.milvus: one contract suite run against Milvus Lite embedded and against
``milvus-lite server`` through an ``http://`` URI (the client path of a Milvus server), faults of
that server, and the lazy import of pymilvus."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from mcpd.config import resolve
from mcpd.daemon import vector_stores
from mcpd.interfaces import (
    DOWN,
    HYBRID,
    SEMANTIC,
    UP,
    CollectionSpec,
    EmbeddingModel,
    IndexedChunk,
    IndexMismatch,
    IVectorIndex,
    SearchQuery,
    StoreUnavailable,
    UnknownCollection,
)
from mcpd.observe.health import DOWN as CHECK_DOWN
from mcpd.observe.health import OK, HealthChecks, overall, store_check
from mcpd.stores.embedders import OllamaEmbedder, OpenAIEmbedder
from mcpd.stores.milvus import MilvusIndex
from tests.embedding_service import TOY_DIMENSION, TOY_MODEL, toy_vector
from tests.milvus_service import MilvusLiteServer, require_milvus, shared_server, unique_prefix

TOY = EmbeddingModel(TOY_MODEL, TOY_DIMENSION)

DOCS = {
    "backup": "Back up the database every night with mysqldump and keep seven copies off site.",
    "deploy": "Deploy the web service with the blue green method; switch the load balancer after checks.",
    "oncall": "The on-call engineer answers pages within fifteen minutes and writes the incident report.",
    "cache": "Redis holds the session cache; flush it only during the maintenance window.",
}


def chunk(key: str, tenant: str = "acme", text: str | None = None, vector: bool = False, **fields: Any) -> IndexedChunk:
    body = DOCS[key] if text is None else text
    values: dict[str, Any] = {"document_id": f"doc-{key}", "created_at": 1_700_000_000.0}
    values.update(fields)
    return IndexedChunk(
        id=f"{tenant}-{key}", tenant=tenant, text=body, vector=tuple(toy_vector(body)) if vector else None, **values
    )


class IndexContract:
    """What every IVectorIndex backend does; subclasses say where the index lives."""

    index: MilvusIndex

    def make_index(self) -> MilvusIndex:
        raise NotImplementedError

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        require_milvus()
        self.index = self.make_index()
        self.index.startService()
        self.addCleanup(self._stop)
        return self.index.check().addCallback(lambda _status: None)

    @inlineCallbacks
    def _stop(self) -> Any:
        if self.index.running:
            for name in (yield self.index.list_collections()):
                yield self.index.drop_collection(name)
            yield self.index.stopService()

    @inlineCallbacks
    def filled(self, spec: CollectionSpec | None = None, chunks: list[IndexedChunk] | None = None) -> Any:
        spec = spec or CollectionSpec("kb_team")
        yield self.index.create_collection(spec)
        vectors = spec.embedding is not None
        yield self.index.upsert(
            spec.name, chunks if chunks is not None else [chunk(k, vector=vectors) for k in DOCS], spec.embedding
        )
        return spec.name

    def search(self, name: str | list[str], text: str, **fields: Any) -> Deferred[Any]:
        fields.setdefault("tenant", "acme")
        return self.index.search([name] if isinstance(name, str) else name, SearchQuery(text=text, **fields))

    def test_provides_the_interface(self) -> None:
        from zope.interface.verify import verifyObject

        self.assertTrue(verifyObject(IVectorIndex, self.index))

    @inlineCallbacks
    def test_collections_are_created_described_listed_and_dropped(self) -> Any:
        spec = CollectionSpec("kb_docs", "jieba", TOY)
        info = yield self.index.create_collection(spec)
        self.assertEqual((info.spec, info.rows), (spec, 0))
        again = yield self.index.create_collection(spec)
        self.assertEqual(again.spec, spec)
        self.assertEqual((yield self.index.describe_collection("kb_docs")).spec, spec)
        self.assertIn("kb_docs", (yield self.index.list_collections()))
        self.assertTrue((yield self.index.drop_collection("kb_docs")))
        self.assertFalse((yield self.index.drop_collection("kb_docs")))
        self.assertIsNone((yield self.index.describe_collection("kb_docs")))

    @inlineCallbacks
    def test_a_collection_built_otherwise_is_refused_naming_how_it_was_built(self) -> Any:
        yield self.index.create_collection(CollectionSpec("kb_docs", "standard", TOY))
        error = yield self.assertFailure(
            self.index.create_collection(CollectionSpec("kb_docs", "standard", EmbeddingModel("bge-m3", 1024))),
            IndexMismatch,
        )
        self.assertIn(f"embedding model {TOY_MODEL} (dimension {TOY_DIMENSION})", str(error))
        error = yield self.assertFailure(
            self.index.create_collection(CollectionSpec("kb_docs", "jieba", TOY)), IndexMismatch
        )
        self.assertIn("analyzer standard", str(error))

    @inlineCallbacks
    def test_keyword_search_ranks_by_bm25_and_returns_the_chunk(self) -> Any:
        name = yield self.filled()
        hits = yield self.search(name, "nightly database backup mysqldump", limit=3)
        self.assertEqual(hits[0].chunk_id, "acme-backup")
        self.assertEqual(hits[0].document_id, "doc-backup")
        self.assertEqual(hits[0].text, DOCS["backup"])
        self.assertEqual(hits[0].collection, name)
        self.assertEqual(hits[0].created_at, 1_700_000_000.0)
        self.assertGreater(hits[0].score, 0)
        self.assertEqual([h.score for h in hits], sorted((h.score for h in hits), reverse=True))
        self.assertEqual((yield self.search(name, "zebra xylophone")), [])

    @inlineCallbacks
    def test_a_tenant_never_sees_another_tenants_chunks(self) -> Any:
        chunks = [chunk("backup", "acme"), chunk("backup", "globex"), chunk("deploy", "globex")]
        name = yield self.filled(chunks=chunks)
        acme = yield self.search(name, "database backup deploy", limit=10)
        self.assertEqual([h.chunk_id for h in acme], ["acme-backup"])
        globex = yield self.search(name, "database backup deploy", tenant="globex", limit=10)
        self.assertEqual({h.chunk_id for h in globex}, {"globex-backup", "globex-deploy"})
        self.assertEqual((yield self.search(name, "database backup", tenant="initech")), [])
        # Deleting another tenant's chunk, by its id or its document, deletes nothing.
        yield self.index.delete(name, "globex", chunk_ids=["acme-backup"], document_ids=["doc-backup"])
        self.assertEqual([h.chunk_id for h in (yield self.search(name, "database backup"))], ["acme-backup"])

    @inlineCallbacks
    def test_metadata_filters_match_by_equality(self) -> Any:
        tricky = 'it\'s "quoted" \\ and\nnew 中文'
        chunks = [
            chunk("backup", metadata={"team": "ops", "priority": 1, "public": True, "note": tricky}),
            chunk("deploy", metadata={"team": "web", "priority": 2, "public": False}),
            chunk("oncall", metadata={"team": "ops", "priority": 2, "public": False}),
        ]
        name = yield self.filled(chunks=chunks)
        query = "database backup deploy service engineer pages"

        def ids(hits: list[Any]) -> set[str]:
            return {h.chunk_id for h in hits}

        self.assertEqual(
            ids((yield self.search(name, query, metadata={"team": "ops"}))), {"acme-backup", "acme-oncall"}
        )
        self.assertEqual(
            ids((yield self.search(name, query, metadata={"team": "ops", "priority": 2}))), {"acme-oncall"}
        )
        self.assertEqual(ids((yield self.search(name, query, metadata={"public": True}))), {"acme-backup"})
        self.assertEqual(ids((yield self.search(name, query, metadata={"note": tricky}))), {"acme-backup"})
        self.assertEqual(ids((yield self.search(name, query, metadata={"team": '" or tenant != "'}))), set())
        hit = (yield self.search(name, query, metadata={"public": True}))[0]
        self.assertEqual(hit.metadata, {"team": "ops", "priority": 1, "public": True, "note": tricky})
        error = yield self.assertFailure(
            self.search(name, query, metadata={'team"] == 1 or metadata["x': "ops"}), ValueError
        )
        self.assertIn("metadata filter key", str(error))
        yield self.assertFailure(self.search(name, query, metadata={"team": ["ops"]}), ValueError)

    @inlineCallbacks
    def test_every_control_character_round_trips_in_a_filter(self) -> Any:
        # Milvus' expressions know no \\u escape: each character must be written so it parses.
        characters = [chr(code) for code in range(0x20)] + ["\x7f"]
        chunks = [
            IndexedChunk(
                id=f"c{code}",
                tenant="acme",
                document_id=f"doc-{code}",
                text=f"backup note {code}",
                metadata={"w": f"a{c}b"},
                tags=(f"a{c}b",),
            )
            for code, c in enumerate(characters)
        ]
        name = yield self.filled(chunks=chunks)
        for code, c in enumerate(characters):
            by_metadata = yield self.search(name, "backup note", limit=50, metadata={"w": f"a{c}b"})
            by_tag = yield self.search(name, "backup note", limit=50, tags=(f"a{c}b",))
            self.assertEqual([h.chunk_id for h in by_metadata], [f"c{code}"], repr(c))
            self.assertEqual([h.chunk_id for h in by_tag], [f"c{code}"], repr(c))

    @inlineCallbacks
    def test_tags_and_owners_narrow_a_search(self) -> Any:
        chunks = [
            chunk("backup", tags=("ops", "db"), owner=""),
            chunk("deploy", tags=("ops",), owner="alice"),
            chunk("oncall", tags=("people",), owner="bob"),
        ]
        name = yield self.filled(chunks=chunks)
        query = "database backup deploy service engineer pages"

        def ids(hits: list[Any]) -> set[str]:
            return {h.chunk_id for h in hits}

        self.assertEqual(ids((yield self.search(name, query, tags=("ops",)))), {"acme-backup", "acme-deploy"})
        self.assertEqual(ids((yield self.search(name, query, tags=("ops", "db")))), {"acme-backup"})
        self.assertEqual(ids((yield self.search(name, query, owners=("", "alice")))), {"acme-backup", "acme-deploy"})
        self.assertEqual(ids((yield self.search(name, query, owners=("bob",)))), {"acme-oncall"})
        self.assertEqual((yield self.search(name, query, owners=())), [])
        self.assertEqual((yield self.search(name, query, tags=("ops",), owners=("bob",))), [])

    @inlineCallbacks
    def test_upsert_replaces_by_id_and_delete_removes(self) -> Any:
        name = yield self.filled()
        yield self.index.upsert(name, [chunk("backup", text="Restore drills happen every quarter.")])
        self.assertEqual((yield self.search(name, "mysqldump")), [])
        self.assertEqual([h.chunk_id for h in (yield self.search(name, "restore drills"))], ["acme-backup"])
        yield self.index.delete(name, "acme", chunk_ids=["acme-backup"])
        self.assertEqual((yield self.search(name, "restore drills")), [])
        yield self.index.delete(name, "acme", document_ids=["doc-deploy", "doc-cache"])
        remaining = yield self.search(name, "deploy redis cache engineer pages", limit=10)
        self.assertEqual([h.chunk_id for h in remaining], ["acme-oncall"])

    @inlineCallbacks
    def test_chinese_text_is_searched_with_jieba(self) -> Any:
        texts = {
            "backup": "每天晚上用 mysqldump 备份数据库，并在异地保留七份副本。",
            "deploy": "用蓝绿部署发布网站服务，检查通过后切换负载均衡。",
            "oncall": "值班工程师要在十五分钟内响应告警，并撰写事故报告。",
        }
        spec = CollectionSpec("kb_zh", "jieba")
        name = yield self.filled(spec, [chunk(k, text=t) for k, t in texts.items()])
        self.assertEqual((yield self.search(name, "数据库备份"))[0].chunk_id, "acme-backup")
        self.assertEqual((yield self.search(name, "负载均衡"))[0].chunk_id, "acme-deploy")
        self.assertEqual((yield self.search(name, "事故报告"))[0].chunk_id, "acme-oncall")

    @inlineCallbacks
    def test_semantic_and_hybrid_search_use_the_dense_vectors(self) -> Any:
        name = yield self.filled(CollectionSpec("kb_dense", embedding=TOY))
        vector = tuple(toy_vector("session cache redis"))
        semantic = yield self.search(name, "session cache redis", mode=SEMANTIC, vector=vector, embedding=TOY)
        self.assertEqual(semantic[0].chunk_id, "acme-cache")
        self.assertLessEqual(semantic[0].score, 1.0001)
        hybrid = yield self.search(name, "session cache redis", mode=HYBRID, vector=vector, embedding=TOY, limit=2)
        self.assertEqual(hybrid[0].chunk_id, "acme-cache")
        self.assertEqual(len(hybrid), 2)
        # RRF: the top hit's score is at most two first places, 2 / (60 + 1).
        self.assertLessEqual(hybrid[0].score, 2 / 61 + 1e-6)
        other = yield self.search(name, "x", mode=HYBRID, vector=vector, embedding=TOY, tenant="globex")
        self.assertEqual(other, [])

    @inlineCallbacks
    def test_vectors_of_another_model_are_refused_naming_the_collections_model(self) -> Any:
        name = yield self.filled(CollectionSpec("kb_dense", embedding=TOY))
        other = EmbeddingModel("nomic-embed-text", TOY_DIMENSION)
        error = yield self.assertFailure(self.index.upsert(name, [chunk("backup", vector=True)], other), IndexMismatch)
        self.assertIn(f"built with embedding model {TOY_MODEL}", str(error))
        vector = tuple(toy_vector("cache"))
        error = yield self.assertFailure(
            self.search(name, "cache", mode=SEMANTIC, vector=vector, embedding=other), IndexMismatch
        )
        self.assertIn(f"built with embedding model {TOY_MODEL}", str(error))
        yield self.assertFailure(self.index.upsert(name, [chunk("backup")], TOY), ValueError)
        keyword = yield self.filled(CollectionSpec("kb_plain"))
        error = yield self.assertFailure(
            self.search(keyword, "cache", mode=SEMANTIC, vector=vector, embedding=TOY), IndexMismatch
        )
        self.assertIn("built without embeddings", str(error))
        yield self.assertFailure(self.index.upsert(keyword, [chunk("backup", vector=True)], TOY), IndexMismatch)

    @inlineCallbacks
    def test_a_search_across_collections_merges_and_names_them(self) -> Any:
        first = yield self.filled(CollectionSpec("kb_one"), [chunk("backup"), chunk("deploy")])
        second = yield self.filled(CollectionSpec("kb_two"), [chunk("cache"), chunk("oncall")])
        hits = yield self.search([first, second], "database backup redis cache", limit=10)
        self.assertEqual(
            {(h.collection, h.chunk_id) for h in hits[:2]}, {(first, "acme-backup"), (second, "acme-cache")}
        )

    @inlineCallbacks
    def test_bad_input_is_refused_before_milvus(self) -> Any:
        name = yield self.filled()
        yield self.assertFailure(self.search("kb_missing", "backup"), UnknownCollection)
        yield self.assertFailure(self.index.upsert("kb_missing", [chunk("backup")]), UnknownCollection)
        for bad in ("kb-team", "1kb", "kb team", ""):
            yield self.assertFailure(self.index.describe_collection(bad), ValueError)
        error = yield self.assertFailure(self.index.upsert(name, [chunk("backup", text="x" * 70_000)]), ValueError)
        self.assertIn("over 65535 bytes", str(error))
        yield self.assertFailure(self.index.upsert(name, [chunk("backup", metadata={"nested": {"a": 1}})]), ValueError)
        error = yield self.assertFailure(self.index.upsert(name, [chunk("backup", metadata={"n": 2**64})]), ValueError)
        self.assertIn("beyond 64 bits", str(error))
        error = yield self.assertFailure(self.index.upsert(name, [chunk("backup"), chunk("backup")]), ValueError)
        self.assertIn("chunk id twice", str(error))
        yield self.assertFailure(self.search(name, "backup", mode="fuzzy"), ValueError)
        yield self.assertFailure(self.search(name, "backup", mode=SEMANTIC), ValueError)
        yield self.assertFailure(self.index.create_collection(CollectionSpec("kb_x", "klingon")), ValueError)

    @inlineCallbacks
    def test_status_is_up_once_milvus_answered(self) -> Any:
        status = yield self.index.check()
        self.assertEqual(status.state, UP)
        self.assertIsNotNone(status.latency)
        self.assertEqual(self.index.status().state, UP)


class EmbeddedMilvusTests(IndexContract, TestCase):
    """Milvus Lite inside the test process, in a file of the test's temp dir."""

    def make_index(self) -> MilvusIndex:
        self.path = os.path.join(self.mktemp(), "data", "milvus.db")
        return MilvusIndex(self.path, reactor)

    @inlineCallbacks
    def test_the_data_directory_is_private_and_the_index_survives_a_restart(self) -> Any:
        name = yield self.filled()
        mode = stat.S_IMODE(os.stat(os.path.dirname(self.path)).st_mode)
        self.assertEqual(mode, 0o700)
        yield self.index.stopService()
        self.index = MilvusIndex(self.path, reactor)
        self.index.startService()
        hits = yield self.search(name, "mysqldump")
        self.assertEqual([h.chunk_id for h in hits], ["acme-backup"])

    def segments(self, name: str) -> list[str]:
        data = os.path.join(self.path, "collections", self.index.prefix + name, "partitions", "_default", "data")
        return sorted(os.listdir(data)) if os.path.isdir(data) else []

    @inlineCallbacks
    def test_writes_are_flushed_into_an_indexed_segment_soon_after(self) -> Any:
        # Regression: Milvus Lite searched unflushed rows without an index, rebuilt on every query
        # (1.3 s a search at 4,000 chunks); the index now flushes shortly after writes.
        name = yield self.filled()
        self.assertTrue(self.index._lite)
        deadline = time.monotonic() + 10
        while not self.segments(name) and time.monotonic() < deadline:
            yield deferLater(reactor, 0.1)
        self.assertTrue(any(f.endswith(".parquet") for f in self.segments(name)), self.segments(name))
        # What is written just before a stop is flushed by the stop.
        yield self.index.upsert(name, [chunk("oncall", text="Pager duty rotates weekly.")])
        before = self.segments(name)
        yield self.index.stopService()
        self.assertGreater(len(self.segments(name)), len(before))


class ServerMilvusTests(IndexContract, TestCase):
    """``milvus-lite server`` in a subprocess, through ``http://127.0.0.1:PORT``."""

    def make_index(self) -> MilvusIndex:
        return MilvusIndex(shared_server().uri, reactor, prefix=unique_prefix())

    @inlineCallbacks
    def test_a_collection_rebuilt_by_another_instance_is_seen_with_its_new_model(self) -> Any:
        other = MilvusIndex(self.index.uri, reactor, prefix=self.index.prefix)
        other.startService()
        self.addCleanup(other.stopService)
        name = yield self.filled(CollectionSpec("kb_dense", embedding=TOY))
        yield self.search(name, "cache", mode=SEMANTIC, vector=tuple(toy_vector("cache")), embedding=TOY)
        # The other instance re-indexes with a new model; this one still knows the old spec.
        bigger = EmbeddingModel("toy-embed-2", 8)
        yield other.drop_collection(name)
        yield other.create_collection(CollectionSpec(name, embedding=bigger))
        vector = tuple(toy_vector(DOCS["cache"], 8))
        yield self.index.upsert(name, [attrs.evolve(chunk("cache"), vector=vector)], bigger)
        hits = yield self.search(name, "cache", mode=SEMANTIC, vector=tuple(toy_vector("cache", 8)), embedding=bigger)
        self.assertEqual([h.chunk_id for h in hits], ["acme-cache"])

    @inlineCallbacks
    def test_instances_creating_one_collection_at_once_all_get_it(self) -> Any:
        # Four instances (each its own connection, as separate processes are to the server) make
        # the same collections at the same moment: milvus-lite server refuses all but one
        # ("already exists", or "File exists" while the first is still being made).
        others = [MilvusIndex(self.index.uri, reactor, prefix=self.index.prefix) for _ in range(3)]
        for other in others:
            other.startService()
            self.addCleanup(other.stopService)
        for round in range(4):
            spec = CollectionSpec(f"kb_race{round}", embedding=TOY if round % 2 else None)
            made = yield gatherResults([index.create_collection(spec) for index in [self.index, *others]])
            self.assertEqual([info.spec for info in made], [spec] * 4)
        self.assertEqual((yield self.index.list_collections()), [f"kb_race{round}" for round in range(4)])

    def test_processes_creating_one_collection_at_once_all_get_it(self) -> Deferred[None]:
        ready = self.mktemp()
        os.makedirs(ready)
        count = 3

        def run() -> list[subprocess.CompletedProcess[str]]:
            argv = [sys.executable, "-c", _CREATOR, self.index.uri, self.index.prefix, ready, str(count)]
            processes = [
                subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(count)
            ]
            done = []
            for process in processes:
                out, err = process.communicate(timeout=240)
                done.append(subprocess.CompletedProcess(argv, process.returncode, out, err))
            return done

        def check(done: list[subprocess.CompletedProcess[str]]) -> None:
            for process in done:
                self.assertEqual(
                    (process.returncode, process.stdout.split()),
                    (0, ["kb_procs0", "kb_procs1"]),
                    process.stderr[-2000:],
                )

        return deferToThread(run).addCallback(check)


# One process of `test_processes_creating_one_collection_at_once_all_get_it`: connect, say so
# (a file in the directory argv[3]), wait for the others, create the collections, print them.
_CREATOR = """
import os, sys, time
from twisted.internet import defer, task
from mcpd.interfaces import CollectionSpec
from mcpd.stores.milvus import MilvusIndex

async def main(reactor):
    uri, prefix, ready, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    index = MilvusIndex(uri, reactor, prefix=prefix)
    index.startService()
    await index.list_collections()
    open(os.path.join(ready, str(os.getpid())), "w").close()
    while len(os.listdir(ready)) < count:
        await task.deferLater(reactor, 0.005, lambda: None)
    for name in ("kb_procs0", "kb_procs1"):
        print((await index.create_collection(CollectionSpec(name))).spec.name, flush=True)
    await index.stopService()

task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
"""


class ServerFaultTests(TestCase):
    """A Milvus server that goes away and comes back."""

    def setUp(self) -> None:
        require_milvus()
        self.server = MilvusLiteServer(self.mktemp()).start()
        self.addCleanup(self.server.stop)
        self.index = MilvusIndex(self.server.uri, reactor, timeout=3.0)
        self.index.startService()
        self.addCleanup(self.index.stopService)

    @inlineCallbacks
    def test_down_is_reported_at_once_and_the_index_comes_back_with_its_data(self) -> Any:
        yield self.index.create_collection(CollectionSpec("kb_team"))
        yield self.index.upsert("kb_team", [chunk(k) for k in DOCS])
        self.server.stop()
        started = time.monotonic()
        error = yield self.assertFailure(self.index.upsert("kb_team", [chunk("backup")]), StoreUnavailable)
        self.assertLess(time.monotonic() - started, 3.5)
        self.assertIn("milvus is unavailable (temporary)", str(error))
        self.assertEqual(self.index.status().state, DOWN)
        status = yield self.index.check()
        self.assertEqual(status.state, DOWN)
        self.assertIn("127.0.0.1", status.detail or "")
        self.server.start()
        status = yield self.index.check()
        self.assertEqual(status.state, UP)
        # The server restarted with its collections released; the index loads them again.
        hits = yield self.index.search(["kb_team"], SearchQuery("acme", "mysqldump"))
        self.assertEqual([h.chunk_id for h in hits], ["acme-backup"])

    @inlineCallbacks
    def test_an_index_started_while_milvus_is_down_connects_once_it_is_up(self) -> Any:
        yield self.index.stopService()
        self.server.stop()
        self.index = MilvusIndex(self.server.uri, reactor, timeout=3.0)
        self.index.startService()
        self.addCleanup(self.index.stopService)
        self.assertEqual((yield self.index.check()).state, DOWN)
        yield self.assertFailure(self.index.list_collections(), StoreUnavailable)
        self.server.start()
        self.assertEqual((yield self.index.check()).state, UP)
        self.assertEqual((yield self.index.list_collections()), [])


class HealthTests(TestCase):
    """The index as a /health check (and so a mcp_store_* series): down makes mcpd degraded, not unhealthy."""

    @inlineCallbacks
    def test_the_index_is_a_check_that_follows_the_server(self) -> Any:
        require_milvus()
        server = MilvusLiteServer(self.mktemp()).start()
        self.addCleanup(server.stop)
        index = MilvusIndex(server.uri, reactor, timeout=3.0)
        index.startService()
        self.addCleanup(index.stopService)
        checks = HealthChecks([store_check(index, "milvus")])
        [result] = yield checks.run()
        self.assertEqual((result.name, result.status, result.required), ("milvus", OK, False))
        self.assertEqual(overall((yield checks.run())), "healthy")
        server.stop()
        [result] = yield checks.run()
        self.assertEqual(result.status, CHECK_DOWN)
        self.assertIn("unavailable", result.detail or "")
        self.assertEqual(overall(checks.last), "degraded")


class WiringTests(TestCase):
    """The settings become the stores."""

    def test_the_default_index_is_milvus_lite_in_the_data_directory(self) -> None:
        settings = resolve({}, {"DATA_DIR": "/srv/mcpd"}, {})
        index, embedder = vector_stores(settings, reactor)
        assert isinstance(index, MilvusIndex)
        self.assertEqual(index.uri, "/srv/mcpd/milvus.db")
        self.assertIsNone(embedder)

    def test_a_server_and_an_embedding_service_come_from_the_settings(self) -> None:
        environ = {
            "MILVUS_URI": "http://milvus:19530",
            "MILVUS_TOKEN": "root:Milvus",
            "MILVUS_TIMEOUT": "4",
            "EMBEDDING_URL": "http://gpu:11434/api/embed",
            "EMBEDDING_MODEL": "bge-m3",
            "EMBEDDING_BATCH": "8",
            "EMBEDDING_RETRIES": "0",
            "EMBEDDING_QUERY_PREFIX": "query: ",
        }
        index, embedder = vector_stores(resolve({}, environ, {}), reactor)
        assert isinstance(index, MilvusIndex)
        self.assertEqual((index.uri, index.token, index.timeout), ("http://milvus:19530", "root:Milvus", 4.0))
        assert isinstance(embedder, OllamaEmbedder)
        self.assertEqual((embedder.model_name, embedder.batch, embedder.retries), ("bge-m3", 8, 0))
        self.assertEqual(embedder.query_prefix, "query: ")
        environ["EMBEDDING_API"] = "openai"
        _index, embedder = vector_stores(resolve({}, environ, {}), reactor)
        self.assertIsInstance(embedder, OpenAIEmbedder)


class LazyImportTests(TestCase):
    """pymilvus (with pyarrow, pandas, grpc) is loaded only by the store's threads."""

    def test_importing_the_stores_and_the_daemon_loads_no_pymilvus(self) -> None:
        code = (
            "import sys, mcpd.tap, mcpd.stores.milvus, mcpd.stores.embedders, mcpd.stores.retrieval, "
            "mcpd.packs.chunking\n"
            "heavy = sorted(m for m in ('pymilvus', 'milvus_lite', 'grpc', 'pandas', 'pyarrow', 'numpy', 'jieba') "
            "if m in sys.modules)\n"
            "print(','.join(heavy))"
        )
        output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        self.assertEqual(output.stdout.strip(), "")
