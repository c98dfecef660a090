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

import functools
import json
import time
from typing import Any

from twisted.internet.interfaces import IDelayedCall, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.http import NO_BODY_CODES, HTTPChannel, datetimeToString, parse_qs
from twisted.web.http_headers import Headers
from twisted.web.iweb import INonQueuedRequestFactory
from zope.interface import implementer

# Twisted 26.10 internals the one-pass head reader fills in as twisted.web's parser would: the
# request line parser, the header name canonicaliser (and its cache), the body decoders, the
# Headers table (`Headers._rawHeaders`) and `HTTPChannel.__first_line` (name-mangled).
from twisted.web.http import _ChunkedTransferDecoder, _IdentityTransferDecoder, _parseRequestLine  # isort: skip
from twisted.web.http import _QUEUED_SENTINEL  # isort: skip
from twisted.web.http_headers import InvalidHeaderName, _nameEncoder  # isort: skip

from mcpd.interfaces import IClosingChannel
from mcpd.security.head import CANONICAL_NAMES
from mcpd.security.responses import raw_response

# The most digits a Content-Length may have (10**18 bytes is past every body limit).
_LENGTH_DIGITS = 18

# The first bytes of an obs-fold continuation line (RFC 9112 §5.2), as integers.
_FOLD = (0x20, 0x09)

# Seconds a connection answered early may take to read its answer and close.
LINGER = 2.0


def error_response(status: int, message: str) -> bytes:
    """A whole response with a JSON ``{"error": message}`` body that closes the connection."""
    return raw_response(status, json.dumps({"error": message}).encode())


