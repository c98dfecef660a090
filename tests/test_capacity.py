"""Tests for `mcpd.security.capacity`: connection caps answered 503, refused peers answered 403, and
slow clients dropped, on a Clock."""

from __future__ import annotations

import gc
import json
import socket
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from mcpd.protocol.ledger import CONNECTION, Ledger, Limit
from mcpd.security.addresses import AddressList
from mcpd.security.capacity import REFUSAL_GRACE, CapacityFactory
from mcpd.security.channel import MCPChannel
from mcpd.security.gate import Gate, guarded_request_factory
from mcpd.security.ratelimit import RateLimit, RateLimiter
from tests.gate_harness import KEYS, Recorder
from tests.http_harness import parse_response
from tests.test_gate import LaterStore

REQUEST = b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}"


class _HalfClosing(StringTransport):
    """A TCP-like transport that says when its write side is shut."""

    half_closed = False

    def loseWriteConnection(self) -> None:
        self.half_closed = True


class CapacityTestCase(SynchronousTestCase):
    def make(self, gate: Gate | None = None, **options: object) -> None:
        self.clock = Clock()
        self.recorder = Recorder()
        site = Site(self.recorder)
        site.reactor = self.clock
        self.gate = gate or Gate()
        site.requestFactory = guarded_request_factory(self.gate)
        self.factory = CapacityFactory(site, self.gate, self.clock, **options)  # type: ignore[arg-type]
        self.factory.doStart()
        self.addCleanup(self.factory.doStop)

    def connect(self, peer: str = "127.0.0.1") -> tuple[object, StringTransport]:
        address = IPv4Address("TCP", peer, 40000)
        transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8765), peerAddress=address)
        protocol = self.factory.buildProtocol(address)
        protocol.makeConnection(transport)
        return protocol, transport


class CapTests(CapacityTestCase):
    def test_one_over_the_cap(self) -> None:
        self.make(max_connections=2)
        self.connect()
        self.connect()
        self.assertEqual(self.factory.open_connections, 2)
        protocol, transport = self.connect()
        protocol.dataReceived(REQUEST)  # type: ignore[attr-defined]
        response = parse_response(transport.value())
        self.assertEqual(response.status, 503)
        self.assertEqual(json.loads(response.body), {"error": "Server at capacity"})
        self.assertEqual(response.headers["retry-after"], "5")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.recorder.callers, [])
        self.assertEqual(self.factory.open_connections, 2)

    def test_answered_even_if_the_client_says_nothing(self) -> None:
        self.make(max_connections=1)
        self.connect()
        _protocol, transport = self.connect()
        self.assertEqual(transport.value(), b"")
        self.clock.advance(REFUSAL_GRACE)
        self.assertEqual(parse_response(transport.value()).status, 503)

    def test_slot_freed_on_close(self) -> None:
        self.make(max_connections=1)
        protocol, transport = self.connect()
        protocol.connectionLost(None)  # type: ignore[attr-defined]
        protocol, transport = self.connect()
        protocol.dataReceived(REQUEST)  # type: ignore[attr-defined]
        self.assertEqual(parse_response(transport.value()).status, 200)

    def test_per_ip(self) -> None:
        self.make(max_per_ip=1)
        self.connect("127.0.0.1")
        self.connect("127.0.0.2")
        protocol, transport = self.connect("127.0.0.1")
        protocol.dataReceived(REQUEST)  # type: ignore[attr-defined]
        response = parse_response(transport.value())
        self.assertEqual(response.status, 503)
        self.assertIn("one address", json.loads(response.body)["error"])

    def test_refused_peer_before_reading(self) -> None:
        self.make(Gate(allowed=AddressList(["10.0.0.0/8"])))
        protocol, transport = self.connect("192.0.2.7")
        protocol.dataReceived(REQUEST)  # type: ignore[attr-defined]
        self.assertEqual(parse_response(transport.value()).status, 403)
        self.assertEqual(self.factory.open_connections, 0)
        self.assertEqual(self.recorder.callers, [])
        self.assertEqual(self.gate.refusals, {"forbidden": 1})

    def test_loopback_outside_the_allowlist_is_checked_per_request(self) -> None:
        """Loopback is let in (its probes are open whatever the allowlist); its request to a
        route the allowlist guards is refused by the gate."""
        self.make(Gate(allowed=AddressList(["10.0.0.0/8"])))
        protocol, transport = self.connect("127.0.0.1")
        self.assertEqual(self.factory.open_connections, 1)
        protocol.dataReceived(REQUEST)  # type: ignore[attr-defined]
        self.assertEqual(parse_response(transport.value()).status, 403)
        self.assertEqual(self.recorder.callers, [])

    def test_reloaded_allowlist_applies_to_open_connections(self) -> None:
        self.make(Gate(allowed=AddressList(["10.0.0.0/8"]), insecure_no_auth=True))
        protocol, transport = self.connect("10.1.2.3")
        protocol.dataReceived(REQUEST)  # type: ignore[attr-defined]
        self.assertEqual(parse_response(transport.value()).status, 200)
        # kill -HUP swaps the list; the next request on the same keep-alive connection is refused.
        self.gate.allowed = AddressList(["192.0.2.0/24"])
        transport.clear()
        protocol.dataReceived(REQUEST)  # type: ignore[attr-defined]
        self.assertEqual(parse_response(transport.value()).status, 403)
        self.assertEqual(len(self.recorder.callers), 1)

    def test_a_refused_head_is_half_closed_at_once(self) -> None:
        """A head refused as it is read (a bare CR in a value) is answered 400 and the write side
        shut at once through the guard (`_FORWARDED`), so the client sees the answer end rather
        than a reset after the linger."""
        self.make()
        self.factory.wrappedFactory.protocol = MCPChannel  # the daemon's (MCPSite's) channel
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        transport = _HalfClosing(hostAddress=IPv4Address("TCP", "127.0.0.1", 8765), peerAddress=address)
        protocol = self.factory.buildProtocol(address)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nX-A: a\rb\r\n\r\n")  # type: ignore[attr-defined]
        self.assertEqual(parse_response(transport.value()).status, 400)
        self.assertTrue(transport.half_closed)

    def test_alpn_forwarded(self) -> None:
        self.make()
        self.assertTrue(IProtocolNegotiationFactory.providedBy(self.factory))
        self.assertIn(b"http/1.1", self.factory.acceptableProtocols())


