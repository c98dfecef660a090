# -*- test-case-name: tests.test_websocket -*-
"""MCP over WebSocket at ``/ws``: subprotocol ``mcp``, one JSON-RPC message per text frame.

WebSocket has never been part of the MCP specification; this is the form the MCP Python SDK 1.x
``websocket_client`` and the TypeScript SDK 1.x ``WebSocketClientTransport`` speak. A connection
is one legacy session (``initialize`` fixes its version), or carries stateless 2026-07-28
requests with their ``_meta`` envelope, exactly as a stdio connection does; closing it cancels
what it still has in flight.

Framing is wsproto's, the engine under Twisted 26.10's own ``twisted.web.websocket``; mcpd drives
it itself because that resource cannot answer a subprotocol (the TypeScript client refuses a
server that does not), bounds no message, and sends no pings. autobahn's resource was measured
too (``bench/websocket_choice.py``): 14.5 KiB per idle connection against 9.3, and it fails on a
TLS transport wrapped by a ``WrappingFactory``. docs/architecture.rst has the figures.
`MCPConnection` holds everything MCP about a connection and knows no framing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import attrs
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from wsproto import ConnectionType
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from mcpd.protocol.codec import encode
from mcpd.protocol.engine import Engine
from mcpd.protocol.errors import LimitExceeded
from mcpd.protocol.ledger import SESSION, STREAM
from mcpd.protocol.session import Session
from mcpd.protocol.vocabulary import Exchange
from mcpd.security.identity import caller_of
from mcpd.security.responses import NoHead, json_error, limit_error
from mcpd.tools.api import Caller
from mcpd.transport.sse import settle

if TYPE_CHECKING:
    from twisted.web.server import Request
    from wsproto import Connection

log = Logger(namespace="mcpd.websocket")

SUBPROTOCOL = "mcp"
TRANSPORT = "websocket"
# RFC 6455 §7.4.1 close codes.
GOING_AWAY = 1001
UNSUPPORTED_DATA = 1003
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
# Frames one message may be split into (clients send one; a 4 MiB message in 4 KiB frames fits).
MAX_FRAGMENTS = 1024


class MCPConnection:
    """The MCP side of one WebSocket connection: its session, and the engine it talks to."""

    # One per connection: without an instance dict (issue 15, idle streams).
    __slots__ = ("_send", "caller", "engine", "peer", "session")

    def __init__(self, engine: Engine, caller: Caller, send: Callable[[str], None]) -> None:
        self.engine = engine
        self.caller = caller
        self._send = send
        self.session = Session()
        # Whom its list changes concern (a key's new scopes: `ChangeFeed.account_lists_changed`).
        self.session.account = caller.account
        # Messages that belong to no request (server-to-client requests, list changes).
        self.session.sink = self.send
        self.peer = f"ws:{self.session.id}"

    def received(self, text: str) -> None:
        """One text frame: one JSON-RPC message (or a 2025-03-26 batch)."""
        exchange = Exchange(peer=self.peer, caller=self.caller, session=self.session, notify=self.send)
        self.engine.handle_bytes(text, exchange).addCallbacks(self._reply, self._failed)

    def send(self, message: Any) -> None:
        """Write one message as one text frame, unless the connection has gone."""
        if not self.session.closed:
            self._send(encode(message).decode("utf-8"))

    def lost(self) -> None:
        """The connection is gone: cancel what it still has in flight."""
        self.session.close()

    def rescope(self, scopes: frozenset[str], _narrowed: bool) -> None:
        """The key's scopes changed on reload: later messages are served under the new ones."""
        self.caller = attrs.evolve(self.caller, scopes=scopes)

    def _reply(self, response: Any) -> None:
        if response is not None:
            self.send(response)

    def _failed(self, failure: Failure) -> None:
        log.failure("Serving a WebSocket message failed", failure)