def response_head(parts: list[bytes], table: dict[bytes, list[bytes]]) -> list[bytes]:
    """A response head as twisted.web writes it: ``parts`` (its status line), then a line per
    value in ``table`` (a `Headers._rawHeaders`) and the blank line; ``parts``, to be joined."""
    for name, values in table.items():
        for value in values:
            parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return parts


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
    # The key the connection's last Bearer header named (`mcpd.security.gate.KEY_MEMO`).
    _mcpd_key_memo: tuple[Any, bytes, Any] | None = None

    def lineReceived(self, line: bytes) -> None:
        """A line of a request head; the first one of a head that is already whole in the
        buffer reads the rest of the head at once (`_whole_head`)."""
        if self._HTTPChannel__first_line == 1 and line and self.persistent and self._whole_head(line):  # type: ignore[attr-defined]
            return
        super().lineReceived(line)

    def allHeadersReceived(self) -> None:
        # twisted.web's (26.10), reading the request's header table directly.
        request = self.requests[-1]
        table = request.requestHeaders._rawHeaders
        if b"Cookie" in table:
            request.parseCookies()
        self.persistent = self.checkPersistence(request, self._version)
        request.gotLength(self.length)
        # RFC 9110 §10.1.1: answer "Expect: 100-continue" (read after the policy layer, which
        # removes it from a request it refuses).
        expect = table.get(b"Expect")
        if expect and expect[0].lower() == b"100-continue" and self._version == b"HTTP/1.1":
            self._send100Continue()

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        # twisted.web's (26.10), reading the request's header table directly.
        if version != b"HTTP/1.1":
            return False
        connection = request.requestHeaders._rawHeaders.get(b"Connection")
        if connection and b"close" in [token.lower() for token in connection[0].split(b" ")]:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return True

    def allContentReceived(self) -> None:
        # twisted.web (26.10) cancels the idle timer as a request starts being served and makes
        # a new one when its response is done: a callLater and a cancellation per request. A
        # request answered before this returns (the common case) keeps the timer, which
        # restarts from now; one still being served has it cancelled, as twisted.web does.
        timeout, self.timeOut = self.timeOut, None
        super().allContentReceived()
        self.timeOut = timeout
        if not timeout:
            return
        if self._handlingRequest:
            self._savedTimeOut = self.setTimeout(None)
        else:
            self.resetTimeout()

    def requestDone(self, request: Any) -> None:
        # twisted.web's (26.10), comparing requests by identity (what `Request.__eq__` does, a
        # Python call per request) and back in line mode without a call when nothing followed.
        if request is not self.requests[0]:
            raise TypeError
        del self.requests[0]
        if not self._waitingForTransport:
            self._networkProducer.resumeProducing()
        if not self.persistent:
            self.loseConnection()
            return
        self._handlingRequest = False
        if self._savedTimeOut:
            self.setTimeout(self._savedTimeOut)
        data = b"".join(self._dataBuffer)  # (what followed the request: most often b"")
        self._dataBuffer = []
        if data:
            self.setLineMode(data)
        else:
            self.line_mode = 1

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        """A response's status line and headers, as twisted.web writes them (from its
        `Headers`), in one write: twisted.web writes them as a sequence of some thirty pieces,
        each checked by the transport."""
        if not isinstance(headers, Headers):
            super().writeHeaders(version, code, reason, headers)
            return
        head = response_head([version, b" ", code, b" ", reason, b"\r\n"], headers._rawHeaders)
        self.transport.write(b"".join(head))  # type: ignore[union-attr]

    def _whole_head(self, line: bytes) -> bool:
        """Read the request head whose first line is ``line`` and whose header lines are in the
        line buffer, into the state twisted.web's parser would leave after the same lines, and
        act on its end as it would; False (nothing read) unless the head is whole and one it
        accepts as it stands."""
        rest: bytes = self._buffer
        if rest[:2] == b"\r\n":
            block, after = b"", rest[2:]
        else:
            end = rest.find(b"\r\n\r\n")
            if end < 0:
                return False  # not all here: line by line
            block, after = rest[:end], rest[end + 4 :]
        lines = block.split(b"\r\n") if block else []
        ends = max(len(lines) - 1, 0)
        # twisted.web counts the bytes of the lines, not their line ends.
        size = len(line) + len(block) - 2 * ends
        if size > self.totalHeadersSize or len(block) > self.MAX_LENGTH or len(lines) > self.maxHeaders:
            return False
        # RFC 9110 §5.5: no NUL, CR or LF in a value; in a name none is a token character
        # either, so one anywhere but the line ends refuses the head (as a look per value
        # would). Counted on the whole block: ``b"\r" in value`` costs CPython 3.11 a formatted
        # TypeError each time (bytes.__contains__ first tries its argument as an integer).
        if block.count(b"\r") != ends or block.count(b"\n") != ends or block.find(b"\x00") >= 0:
            return False
        try:
            command, target, version = _parseRequestLine(line)
        except ValueError:
            return False
        canonical = _nameEncoder._canonicalHeaderCache
        table: dict[bytes, list[bytes]] = {}  # the request's `Headers._rawHeaders` to be
        length: int | None = 0
        decoder: Any = None
        for header in lines:
            name, colon, value = header.partition(b":")
            if not colon or header[0] in _FOLD:  # (header is never empty)
                return False  # no colon, or an obs-fold continuation
            known = canonical.get(name)
            if known is None:
                try:
                    known = _nameEncoder.encode(name)
                except InvalidHeaderName:
                    return False
            value = value.strip(b" \t")
            if known == b"Content-Length":
                if decoder is not None or not value.isdigit() or len(value) > _LENGTH_DIGITS:
                    return False
                length, decoder = int(value), _IdentityTransferDecoder
            elif known == b"Transfer-Encoding":
                coding = value.lower()
                if coding == b"chunked":
                    if decoder is not None:
                        return False
                    length, decoder = None, _ChunkedTransferDecoder
                elif coding != b"identity":
                    return False
            values = table.get(known)
            if values is None:
                table[known] = [value]
            else:
                values.append(value)
        # The head is good: the state twisted.web's parser leaves at its end.
        factory = self.requestFactory
        request = factory(self, len(self.requests)) if _queued(factory) else factory(self)
        self.requests.append(request)
        self._HTTPChannel__first_line = 0
        self._command, self._path, self._version = command, target, version
        self._receivedHeaderSize = size
        self._receivedHeaderCount = len(lines)
        request.requestHeaders._rawHeaders = table  # (a new request's is empty)
        if decoder is not None:
            self.length = length
            if decoder is _IdentityTransferDecoder:
                self._transferDecoder = decoder(length, request.handleContentChunk, self._finishRequestBody)
            else:
                self._transferDecoder = decoder(request.handleContentChunk, self._finishRequestBody)
        # As twisted.web's parser does on the blank line ending the head, with what follows it
        # in the buffer (a refusal clears it).
        self._buffer = after
        self.allHeadersReceived()
        if self.length == 0:
            self.allContentReceived()
        else:
            self.setRawMode()
        return True

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        # Twisted 26.10 reads any run of digits with int(): past 4,300 of them Python raises
        # ValueError, which went unhandled (a traceback logged, the client left unanswered).
        # No length of more than 18 digits is one mcpd could take: a 400 like any bad length.
        if header == b"Content-Length" and len(data) > _LENGTH_DIGITS:
            return bool(self._failChooseTransferDecoder())
        return bool(super()._maybeChooseTransferDecoder(header, data))

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


@functools.lru_cache(maxsize=64)
def _queued(factory: Any) -> bool:
    """Whether twisted.web makes ``factory``'s requests with their place in the queue (26.10:
    unless it provides `INonQueuedRequestFactory`). Asked once per factory: the interface
    look-up on a class costs ~1 us, with every request."""
    return not INonQueuedRequestFactory.providedBy(factory)


