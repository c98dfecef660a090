"""In-memory tests of the legacy HTTP+SSE resources, SSE keep-alive comments and the start-up
check of ``ssl:`` endpoints; a real daemon's ``/sse`` on raw sockets (the order of answers). The
real clients are in `tests.test_transports`."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path
from typing import Any

import h11
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpd.protocol.codec import MAX_DEPTH
from mcpd.protocol.engine import BATCH_SLICE, Engine
from mcpd.protocol.ledger import SESSION, STREAM, Ledger, Limit
from mcpd.protocol.session import SessionStore
from mcpd.tools import ToolRegistry
from mcpd.tools.pack import load_pack
from mcpd.transport.legacy_sse import SSEMessagesResource, SSEStreamResource
from mcpd.transport.sse import KEEPALIVE, keep_alive
from mcpd.transport.tls import EndpointError, check_endpoint, is_tls
from tests.daemon import DaemonTestCase
from tests.http_harness import ComponentizedDummyRequest as DummyRequest
from tests.tls_certs import make_tls_files
from tests.wire import SSEDecoder, raw_request

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


def _post(path_args: dict[bytes, list[bytes]], body: bytes) -> DummyRequest:
    request = DummyRequest([b"messages", b""])
    request.method = b"POST"
    request.args = path_args
    request.content = io.BytesIO(body)
    return request


class LegacySSETests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sessions = SessionStore(self.clock, 60.0)
        self.engine = Engine(ToolRegistry([load_pack("server")]))
        self.stream = SSEStreamResource(self.sessions)
        self.messages = SSEMessagesResource(self.engine, self.sessions, 1024)

    def open_stream(self) -> tuple[DummyRequest, str]:
        request = DummyRequest([b"sse"])
        self.stream.render_GET(request)
        first = b"".join(request.written).decode()
        self.assertTrue(first.startswith("event: endpoint\ndata: /messages/?session_id="), first)
        request.written.clear()
        return request, first.split("session_id=")[1].strip()

    def test_endpoint_event_then_answers_as_message_events(self) -> None:
        request, session_id = self.open_stream()
        self.assertEqual(request.responseHeaders.getRawHeaders(b"x-accel-buffering"), [b"no"])
        post = _post({b"session_id": [session_id.encode()]}, json.dumps(INITIALIZE).encode())
        self.assertEqual(self.messages.render_POST(post), b"Accepted")
        self.assertEqual(post.responseCode, 202)
        event = b"".join(request.written).decode()
        self.assertTrue(event.startswith("event: message\ndata: "), event)
        self.assertEqual(json.loads(event.split("data: ", 1)[1])["result"]["protocolVersion"], "2024-11-05")

    def test_typescript_sessionId_parameter(self) -> None:
        _request, session_id = self.open_stream()
        post = _post({b"sessionId": [session_id.encode()]}, json.dumps(INITIALIZE).encode())
        self.messages.render_POST(post)
        self.assertEqual(post.responseCode, 202)

    def test_missing_unknown_oversized_and_invalid(self) -> None:
        _request, session_id = self.open_stream()
        cases = [
            ({}, b"{}", 400),
            ({b"session_id": [b"nope"]}, b"{}", 404),
            ({b"session_id": [session_id.encode()]}, b"x" * 2000, 413),
            ({b"session_id": [session_id.encode()]}, b"{not json", 400),
            ({b"session_id": [session_id.encode()]}, b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), 400),
        ]
        for args, body, status in cases:
            post = _post(args, body)
            self.messages.render_POST(post)
            self.assertEqual(post.responseCode, status, (args, body))

    def test_stream_end_ends_session_and_cancels_calls(self) -> None:
        request, session_id = self.open_stream()
        session = self.sessions.get(session_id)
        assert session is not None
        in_flight: Deferred[None] = Deferred()
        session.in_flight[7] = in_flight
        request.finish()
        self.failureResultOf(in_flight, CancelledError)
        self.assertNotIn(session_id, self.sessions)
        self.assertTrue(session.closed)


class LegacySSEShareTests(SynchronousTestCase):
    """``GET /sse`` is a session and a stream of its caller's: counted, capped, ended."""

    def setUp(self) -> None:
        self.ledger = Ledger({STREAM: Limit(per_account=1), SESSION: Limit(total=5, per_account=5)})
        self.sessions = SessionStore(Clock(), 60.0, self.ledger)
        self.engine = Engine(ToolRegistry([load_pack("server")]), ledger=self.ledger)
        self.stream = SSEStreamResource(self.sessions)
        self.messages = SSEMessagesResource(self.engine, self.sessions, 1024)

    def open(self) -> tuple[DummyRequest, bytes | int]:
        request = DummyRequest([b"sse"])
        request.client = IPv4Address("TCP", "192.0.2.7", 40000)
        request._disconnected = False  # what finish_quietly reads of a real Request
        return request, self.stream.render_GET(request)

    def account(self, request: DummyRequest) -> str:
        return "ip:192.0.2.7"

    def test_over_the_stream_share(self) -> None:
        first, _ = self.open()
        account = self.account(first)
        self.assertEqual((self.ledger.held(account, STREAM), self.ledger.held(account, SESSION)), (1, 1))
        second, body = self.open()
        self.assertEqual(second.responseCode, 429)
        self.assertEqual(second.responseHeaders.getRawHeaders(b"retry-after"), [b"5"])
        self.assertIn("Too many streams", json.loads(body)["error"])  # type: ignore[arg-type]
        self.assertEqual((self.ledger.held(account, STREAM), self.ledger.held(account, SESSION)), (1, 1))
        first.finish()
        self.assertEqual(self.ledger.holdings(), {})
        self.assertEqual(len(self.sessions), 0)

    def test_ending_the_account_ends_the_session_and_its_stream(self) -> None:
        request, _ = self.open()
        self.ledger.end_accounts([self.account(request)], "the API key was revoked")
        self.assertEqual(request.finished, 1)
        self.assertEqual(len(self.sessions), 0)
        self.assertEqual(self.ledger.holdings(), {})


