"""The ``memory`` pack through the official MCP SDK client over Streamable HTTP against a real
daemon: its index on Milvus Lite embedded and on ``milvus-lite server``, with and without the
fake embedding service. Every tool, the ``memory://`` resource and its completion, the
``memory.context`` prompt; personal memories that only their key sees, team memories the
tenant shares, and another tenant that sees none of them.
"""

from __future__ import annotations

import json
import sqlite3
import warnings
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
from mcp.shared.exceptions import MCPError
from twisted.internet.defer import Deferred

from tests.daemon import INVALID_PARAMS, LEGACY, DaemonTestCase
from tests.knowledge_harness import EMBEDDED, KEYS, MARIADB, SERVER, KnowledgeDaemon, error_text, structured

MEMORY_TOOLS = {"memory.remember", "memory.recall", "memory.list", "memory.update", "memory.forget"}


class _Scenarios(KnowledgeDaemon):
    assertEqual: Any
    assertIn: Any
    assertNotIn: Any
    assertTrue: Any
    assertFalse: Any
    assertIsNone: Any
    assertIsNotNone: Any
    assertGreater: Any

    def test_every_tool(self) -> Deferred[None]:
        daemon = self.knowledge_daemon()
        return self.with_clients(daemon, self.every_tool, "alice", "bob")

    async def every_tool(self, alice: Client, bob: Client) -> None:
        call = alice.call_tool
        listed = {tool.name: tool for tool in (await alice.list_tools()).tools}
        self.assertTrue(set(listed) >= MEMORY_TOOLS, sorted(listed))
        for name in MEMORY_TOOLS:
            tool = listed[name]
            self.assertEqual(tool.input_schema.get("additionalProperties"), False, name)
            self.assertTrue(tool.output_schema, name)
            self.assertIn("Example", tool.description or "", name)

        personal = structured(
            await call("memory.remember", {"text": "I prefer release notes as bullet points.", "tags": ["style"]})
        )
        self.assertEqual(personal["indexing"], "done")
        mine = personal["memory"]
        self.assertEqual((mine["scope"], mine["created_by"], mine["tags"]), ("personal", "alice", ["style"]))
        team = structured(
            await call(
                "memory.remember",
                {"text": "The team deploys the billing service on Tuesdays.", "tags": ["ops"], "scope": "team"},
            )
        )["memory"]
        newer = structured(
            await call(
                "memory.remember",
                {"text": "The team deploys the billing service on Mondays.", "tags": ["ops"], "scope": "team"},
            )
        )["memory"]
        self.assertEqual(team["scope"], "team")

        recalled = structured(await call("memory.recall", {"query": "when does the team deploy billing"}))
        self.assertEqual(recalled["mode"], "hybrid" if self.embedding else "keyword")
        self.assertEqual(recalled["index"], "ok")
        ids = [m["id"] for m in recalled["memories"]]
        self.assertEqual(set(ids[:2]), {team["id"], newer["id"]})
        scores = [m["score"] for m in recalled["memories"]]
        self.assertEqual(scores, sorted(scores, reverse=True))
        if not self.embedding:
            # The same words score the same: the newer first.
            self.assertEqual(ids[0], newer["id"], recalled)
        only_personal = structured(await call("memory.recall", {"query": "release notes bullet", "scope": "personal"}))
        self.assertEqual([m["id"] for m in only_personal["memories"]], [mine["id"]])
        tagged = structured(await call("memory.recall", {"query": "release notes deploys", "tags": ["ops"]}))
        self.assertEqual({m["id"] for m in tagged["memories"]}, {team["id"], newer["id"]})
        first = structured(await call("memory.recall", {"query": "team deploys", "limit": 1}))
        self.assertEqual(len(first["memories"]), 1)
        second = structured(
            await call("memory.recall", {"query": "team deploys", "limit": 1, "cursor": first["next_cursor"]})
        )
        self.assertNotEqual(first["memories"][0]["id"], second["memories"][0]["id"])

        # Bob (same team, another key) sees the team's memories, not Alice's personal one.
        bob_sees = structured(await bob.call_tool("memory.list", {}))["memories"]
        self.assertEqual([m["id"] for m in bob_sees], [newer["id"], team["id"]])
        bob_recalls = structured(await bob.call_tool("memory.recall", {"query": "release notes bullet points"}))
        self.assertNotIn(mine["id"], [m["id"] for m in bob_recalls["memories"]])
        self.assertIn("no memory", error_text(await bob.call_tool("memory.update", {"id": mine["id"], "text": "x"})))
        self.assertEqual(structured(await bob.call_tool("memory.forget", {"id": mine["id"]})), {"forgotten": False})

        everything = structured(await call("memory.list", {}))["memories"]
        self.assertEqual([m["id"] for m in everything], [newer["id"], team["id"], mine["id"]])
        page = structured(await call("memory.list", {"limit": 2}))
        rest = structured(await call("memory.list", {"limit": 2, "cursor": page["next_cursor"]}))
        self.assertEqual([m["id"] for m in page["memories"] + rest["memories"]], [m["id"] for m in everything])
        self.assertIsNone(rest["next_cursor"])
        self.assertEqual(
            [m["id"] for m in structured(await call("memory.list", {"scope": "personal"}))["memories"]], [mine["id"]]
        )
        self.assertEqual(len(structured(await call("memory.list", {"tags": ["ops"]}))["memories"]), 2)
        self.assertIn(
            "another listing", error_text(await call("memory.list", {"scope": "team", "cursor": page["next_cursor"]}))
        )

        updated = structured(
            await call(
                "memory.update", {"id": mine["id"], "text": "I prefer release notes as a short table.", "tags": []}
            )
        )
        self.assertEqual((updated["memory"]["tags"], updated["indexing"]), ([], "done"))
        table = structured(await call("memory.recall", {"query": "short table", "scope": "personal"}))
        self.assertEqual(table["memories"][0]["id"], mine["id"])
        self.assertIn("short table", table["memories"][0]["text"])
        self.assertIn("nothing to change", error_text(await call("memory.update", {"id": mine["id"]})))

        # The resource, completion and the prompt.
        read = await alice.read_resource(f"memory://{mine['id']}")
        self.assertEqual(json.loads(read.contents[0].text)["id"], mine["id"])  # type: ignore[union-attr]
        try:
            await bob.read_resource(f"memory://{mine['id']}")
        except MCPError:
            pass
        else:
            raise AssertionError("bob read alice's personal memory")
        reference = types.ResourceTemplateReference(type="ref/resource", uri="memory://{id}")
        completed = await alice.complete(reference, {"name": "id", "value": mine["id"][:20]})
        self.assertIn(mine["id"], completed.completion.values)
        completed = await bob.complete(reference, {"name": "id", "value": mine["id"][:20]})
        self.assertNotIn(mine["id"], completed.completion.values)
        prompts = [p.name for p in (await alice.list_prompts()).prompts]
        self.assertIn("memory.context", prompts)
        prompt = await alice.get_prompt("memory.context", {"topic": "deploying billing"})
        text = prompt.messages[0].content.text  # type: ignore[union-attr]
        self.assertIn("Mondays", text)
        self.assertIn("Tuesdays", text)

        self.assertEqual(structured(await call("memory.forget", {"id": team["id"]})), {"forgotten": True})
        self.assertEqual(structured(await call("memory.forget", {"id": team["id"]})), {"forgotten": False})
        after = structured(await call("memory.recall", {"query": "Tuesdays"}))
        self.assertNotIn(team["id"], [m["id"] for m in after["memories"]])

    def test_two_tenants_never_meet(self) -> Deferred[None]:
        daemon = self.knowledge_daemon()
        return self.with_clients(daemon, self.tenancy, "alice", "eve")

    async def tenancy(self, alice: Client, eve: Client) -> None:
        team = structured(
            await alice.call_tool("memory.remember", {"text": "The vault combination is 1234.", "scope": "team"})
        )["memory"]
        mine = structured(await alice.call_tool("memory.remember", {"text": "My vault key is under the mat."}))[
            "memory"
        ]
        self.assertEqual(structured(await eve.call_tool("memory.list", {}))["memories"], [])
        recalled = structured(await eve.call_tool("memory.recall", {"query": "vault combination key"}))
        self.assertEqual(recalled["memories"], [])
        for memory in (team, mine):
            self.assertIn(
                "no memory", error_text(await eve.call_tool("memory.update", {"id": memory["id"], "text": "x"}))
            )
            self.assertEqual(
                structured(await eve.call_tool("memory.forget", {"id": memory["id"]})), {"forgotten": False}
            )
            try:
                await eve.read_resource(f"memory://{memory['id']}")
            except MCPError:
                pass
            else:
                raise AssertionError("eve read alice's memory")
        reference = types.ResourceTemplateReference(type="ref/resource", uri="memory://{id}")
        self.assertEqual((await eve.complete(reference, {"name": "id", "value": ""})).completion.values, [])
        prompt = await eve.get_prompt("memory.context", {"topic": "vault"})
        self.assertIn("Nothing is remembered", prompt.messages[0].content.text)  # type: ignore[union-attr]
        await alice.call_tool("memory.remember", {"text": "Another vault fact.", "scope": "team"})
        page = structured(await alice.call_tool("memory.list", {"limit": 1}))
        self.assertIn(
            "another listing",
            error_text(await eve.call_tool("memory.list", {"limit": 1, "cursor": page["next_cursor"]})),
        )
        self.assertEqual(len(structured(await alice.call_tool("memory.list", {}))["memories"]), 3)


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


