"""Tests for `mcpd.security.channel` and `mcpd.security.head`: heads that are too large or malformed are
answered with JSON (not dropped, not a bare 400) and the connection is then closed; in memory for
the lingering close, then against a real daemon over real sockets, plain and TLS."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from mcpd.security.channel import LINGER, MCPChannel
from mcpd.security.gate import Gate, guarded_request_factory
from mcpd.web.site import MCPSite
from tests.security_harness import (
    KEY,
    MCP_HEADERS,
    Raw,
    RouteTestCase,
    Scheme,
    call_body,
    exchange,
    read_all,
    request_bytes,
)


class Served(Resource):
    isLeaf = True

    def render(self, request: object) -> bytes:
        return b"served"


def connect(site: Any) -> tuple[Any, StringTransport]:
    """A connection of ``site``'s channel over a StringTransport from 127.0.0.1."""
    peer = IPv4Address("TCP", "127.0.0.1", 5000)
    transport = StringTransport(peerAddress=peer)
    channel = site.buildProtocol(peer)
    assert channel is not None
    channel.makeConnection(transport)
    return channel, transport


def masked(written: bytes) -> bytes:
    """``written`` with the Date and X-Request-Id values blanked: the only parts allowed to differ."""
    return re.sub(rb"(?m)^(Date|X-Request-Id): .*\r$", rb"\1: -\r", written)


class LingeringTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        site = MCPSite(Served())
        site.reactor = self.clock
        channel, self.transport = connect(site)
        assert isinstance(channel, MCPChannel)
        self.channel = channel

    def test_answered_then_input_discarded_then_aborted(self) -> None:
        self.channel.dataReceived(b"GET /" + b"a" * (20 * 1024))
        answer = Raw(self.transport.value())
        self.assertEqual(answer.status, 414)
        self.assertEqual(answer.headers["connection"], "close")
        self.assertIn("URI Too Long", answer.json()["error"])
        # What the client still sends is read and dropped: no second answer, nothing served.
        written = self.transport.value()
        self.channel.dataReceived(b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.transport.value(), written)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(LINGER)
        self.assertTrue(self.transport.disconnected)  # StringTransport's abortConnection

    def test_a_client_that_closes_first_cancels_the_timer(self) -> None:
        self.channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"b" * (17 * 1024) + b"\r\n")
        self.assertEqual(Raw(self.transport.value()).status, 431)
        self.channel.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_well_formed_requests_are_untouched(self) -> None:
        self.channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"served", self.transport.value())
        self.assertFalse(self.transport.disconnecting)


