"""Tests for `mcpd.security.flow`: clients that do not read their output.

In memory, the guard's bookkeeping; over real sockets, a daemon in a subprocess and clients that
never read (a small receive buffer) on every transport: pipelined HTTP requests, an /sse stream fed
by POSTs on other connections, a WebSocket, stdout in --stdio mode. The daemon's memory must stay
bounded, the slow client must be dropped, and other clients must be served meanwhile.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import ssl
import threading
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from mcpd.security.flow import OutputGuard
from tests.clients import fetch
from tests.daemon import INITIALIZE, MCPD, DaemonTestMixin, free_port, modern_request, post
from tests.tls_certs import make_tls_files

MIB = 1024 * 1024
# The bound the daemons under test run with, and the size of each answer a test asks for.
WRITE_BUFFER = MIB
ANSWER = MIB
CALLS = 100
# How much the daemon's RSS may grow while a client leaves CALLS answers unread (without flow
# control it grows by about CALLS * ANSWER).
RSS_GROWTH_LIMIT = 40 * MIB
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


class Recorder:
    """An upstream producer that remembers what it was told."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class OutputGuardTests(SynchronousTestCase):
    def make(self, limit: int = 100) -> tuple[OutputGuard, StringTransport, list[int]]:
        transport = StringTransport()
        dropped: list[int] = []
        guard = OutputGuard(transport, limit, dropped.append)
        transport.registerProducer(guard, True)
        return guard, transport, dropped

    def test_a_full_buffer_stops_reading_until_it_drains(self) -> None:
        guard, transport, _dropped = self.make()
        upstream = Recorder()
        guard.upstream = upstream
        guard.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        guard.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(upstream.calls, ["pause", "resume"])

    def test_counts_from_the_first_pause_and_drops_once_past_the_limit(self) -> None:
        guard, _transport, dropped = self.make(limit=100)
        guard.pauseProducing()
        self.assertTrue(guard.admit(60))
        # A TCP transport pauses its producer again on every write while full: not a reset.
        guard.pauseProducing()
        self.assertFalse(guard.admit(60))
        self.assertFalse(guard.admit(1))
        self.assertEqual(dropped, [120])

    def test_a_drained_buffer_starts_the_count_again(self) -> None:
        guard, _transport, dropped = self.make(limit=100)
        guard.pauseProducing()
        self.assertTrue(guard.admit(90))
        guard.resumeProducing()
        guard.pauseProducing()
        self.assertTrue(guard.admit(90))
        self.assertEqual(dropped, [])

    def test_a_lost_write_side_turns_reading_back_on(self) -> None:
        # The transport's writer failed while full (a stdio client closed stdout): reading goes
        # on, so the end of input is still seen.
        guard, transport, dropped = self.make()
        upstream = Recorder()
        guard.upstream = upstream
        guard.pauseProducing()
        guard.stopProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertFalse(guard.blocked)
        self.assertEqual((upstream.calls, dropped), (["pause", "stop"], []))

    def test_the_protocols_own_pause_is_kept(self) -> None:
        guard, transport, _dropped = self.make()
        guard.pause_reading()
        guard.pauseProducing()
        guard.resumeProducing()
        # The output drained, but the protocol above still asks for no more data.
        self.assertEqual(transport.producerState, "paused")
        guard.resume_reading()
        self.assertEqual(transport.producerState, "producing")


