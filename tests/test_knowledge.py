"""Tests for mcpd.stores.knowledge and mcpd.stores.reindex on a real SQLite database and an
embedded Milvus Lite index: records the index refuses never hold back the rest of the outbox."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy.engine import URL
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from mcpd.packs.chunking import chunk_markdown
from mcpd.stores.knowledge import INDEXED, PENDING, KnowledgeStore
from mcpd.stores.milvus import MilvusIndex
from mcpd.stores.reindex import Reindexer
from mcpd.stores.retrieval import Retriever
from mcpd.stores.sql.config import DatabaseConfig
from mcpd.stores.sql.database import SQLDatabase
from mcpd.stores.sql.knowledge import MAX_ATTEMPTS, SQLKnowledge
from mcpd.stores.sql.service import SQLStoreService
from tests.milvus_service import require_milvus


def document(text: str, **metadata: Any) -> dict[str, Any]:
    return {"text": text, "title": None, "source": None, "metadata": metadata, "chunks": chunk_markdown(text)}


class OutboxTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        require_milvus()
        directory = self.mktemp()
        os.makedirs(directory)
        url = URL.create("sqlite", database=os.path.join(directory, "mcpd.sqlite3"))
        database = SQLDatabase(DatabaseConfig(url=url), reactor)
        sql = SQLStoreService(database, reactor)
        sql.startService()
        self.addCleanup(sql.stopService)
        index = MilvusIndex(os.path.join(directory, "milvus.db"), reactor)
        index.startService()
        self.addCleanup(index.stopService)
        self.store = KnowledgeStore(SQLKnowledge(database), Retriever(index), "milvus.db", reactor)
        self.reindexer = Reindexer(self.store, reactor)
        self.reindexer.running = True  # passes are driven by the test (kicks are cancelled at the end)
        self.addCleanup(self.reindexer.stopService)

    def search(self, query: str) -> Any:
        return self.store.search("acme", ["docs"], query, None, {}, 10, 0)

    @inlineCallbacks
    def test_a_record_the_index_refuses_is_given_up_without_blocking_the_others(self) -> Any:
        yield self.store.create_collection("acme", "docs", None, "standard", "alice")
        # Both refused by the index (an integer beyond 64 bits made pymilvus raise TypeError).
        for poison in (document("huge number", n=10**20), document("huge metadata", blob="x" * 70_000)):
            added = yield self.store.add_document("acme", "docs", poison, "alice")
            self.assertEqual(added["indexing"], PENDING)
        self.store.index_down = True  # an outage: these writes wait in the outbox with the refused ones
        for word in ("apple", "banana"):
            added = yield self.store.add_document("acme", "docs", document(f"{word} words"), "alice")
            self.assertEqual(added["indexing"], PENDING)
        yield self.reindexer.drain()
        self.assertFalse(self.store.index_down)
        found = yield self.search("apple banana")
        self.assertEqual(sorted(hit["text"] for hit in found["results"]), ["apple words", "banana words"])
        self.assertEqual(self.store.pending, 2)  # the refused ones, until they are given up
        for _ in range(MAX_ATTEMPTS):
            yield self.reindexer.drain()
        self.assertEqual(self.store.pending, 0)
        self.assertEqual((yield self.store.sql.pending_count()), 0)
        given_up = self.store.metrics.errors.labels("index", "given_up")._value.get()
        self.assertEqual(given_up, 2)
        added = yield self.store.add_document("acme", "docs", document("cherry words"), "alice")
        self.assertEqual(added["indexing"], INDEXED)

    @inlineCallbacks
    def test_changes_of_one_record_made_while_the_index_was_down_index_each_chunk_once(self) -> Any:
        yield self.store.create_collection("acme", "docs", None, "standard", "alice")
        self.store.index_down = True
        added = yield self.store.add_document("acme", "docs", document("apple words"), "alice")
        did = added["document"]["id"]
        yield self.store.update_document("acme", "docs", did, {"title": "Apples"})
        yield self.store.update_document("acme", "docs", did, {"metadata": {"team": "ops"}})
        self.assertEqual((yield self.store.sql.pending_count()), 3)
        yield self.reindexer.drain()
        self.assertEqual(self.store.pending, 0)
        self.assertEqual(self.store.metrics.errors.labels("index", "refused")._value.get(), 0)  # one batch
        found = yield self.store.search("acme", ["docs"], "apple", None, {"team": "ops"}, 10, 0)
        self.assertEqual([(hit["document_id"], hit["title"]) for hit in found["results"]], [(did, "Apples")])