class EdgeTests(RouteTestCase):
    """Finding 11 of issue 9: these got the connection closed with no answer, a bare 400, or
    were served."""

    def raw(self, scheme: Scheme, data: bytes) -> Raw:
        started = time.monotonic()
        reply = exchange(scheme, data)
        # Answered and closed at once, not after a timeout.
        self.assertLess(time.monotonic() - started, 5, reply.raw[:300])
        return reply

    def test_too_large(self) -> None:
        for scheme in self.start():
            host = f"Host: 127.0.0.1:{scheme.port}\r\n".encode()
            line = b"POST /mcp?" + b"a" * 100_000 + b" HTTP/1.1\r\n" + host + b"\r\n"
            self.assertJSONError(self.raw(scheme, line), 414, "request line is limited to 16384 bytes")
            big = b"POST /mcp HTTP/1.1\r\n" + host + b"X-Big: " + b"b" * (17 * 1024) + b"\r\n\r\n"
            self.assertJSONError(self.raw(scheme, big), 431, "limited to 16384 bytes")
            many = b"POST /mcp HTTP/1.1\r\n" + host + b"".join(b"X-%d: %s\r\n" % (i, b"c" * 100) for i in range(200))
            self.assertJSONError(self.raw(scheme, many + b"\r\n"), 431, "limited to 16384 bytes")
            lines = b"POST /mcp HTTP/1.1\r\n" + host + b"".join(b"X-%d: 1\r\n" % i for i in range(600))
            self.assertJSONError(self.raw(scheme, lines + b"\r\n"), 431, "at most 500 header lines")
            # A client that sends a megabyte of header and only then reads still gets the answer.
            flood = b"GET /health HTTP/1.1\r\n" + host + b"X-Flood: " + b"d" * 1_000_000
            self.assertJSONError(self.raw(scheme, flood), 431, "Request Header Fields Too Large")
            # Just under the limits: served.
            fits = request_bytes("GET", "/health?" + "e" * 15_000, scheme.port)
            self.assertEqual(self.raw(scheme, fits).status, 200)

    def test_host(self) -> None:
        for scheme in self.start():
            no_host = b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"
            self.assertJSONError(self.raw(scheme, no_host), 400, "must carry a Host header")
            reply = self.raw(
                scheme, b"POST /mcp HTTP/1.1\r\nContent-Length: 0\r\nAuthorization: Bearer root-key\r\n\r\n"
            )
            self.assertJSONError(reply, 400, "must carry a Host header")
            # HTTP/1.0 has no Host requirement.
            self.assertEqual(self.raw(scheme, b"GET /health HTTP/1.0\r\n\r\n").status, 200)
            for bad in ("a/b", "a b@c", "[::1", "host:port"):
                reply = self.send(scheme, "GET", "/health", Host=bad)
                self.assertJSONError(reply, 400, "Host header is not a host name")

    def test_duplicated_headers(self) -> None:
        for scheme in self.start():
            body = call_body("sec.record")
            base = {"Host": f"127.0.0.1:{scheme.port}", "Content-Length": str(len(body)), **MCP_HEADERS, **KEY}
            for name, first, second in (
                ("Host", f"127.0.0.1:{scheme.port}", "evil.example"),
                ("Authorization", "Bearer root-key", "Bearer alice-key"),
                ("Authorization", "Bearer nope", "Bearer root-key"),
                ("X-API-Key", "nope", "root-key"),
                ("Origin", "http://127.0.0.1", "https://evil.example"),
                ("Mcp-Method", "tools/call", "tools/list"),
            ):
                fields = [(key, value) for key, value in base.items() if key != name] + [(name, first), (name, second)]
                head = "POST /mcp HTTP/1.1\r\n" + "".join(f"{key}: {value}\r\n" for key, value in fields) + "\r\n"
                reply = self.raw(scheme, head.encode() + body)
                self.assertEqual((reply.status, reply.headers["content-type"]), (400, "application/json"))
                self.assertEqual(
                    reply.json()["error"].lower(), f"bad request: the {name.lower()} header is sent more than once"
                )

    def test_malformed_heads_get_json(self) -> None:
        for scheme in self.start():
            host = f"Host: 127.0.0.1:{scheme.port}\r\n".encode()
            for data in (
                b"GET /health HTTP/1.1\r\n" + host + b"NoColon\r\n\r\n",
                b"GET /health HTTP/1.1\r\n" + host + b"Bad Name: x\r\n\r\n",
                b"POST /mcp HTTP/1.1\r\n" + host + b"Content-Length: abc\r\n\r\n",
                # More digits than Python turns into an int (4,300): not a crash and no answer.
                b"POST /mcp HTTP/1.1\r\n" + host + b"Content-Length: " + b"1" * 4301 + b"\r\n\r\n",
                b"POST /mcp HTTP/1.1\r\n" + host + b"Content-Length: " + b"9" * 19 + b"\r\n\r\n",
                b"POST /mcp HTTP/1.1\r\n" + host + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
                b"POST /mcp HTTP/1.1\r\n" + host + b"Transfer-Encoding: gzip\r\n\r\n",
                b"POST /mcp HTTP/1.1\r\n" + host + KEY_LINE + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
                b"GET /health HTTP/2.0\r\n" + host + b"\r\n",
                b"GET  /health HTTP/1.1\r\n" + host + b"\r\n",
                b"GET /health\r\n\r\n",
                b"G(T /health HTTP/1.1\r\n" + host + b"\r\n",
            ):
                reply = self.raw(scheme, data)
                self.assertJSONError(reply, 400, "Bad Request")
                self.assertEqual(reply.headers["connection"], "close")
            # And the daemon still serves.
            self.assertEqual(self.send(scheme, "GET", "/health").status, 200)

    def test_the_server_closes_when_the_response_says_so(self) -> None:
        """``Connection: close`` and HTTP/1.0: the answer ends with the connection, over TLS too
        (a producer left registered with the TLS transport kept it open)."""
        for scheme in self.start():
            for request in (
                f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{scheme.port}\r\nConnection: close\r\n\r\n".encode(),
                b"GET /health HTTP/1.0\r\n\r\n",
                request_bytes("POST", "/mcp", scheme.port, call_body("sec.record"), **MCP_HEADERS, **KEY),
            ):
                sock = scheme.socket()
                try:
                    sock.sendall(request)
                    started = time.monotonic()
                    data = read_all(sock, timeout=5)
                finally:
                    sock.close()
                self.assertLess(time.monotonic() - started, 3, (scheme.name, request[:40]))
                self.assertIn(b" 200 OK\r\n", data[:20], data[:300])

    def test_connection_is_closed_after_the_answer(self) -> None:
        for scheme in self.start():
            sock = scheme.socket()
            try:
                sock.sendall(b"GET /health HTTP/1.1\r\n" + b"X: " + b"f" * 20_000 + b"\r\n\r\n")
                data = read_all(sock)
            finally:
                sock.close()
            self.assertEqual(data.count(b"HTTP/1.1 "), 1, data[:300])
            self.assertEqual(
                json.loads(data.partition(b"\r\n\r\n")[2])["error"][:31], "Request Header Fields Too Large"
            )