def rss(pid: int) -> int:
    """The resident set size of process ``pid``, in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class PeakRSS:
    """Samples a process's RSS in a thread until stopped; the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, rss(self.pid))
            except (OSError, AssertionError):
                return  # the process exited

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def slow_reader(port: int) -> socket.socket:
    """A connection that holds little of what it is sent and reads nothing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def blob_call(request_id: int, size: int = ANSWER) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": "tests.blob", "arguments": {"size": size}},
    }


def modern_blob_request(request_id: int) -> bytes:
    """One pipelined HTTP request: a 2026-07-28 tools/call of tests.blob."""
    body, headers = modern_request(request_id, "tools/call", {"name": "tests.blob", "arguments": {"size": ANSWER}})
    data = json.dumps(body).encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Accept: application/json\r\nContent-Length: {len(data)}\r\n{head}\r\n"
    ).encode() + data


class SlowReaderTests(DaemonTestMixin, TestCase):
    """A client that does not read is dropped, holding a bounded amount of the daemon's memory,
    while other clients go on being served."""

    timeout = 90

    def start(self) -> Any:
        daemon = self.start_daemon("--max-write-buffer", str(WRITE_BUFFER))
        # Warm up what a first big answer allocates, so the baseline is fair.
        self.assertEqual(post(daemon.port, *modern_request(1, "tools/call", blob_call(1)["params"]))[0], 200)
        return daemon

    def assert_bounded_and_dropped(self, daemon: Any, attack: Any) -> None:
        """Run ``attack`` while watching the daemon's RSS; the slow client must be dropped."""
        before = rss(daemon.process.pid)
        watch = PeakRSS(daemon.process.pid)
        try:
            attack()
            deadline = time.monotonic() + 20
            while "over --max-write-buffer" not in daemon.log("stdout") and time.monotonic() < deadline:
                time.sleep(0.1)
            # Meanwhile another client is served, a big answer included.
            status, _headers, body = post(daemon.port, *modern_request(2, "tools/call", blob_call(2)["params"]))
            self.assertEqual(status, 200)
            self.assertEqual(len(json.loads(body)["result"]["content"][0]["text"]), ANSWER)
        finally:
            peak = watch.stop()
        self.assertLess(peak - before, RSS_GROWTH_LIMIT, f"RSS grew from {before} to {peak}")
        self.assertIn("over --max-write-buffer", daemon.log("stdout"))
        metrics = fetch(daemon.port, "GET", "/metrics")[2].decode()
        self.assertIn("mcp_connections_dropped_slow_reader_total 1.0", metrics)

    def test_pipelined_http_requests(self) -> Deferred[None]:
        daemon = self.start()

        def attack() -> None:
            sock = slow_reader(daemon.port)
            self.addCleanup(sock.close)
            requests = b"".join(modern_blob_request(n) for n in range(CALLS))
            # Sent from a thread: once mcpd stops reading, the send may block.
            threading.Thread(target=_send_quietly, args=(sock, requests), daemon=True).start()

        return deferToThread(self.assert_bounded_and_dropped, daemon, attack).addErrback(self.explain)

    def test_pipelined_http_requests_over_tls(self) -> Deferred[None]:
        """The same on an ssl: listener: the guard sits above TLS."""
        tls = make_tls_files(self.workdir / "tls")
        tls_port = free_port()
        daemon = self.start_daemon("--max-write-buffer", str(WRITE_BUFFER), "--listen", tls.endpoint(tls_port))
        self.assertEqual(post(daemon.port, *modern_request(1, "tools/call", blob_call(1)["params"]))[0], 200)

        def attack() -> None:
            context = ssl.create_default_context(cafile=str(tls.ca))
            sock = context.wrap_socket(slow_reader(tls_port), server_hostname="localhost")
            self.addCleanup(sock.close)
            requests = b"".join(modern_blob_request(n) for n in range(CALLS))
            threading.Thread(target=_send_quietly, args=(sock, requests), daemon=True).start()

        return deferToThread(self.assert_bounded_and_dropped, daemon, attack).addErrback(self.explain)

    def test_legacy_sse_stream_fed_by_other_connections(self) -> Deferred[None]:
        daemon = self.start()
        messages: list[str] = []

        def attack() -> None:
            sock = slow_reader(daemon.port)
            self.addCleanup(sock.close)
            sock.sendall(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
            head = b""
            while b"session_id=" not in head or b"\n\n" not in head.split(b"session_id=")[1]:
                head += sock.recv(4096)
            session_id = head.split(b"session_id=")[1].split(b"\n")[0].decode()
            messages.append(f"/messages/?session_id={session_id}")
            for message in (INITIALIZE, INITIALIZED, *(blob_call(n) for n in range(2, CALLS + 2))):
                status, _headers, _body = fetch(daemon.port, "POST", messages[0], json.dumps(message).encode())
                if status == 404:
                    break  # the stream was dropped, and its session with it
                self.assertEqual(status, 202)

        def check() -> None:
            self.assert_bounded_and_dropped(daemon, attack)
            # The session ended with its stream.
            self.assertEqual(fetch(daemon.port, "POST", messages[0], json.dumps(blob_call(0)).encode())[0], 404)

        return deferToThread(check).addErrback(self.explain)

    def test_websocket(self) -> Deferred[None]:
        daemon = self.start()

        def attack() -> None:
            sock = slow_reader(daemon.port)
            self.addCleanup(sock.close)
            ws = WSConnection(ConnectionType.CLIENT)
            sock.sendall(ws.send(Request(host="127.0.0.1", target="/ws", subprotocols=["mcp"])))
            while not any(isinstance(event, AcceptConnection) for event in ws.events()):
                ws.receive_data(sock.recv(4096))
            frames = b"".join(
                ws.send(TextMessage(json.dumps(message)))
                for message in (INITIALIZE, INITIALIZED, *(blob_call(n) for n in range(2, CALLS + 2)))
            )
            threading.Thread(target=_send_quietly, args=(sock, frames), daemon=True).start()

        return deferToThread(self.assert_bounded_and_dropped, daemon, attack).addErrback(self.explain)

    def test_stdio_stdout_not_read(self) -> Deferred[None]:
        def check() -> None:
            server = self.spawn_stdio(
                MCPD, "--stdio", "--tool-pack", "tests.fixture_pack", "--max-write-buffer", str(WRITE_BUFFER)
            )
            pid = server.process.pid
            server.send(INITIALIZE)
            self.assertIn("result", server.receive())
            server.send(blob_call(1))
            self.assertEqual(server.receive()["id"], 1)  # the last line it reads
            before = rss(pid)
            watch = PeakRSS(pid)
            lines = [INITIALIZED, *(blob_call(n) for n in range(2, CALLS + 2))]
            data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
            assert server.process.stdin is not None
            threading.Thread(target=_write_quietly, args=(server.process.stdin, data), daemon=True).start()
            try:
                # It gives up on a client that does not read, and stops.
                server.process.wait(20)
            finally:
                peak = watch.stop()
            self.assertLess(peak - before, RSS_GROWTH_LIMIT, f"RSS grew from {before} to {peak}")
            self.assertIn("over --max-write-buffer", server.stderr)

        return deferToThread(check).addErrback(self.explain)


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # dropped by the daemon, as it should be
        sock.sendall(data)


def _write_quietly(stream: Any, data: bytes) -> None:
    with contextlib.suppress(OSError, ValueError):
        stream.write(data)
        stream.flush()


def open_websocket(port: int) -> tuple[socket.socket, WSConnection]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host="127.0.0.1", target="/ws", subprotocols=["mcp"])))
    while not any(isinstance(event, AcceptConnection) for event in ws.events()):
        ws.receive_data(sock.recv(4096))
    return sock, ws


