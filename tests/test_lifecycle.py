"""Tests for `mcpd.lifecycle`: ordered start and stop, readiness and draining, with a Clock; and
over real sockets, calls cancelled by a shutdown answered on every transport."""

from __future__ import annotations

import json
import signal
import socket
import threading
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from wsproto.events import TextMessage

from mcpd.lifecycle import DRAINING, SERVING, STARTING, STOPPED, Lifecycle, OrderedMultiService, StartupError
from mcpd.services import DrainService, ReadinessService
from tests.clients import fetch, open_websocket
from tests.daemon import INITIALIZE, MCPD, DaemonTestMixin, modern_request, post, wait_for_event_blocking


class Step(Service):
    def __init__(self, name: str, journal: list[str], stop: Deferred[None] | None = None, fail: bool = False) -> None:
        self.setName(name)
        self.journal = journal
        self.stop = stop
        self.fail = fail

    def startService(self) -> None:
        if self.fail:
            raise OSError("the disk is gone")
        super().startService()
        self.journal.append(f"start {self.name}")

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.journal.append(f"stop {self.name}")
        return self.stop


class OrderTests(SynchronousTestCase):
    def test_stops_one_after_the_other_in_reverse(self) -> None:
        journal: list[str] = []
        slow: Deferred[None] = Deferred()
        root = OrderedMultiService()
        Step("pool", journal).setServiceParent(root)
        Step("engine", journal, stop=slow).setServiceParent(root)
        Step("listener", journal).setServiceParent(root)
        root.startService()
        d = root.stopService()
        self.assertEqual(journal[3:], ["stop listener", "stop engine"])  # the pool waits for the engine
        slow.callback(None)
        self.successResultOf(d)
        self.assertEqual(
            journal, ["start pool", "start engine", "start listener", "stop listener", "stop engine", "stop pool"]
        )

    def test_readable_startup_failure(self) -> None:
        root = OrderedMultiService()
        Step("pool", []).setServiceParent(root)
        Step("vector store", [], fail=True).setServiceParent(root)
        with self.assertRaises(StartupError) as caught:
            root.startService()
        self.assertEqual(str(caught.exception), "mcpd: cannot start vector store: the disk is gone")
        self.flushLoggedErrors(OSError)


class ReadinessTests(SynchronousTestCase):
    def test_ready_after_start_draining_at_stop(self) -> None:
        lifecycle, clock = Lifecycle(), Clock()
        service = ReadinessService(lifecycle, clock)
        service.startService()
        self.assertEqual(lifecycle.state, STARTING)
        self.assertFalse(lifecycle.ready)
        clock.advance(0)
        self.assertTrue(lifecycle.ready)
        service.stopService()
        self.assertEqual(lifecycle.state, DRAINING)
        self.assertTrue(lifecycle.draining)

    def test_ready_once_a_store_has_connected(self) -> None:
        lifecycle, clock = Lifecycle(), Clock()
        first_connection: Deferred[bool] = Deferred()
        service = ReadinessService(lifecycle, clock, [lambda: first_connection])
        service.startService()
        clock.advance(0)
        self.assertFalse(lifecycle.ready)
        first_connection.callback(False)  # not connected within its timeout: serve anyway
        clock.advance(0)
        self.assertTrue(lifecycle.ready)


class Connection:
    def __init__(self, pool: list[Any]) -> None:
        self.pool = pool

    def loseConnection(self) -> None:
        self.pool.remove(self)