class ShareTests(CapacityTestCase):
    """One key may hold only its share of the connections, so that others still get in."""

    def setUp(self) -> None:
        self.ledger = Ledger({CONNECTION: Limit(per_account=2)})
        self.make(Gate(keys=KEYS), max_connections=4, ledger=self.ledger)

    def request(self, key: str) -> bytes:
        return REQUEST.replace(b"Host:", f"X-API-Key: {key}\r\nHost:".encode())

    def test_a_key_over_its_share_is_refused_429_and_closed(self) -> None:
        held = []
        for _ in range(2):
            protocol, transport = self.connect()
            protocol.dataReceived(self.request("alice-key"))  # type: ignore[attr-defined]
            self.assertEqual(parse_response(transport.value()).status, 200)
            held.append(protocol)
        self.assertEqual(self.ledger.held("key:alice", CONNECTION), 2)
        # More requests on a connection alice already holds are not counted again.
        transport.clear()
        protocol.dataReceived(self.request("alice-key"))  # type: ignore[attr-defined]
        self.assertEqual(parse_response(transport.value()).status, 200)
        protocol, transport = self.connect()
        protocol.dataReceived(self.request("alice-key"))  # type: ignore[attr-defined]
        response = parse_response(transport.value())
        self.assertEqual(response.status, 429)
        self.assertEqual(response.headers["retry-after"], "5")
        body = json.loads(response.body)
        self.assertIn("this API key holds 2 of at most 2", body["error"])
        self.assertIn("close idle connections", body["error"])
        self.assertTrue(transport.disconnecting)
        # The admin still gets in: the budget is not alice's to fill.
        protocol, transport = self.connect()
        protocol.dataReceived(self.request("root-key"))  # type: ignore[attr-defined]
        self.assertEqual(parse_response(transport.value()).status, 200)
        # A closed connection gives its place back.
        held[0].connectionLost(None)  # type: ignore[attr-defined]
        self.assertEqual(self.ledger.held("key:alice", CONNECTION), 1)

    def test_without_a_key_an_address_has_a_share_too(self) -> None:
        # Refused (401) and public (/health) requests count against the client's address, so
        # that idle connections kept by refusals cannot fill the budget either.
        for request in (REQUEST, REQUEST.replace(b"POST /mcp", b"POST /health")):
            protocol, transport = self.connect()
            protocol.dataReceived(request)  # type: ignore[attr-defined]
            self.assertIn(parse_response(transport.value()).status, (401, 404, 405, 200))
            self.assertFalse(transport.disconnecting)
        self.assertEqual(self.ledger.held("ip:127.0.0.1", CONNECTION), 2)
        protocol, transport = self.connect()
        protocol.dataReceived(REQUEST)  # type: ignore[attr-defined]
        response = parse_response(transport.value())
        self.assertEqual((response.status, response.headers.get("connection")), (401, "close"))
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)  # type: ignore[attr-defined]
        protocol, transport = self.connect()
        protocol.dataReceived(REQUEST.replace(b"POST /mcp", b"GET /health"))  # type: ignore[attr-defined]
        self.assertEqual(parse_response(transport.value()).status, 429)
        protocol.connectionLost(None)  # type: ignore[attr-defined]
        # A key still gets in from the same address.
        protocol, transport = self.connect()
        protocol.dataReceived(self.request("root-key"))  # type: ignore[attr-defined]
        self.assertEqual(parse_response(transport.value()).status, 200)

    def test_a_client_gone_before_the_rate_limit_answers_holds_nothing(self) -> None:
        """A remote bucket store answers after the client left: the gone connection is not
        counted again (its place, given back as it closed, would never be released)."""
        store = LaterStore()
        self.make(
            Gate(keys=KEYS, limiter=RateLimiter(RateLimit(1, 60.0), store)), max_connections=4, ledger=self.ledger
        )
        for _ in range(2):  # within the limit, then over it (a 429 holds the connection too)
            protocol, transport = self.connect()
            protocol.dataReceived(self.request("alice-key"))  # type: ignore[attr-defined]
            protocol.connectionLost(None)  # type: ignore[attr-defined]
            store.answer()
            gc.collect()  # an unhandled error in a Deferred is logged when it is collected
            self.assertEqual(transport.value(), b"")
            self.assertEqual(self.ledger.held("key:alice", CONNECTION), 0)
        self.assertEqual(self.recorder.callers, [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_connection_moves_to_the_key_of_its_last_request(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(self.request("alice-key"))  # type: ignore[attr-defined]
        protocol.dataReceived(self.request("root-key"))  # type: ignore[attr-defined]
        self.assertEqual(self.ledger.held("key:alice", CONNECTION), 0)
        self.assertEqual(self.ledger.held("key:root", CONNECTION), 1)

    def test_a_connection_outlives_its_account(self) -> None:
        # A revoked key's next request is refused by the gate; the connection (a proxy's,
        # perhaps, carrying other keys too) stays open.
        protocol, transport = self.connect()
        protocol.dataReceived(self.request("alice-key"))  # type: ignore[attr-defined]
        self.assertEqual(self.ledger.end_accounts(["key:alice"], "the API key was revoked"), 0)
        self.assertFalse(transport.disconnecting)


class SlowClientTests(CapacityTestCase):
    def setUp(self) -> None:
        self.make(head_timeout=10.0, body_timeout=30.0, sweep_interval=1.0)

    def test_slow_loris_head(self) -> None:
        protocol, transport = self.connect()
        for line in (b"POST /mcp HTTP/1.1\r\n", b"Host: localhost\r\n", b"X-A: 1\r\n"):
            protocol.dataReceived(line)  # type: ignore[attr-defined]
            self.clock.advance(4)
        response = parse_response(transport.value())
        self.assertEqual(response.status, 408)
        self.assertIn("request head", json.loads(response.body)["error"])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.recorder.callers, [])

    def test_silent_connection(self) -> None:
        _protocol, transport = self.connect()
        self.clock.advance(11)
        self.assertEqual(parse_response(transport.value()).status, 408)

    def test_slow_body(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n{")  # type: ignore[attr-defined]
        self.clock.advance(29)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(2)
        self.assertIn(b"request body", transport.value())
        self.assertEqual(self.recorder.callers, [])

    def test_served_and_idle_connections_kept(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(REQUEST)  # type: ignore[attr-defined]
        self.assertEqual(parse_response(transport.value()).status, 200)
        self.clock.advance(50)  # idle keep-alive is the Site's timeout (60 s), not ours
        self.assertFalse(transport.disconnecting)
        transport.clear()
        protocol.dataReceived(REQUEST)  # type: ignore[attr-defined]
        self.assertEqual(parse_response(transport.value()).status, 200)

    def test_long_response_not_cut(self) -> None:
        self.recorder.hold = True
        protocol, transport = self.connect()
        protocol.dataReceived(REQUEST.replace(b"POST", b"GET").replace(b"Content-Length: 2\r\n\r\n{}", b"\r\n"))  # type: ignore[attr-defined]
        self.clock.advance(100)
        self.assertFalse(transport.disconnecting)
        self.recorder.held[0].finish()


class DirectWriteTests(TestCase):
    """Plain TCP: what is written on a connection with nothing buffered goes to the socket at
    once (no reactor turn); what the kernel does not take is buffered by the transport and
    follows, in order, with `write` and `writeSequence` alike."""

    def test_sent_at_once_then_in_order(self) -> Deferred[None]:
        # 40 pieces, ~29 MB in all: far past what the loopback socket's buffers hold.
        pieces = [bytes([n % 251]) * (1 + n * 37_001) for n in range(40)]
        expected = b"first" + b"".join(pieces)
        seen: dict[str, bool] = {}

        class Writer(Protocol):
            def connectionMade(self) -> None:
                guarded: Any = self.transport
                guarded.write(b"first")
                tcp = guarded.transport
                seen["unbuffered"] = not tcp.dataBuffer and not tcp._tempDataBuffer
                for n, piece in enumerate(pieces):
                    if n % 2:
                        guarded.write(piece)
                    else:
                        guarded.writeSequence([piece[:7], piece[7:]])
                guarded.loseConnection()

        inner = Factory.forProtocol(Writer)
        factory = CapacityFactory(inner, Gate(), reactor, head_timeout=None, max_write_buffer=256 * 1024 * 1024)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        def read() -> bytes:
            with socket.create_connection(("127.0.0.1", port.getHost().port)) as sock:
                time.sleep(0.3)  # let the kernel's buffers fill: the rest waits in the transport
                chunks = []
                while chunk := sock.recv(1 << 20):
                    chunks.append(chunk)
                return b"".join(chunks)

        def check(received: bytes) -> None:
            self.assertTrue(seen["unbuffered"], "the first answer waited for a reactor turn")
            self.assertEqual(len(received), len(expected))
            self.assertEqual(received, expected)

        return deferToThread(read).addCallback(check)
