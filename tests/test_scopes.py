"""Tests for `mcpd.security.scopes`: which tools a key's scopes allow."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mcpd.security.scopes import ADMIN, READ, WRITE, ScopePolicy, tool_level
from mcpd.tools.api import Caller, Tool, ToolAnnotations
from mcpd.tools.pack import ToolPack, ToolRegistry


def _handler(ctx: Any, arguments: dict[str, Any]) -> str:
    return "ok"


def _tool(name: str, annotations: ToolAnnotations | None) -> Tool:
    return Tool(name=name, description=name, handler=_handler, annotations=annotations)


class ScopeTests(SynchronousTestCase):
    def setUp(self) -> None:
        notes = ToolPack("notes")
        self.read = notes.add(_tool("notes.get", ToolAnnotations(read_only=True)))
        self.write = notes.add(_tool("notes.add", ToolAnnotations(read_only=False, destructive=False)))
        self.delete = notes.add(_tool("notes.drop", ToolAnnotations(destructive=True)))
        self.plain = notes.add(_tool("notes.plain", None))
        server = ToolPack("server")
        self.info = server.add(_tool("server.info", ToolAnnotations(read_only=True)))
        self.registry = ToolRegistry([notes, server])
        self.policy = ScopePolicy(self.registry)

    def allowed(self, *scopes: str) -> set[str]:
        caller = Caller(name="k", scopes=frozenset(scopes))
        return {tool.name for tool in self.registry.tools if self.policy(caller, tool)}

    def test_levels(self) -> None:
        self.assertEqual(tool_level(self.read, "notes"), READ)
        self.assertEqual(tool_level(self.write, "notes"), WRITE)
        self.assertEqual(tool_level(self.delete, "notes"), ADMIN)
        # MCP: a tool that does not say otherwise may be destructive.
        self.assertEqual(tool_level(self.plain, "notes"), ADMIN)
        self.assertEqual(tool_level(self.info, "server"), ADMIN)

    def test_read(self) -> None:
        self.assertEqual(self.allowed(READ), {"notes.get"})

    def test_write_includes_read(self) -> None:
        self.assertEqual(self.allowed(WRITE), {"notes.get", "notes.add"})

    def test_admin_is_everything(self) -> None:
        self.assertEqual(self.allowed(ADMIN), {tool.name for tool in self.registry.tools})

    def test_explicit_tools_and_toolsets(self) -> None:
        self.assertEqual(self.allowed("notes.drop"), {"notes.drop"})
        self.assertEqual(self.allowed("server"), {"server.info"})
        self.assertEqual(self.allowed(READ, "notes.plain"), {"notes.get", "notes.plain"})

    def test_no_scopes_nothing(self) -> None:
        self.assertEqual(self.allowed(), set())
        self.assertEqual(self.allowed("unknown"), set())


class EntryScopeTests(SynchronousTestCase):
    """Resources, templates and prompts of the admin packs are hidden from other keys, in lists
    and when asked for by name, exactly as an unknown one would be."""

    def setUp(self) -> None:
        from mcpd.protocol.engine import Engine
        from mcpd.tools.pack import load_pack
        from tests.engine_harness import Peer

        notes = ToolPack("notes", "A pack anyone may read.")

        @notes.resource("notes://today", name="today")
        def today(ctx: Any, uri: str) -> str:
            return "nothing planned"

        registry = ToolRegistry([load_pack("server"), notes])
        policy = ScopePolicy(registry)
        self.engine = Engine(registry, tool_filter=policy, entry_filter=policy.allows_entry)
        self.peer_for = lambda *scopes: Peer(self, self.engine, modern=True, caller=Caller("k", frozenset(scopes)))

    def test_a_read_key_sees_only_other_packs(self) -> None:
        from mcpd.protocol.errors import INVALID_PARAMS

        peer = self.peer_for(READ)
        listed = peer.result("resources/list")
        self.assertEqual([r["uri"] for r in listed["resources"]], ["notes://today"])
        self.assertEqual(listed["cacheScope"], "private")
        self.assertEqual(peer.result("prompts/list")["prompts"], [])
        self.assertEqual(peer.request("resources/read", {"uri": "mcpd://server/info"})["error"]["code"], INVALID_PARAMS)
        self.assertEqual(peer.request("prompts/get", {"name": "server.tour"})["error"]["code"], INVALID_PARAMS)
        self.assertEqual(
            peer.result("resources/read", {"uri": "notes://today"})["contents"][0]["text"], "nothing planned"
        )

    def test_an_admin_key_sees_everything(self) -> None:
        peer = self.peer_for(ADMIN)
        uris = [r["uri"] for r in peer.result("resources/list")["resources"]]
        self.assertEqual(sorted(uris), ["mcpd://server/info", "notes://today"])
        self.assertEqual([p["name"] for p in peer.result("prompts/list")["prompts"]], ["server.tour"])