PAGED = 100  # memories of equal scores: the index returns any of them first


class FindingTests(KnowledgeDaemon, DaemonTestCase):
    """The review's findings on memory: default page size, full pages when records the index
    still holds are gone from SQL, and subscriptions only to memories the caller may read."""

    timeout = 240

    def test_recall_pages_are_full_and_twenty_by_default(self) -> Deferred[None]:
        daemon = self.knowledge_daemon("--rate-limit", "100000")  # a hundred writes, then pages

        async def scenario(alice: Client) -> None:
            for number in range(PAGED):
                await alice.call_tool(
                    "memory.remember", {"text": f"Deploy note {number}: deploy the api.", "scope": "team"}
                )
            first = structured(await alice.call_tool("memory.recall", {"query": "deploy api"}))
            self.assertEqual(len(first["memories"]), 20)  # TOOLS.md: limit defaults to 20
            self.assertIsNotNone(first["next_cursor"])
            # Most of what the index ranks first goes from SQL behind its back (forgotten while
            # the index was down, not yet caught up): the index still finds them, SQL drops them.
            top = structured(await alice.call_tool("memory.recall", {"query": "deploy api", "limit": 60}))
            gone = [memory["id"] for memory in top["memories"]]
            await anyio.to_thread.run_sync(lambda: drop_rows(self.workdir, "memories", gone))
            seen: list[str] = []
            pages = []
            cursor = None
            while True:
                arguments: dict[str, Any] = {"query": "deploy api", "limit": 7}
                if cursor:
                    arguments["cursor"] = cursor
                page = structured(await alice.call_tool("memory.recall", arguments))
                pages.append(len(page["memories"]))
                seen += [memory["id"] for memory in page["memories"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            self.assertEqual(pages, [7] * 5 + [5])  # full pages, then the rest
            self.assertEqual(len(seen), len(set(seen)))
            self.assertFalse(set(seen) & set(gone))

        return self.with_clients(daemon, scenario, "alice")

    def test_recall_pages_follow_what_was_shown_not_an_offset(self) -> Deferred[None]:
        """A memory of the first page forgotten before the next: the later pages neither skip
        one nor show one again, as an offset into the new ranking would."""
        daemon = self.knowledge_daemon()

        async def scenario(alice: Client) -> None:
            call = alice.call_tool
            for number in range(12):
                await call("memory.remember", {"text": f"Deploy note {number}: deploy the api.", "scope": "team"})
            arguments: dict[str, Any] = {"query": "deploy api", "limit": 5}
            everything = structured(await call("memory.recall", {**arguments, "limit": 12}))["memories"]
            first = structured(await call("memory.recall", arguments))
            self.assertEqual([m["id"] for m in first["memories"]], [m["id"] for m in everything[:5]])
            self.assertTrue(structured(await call("memory.forget", {"id": first["memories"][0]["id"]}))["forgotten"])
            seen = [memory["id"] for memory in first["memories"]]
            cursor = first["next_cursor"]
            while cursor is not None:
                page = structured(await call("memory.recall", {**arguments, "cursor": cursor}))
                seen += [memory["id"] for memory in page["memories"]]
                cursor = page["next_cursor"]
            self.assertEqual(len(seen), len(set(seen)))  # none twice
            self.assertEqual(set(seen), {memory["id"] for memory in everything})  # none skipped

        return self.with_clients(daemon, scenario, "alice")

    def test_a_context_topic_is_capped_like_a_recall_query(self) -> Deferred[None]:
        daemon = self.knowledge_daemon()

        async def scenario(alice: Client) -> None:
            await alice.call_tool("memory.remember", {"text": "Deploys happen on Mondays."})
            prompt = await alice.get_prompt("memory.context", {"topic": "deploys " + "x" * 1992})  # 2,000
            self.assertIn("Mondays", prompt.messages[0].content.text)  # type: ignore[union-attr]
            with self.assertRaises(MCPError) as refused:
                await alice.get_prompt("memory.context", {"topic": "deploys " * 59_125})
            self.assertEqual(refused.exception.error.code, INVALID_PARAMS)
            self.assertIn("topic is 473000 characters, over 2000", refused.exception.message)

        return self.with_clients(daemon, scenario, "alice")

    def test_a_personal_memory_is_followed_only_by_its_key(self) -> Deferred[None]:
        daemon = self.knowledge_daemon()

        async def scenario(alice: Client, bob: Client) -> None:
            mine = structured(await alice.call_tool("memory.remember", {"text": "My locker code is 4711."}))["memory"]
            team = structured(await alice.call_tool("memory.remember", {"text": "Standup at nine.", "scope": "team"}))[
                "memory"
            ]
            personal, shared = f"memory://{mine['id']}", f"memory://{team['id']}"
            with self.assertRaises(MCPError) as refused:
                async with bob.listen(resource_subscriptions=[personal]):
                    pass
            self.assertIn("not found", str(refused.exception).lower())
            async with bob.listen(resource_subscriptions=[shared]) as bob_hears:
                await alice.call_tool("memory.update", {"id": team["id"], "text": "Standup at ten."})
                with anyio.fail_after(10):
                    async for event in bob_hears:
                        self.assertEqual(getattr(event, "uri", None), shared)
                        break
            async with alice.listen(resource_subscriptions=[personal]) as alice_hears:
                await alice.call_tool("memory.update", {"id": mine["id"], "text": "My locker code is 4712."})
                with anyio.fail_after(10):
                    async for event in alice_hears:
                        self.assertEqual(getattr(event, "uri", None), personal)
                        break
            # The same rule for resources/subscribe (the eras before 2026-07-28).
            async with legacy_client(daemon, "bob") as legacy:
                with warnings.catch_warnings():  # the SDK warns that 2026-07-28 replaced it
                    warnings.simplefilter("ignore")
                    with self.assertRaises(MCPError):
                        await legacy.subscribe_resource(personal)
                    await legacy.subscribe_resource(shared)

        return self.with_clients(daemon, scenario, "alice", "bob")


def legacy_client(daemon: Any, name: str) -> Client:
    """An SDK client of key ``name`` speaking the newest era before 2026-07-28."""
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {KEYS[name][0]}"})
    return Client(streamable_http_client(daemon.url, http_client=http), mode=LEGACY)


def drop_rows(workdir: Path, table: str, ids: list[str]) -> None:
    """Delete records from the daemon's SQLite database behind its back (the index keeps them)."""
    with closing(sqlite3.connect(workdir / "mcpd-data" / "mcpd.sqlite3", timeout=30)) as connection:
        marks = ", ".join("?" * len(ids))
        if table == "memories":
            connection.execute(f"DELETE FROM memory_tags WHERE memory_id IN ({marks})", ids)  # noqa: S608
        connection.execute(f"DELETE FROM {table} WHERE id IN ({marks})", ids)  # noqa: S608
        connection.commit()