class KeepAliveTests(SynchronousTestCase):
    def test_comments_until_the_response_finishes(self) -> None:
        clock = Clock()
        request = DummyRequest([b""])
        request.write(b"")
        keep_alive(request, 2.0, clock)
        clock.advance(2.0)
        clock.advance(2.0)
        self.assertEqual(request.written.count(KEEPALIVE), 2)
        request.finish()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_one_timer_keeps_every_stream_of_a_site_alive(self) -> None:
        from mcpd.transport.sse import start_sse

        clock = Clock()
        site = type("S", (), {"sse_keepalive": 2.0, "sse_streams": set(), "reactor": clock})()
        requests = [DummyRequest([b""]) for _ in range(3)]
        for request in requests:
            request.site = site
            start_sse(request)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(2.0)
        self.assertEqual([request.written.count(KEEPALIVE) for request in requests], [1, 1, 1])
        requests[0].finish()
        clock.advance(2.0)
        self.assertEqual([request.written.count(KEEPALIVE) for request in requests], [1, 2, 2])
        for request in requests[1:]:
            request.finish()
        clock.advance(2.0)
        # No stream, no timer: an idle server does nothing.
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_site_interval_applies_to_every_stream(self) -> None:
        from mcpd.transport.sse import start_sse

        request = DummyRequest([b""])
        request.site = type("S", (), {"sse_keepalive": None})()
        start_sse(request)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"text/event-stream"])


class EndpointCheckTests(SynchronousTestCase):
    def test_tls_detection(self) -> None:
        self.assertTrue(is_tls("ssl:8443:privateKey=k.pem"))
        self.assertFalse(is_tls("tcp:8765:interface=127.0.0.1"))

    def test_good_chain_and_bad_files(self) -> None:
        from twisted.internet import reactor

        files = make_tls_files(Path(self.mktemp()))
        check_endpoint(reactor, files.endpoint(8443))
        with self.assertRaises(EndpointError) as missing:
            check_endpoint(reactor, f"ssl:8443:privateKey={files.key}:certKey=/nonexistent/cert.pem")
        self.assertIn("cannot read /nonexistent/cert.pem", str(missing.exception))
        with self.assertRaises(EndpointError) as mismatch:
            check_endpoint(reactor, f"ssl:8443:privateKey={files.key}:certKey={files.chain}")
        self.assertIn("does not belong", str(mismatch.exception))
        with self.assertRaises(EndpointError):
            check_endpoint(reactor, "bogus:1")


