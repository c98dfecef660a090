"""Budgets and revocation on a real daemon (``twistd -n mcpd`` in a subprocess), over real sockets.

A key removed from the key file stops at once (``kill -HUP``) on every transport: WebSockets,
``/sse`` sessions, Streamable HTTP streams and sessions, ``subscriptions/listen`` streams over HTTP
and inside a WebSocket, calls in flight; a key downgraded meanwhile is served under its new scopes
on the streams it keeps open. One key cannot hold the whole of a budget (streams, connections,
sessions, tasks): its share is answered 429 and the others still get in. The daemon's memory stays
bounded (its RSS is measured) whatever one client opens.
"""

from __future__ import annotations

import collections
import json
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from tests.daemon import MCPD, DaemonTestMixin
from tests.security_harness import MODERN, SecurityTestCase, call_body, call_headers

LEGACY = "2025-11-25"
KEYS = "root:root-key\nalice:alice-key:read\nvictim:victim-key\n"


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid``, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    match = re.search(r"VmRSS:\s+(\d+)", status)
    assert match is not None, status
    return int(match.group(1))


def modern(method: str, params: dict[str, Any] | None = None, request_id: int = 1) -> dict[str, Any]:
    envelope = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**(params or {}), "_meta": envelope}}


def listen(request_id: int = 1) -> dict[str, Any]:
    return modern("subscriptions/listen", {"notifications": {"toolsListChanged": True}}, request_id)


def initialize(request_id: int = 0) -> dict[str, Any]:
    params = {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "shares", "version": "1"}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": params}


