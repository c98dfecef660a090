"""Tests for `mcpd.security.scopes`: which tools, resources, templates and prompts a key's scopes open."""

from __future__ import annotations

import itertools
import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from mcpd.protocol.versions import LATEST_LEGACY
from mcpd.security.scopes import ADMIN, READ, WRITE, ScopePolicy, tool_level
from mcpd.tools.api import Caller, Tool, ToolAnnotations
from mcpd.tools.pack import ToolPack, ToolRegistry
from tests.daemon import DaemonTestCase


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
        notes.add(_tool("notes.get", ToolAnnotations(read_only=True)))

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


def _records_packs() -> list[ToolPack]:
    """Two data packs: ``notes`` (a read tool, a write tool, a resource, a template with
    completions, a prompt with completions) and ``cache`` (a read tool, nothing else)."""
    from mcpd.tools.prompts import PromptArgument

    notes = ToolPack("notes", "Notes, one of them secret.")
    notes.add(_tool("notes.get", ToolAnnotations(read_only=True)))
    notes.add(_tool("notes.add", ToolAnnotations(read_only=False, destructive=False)))
    notes.add(_tool("notes.drop", ToolAnnotations(destructive=True)))

    @notes.resource("notes://index", name="index")
    def index(ctx: Any, uri: str) -> str:
        return "n1"

    @notes.resource_template("note://{id}", name="note", completions={"id": lambda ctx, value, resolved: ["n1"]})
    def note(ctx: Any, uri: str, variables: dict[str, str]) -> str:
        return f"the secret of {variables['id']}"

    @notes.prompt(
        "notes.digest",
        arguments=[PromptArgument("id", complete=lambda ctx, value, resolved: ["n1"])],
    )
    def digest(ctx: Any, arguments: dict[str, str]) -> str:
        return "the secret of n1"

    cache = ToolPack("cache", "Values under keys.")
    cache.add(_tool("cache.get", ToolAnnotations(read_only=True)))
    return [notes, cache]