KEY_LINE = b"Authorization: Bearer root-key\r\n"


class Echo(Resource):
    """Answers with what twisted.web made of the request: its line, its headers (names and
    values as kept, in order), its query arguments and its body."""

    isLeaf = True

    def render(self, request: Any) -> bytes | int:
        if request.path == b"/pieces":  # a length set, then the body in two writes
            request.setHeader(b"content-length", b"10")
            request.write(b"hello")
            request.write(b"world")
            request.finish()
            return NOT_DONE_YET
        if request.path == b"/chunked":  # no length: chunked
            request.write(b"a")
            request.write(b"bc")
            request.finish()
            return NOT_DONE_YET
        if request.path == b"/no-length":  # an empty Content-Length entry: no length, chunked
            request.responseHeaders.setRawHeaders(b"content-length", [])
            request.write(b"ab")
            request.finish()
            return NOT_DONE_YET
        if request.path == b"/cookie":
            request.addCookie(b"k", b"v")
            return b"x"
        if request.path == b"/empty":
            request.setResponseCode(204)
            return b""
        if request.path == b"/not-modified":
            request.setResponseCode(304)
            return b""
        if request.path == b"/typed":
            request.setHeader(b"content-type", b"text/plain")
            request.setHeader(b"x-two", b"1")
            request.responseHeaders.addRawHeader(b"x-two", b"2")
            request.setResponseCode(418, b"I'm a teapot")
            return b"tea"
        seen = {
            "line": [request.method.decode(), request.uri.decode(), request.clientproto.decode()],
            "path": request.path.decode(),
            "args": {k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()},
            "headers": [
                [n.decode("latin-1"), [v.decode("latin-1") for v in vs]]
                for n, vs in request.requestHeaders.getAllRawHeaders()
            ],
            "body": request.content.read().decode("latin-1"),
        }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(seen).encode()


class CountingChannel(MCPChannel):
    """Counts the heads read in one pass."""

    whole_heads = 0

    def _whole_head(self, line: bytes) -> bool:
        read = super()._whole_head(line)
        self.whole_heads += read
        return read


