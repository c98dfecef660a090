# -*- test-case-name: tests.test_channel -*-
"""The HTTP/1.1 connection: Twisted's `HTTPChannel`, answering what it would drop unanswered.

Twisted closes the connection with no response when a request line or a header line passes
`MAX_LENGTH`, and writes a bare ``400`` with no body for a head that is too large or malformed.
`MCPChannel` answers them as every other refusal of mcpd is answered: ``414 URI Too Long`` for a
request line over the limit, ``431 Request Header Fields Too Large`` for a header section over
`totalHeadersSize` or `maxHeaders`, ``400`` with a reason for a malformed head, each with a JSON
body, and then closes the connection gracefully: it stops reading requests, lets the answer
reach the client and drains what the client is still sending for at most `LINGER` seconds, so
that closing with unread input (a TCP reset) cannot destroy the answer before it is read.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.interfaces import IDelayedCall, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from zope.interface import implementer

from mcpd.interfaces import IClosingChannel
from mcpd.security.responses import raw_response

# Seconds a connection answered early may take to read its answer and close.
LINGER = 2.0


def error_response(status: int, message: str) -> bytes:
    """A whole response with a JSON ``{"error": message}`` body that closes the connection."""
    return raw_response(status, json.dumps({"error": message}).encode())


@implementer(IClosingChannel)
class MCPChannel(HTTPChannel):
    """An `HTTPChannel` whose every refusal is an answer (see the module docstring)."""

    # Twisted's limits, named here because mcpd documents them: 16 KiB for the request line and
    # for the whole header section, 500 header lines.
    MAX_LENGTH = 16 * 1024
    totalHeadersSize = 16 * 1024
    maxHeaders = 500

    _closing = False
    _linger: IDelayedCall | None = None

    def lineLengthExceeded(self, line: bytes) -> None:
        self._too_large()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's answer to a head over `totalHeadersSize` or `maxHeaders` and to a malformed
        # one (request line, header line, Content-Length, Transfer-Encoding, chunk).
        if self._receivedHeaderSize > self.totalHeadersSize:
            self._too_large()
        elif self._receivedHeaderCount > self.maxHeaders:
            message = f"Request Header Fields Too Large: at most {self.maxHeaders} header lines"
            self.answer_and_close(error_response(431, message))
        else:
            message = (
                "Bad Request: the request is not valid HTTP/1.1 (request line, header lines, "
                "Content-Length / Transfer-Encoding or chunked body)"
            )
            self.answer_and_close(error_response(400, message))

    def _too_large(self) -> None:
        if getattr(self, "_command", None) is None:
            # RFC 9110 §15.5.15: the request line (its target) is longer than mcpd reads.
            message = f"URI Too Long: the request line is limited to {self.MAX_LENGTH} bytes"
            self.answer_and_close(error_response(414, message))
        else:
            # RFC 6585 §5.
            limit = self.totalHeadersSize
            message = f"Request Header Fields Too Large: the request line and headers are limited to {limit} bytes"
            self.answer_and_close(error_response(431, message))

    def answer_and_close(self, response: bytes) -> None:
        """Write ``response`` (a whole one that says ``Connection: close``), read no further
        request, and close once the client has had `LINGER` seconds to read it."""
        if self._closing:
            return
        self._closing = True
        # Whatever else arrives is read and dropped (buffered lines included).
        self.dataReceived = _discard  # type: ignore[method-assign]
        self.clearLineBuffer()
        self.setTimeout(None)
        transport: Any = self.transport
        transport.write(response)
        # The connection's deadlines (mcpd.security.capacity) no longer apply: it is closing.
        finished = getattr(transport, "body_complete", None)
        if finished is not None:
            finished()
        if not ISSLTransport.providedBy(transport):
            # TCP: the client sees the end of the answer at once. (Under TLS this would shut
            # the TCP connection beneath it, with no TLS close.)
            half_close = getattr(transport, "loseWriteConnection", None)
            if half_close is not None:
                half_close()
        self._linger = self.callLater(LINGER, self._stop_lingering)

    def _stop_lingering(self) -> None:
        self._linger = None
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        super().connectionLost(reason)


def _discard(data: bytes) -> None:
    pass