class PackEntryScopeTests(SynchronousTestCase):
    """A key's scopes bound what it can read: a pack's resources, templates, prompts and
    completions are open only to a key that may call one of the pack's read-only tools; to
    another they are unknown, in every list and every request that names one."""

    NOTE = "note://n1"

    def setUp(self) -> None:
        from mcpd.protocol.engine import Engine

        registry = ToolRegistry(_records_packs())
        self.policy = ScopePolicy(registry)
        self.engine = Engine(registry, tool_filter=self.policy, entry_filter=self.policy.allows_entry)

    def peer(self, *scopes: str, modern: bool = False, caller: Caller | None = None) -> Any:
        from tests.engine_harness import Peer

        caller = caller if caller is not None else Caller("k", frozenset(scopes))
        if modern:
            return Peer(self, self.engine, modern=True, caller=caller)
        peer = Peer(self, self.engine, caller=caller)
        peer.initialize()
        return peer

    def listen(self, peer: Any, uri: str) -> dict[str, Any]:
        """subscriptions/listen's error, or ``{"listening": True}`` once it was acknowledged."""
        message = peer.message("subscriptions/listen", {"notifications": {"resourceSubscriptions": [uri]}})
        d = peer.start(message)
        acknowledged = [n for n in peer.notes if n["method"] == "notifications/subscriptions/acknowledged"]
        if acknowledged:  # a stream until the client goes away
            self.assertEqual(acknowledged[0]["params"]["notifications"], {"resourceSubscriptions": [uri]})
            d.cancel()
            self.successResultOf(d)
            return {"listening": True}
        response: dict[str, Any] = self.successResultOf(d)
        peer.check(message, response)
        return response

    def assertUnknown(self, response: dict[str, Any], unknown: dict[str, Any], name: str, like: str) -> None:
        """``response`` is the error of an unknown entry ``like`` (named ``name`` in the answer)."""
        self.assertNotIn("result", response)
        self.assertEqual(response["error"], _renamed(unknown["error"], like, name))

    def test_another_packs_tool_opens_none_of_it(self) -> None:
        for scopes in [("cache.get",), ("cache",), ("notes.add",), ("notes.drop",)]:
            for modern in (False, True):
                with self.subTest(scopes=scopes, modern=modern):
                    self.assertSeesNothing(self.peer(*scopes, modern=modern))

    def assertSeesNothing(self, peer: Any) -> None:
        self.assertEqual(peer.result("resources/list")["resources"], [])
        self.assertEqual(peer.result("resources/templates/list")["resourceTemplates"], [])
        self.assertEqual(peer.result("prompts/list")["prompts"], [])
        for uri in (self.NOTE, "notes://index"):
            # Reading, subscribing to or listening for one: resources/read's "Resource not found".
            unknown = peer.request("resources/read", {"uri": "nowhere://n1"})
            self.assertUnknown(peer.request("resources/read", {"uri": uri}), unknown, uri, "nowhere://n1")
            if peer.modern:
                self.assertUnknown(self.listen(peer, uri), unknown, uri, "nowhere://n1")
            else:
                self.assertUnknown(peer.request("resources/subscribe", {"uri": uri}), unknown, uri, "nowhere://n1")
                self.assertEqual(peer.session.subscriptions, {})
        template = {"type": "ref/resource", "uri": "note://{id}"}
        unknown = peer.request(
            "completion/complete",
            {"ref": {"type": "ref/resource", "uri": "nowhere://{id}"}, "argument": {"name": "id", "value": ""}},
        )
        self.assertUnknown(
            peer.request("completion/complete", {"ref": template, "argument": {"name": "id", "value": ""}}),
            unknown,
            "note://{id}",
            "nowhere://{id}",
        )
        fixed = {"type": "ref/resource", "uri": "notes://index"}
        self.assertUnknown(
            peer.request("completion/complete", {"ref": fixed, "argument": {"name": "id", "value": ""}}),
            unknown,
            "notes://index",
            "nowhere://{id}",
        )
        unknown = peer.request("prompts/get", {"name": "nowhere.digest", "arguments": {"id": "n1"}})
        self.assertUnknown(
            peer.request("prompts/get", {"name": "notes.digest", "arguments": {"id": "n1"}}),
            unknown,
            "notes.digest",
            "nowhere.digest",
        )
        unknown = peer.request(
            "completion/complete",
            {"ref": {"type": "ref/prompt", "name": "nowhere.digest"}, "argument": {"name": "id", "value": ""}},
        )
        self.assertUnknown(
            peer.request(
                "completion/complete",
                {"ref": {"type": "ref/prompt", "name": "notes.digest"}, "argument": {"name": "id", "value": ""}},
            ),
            unknown,
            "notes.digest",
            "nowhere.digest",
        )

    def test_a_read_tool_of_the_pack_opens_it(self) -> None:
        for scopes in [("notes.get",), ("notes",), (READ,), (WRITE,), (ADMIN,), ("cache.get", "notes.get")]:
            for modern in (False, True):
                with self.subTest(scopes=scopes, modern=modern):
                    self.assertSeesAll(self.peer(*scopes, modern=modern))

    def assertSeesAll(self, peer: Any) -> None:
        self.assertEqual([r["uri"] for r in peer.result("resources/list")["resources"]], ["notes://index"])
        templates = peer.result("resources/templates/list")["resourceTemplates"]
        self.assertEqual([t["uriTemplate"] for t in templates], ["note://{id}"])
        self.assertEqual([p["name"] for p in peer.result("prompts/list")["prompts"]], ["notes.digest"])
        read = peer.result("resources/read", {"uri": self.NOTE})
        self.assertEqual(read["contents"][0]["text"], "the secret of n1")
        if peer.modern:
            self.assertEqual(self.listen(peer, self.NOTE), {"listening": True})
        else:
            self.assertEqual(peer.result("resources/subscribe", {"uri": self.NOTE}), {})
            self.assertEqual(list(peer.session.subscriptions), [self.NOTE])
        template = {"type": "ref/resource", "uri": "note://{id}"}
        completed = peer.result("completion/complete", {"ref": template, "argument": {"name": "id", "value": ""}})
        self.assertEqual(completed["completion"]["values"], ["n1"])
        prompt = {"type": "ref/prompt", "name": "notes.digest"}
        completed = peer.result("completion/complete", {"ref": prompt, "argument": {"name": "id", "value": ""}})
        self.assertEqual(completed["completion"]["values"], ["n1"])
        got = peer.result("prompts/get", {"name": "notes.digest", "arguments": {"id": "n1"}})
        self.assertIn("the secret of n1", str(got["messages"]))

    def test_the_answer_is_kept_per_scopes_and_pack(self) -> None:
        [note] = self.policy.registry.templates
        one, same = Caller("a", frozenset({"cache.get"})), Caller("b", frozenset({"cache.get"}))
        self.assertFalse(self.policy.allows_entry(one, note))
        self.assertEqual(self.policy._opens, {(frozenset({"cache.get"}), "notes"): False})
        self.assertFalse(self.policy.allows_entry(same, note))
        self.assertTrue(self.policy.allows_entry(Caller("c", frozenset({"notes.get"})), note))
        self.assertEqual(len(self.policy._opens), 2)


