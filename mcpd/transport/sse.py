# -*- test-case-name: tests.test_streamable -*-
"""Server-Sent Event streams with event ids and Last-Event-ID resumption.

A stream outlives the HTTP response that carries it: when a client drops the connection, the
events keep accumulating (up to a bound) and a GET with ``Last-Event-ID`` picks the stream up
where it left off (2025-11-25 transports §Resumability and Redelivery).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web import http
from twisted.web.http_headers import Headers

from mcpd.protocol.ledger import REPLAY, STREAM

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime
    from twisted.web.server import Request

    from mcpd.protocol.ledger import Claim, Ledger
    from mcpd.tools.api import Caller

log = Logger(namespace="mcpd.sse")

SSE_HEADERS = (
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    # nginx would otherwise buffer the stream (proxy_buffering).
    (b"x-accel-buffering", b"no"),
)


# A comment line: SSE clients ignore it (WHATWG HTML §9.2.6), proxies see traffic.
KEEPALIVE = b": ping\n\n"


def start_sse(request: Request) -> None:
    """Turn ``request``'s response into an event stream, kept alive while it is open."""
    request.setResponseCode(200)
    for name, value in SSE_HEADERS:
        request.setHeader(name, value)
    site = getattr(request, "site", None)
    interval = getattr(site, "sse_keepalive", None)
    streams = getattr(site, "sse_streams", None)
    if streams is None:
        if interval:
            keep_alive(request, interval)
        return
    if request not in streams:
        # Counted for the metrics, kept alive, and closed with a retry hint at shutdown
        # (`close_streams`).
        streams.add(request)
        when_finished(request, streams.discard, request)
    if interval:
        _keep_alive_all(site, streams, interval)


# The Site's one keep-alive timer for all its streams (a timer per stream was ~1 KiB of each).
_TICKER = "_mcpd_sse_ticker"


def _keep_alive_all(site: object, streams: set[Request], interval: float) -> None:
    """Write a comment on every open stream of ``site`` every ``interval`` seconds (a stream
    gets its first one within ``interval`` of opening), so proxies do not cut a quiet stream and
    a dead client is noticed. The timer stops when the last stream ends."""
    ticker: LoopingCall | None = getattr(site, _TICKER, None)
    if ticker is not None and ticker.running:
        return
    clock = getattr(site, "reactor", None)  # a Site's (twisted.web.http.HTTPFactory.reactor)
    if clock is None:
        from twisted.internet import reactor as clock

    def ping() -> None:
        for request in list(streams):
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(KEEPALIVE)
        if not streams:
            call.stop()

    call = LoopingCall(ping)
    call.clock = cast("IReactorTime", clock)
    setattr(site, _TICKER, call)
    call.start(interval, now=False).addErrback(lambda failure: log.failure("SSE keep-alive stopped", failure))


def hold_stream(ledger: Ledger, caller: Caller, request: Request) -> Claim:
    """Count ``request``'s event stream as one of its caller's streams until the response ends
    (finished at once if the caller's account is ended, a revoked key); `LimitExceeded` over
    the caller's share."""
    claim = ledger.claim(caller.account, STREAM, peer=caller.peer, end=_Finisher(request))
    when_finished(request, claim.release)
    return claim


class _Finisher:
    """``end`` of a stream's claim: finishes its response (a closure would cost twice the bytes
    of each idle stream)."""

    __slots__ = ("request",)

    def __init__(self, request: Request) -> None:
        self.request = request

    def __call__(self, _reason: str) -> None:
        finish_quietly(self.request)