def legacy_call(tool: str, request_id: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": tool, "arguments": {}}}


class WSClosed(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed: {code} {reason}")
        self.code = code
        self.reason = reason


class WSRefused(Exception):
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"refused: {status} {body!r}")
        self.status, self.headers, self.body = status, headers, body


class BlockingWS:
    """A WebSocket client on a blocking socket (wsproto), with an API key."""

    def __init__(self, port: int, key: str, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: collections.deque[Any] = collections.deque()
        self._text: list[str] = []
        headers = [(b"authorization", f"Bearer {key}".encode())]
        self.sock.sendall(
            self.ws.send(Request(host="127.0.0.1", target="/ws", subprotocols=["mcp"], extra_headers=headers))
        )
        event = self._event(timeout)
        if isinstance(event, RejectConnection):
            status, headers, body = event.status_code, dict(event.headers), b""
            while event.has_body:
                data = self._event(timeout)
                assert isinstance(data, RejectData)
                body += data.data
                if data.body_finished:
                    break
            self.sock.close()
            raise WSRefused(status, {k.decode().lower(): v.decode() for k, v in headers.items()}, body)
        assert isinstance(event, AcceptConnection), event

    def _event(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not self.events:
            self.events.extend(self.ws.events())
            if self.events:
                break
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                raise WSClosed(None, "connection closed without a close frame")
            self.ws.receive_data(data)
        return self.events.popleft()

    def send(self, message: Any) -> None:
        self.sock.sendall(self.ws.send(TextMessage(data=json.dumps(message))))

    def receive(self, timeout: float = 10.0) -> Any:
        """The next message; `WSClosed` when the server closes."""
        while True:
            event = self._event(timeout)
            if isinstance(event, TextMessage):
                self._text.append(event.data)
                if event.message_finished:
                    text, self._text = "".join(self._text), []
                    return json.loads(text)
            elif isinstance(event, Ping):
                self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                raise WSClosed(event.code, event.reason)

    def request(self, message: Any, timeout: float = 10.0) -> Any:
        """Send a request and return its response (notifications before it are skipped)."""
        self.send(message)
        while True:
            reply = self.receive(timeout)
            if reply.get("id") == message["id"] and "method" not in reply:
                return reply

    def close(self) -> None:
        self.sock.close()


class HeldResponse:
    """One request on its own socket whose response stays open (an SSE stream)."""

    def __init__(
        self, port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"", head: bool = True
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        fields = {"Host": f"127.0.0.1:{port}", **headers}
        if body or method == "POST":
            fields["Content-Length"] = str(len(body))
        lines = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
        self.sock.sendall(lines.encode("latin-1") + body)
        self.data = b""
        self.status = 0
        self.headers: dict[str, str] = {}
        if head:
            self.read_head()

    def read_head(self) -> None:
        """Read the response's status and headers."""
        raw_head = self.read_until(b"\r\n\r\n")
        status_line, *lines = raw_head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        self.data = self.data[len(raw_head) :]

    def read_until(self, marker: bytes, timeout: float = 10.0) -> bytes:
        """Read until ``marker`` has arrived; everything up to and including it."""
        deadline = time.monotonic() + timeout
        while marker not in self.data:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"closed before {marker!r}; so far {self.data[-300:]!r}")
            self.data += chunk
        return self.data[: self.data.index(marker) + len(marker)]

    def complete(self) -> bool:
        """Whether the data hold a whole response: its last chunk, or as many bytes of body as
        its Content-Length says (a late answer is framed by its length, not chunked)."""
        if b"\r\n0\r\n\r\n" in self.data:
            return True
        head, found, body = self.data.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        return bool(found and length and len(body) >= int(length.group(1)))

    def ended(self, timeout: float = 10.0) -> bool:
        """Whether the response ends (complete, or the connection closing) in time."""
        deadline = time.monotonic() + timeout
        while not self.complete() and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
            if not chunk:
                return True
            self.data += chunk
        return self.complete()

    def close(self) -> None:
        self.sock.close()


class SharesTestCase(SecurityTestCase):
    timeout = 120

    def daemon_with(self, keys: str, *args: str) -> int:
        (self.workdir / "keys.txt").write_text(keys, encoding="utf-8")
        port = self.start(*args)[0].port
        self.port = port
        return port

    def post(self, message: Any, key: str, **headers: str) -> tuple[int, dict[str, str], Any]:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            fields = {
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
                "Authorization": f"Bearer {key}",
                **headers,
            }
            connection.request("POST", "/mcp", json.dumps(message).encode(), fields)
            response = connection.getresponse()
            body = response.read()
            kind = response.getheader("content-type", "")
            if kind.startswith("text/event-stream"):
                data = [
                    line[5:] for line in body.decode().splitlines() if line.startswith("data:") and line[5:].strip()
                ]
                parsed = json.loads(data[-1]) if data else None
            else:
                parsed = json.loads(body) if body else None
            return response.status, {k.lower(): v for k, v in response.getheaders()}, parsed
        finally:
            connection.close()

    def reload(self, keys: str) -> None:
        """Rewrite the key file and send SIGHUP; wait until the daemon says it reloaded."""
        before = self.daemon.log("stdout").count("Reloaded ")
        (self.workdir / "keys.txt").write_text(keys, encoding="utf-8")
        self.daemon.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.daemon.log("stdout").count("Reloaded ") == before:
            self.assertLess(time.monotonic(), deadline, "no reload in the log")
            time.sleep(0.05)

    def events_of(self, key: str) -> list[str]:
        events = self.daemon.events
        lines = events.read_text(encoding="utf-8").splitlines() if events.exists() else []
        return [line for line in lines if line.endswith(f" {key}")]

    def wait_for_event(self, line: str, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until the tools recorded ``line`` ``count`` times."""
        deadline = time.monotonic() + timeout
        events = self.daemon.events
        while (events.read_text(encoding="utf-8") if events.exists() else "").splitlines().count(line) < count:
            self.assertLess(time.monotonic(), deadline, f"no {line!r} in the events")
            time.sleep(0.05)

    def wait_for_holdings(self, account: str, kind: str, count: int, timeout: float = 10.0) -> None:
        """Wait until ``account`` holds ``count`` of ``kind`` (closed sockets are seen a moment later)."""
        deadline = time.monotonic() + timeout
        while self.stats()["holdings"].get(account, {}).get(kind, 0) != count:
            self.assertLess(time.monotonic(), deadline, self.stats()["holdings"])
            time.sleep(0.05)

    def modern_headers(self, method: str, key: str, name: str | None = None) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": method,
            "Authorization": f"Bearer {key}",
        }
        if name is not None:
            headers["Mcp-Name"] = name
        return headers

    def legacy_get_stream(self, port: int, key: str) -> tuple[str, HeldResponse]:
        """A legacy Streamable HTTP session of ``key``'s and its open GET stream."""
        status, headers, _ = self.post(initialize(), key)
        self.assertEqual(status, 200)
        session_id = headers["mcp-session-id"]
        get = HeldResponse(
            port,
            "GET",
            "/mcp",
            {"Accept": "text/event-stream", "Mcp-Session-Id": session_id, "Authorization": f"Bearer {key}"},
        )
        self.assertEqual(get.status, 200)
        return session_id, get

    def http_listen(self, key: str) -> HeldResponse:
        body = json.dumps(listen()).encode()
        return HeldResponse(self.port, "POST", "/mcp", self.modern_headers("subscriptions/listen", key), body)

    def stats(self) -> dict[str, Any]:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]


class RevocationTests(SharesTestCase):
    """Finding 2: a key removed from the key file (kill -HUP) stops everywhere at once."""

    def test_a_revoked_key_stops_on_every_transport(self) -> None:
        port = self.daemon_with(KEYS)
        # A legacy WebSocket session, a WebSocket carrying a listen, one with a call in flight.
        legacy_ws = BlockingWS(port, "victim-key")
        self.assertIn("result", legacy_ws.request(initialize()))
        listen_ws = BlockingWS(port, "victim-key")
        listen_ws.send(listen())
        self.assertEqual(listen_ws.receive()["method"], "notifications/subscriptions/acknowledged")
        busy_ws = BlockingWS(port, "victim-key")
        busy_ws.send(modern("tools/call", {"name": "sec.slow", "arguments": {}}, 7))
        # /sse: a session and its stream.
        sse = HeldResponse(port, "GET", "/sse", {"Accept": "text/event-stream", "Authorization": "Bearer victim-key"})
        endpoint = sse.read_until(b"\n\n").decode()
        self.assertIn("/messages/?session_id=", endpoint)
        # Streamable HTTP: a legacy session and its GET stream; a listen; a call in flight.
        session_id, get = self.legacy_get_stream(port, "victim-key")
        http_listen = self.http_listen("victim-key")
        http_listen.read_until(b"acknowledged")
        slow = HeldResponse(
            port,
            "POST",
            "/mcp",
            call_headers("sec.slow", Authorization="Bearer victim-key"),
            call_body("sec.slow"),
            head=False,
        )
        self.wait_for_event("started sec.slow victim", count=2)
        # Another key's WebSocket, open across the reload.
        root_ws = BlockingWS(port, "root-key")

        self.reload("root:root-key\nalice:alice-key:read\n")

        for ws in (legacy_ws, listen_ws, busy_ws):
            with self.assertRaises(WSClosed) as closed:
                while True:
                    ws.receive()
            self.assertEqual((closed.exception.code, closed.exception.reason), (1008, "the API key was revoked"))
        for stream in (sse, get, http_listen, slow):
            self.assertTrue(stream.ended(), stream.data[-200:])
        self.assertEqual(self.events_of("victim").count("cancelled sec.slow victim"), 2)
        # Nothing of the victim's is served any more, and nothing it tried ran.
        self.assertEqual(self.post(initialize(), "victim-key")[0], 401)
        self.assertEqual(
            self.post(legacy_call("sec.record", 1), "victim-key", **{"Mcp-Session-Id": session_id})[0], 401
        )
        self.assertEqual([e for e in self.events_of("victim") if e.startswith("executed")], [])
        # The other key's WebSocket was left alone.
        reply = root_ws.request(modern("tools/call", {"name": "sec.read", "arguments": {}}, 3))
        self.assertEqual(reply["result"]["content"][0]["text"], "read")
        self.assertIn("Revoked API key(s) victim", self.daemon.log("stdout"))
        # What it held is given back; only the connections its streams came on are still open.
        self.assertEqual(list(self.stats()["holdings"].get("key:victim", {})), ["connections"])
        for client in (legacy_ws, listen_ws, busy_ws, root_ws):
            client.close()

    def test_a_downgraded_key_is_served_under_its_new_scopes_on_open_streams(self) -> None:
        port = self.daemon_with(KEYS)
        ws = BlockingWS(port, "victim-key")
        self.assertIn("result", ws.request(initialize()))
        ws.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        self.assertEqual(ws.request(legacy_call("sec.record", 1))["result"]["content"][0]["text"], "recorded")
        ws.send(legacy_call("sec.slow", 2))
        sse = HeldResponse(port, "GET", "/sse", {"Accept": "text/event-stream", "Authorization": "Bearer victim-key"})
        endpoint = sse.read_until(b"\n\n").decode().split("data: ")[1].strip()
        self.wait_for_event("started sec.slow victim")

        self.reload("root:root-key\nalice:alice-key:read\nvictim:victim-key:read\n")

        # The call in flight ran under the old grant: cancelled. The connection stays open.
        self.wait_for_event("cancelled sec.slow victim")
        refused = ws.request(legacy_call("sec.record", 3))
        self.assertIn("Unknown tool: sec.record", refused["error"]["message"])
        self.assertEqual(ws.request(legacy_call("sec.read", 4))["result"]["content"][0]["text"], "read")
        # The /sse session's messages are served under the key's scopes as they are now.
        headers = {"Content-Type": "application/json", "Authorization": "Bearer victim-key"}
        for message in (initialize(), legacy_call("sec.record", 5)):
            status, _, _ = self.post_to(endpoint, message, headers)
            self.assertEqual(status, 202)
        sse.read_until(b'"id":5')
        self.assertIn("Unknown tool: sec.record", sse.data.decode())
        self.assertEqual(self.events_of("victim").count("executed sec.record victim"), 1)
        self.assertIn("API key victim now has scopes read", self.daemon.log("stdout"))
        ws.close()
        sse.close()

    def test_a_key_moved_to_another_tenant_stops_what_it_holds(self) -> None:
        # What a key opened was made under its tenant (a WebSocket's caller, a session's
        # subscriptions): moved to another tenant, it would go on reading and writing the old
        # one's records there. Its secret is unchanged; everything it holds ends, and it
        # reconnects as the new tenant.
        port = self.daemon_with(KEYS.replace("victim:victim-key", "victim:victim-key:admin:ta"))
        ws = BlockingWS(port, "victim-key")
        self.assertIn("result", ws.request(initialize()))
        sse = HeldResponse(port, "GET", "/sse", {"Accept": "text/event-stream", "Authorization": "Bearer victim-key"})
        self.assertIn(b"/messages/?session_id=", sse.read_until(b"\n\n"))
        _, get = self.legacy_get_stream(port, "victim-key")
        root_ws = BlockingWS(port, "root-key")

        self.reload(KEYS.replace("victim:victim-key", "victim:victim-key:admin:tb"))

        with self.assertRaises(WSClosed) as closed:
            while True:
                ws.receive()
        self.assertEqual(
            (closed.exception.code, closed.exception.reason), (1008, "the API key moved to another tenant")
        )
        for stream in (sse, get):
            self.assertTrue(stream.ended(), stream.data[-200:])
        self.assertIn("API key(s) victim (ta -> tb) moved to another tenant", self.daemon.log("stdout"))
        # The same key, as its new tenant, on a new WebSocket; the other key's was left alone.
        again = BlockingWS(port, "victim-key")
        for client in (again, root_ws):
            reply = client.request(modern("tools/call", {"name": "sec.read", "arguments": {}}, 3))
            self.assertEqual(reply["result"]["content"][0]["text"], "read")
        for client in (again, root_ws):
            client.close()

    def post_to(self, path: str, message: Any, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("POST", path, json.dumps(message).encode(), headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()


class StreamShareTests(SharesTestCase):
    """Finding 5: every long-lived stream counts, and one key cannot hold every connection."""

    def test_listens_count_and_the_admin_still_gets_in(self) -> None:
        port = self.daemon_with(KEYS, "--max-streams-per-key", "16", "--max-connections", "100")
        held = [self.http_listen("alice-key") for _ in range(16)]
        for response in held:
            response.read_until(b"acknowledged")
        status, headers, body = self.post(
            listen(), "alice-key", **{"MCP-Protocol-Version": MODERN, "Mcp-Method": "subscriptions/listen"}
        )
        self.assertEqual((status, headers["retry-after"]), (429, "5"))
        self.assertEqual(body["error"]["code"], -32000)
        self.assertIn("Too many streams: this API key holds 16 of at most 16", body["error"]["message"])
        with self.assertRaises(WSRefused) as refused:
            BlockingWS(port, "alice-key")
        self.assertEqual((refused.exception.status, refused.exception.headers["retry-after"]), (429, "5"))
        self.assertIn(b"Too many streams", refused.exception.body)
        # Idle connections count too: alice holds 16, her share of 100 is 25.
        self.wait_for_holdings("key:alice", "connections", 16)
        idle = []
        for n in range(9):
            connection = HeldResponse(
                port,
                "POST",
                "/mcp",
                call_headers("sec.read", Authorization="Bearer alice-key"),
                call_body("sec.read", n),
            )
            self.assertEqual(connection.status, 200)
            idle.append(connection)
        over = HeldResponse(
            port, "POST", "/mcp", call_headers("sec.read", Authorization="Bearer alice-key"), call_body("sec.read")
        )
        self.assertEqual(over.status, 429)
        self.assertIn(b"Too many connections", over.read_until(b"}"))
        self.assertTrue(over.ended())
        # The admin gets in, on HTTP and on a WebSocket.
        status, _, body = self.post(
            modern("tools/call", {"name": "sec.record", "arguments": {}}),
            "root-key",
            **{"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "sec.record"},
        )
        self.assertEqual(status, 200, body)
        BlockingWS(port, "root-key").close()
        # Each listen is a stream, and a call in flight, of alice's.
        self.assertEqual(self.stats()["holdings"]["key:alice"], {"connections": 25, "streams": 16, "calls": 16})
        outcomes = [record["outcome"] for record in self.audit()]
        self.assertIn("connection_limit", outcomes)
        self.assertGreaterEqual(self.stats()["refusals"]["streams_limit"], 2)
        for response in held + idle:
            response.close()

    def test_listens_on_one_websocket_are_bounded_in_number_and_memory(self) -> None:
        port = self.daemon_with(KEYS, "--rate-limit", "1000000")
        ws = BlockingWS(port, "root-key")
        ws.request(modern("tools/list", request_id=0))
        before = rss_kib(self.daemon.process.pid)
        sent = 20_000
        acknowledged = refused = 0
        batch = 500
        for start in range(0, sent, batch):
            for n in range(start, start + batch):
                ws.send(listen(n + 1))
            got = 0
            while got < batch:
                reply = ws.receive()
                if reply.get("method") == "notifications/subscriptions/acknowledged":
                    acknowledged += 1
                    got += 1
                elif "error" in reply:
                    self.assertEqual(reply["error"]["code"], -32000)
                    refused += 1
                    got += 1
        grown = rss_kib(self.daemon.process.pid) - before
        # The WebSocket is one of the key's 16 streams, and each listen inside it another.
        self.assertEqual((acknowledged, refused), (15, sent - 15))
        # Unbounded, 20,000 listens held ~110 MB (277 MB for 50,000).
        self.assertLess(grown, 20 * 1024, f"RSS grew {grown} KiB")
        ws.close()


class StoreShareTests(SharesTestCase):
    """Finding 6: sessions and tasks are shared out per key, with a global session cap."""

    def test_one_key_cannot_take_every_session(self) -> None:
        self.daemon_with(KEYS, "--max-sessions", "4", "--share-per-key", "50")
        held = [
            HeldResponse(self.port, "GET", "/sse", {"Authorization": f"Bearer {key}"})
            for key in ("root-key", "root-key", "alice-key", "alice-key")
        ]
        for response in held:
            self.assertEqual(response.status, 200)
        mine = HeldResponse(self.port, "GET", "/sse", {"Authorization": "Bearer root-key"})
        self.assertEqual((mine.status, mine.headers["retry-after"]), (429, "5"))
        self.assertIn(b"Too many sessions: this API key holds 2 of at most 2", mine.read_until(b"}"))
        status, headers, body = self.post(initialize(), "victim-key")
        self.assertEqual((status, headers["retry-after"]), (503, "5"))
        self.assertEqual((body["id"], body["error"]["code"]), (0, -32000))
        self.assertIn("its limit of 4", body["error"]["message"])
        held[0].close()
        deadline = time.monotonic() + 5
        while self.post(initialize(), "victim-key")[0] != 200:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)
        for response in held:
            response.close()

    def test_initialize_floods_stay_within_the_share(self) -> None:
        import http.client

        self.daemon_with(KEYS, "--max-sessions", "400", "--rate-limit", "1000000")
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "Authorization": "Bearer alice-key",
        }
        body = json.dumps(initialize()).encode()

        def flood(count: int) -> None:
            for _ in range(count):
                connection.request("POST", "/mcp", body, headers)
                response = connection.getresponse()
                response.read()
                self.assertEqual(response.status, 200)

        flood(500)  # past the share: the oldest idle sessions make room
        before = rss_kib(self.daemon.process.pid)
        flood(10_000)
        grown = rss_kib(self.daemon.process.pid) - before
        connection.close()
        self.assertEqual(self.stats()["holdings"]["key:alice"]["sessions"], 100)
        # Unbounded, 10,000 sessions held ~17 MB.
        self.assertLess(grown, 6 * 1024, f"RSS grew {grown} KiB")
        self.assertEqual(self.post(initialize(), "root-key")[0], 200)

    def test_one_key_cannot_fill_the_task_store(self) -> None:
        keys = "filler:filler-key\nother:other-key\n"
        (self.workdir / "keys.txt").write_text(keys, encoding="utf-8")
        self.start("--tool-pack", "tests.conformance_pack", "--rate-limit", "1000000")
        self.port = self.daemon.port  # type: ignore[assignment]
        tasks_meta = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}},
        }
        message = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "slow_compute", "arguments": {"seconds": 600}, "_meta": tasks_meta},
        }
        route = {"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "slow_compute"}
        for _ in range(250):
            status, _, body = self.post(message, "filler-key", **route)
            self.assertEqual((status, body["result"]["resultType"]), (200, "task"))
        status, headers, body = self.post(message, "filler-key", **route)
        self.assertEqual((status, headers["retry-after"]), (429, "5"))
        self.assertEqual(body["error"]["code"], -32000)
        self.assertIn("Too many tasks: this API key holds 250 of at most 250", body["error"]["message"])
        status, _, body = self.post(message, "other-key", **route)
        self.assertEqual((status, body["result"]["resultType"]), (200, "task"))


class StdioShareTests(DaemonTestMixin, SynchronousTestCase):
    """stdio serves one client, yet its listens are streams too: bounded in number."""

    def test_listens_over_stdio(self) -> None:
        server = self.spawn_stdio(MCPD, "--stdio", "--max-streams-per-key", "4")
        for n in range(6):
            server.send(listen(n + 1))
        replies = [server.receive() for _ in range(6)]
        acknowledged = [r for r in replies if r.get("method") == "notifications/subscriptions/acknowledged"]
        refused = [r for r in replies if "error" in r]
        self.assertEqual((len(acknowledged), len(refused)), (4, 2))
        self.assertEqual({r["error"]["code"] for r in refused}, {-32000})
        self.assertIn("Too many streams: this client holds 4 of at most 4", refused[0]["error"]["message"])
        server.close_stdin()
        self.assertEqual(server.wait(), 0, server.stderr)
