"""The packs on the SQL store (``tasks``, ``notes``, and ``server`` describing the store), through
the official MCP SDK client against a real daemon: over Streamable HTTP and stdio, in both eras,
on SQLite and on a real MariaDB server.

Each scenario calls every tool of the packs as a model would (results checked against their
output schemas by the SDK, errors as ``isError`` results a model can act on), reads the
``task://`` and ``note://`` resources, completes their ids, gets the ``project.status`` prompt,
and hears ``notifications/resources/updated`` for a subscribed task. `TenancyTests` give two
tenants' keys to two clients and show that neither ever sees the other's records, resources or
cursors.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import sqlite3
import warnings
from typing import Any

import anyio
import mcp_types as types
from mcp import Client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
from mcp.shared.exceptions import MCPError
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from mcpd.stores.shown import MAX_DEPTH, shown_key
from mcpd.tools.api import Caller, RequestContext, ToolError
from mcpd.tools.paging import MAX_SHOWN_KEYS, decode_cursor, encode_cursor, shown_of, text_position
from tests.daemon import LEGACY, MODERN, DaemonTestCase, Scenario, run_anyio
from tests.knowledge_harness import KEYS as KNOWLEDGE_KEYS
from tests.knowledge_harness import KnowledgeDaemon
from tests.services import PASSWORD, shared_mariadb

TASK_TOOLS = {
    "project.create",
    "project.list",
    "task.create",
    "task.list",
    "task.get",
    "task.update",
    "task.comment",
    "task.next",
}
NOTE_TOOLS = {"note.save", "note.search", "note.get", "note.delete"}
INVALID_PARAMS = -32602
SCENARIO_TIMEOUT = 60.0


def structured(result: Any) -> dict[str, Any]:
    """A successful tool result's structured content (the same JSON is its text)."""
    assert not result.is_error, result
    assert result.structured_content is not None, result
    assert json.loads(result.content[0].text) == result.structured_content
    return dict(result.structured_content)


def error_text(result: Any) -> str:
    """An isError result's message."""
    assert result.is_error, result
    return str(result.content[0].text)


class _Backends:
    """The database a daemon under test uses: its own SQLite file, or a fresh MariaDB database."""

    backend: str
    workdir: Any

    def database_args(self) -> list[str]:
        if self.backend == "sqlite":
            return []  # the default: mcpd-data/mcpd.sqlite3 in the daemon's working directory
        server = shared_mariadb()
        password_file = self.workdir / "db-password"
        password_file.write_text(PASSWORD + "\n")
        return ["--db-url", server.url(server.new_database()), "--db-password-file", str(password_file)]


