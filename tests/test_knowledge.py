"""Tests for mcpd.stores.knowledge and mcpd.stores.reindex on real databases and a real index
(SQLite with Milvus Lite embedded; MariaDB with ``milvus-lite server``): records the index
refuses never hold back the rest of the outbox; changes, deletes and drops that race the index
work of older ones still end with the index holding what SQL holds; a rebuild under way is
reported, holds a lease on its collection that expires when it dies and that a second rebuild
cannot take, and skips a collection dropped before its turn; a document's metadata is bounded
the same on both databases; undoing r0006 keeps every record."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from alembic import command
from sqlalchemy import func, inspect, select, update
from sqlalchemy.engine import URL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, fail, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mcpd.interfaces import Conflict, SearchQuery, StoreError, StoreUnavailable
from mcpd.packs.chunking import chunk_markdown
from mcpd.stores import reindex
from mcpd.stores.knowledge import INDEX_OK, INDEXED, PENDING, KnowledgeStore
from mcpd.stores.milvus import MilvusIndex
from mcpd.stores.reindex import Reindexer, rebuild
from mcpd.stores.retrieval import Retriever
from mcpd.stores.sql import knowledge as sql_knowledge
from mcpd.stores.sql import migrate
from mcpd.stores.sql.config import DatabaseConfig, database_url
from mcpd.stores.sql.database import SQLDatabase, build_engine
from mcpd.stores.sql.knowledge import (
    MARKER_LEASE,
    MAX_ATTEMPTS,
    MAX_METADATA_BYTES,
    MEMORY_COLLECTION,
    REBUILD,
    SQLKnowledge,
    index_collection,
)
from mcpd.stores.sql.schema import index_outbox, kb_chunks, kb_collections, kb_documents, memories, memory_tags
from mcpd.stores.sql.service import SQLStoreService
from mcpd.stores.sql.tasks import utcnow
from tests.daemon import MCPD, daemon_env
from tests.milvus_service import require_milvus, shared_server, unique_prefix
from tests.services import PASSWORD, shared_mariadb


def document(text: str, **metadata: Any) -> dict[str, Any]:
    return {"text": text, "title": None, "source": None, "metadata": metadata, "chunks": chunk_markdown(text)}


class KnowledgeContract:
    """The store on one database and one index; subclasses say which."""

    store: KnowledgeStore
    reindexer: Reindexer
    addCleanup: Any
    mktemp: Any
    assertEqual: Any
    assertIn: Any
    assertIsNone: Any
    assertNotIn: Any
    assertFalse: Any
    assertRaises: Any
    failureResultOf: Any

    def where(self, directory: str) -> tuple[DatabaseConfig, MilvusIndex]:
        raise NotImplementedError

    def setUp(self) -> None:
        require_milvus()
        directory = self.mktemp()
        os.makedirs(directory)
        config, index = self.where(directory)
        database = SQLDatabase(config, reactor)
        sql = SQLStoreService(database, reactor)
        sql.startService()
        self.addCleanup(sql.stopService)
        index.startService()
        self.addCleanup(index.stopService)
        self.store = KnowledgeStore(SQLKnowledge(database), Retriever(index), index.uri, reactor)
        self.reindexer = Reindexer(self.store, reactor)
        self.reindexer.running = True  # passes are driven by the test (kicks are cancelled at the end)
        self.addCleanup(self.reindexer.stopService)

    def search(self, query: str) -> Any:
        return self.store.search("acme", ["docs"], query, None, {}, 10)

    @inlineCallbacks
    def _race(self, during: Any) -> Any:
        """A document indexed as "apple", changed to "banana" while the index was down; the
        re-indexer reads the banana chunks, then ``during(document_id)`` runs before it writes
        them; then it drains the outbox. Fires with the document's id."""
        yield self.store.create_collection("acme", "docs", None, "standard", "alice")
        added = yield self.store.add_document("acme", "docs", document("apple words"), "alice")
        self.assertEqual(added["indexing"], INDEXED)
        did = added["document"]["id"]
        self.store.index_down = True
        yield self.store.update_document(
            "acme", "docs", did, {"text": "banana words", "chunks": chunk_markdown("banana words")}
        )
        self.store.index_down = False
        read = self.store.sql.targets
        raced: list[bool] = []

        def targets(items: Any) -> Deferred[Any]:
            loaded = read(items)
            if not raced:
                raced.append(True)
                loaded.addCallback(lambda found: Deferred.fromCoroutine(during(did)).addCallback(lambda _: found))
            return loaded

        self.store.sql.targets = targets  # type: ignore[method-assign]
        for _ in range(4):
            yield self.reindexer.drain()
        self.assertEqual(raced, [True])
        self.assertEqual((yield self.store.sql.pending_count()), 0)
        return did

    def in_index(self, name: str, text: str) -> Deferred[list[str]]:
        """The ids of the tenant's chunks the index itself finds (no check against SQL)."""
        query = SearchQuery(tenant="acme", text=text, limit=10)
        return self.store.retriever.index.search([name], query).addCallback(lambda hits: [h.chunk_id for h in hits])

    @inlineCallbacks
    def test_a_change_made_while_older_chunks_are_being_indexed_ends_up_indexed(self) -> Any:
        async def change(did: str) -> None:
            changed = await self.store.update_document(
                "acme", "docs", did, {"text": "cherry words", "chunks": chunk_markdown("cherry words")}
            )
            self.assertEqual(changed["indexing"], INDEXED)

        did = yield self._race(change)
        found = yield self.search("cherry")
        self.assertEqual([(hit["document_id"], hit["text"]) for hit in found["results"]], [(did, "cherry words")])
        self.assertEqual(found["index"], INDEX_OK)
        collection = yield self.store.sql.find_collection("acme", "docs")
        self.assertEqual((yield self.in_index(index_collection(collection["id"]), "banana apple")), [])

    @inlineCallbacks
    def test_a_document_deleted_while_its_chunks_are_being_indexed_stays_out_of_the_index(self) -> Any:
        async def remove(did: str) -> None:
            self.assertTrue(await self.store.delete_document("acme", "docs", did))

        yield self._race(remove)
        collection = yield self.store.sql.find_collection("acme", "docs")
        self.assertEqual((yield self.in_index(index_collection(collection["id"]), "banana apple")), [])
        self.assertEqual((yield self.search("banana"))["results"], [])

    @inlineCallbacks
    def test_a_collection_dropped_while_its_chunks_are_being_indexed_is_not_made_again(self) -> Any:
        collection = yield self.store.create_collection("acme", "ahead", None, "standard", "alice")
        self.assertIsNone(collection.get("notice"))
        dropped: list[str] = []

        async def drop(_did: str) -> None:
            found = await self.store.sql.find_collection("acme", "docs")
            dropped.append(index_collection(found["id"]))
            await self.store.drop_collection("acme", "docs")

        yield self._race(drop)
        self.assertIsNone((yield self.store.retriever.index.describe_collection(dropped[0])))
        self.assertNotIn(dropped[0], (yield self.store.retriever.index.list_collections()))

    @inlineCallbacks
    def test_a_memory_forgotten_while_it_is_being_indexed_stays_out_of_the_index(self) -> Any:
        kept = yield self.store.remember("acme", "", "apple memory", [], "alice")
        mid = kept["memory"]["id"]
        self.store.index_down = True
        yield self.store.update_memory("acme", [""], mid, {"text": "banana memory"})
        self.store.index_down = False
        read = self.store.sql.targets
        raced: list[bool] = []

        def targets(items: Any) -> Deferred[Any]:
            loaded = read(items)
            if not raced:
                raced.append(True)
                loaded.addCallback(lambda found: self.store.forget("acme", [""], mid).addCallback(lambda _: found))
            return loaded

        self.store.sql.targets = targets  # type: ignore[method-assign]
        for _ in range(4):
            yield self.reindexer.drain()
        self.assertEqual(raced, [True])
        self.assertEqual((yield self.in_index(MEMORY_COLLECTION, "banana apple memory")), [])

    @inlineCallbacks
    def test_searches_use_the_old_index_while_a_new_one_is_built_and_changes_meanwhile_reach_it(self) -> Any:
        yield self.store.create_collection("acme", "docs", None, "standard", "alice")
        ids = {}
        for word in ("apple", "banana", "cherry"):
            added = yield self.store.add_document("acme", "docs", document(f"{word} fruit"), "alice")
            ids[word] = added["document"]["id"]
        fill = self.store.retriever.index_chunks
        during: list[Any] = []

        async def searched_first(name: str, chunks: Any, analyzer: str = "standard") -> int:
            if "__b" in name and not during:  # the new collection is about to be filled
                during.append(await self.search("fruit"))
                # Changes made meanwhile reach the old collection; the new one must get them too.
                await self.store.add_document("acme", "docs", document("date fruit"), "alice")
                await self.store.delete_document("acme", "docs", ids["apple"])
                await self.store.update_document("acme", "docs", ids["banana"], {"metadata": {"ripe": True}})
            return await fill(name, chunks, analyzer)

        self.store.retriever.index_chunks = searched_first  # type: ignore[assignment,method-assign]
        rebuilt = yield Deferred.fromCoroutine(rebuild(self.store, lambda _tenant, name: name == "docs", grace=0.1))
        self.assertEqual([count for _, name, _, count in rebuilt], [4])  # the date came in a later page
        # During the rebuild: the old index, whole.
        self.assertEqual(len(during[0]["results"]), 3)
        self.assertEqual(during[0]["index"], INDEX_OK)
        after = yield self.search("fruit")
        self.assertEqual(
            sorted(hit["text"] for hit in after["results"]), ["banana fruit", "cherry fruit", "date fruit"]
        )
        self.assertEqual(after["index"], INDEX_OK)
        ripe = yield self.store.search("acme", ["docs"], "fruit", None, {"ripe": True}, 10)
        self.assertEqual([hit["text"] for hit in ripe["results"]], ["banana fruit"])
        self.assertEqual((yield self.store.sql.pending_count()), 0)
        collection = yield self.store.sql.find_collection("acme", "docs")
        name = index_collection(collection["id"])
        self.assertEqual((yield self.in_index(name, "apple")), [])
        listed = yield self.store.retriever.index.list_collections()
        self.assertIn(name, listed)
        self.assertFalse([n for n in listed if "__b" in n])
        # Rebuilt again (the name is an alias now), then dropped with the kb collection.
        yield Deferred.fromCoroutine(rebuild(self.store, lambda _tenant, name: name == "docs", grace=0))
        self.assertEqual(len((yield self.search("fruit"))["results"]), 3)
        yield self.store.drop_collection("acme", "docs")
        self.assertEqual((yield self.store.retriever.index.list_collections()), [])

    @inlineCallbacks
    def test_a_metadata_filter_tells_booleans_from_numbers(self) -> Any:
        yield self.store.create_collection("acme", "docs", None, "standard", "alice")
        truth = yield self.store.add_document("acme", "docs", document("kiwi notes", flag=True, z=False), "alice")
        ones = yield self.store.add_document("acme", "docs", document("kiwi notes", flag=1, z=0), "alice")
        # Python's dicts, like Milvus, take True for 1: the cases are pairs.
        cases = [("flag", 1, ones), ("flag", True, truth), ("flag", 1.0, ones)]
        cases += [("z", 0, ones), ("z", False, truth), ("z", 0.0, ones)]

        @inlineCallbacks
        def check(index: str) -> Any:
            for key, value, expected in cases:
                found = yield self.store.search("acme", ["docs"], "kiwi", None, {key: value}, 10)
                self.assertEqual(found["index"], index)
                ids = [hit["document_id"] for hit in found["results"]]
                self.assertEqual(ids, [expected["document"]["id"]], (key, value))

        yield check(INDEX_OK)
        yield self.store.retriever.index.stopService()  # the word scan of SQL answers
        yield check("degraded")

    @inlineCallbacks
    def test_metadata_up_to_64_kib_is_kept_and_more_is_refused_clearly(self) -> Any:
        yield self.store.create_collection("acme", "docs", None, "standard", "alice")
        # 64 KiB as JSON exactly, quotes and non-ASCII counted as stored (over MySQL's TEXT).
        filler = '"é' * 8000
        blob = filler + "x" * (MAX_METADATA_BYTES - len(json.dumps({"blob": filler}, ensure_ascii=False).encode()))
        metadata = {"blob": blob}
        self.assertEqual(len(json.dumps(metadata, ensure_ascii=False).encode()), MAX_METADATA_BYTES)
        added = yield self.store.add_document("acme", "docs", document("big metadata", **metadata), "alice")
        did = added["document"]["id"]
        self.assertEqual((yield self.store.get_document("acme", "docs", did))["metadata"], metadata)
        over = {"blob": blob + "x"}
        refused = yield self.assertFailure(
            self.store.add_document("acme", "docs", document("more", **over), "alice"), StoreError
        )
        self.assertIn(f"over {MAX_METADATA_BYTES}", str(refused))
        refused = yield self.assertFailure(
            self.store.update_document("acme", "docs", did, {"metadata": over}), StoreError
        )
        self.assertIn(f"over {MAX_METADATA_BYTES}", str(refused))
        self.assertEqual((yield self.store.get_document("acme", "docs", did))["metadata"], metadata)

    @inlineCallbacks
    def test_a_record_the_index_refuses_is_given_up_without_blocking_the_others(self) -> Any:
        yield self.store.create_collection("acme", "docs", None, "standard", "alice")
        # Both refused by the index (an integer beyond 64 bits made pymilvus raise TypeError; the
        # index keeps flat metadata only). The kb pack refuses both: the store does not.
        for poison in (document("huge number", n=10**20), document("nested metadata", nested={"a": 1})):
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
        found = yield self.store.search("acme", ["docs"], "apple", None, {"team": "ops"}, 10)
        self.assertEqual([(hit["document_id"], hit["title"]) for hit in found["results"]], [(did, "Apples")])


