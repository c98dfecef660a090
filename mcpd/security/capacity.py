# -*- test-case-name: tests.test_capacity -*-
"""The per-connection half of the HTTP policy layer: a `WrappingFactory` around the Site.

- Capacity: at most ``max_connections`` open connections (and ``max_per_ip`` from one address);
  the connection over the limit is answered ``503 {"error": "Server at capacity"}`` with
  ``Retry-After``, not reset (``ThrottlingFactory`` / ``LimitTotalConnectionsFactory`` reset it,
  and ``LimitConnectionsByPeer`` is broken on Python 3). Once a request on it is admitted, a
  connection counts against its caller's account in the `Ledger`, which holds one key (or one
  address without keys) to its share of the connections: over it, the request is answered 429
  and the connection closed, so the others (the admin among them) still get in.
- Addresses: a peer the `Gate` refuses is answered 403 before anything it sent is read.
- Slow clients: a request's head must arrive within ``head_timeout`` seconds of its first byte
  (or of the connection), its body within ``body_timeout`` seconds of the head; a slow-loris
  client is answered 408 and dropped.
- Clients that do not read: while a connection's output is not draining, nothing more is read
  from it, and past ``max_write_buffer`` unsent bytes it is dropped (`mcpd.security.flow`),
  whatever transport it carries (HTTP, SSE streams, WebSocket).

It implements ``IProtocolNegotiationFactory`` by asking the Site, so that under ``ssl:``
endpoints TLS clients still agree on ``http/1.1`` through ALPN.
"""

from __future__ import annotations

import collections
import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import tcp
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory, _wrappedLogPrefix
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from mcpd.interfaces import IGuardedConnection
from mcpd.protocol.errors import LimitExceeded
from mcpd.protocol.ledger import CONNECTION, Claim, Ledger
from mcpd.security.addresses import is_loopback_client, normal_form
from mcpd.security.flow import OutputGuard, nothing_buffered
from mcpd.security.gate import Gate, Refusal, raw_response

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime

log = Logger(namespace="mcpd.capacity")

# How long a refused connection may take to send its request head before it is answered anyway.
REFUSAL_GRACE = 2.0
# How long a closing connection may take to flush before it is aborted.
ABORT_AFTER = 5.0
_HEAD_LIMIT = 16 * 1024


# The transport's attributes a `GuardedConnection` hands on by name (ProtocolWrapper handed on
# any it lacked): what Twisted's HTTP channel, mcpd's channel and transports, TLS and the tests
# reach through it. Each is looked up on the transport as it is asked for, so a transport that
# lacks one (``loseWriteConnection`` under TLS) still answers AttributeError. (``__conform__``,
# also asked for, is not: no Twisted transport defines one, so adapting ends as it did.)
_FORWARDED = (
    "abortConnection",
    "loseWriteConnection",
    "setTcpNoDelay",
    "getTcpNoDelay",
    "setTcpKeepAlive",
    "getTcpKeepAlive",
    "getHandle",
    "negotiatedProtocol",
    "getPeerCertificate",
    "startTLS",
    "stopProducing",
    "socket",
)