class MCPRequest(server.Request):
    """twisted.web's Site request (26.10), doing less per request where it does the same.

    - The ``Date`` header is formatted once a second, not per request.
    - Without form parsing (mcpd's Site: MCP bodies are JSON), the body is not measured and the
      ``Content-Type`` header not looked up.
    """

    def __init__(self, channel: Any, queued: object = _QUEUED_SENTINEL, parsePOSTFormSubmission: Any = None) -> None:
        """twisted.web's `server.Request.__init__`, `http.Request.__init__` and
        `Componentized.__init__` (26.10) in one call, the two header tables made without
        their constructor's call."""
        self.notifications = []
        self.channel = channel
        self.client = channel.getPeer()
        self.host = channel.getHost()
        self.requestHeaders = headers = Headers.__new__(Headers)
        headers._rawHeaders = {}
        self.received_cookies = {}
        self.responseHeaders = headers = Headers.__new__(Headers)
        headers._rawHeaders = {}
        self.cookies = []
        self.transport = channel.transport
        self.queued = False if queued is _QUEUED_SENTINEL else queued
        self._parsePOSTFormSubmission = (
            channel.site._parsePOSTFormSubmission if parsePOSTFormSubmission is None else parsePOSTFormSubmission
        )
        self._adapterCache = {}

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._parsePOSTFormSubmission:
            super().requestReceived(command, path, version)
            return
        # twisted.web.http.Request.requestReceived, without what only form parsing needs.
        content: Any = self.content
        content.seek(0, 0)
        self.args = {}  # type: ignore[assignment]
        self.method, self.uri = command, path
        self.clientproto = version
        self.path, question, query = path.partition(b"?")
        if question:
            self.args = parse_qs(query, 1)
        self.process()

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        """As twisted.web's (26.10), in one call for a bytes value without line ends under a
        name it has canonicalised before (twisted.web makes three more: the name's look-up,
        the table's setter and the line-end sanitiser, which leaves such a value as it is)."""
        known = CANONICAL_NAMES.get(name)
        if known is not None and type(value) is bytes and value.find(b"\r") < 0 and value.find(b"\n") < 0:
            self.responseHeaders._rawHeaders[known] = [value]
            return
        self.responseHeaders.setRawHeaders(name, [value])

    def write(self, data: bytes) -> None:
        """The first write of a response whose length is set (a body ``render`` returned, or
        any answer framed by Content-Length) goes out with its status line and headers in one
        transport write; any other write is twisted.web's, but for the head of a 204 or 304."""
        table = self.responseHeaders._rawHeaders
        length = table.get(b"Content-Length")
        if (
            self.startedWriting
            or not data
            or not length  # (None, or an empty list: no Content-Length, as twisted.web reads it)
            or self.finished
            or self._disconnected
            or self.method == b"HEAD"
            or self.code in NO_BODY_CODES
            or self._inFakeHead
            or self._encoder is not None
            or self.lastModified is not None
            or self.etag is not None
            or self.cookies
            or not isinstance(self.channel, HTTPChannel)
        ):
            if not self.startedWriting and self.code in NO_BODY_CODES:
                # RFC 9110 §8.6: no Content-Length in a 204, and in a 304 only the length a 200
                # would have had; twisted.web's render sets the empty body's "0". Neither has
                # content (RFC 9112 §6.3: it ends at its head, the connection stays usable).
                table.pop(b"Content-Length", None)
            super().write(data)
            return
        # twisted.web.server.Request.write and twisted.web.http.Request.write (26.10) on a first
        # write with a Content-Length: the default Content-Type, then the head.
        if b"Content-Type" not in table and self.defaultContentType is not None and length[0] != b"0":
            table[b"Content-Type"] = [self.defaultContentType]
        self.startedWriting = 1
        parts = response_head([self.clientproto, b" %d " % self.code, self.code_message, b"\r\n"], table)
        parts.append(data)
        self.sentLength += len(data)
        self.channel.write(b"".join(parts))

    def process(self) -> None:
        # twisted.web.server.Request.process, with the Date header from `http_date`.
        channel: Any = self.channel
        self.site = channel.site
        table = self.responseHeaders._rawHeaders
        table[b"Server"] = [server.version]
        table[b"Date"] = [http_date()]
        self.prepath = []
        segments = self.path[1:].split(b"/")
        # `server.unquote` (urllib's unquote_to_bytes) returns a segment without "%" as it is.
        self.postpath = segments if self.path.find(b"%") < 0 else list(map(server.unquote, segments))
        if self.path == b"*":
            self._handleStar()
            return
        try:
            found = self.site.getResourceFor(self)
            if resource._IEncodingResource.providedBy(found):
                encoder = found.getEncoder(self)
                if encoder is not None:
                    self._encoder = encoder
            self.render(found)
        except BaseException:
            self.processingFailed(Failure())


_date = [0, b""]


def http_date() -> bytes:
    """Now, as an HTTP date (`twisted.web.http.datetimeToString`), formatted once a second."""
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, datetimeToString(now)
    return _date[1]  # type: ignore[return-value]