class DrainTests(SynchronousTestCase):
    def make(self, timeout: float = 10.0) -> None:
        self.clock = Clock()
        self.lifecycle = Lifecycle()
        self.lifecycle.state = SERVING
        self.in_flight = 0
        self.events: list[str] = []
        self.connections: list[Any] = []
        self.drain = DrainService(
            self.lifecycle,
            self.clock,
            timeout,
            in_flight=lambda: self.in_flight,
            cancel_in_flight=lambda: self.events.append("calls cancelled"),
            end_subscriptions=lambda: self.events.append("subscriptions ended"),
            close_streams=[lambda retry: self.events.append(f"streams closed, retry {retry}") or 2],
            connections=lambda: self.connections,
        )

    def test_waits_for_calls_in_flight(self) -> None:
        self.make()
        self.in_flight = 1
        self.connections.append(Connection(self.connections))
        d = self.drain.stopService()
        self.assertEqual(self.events, ["subscriptions ended"])
        self.clock.advance(1.0)
        self.assertNoResult(d)
        self.in_flight = 0
        self.clock.advance(0.05)
        self.successResultOf(d)
        self.assertEqual(self.events, ["subscriptions ended", "streams closed, retry 2000"])
        self.assertEqual(self.connections, [])
        self.assertEqual(self.lifecycle.state, STOPPED)

    def test_gives_up_after_the_timeout(self) -> None:
        self.make(timeout=3.0)
        self.in_flight = 1
        d = self.drain.stopService()
        self.clock.pump([0.05] * 59)
        self.assertNoResult(d)
        self.clock.pump([0.05] * 3)
        self.successResultOf(d)
        # The calls are cancelled (and so answered) before their streams close.
        self.assertEqual(self.events, ["subscriptions ended", "calls cancelled", "streams closed, retry 2000"])

    def test_nothing_in_flight_is_quick(self) -> None:
        self.make()
        self.successResultOf(self.drain.stopService())


# -- over real sockets: a call still running when --shutdown-timeout ends is answered ----------

SHUTTING_DOWN = -32010


def _call(request_id: int, tool: str, label: str, progress: bool = False) -> dict[str, Any]:
    params: dict[str, Any] = {"name": tool, "arguments": {"label": label}}
    if progress:
        params["_meta"] = {"progressToken": label}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def _modern_call(
    request_id: int, tool: str, label: str, progress: bool = False
) -> tuple[dict[str, Any], dict[str, str]]:
    body, headers = modern_request(request_id, "tools/call", {"name": tool, "arguments": {"label": label}})
    if progress:
        body["params"]["_meta"]["progressToken"] = label
    return body, headers