class SSEStream:
    """``GET /sse`` of a real daemon on a raw socket: its events, in the order they came."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10.0)
        self.http = h11.Connection(h11.CLIENT)
        self.decoder = SSEDecoder()
        self.events: list[dict[str, str]] = []
        self.sock.sendall(raw_request("GET", "/sse", [("Host", f"127.0.0.1:{port}"), ("Accept", "text/event-stream")]))
        self.http.send(h11.Request(method="GET", target="/sse", headers=[("Host", "x")]))
        self.http.send(h11.EndOfMessage())
        endpoint = self.next_event()
        assert endpoint.get("event") == "endpoint", endpoint
        self.endpoint = endpoint["data"]

    def next_event(self) -> dict[str, str]:
        while not self.events:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                self.http.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.Data):
                self.events += self.decoder.feed(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                raise EOFError("the event stream ended")
        return self.events.pop(0)

    def next_message(self) -> Any:
        event = self.next_event()
        assert event.get("event") == "message", event
        return json.loads(event["data"])

    def post(self, *messages: Any) -> list[int]:
        """POST each message to the endpoint, pipelined on one connection; their statuses."""
        headers = [("Host", f"127.0.0.1:{self.port}"), ("Content-Type", "application/json")]
        requests = [raw_request("POST", self.endpoint, headers, json.dumps(m).encode()) for m in messages]
        with socket.create_connection(("127.0.0.1", self.port), timeout=10.0) as sock:
            sock.sendall(b"".join(requests))
            client = h11.Connection(h11.CLIENT)
            statuses: list[int] = []
            for _ in requests:
                client.send(h11.Request(method="POST", target="/", headers=[("Host", "x"), ("Content-Length", "0")]))
                client.send(h11.EndOfMessage())
                while True:
                    event = client.next_event()
                    if event is h11.NEED_DATA:
                        client.receive_data(sock.recv(65536))
                    elif isinstance(event, h11.Response):
                        statuses.append(event.status_code)
                    elif isinstance(event, h11.EndOfMessage):
                        client.start_next_cycle()
                        break
        return statuses

    def close(self) -> None:
        self.sock.close()


class LegacySSEDaemonTests(DaemonTestCase):
    """A real daemon's ``/sse`` sessions, on raw sockets."""

    def test_a_batch_is_answered_before_a_message_sent_after_it(self) -> None:
        """A batch served over several reactor turns (more than `BATCH_SLICE` messages) is
        answered before a message the client sent after it: the session's one stream carries
        both, and a client that stops reading at a later answer (the fuzz oracle's sentinel
        ping) must not find the batch unanswered."""
        daemon = self.start_daemon()
        assert daemon.port is not None
        stream = SSEStream(daemon.port)
        self.addCleanup(stream.close)
        initialize = {**INITIALIZE, "params": {**INITIALIZE["params"], "protocolVersion": "2025-03-26"}}
        self.assertEqual(stream.post(initialize, {"jsonrpc": "2.0", "method": "notifications/initialized"}), [202, 202])
        self.assertEqual(stream.next_message()["result"]["protocolVersion"], "2025-03-26")
        batch = [{"jsonrpc": "2.0", "id": n, "method": "ping"} for n in range(BATCH_SLICE * 10)]
        after = {"jsonrpc": "2.0", "id": "after", "method": "ping"}
        self.assertEqual(stream.post(batch, after), [202, 202])
        first = stream.next_message()
        self.assertIsInstance(first, list, f"{first} came before the batch's answer")
        self.assertEqual([answer["id"] for answer in first], list(range(BATCH_SLICE * 10)))
        self.assertEqual(stream.next_message(), {"jsonrpc": "2.0", "id": "after", "result": {}})
