"""Bad input over real sockets: a seeded barrage of malformed HTTP requests never makes the daemon
fail a request with a 500 or log a traceback, and it keeps serving afterwards."""

from __future__ import annotations

import json
import random
import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.daemon import DaemonTestMixin

PATHS = [
    "/",
    "/mcp",
    "/mcp/",
    "/sse",
    "/messages/?session_id=nope",
    "/messages/",
    "/ws",
    "/health",
    "/ready",
    "/stats?recent=x",
    "/metrics",
    "/dashboard",
    "/%00",
    "/mcp/../etc/passwd",
    "/" + "a" * 3000,
]
METHODS = ["GET", "POST", "DELETE", "PUT", "OPTIONS", "HEAD", "PATCH", "FOO"]
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}
BODIES = [
    b"",
    b"{",
    b"[]",
    b"[{}]",
    b"null",
    b"1",
    b'"text"',
    b"\xff\xfe\x00",
    b'{"a":' * 3000,
    b'{"jsonrpc":"2.0"}',
    b'{"jsonrpc":"2.0","id":{},"method":5}',
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":1}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"server.info"}}',
    json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "server.tools", "arguments": {"match": ["x"]}, "_meta": MODERN_META},
        }
    ).encode(),
    json.dumps(
        {"jsonrpc": "2.0", "id": 2, "method": "resources/read", "params": {"uri": None, "_meta": MODERN_META}}
    ).encode(),
    json.dumps(
        {"jsonrpc": "2.0", "id": 3, "method": "prompts/get", "params": {"name": {"x": 1}, "_meta": MODERN_META}}
    ).encode(),
    json.dumps(
        {"jsonrpc": "2.0", "id": 4, "method": "completion/complete", "params": {"ref": 7, "_meta": MODERN_META}}
    ).encode(),
    json.dumps(
        {"jsonrpc": "2.0", "id": 5, "method": "tasks/get", "params": {"taskId": [1], "_meta": MODERN_META}}
    ).encode(),
    json.dumps(
        {"jsonrpc": "2.0", "id": 6, "method": "subscriptions/listen", "params": {"filter": "x", "_meta": MODERN_META}}
    ).encode(),
]
HEADER_SETS: list[dict[str, str]] = [
    {},
    {"Content-Type": "application/json"},
    {"Content-Type": "text/plain"},
    {"MCP-Protocol-Version": "2026-07-28"},
    {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "server.info"},
    {"MCP-Protocol-Version": "1999-01-01"},
    {"Mcp-Session-Id": "nope"},
    {"Accept": "text/event-stream"},
    {"Accept": "application/xml"},
    {"Origin": "http://evil.example"},
    {"Last-Event-ID": "s1.x"},
    {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "x", "Sec-WebSocket-Version": "13"},
    {"Transfer-Encoding": "chunked"},
    {"X-Request-Id": "a" * 300},
    {"Authorization": "Bearer nonsense"},
    # Bytes that are not ASCII (sent as Latin-1) in headers mcpd reads, and in one it does not.
    {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "caf\xe9"},
    {"Origin": "http://caf\xe9.example"},
    {"Host": "caf\xe9"},
    {"Mcp-Session-Id": "\xe9"},
    {"User-Agent": "caf\xe9"},
]


def barrage(port: int, count: int, seed: int) -> dict[str, int]:
    """Send ``count`` malformed requests, one connection each; count the statuses."""
    rng = random.Random(seed)
    statuses: dict[str, int] = {}
    for _ in range(count):
        method, path, body = rng.choice(METHODS), rng.choice(PATHS), rng.choice(BODIES)
        headers = {**rng.choice(HEADER_SETS), **rng.choice(HEADER_SETS)}
        head = f"{method} {path} HTTP/1.1\r\n"
        if "Host" not in headers:
            head += f"Host: 127.0.0.1:{port}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        if "Transfer-Encoding" not in headers:
            head += f"Content-Length: {len(body)}\r\n"
        status = "none"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
                sock.sendall(head.encode("latin-1") + b"\r\n" + body)
                sock.settimeout(0.2)
                data = sock.recv(64)
                if data.startswith(b"HTTP/1.1 "):
                    status = data[9:12].decode()
                elif data:
                    status = "garbage"
        except TimeoutError:
            pass  # a request whose body never came: answered only by the read timeout
        except (ConnectionResetError, BrokenPipeError):
            status = "reset"
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


class BadInputTests(DaemonTestMixin, TestCase):
    timeout = 120

    def test_malformed_requests_never_break_the_daemon(self) -> Deferred[None]:
        daemon = self.start_daemon(fixture_pack=False)
        assert daemon.port is not None
        port = daemon.port

        def attack() -> tuple[dict[str, int], Any]:
            statuses: dict[str, int] = {}
            for seed in (1, 2, 3):
                for status, count in barrage(port, 150, seed).items():
                    statuses[status] = statuses.get(status, 0) + count
            from tests.test_packaging import call_server_info

            return statuses, call_server_info(port)

        def check(outcome: tuple[dict[str, int], Any]) -> None:
            statuses, info = outcome
            server_errors = {status: n for status, n in statuses.items() if status.startswith("5") and status != "501"}
            self.assertEqual(server_errors, {}, statuses)
            self.assertEqual(statuses.get("garbage", 0), 0, statuses)
            self.assertGreater(sum(n for status, n in statuses.items() if status.startswith("4")), 100, statuses)
            # Still serving, and nothing blew up inside.
            self.assertEqual(info["name"], "mcpd")
            log = daemon.log("stdout") + daemon.log("stderr")
            self.assertNotIn("Traceback", log)
            self.assertNotIn("#critical", log)

        return deferToThread(attack).addCallback(check)
