"""Just enough of an MCP client (standard library only) to set up and check a benchmark run.

It builds the ``tools/call`` of ``echo`` for each era, performs the legacy handshake, reads
replies whether they come back as JSON or as SSE, and drives a server over stdio.
"""

from __future__ import annotations

import http.client
import json
import os
import selectors
import time
from dataclasses import dataclass
from typing import IO, Any

from bench.procs import LOOPBACK

MODERN = "2026-07-28"
LEGACY = "2025-11-25"
ECHO_TEXT = "hi"
MCP_PATH = "/mcp"
ACCEPT = "application/json, text/event-stream"
CLIENT_INFO = {"name": "mcpd-bench", "version": "1"}
REPLY_TIMEOUT = 10.0

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class ProtocolProblem(Exception):
    """The server did not answer as an MCP server should; the message says what it did."""


class NoReply(ProtocolProblem):
    """The server stopped answering: it timed out or closed its end of the pipe."""


def call_message(request_id: Any, era: str) -> dict[str, Any]:
    """The JSON-RPC ``tools/call`` of ``echo`` for ``era`` (modern requests carry their own _meta)."""
    params: dict[str, Any] = {"name": "echo", "arguments": {"text": ECHO_TEXT}}
    if era == MODERN:
        # 2026-07-28: every request names its version and the client's capabilities.
        params["_meta"] = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def call_body_parts(era: str) -> tuple[str, str]:
    """The ``tools/call`` body split around its id, so a load generator can number requests."""
    sentinel = "\x00id\x00"
    prefix, suffix = encode(call_message(sentinel, era)).split(encode(sentinel))
    return prefix, suffix


# Sent with every HTTP request (bench/run.py --header), e.g. an API key.
EXTRA_HEADERS: dict[str, str] = {}