class SQLiteEmbeddedTests(KnowledgeContract, TestCase):
    """SQLite, and Milvus Lite in the process."""

    timeout = 120

    def where(self, directory: str) -> tuple[DatabaseConfig, MilvusIndex]:
        url = URL.create("sqlite", database=os.path.join(directory, "mcpd.sqlite3"))
        return DatabaseConfig(url=url), MilvusIndex(os.path.join(directory, "milvus.db"), reactor)


class MariaDBServerTests(KnowledgeContract, TestCase):
    """MariaDB, and ``milvus-lite server`` through its URI (a Milvus server's client path)."""

    timeout = 180

    def where(self, directory: str) -> tuple[DatabaseConfig, MilvusIndex]:
        server = shared_mariadb()
        url = database_url(server.url(server.new_database()), directory, PASSWORD)
        return DatabaseConfig(url=url), MilvusIndex(shared_server().uri, reactor, prefix=unique_prefix())


# -- rebuild leases, and the r0006 downgrade --------------------------------------------------------


class RebuildLeaseContract:
    """A rebuild's marker is a lease: it expires when its rebuild died, it is this rebuild's
    alone, and a collection dropped before its turn is not built again."""

    store: KnowledgeStore
    reindexer: Reindexer
    assertEqual: Any
    assertIn: Any
    assertNotIn: Any
    assertFalse: Any
    assertFailure: Any
    flushLoggedErrors: Any
    patch: Any
    setUp = KnowledgeContract.setUp
    search = KnowledgeContract.search

    def outbox(self) -> Deferred[list[tuple[str, str]]]:
        """The outbox: (collection, kind) of each row."""
        query = select(index_outbox.c.collection, index_outbox.c.kind).order_by(index_outbox.c.seq)
        return self.store.sql.database.run("test", lambda c: [tuple(row) for row in c.execute(query)])

    def left_marker(self, collection: str) -> Deferred[None]:
        """The marker a ``mcpd reindex`` killed after its first step leaves behind."""
        row = index_outbox.insert().values(
            tenant="*",
            collection=collection,
            kind=REBUILD,
            target=collection,
            stale=0,
            created_at=utcnow(),
            attempts=0,
            last_error="a killed mcpd reindex",
        )
        return self.store.sql.database.run("test", lambda c: c.execute(row) and None, write=True)

    def age_markers(self) -> Deferred[None]:
        """Make every marker older than its lease (its rebuild stopped renewing it)."""
        old = utcnow() - datetime.timedelta(seconds=MARKER_LEASE + 1)
        query = update(index_outbox).where(index_outbox.c.kind == REBUILD).values(created_at=old)
        return self.store.sql.database.run("test", lambda c: c.execute(query) and None, write=True)

    @inlineCallbacks
    def test_a_marker_left_by_a_rebuild_that_died_expires_and_its_work_gets_done(self) -> Any:
        yield self.store.create_collection("acme", "docs", None, "standard", "alice")
        name = index_collection((yield self.store.sql.find_collection("acme", "docs"))["id"])
        yield self.left_marker(name)
        self.store.index_down = True
        added = yield self.store.add_document("acme", "docs", document("kiwi words"), "alice")
        self.assertEqual(added["indexing"], PENDING)
        yield self.reindexer.drain()  # the lease is live: the rebuild may still be running
        self.assertEqual((yield self.store.sql.pending_count()), 1)
        self.assertEqual((yield self.search("kiwi"))["results"], [])
        yield self.age_markers()
        yield self.reindexer.drain()
        self.assertEqual((yield self.store.sql.pending_count()), 0)
        self.assertEqual((yield self.outbox()), [])
        found = yield self.search("kiwi")
        self.assertEqual([hit["text"] for hit in found["results"]], ["kiwi words"])
        self.assertEqual(found["index"], INDEX_OK)
        added = yield self.store.add_document("acme", "docs", document("lime words"), "alice")
        self.assertEqual(added["indexing"], INDEXED)
        self.assertEqual((yield self.outbox()), [])

    @inlineCallbacks
    def test_an_outage_while_catching_up_leaves_no_marker_behind(self) -> Any:
        for collection in ("docs", "more"):
            yield self.store.create_collection("acme", collection, None, "standard", "alice")
            yield self.store.add_document("acme", collection, document(f"apple {collection}"), "alice")
        fill = self.store.retriever.index_chunks
        apply = self.store.apply

        async def changed_meanwhile(name: str, chunks: Any, analyzer: str = "standard") -> int:
            if "__b" in name and len(chunks) == 1 and "apple docs" in chunks[0].text:
                await self.store.add_document("acme", "docs", document("date docs"), "alice")
            return await fill(name, chunks, analyzer)

        async def down(_targets: Any) -> Any:
            raise StoreUnavailable("index", "connection refused")

        swap = self.store.retriever.index.swap_collection
        swapped: list[str] = []

        def swap_then_outage(name: str, built: str) -> Deferred[None]:
            swapped.append(name)
            if len(swapped) == 2:  # both built: the index goes down before the catch-up
                self.store.apply = lambda targets: Deferred.fromCoroutine(down(targets))  # type: ignore[method-assign]
            return swap(name, built)

        self.store.retriever.index_chunks = changed_meanwhile  # type: ignore[assignment,method-assign]
        self.store.retriever.index.swap_collection = swap_then_outage  # type: ignore[method-assign]
        yield self.assertFailure(
            Deferred.fromCoroutine(rebuild(self.store, lambda _tenant, name: name in ("docs", "more"), grace=0)),
            StoreUnavailable,
        )
        self.assertEqual(len(swapped), 2)
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)  # docs' (nothing was kept of more)
        self.assertNotIn(REBUILD, [kind for _, kind in (yield self.outbox())])  # neither collection's
        self.store.apply = apply  # type: ignore[method-assign]
        yield self.reindexer.drain()  # the index is back: the kept change is ordinary work
        self.assertEqual((yield self.outbox()), [])
        found = yield self.search("docs")
        self.assertEqual(sorted(hit["text"] for hit in found["results"]), ["apple docs", "date docs"])
        self.assertEqual(found["index"], INDEX_OK)

    @inlineCallbacks
    def test_a_failed_build_gives_its_marker_back_and_the_others_catch_up(self) -> Any:
        """The second collection's build fails once swapped (its outbox could not be cleared): its
        marker is given back, and the first, rebuilt, still catches up on the change kept while it
        was built and is unmarked; the failure is the one raised. (The catch-up paired each rebuilt
        collection with a marker: the failed one's, left over, made it raise ValueError instead,
        before any catch-up, leaving both markers to hold their work until the lease expired.)"""
        for collection in ("docs", "more"):
            yield self.store.create_collection("acme", collection, None, "standard", "alice")
            yield self.store.add_document("acme", collection, document(f"apple {collection}"), "alice")
        more = index_collection((yield self.store.sql.find_collection("acme", "more"))["id"])
        fill = self.store.retriever.index_chunks
        clear = self.store.sql.clear_work

        async def changed_meanwhile(name: str, chunks: Any, analyzer: str = "standard") -> int:
            if "__b" in name and len(chunks) == 1 and "apple docs" in chunks[0].text:
                await self.store.add_document("acme", "docs", document("date docs"), "alice")
            return await fill(name, chunks, analyzer)

        def clear_fails_for_more(collection: str, up_to: int) -> Deferred[None]:
            if collection == more:
                return fail(StoreUnavailable("database", "the database is locked by another writer"))
            return clear(collection, up_to)

        self.store.retriever.index_chunks = changed_meanwhile  # type: ignore[assignment,method-assign]
        self.store.sql.clear_work = clear_fails_for_more  # type: ignore[method-assign]
        yield self.assertFailure(
            Deferred.fromCoroutine(rebuild(self.store, lambda _tenant, name: name in ("docs", "more"), grace=0)),
            StoreUnavailable,
        )
        self.assertNotIn(REBUILD, [kind for _, kind in (yield self.outbox())])  # neither collection's
        found = yield self.search("docs")  # docs' kept change reached its rebuilt index
        self.assertEqual(sorted(hit["text"] for hit in found["results"]), ["apple docs", "date docs"])
        self.store.sql.clear_work = clear  # type: ignore[method-assign]
        yield self.reindexer.drain()
        self.assertEqual((yield self.outbox()), [])

    @inlineCallbacks
    def test_a_second_rebuild_of_a_collection_under_way_is_refused_and_loses_nothing(self) -> Any:
        self.patch(reindex, "REBUILD_PAGE", 1)
        yield self.store.create_collection("acme", "docs", None, "standard", "alice")
        for word in ("apple", "banana", "cherry"):
            yield self.store.add_document("acme", "docs", document(f"{word} fruit"), "alice")
        name = index_collection((yield self.store.sql.find_collection("acme", "docs"))["id"])
        fill = self.store.retriever.index_chunks
        pages: list[str] = []
        refused: list[Exception] = []

        async def second_rebuild(built: str, chunks: Any, analyzer: str = "standard") -> int:
            if "__b" in built:
                pages.append(built)
                if len(pages) == 2:  # the first rebuild has filled a page: a second one starts
                    try:
                        await rebuild(self.store, lambda _tenant, name: name == "docs", grace=0)
                    except Conflict as e:
                        refused.append(e)
            return await fill(built, chunks, analyzer)

        self.store.retriever.index_chunks = second_rebuild  # type: ignore[assignment,method-assign]
        rebuilt = yield Deferred.fromCoroutine(rebuild(self.store, lambda _tenant, name: name == "docs", grace=0))
        self.assertEqual([count for *_, count in rebuilt], [3])
        self.assertEqual(len(refused), 1)
        self.assertIn(f"a rebuild of {name} is under way since ", str(refused[0]))
        self.assertIn(f"pid {os.getpid()}", str(refused[0]))
        self.assertEqual(len(set(pages)), 1)  # one build, never dropped and made again
        found = yield self.search("fruit")
        self.assertEqual(
            sorted(hit["text"] for hit in found["results"]), ["apple fruit", "banana fruit", "cherry fruit"]
        )
        self.assertEqual(found["index"], INDEX_OK)
        self.assertEqual((yield self.outbox()), [])
        self.assertFalse([n for n in (yield self.store.retriever.index.list_collections()) if "__b" in n])

    @inlineCallbacks
    def test_a_rebuild_longer_than_its_lease_renews_it_now_and_then_and_holds_it(self) -> Any:
        """Its leases are renewed every `RENEW_EVERY` seconds, not on every page (a write each,
        before), and still often enough: a second rebuild is refused all along, past the lease."""
        lease, every, page = 2.0, 0.4, 0.08  # a step may take 1.6 s (a loaded machine) and hold it
        self.patch(sql_knowledge, "MARKER_LEASE", lease)
        self.patch(reindex, "RENEW_EVERY", every)
        self.patch(reindex, "REBUILD_PAGE", 1)
        yield self.store.create_collection("acme", "docs", None, "standard", "alice")
        pages = int(1.5 * lease / page) + 1
        for number in range(pages):
            yield self.store.add_document("acme", "docs", document(f"word{number} fruit"), "alice")
        name = index_collection((yield self.store.sql.find_collection("acme", "docs"))["id"])
        fill = self.store.retriever.index_chunks
        renew = self.store.sql.renew
        renewals: list[float] = []
        refused: list[Exception] = []
        started = reactor.seconds()

        def counted(markers: Any) -> Deferred[set[int]]:
            renewals.append(reactor.seconds())
            return renew(markers)

        async def slow_pages(built: str, chunks: Any, analyzer: str = "standard") -> int:
            await deferLater(reactor, page, lambda: None)
            if "__b" in built and reactor.seconds() - started > lease and not refused:
                try:  # the first rebuild has run longer than its lease: a second one starts
                    await rebuild(self.store, lambda _tenant, name: name == "docs", grace=0)
                except Conflict as e:
                    refused.append(e)
            return await fill(built, chunks, analyzer)

        self.store.retriever.index_chunks = slow_pages  # type: ignore[assignment,method-assign]
        self.store.sql.renew = counted  # type: ignore[method-assign]
        rebuilt = yield Deferred.fromCoroutine(rebuild(self.store, lambda _tenant, name: name == "docs", grace=0))
        took = reactor.seconds() - started
        self.assertEqual([count for *_, count in rebuilt], [pages])
        self.assertEqual(len(refused), 1)
        self.assertIn(f"a rebuild of {name} is under way since ", str(refused[0]))
        self.assertGreater(took, lease)
        self.assertLessEqual(len(renewals), took / every + 1)
        self.assertLess(len(renewals), pages / 2)
        self.assertGreaterEqual(len(renewals), int(lease / every))
        self.assertTrue(all(b - a > every - 0.01 for a, b in zip(renewals, renewals[1:], strict=False)), renewals)
        self.assertEqual((yield self.outbox()), [])

    @inlineCallbacks
    def test_two_rebuilds_marking_a_collection_at_once_one_wins(self) -> Any:
        yield self.store.create_collection("acme", "docs", None, "standard", "alice")
        name = index_collection((yield self.store.sql.find_collection("acme", "docs"))["id"])
        for _ in range(5):
            results = yield DeferredList(
                [self.store.sql.rebuilding(name, by) for by in ("one", "two", "three")], consumeErrors=True
            )
            won = [value for ok, value in results if ok]
            lost = [value for ok, value in results if not ok]
            self.assertEqual(len(won), 1, results)
            self.assertEqual([failure.type for failure in lost], [Conflict, Conflict])
            yield self.store.sql.unmark(won[0])
        self.assertEqual((yield self.outbox()), [])

    @inlineCallbacks
    def test_a_rebuild_takes_over_an_expired_lease_and_drops_what_it_left(self) -> Any:
        yield self.store.create_collection("acme", "docs", None, "standard", "alice")
        yield self.store.add_document("acme", "docs", document("apple fruit"), "alice")
        name = index_collection((yield self.store.sql.find_collection("acme", "docs"))["id"])
        yield self.left_marker(name)
        left = f"{name}__b1"
        yield self.store.retriever.ensure_collection(left, "standard")  # what it had built
        yield self.assertFailure(
            Deferred.fromCoroutine(rebuild(self.store, lambda _tenant, name: name == "docs", grace=0)), Conflict
        )
        self.assertIn(left, (yield self.store.retriever.index.list_collections()))  # not touched while live
        yield self.age_markers()
        rebuilt = yield Deferred.fromCoroutine(rebuild(self.store, lambda _tenant, name: name == "docs", grace=0))
        self.assertEqual([count for *_, count in rebuilt], [1])
        self.assertNotIn(left, (yield self.store.retriever.index.list_collections()))
        self.assertEqual((yield self.outbox()), [])
        self.assertEqual([hit["text"] for hit in (yield self.search("apple"))["results"]], ["apple fruit"])

    @inlineCallbacks
    def test_a_collection_dropped_before_its_turn_is_not_built_again(self) -> Any:
        yield self.store.create_collection("acme", "docs", None, "standard", "alice")
        yield self.store.add_document("acme", "docs", document("apple fruit"), "alice")
        listed = self.store.sql.index_collections

        def dropped_after_listing() -> Deferred[Any]:
            found = listed()
            found.addCallback(lambda names: self.store.drop_collection("acme", "docs").addCallback(lambda _: names))
            return found

        self.store.sql.index_collections = dropped_after_listing  # type: ignore[method-assign]
        rebuilt = yield Deferred.fromCoroutine(rebuild(self.store, lambda _tenant, name: name == "docs", grace=0))
        self.assertEqual(rebuilt, [])
        self.assertEqual((yield self.store.retriever.index.list_collections()), [])
        self.assertEqual((yield self.outbox()), [])