class _StreamEnd(Deferred[None]):
    """The one finish notification of a stream's response, fired as twisted.web fires those of
    `Request.notifyFinish` (it sits in the same list). Everything that must learn of the end of
    a long-lived response is a ``(callback, argument)`` pair in its list: a Deferred and its
    callback tuples each were ~200 bytes of every idle stream (issue 15)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Callable[..., object], object]] = []
        self.addBoth(self._run)

    def _run(self, _result: object) -> None:
        # Each callback runs, whatever an earlier one raised (a stream's claims must be given back).
        for callback, argument in self.calls:
            try:
                if argument is _NO_ARGUMENT:
                    callback()
                else:
                    callback(argument)
            except Exception:
                log.failure("Ending a stream failed")


_NO_ARGUMENT = object()


def when_finished(request: Request, callback: Callable[..., object], argument: object = _NO_ARGUMENT) -> None:
    """Call ``callback(argument)`` (or ``callback()``) when ``request``'s response ends,
    finished or cut off."""
    notifications: list[Deferred[None]] | None = getattr(request, "notifications", None)
    if notifications is None:  # not a twisted.web.http.Request: what its notifyFinish says
        args = () if argument is _NO_ARGUMENT else (argument,)
        request.notifyFinish().addBoth(lambda _result: callback(*args))
        return
    for end in notifications:
        if isinstance(end, _StreamEnd):
            break
    else:
        end = _StreamEnd()
        notifications.append(end)
    end.calls.append((callback, argument))


class _SpentHeaders(Headers):
    """The header tables of a response whose head is sent and whose request was read: empty,
    and deaf to changes (they could no longer reach the client)."""

    __slots__ = ()

    def setRawHeaders(self, name: object, values: object) -> None:
        pass

    def addRawHeader(self, name: object, value: object) -> None:
        pass


_SPENT = _SpentHeaders()


def settle(request: Request) -> None:
    """Drop what an established stream's request no longer needs once its response head is
    out (or its connection was handed to a WebSocket): the header tables (received and sent),
    the empty body and the split path, about 2 KiB of every idle stream (issue 15). Only
    the writing state stays (twisted.web reads nothing else to write or finish a response
    whose head it has sent)."""
    if not isinstance(request, http.Request) or request.finished or request._disconnected:
        return  # not a twisted.web request, or no longer a stream (twisted.web let go of it)
    request.requestHeaders = request.responseHeaders = _SPENT
    content = request.content
    if content is not None:
        content.close()
        request.content = None
    request.postpath = request.prepath = []


def close_streams(streams: set[Request], retry_ms: int) -> int:
    """End every open stream, telling its client when to reconnect (shutdown); how many."""
    closed = 0
    for request in list(streams):
        if not request.finished and not getattr(request, "_disconnected", False):
            request.write(b"retry: %d\n\n" % retry_ms)
            request.finish()
            closed += 1
    return closed


def keep_alive(request: Request, interval: float, clock: IReactorTime | None = None) -> LoopingCall:
    """Write a comment on ``request``'s stream every ``interval`` seconds until it finishes, so
    proxies do not cut a quiet stream and a dead client is noticed (a write to it fails)."""
    if clock is None:
        from twisted.internet import reactor

        # Twisted types its reactor module as a module; at run time it is the installed reactor.
        clock = cast("IReactorTime", reactor)

    def ping() -> None:
        if request.finished or getattr(request, "_disconnected", False):
            call.stop()
        else:
            request.write(KEEPALIVE)

    call = LoopingCall(ping)
    call.clock = clock

    def stop(_result: object) -> None:
        if call.running:
            call.stop()

    call.start(interval, now=False).addErrback(lambda failure: log.failure("SSE keep-alive stopped", failure))
    when_finished(request, stop, None)
    return call


def format_event(
    data: bytes, event_id: str | None = None, event: str | None = "message", retry_ms: int | None = None
) -> bytes:
    """One SSE event; ``data`` must not contain newlines (our JSON never does)."""
    parts = []
    if event_id is not None:
        parts.append(b"id: " + event_id.encode("ascii"))
    if retry_ms is not None:
        parts.append(b"retry: %d" % retry_ms)
    if event is not None and data:
        parts.append(b"event: " + event.encode("ascii"))
    parts.append(b"data: " + data if data else b"data:")
    return b"\n".join(parts) + b"\n\n"


class EventStream:
    """One resumable stream of a session: its events, and the response currently carrying it.

    The events kept for replay are counted, in bytes, against the session's account in the
    ``ledger`` (its share of the replay budget): past it, an event still reaches a client
    that is reading, but is not kept for one that resumes later.
    """

    # Every session's GET stream is one: without an instance dict (issue 15, idle streams).
    __slots__ = (
        "_delivered",
        "_events",
        "_kept",
        "_request",
        "_seq",
        "account",
        "finished",
        "journal",
        "key",
        "ledger",
        "replay_limit",
        "retry_ms",
    )

    def __init__(
        self,
        key: str,
        replay_limit: int = 256,
        retry_ms: int | None = 3000,
        ledger: Ledger | None = None,
        account: str = "",
    ) -> None:
        self.key = key
        self.retry_ms = retry_ms
        self.ledger = ledger
        self.account = account
        self._seq = 0
        self.replay_limit = replay_limit
        # Made with the first event kept: most streams (an idle GET) never keep one.
        self._events: deque[tuple[int, bytes]] | None = None
        # Bytes of kept events counted in the ledger.
        self._kept = 0
        self._request: Request | None = None
        # The last event written to a reader: a later reader gets what came after it (the
        # standalone GET stream collects messages before the client opens it).
        self._delivered = 0
        self.finished = False
        # Several instances: given (key, number, data) of every event, and (key, number, b"")
        # when the stream ends, to keep them where any instance can replay them.
        self.journal: Callable[[str, int, bytes], None] | None = None

    def event_id(self, seq: int) -> str:
        """Ids name their stream, so a resuming GET finds the right one."""
        return f"{self.key}.{seq}"

    @property
    def attached(self) -> bool:
        """Whether a client connection is currently reading the stream."""
        return self._request is not None

    def attach(self, request: Request, after: int | None = None, prime: bool = True) -> None:
        """Carry the stream on ``request``: prime it, replay what it missed, follow live events."""
        self._detach_current()
        self._request = request
        when_finished(request, self._lost, request)
        # Send the response head now: a client learns the stream is open before any event.
        request.write(b"")
        if prime and after is None:
            # 2025-11-25 transports §Sending Messages: prime with an id and empty data.
            request.write(format_event(b"", self.event_id(0), retry_ms=self.retry_ms))
        start = after if after is not None else self._delivered
        for seq, frame in self._events or ():
            if seq > start:
                request.write(frame)
        self._delivered = self._seq
        if self.finished:
            self._finish_request()

    def send(self, data: bytes) -> None:
        """Append a message to the stream, writing it out if a client is attached."""
        self._seq += 1
        frame = format_event(data, self.event_id(self._seq))
        if self.journal is not None:
            self.journal(self.key, self._seq, data)
        self._keep(frame)
        if self._request is not None:
            self._request.write(frame)
            self._delivered = self._seq

    def _keep(self, frame: bytes) -> None:
        if self.replay_limit <= 0:
            return  # nothing is kept for replay
        events = self._events
        if events is None:
            events = self._events = deque(maxlen=self.replay_limit)
        if len(events) >= self.replay_limit:
            self._give(len(events.popleft()[1]))
        if self.ledger is not None:
            if not self.ledger.take(self.account, REPLAY, len(frame)):
                return
            self._kept += len(frame)
        events.append((self._seq, frame))

    def _give(self, size: int) -> None:
        if self.ledger is not None:
            self._kept -= size
            self.ledger.give(self.account, REPLAY, size)

    def forget(self) -> None:
        """Drop the kept events (the stream will never be resumed) and give their bytes back."""
        self._events = None
        if self.ledger is not None and self._kept:
            self.ledger.give(self.account, REPLAY, self._kept)
        self._kept = 0

    def close(self) -> None:
        """No more events: end the response (a resuming client still gets the replay)."""
        if self.journal is not None and not self.finished:
            self.journal(self.key, self._seq + 1, b"")
        self.finished = True
        if self._request is not None:
            self._finish_request()

    def _finish_request(self) -> None:
        request, self._request = self._request, None
        if request is not None:
            finish_quietly(request)

    _detach_current = _finish_request

    def _lost(self, request: Request) -> None:
        if self._request is request:
            self._request = None


def finish_quietly(request: Request) -> None:
    """Finish a response unless it is finished already or its client has gone."""
    if not request.finished and not request._disconnected:  # type: ignore[attr-defined]
        request.finish()


# Sequence numbers of a Last-Event-ID have at most this many digits: ours never come near, and
# the journal's Redis stream ids (64-bit) take any such number.
MAX_SEQ_DIGITS = 18


def parse_event_id(value: str) -> tuple[str, int] | None:
    """Split a Last-Event-ID into (stream key, sequence number); None if it is not ours (the
    client may send anything: Unicode digits, numbers past any stream's)."""
    key, _, seq = value.rpartition(".")
    if not key or not (seq.isascii() and seq.isdigit()) or len(seq) > MAX_SEQ_DIGITS:
        return None
    return key, int(seq)
