# -*- test-case-name: tests.test_flow -*-
"""Flow control for one client connection: what mcpd does when a client does not read.

Twisted tells a transport's registered producer when the transport's write buffer fills
(``pauseProducing``) and when it has drained (``resumeProducing``). An `OutputGuard` is that
producer for one connection (a TCP or TLS connection, or stdin/stdout). While the client's
output is not draining it

- stops reading from the client, so a client cannot pile up more work (pipelined HTTP requests,
  WebSocket messages, stdio lines) than it takes answers for, and
- counts the bytes written on top of the full buffer; past ``limit`` (``--max-write-buffer``)
  the client is dropped (``overflow``). Output that is not the answer to the client's own
  requests (an /sse stream fed by POSTs on other connections, keep-alive comments,
  notifications) is bounded the same way.

Twisted's own HTTPChannel pauses reading only between requests, and ignores a full buffer while
a request is being handled (then every pipelined request read in the meantime is answered into
the buffer, and an upgraded WebSocket is one request that never ends); the guard pauses reading
whatever the protocol above is doing, and keeps the protocol's own pauses (`pause_reading`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


def nothing_buffered(transport: Any) -> bool:
    """Whether a Twisted descriptor transport (TCP, StandardIO's stdout writer: a
    `twisted.internet.abstract.FileDescriptor`, 26.10) is open for writing and holds nothing
    unsent, so that data written to its socket or descriptor now keeps the order (what
    `FileDescriptor.write` and ``doWrite`` check)."""
    return bool(
        not transport.dataBuffer
        and not transport._tempDataBuffer
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and not transport._writeDisconnected
    )


@implementer(IPushProducer)
class OutputGuard:
    """Registered as ``transport``'s streaming producer; see the module docstring.

    ``upstream`` is the producer the protocol above registered (twisted.web's HTTPChannel): it
    hears every pause and resume, as it would if it were registered itself.
    """

    # One per connection: without an instance dict (issue 15, idle streams).
    __slots__ = (
        "_protocol_paused",
        "_reading",
        "blocked",
        "dropped",
        "limit",
        "overflow",
        "transport",
        "unsent",
        "upstream",
    )

    def __init__(self, transport: Any, limit: int, overflow: Callable[[int], None]) -> None:
        self.transport = transport
        self.limit = limit
        self.overflow = overflow
        self.upstream: Any = None
        # The transport's buffer is full: the client is not reading fast enough.
        self.blocked = False
        # Bytes written since the buffer filled (beyond the ~64 KiB the transport holds).
        self.unsent = 0
        self.dropped = False
        self._protocol_paused = False
        self._reading = True

    # -- IPushProducer, called by the transport -------------------------------------------------

    def pauseProducing(self) -> None:
        # A TCP transport calls this on every write while its buffer is full: count from the
        # first one.
        if not self.blocked:
            self.blocked = True
            self.unsent = 0
            self._sync_reading()
        if self.upstream is not None:
            self.upstream.pauseProducing()

    def resumeProducing(self) -> None:
        self.blocked = False
        self.unsent = 0
        self._sync_reading()
        if self.upstream is not None:
            self.upstream.resumeProducing()

    def stopProducing(self) -> None:
        # The transport lost its write side (the client closed its end of stdout, or the
        # connection): nothing waits to drain any more, so reading goes on and the client's end
        # of input is seen. Without this a stdio server paused on a full buffer whose writer
        # then failed would never read stdin's EOF, and never exit; a lost TCP/TLS connection
        # ignores the resume (its ``connected`` is false by now).
        self.blocked = False
        self.unsent = 0
        self._sync_reading()
        if self.upstream is not None:
            self.upstream.stopProducing()

    # -- the connection's side ------------------------------------------------------------------

    def admit(self, size: int) -> bool:
        """Whether ``size`` more bytes may be written while the buffer is full; dropping the
        client (once) when they would pass the limit."""
        if self.dropped:
            return False
        self.unsent += size
        if self.unsent <= self.limit:
            return True
        self.dropped = True
        self.overflow(self.unsent)
        return False

    def pause_reading(self) -> None:
        """The protocol above asks not to be given more data (HTTPChannel between requests)."""
        self._protocol_paused = True
        self._sync_reading()

    def resume_reading(self) -> None:
        """The protocol above is ready for more data (HTTPChannel: after every request, most
        often while reading goes on: then nothing changes)."""
        self._protocol_paused = False
        if not self._reading or self.blocked or self.dropped:
            self._sync_reading()

    def _sync_reading(self) -> None:
        # Only a change reaches the transport (HTTPChannel resumes after every request).
        reading = not (self.blocked or self._protocol_paused or self.dropped)
        if reading != self._reading:
            self._reading = reading
            if reading:
                self.transport.resumeProducing()
            else:
                self.transport.pauseProducing()