def close_frame(sock: socket.socket, ws: WSConnection) -> CloseConnection:
    """Read until the server's close frame."""
    while data := sock.recv(65536):
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, CloseConnection):
                return event
    raise AssertionError("the connection ended without a close frame")


def initialize_over_websocket(port: int) -> dict[str, Any]:
    """Another client, served meanwhile: its answer to initialize."""
    sock, ws = open_websocket(port)
    try:
        sock.sendall(ws.send(TextMessage(data=json.dumps(INITIALIZE))))
        while data := sock.recv(65536):
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, TextMessage):
                    answer: dict[str, Any] = json.loads(event.data)
                    return answer
        raise AssertionError("no answer to initialize")
    finally:
        sock.close()


class WebSocketFragmentTests(DaemonTestMixin, TestCase):
    """A WebSocket message cannot be kept open forever: empty continuation frames count against a
    frame limit (1009), and the rest of a split message must follow within --request-timeout (1008)."""

    timeout = 60

    def test_empty_continuation_frames(self) -> Deferred[None]:
        daemon = self.start_daemon()

        def check() -> None:
            sock, ws = open_websocket(daemon.port)
            self.addCleanup(sock.close)
            frames = b"".join(ws.send(TextMessage(data="", message_finished=False)) for _ in range(3000))
            threading.Thread(target=_send_quietly, args=(sock, frames), daemon=True).start()
            event = close_frame(sock, ws)
            self.assertEqual(event.code, 1009)
            self.assertIn("frames", event.reason)
            self.assertIn("result", initialize_over_websocket(daemon.port))

        return deferToThread(check).addErrback(self.explain)

    def test_a_split_message_that_never_ends(self) -> Deferred[None]:
        daemon = self.start_daemon("--request-timeout", "1")

        def check() -> None:
            sock, ws = open_websocket(daemon.port)
            self.addCleanup(sock.close)
            started = time.monotonic()
            sock.sendall(ws.send(TextMessage(data='{"jsonrpc": "2.0",', message_finished=False)))
            event = close_frame(sock, ws)
            self.assertEqual(event.code, 1008)
            self.assertLess(time.monotonic() - started, 5)
            self.assertIn("result", initialize_over_websocket(daemon.port))

        return deferToThread(check).addErrback(self.explain)


class TraceFileTests(DaemonTestMixin, TestCase):
    """A --trace-file that does not drain (a FIFO whose reader never reads) never stalls the
    daemon: the trace drops lines, and says so, instead of blocking the reactor."""

    timeout = 60

    def test_a_trace_fifo_nobody_reads(self) -> Deferred[None]:
        fifo = self.workdir / "trace.fifo"
        os.mkfifo(fifo)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # holds the FIFO open, reads nothing
        self.addCleanup(os.close, reader)
        daemon = self.start_daemon("--trace-file", str(fifo))

        def check() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
            self.addCleanup(connection.close)
            for n in range(300):
                body, headers = modern_request(n, "tools/call", blob_call(n, 16 * 1024)["params"])
                connection.request("POST", "/mcp", json.dumps(body), {"content-type": "application/json", **headers})
                response = connection.getresponse()
                self.assertEqual(response.status, 200)
                self.assertEqual(json.loads(response.read())["id"], n)
            self.assertIn("The trace file does not drain", daemon.log("stdout"))

        return deferToThread(check).addErrback(self.explain)