@implementer(IGuardedConnection)
class GuardedConnection(Protocol):
    """One admitted connection: counted, and held to the head and body deadlines.

    Twisted's `ProtocolWrapper` (26.10) but for its ``__getattr__``, which handed every attribute
    it lacked to the transport: a class with ``__getattr__`` has CPython read each of its
    attributes the slow way (~40 ns more a read, ~30 reads a request). The transport's own
    attributes are handed on by name instead (`_FORWARDED`)."""

    factory: CapacityFactory
    disconnecting = 0

    # Deadlines are a time stamp checked by the factory's sweep, not a timer per request (a
    # callLater and its cancellation per request show in the hot path).

    def __init__(self, factory: CapacityFactory, wrapped: Any, peer: str, checked: bool = True) -> None:
        self.wrappedProtocol = wrapped
        self.factory = factory
        self.peer = peer
        # The allowlist this connection's peer was checked against when it connected (None:
        # not passed, its requests are checked): after a reload (SIGHUP) the gate checks its
        # requests again.
        self.checked_with: Any = factory.gate.allowed if checked else None
        self.deadline: float | None = None
        # The account the connection is counted against, once a request on it was admitted.
        self.held: Claim | None = None
        self._busy = False
        self._waiting_for = "request head"
        self._host: IAddress | None = None
        self._peer: IAddress | None = None
        self._socket: Any = None

    def logPrefix(self) -> str:
        return _wrappedLogPrefix(self, self.wrappedProtocol)  # type: ignore[no-any-return]

    def makeConnection(self, transport: Any) -> None:
        # ProtocolWrapper's: the wrapper provides what its transport provides (ISSLTransport…).
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self.wrappedProtocol.makeConnection(self)

    def stopConsuming(self) -> None:
        self.transport.stopConsuming()  # type: ignore[union-attr]

    def connectionMade(self) -> None:
        self._arm(self.factory.head_timeout, "request head")
        if type(self.transport) is tcp.Server:
            # Plain TCP (not TLS, not a UNIX socket): see `write`.
            self._socket = self.transport.socket
        # The guard is the transport's producer; the Site's channel registers with us (below).
        self.guard = OutputGuard(self.transport, self.factory.max_write_buffer, self._drop_slow_reader)
        transport: Any = self.transport
        transport.registerProducer(self.guard, True)

    # twisted.web asks for both addresses with every request (`Request.__init__`): a socket call
    # and two validated attrs objects each time. A connection's addresses never change.

    def getHost(self) -> IAddress:
        host = self._host
        if host is None:
            host = self._host = self.transport.getHost()  # type: ignore[union-attr]
        return host

    def getPeer(self) -> IAddress:
        peer = self._peer
        if peer is None:
            peer = self._peer = self.transport.getPeer()  # type: ignore[union-attr]
        return peer

    # -- flow control (mcpd.security.flow) ---------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.guard.blocked and not self.guard.admit(len(data)):
            return
        transport: Any = self.transport
        if self._socket is not None and nothing_buffered(transport):
            # Nothing waits to be sent: send now, as asyncio's transports do, rather than
            # buffer, watch the socket for writability and send on the reactor's next turn
            # (twisted.internet.abstract.FileDescriptor.write): two epoll_ctl calls, an
            # epoll_wait round and ~25 Python calls less for every answer (issue 15). What the
            # kernel does not take, and any error, is left to the transport, in order.
            try:
                sent = self._socket.send(data)
            except OSError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    def writeSequence(self, data: Any) -> None:
        if self._socket is not None:
            self.write(b"".join(data))
            return
        if self.guard.blocked:
            data = list(data)
            if not self.guard.admit(sum(map(len, data))):
                return
        transport: Any = self.transport
        transport.writeSequence(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        # twisted.web's HTTPChannel, a streaming producer: it hears the guard's pauses and resumes.
        self.guard.upstream = producer

    def unregisterProducer(self) -> None:
        self.guard.upstream = None

    def pauseProducing(self) -> None:
        self.guard.pause_reading()

    def resumeProducing(self) -> None:
        self.guard.resume_reading()

    def loseConnection(self) -> None:
        # A TLS transport does not close while a producer is registered with it
        # (TLSMemoryBIOProtocol.loseConnection waits for it to go): the guard steps down first,
        # or a "Connection: close" or HTTP/1.0 answer over TLS would never end.
        transport: Any = self.transport
        if transport is not None and getattr(self, "guard", None) is not None:
            transport.unregisterProducer()
        self.disconnecting = 1
        transport.loseConnection()

    def _drop_slow_reader(self, unsent: int) -> None:
        log.warn(
            "Dropping {peer}: {unsent} bytes of output it has not read (over --max-write-buffer {limit})",
            peer=self.peer,
            unsent=unsent,
            limit=self.factory.max_write_buffer,
        )
        self.factory.dropped_slow_readers += 1
        # Also stops twisted.web's parser from serving requests it has read ahead.
        self.disconnecting = 1
        transport: Any = self.transport
        transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.deadline is None and not self._busy:
            # The first bytes of a new request.
            self._arm(self.factory.head_timeout, "request head")
        self.wrappedProtocol.dataReceived(data)

    def head_complete(self, length: int | None) -> None:
        """The request's headers are in (called by `GuardedRequest`)."""
        self.deadline = None
        if length != 0:
            self._arm(self.factory.body_timeout, "request body")

    def body_complete(self) -> None:
        """The whole request is in: it is being served, however long that takes."""
        self.deadline = None
        self._busy = True

    def request_finished(self) -> None:
        """The response was sent; the next bytes start a new request."""
        self._busy = False

    def hold_for(self, account: str, client: str) -> LimitExceeded | None:
        """Count the connection against ``account``'s share of the connection budget (the gate
        calls this as it admits each request); what is exceeded if it may not."""
        held = self.held
        if held is not None and held.account == account:
            return None
        ledger = self.factory.ledger
        if ledger is None:
            return None
        try:
            # No ``end``: a connection outlives a revoked key (a proxy's pooled connection
            # carries other keys' requests too); each request on it is authenticated afresh.
            claim = ledger.claim(account, CONNECTION, peer=client)
        except LimitExceeded as e:
            log.info("Refusing a connection to {account}: {why}", account=account, why=e.message)
            return e
        if held is not None:
            held.release()
        self.held = claim
        return None

    def hand_over(self, protocol: Any) -> None:
        """From now on the connection's bytes and its end go to ``protocol`` (an upgraded
        WebSocket), no longer to the HTTP channel. Twisted's own hand-over
        (`HTTPChannel._protocolUpgradeForWebsockets`) sets two attributes on the channel, which
        grows its instance dict into a table of its own: 1.6 KiB of every idle WebSocket
        (issue 15). The connection is still counted, guarded and held to its account here."""
        self.wrappedProtocol = protocol
        protocol.makeConnection(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        held, self.held = self.held, None
        if held is not None:
            held.release()
        # ProtocolWrapper's, and the reference cycle with the wrapped protocol broken.
        self.factory.unregisterProtocol(self)
        self.wrappedProtocol.connectionLost(reason)
        self.wrappedProtocol = None

    def _arm(self, seconds: float | None, what: str) -> None:
        if seconds is not None:
            self.deadline = self.factory.clock.seconds() + seconds
            self._waiting_for = what

    def expire(self) -> None:
        """The deadline passed (called by the factory's sweep)."""
        what = self._waiting_for
        self.deadline = None
        seconds = self.factory.head_timeout if what == "request head" else self.factory.body_timeout
        assert seconds is not None
        log.info("Dropping {peer}: no complete {what} within {seconds}s", peer=self.peer, what=what, seconds=seconds)
        body = json.dumps({"error": f"Request Timeout: the {what} did not arrive within {seconds:g} seconds"})
        transport: Any = self.transport
        transport.write(raw_response(408, body.encode()))
        self.loseConnection()
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            self.factory.clock.callLater(ABORT_AFTER, _abort_if_open, self.transport)


def _forwarded(name: str) -> property:
    """The transport's attribute ``name``, read from it each time."""
    return property(lambda self: getattr(self.transport, name), doc=f"The transport's ``{name}``.")


for _name in _FORWARDED:
    setattr(GuardedConnection, _name, _forwarded(_name))
del _name


def _abort_if_open(transport: Any) -> None:
    if getattr(transport, "connected", False):
        transport.abortConnection()


class RefusingProtocol(Protocol):
    """Answers a connection with one response and closes it.

    It reads the request head first (or waits `REFUSAL_GRACE` seconds), so that the client is
    not reset while still sending and sees the answer.
    """

    def __init__(self, refusal: Refusal, clock: IReactorTime, answered: Callable[[bytes], None] | None = None) -> None:
        self.refusal = refusal
        self.clock = clock
        # Told the head seen (maybe none) once the refusal is sent.
        self.answered = answered
        self._seen = b""
        self._answered = False
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._timer = self.clock.callLater(REFUSAL_GRACE, self._answer)

    def dataReceived(self, data: bytes) -> None:
        if self._answered:
            return
        self._seen = (self._seen + data)[-_HEAD_LIMIT:]
        if b"\r\n\r\n" in self._seen or b"\n\n" in self._seen:
            self._answer()

    def _answer(self) -> None:
        if self._answered or self.transport is None:
            return
        self._answered = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.transport.write(raw_response(self.refusal.status, self.refusal.payload(), self.refusal.headers))
        self.transport.loseConnection()
        if self.answered is not None:
            self.answered(self._seen)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()


@implementer(IProtocolNegotiationFactory)
class CapacityFactory(WrappingFactory):
    """Wraps the Site: counts connections, refuses the ones over the caps or from refused peers."""

    protocol = GuardedConnection  # type: ignore[assignment]

    def __init__(
        self,
        site: Any,
        gate: Gate,
        clock: IReactorTime,
        *,
        max_connections: int | None = 1000,
        max_per_ip: int | None = None,
        head_timeout: float | None = 10.0,
        body_timeout: float | None = 30.0,
        retry_after: int = 5,
        sweep_interval: float = 0.5,
        ledger: Ledger | None = None,
        max_write_buffer: int = 8 * 1024 * 1024,
    ) -> None:
        super().__init__(site)
        self.sweep_interval = sweep_interval
        self._sweeper: LoopingCall | None = None
        self.gate = gate
        self.clock = clock
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.retry_after = retry_after
        # Where admitted connections are counted per account (their share of max_connections).
        self.ledger = ledger
        self.max_write_buffer = max_write_buffer
        # Connections dropped because their client did not read its output.
        self.dropped_slow_readers = 0
        self.per_ip: collections.Counter[str] = collections.Counter()
        # Connections answered 503 at a cap (mcp_connections_refused_capacity).
        self.refused_at_capacity = 0

    @property
    def open_connections(self) -> int:
        return len(self.protocols)

    def startFactory(self) -> None:
        # Once for all the ports this factory serves (doStart runs per port).
        super().startFactory()
        if self._sweeper is None and (self.head_timeout is not None or self.body_timeout is not None):
            self._sweeper = LoopingCall(self.sweep)
            self._sweeper.clock = self.clock
            self._sweeper.start(self.sweep_interval, now=False).addErrback(
                lambda failure: log.failure("The slow-client sweep failed", failure)
            )

    def stopFactory(self) -> None:
        super().stopFactory()
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None

    def sweep(self) -> None:
        """Drop the connections whose request head or body is overdue."""
        now = self.clock.seconds()
        for connection in [p for p in self.protocols if p.deadline is not None and p.deadline <= now]:
            connection.expire()

    def buildProtocol(self, addr: IAddress | None) -> Any:
        peer = normal_form(getattr(addr, "host", "") or "")
        refusal = self.gate.connection_refusal(peer)
        checked = refusal is None
        if refusal is not None:
            if is_loopback_client(peer):
                # Its requests are checked one by one: loopback reads /health, /ready, /stats
                # and /metrics whatever the allowlist (`Gate.admit`).
                refusal = None
            else:
                self.gate.refusals["forbidden"] += 1
                return RefusingProtocol(
                    refusal, self.clock, functools.partial(self.gate.connection_refused, peer, refusal)
                )
        refusal = self._capacity_refusal(peer)
        if refusal is not None:
            return RefusingProtocol(refusal, self.clock)
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return GuardedConnection(self, wrapped, peer, checked)

    def _capacity_refusal(self, peer: str) -> Refusal | None:
        if self.max_connections is not None and len(self.protocols) >= self.max_connections:
            log.warn("At capacity ({count} connections): refusing {peer}", count=len(self.protocols), peer=peer)
            return self._busy("Server at capacity")
        if self.max_per_ip is not None and self.per_ip[peer] >= self.max_per_ip and not self.gate.trusts(peer):
            log.info("{peer} already has {count} connections: refusing another", peer=peer, count=self.per_ip[peer])
            return self._busy(f"Server at capacity: at most {self.max_per_ip} connections from one address")
        return None

    def _busy(self, message: str) -> Refusal:
        self.refused_at_capacity += 1
        seconds = str(self.retry_after)
        return Refusal(503, {"error": message}, (("Retry-After", seconds),))

    def registerProtocol(self, p: Any) -> None:
        super().registerProtocol(p)
        self.per_ip[p.peer] += 1

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        left = self.per_ip[p.peer] - 1
        if left > 0:
            self.per_ip[p.peer] = left
        else:
            del self.per_ip[p.peer]

    def acceptableProtocols(self) -> list[bytes]:
        """ALPN: what the wrapped Site speaks."""
        negotiation = IProtocolNegotiationFactory(self.wrappedFactory, None)
        return list(negotiation.acceptableProtocols()) if negotiation is not None else [b"http/1.1"]
