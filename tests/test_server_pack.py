"""Tests for mcpd.packs.server: the tools that describe the running server."""

from __future__ import annotations

import json
import time
from typing import Any

from jsonschema import Draft202012Validator
from twisted.trial.unittest import SynchronousTestCase

from mcpd._version import __version__
from mcpd.config import Settings
from mcpd.interfaces import IRuntime
from mcpd.protocol.engine import Engine
from mcpd.protocol.versions import LEGACY_VERSIONS, MODERN_VERSIONS
from mcpd.runtime import Runtime
from mcpd.tools import ToolAnnotations, ToolPack, ToolRegistry, load_pack
from mcpd.tools.pack import BUILTIN_PACKS
from tests.engine_harness import Peer, make_engine, text_of


def handler(ctx: Any, arguments: dict[str, Any]) -> str:
    return "ok"


def notes_pack() -> ToolPack:
    """Tools with every kind of hint, and one with none at all."""
    pack = ToolPack("notes", "Team notes.")
    pack.tool(
        "notes.read",
        title="Read notes",
        description="Read the notes.",
        annotations=ToolAnnotations(read_only=True),
    )(handler)
    pack.tool(
        "notes.add",
        description="Add a note.",
        annotations=ToolAnnotations(read_only=False, destructive=False),
    )(handler)
    pack.tool(
        "notes.purge",
        description="Delete every note.",
        annotations=ToolAnnotations(title="Purge", destructive=True),
        blocking=True,
    )(handler)
    pack.tool("notes.raw", description="No hints given.")(handler)
    return pack


class ServerPackTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = ToolRegistry([load_pack("server"), notes_pack()])
        self.runtime = Runtime(
            settings=Settings(toolsets=("server",), tool_pack=("tests.test_server_pack:notes",)),
            registry=self.registry,
            started=time.time() - 120,
            listeners=["tcp:8765:interface=127.0.0.1"],
            transports=["streamable-http", "stdio"],
        )
        self.peer = Peer(self, Engine(self.registry, stores={IRuntime: self.runtime}))
        self.peer.initialize()

    def structured(self, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        result = self.peer.call(name, arguments or {})
        self.assertFalse(result.get("isError", False), result)
        return result["structuredContent"]  # type: ignore[no-any-return]

    def names(self, **filters: Any) -> list[str]:
        listed = self.structured("server.tools", filters)
        self.assertEqual(listed["count"], len(listed["tools"]))
        return [row["name"] for row in listed["tools"]]

    def test_info(self) -> None:
        info = self.structured("server.info")
        self.assertEqual(info["name"], "mcpd")
        self.assertEqual(info["version"], __version__)
        self.assertGreaterEqual(info["uptime_seconds"], 120)
        self.assertEqual(info["protocol_versions"], {"legacy": list(LEGACY_VERSIONS), "modern": list(MODERN_VERSIONS)})
        self.assertEqual(info["transports"], ["streamable-http", "stdio"])
        self.assertEqual(info["listeners"], ["tcp:8765:interface=127.0.0.1"])
        self.assertEqual(info["toolsets"], ["server", "tests.test_server_pack:notes"])

    def test_tool_count_matches_the_registry(self) -> None:
        self.assertEqual(self.structured("server.info")["tool_count"], 7)
        self.assertEqual(len(self.names()), len(self.registry))

    def test_info_without_a_runtime_is_a_tool_error(self) -> None:
        peer = Peer(self, make_engine(load_pack("server")))
        peer.initialize()
        result = peer.call("server.info")
        self.assertTrue(result["isError"])
        self.assertIn("needs a running server", text_of(result))

    def test_audit_without_the_sql_store_says_so(self) -> None:
        result = self.peer.call("server.audit", {})
        self.assertTrue(result["isError"])
        self.assertIn("persisted in the SQL store, which this server does not run", text_of(result))

    def test_tools_lists_everything_sorted_with_packs_and_hints(self) -> None:
        rows = {row["name"]: row for row in self.structured("server.tools")["tools"]}
        self.assertEqual(list(rows), sorted(tool.name for tool in self.registry.tools))
        self.assertEqual(rows["server.info"]["pack"], "server")
        self.assertEqual(rows["server.info"]["title"], "Server information")
        self.assertEqual(rows["server.info"]["annotations"]["readOnlyHint"], True)
        purge = rows["notes.purge"]
        self.assertEqual((purge["pack"], purge["blocking"]), ("notes", True))
        self.assertEqual(purge["annotations"], {"title": "Purge", "destructiveHint": True})
        self.assertNotIn("title", purge)
        self.assertEqual(rows["notes.raw"]["annotations"], {})
        self.assertEqual(rows["notes.read"]["title"], "Read notes")

    def test_filter_by_name_and_pack(self) -> None:
        """``name`` (TOOLS.md) takes a part of the name or a glob of the whole name."""
        self.assertEqual(self.names(name="server."), ["server.audit", "server.info", "server.tools"])
        self.assertEqual(
            self.names(name="r"),
            ["notes.purge", "notes.raw", "notes.read", "server.audit", "server.info", "server.tools"],
        )
        self.assertEqual(self.names(name="notes.*"), ["notes.add", "notes.purge", "notes.raw", "notes.read"])
        self.assertEqual(self.names(name="*.r??"), ["notes.raw"])
        self.assertEqual(self.names(name="*.[ai]*"), ["notes.add", "server.audit", "server.info"])
        self.assertEqual(self.names(name="notes"), ["notes.add", "notes.purge", "notes.raw", "notes.read"])
        self.assertEqual(self.names(name="notes"), self.names(name="notes*"))
        self.assertEqual(self.names(name="otes"), self.names(name="*otes*"))
        self.assertEqual(self.names(name="otes.*"), [])  # a glob matches the whole name
        self.assertEqual(self.names(pack="notes"), ["notes.add", "notes.purge", "notes.raw", "notes.read"])
        self.assertEqual(self.names(pack="notes", name="add"), ["notes.add"])
        self.assertEqual(self.names(pack="nothing"), [])
        result = self.peer.call("server.tools", {"name": "*" * 129})
        self.assertTrue(result["isError"])
        self.assertIn("name", text_of(result))

    def test_match_is_still_the_name_filter_and_name_wins(self) -> None:
        """``match``, the filter's earlier name, was in the tool's description: still accepted."""
        self.assertEqual(self.names(match="server."), ["server.audit", "server.info", "server.tools"])
        self.assertEqual(self.names(match="notes.*"), self.names(name="notes.*"))
        self.assertEqual(self.names(pack="notes", match="add"), ["notes.add"])
        self.assertEqual(self.names(name="server.info", match="notes."), ["server.info"])

    def test_filter_by_read_only(self) -> None:
        self.assertEqual(self.names(read_only=True), ["notes.read", "server.audit", "server.info", "server.tools"])
        # readOnlyHint defaults to false (2025-11-25 schema, ToolAnnotations).
        self.assertEqual(self.names(read_only=False), ["notes.add", "notes.purge", "notes.raw"])

    def test_filter_by_destructive_uses_the_spec_defaults(self) -> None:
        # destructiveHint defaults to true and means nothing for read-only tools: a tool that
        # says nothing may destroy, one that only reads never does.
        self.assertEqual(self.names(destructive=True), ["notes.purge", "notes.raw"])
        self.assertEqual(
            self.names(destructive=False), ["notes.add", "notes.read", "server.audit", "server.info", "server.tools"]
        )
        self.assertEqual(self.names(destructive=False, read_only=False), ["notes.add"])

    def test_unknown_filters_are_refused(self) -> None:
        result = self.peer.call("server.tools", {"writable": True})
        self.assertTrue(result["isError"])
        self.assertIn("writable", text_of(result))
        result = self.peer.call("server.tools", {"read_only": "yes"})
        self.assertTrue(result["isError"])
        self.assertIn("read_only", text_of(result))


def example_call(description: str) -> Any:
    """The arguments of the one example call in a tool's description (``Example: {...}``)."""
    head, marker, tail = description.partition("Example: ")
    if not marker or "Example: " in tail:
        raise ValueError(f"not one 'Example: ' in {description!r}")
    return json.JSONDecoder().raw_decode(tail)[0]


class BuiltinToolsTests(SynchronousTestCase):
    """Every built-in tool, as tools/list describes it (/work/shared/TOOLS.md: 37 tools in 7 packs)."""

    def setUp(self) -> None:
        self.registry = ToolRegistry([load_pack(name) for name in BUILTIN_PACKS])

    def test_every_description_has_one_example_call_its_schema_accepts(self) -> None:
        """TOOLS.md: "a description a model can act on (one example call in it)"."""
        descriptors = [tool.descriptor for tool in self.registry.tools]
        self.assertEqual(len(descriptors), 37)
        problems: dict[str, list[str]] = {}
        for descriptor in descriptors:
            try:
                arguments = example_call(descriptor["description"])
            except ValueError as e:
                problems[descriptor["name"]] = [str(e)]
                continue
            errors = [e.message for e in Draft202012Validator(descriptor["inputSchema"]).iter_errors(arguments)]
            if errors:
                problems[descriptor["name"]] = errors
        self.assertEqual(problems, {})

    def test_the_server_examples_answer(self) -> None:
        """server.info's and server.tools' examples, called on a server running every pack."""
        runtime = Runtime(settings=Settings(toolsets=tuple(BUILTIN_PACKS)), registry=self.registry, started=time.time())
        peer = Peer(self, Engine(self.registry, stores={IRuntime: runtime}))
        peer.initialize()
        descriptions = {tool.name: tool.description for tool in self.registry.tools}
        for name in ("server.info", "server.tools"):
            result = peer.call(name, example_call(descriptions[name]))
            self.assertFalse(result.get("isError", False), result)
        listed = peer.call("server.tools", {"name": "cache.*"})["structuredContent"]
        self.assertEqual(
            [row["name"] for row in listed["tools"]],
            ["cache.delete", "cache.get", "cache.incr", "cache.scan", "cache.set"],
        )


class ServerPackResourcesTests(SynchronousTestCase):
    """server.info as a resource, and the server.tour prompt."""

    def test_declared(self) -> None:
        from mcpd.packs.server import pack

        self.assertEqual([r.uri for r in pack.resources], ["mcpd://server/info"])
        self.assertEqual([p.name for p in pack.prompts], ["server.tour"])