HOST = b"Host: 127.0.0.1\r\n"
# Heads (and what follows them) twisted.web's parser accepts, refuses or reads specially: each is
# answered the same whether it arrives whole (read in one pass) or a byte at a time (twisted.web's
# line parser), through the policy layer (`GuardedRequest`) or not.
CASES: dict[str, bytes] = {
    "get": b"GET /mcp?a=1&b=%20 HTTP/1.1\r\n" + HOST + b"Accept: */*\r\n\r\n",
    "no headers": b"GET /mcp HTTP/1.0\r\n\r\n",
    "post": b"POST /mcp HTTP/1.1\r\n" + HOST + b'Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}',
    "pipelined": (b"POST /mcp HTTP/1.1\r\n" + HOST + b"Content-Length: 2\r\n\r\n{}") * 2
    + b"GET /mcp HTTP/1.1\r\n"
    + HOST
    + b"\r\n",
    "chunked": b"POST /mcp HTTP/1.1\r\n"
    + HOST
    + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
    + b"GET /mcp HTTP/1.1\r\n"
    + HOST
    + b"\r\n",
    "TE identity": b"POST /mcp HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: identity\r\n\r\n",
    "TE Chunked, mixed case names": b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: Chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    "whitespace": b"POST /mcp HTTP/1.1\r\n"
    + HOST
    + b"X-A:\t padded \t\r\nX-B:\r\nX-C:  \r\ncontent-LENGTH:  2 \r\n\r\n{}",
    "repeated header": b"GET /mcp HTTP/1.1\r\n" + HOST + b"X-A: 1\r\nX-B: 2\r\nX-A: 3\r\nCookie: k=v; j=w\r\n\r\n",
    "obs-fold": b"GET /mcp HTTP/1.1\r\n" + HOST + b"X-Folded: one\r\n  two\r\n\tthree\r\nX-After: 1\r\n\r\n",
    "leading empty line": b"\r\nGET /mcp HTTP/1.1\r\n" + HOST + b"\r\n",
    "HTTP/1.0 then more": b"GET /mcp HTTP/1.0\r\n" + HOST + b"\r\nGET /mcp HTTP/1.1\r\n" + HOST + b"\r\n",
    "connection close": b"GET /mcp HTTP/1.1\r\n"
    + HOST
    + b"Connection: close\r\n\r\nGET /mcp HTTP/1.1\r\n"
    + HOST
    + b"\r\n",
    "expect 100-continue": b"POST /mcp HTTP/1.1\r\n" + HOST + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
    "obs-text value": b"GET /mcp HTTP/1.1\r\n" + HOST + b"X-Latin: caf\xe9\r\n\r\n",
    "duplicate Content-Length": b"POST /mcp HTTP/1.1\r\n" + HOST + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "Content-Length and chunked": b"POST /mcp HTTP/1.1\r\n"
    + HOST
    + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
    "chunked twice": b"POST /mcp HTTP/1.1\r\n"
    + HOST
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "signed Content-Length": b"POST /mcp HTTP/1.1\r\n" + HOST + b"Content-Length: +2\r\n\r\n{}",
    "unknown coding": b"POST /mcp HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip\r\n\r\n",
    "bad chunk": b"POST /mcp HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
    "no colon": b"GET /mcp HTTP/1.1\r\n" + HOST + b"Nocolon\r\n\r\n",
    "space before colon": b"GET /mcp HTTP/1.1\r\n" + HOST + b"X-A : 1\r\n\r\n",
    "empty name": b"GET /mcp HTTP/1.1\r\n" + HOST + b": 1\r\n\r\n",
    "NUL in value": b"GET /mcp HTTP/1.1\r\n" + HOST + b"X-A: a\x00b\r\n\r\n",
    "bare LF in value": b"GET /mcp HTTP/1.1\r\n" + HOST + b"X-A: a\nb\r\n\r\n",
    "bare CR in value": b"GET /mcp HTTP/1.1\r\n" + HOST + b"X-A: a\rb\r\n\r\n",
    "NUL ending a value": b"GET /mcp HTTP/1.1\r\n" + HOST + b"X-A: ab\x00\r\n\r\n",
    "CR ending the last value": b"GET /mcp HTTP/1.1\r\n" + HOST + b"X-A: ab\r\r\n\r\n",
    "NUL in a name": b"GET /mcp HTTP/1.1\r\n" + HOST + b"X-\x00A: 1\r\n\r\n",
    "CR in a name": b"GET /mcp HTTP/1.1\r\n" + HOST + b"X-\rA: 1\r\n\r\n",
    "LF in a name": b"GET /mcp HTTP/1.1\r\n" + HOST + b"X-\nA: 1\r\n\r\n",
    "first header folded": b"GET /mcp HTTP/1.1\r\n\tX-A: 1\r\n" + HOST + b"\r\n",
    "bad version": b"GET /mcp HTTP/2.0\r\n" + HOST + b"\r\n",
    "bad request line": b"GET  /mcp HTTP/1.1\r\n" + HOST + b"\r\n",
    "control in target": b"GET /m\x7fcp HTTP/1.1\r\n" + HOST + b"\r\n",
    "no Host": b"GET /mcp HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "two Hosts": b"GET /mcp HTTP/1.1\r\n" + HOST + HOST + b"\r\n",
    "500 header lines": b"GET /mcp HTTP/1.1\r\n" + HOST + b"".join(b"X-%d: 1\r\n" % i for i in range(499)) + b"\r\n",
    "501 header lines": b"GET /mcp HTTP/1.1\r\n" + HOST + b"".join(b"X-%d: 1\r\n" % i for i in range(500)) + b"\r\n",
    "head at the size limit": b"GET /mcp HTTP/1.1\r\n" + HOST + b"X-Big: " + b"b" * (16384 - 17 - 15 - 7) + b"\r\n\r\n",
    "head one over the size limit": b"GET /mcp HTTP/1.1\r\n"
    + HOST
    + b"X-Big: "
    + b"b" * (16384 - 17 - 15 - 6)
    + b"\r\n\r\n",
    "body after a refused head": b"GET /mcp HTTP/1.1\r\n" + HOST + HOST + b"\r\nGET /mcp HTTP/1.1\r\n" + HOST + b"\r\n",
}
# Answers written in every way twisted.web frames them (`Echo`).
ANSWERS = (
    b"".join(
        b"%s %s HTTP/1.1\r\n%s\r\n" % (method, path, HOST)
        for method, path in (
            (b"GET", b"/pieces"),
            (b"GET", b"/chunked"),
            (b"GET", b"/no-length"),
            (b"GET", b"/cookie"),
            (b"GET", b"/empty"),
            (b"GET", b"/typed"),
            (b"HEAD", b"/mcp"),
            (b"HEAD", b"/pieces"),
            (b"GET", b"/mcp"),
        )
    )
    + b"GET /mcp HTTP/1.0\r\n\r\n"
)


