"""The ``kb`` pack through the official MCP SDK client over Streamable HTTP against a real
daemon: its index on Milvus Lite embedded and on ``milvus-lite server`` (--milvus-uri), with and
without the fake embedding service. Every tool, the ``kb://`` resource and its completion, two
tenants that never meet; the Milvus server stopped during a burst of kb.add (nothing lost,
everything searchable once it is back, nothing twice); ``mcpd reindex``.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import Client
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread

from mcpd.stores.knowledge import WRITE_WAIT
from tests.clients import fetch
from tests.daemon import MCPD, MODERN, DaemonTestCase, daemon_env, run_anyio
from tests.embedding_service import TOY_MODEL, EmbeddingService
from tests.knowledge_harness import EMBEDDED, MARIADB, SERVER, KnowledgeDaemon, error_text, structured
from tests.milvus_service import MilvusLiteServer, require_milvus
from tests.test_sql_faults import metric

KB_TOOLS = {
    "kb.collections",
    "kb.create_collection",
    "kb.drop_collection",
    "kb.add",
    "kb.search",
    "kb.get",
    "kb.update",
    "kb.delete",
}
RESTORE = """# Restoring a backup

## Before you start
Stop the billing service so that nothing writes to the database while it is restored.

## Restore
Load the newest mysqldump file with the mysql client, then check the row counts of the invoices table.
"""
DEPLOY = "Deploy the web frontend with the blue green method; switch the load balancer once health checks pass."
CACHE = "Redis holds the session cache. Flush it only in the maintenance window on Sunday night."
CHINESE = "数据库备份每天晚上进行。恢复备份时先停止计费服务，然后导入最新的备份文件。"


class _Scenarios(KnowledgeDaemon):
    assertEqual: Any
    assertIn: Any
    assertNotIn: Any
    assertTrue: Any
    assertFalse: Any
    assertIsNone: Any
    assertGreater: Any

    def test_every_tool(self) -> Deferred[None]:
        daemon = self.knowledge_daemon()
        return self.with_clients(daemon, self.every_tool, "alice")

    async def every_tool(self, client: Client) -> None:
        call = client.call_tool
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        self.assertTrue(set(listed) >= KB_TOOLS, sorted(listed))
        for name in KB_TOOLS:
            tool = listed[name]
            self.assertEqual(tool.input_schema.get("additionalProperties"), False, name)
            self.assertTrue(tool.output_schema, name)
            self.assertIn("Example", tool.description or "", name)
            self.assertFalse(tool.annotations.open_world_hint, name)  # type: ignore[union-attr]
        info = structured(await call("server.info", {}))
        index = next(store for store in info["stores"] if store["name"] == "index")
        self.assertEqual(index["backend"], "milvus-lite" if self.index == EMBEDDED else "milvus")
        self.assertEqual(index["search_mode"], "hybrid" if self.embedding else "keyword")
        self.assertTrue({"kb", "memory"} <= set(info["toolsets"]))

        created = structured(await call("kb.create_collection", {"name": "runbooks", "description": "Ops"}))
        collection = created["collection"]
        self.assertEqual(
            (collection["name"], collection["analyzer"], collection["documents"]), ("runbooks", "standard", 0)
        )
        self.assertEqual(collection["embedding_model"], TOY_MODEL if self.embedding else None)
        self.assertIn("already exists", error_text(await call("kb.create_collection", {"name": "runbooks"})))

        ids = {}
        for key, text, team in (("restore", RESTORE, "ops"), ("deploy", DEPLOY, "dev"), ("cache", CACHE, "ops")):
            added = structured(
                await call(
                    "kb.add",
                    {
                        "collection": "runbooks",
                        "title": key.title(),
                        "text": text,
                        "source": f"wiki/{key}",
                        "metadata": {"team": team, "year": 2026},
                        "chunk_size": 50,
                        "chunk_overlap": 0,
                    },
                )
            )
            self.assertEqual(added["indexing"], "done")
            ids[key] = added["document"]["id"]
        self.assertGreater(
            structured(await call("kb.get", {"collection": "runbooks", "id": ids["restore"]}))["document"]["chunks"], 1
        )
        self.assertIn(
            "no collection 'nowhere'", error_text(await call("kb.add", {"collection": "nowhere", "text": "x"}))
        )
        self.assertIn(
            "chunk_overlap",
            error_text(
                await call("kb.add", {"collection": "runbooks", "text": "x", "chunk_size": 50, "chunk_overlap": 60})
            ),
        )
        with_bad_key = await call("kb.add", {"collection": "runbooks", "text": "x", "metadata": {"bad key": 1}})
        self.assertTrue(with_bad_key.is_error)

        [listed_collection] = structured(await call("kb.collections", {}))["collections"]
        self.assertEqual(listed_collection["documents"], 3)
        self.assertGreater(listed_collection["chunks"], 3)

        found = structured(await call("kb.search", {"collection": "runbooks", "query": "restore the mysqldump backup"}))
        self.assertEqual(found["results"][0]["document_id"], ids["restore"])
        self.assertEqual(found["results"][0]["title"], "Restore")
        self.assertEqual(found["results"][0]["metadata"], {"team": "ops", "year": 2026})
        self.assertEqual(found["index"], "ok")
        if self.embedding:
            self.assertEqual((found["mode"], found["notice"]), ("hybrid", None))
            semantic = structured(
                await call("kb.search", {"collection": "runbooks", "query": "backup", "mode": "semantic"})
            )
            self.assertEqual(semantic["mode"], "semantic")
        else:
            self.assertEqual(found["mode"], "keyword")
            self.assertIn("no embedding service", found["notice"])
            semantic = structured(
                await call("kb.search", {"collection": "runbooks", "query": "backup", "mode": "semantic"})
            )
            self.assertEqual(semantic["mode"], "keyword")
            self.assertIn("needs an embedding service", semantic["notice"])
        keyword = structured(
            await call("kb.search", {"collection": "runbooks", "query": "load balancer", "mode": "keyword"})
        )
        self.assertEqual(keyword["results"][0]["document_id"], ids["deploy"])
        filtered = structured(
            await call(
                "kb.search",
                {"collection": "runbooks", "query": "service frontend", "filter": {"team": "dev"}, "mode": "keyword"},
            )
        )
        self.assertEqual({r["document_id"] for r in filtered["results"]}, {ids["deploy"]})

        # Pages: every chunk once, in order of relevance.
        seen: list[str] = []
        cursor = None
        while True:
            arguments = {"collection": "runbooks", "query": "the service database", "mode": "keyword", "limit": 1}
            if cursor:
                arguments["cursor"] = cursor
            page = structured(await call("kb.search", arguments))
            seen += [r["chunk_id"] for r in page["results"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        self.assertGreater(len(seen), 1)
        self.assertEqual(len(seen), len(set(seen)))
        first = structured(await call("kb.search", {"collection": "runbooks", "query": "the", "limit": 1}))
        other = await call("kb.search", {"collection": "runbooks", "query": "cache", "cursor": first["next_cursor"]})
        self.assertIn("another listing", error_text(other))

        document = structured(await call("kb.get", {"collection": "runbooks", "id": ids["deploy"]}))["document"]
        self.assertEqual(
            (document["text"], document["source"], document["created_by"]), (DEPLOY, "wiki/deploy", "alice")
        )
        self.assertIn("no document", error_text(await call("kb.get", {"collection": "runbooks", "id": "nope"})))

        updated = structured(
            await call(
                "kb.update",
                {
                    "collection": "runbooks",
                    "id": ids["deploy"],
                    "text": "Ship the frontend with canary releases.",
                    "title": "Ship",
                },
            )
        )
        self.assertEqual((updated["document"]["title"], updated["indexing"]), ("Ship", "done"))
        gone = structured(await call("kb.search", {"collection": "runbooks", "query": "balancer", "mode": "keyword"}))
        self.assertNotIn(ids["deploy"], [r["document_id"] for r in gone["results"]])
        canary = structured(await call("kb.search", {"collection": "runbooks", "query": "canary", "mode": "keyword"}))
        self.assertEqual(canary["results"][0]["document_id"], ids["deploy"])
        self.assertIn(
            "nothing to change", error_text(await call("kb.update", {"collection": "runbooks", "id": ids["deploy"]}))
        )

        # The resource and completion.
        read = await client.read_resource(f"kb://runbooks/{ids['cache']}")
        self.assertEqual(json.loads(read.contents[0].text)["text"], CACHE)  # type: ignore[union-attr]
        templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
        self.assertIn("kb://{collection}/{id}", templates)
        reference = types.ResourceTemplateReference(type="ref/resource", uri="kb://{collection}/{id}")
        names = await client.complete(reference, {"name": "collection", "value": "run"})
        self.assertEqual(names.completion.values, ["runbooks"])
        completed = await client.complete(
            reference, {"name": "id", "value": ids["cache"][:20]}, context_arguments={"collection": "runbooks"}
        )
        self.assertIn(ids["cache"], completed.completion.values)
        try:
            await client.read_resource("kb://runbooks/nope")
        except MCPError:
            pass
        else:
            raise AssertionError("an unknown document was read")

        self.assertEqual(
            structured(await call("kb.delete", {"collection": "runbooks", "id": ids["cache"]})), {"deleted": True}
        )
        self.assertEqual(
            structured(await call("kb.delete", {"collection": "runbooks", "id": ids["cache"]})), {"deleted": False}
        )
        flushed = structured(
            await call("kb.search", {"collection": "runbooks", "query": "redis flush", "mode": "keyword"})
        )
        self.assertNotIn(ids["cache"], [r["document_id"] for r in flushed["results"]])

        # A long document is chunked off the reactor, to the size asked.
        long_text = "\n\n".join(f"Paragraph {n} of the handbook explains step {n} in some detail." for n in range(400))
        self.assertGreater(len(long_text), 20_000)
        big = structured(await call("kb.add", {"collection": "runbooks", "text": long_text, "chunk_size": 200}))
        self.assertGreater(big["document"]["chunks"], 20)
        step = structured(
            await call("kb.search", {"collection": "runbooks", "query": "Paragraph 377", "mode": "keyword"})
        )
        self.assertEqual(step["results"][0]["document_id"], big["document"]["id"])

        # Chinese with jieba, and a search across collections.
        faq = structured(await call("kb.create_collection", {"name": "faq", "analyzer": "jieba"}))["collection"]
        self.assertEqual(faq["analyzer"], "jieba")
        chinese = structured(await call("kb.add", {"collection": "faq", "title": "备份", "text": CHINESE}))["document"]
        both = structured(
            await call("kb.search", {"collection": ["runbooks", "faq"], "query": "备份 mysqldump", "mode": "keyword"})
        )
        self.assertEqual({r["collection"] for r in both["results"]}, {"runbooks", "faq"})
        self.assertIn(chinese["id"], [r["document_id"] for r in both["results"]])

        self.assertIn(
            "confirm must repeat", error_text(await call("kb.drop_collection", {"name": "faq", "confirm": "no"}))
        )
        dropped = structured(await call("kb.drop_collection", {"name": "faq", "confirm": "faq"}))
        self.assertEqual((dropped["dropped"], dropped["indexing"]), (True, "done"))
        self.assertEqual([c["name"] for c in structured(await call("kb.collections", {}))["collections"]], ["runbooks"])
        self.assertIn("no collection 'faq'", error_text(await call("kb.search", {"collection": "faq", "query": "x"})))

    def test_two_tenants_never_meet(self) -> Deferred[None]:
        daemon = self.knowledge_daemon()
        return self.with_clients(daemon, self.tenancy, "alice", "eve")

    async def tenancy(self, alice: Client, eve: Client) -> None:
        await alice.call_tool("kb.create_collection", {"name": "secret"})
        doc = structured(
            await alice.call_tool("kb.add", {"collection": "secret", "text": "The zebra password is hunter2."})
        )
        doc_id = doc["document"]["id"]
        self.assertEqual(structured(await eve.call_tool("kb.collections", {}))["collections"], [])
        for tool, arguments in (
            ("kb.search", {"collection": "secret", "query": "zebra"}),
            ("kb.get", {"collection": "secret", "id": doc_id}),
            ("kb.add", {"collection": "secret", "text": "x"}),
            ("kb.update", {"collection": "secret", "id": doc_id, "title": "mine"}),
            ("kb.delete", {"collection": "secret", "id": doc_id}),
            ("kb.drop_collection", {"name": "secret", "confirm": "secret"}),
        ):
            self.assertIn("no collection 'secret'", error_text(await eve.call_tool(tool, arguments)), tool)
        # Eve's own collection of the same name holds none of Alice's documents.
        await eve.call_tool("kb.create_collection", {"name": "secret"})
        found = structured(await eve.call_tool("kb.search", {"collection": "secret", "query": "zebra password"}))
        self.assertEqual(found["results"], [])
        self.assertIn("no document", error_text(await eve.call_tool("kb.get", {"collection": "secret", "id": doc_id})))
        self.assertEqual(
            structured(await eve.call_tool("kb.delete", {"collection": "secret", "id": doc_id})), {"deleted": False}
        )
        reference = types.ResourceTemplateReference(type="ref/resource", uri="kb://{collection}/{id}")
        completed = await eve.complete(
            reference, {"name": "id", "value": ""}, context_arguments={"collection": "secret"}
        )
        self.assertEqual(completed.completion.values, [])
        try:
            await eve.read_resource(f"kb://secret/{doc_id}")
        except MCPError:
            pass
        else:
            raise AssertionError("eve read alice's document")
        page = structured(await alice.call_tool("kb.search", {"collection": "secret", "query": "zebra", "limit": 1}))
        await alice.call_tool("kb.add", {"collection": "secret", "text": "Another zebra note."})
        page = structured(await alice.call_tool("kb.search", {"collection": "secret", "query": "zebra", "limit": 1}))
        self.assertIsNotNone(page["next_cursor"])
        stolen = await eve.call_tool(
            "kb.search", {"collection": "secret", "query": "zebra", "limit": 1, "cursor": page["next_cursor"]}
        )
        self.assertIn("another listing", error_text(stolen))
        dropped = structured(await eve.call_tool("kb.drop_collection", {"name": "secret", "confirm": "secret"}))
        self.assertTrue(dropped["dropped"])
        still = structured(await alice.call_tool("kb.search", {"collection": "secret", "query": "zebra password"}))
        self.assertEqual(still["results"][0]["document_id"], doc_id)

    assertIsNotNone: Any


class EmbeddedKeywordTests(_Scenarios, DaemonTestCase):
    index, embedding = EMBEDDED, False
    timeout = 240


class EmbeddedHybridTests(_Scenarios, DaemonTestCase):
    index, embedding = EMBEDDED, True
    timeout = 240


class ServerKeywordTests(_Scenarios, DaemonTestCase):
    index, embedding = SERVER, False
    timeout = 240


class ServerHybridTests(_Scenarios, DaemonTestCase):
    index, embedding = SERVER, True
    timeout = 240


class MariaDBServerHybridTests(_Scenarios, DaemonTestCase):
    """The records on MariaDB: the same scenarios."""

    index, embedding, database = SERVER, True, MARIADB
    timeout = 240


class LimitTests(KnowledgeDaemon, DaemonTestCase):
    """What the index cannot store is refused by the tool, naming the fix, never left pending."""

    timeout = 120

    def test_metadata_and_chunks_beyond_the_index_limits_are_refused(self) -> Deferred[None]:
        daemon = self.knowledge_daemon()

        async def scenario(client: Client) -> None:
            call = client.call_tool
            await call("kb.create_collection", {"name": "limits"})
            huge = await call("kb.add", {"collection": "limits", "text": "a note", "metadata": {"n": 10**20}})
            self.assertIn("64 bits", error_text(huge))
            long = await call("kb.add", {"collection": "limits", "text": "a note", "metadata": {"b": "x" * 70_000}})
            self.assertIn("over 65536", error_text(long))
            # A heading line of 70,000 '#' is one piece of the text: over the index's 65,535 bytes.
            wide = await call("kb.add", {"collection": "limits", "text": "#" * 70_000 + "\n\nA note."})
            self.assertIn("smaller chunk_size", error_text(wide))
            added = structured(
                await call("kb.add", {"collection": "limits", "text": "a note", "metadata": {"n": 2**63 - 1}})
            )
            self.assertEqual(added["indexing"], "done")
            changed = await call(
                "kb.update", {"collection": "limits", "id": added["document"]["id"], "metadata": {"n": -(2**64)}}
            )
            self.assertIn("64 bits", error_text(changed))

        return self.with_clients(daemon, scenario, "alice")

    def test_a_chunk_over_the_index_limit_with_its_title_is_refused(self) -> Deferred[None]:
        daemon = self.knowledge_daemon()
        # 63,965 bytes of chunk, 2,001 more of title: what the index stores is over its 65,535.
        title, text = "😀" * 500, "kiwi " + "😀" * 15_990
        big = {"collection": "big", "text": text, "chunk_size": 4000}

        async def scenario(client: Client) -> None:
            call = client.call_tool
            await call("kb.create_collection", {"name": "big"})
            refused = await call("kb.add", {**big, "title": title})
            self.assertIn("65966 bytes (UTF-8), over the 65535", error_text(refused))
            self.assertIn("shorter title", error_text(refused))
            added = structured(await call("kb.add", {**big, "title": "Kiwi"}))
            self.assertEqual(added["indexing"], "done")
            same = {"collection": "big", "id": added["document"]["id"]}
            # A new title alone, or a new text under the stored title, is measured the same way.
            self.assertIn("shorter title", error_text(await call("kb.update", {**same, "title": title})))
            titled = structured(await call("kb.update", {**same, "title": "😀" * 400, "text": "kiwi"}))
            self.assertEqual(titled["indexing"], "done")
            self.assertIn(
                "over the 65535", error_text(await call("kb.update", {**same, "text": text, "chunk_size": 4000}))
            )
            found = structured(await call("kb.search", {"collection": "big", "query": "kiwi"}))
            self.assertEqual(([r["text"] for r in found["results"]], found["index"]), (["kiwi"], "ok"))
            [collection] = structured(await call("kb.collections", {}))["collections"]
            self.assertEqual(collection["documents"], 1)

        return self.with_clients(daemon, scenario, "alice")

    def test_an_overlap_over_half_the_chunk_size_is_refused(self) -> Deferred[None]:
        daemon = self.knowledge_daemon()

        async def scenario(client: Client) -> None:
            call = client.call_tool
            await call("kb.create_collection", {"name": "overlap"})
            text = "A sentence about backups. " * 40
            for overlap in (51, 60):
                sizes = {"chunk_size": 100, "chunk_overlap": overlap}
                refused = await call("kb.add", {"collection": "overlap", "text": text, **sizes})
                self.assertIn(f"chunk_overlap ({overlap}) is at most half the chunk_size (50", error_text(refused))
            added = structured(
                await call("kb.add", {"collection": "overlap", "text": text, "chunk_size": 100, "chunk_overlap": 50})
            )
            self.assertGreater(added["document"]["chunks"], 1)
            for overlap in (51, 60):
                sizes = {"chunk_size": 100, "chunk_overlap": overlap}
                refused = await call(
                    "kb.update", {"collection": "overlap", "id": added["document"]["id"], "text": text, **sizes}
                )
                self.assertIn("at most half the chunk_size", error_text(refused))

        return self.with_clients(daemon, scenario, "alice")


# -- faults and re-indexing -------------------------------------------------------------------------

BURST = 30


class OutageTests(KnowledgeDaemon, DaemonTestCase):
    """The Milvus server stops in the middle of a burst of kb.add and comes back."""

    timeout = 300

    def test_a_burst_of_adds_survives_the_index_going_down(self) -> Deferred[None]:
        require_milvus()
        server = MilvusLiteServer(tempfile.mkdtemp(prefix="mcpd-milvus-outage-")).start()
        self.addCleanup(shutil.rmtree, server.directory, True)
        self.addCleanup(server.stop)
        daemon = self.start_daemon(
            "--toolsets", "server,kb,memory", "--milvus-uri", server.uri, "--milvus-timeout", "3", fixture_pack=False
        )
        self.daemon_port = daemon.port

        async def scenario(client: Client) -> None:
            await client.call_tool("kb.create_collection", {"name": "burst"})
            outcomes: dict[int, Any] = {}

            async def add(number: int) -> None:
                text = f"Entry doc{number} of the burst: a plain line about token{number}."
                outcomes[number] = await client.call_tool("kb.add", {"collection": "burst", "text": text})

            async with anyio.create_task_group() as group:
                for number in range(BURST):
                    group.start_soon(add, number)
                    if number == BURST // 3:
                        await anyio.to_thread.run_sync(server.stop)
            added = [structured(outcomes[n]) for n in range(BURST)]
            self.assertIn("pending", [a["indexing"] for a in added])
            # Every document is in SQL while the index is down.
            [listed] = structured(await client.call_tool("kb.collections", {}))["collections"]
            self.assertEqual(listed["documents"], BURST)
            degraded = structured(await client.call_tool("kb.search", {"collection": "burst", "query": "token1"}))
            self.assertEqual(degraded["index"], "degraded")
            self.assertIn("degraded", degraded["notice"])
            health = json.loads((await anyio.to_thread.run_sync(lambda: fetch(daemon.port, "GET", "/health")))[2])
            self.assertEqual(health["status"], "degraded")  # not unhealthy: the index is not required
            self.assertEqual(health["checks"]["index"]["status"], "down")
            self.assertEqual(health["checks"]["database"]["status"], "ok")
            exposition = (await anyio.to_thread.run_sync(lambda: fetch(daemon.port, "GET", "/metrics")))[2]
            self.assertEqual(metric(exposition, "mcp_index_up"), 0.0)
            self.assertGreater(metric(exposition, "mcp_index_pending") or 0, 0)
            self.assertGreater(metric(exposition, "mcp_index_errors_total", {"kind": "unavailable"}) or 0, 0)
            info = structured(await client.call_tool("server.info", {}))
            index = next(store for store in info["stores"] if store["name"] == "index")
            self.assertEqual((index["state"], index["backend"]), ("down", "milvus"))
            self.assertGreater(index["pending"], 0)

            await anyio.to_thread.run_sync(server.start)
            deadline = time.monotonic() + 120
            while True:
                found = structured(
                    await client.call_tool(
                        "kb.search", {"collection": "burst", "query": "burst plain line", "limit": 100}
                    )
                )
                if found["index"] == "ok" and len(found["results"]) == BURST:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"not caught up: {found['index']}, {len(found['results'])} of {BURST}")
                await anyio.sleep(1)
            for _ in range(50):  # the re-indexer counts what is left once its pass is over
                exposition = (await anyio.to_thread.run_sync(lambda: fetch(daemon.port, "GET", "/metrics")))[2]
                if metric(exposition, "mcp_index_pending") == 0.0:
                    break
                await anyio.sleep(0.2)
            self.assertEqual(metric(exposition, "mcp_index_up"), 1.0)
            self.assertEqual(metric(exposition, "mcp_index_pending"), 0.0)
            ids = [r["document_id"] for r in found["results"]]
            self.assertEqual(sorted(ids), sorted(a["document"]["id"] for a in added))  # each once
            for number in (0, BURST // 3, BURST - 1):
                hit = structured(
                    await client.call_tool("kb.search", {"collection": "burst", "query": f"token{number}"})
                )
                self.assertEqual(hit["results"][0]["document_id"], added[number]["document"]["id"])

        return self.anonymous(daemon, scenario)


class ReindexTests(KnowledgeDaemon, DaemonTestCase):
    """``mcpd reindex`` rebuilds a lost index from SQL, and rebuilds it for a new embedding model."""

    timeout = 300

    def reindex(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [MCPD, "reindex", *args],
            cwd=self.workdir,
            env=daemon_env(self.workdir),
            capture_output=True,
            text=True,
            timeout=120,
        )

    @inlineCallbacks
    def test_the_index_is_rebuilt_from_sql(self) -> Any:
        require_milvus()
        daemon = self.knowledge_daemon(keys=False)

        async def fill(client: Client) -> None:
            await client.call_tool("kb.create_collection", {"name": "notes"})
            for word in ("alpha", "bravo", "charlie"):
                await client.call_tool("kb.add", {"collection": "notes", "text": f"The {word} procedure."})
            await client.call_tool("memory.remember", {"text": "The team deploys on Tuesdays.", "scope": "team"})
            await client.call_tool("kb.create_collection", {"name": "memory"})  # a kb collection, not the memories
            await client.call_tool("kb.add", {"collection": "memory", "text": "Memory modules are ECC."})

        yield self.anonymous(daemon, fill)
        daemon.stop()
        shutil.rmtree(self.workdir / "mcpd-data" / "milvus.db")  # the index's data is lost
        unknown = yield deferToThread(self.reindex, "nowhere")
        self.assertEqual(unknown.returncode, 1, unknown.stderr)
        self.assertIn("no kb collection named 'nowhere'", unknown.stderr)
        done = yield deferToThread(self.reindex)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("collection 'notes' of tenant 'default': 3 chunk(s)", done.stdout)
        self.assertIn("collection 'memory' of tenant 'default': 1 chunk(s)", done.stdout)
        self.assertIn("memories: 1 chunk(s)", done.stdout)
        # "memory" is the memories alone; kb:NAME a kb collection, whatever its name.
        memories = yield deferToThread(self.reindex, "memory")
        self.assertEqual((memories.returncode, memories.stdout.count("\n")), (0, 1), memories.stdout)
        self.assertIn("memories: 1 chunk(s)", memories.stdout)
        kb = yield deferToThread(self.reindex, "kb:memory")
        self.assertEqual((kb.returncode, kb.stdout.count("\n")), (0, 1), kb.stdout)
        self.assertIn("collection 'memory' of tenant 'default': 1 chunk(s)", kb.stdout)

        # Now with an embedding service: the collection is rebuilt for its model.
        self.embedding = True
        args = self.index_args()
        model = yield deferToThread(self.reindex, *args, "notes")
        self.assertEqual(model.returncode, 0, model.stderr)
        self.assertIn(f"embedding model {TOY_MODEL}", model.stdout)
        daemon = self.start_daemon("--toolsets", "server,kb,memory", *args, fixture_pack=False, name="again")

        async def search(client: Client) -> None:
            found = structured(await client.call_tool("kb.search", {"collection": "notes", "query": "bravo procedure"}))
            self.assertEqual(found["mode"], "hybrid")
            self.assertIn("bravo", found["results"][0]["text"])
            listed = structured(await client.call_tool("kb.collections", {}))["collections"]
            models = {collection["name"]: collection["embedding_model"] for collection in listed}
            self.assertEqual(models, {"notes": TOY_MODEL, "memory": None})  # only notes was rebuilt
            recalled = structured(await client.call_tool("memory.recall", {"query": "when does the team deploy"}))
            self.assertIn("Tuesdays", recalled["memories"][0]["text"])

        yield self.anonymous(daemon, search)


class LazyIndexTests(KnowledgeDaemon, DaemonTestCase):
    """A daemon serving kb and memory loads pymilvus only when the index is first used."""

    def test_a_daemon_with_the_index_packs_loads_no_pymilvus_until_used(self) -> None:
        require_milvus()
        code = (
            "import sys, tempfile\n"
            "from twisted.internet.testing import MemoryReactorClock\n"
            "from mcpd.config import resolve\n"
            "from mcpd.daemon import build_service\n"
            "reactor = MemoryReactorClock()\n"
            "settings = resolve({'data_dir': tempfile.mkdtemp()}, {}, {})\n"
            "root = build_service(settings, reactor)\n"
            "names = [s.name for s in root]\n"
            "assert 'milvus' in names and 'reindexer' in names, names\n"
            "root.privilegedStartService(); root.startService()\n"
            "reactor.advance(0.5)\n"
            "heavy = sorted(m for m in ('pymilvus', 'milvus_lite', 'grpc', 'pandas', 'pyarrow') if m in sys.modules)\n"
            "print(','.join(heavy))\n"
        )
        output = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=self.workdir
        )
        self.assertEqual((output.returncode, output.stdout.strip()), (0, ""), output.stderr)

    def test_the_health_probe_leaves_an_idle_milvus_lite_unstarted(self) -> Deferred[None]:
        require_milvus()
        daemon = self.start_daemon(fixture_pack=False)  # the default toolsets: kb and memory among them
        lite = self.workdir / "mcpd-data" / "milvus.db"

        async def scenario(client: Client) -> None:
            health = json.loads((await anyio.to_thread.run_sync(lambda: fetch(daemon.port, "GET", "/health")))[2])
            self.assertEqual(health["status"], "healthy")
            self.assertEqual(health["checks"]["index"], {"status": "ok", "latency_ms": 0.0, "detail": "not used yet"})
            self.assertFalse(lite.exists())
            await client.call_tool("memory.remember", {"text": "The index starts now."})
            self.assertTrue(lite.exists())

        return self.anonymous(daemon, scenario)


PAGED = 100  # documents of equal scores: the index returns any of them first


class FindingTests(KnowledgeDaemon, DaemonTestCase):
    """The review's findings on kb: filters the index cannot match, the default page size, full
    pages when chunks the index still holds are gone from SQL, subscriptions of another tenant,
    a slow index answered as pending, and the index in server.info under --stdio."""

    timeout = 240

    def test_filters_the_index_cannot_match_are_refused(self) -> Deferred[None]:
        daemon = self.knowledge_daemon()

        async def scenario(client: Client) -> None:
            call = client.call_tool
            await call("kb.create_collection", {"name": "filters"})
            await call("kb.add", {"collection": "filters", "text": "The quarterly report.", "metadata": {"n": 1}})
            for value, said in ((None, "filter"), (10**20, "64 bits"), (-(2**64), "64 bits")):
                refused = await call("kb.search", {"collection": "filters", "query": "report", "filter": {"n": value}})
                self.assertIn(said, error_text(refused))  # an isError, not a degraded scan
            found = structured(
                await call("kb.search", {"collection": "filters", "query": "report", "filter": {"n": 1}})
            )
            self.assertEqual((len(found["results"]), found["index"]), (1, "ok"))
            for odd in ("\x00", "\x01", "\b", "\f", "\x1f", "\x7f"):
                where = {"collection": "filters", "query": "report", "filter": {"w": odd}}
                found = structured(await call("kb.search", where))  # not a degraded scan
                self.assertEqual((found["results"], found["index"]), ([], "ok"), repr(odd))
            recalled = structured(await call("memory.recall", {"query": "report", "tags": ["\x01"]}))
            self.assertEqual((recalled["memories"], recalled["index"]), ([], "ok"))

        return self.with_clients(daemon, scenario, "alice")

    def test_search_pages_are_full_and_twenty_by_default(self) -> Deferred[None]:
        daemon = self.knowledge_daemon("--rate-limit", "100000")  # a hundred adds, then pages

        async def scenario(client: Client) -> None:
            call = client.call_tool
            await call("kb.create_collection", {"name": "pages"})
            for number in range(PAGED):
                await call("kb.add", {"collection": "pages", "text": f"Widget {number} of the catalogue."})
            first = structured(await call("kb.search", {"collection": "pages", "query": "widget catalogue"}))
            self.assertEqual(len(first["results"]), 20)  # TOOLS.md: limit defaults to 20
            # Most of what the index ranks first goes from SQL behind its back (deleted while the
            # index was down, not yet caught up): the index still finds them, SQL drops them.
            top = structured(await call("kb.search", {"collection": "pages", "query": "widget catalogue", "limit": 60}))
            gone = [result["chunk_id"] for result in top["results"]]
            await anyio.to_thread.run_sync(lambda: drop_rows(self.workdir, "kb_chunks", gone))
            seen: list[str] = []
            pages = []
            cursor = None
            while True:
                arguments: dict[str, Any] = {"collection": "pages", "query": "widget catalogue", "limit": 7}
                if cursor:
                    arguments["cursor"] = cursor
                page = structured(await call("kb.search", arguments))
                pages.append(len(page["results"]))
                seen += [result["chunk_id"] for result in page["results"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            self.assertEqual(pages, [7] * 5 + [5])  # full pages, then the rest
            self.assertEqual(len(seen), len(set(seen)))
            self.assertFalse(set(seen) & set(gone))

        return self.with_clients(daemon, scenario, "alice")

    def test_search_pages_follow_what_was_shown_not_an_offset(self) -> Deferred[None]:
        """Between two pages the index may rank otherwise (here a shown document is deleted; on
        Milvus Lite, segments sealed or compacted also move scores): the next page neither skips
        a result nor shows one again, as an offset into the new ranking would."""
        daemon = self.knowledge_daemon()

        async def scenario(client: Client) -> None:
            call = client.call_tool
            await call("kb.create_collection", {"name": "shifting"})
            for number in range(12):
                await call("kb.add", {"collection": "shifting", "text": f"Widget {number} of the catalogue."})
            arguments: dict[str, Any] = {"collection": "shifting", "query": "widget catalogue", "limit": 5}
            everything = structured(await call("kb.search", {**arguments, "limit": 12}))["results"]
            first = structured(await call("kb.search", arguments))
            self.assertEqual([r["chunk_id"] for r in first["results"]], [r["chunk_id"] for r in everything[:5]])
            removed = first["results"][0]["document_id"]
            self.assertTrue(structured(await call("kb.delete", {"collection": "shifting", "id": removed}))["deleted"])
            seen = [result["chunk_id"] for result in first["results"]]
            cursor = first["next_cursor"]
            while cursor is not None:
                page = structured(await call("kb.search", {**arguments, "cursor": cursor}))
                seen += [result["chunk_id"] for result in page["results"]]
                cursor = page["next_cursor"]
            self.assertEqual(len(seen), len(set(seen)))  # none twice
            self.assertEqual(set(seen), {result["chunk_id"] for result in everything})  # none skipped

        return self.with_clients(daemon, scenario, "alice")

    def test_another_tenant_cannot_follow_a_document(self) -> Deferred[None]:
        daemon = self.knowledge_daemon()

        async def scenario(alice: Client, eve: Client) -> None:
            await alice.call_tool("kb.create_collection", {"name": "secret"})
            await eve.call_tool("kb.create_collection", {"name": "secret"})
            added = structured(await alice.call_tool("kb.add", {"collection": "secret", "text": "The plan."}))
            uri = f"kb://secret/{added['document']['id']}"
            with self.assertRaises(MCPError):
                async with eve.listen(resource_subscriptions=[uri]):
                    pass
            async with alice.listen(resource_subscriptions=[uri]) as alice_hears:
                await alice.call_tool(
                    "kb.update", {"collection": "secret", "id": added["document"]["id"], "title": "v2"}
                )
                with anyio.fail_after(10):
                    async for event in alice_hears:
                        self.assertEqual(getattr(event, "uri", None), uri)
                        break

        return self.with_clients(daemon, scenario, "alice", "eve")

    def test_a_slow_index_answers_pending_once_saved(self) -> Deferred[None]:
        """kb.add answers within a few seconds of the SQL commit, even while the embedding
        service takes longer: a client's timeout and retry would otherwise add it twice."""
        require_milvus()
        service = EmbeddingService()
        url = service.listen(reactor)
        self.addCleanup(service.stop)
        daemon = self.knowledge_daemon("--embedding-url", url + "/v1/embeddings", "--embedding-model", TOY_MODEL)

        async def scenario(client: Client) -> None:
            call = client.call_tool
            await call("kb.create_collection", {"name": "slow"})  # the model is probed here
            service.delay = WRITE_WAIT + 4
            started = time.monotonic()
            added = structured(await call("kb.add", {"collection": "slow", "text": "The tortoise wins the race."}))
            took = time.monotonic() - started
            self.assertEqual(added["indexing"], "pending")
            self.assertLess(took, WRITE_WAIT + 3)
            service.delay = 0.0
            with anyio.fail_after(60):
                while True:  # the indexing went on after the answer: found, once
                    found = structured(await call("kb.search", {"collection": "slow", "query": "tortoise race"}))
                    if found["results"] and found["index"] == "ok":
                        break
                    await anyio.sleep(0.5)
            self.assertEqual([r["document_id"] for r in found["results"]], [added["document"]["id"]])
            quick = structured(await call("kb.add", {"collection": "slow", "text": "The hare sleeps."}))
            self.assertEqual(quick["indexing"], "done")

        return self.with_clients(daemon, scenario, "alice")

    def test_server_info_under_stdio_shows_the_index(self) -> Deferred[None]:
        require_milvus()
        parameters = self.stdio_parameters("--toolsets", "server,kb,memory")

        async def main() -> None:
            with anyio.fail_after(120):
                async with Client(stdio_client(parameters, errlog=self.errlog()), mode=MODERN) as client:
                    await client.call_tool("kb.collections", {})  # waits for the stores to open
                    info = structured(await client.call_tool("server.info", {}))
                    names = [store["name"] for store in info["stores"]]
                    self.assertEqual(sorted(names), ["database", "index"])
                    index = next(store for store in info["stores"] if store["name"] == "index")
                    self.assertEqual((index["backend"], index["search_mode"]), ("milvus-lite", "keyword"))

        return self.in_thread(lambda: run_anyio(main))


def drop_rows(workdir: Path, table: str, ids: list[str]) -> None:
    """Delete rows from the daemon's SQLite database behind its back (the index keeps them)."""
    with closing(sqlite3.connect(workdir / "mcpd-data" / "mcpd.sqlite3", timeout=30)) as connection:
        marks = ", ".join("?" * len(ids))
        connection.execute(f"DELETE FROM {table} WHERE id IN ({marks})", ids)  # noqa: S608
        connection.commit()