class KeylessEntryTests(SynchronousTestCase):
    """Without keys (no scope policy: the stdio user, a keyless daemon) every pack is open."""

    def test_everything_is_open(self) -> None:
        from mcpd.protocol.engine import Engine
        from tests.engine_harness import Peer

        engine = Engine(ToolRegistry(_records_packs()))
        for caller in (Caller(name="local", peer="stdio", transport="stdio"), Caller(peer="127.0.0.1")):
            peer = Peer(self, engine, modern=True, caller=caller)
            self.assertEqual(
                [t["uriTemplate"] for t in peer.result("resources/templates/list")["resourceTemplates"]],
                ["note://{id}"],
            )
            self.assertEqual([p["name"] for p in peer.result("prompts/list")["prompts"]], ["notes.digest"])
            read = peer.result("resources/read", {"uri": "note://n1"})
            self.assertEqual(read["contents"][0]["text"], "the secret of n1")


def _renamed(error: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """``error`` with every mention of ``old`` (in its message and data) made ``new``."""
    return json.loads(json.dumps(error).replace(old, new))  # type: ignore[no-any-return]


class _Door:
    """One way into a real daemon for one key: ``ask(method, params)`` gives the response."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.auth = {"Authorization": f"Bearer {key}"}
        self.ids = itertools.count(1)

    def close(self) -> None:
        """Let go of what the door holds open."""

    def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def initialize(self) -> None:
        self.ask(
            "initialize",
            {"protocolVersion": LATEST_LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
        )
        self.tell("notifications/initialized")

    def tell(self, method: str) -> None:
        raise NotImplementedError


class _ModernHTTP(_Door):
    """2026-07-28 over POST /mcp: every request on its own, with its `_meta` envelope."""

    def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        from tests.daemon import modern_request, post

        body, headers = modern_request(next(self.ids), method, params)
        if "uri" in params:
            headers["mcp-name"] = params["uri"]
        # 2026-07-28 basic/transports: an error answer may come with a 4xx status; the body tells.
        _status, head, data = post(self.port, body, {**headers, **self.auth})
        return _one_answer(head.get("content-type", ""), data)


class _LegacyHTTP(_Door):
    """2025-11-25 Streamable HTTP: a session opened by initialize."""

    def __init__(self, port: int, key: str) -> None:
        super().__init__(port, key)
        self.session: dict[str, str] = {}
        self.initialize()

    def _post(self, message: dict[str, Any]) -> tuple[int, Any, bytes]:
        from tests.daemon import post

        return post(self.port, message, {**self.auth, **self.session})

    def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        status, head, data = self._post({"jsonrpc": "2.0", "id": next(self.ids), "method": method, "params": params})
        assert status == 200, (status, data)
        if method == "initialize":
            self.session = {"mcp-session-id": head["mcp-session-id"], "mcp-protocol-version": LATEST_LEGACY}
        return _one_answer(head.get("content-type", ""), data)

    def tell(self, method: str) -> None:
        status, _, data = self._post({"jsonrpc": "2.0", "method": method})
        assert status == 202, (status, data)


class _LegacySSE(_Door):
    """2024-11-05 HTTP+SSE: GET /sse, POSTs to its endpoint, answers on the stream."""

    def __init__(self, port: int, key: str) -> None:
        from tests.clients import RawSSE

        super().__init__(port, key)
        self.stream = RawSSE(port, headers=self.auth)
        self.initialize()

    def close(self) -> None:
        self.stream.close()

    def _post(self, message: dict[str, Any]) -> None:
        from tests.clients import fetch

        headers = {"Content-Type": "application/json", **self.auth}
        status, _, data = fetch(self.port, "POST", self.stream.endpoint, json.dumps(message).encode(), headers)
        assert status == 202, (status, data)

    def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._post({"jsonrpc": "2.0", "id": next(self.ids), "method": method, "params": params})
        answer: dict[str, Any] = json.loads(self.stream.next_event()["data"])
        return answer

    def tell(self, method: str) -> None:
        self._post({"jsonrpc": "2.0", "method": method})


class _WebSocket(_Door):
    """/ws, subprotocol mcp, the key in the upgrade request."""

    def __init__(self, port: int, key: str) -> None:
        import socket

        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection, Request

        super().__init__(port, key)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.ws = WSConnection(ConnectionType.CLIENT)
        headers = [(name.lower().encode(), value.encode()) for name, value in self.auth.items()]
        request = Request(host="127.0.0.1", target="/ws", subprotocols=["mcp"], extra_headers=headers)
        self.sock.sendall(self.ws.send(request))
        self.pending: list[Any] = []
        # What the server sent unasked while an answer was awaited.
        self.heard: list[dict[str, Any]] = []
        [accepted] = self._events()
        assert isinstance(accepted, AcceptConnection), accepted
        self.initialize()

    def close(self) -> None:
        self.sock.close()

    def _events(self) -> list[Any]:
        while not self.pending:
            self.ws.receive_data(self.sock.recv(65536))
            self.pending.extend(self.ws.events())
        events, self.pending = self.pending, []
        return events

    def _send(self, message: dict[str, Any]) -> None:
        from wsproto.events import Message

        self.sock.sendall(self.ws.send(Message(data=json.dumps(message))))

    def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        from wsproto.events import TextMessage

        request_id = next(self.ids)
        self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        while True:
            for event in self._events():
                assert isinstance(event, TextMessage), event
                message: dict[str, Any] = json.loads(event.data)
                if message.get("id") == request_id:
                    return message
                self.heard.append(message)

    def tell(self, method: str) -> None:
        self._send({"jsonrpc": "2.0", "method": method})

    def next_message(self) -> dict[str, Any]:
        """The next message the server sends unasked."""
        from wsproto.events import TextMessage

        [event, *self.pending] = self._events()
        assert isinstance(event, TextMessage), event
        message: dict[str, Any] = json.loads(event.data)
        return message


def _one_answer(content_type: str, data: bytes) -> dict[str, Any]:
    """The JSON-RPC answer in a POST's body, JSON or an event stream."""
    if content_type.startswith("text/event-stream"):
        lines = [line for line in data.decode().splitlines() if line.startswith("data:")]
        data = lines[-1][len("data:") :].encode()
    answer: dict[str, Any] = json.loads(data)
    return answer


class DoorScopeTests(DaemonTestCase):
    """Through every door of a real daemon with the notes pack: a key scoped to ``cache.get``
    neither sees nor reads nor subscribes to nor completes a note; a key scoped to ``notes``
    does."""

    DOORS = (_ModernHTTP, _LegacyHTTP, _LegacySSE, _WebSocket)

    def test_every_door(self) -> Deferred[None]:
        keys = self.workdir / "keys.txt"
        keys.write_text("carol:carol-key:notes\ndave:dave-key:cache.get\n", encoding="utf-8")
        daemon = self.start_daemon("--api-key-file", str(keys), "--toolsets", "notes,cache", fixture_pack=False)
        assert daemon.port is not None
        port = daemon.port

        def check() -> None:
            saved = _ModernHTTP(port, "carol-key").ask(
                "tools/call", {"name": "note.save", "arguments": {"title": "Plan", "body": "the secret plan"}}
            )
            note_id = saved["result"]["structuredContent"]["note"]["id"]
            uri = f"note://{note_id}"
            for door in self.DOORS:
                for key, opened in (("dave-key", False), ("carol-key", True)):
                    client = door(port, key)
                    try:
                        self.assertDoor(client, uri, opened, f"{door.__name__} {key}")
                    finally:
                        client.close()

        return self.in_thread(check)

    def assertDoor(self, client: _Door, uri: str, opened: bool, where: str) -> None:
        templates = client.ask("resources/templates/list", {})["result"]["resourceTemplates"]
        self.assertEqual([t["uriTemplate"] for t in templates], ["note://{id}"] if opened else [], where)
        read = client.ask("resources/read", {"uri": uri})
        completion = {"ref": {"type": "ref/resource", "uri": "note://{id}"}, "argument": {"name": "id", "value": ""}}
        completed = client.ask("completion/complete", completion)
        if opened:
            self.assertIn("the secret plan", read["result"]["contents"][0]["text"], where)
            self.assertIn(uri.removeprefix("note://"), completed["result"]["completion"]["values"], where)
        else:
            self.assertEqual(
                read["error"], {"code": -32602, "message": f"Resource not found: {uri}", "data": {"uri": uri}}, where
            )
            self.assertNotIn("secret", json.dumps(read), where)
            self.assertEqual(completed["error"]["message"], "Unknown resource template: note://{id}", where)
        if isinstance(client, _ModernHTTP):
            return
        subscribed = client.ask("resources/subscribe", {"uri": uri})
        if opened:
            self.assertEqual(subscribed["result"], {}, where)
        else:
            self.assertEqual(subscribed["error"], read["error"], where)


class RescopeNoticeTests(SynchronousTestCase):
    """A key's new scopes (a reload) change what it may list: its legacy sessions hear
    ``notifications/{tools,prompts,resources}/list_changed``, its modern streams the kinds they
    asked for; other keys' hear nothing."""

    def test_the_keys_sessions_and_streams_are_told(self) -> None:
        from mcpd.protocol.engine import Engine
        from tests.engine_harness import Peer

        registry = ToolRegistry(_records_packs())
        policy = ScopePolicy(registry)
        engine = Engine(registry, tool_filter=policy, entry_filter=policy.allows_entry)
        dave = Caller("dave", frozenset({"cache.get"}), account="key:dave")
        carol = Caller("carol", frozenset({"notes"}), account="key:carol")
        peers = {}
        for caller in (dave, carol):
            legacy = Peer(self, engine, caller=caller)
            assert legacy.session is not None
            legacy.session.account = caller.account  # as `SessionStore.open` sets it
            legacy.session.sink = legacy.notes.append  # its standalone stream
            legacy.initialize()
            modern = Peer(self, engine, modern=True, caller=caller)
            wanted = {"toolsListChanged": True, "promptsListChanged": True}
            self.assertNoResult(modern.start(modern.message("subscriptions/listen", {"notifications": wanted})))
            peers[caller.name] = (legacy, modern)
        for legacy, modern in peers.values():
            del legacy.notes[:], modern.notes[:]

        engine.ledger.rescope("key:dave", frozenset({"notes"}), False)

        legacy, modern = peers["dave"]
        self.assertEqual(
            [note["method"] for note in legacy.notes],
            [f"notifications/{kind}/list_changed" for kind in ("tools", "prompts", "resources")],
        )
        self.assertEqual(
            [note["method"] for note in modern.notes],
            ["notifications/tools/list_changed", "notifications/prompts/list_changed"],
        )
        self.assertTrue(all(note["params"]["_meta"] for note in modern.notes))  # tagged with the listen
        self.assertEqual([*peers["carol"][0].notes, *peers["carol"][1].notes], [])

    def test_a_key_that_lost_a_pack_stops_following_its_records(self) -> None:
        from mcpd.protocol.engine import Engine
        from mcpd.protocol.ledger import SUBSCRIPTION
        from tests.engine_harness import Peer

        registry = ToolRegistry(_records_packs())
        policy = ScopePolicy(registry)
        engine = Engine(registry, tool_filter=policy, entry_filter=policy.allows_entry)
        dave = Caller("dave", frozenset({"notes"}), account="key:dave")
        legacy = Peer(self, engine, caller=dave)
        assert legacy.session is not None
        legacy.session.account = dave.account
        legacy.session.sink = legacy.notes.append
        legacy.initialize()
        self.assertEqual(legacy.result("resources/subscribe", {"uri": "note://n1"}), {})
        self.assertEqual(legacy.result("resources/subscribe", {"uri": "nowhere://n1"}), {})
        modern = Peer(self, engine, modern=True, caller=dave)
        wanted = {"resourceSubscriptions": ["note://n1", "nowhere://n1"]}
        self.assertNoResult(modern.start(modern.message("subscriptions/listen", {"notifications": wanted})))
        self.assertEqual(engine.ledger.held("key:dave", SUBSCRIPTION), 4)

        engine.ledger.rescope("key:dave", frozenset({"cache.get"}), True)
        del legacy.notes[:], modern.notes[:]
        for uri in ("note://n1", "nowhere://n1"):
            engine.changes.resource_updated(uri)

        # What the new scopes hide is no longer followed, the rest is; the listen, a call in
        # flight under the old grant, was cancelled with the others.
        self.assertEqual(list(legacy.session.subscriptions), ["nowhere://n1"])
        self.assertEqual(engine.ledger.held("key:dave", SUBSCRIPTION), 1)
        self.assertEqual([note["params"]["uri"] for note in legacy.notes], ["nowhere://n1"])
        self.assertEqual(modern.notes, [])


class ReloadNoticeTests(DaemonTestCase):
    """A SIGHUP that changes a key's scopes tells its open WebSocket and /sse sessions that its
    lists changed."""

    def test_a_rescoped_key_hears_its_lists_changed(self) -> Deferred[None]:
        import signal
        import time

        keys = self.workdir / "keys.txt"
        keys.write_text("carol:carol-key:notes\ndave:dave-key:cache.get\n", encoding="utf-8")
        daemon = self.start_daemon("--api-key-file", str(keys), "--toolsets", "notes,cache", fixture_pack=False)
        assert daemon.port is not None
        port = daemon.port
        lists = [f"notifications/{kind}/list_changed" for kind in ("tools", "prompts", "resources")]

        def check() -> None:
            ws, sse, other = _WebSocket(port, "dave-key"), _LegacySSE(port, "dave-key"), _WebSocket(port, "carol-key")
            try:
                keys.write_text("carol:carol-key:notes\ndave:dave-key:notes\n", encoding="utf-8")
                daemon.process.send_signal(signal.SIGHUP)
                self.assertEqual([ws.next_message()["method"] for _ in lists], lists)
                self.assertEqual([json.loads(sse.stream.next_event()["data"])["method"] for _ in lists], lists)
                deadline = time.monotonic() + 5
                while "Reloaded 2 API key" not in daemon.log("stdout") and time.monotonic() < deadline:
                    time.sleep(0.05)
                # Listing again shows what the new scopes open; carol, unchanged, heard nothing.
                templates = ws.ask("resources/templates/list", {})["result"]["resourceTemplates"]
                self.assertEqual([t["uriTemplate"] for t in templates], ["note://{id}"])
                self.assertEqual(other.ask("ping", {}), {"jsonrpc": "2.0", "id": 2, "result": {}})
                self.assertEqual(other.heard, [])
            finally:
                for door in (ws, sse, other):
                    door.close()

        return self.in_thread(check)