class WebSocketWire(Protocol):
    """The bytes of one upgraded connection, through wsproto, to an `MCPConnection`."""

    def __init__(
        self,
        ws: Connection,
        mcp_factory: Callable[[Callable[[str], None]], MCPConnection],
        limits: WebSocketLimits,
        registry: set[WebSocketWire],
    ) -> None:
        self.ws = ws
        self.limits = limits
        self.registry = registry
        self.mcp = mcp_factory(self.send_text)
        self._text: list[str] = []
        self._size = 0
        self._frames = 0
        self._message_deadline: IDelayedCall | None = None
        self._closing = False
        # Told when the connection ends: the upgrade hand-over leaves the HTTP request that
        # started it unfinished, so whatever waits on its notifyFinish (the per-key stream
        # count) learns of the end here.
        self.on_lost: Callable[[Failure], None] | None = None

    def connectionMade(self) -> None:
        self.registry.add(self)
        self.limits.keep_pinging(self.registry)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.ws.receive_data(data)
        try:
            for event in self.ws.events():
                if self._closing:
                    break
                self._event(event)
        except RemoteProtocolError as e:
            self._close(1002, f"protocol error: {e}")

    def _event(self, event: Any) -> None:
        if isinstance(event, TextMessage):
            self._size += len(event.data.encode("utf-8"))  # the limit is in bytes, not characters
            if self._size > self.limits.max_message_size:
                self._close(MESSAGE_TOO_BIG, f"messages are limited to {self.limits.max_message_size} bytes")
                return
            if event.frame_finished:
                # Frames, not only bytes: empty continuation frames would never reach the size limit.
                self._frames += 1
                if self._frames > MAX_FRAGMENTS:
                    self._close(MESSAGE_TOO_BIG, f"a message may come in at most {MAX_FRAGMENTS} frames")
                    return
            if event.data:
                self._text.append(event.data)
            if event.message_finished:
                text, self._text, self._size, self._frames = "".join(self._text), [], 0, 0
                if self._message_deadline is not None:
                    self._message_deadline.cancel()
                    self._message_deadline = None
                self.mcp.received(text)
            elif self._message_deadline is None:
                # The rest of a message split over frames (or reads) must follow in time.
                self._message_deadline = self.limits.clock.callLater(self.limits.message_timeout, self._message_overdue)
        elif isinstance(event, BytesMessage):
            self._close(UNSUPPORTED_DATA, "MCP messages are JSON in text frames")
        elif isinstance(event, Ping):
            # Events come from dataReceived: the hand-over has connected the transport.
            assert self.transport is not None
            self.transport.write(self.ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            # The client closes (or wsproto found the frames malformed: 1002, 1007).
            if event.code not in (1000, 1001, 1005):
                log.info(
                    "WebSocket {peer} closed: {code} {reason}", peer=self.mcp.peer, code=event.code, reason=event.reason
                )
            self._closing = True
            assert self.transport is not None
            if self.ws.state != ConnectionState.CLOSED:
                self.transport.write(self.ws.send(event.response()))
            self.transport.loseConnection()

    def _message_overdue(self) -> None:
        self._message_deadline = None
        if not self._closing:
            seconds = f"{self.limits.message_timeout:g}"
            self._close(POLICY_VIOLATION, f"a message must arrive whole within {seconds} seconds of its first frame")

    def send_text(self, text: str) -> None:
        """One text frame to the client."""
        if not self._closing and self.ws.state == ConnectionState.OPEN:
            # Only a connected wire's MCPConnection has anything to send.
            assert self.transport is not None
            self.transport.write(self.ws.send(TextMessage(data=text)))

    def ping(self) -> None:
        """A Ping frame (its Pong, or the write failing, shows the client is still there)."""
        if not self._closing and self.ws.state == ConnectionState.OPEN:
            assert self.transport is not None  # the pinger starts in connectionMade
            self.transport.write(self.ws.send(Ping()))

    def _close(self, code: int, reason: str) -> None:
        """Close on our side, logged once."""
        log.info("Closing WebSocket {peer}: {code} {reason}", peer=self.mcp.peer, code=code, reason=reason)
        self._closing = True
        assert self.transport is not None  # called while reading the connection's frames
        if self.ws.state == ConnectionState.OPEN:
            self.transport.write(self.ws.send(CloseConnection(code=code, reason=reason)))
        self.transport.loseConnection()

    def close_going_away(self) -> None:
        """Close for a server shutdown."""
        self._close_now(GOING_AWAY, "server shutting down; retry in 2 s")

    def end(self, reason: str) -> None:
        """Close because the caller's account ended (a revoked key): 1008, policy violation."""
        log.info("Closing WebSocket {peer}: {reason}", peer=self.mcp.peer, reason=reason)
        self._close_now(POLICY_VIOLATION, reason)

    def _close_now(self, code: int, reason: str) -> None:
        if not self._closing and self.transport is not None:
            self._closing = True
            if self.ws.state == ConnectionState.OPEN:
                # RFC 6455 §5.5.1: a close reason is at most 123 bytes.
                text = reason.encode("utf-8")[:123].decode("utf-8", "ignore")
                self.transport.write(self.ws.send(CloseConnection(code=code, reason=text)))
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.registry.discard(self)
        if not self.registry:
            self.limits.stop_pinging()
        if self._message_deadline is not None:
            self._message_deadline.cancel()
            self._message_deadline = None
        self.mcp.lost()
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost(reason if reason is not None else Failure(ConnectionDone("WebSocket closed")))


class WebSocketLimits:
    """What every connection of one listener shares: sizes, ping interval (and the one timer
    that pings them), the time a message split over frames may take, clock."""

    def __init__(
        self,
        max_message_size: int,
        ping_interval: float | None,
        clock: IReactorTime | None = None,
        message_timeout: float = 30.0,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            # Twisted types its reactor module as a module; at run time it is the installed reactor.
            clock = cast(IReactorTime, reactor)
        self.max_message_size = max_message_size
        self.ping_interval = ping_interval
        self.message_timeout = message_timeout
        self.clock = clock
        self._pinger: LoopingCall | None = None

    def keep_pinging(self, wires: set[WebSocketWire]) -> None:
        """Ping every connection in ``wires`` each `ping_interval` seconds (a connection gets its
        first ping within the interval of opening): one timer for them all, stopped when the
        last one closes (a timer per connection was ~1 KiB of each idle one, and a wake-up
        each, issue 15)."""
        if not self.ping_interval or (self._pinger is not None and self._pinger.running):
            return

        def ping() -> None:
            for wire in list(wires):
                try:
                    wire.ping()
                except Exception:
                    # One connection's failure stops neither the timer nor the others' pings.
                    log.failure("Could not ping WebSocket {peer}", peer=wire.mcp.peer)

        pinger = self._pinger = LoopingCall(ping)
        pinger.clock = self.clock
        pinger.start(self.ping_interval, now=False).addErrback(
            lambda failure: log.failure("WebSocket pings stopped", failure)
        )

    def stop_pinging(self) -> None:
        """No connection is left to ping."""
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        self._pinger = None


class WebSocketEndpoint(NoHead, Resource):
    """``GET /ws`` with ``Upgrade: websocket`` and subprotocol ``mcp``: the handshake, then the
    connection is handed from twisted.web to a `WebSocketWire`."""

    isLeaf = True

    def __init__(self, engine: Engine, limits: WebSocketLimits) -> None:
        super().__init__()
        self.engine = engine
        self.limits = limits
        self.open: set[WebSocketWire] = set()

    def render_GET(self, request: Request) -> bytes | int:
        handshake = H11Handshake(ConnectionType.SERVER)
        headers = [(name, value) for name, values in request.requestHeaders.getAllRawHeaders() for value in values]
        try:
            handshake.initiate_upgrade_connection(headers, request.uri)
        except RemoteProtocolError as e:
            return _refuse(request, 400, f"not a WebSocket handshake ({e}); connect with subprotocol 'mcp'")
        if SUBPROTOCOL not in _offered(headers):
            log.info("Refused a WebSocket from {peer}: subprotocol 'mcp' not offered", peer=request.getClientAddress())
            return _refuse(request, 400, "offer the WebSocket subprotocol 'mcp'")
        channel = request.channel
        transport = channel.transport if channel is not None else None
        if transport is None:
            return _refuse(request, 400, "WebSocket needs an HTTP/1.1 connection")
        caller = caller_of(request, TRANSPORT)
        accept = handshake.send(AcceptConnection(subprotocol=SUBPROTOCOL))
        ws = handshake.connection
        assert ws is not None
        wire = WebSocketWire(ws, lambda send: MCPConnection(self.engine, caller, send), self.limits, self.open)
        try:
            self._hold(wire, caller)
        except LimitExceeded as e:
            return limit_error(request, e)
        wire.on_lost = request.connectionLost
        # From here on the connection's bytes go to the wire, not to the HTTP parser (the same
        # hand-over twisted.web.websocket makes, made by the policy layer's connection where
        # there is one); the HTTP idle timeout no longer applies.
        channel.setTimeout(None)
        hand_over = getattr(transport, "hand_over", None)
        if hand_over is not None:
            hand_over(wire)
        else:
            channel._protocolUpgradeForWebsockets(wire)
        transport.write(accept)
        settle(request)
        log.debug("WebSocket {peer} open", peer=wire.mcp.peer)
        return NOT_DONE_YET

    def _hold(self, wire: WebSocketWire, caller: Caller) -> None:
        """A connection is a session and a stream of its caller's (the server's session cap and
        the caller's shares); its account ending closes it, its key's new scopes reach it."""
        ledger = self.engine.ledger
        session = wire.mcp.session
        try:
            session.claims.append(
                ledger.claim(caller.account, SESSION, peer=caller.peer, end=wire.end, rescope=wire.mcp.rescope)
            )
            session.claims.append(ledger.claim(caller.account, STREAM, peer=caller.peer))
        except LimitExceeded:
            session.close()
            raise

    def close_all(self) -> None:
        """Going-away close for every open connection (shutdown)."""
        for wire in list(self.open):
            wire.close_going_away()


def _offered(headers: list[tuple[bytes, bytes]]) -> set[str]:
    offered: set[str] = set()
    for name, value in headers:
        if name.lower() == b"sec-websocket-protocol":
            offered.update(part.strip() for part in value.decode("latin-1").split(","))
    return offered


def _refuse(request: Request, status: int, message: str) -> bytes:
    return json_error(request, status, f"Bad Request: {message}")


def websocket_resource(
    engine: Engine, max_message_size: int, ping_interval: float | None = None, message_timeout: float = 30.0
) -> WebSocketEndpoint:
    """The ``/ws`` resource; ``message_timeout`` bounds the time a message split over frames may take."""
    return WebSocketEndpoint(engine, WebSocketLimits(max_message_size, ping_interval, message_timeout=message_timeout))


__all__ = ["MCPConnection", "WebSocketEndpoint", "WebSocketWire", "websocket_resource"]