class _PackScenarios(_Backends):
    mode: str
    transport: str

    in_thread: Any
    start_daemon: Any
    stdio_parameters: Any
    errlog: Any
    assertEqual: Any
    assertIn: Any
    assertTrue: Any
    assertFalse: Any
    assertIsNone: Any
    assertGreater: Any
    assertLessEqual: Any

    def server(self) -> Any:
        args = self.database_args()
        if self.transport == "stdio":
            return stdio_client(self.stdio_parameters(*args), errlog=self.errlog())
        return self.start_daemon(*args, fixture_pack=False).url

    def scenario(self, scenario: Scenario, **options: Any) -> Deferred[None]:
        """Run ``scenario(client)`` with an SDK client (given ``options``) in a worker thread."""
        server = self.server()

        async def main() -> None:
            with anyio.fail_after(SCENARIO_TIMEOUT):
                async with Client(server, mode=self.mode, **options) as client:
                    await scenario(client)

        return self.in_thread(lambda: run_anyio(main))

    def test_every_tool(self) -> Deferred[None]:
        async def scenario(client: Client) -> None:
            listed = {tool.name: tool for tool in (await client.list_tools()).tools}
            self.assertTrue(set(listed) >= TASK_TOOLS | NOTE_TOOLS, sorted(listed))
            for name in TASK_TOOLS | NOTE_TOOLS:
                tool = listed[name]
                self.assertEqual(tool.input_schema.get("additionalProperties"), False, name)
                self.assertTrue(tool.output_schema, name)
                self.assertIn("Example", tool.description or "", name)
                self.assertFalse(tool.annotations.open_world_hint, name)  # type: ignore[union-attr]
            await self.tasks(client)
            await self.notes(client)
            # After the store's calls: under --stdio it opens in the background and server.info
            # says "starting" until then (mcpd.stores.opening).
            info = structured(await client.call_tool("server.info", {}))
            self.assertEqual(info["stores"][0]["name"], "database")
            self.assertEqual(info["stores"][0]["state"], "ok")
            self.assertEqual(info["stores"][0]["backend"], "sqlite" if self.backend == "sqlite" else "mysql")
            self.assertTrue({"server", "tasks", "notes"} <= set(info["toolsets"]))

        return self.scenario(scenario)

    async def tasks(self, client: Client) -> None:
        call = client.call_tool
        project = structured(await call("project.create", {"name": "website", "description": "Relaunch"}))["project"]
        self.assertEqual(project["created_by"], "local")
        self.assertIn("already exists", error_text(await call("project.create", {"name": "website"})))
        first = structured(
            await call(
                "task.create",
                {"project": "website", "title": "Fix login", "priority": "high", "due": "2026-12-01", "tags": ["bug"]},
            )
        )["task"]
        self.assertEqual((first["status"], first["version"], first["project"]), ("open", 1, project["id"]))
        self.assertIn(
            "not a date",
            error_text(await call("task.create", {"project": "website", "title": "x", "due": "2026-02-30"})),
        )
        self.assertIn("no project", error_text(await call("task.create", {"project": "nope", "title": "x"})))
        second = structured(
            await call("task.create", {"project": project["id"], "title": "Deploy", "depends_on": [first["id"]]})
        )["task"]
        # Dependencies: a cycle is refused, naming the loop.
        cycle = error_text(await call("task.update", {"id": first["id"], "depends_on": [second["id"]]}))
        self.assertIn("cycle", cycle)
        # Optimistic concurrency: a stale version is refused, naming the current one.
        stale = error_text(await call("task.update", {"id": first["id"], "status": "done", "expected_version": 7}))
        self.assertIn("at version 1", stale)
        nothing = error_text(await call("task.update", {"id": first["id"]}))
        self.assertIn("nothing to change", nothing)
        ready = structured(await call("task.next", {"project": "website"}))
        self.assertEqual(ready["task"]["id"], first["id"])
        self.assertIn("high priority", ready["reason"])
        done = structured(await call("task.update", {"id": first["id"], "status": "done", "expected_version": 1}))
        self.assertEqual(done["task"]["version"], 2)
        ready = structured(await call("task.next", {}))
        self.assertEqual(ready["task"]["id"], second["id"])
        comment = structured(await call("task.comment", {"id": first["id"], "text": "Shipped."}))["comment"]
        self.assertEqual((comment["task"], comment["created_by"]), (first["id"], "local"))
        view = structured(await call("task.get", {"id": first["id"]}))
        self.assertEqual([c["text"] for c in view["comments"]], ["Shipped."])
        self.assertEqual([b["id"] for b in view["blocks"]], [second["id"]])
        self.assertIn("no task", error_text(await call("task.get", {"id": "nope"})))
        # Pages: a cursor carries on the same listing, and only that one.
        page = structured(await call("task.list", {"project": "website", "limit": 1}))
        self.assertEqual([t["id"] for t in page["tasks"]], [second["id"]])
        cursor = page["next_cursor"]
        rest = structured(await call("task.list", {"project": "website", "limit": 1, "cursor": cursor}))
        self.assertEqual(([t["id"] for t in rest["tasks"]], rest["next_cursor"]), ([first["id"]], None))
        self.assertIn("another listing", error_text(await call("task.list", {"status": "open", "cursor": cursor})))
        self.assertIn("not one this server gave out", error_text(await call("task.list", {"cursor": "garbage!"})))
        filtered = structured(await call("task.list", {"tag": "bug", "status": "done"}))
        self.assertEqual([t["id"] for t in filtered["tasks"]], [first["id"]])
        projects = structured(await call("project.list", {}))
        self.assertEqual(projects["projects"][0]["open_tasks"], 1)
        self.assertEqual(projects["projects"][0]["done_tasks"], 1)
        # Schema errors are isError results naming the argument.
        bad = error_text(await call("task.create", {"project": "website", "title": "x", "priority": "asap"}))
        self.assertIn("priority", bad)
        # Resources: a template with completion; a task reads as task.get shows it.
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        self.assertTrue({"task://{id}", "note://{id}"} <= templates, templates)
        read = await client.read_resource(f"task://{first['id']}")
        self.assertEqual(json.loads(read.contents[0].text)["task"]["id"], first["id"])  # type: ignore[union-attr]
        with self.assertRaises(MCPError) as caught:
            await client.read_resource("task://no-such-task")
        self.assertEqual(caught.exception.code, INVALID_PARAMS)
        completed = await client.complete(
            types.ResourceTemplateReference(type="ref/resource", uri="task://{id}"),
            {"name": "id", "value": first["id"][:24]},
        )
        self.assertIn(first["id"], completed.completion.values)
        # The stand-up prompt, with its project completed.
        names = await client.complete(
            types.PromptReference(type="ref/prompt", name="project.status"), {"name": "project", "value": "web"}
        )
        self.assertEqual(names.completion.values, ["website"])
        prompt = await client.get_prompt("project.status", {"project": "website"})
        text = prompt.messages[0].content.text  # type: ignore[union-attr]
        self.assertIn("Deploy", text)
        self.assertIn("Ready next: Deploy", text)
        with self.assertRaises(MCPError) as caught:
            await client.get_prompt("project.status", {"project": "nope"})
        self.assertEqual(caught.exception.code, INVALID_PARAMS)

    async def notes(self, client: Client) -> None:
        call = client.call_tool
        saved = structured(
            await call(
                "note.save",
                {"title": "Deploy checklist", "body": "Run the tests, then tag the release.", "tags": ["ops"]},
            )
        )["note"]
        structured(await call("note.save", {"title": "Lunch", "body": "Pizza on Friday."}))
        for i in range(3):
            structured(await call("note.save", {"title": f"Release {i}", "body": f"Release notes number {i}."}))
        found = structured(await call("note.search", {"query": "checklist tests"}))
        self.assertEqual([n["id"] for n in found["notes"]], [saved["id"]])
        self.assertIn("**tests**", found["notes"][0]["snippet"])  # the body's words around the match
        pages, cursor = [], None
        while True:
            arguments: dict[str, Any] = {"query": "release", "limit": 2}
            if cursor:
                arguments["cursor"] = cursor
            page = structured(await call("note.search", arguments))
            pages.append([n["id"] for n in page["notes"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        seen = [note_id for page_ids in pages for note_id in page_ids]
        self.assertEqual(len(seen), len(set(seen)))
        self.assertGreater(len(seen), 3)  # the three releases and the checklist ("tag the release")
        # A note shown on the first page deleted before the second moves every other up: the
        # second page is still the best of those not shown (an offset skipped one).
        first = structured(await call("note.search", {"query": "release", "limit": 1}))
        self.assertEqual([n["id"] for n in first["notes"]], pages[0][:1])
        structured(await call("note.delete", {"id": pages[0][0]}))
        rest = structured(await call("note.search", {"query": "release", "limit": 10, "cursor": first["next_cursor"]}))
        self.assertEqual(sorted(n["id"] for n in rest["notes"]), sorted(seen[1:]))
        # A cursor of the offset kind this server gave out before is refused, not misread.
        position = json.loads(base64.urlsafe_b64decode(first["next_cursor"] + "=" * (-len(first["next_cursor"]) % 4)))
        old = base64.urlsafe_b64encode(json.dumps({**position, "p": 1}).encode()).decode().rstrip("=")
        refused = error_text(await call("note.search", {"query": "release", "limit": 1, "cursor": old}))
        self.assertIn("cursor is not one this server gave out: call again without cursor", refused)
        self.assertIn("no words", error_text(await call("note.search", {"query": "?!"})))
        self.assertEqual(structured(await call("note.search", {"query": "deploy", "tag": "none"}))["notes"], [])
        changed = structured(
            await call("note.save", {"id": saved["id"], "title": "Deploy steps", "body": "New.", "tags": []})
        )
        self.assertEqual(changed["note"]["created_at"], saved["created_at"])
        got = structured(await call("note.get", {"id": saved["id"]}))["note"]
        self.assertEqual(got["title"], "Deploy steps")
        read = await client.read_resource(f"note://{saved['id']}")
        self.assertEqual(json.loads(read.contents[0].text)["title"], "Deploy steps")  # type: ignore[union-attr]
        self.assertEqual(structured(await call("note.delete", {"id": saved["id"]})), {"deleted": True})
        self.assertEqual(structured(await call("note.delete", {"id": saved["id"]})), {"deleted": False})
        self.assertIn("no note", error_text(await call("note.get", {"id": saved["id"]})))
        self.assertIn("no note", error_text(await call("note.save", {"id": saved["id"], "title": "x", "body": "y"})))

    def test_subscribed_task_updates(self) -> Deferred[None]:
        """A client subscribed to task://ID hears notifications/resources/updated when it changes
        (legacy: resources/subscribe; 2026-07-28: subscriptions/listen), once per change: also
        when a task that depends on it is made or changes the title or status its ``blocks``
        shows, and not when that task changes anything else. After each change a comment on a
        second subscribed task marks where the change's notifications end."""
        heard: list[str] = []

        async def on_message(message: Any) -> None:
            root = getattr(message, "root", message)
            if getattr(root, "method", None) == "notifications/resources/updated":
                heard.append(root.params.uri)

        async def scenario(client: Client) -> None:
            async def call(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
                return structured(await client.call_tool(tool, arguments))

            await call("project.create", {"name": "p"})
            task = (await call("task.create", {"project": "p", "title": "watched"}))["task"]
            marker = (await call("task.create", {"project": "p", "title": "marker"}))["task"]
            uri, marker_uri = f"task://{task['id']}", f"task://{marker['id']}"
            waiting: dict[str, Any] = {}

            async def made() -> None:
                waiting.update(
                    (await call("task.create", {"project": "p", "title": "w", "depends_on": [task["id"]]}))["task"]
                )

            # Each change, and whether the watched task's subscribers hear of it.
            steps = [
                (lambda: call("task.update", {"id": task["id"], "status": "in_progress"}), True),
                (lambda: call("task.comment", {"id": task["id"], "text": "note"}), True),
                (made, True),  # the watched task's `blocks` lists it now
                (lambda: call("task.update", {"id": waiting["id"], "status": "done", "title": "w2"}), True),
                (lambda: call("task.update", {"id": waiting["id"], "priority": "high"}), False),
                (lambda: call("task.update", {"id": waiting["id"], "status": "done"}), False),  # as it was
            ]
            if self.mode == LEGACY:
                with warnings.catch_warnings():  # the SDK warns that 2026-07-28 replaced it
                    warnings.simplefilter("ignore")
                    await client.subscribe_resource(uri)
                    await client.subscribe_resource(marker_uri)
                for n, (step, told) in enumerate(steps):
                    await step()
                    await call("task.comment", {"id": marker["id"], "text": "mark"})
                    with anyio.fail_after(5):
                        while marker_uri not in heard:
                            await anyio.sleep(0.05)
                    since = heard[:]
                    del heard[:]
                    self.assertEqual(since, [uri, marker_uri] if told else [marker_uri], n)
            else:
                async with client.listen(resource_subscriptions=[uri, marker_uri]) as subscription:
                    for n, (step, told) in enumerate(steps):
                        await step()
                        await call("task.comment", {"id": marker["id"], "text": "mark"})
                        events: list[Any] = []
                        with anyio.fail_after(5):
                            while marker_uri not in events:
                                events.append(getattr(await anext(subscription), "uri", None))
                        self.assertEqual(events, [uri, marker_uri] if told else [marker_uri], n)
            view = await call("task.get", {"id": task["id"]})
            self.assertEqual(view["blocks"], [{"id": waiting["id"], "title": "w2", "status": "done"}])

        return self.scenario(scenario, message_handler=on_message)


class SQLiteHTTPLegacyTests(_PackScenarios, DaemonTestCase):
    backend, transport, mode = "sqlite", "streamable-http", LEGACY


class SQLiteHTTPModernTests(_PackScenarios, DaemonTestCase):
    backend, transport, mode = "sqlite", "streamable-http", MODERN


class SQLiteStdioLegacyTests(_PackScenarios, DaemonTestCase):
    backend, transport, mode = "sqlite", "stdio", LEGACY


class SQLiteStdioModernTests(_PackScenarios, DaemonTestCase):
    backend, transport, mode = "sqlite", "stdio", MODERN


class MariaDBHTTPLegacyTests(_PackScenarios, DaemonTestCase):
    backend, transport, mode = "mariadb", "streamable-http", LEGACY


class MariaDBHTTPModernTests(_PackScenarios, DaemonTestCase):
    backend, transport, mode = "mariadb", "streamable-http", MODERN


class MariaDBStdioLegacyTests(_PackScenarios, DaemonTestCase):
    backend, transport, mode = "mariadb", "stdio", LEGACY


class MariaDBStdioModernTests(_PackScenarios, DaemonTestCase):
    backend, transport, mode = "mariadb", "stdio", MODERN


# -- tenancy ------------------------------------------------------------------------------------

KEYS = {"alice": ("alice-key", "acme"), "eve": ("eve-key", "globex")}


class _Tenancy(_Backends):
    """Two keys of two tenants on one daemon: every tool, resource, completion, prompt and cursor
    of one tenant is invisible to the other."""

    start_daemon: Any
    assertEqual: Any
    assertIn: Any
    assertTrue: Any
    assertFalse: Any
    in_thread: Any
    workdir: Any

    def test_two_tenants_never_meet(self) -> Deferred[None]:
        key_file = self.workdir / "keys"
        key_file.write_text("".join(f"{name}:{key}::{tenant}\n" for name, (key, tenant) in KEYS.items()))
        daemon = self.start_daemon("--api-key-file", str(key_file), *self.database_args(), fixture_pack=False)

        def client(name: str) -> Any:
            http = create_mcp_http_client(headers={"Authorization": f"Bearer {KEYS[name][0]}"})
            return Client(streamable_http_client(daemon.url, http_client=http), mode=MODERN)

        async def main() -> None:
            with anyio.fail_after(60):
                async with client("alice") as alice, client("eve") as eve:
                    await self.scenario(alice, eve)

        return self.in_thread(lambda: run_anyio(main))

    async def scenario(self, alice: Client, eve: Client) -> None:
        project = structured(await alice.call_tool("project.create", {"name": "secret"}))["project"]
        self.assertEqual(project["created_by"], "alice")
        tasks = [
            structured(await alice.call_tool("task.create", {"project": "secret", "title": f"t{i}", "tags": ["x"]}))[
                "task"
            ]
            for i in range(3)
        ]
        task = tasks[0]
        note = structured(await alice.call_tool("note.save", {"title": "secret plan", "body": "secret words"}))["note"]
        page = structured(await alice.call_tool("task.list", {"limit": 1}))
        alice_cursor = page["next_cursor"]
        self.assertTrue(alice_cursor)

        # Alice's own records are hers alone: no gateway may serve them to another token
        # (2026-07-28 CacheableResult.cacheScope).
        for uri in (f"task://{task['id']}", f"note://{note['id']}"):
            self.assertEqual((await alice.read_resource(uri)).cache_scope, "private")

        # Eve sees nothing of it, by any tool...
        self.assertEqual(structured(await eve.call_tool("project.list", {}))["projects"], [])
        self.assertEqual(structured(await eve.call_tool("task.list", {}))["tasks"], [])
        self.assertEqual(structured(await eve.call_tool("task.list", {"tag": "x"}))["tasks"], [])
        self.assertIn("no project", error_text(await eve.call_tool("task.list", {"project": "secret"})))
        self.assertIn(
            "no project", error_text(await eve.call_tool("task.create", {"project": project["id"], "title": "x"}))
        )
        self.assertIn("no task", error_text(await eve.call_tool("task.get", {"id": task["id"]})))
        self.assertIn("no task", error_text(await eve.call_tool("task.update", {"id": task["id"], "title": "pwned"})))
        self.assertIn("no task", error_text(await eve.call_tool("task.comment", {"id": task["id"], "text": "hi"})))
        self.assertIsNone(structured(await eve.call_tool("task.next", {}))["task"])
        self.assertEqual(structured(await eve.call_tool("note.search", {"query": "secret"}))["notes"], [])
        self.assertIn("no note", error_text(await eve.call_tool("note.get", {"id": note["id"]})))
        self.assertIn(
            "no note", error_text(await eve.call_tool("note.save", {"id": note["id"], "title": "x", "body": "y"}))
        )
        self.assertEqual(structured(await eve.call_tool("note.delete", {"id": note["id"]})), {"deleted": False})
        # ... nor by a cursor of Alice's ...
        self.assertIn(
            "another listing", error_text(await eve.call_tool("task.list", {"limit": 1, "cursor": alice_cursor}))
        )
        # ... nor through resources, completion or the prompt.
        for uri in (f"task://{task['id']}", f"note://{note['id']}"):
            try:
                await eve.read_resource(uri)
            except MCPError as e:
                self.assertEqual(e.code, INVALID_PARAMS)
            else:
                raise AssertionError(f"eve read {uri}")
        for template, value in (
            ("task://{id}", task["id"][:10]),
            ("note://{id}", note["id"][:10]),
            ("task://{id}", ""),
        ):
            completed = await eve.complete(
                types.ResourceTemplateReference(type="ref/resource", uri=template), {"name": "id", "value": value}
            )
            self.assertEqual(completed.completion.values, [])
        names = await eve.complete(
            types.PromptReference(type="ref/prompt", name="project.status"), {"name": "project", "value": ""}
        )
        self.assertEqual(names.completion.values, [])
        with contextlib.suppress(MCPError):
            await eve.get_prompt("project.status", {"project": "secret"})
            raise AssertionError("eve got alice's project status")

        # Eve's own project of the same name is hers alone; Alice's records are untouched.
        structured(await eve.call_tool("project.create", {"name": "secret"}))
        self.assertEqual(len(structured(await eve.call_tool("project.list", {}))["projects"]), 1)
        view = structured(await alice.call_tool("task.get", {"id": task["id"]}))
        self.assertEqual((view["task"]["title"], view["comments"]), ("t0", []))
        self.assertEqual(
            structured(await alice.call_tool("note.get", {"id": note["id"]}))["note"]["title"], "secret plan"
        )
        listed = structured(await alice.call_tool("task.list", {"limit": 1, "cursor": alice_cursor}))
        self.assertEqual(len(listed["tasks"]), 1)

    def test_forged_cursors_and_overlong_completions(self) -> Deferred[None]:
        """A cursor's check value is no secret: one rebuilt around a position this server never
        gives out (not a string, a lone surrogate, too long) is refused with the cursor message by
        every listing tool, not failed in the database. A completion value longer than any id or
        name completes to nothing, before any query (SQLite refused its LIKE pattern: -32603)."""
        key_file = self.workdir / "keys"
        key_file.write_text("".join(f"{name}:{key}::{tenant}\n" for name, (key, tenant) in KEYS.items()))
        daemon = self.start_daemon("--api-key-file", str(key_file), *self.database_args(), fixture_pack=False)
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {KEYS['alice'][0]}"})
        tenant = KEYS["alice"][1]
        not_ours = "cursor is not one this server gave out: call again without cursor"

        async def scenario(alice: Client) -> None:
            structured(await alice.call_tool("project.create", {"name": "p"}))
            structured(await alice.call_tool("task.create", {"project": "p", "title": "t"}))
            structured(await alice.call_tool("note.save", {"title": "deploy", "body": "deploy"}))
            listings = [
                ("project.list", {}, {}),
                ("task.list", {}, {}),
                ("task.list", {"status": "open"}, {"status": "open"}),
                ("note.search", {"query": "deploy"}, {"query": "deploy", "tag": None}),
            ]
            for tool, arguments, filters in listings:
                for position in ([1, 2], {"a": 1}, True, 7, "\ud800", "x" * 5000):
                    cursor = CursorTests.reference(tenant, tool, filters, position)
                    result = await alice.call_tool(tool, {**arguments, "cursor": cursor})
                    self.assertEqual(error_text(result), not_ours, (tool, position))
            long = "0" * 60_000
            for ref, argument in (
                (types.ResourceTemplateReference(type="ref/resource", uri="task://{id}"), "id"),
                (types.ResourceTemplateReference(type="ref/resource", uri="note://{id}"), "id"),
                (types.PromptReference(type="ref/prompt", name="project.status"), "project"),
            ):
                completed = await alice.complete(ref, {"name": argument, "value": long})
                self.assertEqual(completed.completion.values, [])

        async def main() -> None:
            with anyio.fail_after(60):
                async with Client(streamable_http_client(daemon.url, http_client=http), mode=MODERN) as alice:
                    await scenario(alice)

        return self.in_thread(lambda: run_anyio(main))

    def test_updates_reach_only_their_tenant(self) -> Deferred[None]:
        """Eve subscribes to Alice's task (2026-07-28 subscriptions/listen, and legacy
        resources/subscribe) beside her own: when both change she hears only of her own, while
        Alice hears of hers."""
        key_file = self.workdir / "keys"
        key_file.write_text("".join(f"{name}:{key}::{tenant}\n" for name, (key, tenant) in KEYS.items()))
        daemon = self.start_daemon("--api-key-file", str(key_file), *self.database_args(), fixture_pack=False)
        legacy_heard: list[str] = []

        async def on_message(message: Any) -> None:
            root = getattr(message, "root", message)
            if getattr(root, "method", None) == "notifications/resources/updated":
                legacy_heard.append(root.params.uri)

        def client(name: str, mode: str = MODERN, **options: Any) -> Any:
            http = create_mcp_http_client(headers={"Authorization": f"Bearer {KEYS[name][0]}"})
            return Client(streamable_http_client(daemon.url, http_client=http), mode=mode, **options)

        async def task_of(who: Client, project: str) -> str:
            structured(await who.call_tool("project.create", {"name": project}))
            return str(structured(await who.call_tool("task.create", {"project": project, "title": "t"}))["task"]["id"])

        async def main() -> None:
            with anyio.fail_after(60):
                async with (
                    client("alice") as alice,
                    client("eve") as eve,
                    client("eve", LEGACY, message_handler=on_message) as eve_legacy,
                ):
                    alices, eves = await task_of(alice, "a"), await task_of(eve, "e")
                    uris = [f"task://{alices}", f"task://{eves}"]
                    with warnings.catch_warnings():  # the SDK warns that 2026-07-28 replaced it
                        warnings.simplefilter("ignore")
                        for uri in uris:
                            await eve_legacy.subscribe_resource(uri)
                    async with (
                        alice.listen(resource_subscriptions=uris[:1]) as alice_hears,
                        eve.listen(resource_subscriptions=uris) as eve_hears,
                    ):
                        structured(await alice.call_tool("task.update", {"id": alices, "status": "in_progress"}))
                        structured(await eve.call_tool("task.update", {"id": eves, "status": "in_progress"}))
                        async for event in alice_hears:
                            self.assertEqual(getattr(event, "uri", None), uris[0], event)
                            break
                        # In order on Eve's stream: her own task's update, with nothing before it.
                        async for event in eve_hears:
                            self.assertEqual(getattr(event, "uri", None), uris[1], event)
                            break
                    while not legacy_heard:
                        await anyio.sleep(0.05)
                    self.assertEqual(legacy_heard, [uris[1]])

        return self.in_thread(lambda: run_anyio(main))


class SQLiteTenancyTests(_Tenancy, DaemonTestCase):
    backend = "sqlite"


class MariaDBTenancyTests(_Tenancy, DaemonTestCase):
    backend = "mariadb"


class CursorTests(SynchronousTestCase):
    """`mcpd.tools.paging`'s cursors in process: the text earlier versions gave out, and what is
    refused with which message."""

    @staticmethod
    def reference(tenant: str, tool: str, filters: dict[str, Any], position: Any) -> str:
        """A cursor as this server has always written it (`json.dumps` and SHA-256)."""
        identity = json.dumps([tenant, tool, dict(sorted(filters.items()))], default=str)
        listing = hashlib.sha256(identity.encode()).hexdigest()[:16]
        raw = json.dumps({"l": listing, "p": position}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    def test_cursors_are_the_ones_given_out_before(self) -> None:
        """A cursor is the same text as ever, so one given out before an upgrade still pages."""
        when = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)
        listings = [
            ("acme", "note.search", {"query": "deploy pipeline", "tag": None}),
            ("ténant ☃", "kb.search", {"query": 'ü"\\\n', "collection": ["a", "b"], "filter": {"z": 1, "a": [2.5]}}),
            ("acme", "server.audit", {"since": when, "tool": None, "outcome": "ok"}),
            ("acme", "kb.collections", {}),
        ]
        positions = ["".join(f"{n:012d}" for n in range(1000)), 7, [3, "x"], {"b": "é", "a": -1.5}, "\u2028"]
        for tenant, tool, filters in listings:
            for position in positions:
                ctx = RequestContext(request_id=1, caller=Caller(tenant=tenant))
                cursor = encode_cursor(ctx, tool, filters, position)
                self.assertEqual(cursor, self.reference(tenant, tool, filters, position))
                self.assertEqual(decode_cursor(ctx, tool, filters, cursor), position)

    def test_tampered_and_foreign_cursors_are_refused(self) -> None:
        """A cursor of another tenant, tool or filters, or with its digest changed, names another
        listing; one that is not base64 JSON of ours is not one this server gave out."""
        filters = {"query": "deploy", "tag": None}
        acme = RequestContext(request_id=1, caller=Caller(tenant="acme"))
        cursor = encode_cursor(acme, "note.search", filters, "000000000001")
        assert cursor is not None
        other_listing = (
            "cursor belongs to another listing: pass it to note.search with the same other arguments as the "
            "call that returned it, or call again without cursor"
        )
        not_ours = "cursor is not one this server gave out: call again without cursor"
        globex = RequestContext(request_id=1, caller=Caller(tenant="globex"))
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        for ctx, tool, given, forged in [
            (globex, "note.search", filters, cursor),
            (acme, "kb.search", filters, cursor),
            (acme, "note.search", {**filters, "tag": "ops"}, cursor),
            (acme, "note.search", filters, self.reference("globex", "note.search", filters, "000000000001")),
            (
                acme,
                "note.search",
                filters,
                base64.urlsafe_b64encode(json.dumps({**raw, "l": "0" * 16}).encode()).decode(),
            ),
        ]:
            with self.assertRaises(ToolError) as caught:
                decode_cursor(ctx, tool, given, forged)
            self.assertEqual(str(caught.exception), other_listing.replace("note.search", tool))
        for forged in ["!!", "e30", cursor[:-4], cursor[:5], base64.urlsafe_b64encode(b'{"p":1}').decode(), "é"]:
            with self.assertRaises(ToolError) as caught:
                decode_cursor(acme, "note.search", filters, forged)
            self.assertEqual(str(caught.exception), not_ours, forged)


class ForgedCursorsOutsideTasksAndNotesTests(KnowledgeDaemon, DaemonTestCase):
    """As `test_forged_cursors_and_overlong_completions`, for every other listing tool: a cursor
    rebuilt around a position this server never gives out is the cursor's isError, never a
    failure in SQL, Milvus or Redis."""

    timeout = 240

    def test_forged_positions_are_refused(self) -> Deferred[None]:
        shop = self.workdir / "shop.sqlite3"
        with contextlib.closing(sqlite3.connect(shop)) as db:
            db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        daemon = self.knowledge_daemon(
            "--toolsets", "server,kb,memory,cache,sql", f"--sql-source=shop=sqlite:///{shop}"
        )
        tenant = KNOWLEDGE_KEYS["alice"][1]
        not_ours = "cursor is not one this server gave out: call again without cursor"
        listings = [
            ("kb.collections", {}, {}),
            (
                "kb.search",
                {"collection": "c", "query": "report"},
                {"collection": ["c"], "query": "report", "mode": None, "filter": {}},
            ),
            ("memory.recall", {"query": "report"}, {"query": "report", "tags": [], "scope": None}),
            ("memory.list", {}, {"tags": [], "scope": None}),
            ("server.audit", {}, {}),
            ("cache.scan", {}, {"pattern": "*"}),
            ("sql.tables", {}, {"source": "shop"}),
        ]
        forged = ([1, 2], {"a": 1}, True, 7, 1.5, "\ud800", "\ud800" * 12, "x" * 5000, "x" * 60_000)

        async def scenario(alice: Client) -> None:
            structured(await alice.call_tool("kb.create_collection", {"name": "c"}))
            structured(await alice.call_tool("kb.add", {"collection": "c", "text": "The quarterly report."}))
            structured(await alice.call_tool("memory.remember", {"text": "The quarterly report is due."}))
            structured(await alice.call_tool("cache.set", {"key": "k", "value": 1}))
            failed = []
            for tool, arguments, filters in listings:
                for position in forged:
                    cursor = CursorTests.reference(tenant, tool, filters, position)
                    result = await alice.call_tool(tool, {**arguments, "cursor": cursor})
                    said = result.content[0].text if result.content else ""
                    if not (result.is_error and said == not_ours):
                        failed.append((tool, repr(position)[:20], said[:80]))
            self.assertEqual(failed, [], "\n".join(map(str, failed)))

        return self.with_clients(daemon, scenario, "alice")


class PositionTests(SynchronousTestCase):
    """`text_position` and `shown_of` take back what this server gives out, and nothing else."""

    def test_text_positions(self) -> None:
        self.assertIsNone(text_position(None, 32))
        self.assertEqual(text_position("06h2wdpc3r5115r059yxh7q43m", 32), "06h2wdpc3r5115r059yxh7q43m")
        self.assertEqual(text_position("é" * 32, 32), "é" * 32)
        for forged in ([1], {"a": 1}, True, 7, 1.5, "\ud800", "x" * 33):
            with self.assertRaises(ToolError):
                text_position(forged, 32)

    def test_shown_positions(self) -> None:
        keys = [shown_key(f"id-{i}") for i in range(MAX_DEPTH)]
        self.assertEqual(MAX_SHOWN_KEYS, MAX_DEPTH)
        self.assertEqual(shown_of("".join(keys)), frozenset(keys))
        self.assertEqual(shown_of(None), frozenset())
        for forged in ("", [keys[0]], 7, "\ud800" * 12, "=" * 12, keys[0][:-1], "".join(keys) + keys[0]):
            with self.assertRaises(ToolError):
                shown_of(forged)
