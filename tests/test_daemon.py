"""Tests for mcpd.daemon: the production service tree, built from `Settings` on a memory reactor,
serves a tool call through every layer (capacity factory, gate, Site, Streamable HTTP, engine)."""

from __future__ import annotations

import json
import queue
import time
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface

from mcpd.config import ConfigError, resolve
from mcpd.daemon import build_service, check_settings, load_packs
from mcpd.protocol.engine import Engine
from mcpd.protocol.vocabulary import REQUEST_METHODS
from mcpd.services import EngineService, ListenerService
from mcpd.tools import ToolPack, ToolRegistry
from tests.http_harness import modern_headers, modern_request, parse_response

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
HOST = IPv4Address("TCP", "127.0.0.1", 8765)


class ThreadedMemoryReactor(MemoryReactorClock):
    """A memory reactor the SQL store's threads can hand results back to (the real reactor's
    ``callFromThread``): they run at the next `advance`."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        self.from_threads.put((f, args, kwargs))

    def advance(self, amount: float) -> None:
        while not self.from_threads.empty():
            f, args, kwargs = self.from_threads.get()
            f(*args, **kwargs)
        super().advance(amount)


class ProductionTreeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = ThreadedMemoryReactor()

    def start(self, **flags: Any) -> Any:
        # The default toolsets include the packs on the SQL store: its SQLite file goes here.
        flags.setdefault("data_dir", self.mktemp())
        root = build_service(resolve(flags, {}, {}), self.reactor)
        root.privilegedStartService()
        root.startService()
        self.addCleanup(self.stop, root)
        self.reactor.advance(0)  # ready once the tree has started
        return root

    def stop(self, root: Any) -> None:
        d = root.stopService()
        for _ in range(200):  # the drain and the pool's joiner poll on the clock
            if d.called:
                break
            self.reactor.advance(0.05)
            time.sleep(0.005)  # the audit writer's last flush runs in the store's thread
        self.successResultOf(d)

    def connect(self) -> tuple[Any, StringTransport]:
        [(port, factory, _backlog, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (8765, "127.0.0.1"))
        protocol = factory.buildProtocol(PEER)
        transport = StringTransport(hostAddress=HOST, peerAddress=PEER)
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        return protocol, transport

    def test_the_tree_starts_in_order(self) -> None:
        root = self.start()
        names = [service.name for service in root]
        self.assertEqual(
            names,
            [
                "heap-freeze",
                "thread-pool",
                "database",  # the SQL store of the packs, before the engine
                "milvus",  # the search index of the kb and memory packs (connects on first use)
                "reindexer",  # catches the index up with SQL
                "audit-writer",  # the audit trail into the SQL store: flushed before it stops
                "engine",
                "sessions",
                "sse-sessions",
                "reload",
                "health-checks",
                None,  # the drain
                "listener tcp:8765:interface=127.0.0.1",
                None,  # readiness
            ],
        )

    def test_a_tool_call_is_served_through_every_layer(self) -> None:
        self.start()
        protocol, transport = self.connect()
        body = json.dumps(modern_request("tools/call", {"name": "server.info", "arguments": {}})).encode()
        headers = "".join(f"{name}: {value}\r\n" for name, value in modern_headers("tools/call", "server.info").items())
        protocol.dataReceived(
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:8765\r\nAccept: application/json, text/event-stream\r\n"
            b"Content-Type: application/json\r\n"
            + headers.encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        response = parse_response(transport.value())
        self.assertEqual(response.status, 200, response.body)
        self.assertIn("x-request-id", response.headers)
        result = response.json()["result"]
        self.assertEqual(result["resultType"], "complete")
        info = result["structuredContent"]
        self.assertEqual(info["transports"], ["streamable-http", "legacy-sse", "websocket"])
        [listener] = info["listeners"]  # the memory reactor's port has no real address
        self.assertTrue(listener.endswith(":8765/mcp"), listener)

    def test_the_engine_gets_its_collaborators_when_it_is_made(self) -> None:
        root = self.start(api_key=["k"], tool_timeout="5")
        engine = next(service for service in root if isinstance(service, EngineService)).engine
        self.assertIsNotNone(engine.tool_filter)
        self.assertIsNotNone(engine.entry_filter)
        self.assertEqual(engine.tool_timeout, 5.0)
        self.assertEqual(len(engine.observers), 3)  # statistics, metrics, audit

    def test_stdio_is_a_shorter_tree(self) -> None:
        root = build_service(resolve({}, {}, {}, stdio=True), self.reactor)
        self.assertEqual(
            [s.name for s in root],
            # The SQL store (and the knowledge store on it) opens in the background under --stdio;
            # the audit writer waits for it, and what it has left at exit opens it.
            ["heap-freeze", "thread-pool", "database", "audit-writer", "open-at-exit", "engine", "stdio", None, None],
        )
        self.assertFalse(any(isinstance(s, ListenerService) for s in root))


class CheckTests(SynchronousTestCase):
    def test_an_unknown_toolset_is_one_config_error(self) -> None:
        error = self.assertRaises(ConfigError, load_packs, resolve({"toolsets": "nope"}, {}, {}))
        self.assertIn("unknown toolset 'nope'", str(error))

    def test_an_unreadable_key_file_is_one_config_error(self) -> None:
        settings = resolve({"api_key_file": self.mktemp()}, {}, {})
        error = self.assertRaises(ConfigError, check_settings, settings, MemoryReactorClock())
        self.assertIn("cannot read it", str(error))


class VocabularyTests(SynchronousTestCase):
    def test_the_metrics_vocabulary_is_what_the_engine_serves(self) -> None:
        self.assertEqual(Engine(ToolRegistry()).methods, REQUEST_METHODS)


class INowhere(Interface):
    """A store no daemon here provides."""


needy_pack = ToolPack("needy", "Needs a store that is not configured.", needs=(INowhere,))


class PackStoreTests(SynchronousTestCase):
    def test_a_pack_whose_store_is_not_configured_stops_start_up_in_one_line(self) -> None:
        settings = resolve({"tool_pack": ["tests.test_daemon:needy_pack"]}, {}, {})
        error = self.assertRaises(ConfigError, load_packs, settings)
        self.assertEqual(
            str(error),
            "tool pack 'needy' needs INowhere, which this server is not configured to provide (see README, Stores)",
        )

    def test_by_default_every_built_in_pack_whose_stores_run_is_served(self) -> None:
        # The tests' environment has pymilvus and Milvus Lite: the kb and memory packs run too.
        self.assertEqual(
            [pack.name for pack in load_packs(resolve({}, {}, {}))],
            ["server", "tasks", "notes", "cache", "kb", "memory"],
        )

    def test_the_index_packs_are_off_where_pymilvus_cannot_run(self) -> None:
        import importlib.util

        from mcpd.daemon import INDEX_INTERFACES, provided_interfaces

        settings = resolve({}, {}, {})
        self.assertTrue(set(INDEX_INTERFACES) <= provided_interfaces(settings))
        found = importlib.util.find_spec
        self.patch(importlib.util, "find_spec", lambda name, *a: None if name == "milvus_lite" else found(name, *a))
        self.assertFalse(set(INDEX_INTERFACES) & provided_interfaces(settings))
        self.assertEqual([pack.name for pack in load_packs(settings)], ["server", "tasks", "notes", "cache"])
        # A Milvus server needs pymilvus only.
        server = resolve({"milvus_uri": "http://127.0.0.1:19530"}, {}, {})
        self.assertTrue(set(INDEX_INTERFACES) <= provided_interfaces(server))

    def test_without_a_pack_on_the_sql_store_the_tree_has_no_database(self) -> None:
        root = build_service(resolve({"toolsets": "server"}, {}, {}), MemoryReactorClock())
        self.assertNotIn("database", [service.name for service in root])
