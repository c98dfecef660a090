# -*- test-case-name: tests.test_fuzz -*-
"""Raw clients for the bad-input suites, and strict readers of what mcpd answers.

What goes out is exactly the bytes a client chose: `raw_request` writes a request head by hand
(missing or duplicated headers, Latin-1 bytes, any method and target), `HTTPClient` sends through
httpx2 (the MCP SDK's own HTTP stack: its h11 framing, its WebSocket handshake) with whatever
body and headers the test gives. What comes back is read strictly: responses are parsed by h11,
SSE streams by `SSEDecoder` over strictly decoded UTF-8, and every JSON text by `strict_loads`,
which accepts only interoperable JSON (RFC 8259 without NaN or Infinity, no number that overflows
a double, no lone surrogate, no duplicate member name: I-JSON, RFC 7493 §2).
"""

from __future__ import annotations

import codecs
import contextlib
import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import h11
import httpx2

Headers = Sequence[tuple[str, str]]


class NotStrictJSON(ValueError):
    """A text that an interoperable JSON parser would refuse; the message says why."""


def _constant(name: str) -> Any:
    raise NotStrictJSON(f"{name} is not JSON (RFC 8259 §6)")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise NotStrictJSON(f"the number {text[:40]} overflows a double (RFC 7493 §2.2)")
    return value


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise NotStrictJSON(f"duplicate member names in {names[:10]} (RFC 7493 §2.3)")
    return dict(pairs)


def lone_surrogate(value: Any) -> str | None:
    """The first string (member names included) in ``value`` holding a lone surrogate, or None."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if any("\ud800" <= c <= "\udfff" for c in item):
                return item
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
    return None


def strict_loads(data: bytes | str) -> Any:
    """Parse a JSON text as an interoperable peer would, or raise `NotStrictJSON`."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise NotStrictJSON(f"not UTF-8: {e}") from None
    try:
        value = json.loads(data, parse_constant=_constant, parse_float=_finite, object_pairs_hook=_unique_members)
    except NotStrictJSON:
        raise
    except (ValueError, RecursionError) as e:
        raise NotStrictJSON(f"not JSON: {e}") from None
    text = lone_surrogate(value)
    if text is not None:
        raise NotStrictJSON(f"a lone surrogate in {text[:40]!r} (RFC 7493 §2.1)")
    return value


# -- HTTP by hand --------------------------------------------------------------------------------


def raw_request(method: str, target: str, headers: Headers, body: bytes = b"", *, length: bool = True) -> bytes:
    """A request exactly as given: no header is added but ``Content-Length`` (when ``length``);
    names and values are sent as Latin-1, so a test can send any byte a broken client would."""
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers)
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode("latin-1") + b"\r\n" + body


@attrs.define
class Reply:
    """An HTTP response as read off the socket."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    # The body ended because the test stopped reading (an open SSE stream), not by its framing.
    cut: bool = False

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name]
        return values[-1] if values else None

    @property
    def content_type(self) -> str:
        return (self.header("content-type") or "").split(";")[0].strip().lower()


def exchange(port: int, request: bytes, method: str, *, timeout: float = 10.0, settle: float = 0.3) -> Reply | None:
    """Send ``request`` on a new connection and read one response with h11; None when the
    connection closes (or resets) without one. An event stream is read until it has been quiet
    for ``settle`` seconds; a WebSocket upgrade ends the reading at its 101."""
    client = h11.Connection(h11.CLIENT)
    # h11 learns what was asked (HEAD has no body) from a request of that method; the bytes that
    # really go out are ``request``, which h11 may consider invalid.
    headers = [("Host", "x"), ("Content-Length", "0")]
    if b"\r\nupgrade:" in request.lower():
        # h11 reads a 101 as the switch it is only when the request asked for one.
        headers += [("Connection", "Upgrade"), ("Upgrade", "websocket")]
    client.send(h11.Request(method=method, target="/", headers=headers))
    client.send(h11.EndOfMessage())
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # Refused before the body was read: the answer may still be there.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        return _read_reply(sock, client, timeout, settle)


def _read_reply(sock: socket.socket, client: h11.Connection, timeout: float, settle: float) -> Reply | None:
    deadline = time.monotonic() + timeout
    reply: Reply | None = None
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError:
            if reply is None:
                return None  # closed (or garbage) before any response
            raise
        if event is h11.NEED_DATA:
            streaming = reply is not None and reply.content_type == "text/event-stream"
            wait = settle if streaming else deadline - time.monotonic()
            if wait <= 0:
                raise TimeoutError(f"no complete response within {timeout}s: {reply}")
            sock.settimeout(wait)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if streaming and reply is not None:
                    reply.cut = True
                    return reply
                raise
            except ConnectionResetError:
                data = b""
            client.receive_data(data)
            continue
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                return Reply(101, _decoded(event.headers), b"")
            continue
        if isinstance(event, h11.Response):
            reply = Reply(event.status_code, _decoded(event.headers), b"")
        elif isinstance(event, h11.Data) and reply is not None:
            reply.body += bytes(event.data)
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return reply


def _decoded(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in headers]


# -- server-sent events ----------------------------------------------------------------------------


class SSEDecoder:
    """Server-sent events (WHATWG HTML §9.2.6) from chunks of bytes that must be UTF-8."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        # The unfinished line, in the pieces it came in (joined once it ends: an event of
        # megabytes in small chunks is not copied again with each one).
        self._line: list[str] = []
        self._fields: dict[str, str] = {}
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[dict[str, str]]:
        """The events completed by ``chunk``: their fields, ``data`` lines joined by newlines.
        `NotStrictJSON` if the stream is not UTF-8."""
        try:
            text = self._utf8.decode(chunk)
        except UnicodeDecodeError as e:
            raise NotStrictJSON(f"an event stream that is not UTF-8: {e}") from None
        if "\n" not in text and "\r" not in text:
            self._line.append(text)
            return []
        text = "".join(self._line) + text
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self._line = [lines.pop()]
        events = []
        for line in lines:
            if not line:
                if self._data or self._fields:
                    events.append({**self._fields, "data": "\n".join(self._data)})
                self._fields, self._data = {}, []
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    self._data.append(value)
                else:
                    self._fields[name] = value
        return events