def call_headers(era: str, session_id: str | None = None) -> dict[str, str]:
    """The HTTP headers of a ``tools/call`` POST in ``era`` (legacy ones name the session)."""
    headers = {"Content-Type": "application/json", "Accept": ACCEPT, **EXTRA_HEADERS}
    if era == MODERN:
        # 2026-07-28 transports §Streamable HTTP: the version, method and name mirrored in headers.
        headers.update({"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "echo"})
    else:
        headers["MCP-Protocol-Version"] = LEGACY
        if session_id is not None:
            headers["Mcp-Session-Id"] = session_id
    return headers


def initialize_message(request_id: int) -> dict[str, Any]:
    """The legacy ``initialize`` request."""
    params = {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": CLIENT_INFO}
    return {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": params}


INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def encode(message: Any) -> str:
    """Compact JSON, one line."""
    return _dumps(message)


@dataclass(frozen=True)
class Reply:
    """An HTTP reply: status, lower-cased headers, and the JSON-RPC messages of its body."""

    status: int
    headers: dict[str, str]
    messages: list[Any]

    def response_to(self, request_id: Any) -> dict[str, Any]:
        """The JSON-RPC response to ``request_id`` in this reply."""
        for message in self.messages:
            if isinstance(message, dict) and message.get("id") == request_id and "method" not in message:
                return message
        raise ProtocolProblem(f"HTTP {self.status} without a response to request {request_id!r}: {self.messages!r}")


def parse_sse(text: str) -> list[Any]:
    """The JSON payloads of an SSE stream's events (events with empty data are skipped)."""
    messages = []
    for event in text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:"))
        if data.strip():
            messages.append(json.loads(data))
    return messages


def post(port: int, message: Any, headers: dict[str, str], timeout: float = REPLY_TIMEOUT) -> Reply:
    """POST one JSON-RPC message to the server's MCP endpoint and read the whole reply."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        connection.request("POST", MCP_PATH, body=encode(message).encode("utf-8"), headers=headers)
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
        reply_headers = {name.lower(): value for name, value in response.getheaders()}
    finally:
        connection.close()
    content_type = reply_headers.get("content-type", "")
    try:
        if content_type.startswith("text/event-stream"):
            messages = parse_sse(body)
        else:
            messages = [json.loads(body)] if body.strip() else []
    except ValueError:
        raise ProtocolProblem(f"HTTP {response.status} with a body that is not JSON: {body[:200]!r}") from None
    return Reply(response.status, reply_headers, messages)


def answers_http(port: int) -> bool:
    """Whether something answers HTTP on ``port`` (any status will do)."""
    try:
        post(port, call_message(0, MODERN), call_headers(MODERN), timeout=1.0)
    except (OSError, http.client.HTTPException, ProtocolProblem):
        return False
    return True


def check_echo(response: dict[str, Any]) -> None:
    """Raise `ProtocolProblem` unless ``response`` is a successful echo of `ECHO_TEXT`."""
    result = response.get("result")
    if not isinstance(result, dict) or result.get("isError"):
        raise ProtocolProblem(f"tools/call of echo failed: {response!r}")
    content = result.get("content")
    first = content[0] if isinstance(content, list) and content else None
    if not isinstance(first, dict) or first.get("type") != "text" or first.get("text") != ECHO_TEXT:
        raise ProtocolProblem(f"tools/call of echo did not echo {ECHO_TEXT!r}: {response!r}")


def open_legacy_session(port: int) -> str:
    """Perform the legacy handshake over HTTP and return the session id the server issued."""
    reply = post(port, initialize_message(0), {"Content-Type": "application/json", "Accept": ACCEPT, **EXTRA_HEADERS})
    response = reply.response_to(0)
    if reply.status != 200 or "result" not in response:
        raise ProtocolProblem(f"initialize got HTTP {reply.status}: {response!r}")
    # 2025-11-25 transports §Session Management: the id comes with the InitializeResult.
    session_id = reply.headers.get("mcp-session-id")
    if not session_id:
        raise ProtocolProblem("initialize answered without an Mcp-Session-Id header")
    notified = post(port, INITIALIZED, call_headers(LEGACY, session_id))
    if notified.status not in (200, 202, 204):
        raise ProtocolProblem(f"notifications/initialized got HTTP {notified.status}")
    return session_id


def verify_http_echo(port: int, era: str, session_id: str | None = None) -> None:
    """Call ``echo`` once over HTTP and check the reply, JSON or SSE."""
    reply = post(port, call_message(1, era), call_headers(era, session_id))
    if not 200 <= reply.status < 300:
        raise ProtocolProblem(f"tools/call got HTTP {reply.status}: {reply.messages!r}")
    check_echo(reply.response_to(1))


class StdioClient:
    """Newline-delimited JSON-RPC over a server's stdin and stdout, every read bounded in time."""

    def __init__(self, stdin: IO[bytes], stdout: IO[bytes]) -> None:
        self._stdin = stdin
        self._fd = stdout.fileno()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)
        self._buffer = b""

    def close(self) -> None:
        """Stop watching the server's stdout."""
        self._selector.close()

    def send(self, message: Any) -> None:
        """Write one message as one line."""
        try:
            self._stdin.write(encode(message).encode("utf-8") + b"\n")
            self._stdin.flush()
        except BrokenPipeError:
            raise NoReply("the server closed its stdin") from None

    def response_to(self, request_id: Any, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        """The next response to ``request_id``, skipping notifications and other traffic."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(deadline)
            try:
                message = json.loads(line)
            except ValueError:
                raise ProtocolProblem(f"a line on stdout is not JSON: {line[:200]!r}") from None
            if isinstance(message, dict) and message.get("id") == request_id and "method" not in message:
                return message

    def _line(self, deadline: float) -> bytes:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(remaining):
                raise NoReply("no reply on stdout in time")
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise NoReply("the server closed its stdout")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def handshake(self, timeout: float = REPLY_TIMEOUT) -> None:
        """The legacy handshake: ``initialize``, then ``notifications/initialized``."""
        self.send(initialize_message(0))
        response = self.response_to(0, timeout)
        if "result" not in response:
            raise ProtocolProblem(f"initialize failed: {response!r}")
        self.send(INITIALIZED)

    def response_to_request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a request and wait for its response."""
        self.send(message)
        return self.response_to(message["id"])
