"""In-memory tests of the WebSocket wire (`mcpd.transport.websocket`): wsproto frames in and out
over a StringTransport, no reactor; the real clients are in `tests.test_transports`."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Ping, Pong, Request, TextMessage

from mcpd.protocol.engine import BATCH_SLICE, Engine
from mcpd.tools import ToolRegistry
from mcpd.tools.api import Caller
from mcpd.tools.pack import load_pack
from mcpd.transport.websocket import MAX_FRAGMENTS, MCPConnection, WebSocketLimits, WebSocketWire

PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


def _pair(
    max_message_size: int = 1024,
    ping_interval: float | None = None,
    engine_clock: bool = False,
    *,
    limits: WebSocketLimits | None = None,
    registry: set[WebSocketWire] | None = None,
    transport: StringTransport | None = None,
) -> tuple[Any, ...]:
    """A server wire and a wsproto client whose handshake is done (with ``engine_clock``, the
    engine's reactor turns are the returned Clock's too; on ``limits`` and in ``registry`` when
    given: connections of one listener)."""
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="localhost", target="/ws", subprotocols=["mcp"])))
    next(server.events())
    client.receive_data(server.send(AcceptConnection(subprotocol="mcp")))
    next(client.events())
    if limits is None:
        limits = WebSocketLimits(max_message_size, ping_interval, Clock())
    if registry is None:
        registry = set()
    engine = Engine(ToolRegistry([load_pack("server")]), clock=limits.clock if engine_clock else None)
    wire = WebSocketWire(
        server,
        lambda send: MCPConnection(engine, Caller(transport="websocket"), send),
        limits,
        registry,
    )
    if transport is None:
        transport = StringTransport()
    wire.makeConnection(transport)
    return wire, client, transport, limits.clock, registry


def _received(client: WSConnection, transport: StringTransport) -> list[Any]:
    client.receive_data(transport.value())
    transport.clear()
    return list(client.events())


class WireTests(SynchronousTestCase):
    def test_text_frame_is_one_message(self) -> None:
        """A text frame reaches the engine; the answer comes back as one text frame."""
        wire, client, transport, _clock, registry = _pair()
        self.assertIn(wire, registry)
        wire.dataReceived(client.send(TextMessage(data=json.dumps(INITIALIZE))))
        [event] = _received(client, transport)
        self.assertIsInstance(event, TextMessage)
        self.assertEqual(json.loads(event.data)["result"]["protocolVersion"], "2025-11-25")
        self.assertEqual(wire.mcp.session.version, "2025-11-25")

    def test_a_batch_is_answered_before_a_later_message(self) -> None:
        """A 2025-03-26 batch served over several reactor turns is answered before a message
        the client sent after it, as each is on the one connection that carries both."""
        wire, client, transport, clock, _registry = _pair(max_message_size=1 << 20, engine_clock=True)
        initialize = {**INITIALIZE, "params": {**INITIALIZE["params"], "protocolVersion": "2025-03-26"}}
        wire.dataReceived(client.send(TextMessage(data=json.dumps(initialize))))
        wire.dataReceived(client.send(TextMessage(data='{"jsonrpc": "2.0", "method": "notifications/initialized"}')))
        _received(client, transport)
        batch = [{**PING, "id": n} for n in range(BATCH_SLICE * 3)]
        wire.dataReceived(client.send(TextMessage(data=json.dumps(batch))))
        wire.dataReceived(client.send(TextMessage(data=json.dumps({**PING, "id": "after"}))))
        clock.advance(0)
        clock.advance(0)
        answers = [json.loads(event.data) for event in _received(client, transport)]
        self.assertEqual(
            [[r["id"] for r in a] if isinstance(a, list) else a["id"] for a in answers],
            [list(range(BATCH_SLICE * 3)), "after"],
        )

    def test_fragmented_message_is_reassembled(self) -> None:
        wire, client, transport, _clock, _registry = _pair()
        text = json.dumps(PING)
        data = client.send(TextMessage(data=text[:5], message_finished=False))
        data += client.send(TextMessage(data=text[5:], message_finished=True))
        wire.dataReceived(data)
        [event] = _received(client, transport)
        self.assertEqual(json.loads(event.data)["id"], 1)

    def test_binary_frame_closes_1003(self) -> None:
        wire, client, transport, _clock, registry = _pair()
        wire.dataReceived(client.send(BytesMessage(data=b"\x00")))
        [event] = _received(client, transport)
        self.assertEqual(event.code, 1003)
        self.assertTrue(transport.disconnecting)
        wire.connectionLost(None)
        self.assertNotIn(wire, registry)
        self.assertTrue(wire.mcp.session.closed)

    def test_oversized_message_closes_1009_before_it_is_complete(self) -> None:
        wire, client, transport, _clock, _registry = _pair(max_message_size=100)
        wire.dataReceived(client.send(TextMessage(data="x" * 101, message_finished=False)))
        [event] = _received(client, transport)
        self.assertEqual(event.code, 1009)
        self.assertTrue(transport.disconnecting)

    def test_empty_continuation_frames_close_1009(self) -> None:
        """Frames are counted, not only bytes: empty fragments never reach the size limit."""
        wire, client, transport, _clock, _registry = _pair()
        frames = b"".join(client.send(TextMessage(data="", message_finished=False)) for _ in range(MAX_FRAGMENTS + 10))
        wire.dataReceived(frames)
        [event] = _received(client, transport)
        self.assertEqual((event.code, event.reason), (1009, f"a message may come in at most {MAX_FRAGMENTS} frames"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(wire._text, [])

    def test_a_message_split_over_frames_must_arrive_in_time(self) -> None:
        wire, client, transport, clock, _registry = _pair()
        wire.dataReceived(client.send(TextMessage(data='{"jsonrpc":', message_finished=False)))
        clock.advance(29)
        self.assertEqual(_received(client, transport), [])
        clock.advance(1)
        [event] = _received(client, transport)
        self.assertEqual(event.code, 1008)
        self.assertIn("within 30 seconds", event.reason)
        self.assertTrue(transport.disconnecting)

    def test_one_frame_read_in_many_pieces_is_one_frame(self) -> None:
        """A large frame arriving a few bytes at a time is not taken for many fragments."""
        wire, client, transport, clock, _registry = _pair(max_message_size=8192)
        text = json.dumps({**PING, "params": {"_meta": {"pad": "x" * 4000}}})
        data = client.send(TextMessage(data=text))
        for start in range(0, len(data), 3):
            wire.dataReceived(data[start : start + 3])
        [event] = _received(client, transport)
        self.assertEqual(json.loads(event.data)["id"], 1)
        # The message came whole: its deadline is gone.
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_garbage_closes_1002(self) -> None:
        wire, client, transport, _clock, _registry = _pair()
        wire.dataReceived(b"\xff\xff\xff\xff garbage")
        events = _received(client, transport)
        self.assertEqual([e.code for e in events if isinstance(e, CloseConnection)], [1002])
        self.assertTrue(transport.disconnecting)

    def test_pings_answered_and_sent(self) -> None:
        wire, client, transport, clock, _registry = _pair(ping_interval=5.0)
        wire.dataReceived(client.send(Ping(payload=b"hi")))
        [pong] = _received(client, transport)
        self.assertIsInstance(pong, Pong)
        clock.advance(5.0)
        [ping] = _received(client, transport)
        self.assertIsInstance(ping, Ping)
        wire.connectionLost(None)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_one_failed_ping_stops_no_other(self) -> None:
        """The listener's one ping timer carries on past a connection whose ping raises: the
        others are still pinged, every interval, and the failure is logged."""

        class Broken(StringTransport):
            def write(self, data: bytes) -> None:
                raise RuntimeError("the write failed")

        limits = WebSocketLimits(1024, 5.0, Clock())
        registry: set[WebSocketWire] = set()
        _pair(limits=limits, registry=registry, transport=Broken())
        _good, client, transport, clock, _registry = _pair(limits=limits, registry=registry)
        for _ in range(3):
            clock.advance(5.0)
            [ping] = _received(client, transport)
            self.assertIsInstance(ping, Ping)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)

    def test_client_close_is_answered(self) -> None:
        wire, client, transport, _clock, _registry = _pair()
        wire.dataReceived(client.send(CloseConnection(code=1000)))
        [event] = _received(client, transport)
        self.assertIsInstance(event, CloseConnection)
        self.assertTrue(transport.disconnecting)


class StreamSlotTests(SynchronousTestCase):
    """A WebSocket is a session and a stream of its caller's: counted in the ledger while it is
    open, refused over the share, closed when its account is ended, rescoped on reload."""

    def setUp(self) -> None:
        from twisted.web.server import Site

        from mcpd.protocol.ledger import SESSION, STREAM, Ledger, Limit
        from mcpd.security.gate import Gate, guarded_request_factory
        from mcpd.transport.websocket import WebSocketEndpoint

        self.ledger = Ledger({STREAM: Limit(per_account=1), SESSION: Limit(10, 10)})
        self.engine = Engine(ToolRegistry([load_pack("server")]), ledger=self.ledger)
        self.endpoint = WebSocketEndpoint(self.engine, WebSocketLimits(1024, None, Clock()))
        # A Clock for the channels' timeouts: the real reactor would keep their timers after the
        # test ("Reactor was unclean" blamed on the next real-reactor test).
        self.site = Site(self.endpoint, reactor=Clock())
        self.site.requestFactory = guarded_request_factory(Gate())
        self.kinds = (STREAM, SESSION)

    def upgrade(self) -> tuple[Any, StringTransport, WSConnection]:
        from twisted.internet.address import IPv4Address

        peer = IPv4Address("TCP", "127.0.0.1", 50000)
        transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8765), peerAddress=peer)
        protocol = self.site.buildProtocol(peer)
        protocol.makeConnection(transport)
        client = WSConnection(ConnectionType.CLIENT)
        protocol.dataReceived(client.send(Request(host="localhost", target="/ws", subprotocols=["mcp"])))
        return protocol, transport, client

    def held(self) -> list[int]:
        return [self.ledger.held("ip:127.0.0.1", kind) for kind in self.kinds]

    def test_counted_while_open_and_given_back(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        for _ in range(3):
            protocol, transport, _client = self.upgrade()
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 101"), transport.value()[:80])
            self.assertEqual(self.held(), [1, 1])
            protocol.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(self.held(), [0, 0])

    def test_over_the_share_refused_429(self) -> None:
        self.upgrade()
        _protocol, transport, _client = self.upgrade()
        response = transport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 429"), response[:80])
        self.assertIn(b"Retry-After: 5", response)
        self.assertIn(b"Too many streams", response)
        self.assertEqual(self.held(), [1, 1])
        self.assertEqual(len(self.endpoint.open), 1)

    def test_ended_account_closes_1008(self) -> None:
        _protocol, transport, client = self.upgrade()
        client.receive_data(transport.value())
        list(client.events())
        transport.clear()
        self.assertEqual(self.ledger.end_accounts(["ip:127.0.0.1"], "the API key was revoked"), 1)
        [event] = _received(client, transport)
        self.assertIsInstance(event, CloseConnection)
        self.assertEqual((event.code, event.reason), (1008, "the API key was revoked"))
        self.assertTrue(transport.disconnecting)

    def test_rescoped_connection_serves_later_messages_with_the_new_scopes(self) -> None:
        self.upgrade()
        [wire] = self.endpoint.open
        self.ledger.rescope("ip:127.0.0.1", frozenset({"read"}), True)
        self.assertEqual(wire.mcp.caller.scopes, frozenset({"read"}))