def _legacy_session(port: int) -> dict[str, str]:
    status, headers, _body = post(port, INITIALIZE, {})
    assert status == 200, status
    session = {"mcp-session-id": headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    post(port, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
    return session


def _sse_messages(stream: bytes) -> list[Any]:
    """The JSON of every ``data:`` line of an SSE response (chunked framing left in place: every
    event is written as one chunk)."""
    return [json.loads(line[5:]) for line in stream.split(b"\n") if line.startswith(b"data: {")]


class AnsweredShutdownTests(DaemonTestMixin, TestCase):
    """SIGTERM with calls in flight on every transport and era: once --shutdown-timeout has
    passed, each call is answered with a -32010 "shutting down" error before its connection
    closes (the connection used to close on it with zero bytes)."""

    timeout = 60

    def test_every_http_transport_answers_its_cancelled_call(self) -> Deferred[None]:
        daemon = self.start_daemon("--shutdown-timeout", "1")
        port = daemon.port
        assert port is not None
        answers: dict[str, Any] = {}

        def modern_json() -> None:
            answers["modern json"] = post(port, *_modern_call(1, "tests.blocking_wait", "modern-json"), 30)

        def modern_sse() -> None:
            answers["modern sse"] = post(port, *_modern_call(1, "tests.progress_then_wait", "modern-sse", True), 30)

        legacy = _legacy_session(port)

        def legacy_json() -> None:
            answers["legacy json"] = post(port, _call(7, "tests.wait_for_cancel", "legacy-json"), legacy, 30)

        def legacy_sse() -> None:
            call = _call(8, "tests.progress_then_wait", "legacy-sse", progress=True)
            answers["legacy sse"] = post(port, call, legacy, 30)

        # Legacy HTTP+SSE: the answer comes on the GET /sse stream.
        sse = socket.create_connection(("127.0.0.1", port), timeout=30)
        sse.sendall(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        head = b""
        while b"session_id=" not in head or not head.endswith(b"\n\n\r\n"):
            head += sse.recv(65536)
        session_id = head.split(b"session_id=")[1].split(b"\n")[0].decode()
        messages = f"/messages/?session_id={session_id}"
        for message in (INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"}):
            self.assertEqual(fetch(port, "POST", messages, json.dumps(message).encode())[0], 202)

        # WebSocket.
        websocket, ws = open_websocket(port)
        for message in (INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"}):
            websocket.sendall(ws.send(TextMessage(json.dumps(message))))

        def check() -> None:
            callers = [
                threading.Thread(target=f, daemon=True) for f in (modern_json, modern_sse, legacy_json, legacy_sse)
            ]
            for caller in callers:
                caller.start()
            self.assertEqual(
                fetch(port, "POST", messages, json.dumps(_call(9, "tests.wait_for_cancel", "sse")).encode())[0], 202
            )
            websocket.sendall(ws.send(TextMessage(json.dumps(_call(10, "tests.blocking_wait", "ws")))))
            started = {
                "modern-json": "tests.blocking_wait",
                "modern-sse": "tests.progress_then_wait",
                "legacy-json": "tests.wait_for_cancel",
                "legacy-sse": "tests.progress_then_wait",
                "sse": "tests.wait_for_cancel",
                "ws": "tests.blocking_wait",
            }
            for label, tool in started.items():
                wait_for_event_blocking(daemon.events, f"started {tool} {label}")
            daemon.process.send_signal(signal.SIGTERM)
            for caller in callers:
                caller.join(20)
            self.assertEqual(daemon.process.wait(20), 0)

            status, headers, body = answers["modern json"]
            self.assertEqual((status, headers["retry-after"]), (503, "2"))
            self.assert_shutting_down(json.loads(body), 1)
            for name, request_id in (("modern sse", 1), ("legacy sse", 8)):
                status, headers, body = answers[name]
                self.assertEqual((status, headers["content-type"]), (200, "text/event-stream"), name)
                streamed = _sse_messages(body)
                self.assertEqual(streamed[0]["method"], "notifications/progress", name)
                self.assert_shutting_down(streamed[-1], request_id)
            status, _headers, body = answers["legacy json"]
            self.assertEqual(status, 200)
            self.assert_shutting_down(json.loads(body), 7)

            streamed = b""
            while chunk := sse.recv(65536):
                streamed += chunk
            sse.close()
            self.assert_shutting_down(_sse_messages(streamed)[-1], 9)
            self.assertLess(streamed.index(b"-32010"), streamed.index(b"retry: 2000"))

            frames = []
            while data := websocket.recv(65536):
                ws.receive_data(data)
                frames += [json.loads(e.data) for e in ws.events() if isinstance(e, TextMessage)]
            websocket.close()
            self.assert_shutting_down(frames[-1], 10)

        return deferToThread(check).addErrback(self.explain)

    def test_stdio_answers_its_cancelled_call(self) -> Deferred[None]:
        def check() -> None:
            server = self.spawn_stdio(MCPD, "--stdio", "--tool-pack", "tests.fixture_pack", "--shutdown-timeout", "1")
            server.send(INITIALIZE)
            server.receive()
            server.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            server.send(_call(2, "tests.blocking_wait", "stdio"))
            wait_for_event_blocking(self.events, "started tests.blocking_wait stdio")
            server.process.send_signal(signal.SIGTERM)
            self.assert_shutting_down(server.receive(10), 2)
            self.assertEqual(server.wait(10), 0)

        return deferToThread(check).addErrback(self.explain)

    def assert_shutting_down(self, answer: dict[str, Any], request_id: int) -> None:
        self.assertEqual(answer["id"], request_id, answer)
        self.assertEqual(answer["error"]["code"], SHUTTING_DOWN, answer)
        self.assertIn("shutting down", answer["error"]["message"])