class SQLiteRebuildLeaseTests(RebuildLeaseContract, TestCase):
    timeout = 120
    where = SQLiteEmbeddedTests.where


class MariaDBRebuildLeaseTests(RebuildLeaseContract, TestCase):
    timeout = 180
    where = MariaDBServerTests.where


class KBVersionsDowngradeTests(SynchronousTestCase):
    """Undoing r0006 keeps every record (SQLite: no table copy whose drop cascades)."""

    def test_downgrade_keeps_chunks_and_memory_tags(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        url = URL.create("sqlite", database=os.path.join(directory, "mcpd.sqlite3"))
        engine = build_engine(DatabaseConfig(url=url))
        self.addCleanup(engine.dispose)
        with engine.connect() as connection:
            command.upgrade(migrate._config(connection), "head")
            connection.commit()
        now = utcnow()
        with engine.begin() as connection:
            connection.execute(
                kb_collections.insert().values(
                    id="C1", tenant="acme", name="docs", analyzer="standard", created_at=now, created_by="a"
                )
            )
            connection.execute(
                kb_documents.insert().values(
                    id="D1",
                    tenant="acme",
                    collection_id="C1",
                    text="t",
                    metadata="{}",
                    chunks=1,
                    created_at=now,
                    updated_at=now,
                    created_by="a",
                )
            )
            connection.execute(
                kb_chunks.insert().values(
                    id="K1",
                    tenant="acme",
                    document_id="D1",
                    collection_id="C1",
                    position=0,
                    text="t",
                    headings="[]",
                    start=0,
                    end=1,
                )
            )
            connection.execute(
                memories.insert().values(
                    id="M1",
                    tenant="acme",
                    owner="",
                    text="m",
                    tags='["x"]',
                    created_at=now,
                    updated_at=now,
                    created_by="a",
                )
            )
            connection.execute(memory_tags.insert().values(memory_id="M1", tenant="acme", tag="x"))
        with engine.connect() as connection:
            self.assertEqual(connection.exec_driver_sql("PRAGMA foreign_keys").scalar(), 1)  # as mcpd runs
            command.downgrade(migrate._config(connection), "0005")
            connection.commit()
        with engine.connect() as connection:
            counts = [
                connection.execute(select(func.count()).select_from(table)).scalar()
                for table in (kb_documents, kb_chunks, memories, memory_tags)
            ]
            columns = [c["name"] for c in inspect(connection).get_columns("kb_documents")]
        self.assertEqual(counts, [1, 1, 1, 1])
        self.assertNotIn("version", columns)


class ReindexCommandLeaseTests(TestCase):
    """``mcpd reindex`` of a collection another rebuild holds is refused, saying whose; once
    that lease has expired (its rebuild died), it rebuilds."""

    timeout = 180

    def test_a_second_reindex_is_refused_until_the_first_ones_lease_expires(self) -> Deferred[None]:
        require_milvus()
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir()
        env = daemon_env(workdir, {"DATA_DIR": str(workdir / "data")})

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([MCPD, *args], env=env, cwd=workdir, capture_output=True, text=True, timeout=120)

        def scenario() -> None:
            migrated = run("migrate")
            self.assertEqual(migrated.returncode, 0, migrated.stderr)
            url = URL.create("sqlite", database=str(workdir / "data" / "mcpd.sqlite3"))
            engine = build_engine(DatabaseConfig(url=url))
            self.addCleanup(engine.dispose)
            now = utcnow()
            with engine.begin() as connection:
                connection.execute(
                    kb_collections.insert().values(
                        id="C1", tenant="acme", name="docs", analyzer="standard", created_at=now, created_by="a"
                    )
                )
                connection.execute(
                    index_outbox.insert().values(
                        tenant="*",
                        collection="kb_C1",
                        kind=REBUILD,
                        target="kb_C1",
                        stale=0,
                        created_at=now,
                        attempts=0,
                        last_error="2026-11-30T04:00:00Z (by build-host pid 4242)",
                    )
                )
            refused = run("reindex", "docs")
            self.assertEqual(refused.returncode, 1, refused.stderr)
            self.assertIn(
                "mcpd reindex: a rebuild of kb_C1 is under way since 2026-11-30T04:00:00Z (by build-host pid 4242)",
                refused.stderr,
            )
            old = utcnow() - datetime.timedelta(seconds=MARKER_LEASE + 1)
            with engine.begin() as connection:
                connection.execute(update(index_outbox).values(created_at=old))
            done = run("reindex", "docs")
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertIn("collection 'docs' of tenant 'acme': 0 chunk(s)", done.stdout)
            with engine.connect() as connection:
                self.assertEqual(connection.execute(select(func.count()).select_from(index_outbox)).scalar(), 0)

        return deferToThread(scenario)
