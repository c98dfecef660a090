"""Raw clients for real daemons: an HTTP request, a WebSocket with its handshake done, a legacy SSE stream."""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from typing import Any

from tests.tls_certs import TLSFiles


def fetch(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def open_websocket(port: int) -> tuple[socket.socket, Any]:
    """A WebSocket to /ws (subprotocol mcp) with its handshake done: the socket and its wsproto."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host="127.0.0.1", target="/ws", subprotocols=["mcp"])))
    while True:
        ws.receive_data(sock.recv(65536))
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return sock, ws
            raise AssertionError(f"WebSocket handshake failed: {event!r}")


class RawSSE:
    """A legacy SSE stream on a raw socket: the endpoint it names, then the events as they come."""

    def __init__(self, port: int, tls: TLSFiles | None = None, headers: dict[str, str] | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if tls is not None:
            sock = ssl.create_default_context(cafile=str(tls.ca)).wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.port = port
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items()).encode()
        sock.sendall(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n" + extra + b"\r\n")
        self.buffer = b""
        head = self._until(b"\r\n\r\n")
        self.status_line, _, headers = head.partition("\r\n")
        self.headers = {
            name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in headers.split("\r\n"))
        }
        event = self.next_event()
        assert event.get("event") == "endpoint", event
        self.endpoint = event["data"]

    def _until(self, marker: bytes, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while marker not in self.buffer:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"stream closed; so far {self.buffer!r}")
            self.buffer += chunk
        text, _, self.buffer = self.buffer.partition(marker)
        return text.decode()

    def next_block(self, timeout: float = 5.0) -> str:
        """The next SSE block (an event or a comment), chunk sizes stripped."""
        while True:
            block = self._until(b"\n\n", timeout)
            lines = [line for line in block.split("\n") if line and not _is_chunk_size(line)]
            if lines:
                return "\n".join(lines)

    def next_event(self, timeout: float = 5.0) -> dict[str, str]:
        """The next event (comments skipped) as its fields."""
        while True:
            block = self.next_block(timeout)
            fields = dict(
                line.split(": ", 1) for line in block.split("\n") if ": " in line and not line.startswith(":")
            )
            if fields:
                return fields

    def close(self) -> None:
        self.sock.close()


def _is_chunk_size(line: str) -> bool:
    line = line.strip("\r")
    return not line or all(c in "0123456789abcdefABCDEF" for c in line)