# -- HTTP through the SDK's client --------------------------------------------------------------------


@attrs.define
class Answer:
    """An answer to a POST: its status and headers, and the JSON it carried, strictly decoded
    (one JSON body, or the ``data`` of every event of a stream, in order)."""

    status: int
    headers: httpx2.Headers
    body: bytes
    messages: list[Any]
    stream: bool

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


class HTTPClient:
    """An httpx2 client on one daemon: keep-alive connections, bytes sent as given."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.timeout = timeout
        self.client = httpx2.Client(timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def post(
        self,
        path: str,
        body: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        done: Callable[[list[Any]], bool],
        quiet: float | None = None,
    ) -> Answer:
        """POST ``body``; read a JSON answer whole, an event stream until it ends or
        ``done(messages)`` holds, or (given ``quiet``) it has been quiet that many seconds."""
        timeout = httpx2.Timeout(self.timeout, read=quiet if quiet is not None else self.timeout)
        with self.client.stream(
            "POST", self.base + path, content=body, headers=list(headers), timeout=timeout
        ) as response:
            content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != "text/event-stream":
                data = response.read()
                messages = [strict_loads(data)] if data and content_type == "application/json" else []
                return Answer(response.status_code, response.headers, data, messages, stream=False)
            messages = _read_events(response, done, quiet is not None)
            return Answer(response.status_code, response.headers, b"", messages, stream=True)

    def websocket(self, path: str, headers: Sequence[tuple[bytes, bytes]]) -> Any:
        """A context manager: a WebSocket session (subprotocol ``mcp``), keep-alive pings off."""
        return self.client.websocket(
            self.base.replace("http", "ws", 1) + path,
            subprotocols=["mcp"],
            headers=list(headers),
            keepalive_ping_interval_seconds=None,
            max_message_size_bytes=64 * 1024 * 1024,
        )


def _read_events(response: httpx2.Response, done: Callable[[list[Any]], bool], may_go_quiet: bool) -> list[Any]:
    decoder = SSEDecoder()
    messages: list[Any] = []
    chunks = response.iter_raw()
    while not done(messages):
        try:
            chunk = next(chunks)
        except StopIteration:
            break
        except httpx2.ReadTimeout:
            if not may_go_quiet:
                raise
            break
        for event in decoder.feed(chunk):
            if event["data"]:
                messages.append(strict_loads(event["data"]))
    return messages


class EventStream:
    """A long-lived SSE response (``GET /sse``) read by a thread of its own; its events wait in
    a queue for the test to take them."""

    def __init__(self, client: HTTPClient, path: str, headers: Sequence[tuple[bytes, bytes]]) -> None:
        self.events: queue.Queue[dict[str, str] | BaseException | None] = queue.Queue()
        self._stream = client.client.stream(
            "GET", client.base + path, headers=[*headers, (b"accept", b"text/event-stream")], timeout=None
        )
        self.response = self._stream.__enter__()
        self._thread = threading.Thread(target=self._read, name=f"sse {path}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        decoder = SSEDecoder()
        try:
            for chunk in self.response.iter_raw():
                for event in decoder.feed(chunk):
                    self.events.put(event)
            self.events.put(None)
        except BaseException as e:  # noqa: BLE001 -- handed to the test thread, which raises it
            self.events.put(e)

    def next_event(self, timeout: float) -> dict[str, str]:
        """The next event; `TimeoutError` if none comes in time, `EOFError` when the stream ended."""
        try:
            item = self.events.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no event within {timeout}s") from None
        if item is None:
            self.events.put(None)
            raise EOFError("the event stream ended")
        if isinstance(item, BaseException):
            self.events.put(item)
            raise item
        return item

    def close(self) -> None:
        self.response.close()
        self._stream.__exit__(None, None, None)