def without_no_content_length(written: bytes) -> bytes:
    """twisted.web's answers with the ``Content-Length: 0`` it gives a 204 or 304 removed:
    mcpd's one departure from what it writes (RFC 9110 §8.6)."""
    return re.sub(rb"(HTTP/1\.[01] (?:204|304) [^\r]*\r\n(?:[^\r]+\r\n)*?)Content-Length: 0\r\n", rb"\1", written)


class OnePassHeadTests(SynchronousTestCase):
    """`MCPChannel` reads a head that arrived whole in one pass: it must leave exactly what
    twisted.web's line parser leaves, and refuse exactly what it refuses."""

    def serve(self, data: bytes, pieces: int | None, guarded: bool) -> tuple[bytes, bool, int]:
        """What the channel writes for ``data`` sent whole (``pieces`` None) or in pieces of
        ``pieces`` bytes; whether it closed; and how many heads it read in one pass."""
        site = MCPSite(Echo(), request_factory=guarded_request_factory(Gate()) if guarded else None)
        site.reactor = Clock()
        site.protocol = CountingChannel  # type: ignore[assignment]
        channel, transport = connect(site)
        assert isinstance(channel, CountingChannel)
        if pieces is None:
            channel.dataReceived(data)
        else:
            for at in range(0, len(data), pieces):
                channel.dataReceived(data[at : at + pieces])
        written = masked(transport.value())
        return written, transport.disconnecting, channel.whole_heads

    def test_whole_heads_are_read_as_twisted_reads_them(self) -> None:
        for guarded in (False, True):
            for name, data in CASES.items():
                whole, closed, read = self.serve(data, None, guarded)
                for size in (1, 7):
                    piecewise, piece_closed, piece_read = self.serve(data, size, guarded)
                    self.assertEqual(piecewise, whole, (name, guarded, size))
                    self.assertEqual(piece_closed, closed, (name, guarded, size))
                    if size == 1:
                        self.assertEqual(piece_read, 0, name)  # a byte at a time: never whole
                self.assertTrue(whole.startswith(b"HTTP/1."), (name, whole[:200]))

    def test_which_heads_are_read_in_one_pass(self) -> None:
        one_pass = {
            "get": 1,
            "no headers": 1,
            "post": 1,
            "pipelined": 3,
            "chunked": 2,
            "TE identity": 1,
            "TE Chunked, mixed case names": 1,
            "whitespace": 1,
            "repeated header": 1,
            "leading empty line": 0,
            "HTTP/1.0 then more": 1,
            "connection close": 1,
            "expect 100-continue": 1,
            "obs-text value": 1,
            "500 header lines": 1,
            "head at the size limit": 1,
            "bad chunk": 1,
            "control in target": 1,
            "no Host": 1,
            "two Hosts": 1,
            "body after a refused head": 2,
            "duplicate Content-Length": 0,
        }
        for name, data in CASES.items():
            _, _, read = self.serve(data, None, False)
            self.assertEqual(read, one_pass.get(name, 0), name)

    def test_answers(self) -> None:
        def statuses(name: str, guarded: bool = True) -> list[int]:
            written, _, _ = self.serve(CASES[name], None, guarded)
            return [int(s) for s in re.findall(rb"HTTP/1\.[01] (\d{3}) ", written)]

        self.assertEqual(statuses("pipelined"), [200, 200, 200])
        self.assertEqual(statuses("chunked"), [200, 200])
        self.assertEqual(statuses("HTTP/1.0 then more"), [200])
        self.assertEqual(statuses("connection close"), [200])
        self.assertEqual(statuses("expect 100-continue"), [100, 200])
        for name in (
            "duplicate Content-Length",
            "Content-Length and chunked",
            "no colon",
            "NUL in value",
            "bad version",
        ):
            self.assertEqual(statuses(name), [400], name)
        self.assertEqual(statuses("two Hosts"), [400])
        self.assertEqual(statuses("no Host"), [400])
        self.assertEqual(statuses("501 header lines"), [431])
        self.assertEqual(statuses("head one over the size limit"), [431])
        self.assertEqual(statuses("500 header lines"), [200])
        self.assertEqual(statuses("head at the size limit"), [200])
        self.assertEqual(statuses("body after a refused head"), [400])
        written, _, _ = self.serve(CASES["whitespace"], None, False)
        seen = json.loads(written.partition(b"\r\n\r\n")[2])
        self.assertEqual(seen["headers"][1:4], [["X-A", ["padded"]], ["X-B", [""]], ["X-C", [""]]])
        self.assertEqual(seen["body"], "{}")
        written, _, _ = self.serve(CASES["obs-fold"], None, False)
        seen = json.loads(written.partition(b"\r\n\r\n")[2])
        self.assertEqual(seen["headers"][1], ["X-Folded", ["one two three"]])
        written, _, _ = self.serve(CASES["chunked"], None, False)
        self.assertIn(b'"body": "abcde"', written)

    def test_answers_are_written_as_twisted_writes_them(self) -> None:
        """Byte for byte what twisted.web's own Site, channel and request write, for every head
        both accept and every way of answering (`ANSWERS`)."""
        accepted = [data for name, data in CASES.items() if "header lines" in name or "size limit" not in name]
        for data in [*accepted[:15], ANSWERS]:
            ours, _, _ = self.serve(data, None, False)
            site = Site(Echo())
            site.reactor = Clock()
            channel, transport = connect(site)
            channel.dataReceived(data)
            twisted = masked(transport.value())
            self.assertEqual(ours, without_no_content_length(twisted), data[:60])
        self.assertEqual(ours.count(b"HTTP/1.1 200 OK\r\n"), 7)
        self.assertIn(b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n", ours)
        self.assertIn(b"Content-Length: 10\r\nContent-Type: text/html\r\n\r\nhelloworld", ours)
        self.assertIn(b"HTTP/1.1 418 I'm a teapot\r\n", ours)
        self.assertIn(b"Set-Cookie: k=v\r\n", ours)

    def test_no_content_has_no_length(self) -> None:
        """RFC 9110 §8.6: no Content-Length in a 204 (twisted.web's render sends ``0``), nor in a
        304 (allowed only as the length a 200 would have had); each ends at its head, and the
        connection serves what follows, HTTP/1.0 too."""
        data = b"".join(
            b"GET %s HTTP/1.1\r\n%s\r\n" % (path, HOST) for path in (b"/empty", b"/not-modified", b"/typed")
        )
        for pieces in (None, 5):
            written, closed, _ = self.serve(data + b"GET /empty HTTP/1.0\r\n\r\n", pieces, guarded=False)
            responses = re.split(rb"(?=HTTP/1\.[01] \d{3} )", written)[1:]
            self.assertEqual(
                [response.partition(b"\r\n")[0] for response in responses],
                [
                    b"HTTP/1.1 204 No Content",
                    b"HTTP/1.1 304 Not Modified",
                    b"HTTP/1.1 418 I'm a teapot",
                    b"HTTP/1.0 204 No Content",
                ],
            )
            self.assertTrue(responses[2].endswith(b"\r\n\r\ntea"), written)
            for response in (responses[0], responses[1], responses[3]):
                self.assertEqual(response.find(b"\r\n\r\n"), len(response) - 4, written)  # the head alone
                self.assertNotIn(b"Content-Length", response, written)
                self.assertNotIn(b"Transfer-Encoding", response, written)
            self.assertTrue(closed)  # after the HTTP/1.0 answer

    def test_a_length_too_long_to_read(self) -> None:
        """A Content-Length of more digits than any length mcpd could take (or than Python
        reads: 4,300) is a 400 with a JSON body, whole or in pieces, not an unhandled error."""
        for digits in (19, 4301):
            data = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"7" * digits + b"\r\n\r\n"
            for pieces in (None, 3):
                written, _, _ = self.serve(data, pieces, guarded=True)
                self.assertTrue(written.startswith(b"HTTP/1.1 400 "), written[:80])
                self.assertIn(b"Content-Length / Transfer-Encoding", written)
                self.assertIn(b"\r\nConnection: close\r\n", written)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_head_split_across_reads(self) -> None:
        data = CASES["post"] + CASES["get"]
        whole, _, _ = self.serve(data, None, False)
        for cut in range(1, len(data)):
            site_output = []
            for first, second in ((data[:cut], data[cut:]),):
                site = MCPSite(Echo())
                site.reactor = Clock()
                channel, transport = connect(site)
                channel.dataReceived(first)
                channel.dataReceived(second)
                site_output.append(masked(transport.value()))
            self.assertEqual(site_output[0], whole, cut)


class IdleTimerTests(SynchronousTestCase):
    """The idle timeout (twisted.web's, kept rather than remade for a request answered at once):
    it runs from the end of the last answer, and never while a request is being served."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.held: list[Any] = []
        held = self.held

        class Hold(Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes | int:
                if request.uri == b"/hold":
                    held.append(request)
                    return NOT_DONE_YET
                return b"ok"

        site = MCPSite(Hold())
        site.reactor = self.clock
        channel, self.transport = connect(site)
        assert isinstance(channel, MCPChannel)
        self.channel = channel
        self.timeout = channel.timeOut
        assert self.timeout

    def ask(self, path: bytes = b"/") -> None:
        self.channel.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")

    def test_idle_after_answers(self) -> None:
        for _ in range(5):
            self.clock.advance(self.timeout - 1)
            self.ask()
            self.assertFalse(self.transport.disconnecting)
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.transport.value().count(b"HTTP/1.1 200 OK"), 5)
        self.clock.advance(self.timeout - 1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_not_while_serving(self) -> None:
        self.ask(b"/hold")
        self.clock.advance(self.timeout * 3)
        self.assertFalse(self.transport.disconnecting)
        self.held[0].write(b"late")
        self.held[0].finish()
        self.clock.advance(self.timeout - 1)
        self.assertFalse(self.transport.disconnecting)
        # An answer at once after a late one: still one timer, from the last answer.
        self.ask()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(self.timeout - 1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)
