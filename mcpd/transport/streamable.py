# -*- test-case-name: tests.test_streamable -*-
"""Streamable HTTP: one endpoint (``/mcp``, and ``/``) serving both protocol eras.

- Modern (2026-07-28, a ``MCP-Protocol-Version`` header naming a version that is not a handshake
  version): stateless POSTs, one message each; GET and DELETE are 405.
- Legacy (no header, or a handshake version): ``initialize`` opens a session named by
  ``Mcp-Session-Id``; POST carries messages, GET opens the session's standalone SSE stream or
  resumes a stream by ``Last-Event-ID``, DELETE ends the session.

A request is answered with JSON when its result is ready before it has anything else to say,
and as an SSE stream (notifications, then the result) when it emits notifications first and the
client accepts ``text/event-stream``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from mcpd.protocol.codec import decode, encode
from mcpd.protocol.engine import Engine
from mcpd.protocol.errors import (
    HTTP_STATUS_FOR_CODE,
    PARSE_ERROR,
    SERVER_SHUTTING_DOWN,
    HeaderMismatch,
    InvalidRequest,
    LimitExceeded,
    MCPError,
    ParseError,
    limit_status,
)
from mcpd.protocol.ledger import Ledger
from mcpd.protocol.session import Session, SessionStore
from mcpd.protocol.versions import LEGACY_VERSIONS
from mcpd.protocol.vocabulary import Exchange
from mcpd.security.head import ACCEPT, CANONICAL_NAMES, CONTENT_TYPE, MCP_PROTOCOL_VERSION, canonical, header_text
from mcpd.security.identity import caller_of
from mcpd.security.responses import NoHead, json_error, limit_error
from mcpd.tools.api import Caller
from mcpd.transport.sse import EventStream, finish_quietly, hold_stream, parse_event_id, settle, start_sse

# The key of a session's standalone (GET) stream in the shared journal.
STANDALONE = "g"

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.web.server import Request

log = Logger(namespace="mcpd.http")

_JSON = b"application/json"
_SESSION_HEADER = "mcp-session-id"
MCP_SESSION_ID = canonical(b"mcp-session-id")
# Versions whose streams are primed with an empty event (2025-11-25 transports §Sending Messages).
_PRIMED_VERSIONS = frozenset({"2025-11-25"})
# 2025-11-25 basic/transports §Multiple Connections: every message goes on one stream only.
_ONE_GET_STREAM = "Conflict: this session already has an open GET stream"


class HTTPSession(Session):
    """A legacy session with the SSE streams its requests opened."""

    def __init__(
        self, session_id: str | None = None, now: float = 0.0, replay_limit: int = 256, ledger: Ledger | None = None
    ) -> None:
        super().__init__(session_id, now)
        self.replay_limit = replay_limit
        # Where the bytes its streams keep for replay are counted (against the session's account).
        self.ledger = ledger
        self.streams: dict[str, EventStream] = {}
        self.standalone: EventStream | None = None
        self._keys = itertools.count(1)
        # Several instances (`mcpd.cluster.sessions`): stream keys name this instance, events
        # are journaled where any instance can replay them, and messages that belong to no
        # request go to whichever instance reads the session's GET stream (``relay_push``,
        # given the message and its change id).
        self.stream_prefix = ""
        self.journal: Callable[[str, int, bytes], None] | None = None
        self.relay_push: Callable[[dict[str, Any], str | None], None] | None = None
        # Streams of this session this instance reads from the journal (a GET, a resumption),
        # each with the callable that ends it.
        self.readers: dict[object, Callable[[], None]] = {}

    def new_stream(self) -> EventStream:
        """A stream for one response, kept (bounded) for resumption."""
        key = f"{self.stream_prefix}s{next(self._keys)}"
        stream = EventStream(key, self.replay_limit, ledger=self.ledger, account=self.account)
        stream.journal = self.journal
        self.streams[stream.key] = stream
        if len(self.streams) > 64:
            # Forget the oldest finished streams; live ones stay.
            for key in [k for k, s in self.streams.items() if s.finished][: len(self.streams) - 64]:
                self.streams.pop(key).forget()
        return stream

    @property
    def idle(self) -> bool:
        return super().idle and not self.readers and not any(stream.attached for stream in self.streams.values())

    def push(self, message: dict[str, Any]) -> None:
        """Messages unrelated to a request go on the standalone GET stream, buffered for a
        client that has not opened it yet (2025-11-25 transports §Listening for Messages)."""
        if self.closed:
            return
        if self.relay_push is not None:
            self.relay_push(message, None)
            return
        if self.standalone is None:
            self.standalone = self.new_stream()
        self.standalone.send(encode(message))

    def push_change(self, message: dict[str, Any], change: str) -> None:
        if self.relay_push is not None and not self.closed:
            self.relay_push(message, change)
        else:
            self.push(message)

    def close(self) -> None:
        super().close()
        for finish in list(self.readers.values()):
            finish()
        for stream in self.streams.values():
            stream.close()
            stream.forget()


class JournalReader(Protocol):
    """Reads a session's streams from where several instances keep them (`mcpd.cluster`)."""

    def read(
        self, request: Request, session: HTTPSession, key: str, after: int | None, claim: str | None = None
    ) -> None:
        """Carry the stream ``key`` of ``session`` on ``request`` (an SSE response begun):
        the events after number ``after`` (None: the standalone stream's undelivered ones),
        then the live ones; ``claim``: from `hold_standalone`, let go when the stream ends."""

    def hold_standalone(self, session: HTTPSession) -> Deferred[str | None]:
        """Claim the session's GET stream for a reader here: fires with the claim, or None
        when it is open on another instance."""

    def let_go(self, session_id: str, claim: str) -> None:
        """Give up a claim from `hold_standalone` whose stream was not opened."""

    def unavailable(self, failure: Failure) -> str | None:
        """What to tell a client when ``failure`` means the shared state cannot be reached;
        None for any other failure."""


class StreamableHTTP(NoHead, Resource):
    """The MCP endpoint resource."""

    isLeaf = True
    allowed_methods = (b"GET", b"POST", b"DELETE")

    def __init__(
        self,
        engine: Engine,
        sessions: SessionStore,
        max_message_size: int,
        replay_limit: int = 256,
        journal: JournalReader | None = None,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.sessions = sessions
        self.max_message_size = max_message_size
        self.replay_limit = replay_limit
        # Several instances: streams are read from the shared journal (None: one process).
        self.journal = journal
        self._exchanges = itertools.count(1)

    def render(self, request: Request) -> bytes | int:
        # twisted.web's `Resource.render` finds ``render_POST`` by a name it builds for every
        # request; a POST goes there directly.
        if request.method == b"POST":
            return self.render_POST(request)
        return super().render(request)  # type: ignore[no-any-return]

    # -- POST -----------------------------------------------------------------------------------

    def render_POST(self, request: Request) -> bytes | int:
        accept = header_text(request, ACCEPT) or "*/*"
        accepts_sse = "text/event-stream" in accept
        if not (accepts_sse or "application/json" in accept or "*/*" in accept or "application/*" in accept):
            return json_error(request, 406, "Not Acceptable: send Accept: application/json, text/event-stream")
        content_type = header_text(request, CONTENT_TYPE)
        if content_type is not None and "json" not in content_type:
            return json_error(request, 415, "Unsupported Media Type: POST a JSON-RPC message as application/json")
        body = request.content.read() if request.content is not None else b""
        if len(body) > self.max_message_size:
            return json_error(request, 413, f"Payload Too Large: messages are limited to {self.max_message_size} bytes")
        version = header_text(request, MCP_PROTOCOL_VERSION)
        caller = caller_of(request, "http")
        if version is not None and version not in LEGACY_VERSIONS:
            exchange = Exchange(peer=f"http:{next(self._exchanges)}", caller=caller, headers=HeaderView(request))
            # The policy layer's head check refuses these already (`mcpd.security.head`).
            duplicated = None if getattr(request, "head_checked", False) else _duplicated_routing_header(request)
            if duplicated is not None:
                # Two copies of a routing header: a proxy and mcpd could each believe another one.
                error = HeaderMismatch(f"the {duplicated} header appears more than once")
                message = _loads_or_none(body)
                return self._reject(request, exchange, 400, _id_of(message), error, message)
            return self._serve(request, exchange, body, accepts_sse, modern=True)
        return self._post_legacy(request, body, accepts_sse, version, caller)

    def _post_legacy(
        self, request: Request, body: bytes, accepts_sse: bool, version: str | None, caller: Caller
    ) -> bytes | int:
        session_id = header_text(request, MCP_SESSION_ID)
        if session_id is None:
            message = _loads_or_none(body)
            if not (isinstance(message, dict) and message.get("method") == "initialize"):
                exchange = Exchange(peer=f"http:{next(self._exchanges)}", caller=caller)
                if message is None:
                    return self._serve(request, exchange, body, False, modern=False)
                error = InvalidRequest(
                    "Bad Request: send initialize first and then the Mcp-Session-Id it returns, or use "
                    "protocol 2026-07-28 (MCP-Protocol-Version header and params._meta)"
                )
                return self._reject(request, exchange, 400, _id_of(message), error, message)
            new_session = HTTPSession(
                now=self.sessions.now(), replay_limit=self.replay_limit, ledger=self.engine.ledger
            )
            new_session.owner = caller.name
            exchange = Exchange(peer=f"session:{new_session.id}", caller=caller, session=new_session)
            try:
                # A place among the sessions: the server's cap, and the caller's share of it.
                self.sessions.open(new_session, caller.account, caller.peer)
            except LimitExceeded as e:
                return self._reject(request, exchange, e.status, _id_of(message), e, message)
            return self._serve(request, exchange, body, accepts_sse, modern=False, new_session=new_session)
        if self.sessions.cluster is None:
            # One process: `_with_session` without its closure (a legacy call's common case).
            checked = self._checked(request, self.sessions.get(session_id), caller)
            if isinstance(checked, bytes):
                return checked
            return self._post_session(request, body, accepts_sse, version, caller, checked)
        return self._with_session(
            request,
            session_id,
            lambda session: self._post_session(request, body, accepts_sse, version, caller, session),
            caller,
        )

    def _post_session(
        self,
        request: Request,
        body: bytes,
        accepts_sse: bool,
        version: str | None,
        caller: Caller,
        session: HTTPSession,
    ) -> bytes | int:
        if version is not None and version != session.version:
            # 2025-06-18 transports §Protocol Version Header: invalid or unsupported → 400.
            exchange = Exchange(peer=f"session:{session.id}", caller=caller, session=session)
            error = InvalidRequest(
                f"Bad Request: MCP-Protocol-Version {version} differs from this session's {session.version}"
            )
            return self._reject(request, exchange, 400, None, error)
        exchange = Exchange(peer=f"session:{session.id}", caller=caller, session=session)
        return self._serve(request, exchange, body, accepts_sse, modern=False)

    def _serve(
        self,
        request: Request,
        exchange: Exchange,
        body: bytes,
        accepts_sse: bool,
        modern: bool,
        new_session: HTTPSession | None = None,
    ) -> bytes | int:
        reply = _Reply(self, request, exchange, accepts_sse, modern, new_session)
        exchange.notify = reply.notify
        exchange.prepaid = 1  # the gate counted this request against the caller's rate limit
        d = self.engine.handle_bytes(body, exchange)
        if d.called and not d.paused:
            # The common case: answered at once, straight back as JSON. (A Deferred that has
            # fired but waits on another, say a store's answer over the network, is paused.)
            result: list[Any] = []
            d.addBoth(result.append)
            return reply.immediate(result[0])
        d.addCallbacks(reply.complete, reply.failed)
        if modern:
            # 2026-07-28 transports: closing the response stream cancels the request.
            request.notifyFinish().addErrback(lambda _f: d.cancel())
        return NOT_DONE_YET

    # -- GET and DELETE -------------------------------------------------------------------------

    def render_GET(self, request: Request) -> bytes | int:
        if self._modern_header(request):
            return _method_not_allowed(request)
        accept = request.getHeader("accept") or ""
        if "text/event-stream" not in accept:
            return json_error(request, 406, "Not Acceptable: GET opens an SSE stream; send Accept: text/event-stream")
        session_id = header_text(request, MCP_SESSION_ID)
        if session_id is None:
            return json_error(request, 400, "Bad Request: GET needs the Mcp-Session-Id header from initialize")
        return self._with_session(request, session_id, lambda session: self._get_session(request, session))

    def _get_session(self, request: Request, session: HTTPSession) -> bytes | int:
        last_event_id = request.getHeader("last-event-id")
        if last_event_id is not None:
            return self._resume(request, session, last_event_id)
        # Only a GET stream read here counts (not a POST stream's resumption, also a reader).
        reading = any(getattr(reader, "key", None) == STANDALONE for reader in session.readers)
        if (session.standalone is not None and session.standalone.attached) or reading:
            return json_error(request, 409, _ONE_GET_STREAM)
        if self.journal is not None:
            # Several instances: the GET stream may be open on another one.
            d: Deferred[Any] = self.journal.hold_standalone(session)
            d.addCallback(self._read_standalone, request, session)
            d.addErrback(self._adoption_failed, request)
            d.addCallback(_write_later, request)
            d.addErrback(lambda f: log.failure("Opening a GET stream failed", f))
            return NOT_DONE_YET
        try:
            hold_stream(self.engine.ledger, caller_of(request, "http"), request)
        except LimitExceeded as e:
            return limit_error(request, e)
        if session.standalone is None:
            session.standalone = session.new_stream()
        start_sse(request)
        session.standalone.attach(request, prime=session.version in _PRIMED_VERSIONS)
        settle(request)
        return NOT_DONE_YET

    def _read_standalone(self, claim: str | None, request: Request, session: HTTPSession) -> bytes | int:
        """The GET stream from the journal, once this instance holds it (``claim``)."""
        assert self.journal is not None
        if claim is None:
            return json_error(request, 409, _ONE_GET_STREAM)
        if request.finished or request._disconnected:  # type: ignore[attr-defined]
            self.journal.let_go(session.id, claim)
            return NOT_DONE_YET
        try:
            hold_stream(self.engine.ledger, caller_of(request, "http"), request)
        except LimitExceeded as e:
            self.journal.let_go(session.id, claim)
            return limit_error(request, e)
        start_sse(request)
        self.journal.read(request, session, STANDALONE, None, claim)
        return NOT_DONE_YET

    def _resume(self, request: Request, session: HTTPSession, last_event_id: str) -> bytes | int:
        # 2025-11-25 transports §Resumability: replay only the stream the id names.
        parsed = parse_event_id(last_event_id)
        stream = session.streams.get(parsed[0]) if parsed is not None else None
        if parsed is None or (stream is None and (self.journal is None or not _journaled(session, parsed[0]))):
            return json_error(request, 404, "Not Found: no stream of this session has that Last-Event-ID")
        try:
            hold_stream(self.engine.ledger, caller_of(request, "http"), request)
        except LimitExceeded as e:
            return limit_error(request, e)
        start_sse(request)
        if stream is not None:
            stream.attach(request, after=parsed[1])
            settle(request)
        elif self.journal is not None:
            # A stream another instance wrote (or this session's GET stream): from the journal.
            self.journal.read(request, session, parsed[0], parsed[1])
        return NOT_DONE_YET

    def render_DELETE(self, request: Request) -> bytes | int:
        if self._modern_header(request):
            return _method_not_allowed(request)
        session_id = header_text(request, MCP_SESSION_ID)
        if session_id is None:
            return json_error(request, 400, "Bad Request: DELETE needs the Mcp-Session-Id header")
        return self._with_session(request, session_id, lambda session: self._delete_session(request, session))

    def _delete_session(self, request: Request, session: HTTPSession) -> bytes:
        session_id = session.id
        self.sessions.remove(session_id)
        log.info("Session {id} ended by the client", id=session_id)
        request.setResponseCode(200)
        return b""

    # -- helpers --------------------------------------------------------------------------------

    def _modern_header(self, request: Request) -> bool:
        version = request.getHeader("mcp-protocol-version")
        return version is not None and version not in LEGACY_VERSIONS

    def _with_session(
        self,
        request: Request,
        session_id: str,
        then: Callable[[HTTPSession], bytes | int],
        caller: Caller | None = None,
    ) -> bytes | int:
        """``then`` with the session, or the refusal; with several instances a session opened
        by another is first adopted from its record (the answer then comes later)."""
        session = self.sessions.get(session_id)
        if session is None and self.sessions.cluster is not None:
            if caller is None:
                caller = caller_of(request, "http")
            d: Deferred[Any] = self.sessions.adopt(session_id, self._replica, caller.name)
            d.addCallback(lambda adopted: self._checked(request, adopted, caller))
            d.addCallback(lambda checked: checked if isinstance(checked, bytes) else then(checked))
            d.addErrback(self._adoption_failed, request)
            d.addCallback(_write_later, request)
            d.addErrback(lambda f: log.failure("Serving an adopted session failed", f))
            return NOT_DONE_YET
        checked = self._checked(request, session, caller)
        return checked if isinstance(checked, bytes) else then(checked)

    def _replica(self, record: Any) -> HTTPSession:
        return HTTPSession(record.session_id, self.sessions.now(), self.replay_limit, ledger=self.engine.ledger)

    def _adoption_failed(self, failure: Failure, request: Request) -> bytes:
        detail = self.journal.unavailable(failure) if self.journal is not None else None
        if failure.check(LimitExceeded):
            return limit_error(request, failure.value)
        if detail is None:
            log.failure("Loading a session record failed", failure)
            detail = "the session store failed"
        request.setHeader(b"retry-after", b"2")
        return json_error(request, 503, f"Service Unavailable: {detail}; try again shortly")

    def _checked(self, request: Request, session: Session | None, caller: Caller | None = None) -> HTTPSession | bytes:
        if caller is None:
            caller = caller_of(request, "http")
        if session is not None and session.owner != caller.name:
            # Another key's session is answered as if it did not exist.
            log.info("Refused session {id} to a caller that did not open it", id=session.id)
            session = None
        if session is None:
            # 2025-11-25 transports §Session Management: unknown or ended session → 404.
            exchange = Exchange(peer="http:unknown-session", caller=caller)
            error = InvalidRequest("Session not found: it ended or expired; send initialize to start a new one")
            return self._reject(request, exchange, 404, None, error)
        return session  # type: ignore[return-value]

    def _reject(
        self, request: Request, exchange: Exchange, status: int, request_id: Any, error: MCPError, message: Any = None
    ) -> bytes:
        response = self.engine.reject(exchange, request_id, error, message)
        if isinstance(error, LimitExceeded):
            request.setHeader(b"retry-after", b"%d" % error.retry_after)
        return _json(request, status, encode(response))


class _Reply:
    """The answer to one POST: JSON if it is ready first, else an SSE stream."""

    def __init__(
        self,
        resource: StreamableHTTP,
        request: Request,
        exchange: Exchange,
        accepts_sse: bool,
        modern: bool,
        new_session: HTTPSession | None,
    ) -> None:
        self.resource = resource
        self.request = request
        self.exchange = exchange
        self.accepts_sse = accepts_sse
        self.modern = modern
        self.new_session = new_session
        self.stream: EventStream | None = None

    def notify(self, message: dict[str, Any]) -> None:
        """A notification about this request: switches the response to SSE."""
        if self.stream is None:
            if not self.accepts_sse or self.request.finished or not self._hold_stream():
                session = self.exchange.session
                if isinstance(session, HTTPSession) and "id" in message:
                    # A request to the client (elicitation, sampling) must reach it: use the
                    # session's standalone stream (2025-11-25 transports §Sending Messages).
                    session.push(message)
                return  # a JSON-only client cannot receive notifications about this request
            session = self.exchange.session
            self.stream = session.new_stream() if isinstance(session, HTTPSession) else EventStream("x", replay_limit=1)
            start_sse(self.request)
            self._session_header()
            prime = not self.modern and session is not None and session.version in _PRIMED_VERSIONS
            self.stream.attach(self.request, prime=prime)
        self.stream.send(encode(message))

    def _hold_stream(self) -> bool:
        """Count the response, now a stream, against its caller's share of streams (unless
        the request holds one already: a subscriptions/listen); whether it may be one."""
        exchange = self.exchange
        if exchange.stream is not None:
            return True
        try:
            exchange.stream = hold_stream(self.resource.engine.ledger, exchange.caller, self.request)
        except LimitExceeded:
            # Over the share: the answer comes as JSON, without the notifications before it.
            return False
        return True

    def immediate(self, response: Any) -> bytes | int:
        """The answer was ready at once."""
        if isinstance(response, Failure):
            self.failed(response)
            return NOT_DONE_YET
        if self.stream is not None:
            # Notifications went out first: the result follows them on the stream.
            self.complete(response)
            return NOT_DONE_YET
        body = self._json_body(response)
        self._settle()
        self._answered()
        return body

    def complete(self, response: Any) -> None:
        if self.stream is not None:
            if response is not None:
                self.stream.send(encode(response))
            self.stream.close()
        elif not self.request._disconnected:  # type: ignore[attr-defined]
            _write_later(self._json_body(response), self.request)
            self._answered()
        self._settle()

    def failed(self, failure: Failure) -> None:
        log.failure("Serving an HTTP request failed", failure)
        if self.stream is not None:
            self.stream.close()
        elif not self.request._disconnected:  # type: ignore[attr-defined]
            self.request.setResponseCode(500)
            finish_quietly(self.request)
        self._settle()

    def _answered(self) -> None:
        """The JSON answer is out (the request is finished): from now on the exchange's
        notifications take the path `notify` takes for a finished request, without holding
        this reply. ``exchange.notify = reply.notify`` was a cycle (exchange, reply, exchange)
        that kept every request, its headers and its body for the garbage collector, whose
        collections then came every few dozen requests."""
        session = self.exchange.session
        self.exchange.notify = partial(_push_requests, session) if isinstance(session, HTTPSession) else _drop

    def _settle(self) -> None:
        """A session whose initialize did not succeed gives its place back."""
        session = self.new_session
        if session is not None and session.id not in self.resource.sessions:
            session.close()

    def _json_body(self, response: Any) -> bytes:
        request = self.request
        if response is None:
            if self.exchange.method is not None and self.accepts_sse:
                # A request cancelled meanwhile: a POST carrying a request is answered with an
                # event stream or JSON (2025-11-25 transports §Sending Messages), so close an
                # empty stream: the result is never sent (basic/utilities/cancellation).
                start_sse(request)
                return b""
            # Notifications and client responses.
            request.setResponseCode(202)
            return b""
        self._session_header()
        status = 200
        if isinstance(response, dict) and "error" in response:
            code = response["error"]["code"]
            limited = limit_status(response["error"])
            if limited is not None:
                # A used-up share (429) or server budget (503), in either era.
                status = limited[0]
                request.setHeader(b"retry-after", b"%d" % limited[1])
            elif self.modern:
                status = HTTP_STATUS_FOR_CODE.get(code, 200)
                if code == SERVER_SHUTTING_DOWN:
                    # Cancelled by a shutdown: 503, and when to come back (RFC 9110 §15.6.4).
                    request.setHeader(b"retry-after", b"2")
            elif code == PARSE_ERROR:
                status = 400
        return _json(request, status, encode(response))

    def _session_header(self) -> None:
        session = self.new_session
        if session is not None and session.version is not None and not session.closed:
            # 2025-11-25 transports §Session Management: the id rides on the InitializeResult.
            self.request.setHeader(_SESSION_HEADER, session.id)
            if session.id not in self.resource.sessions:
                self.resource.sessions.add(session)
                log.info("Session {id} opened (protocol {version})", id=session.id, version=session.version)


def _json(request: Request, status: int, body: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", _JSON)
    return body


def _push_requests(session: HTTPSession, message: dict[str, Any]) -> None:
    """A notification about a request already answered: a request to the client (elicitation,
    sampling) goes to the session's standalone stream (2025-11-25 transports §Sending
    Messages), anything else has nowhere to go."""
    if "id" in message:
        session.push(message)


def _drop(message: dict[str, Any]) -> None:
    """A notification about a stateless request already answered: nowhere to go."""


def _method_not_allowed(request: Request) -> bytes:
    # 2026-07-28 transports §Streamable HTTP: the stateless era is POST only.
    request.setHeader(b"allow", b"POST")
    return json_error(request, 405, "Method Not Allowed: protocol 2026-07-28 uses POST only")


class HeaderView(Mapping[str, str]):
    """A request's headers as the engine reads them: lowercase names, the last value of each,
    looked up only when asked (most requests need three of them)."""

    def __init__(self, request: Request) -> None:
        self._request = request

    def __getitem__(self, name: str) -> str:
        value = header_text(self._request, canonical(name))
        if value is None:
            raise KeyError(name)
        return value

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        # By canonical name (twisted.web caches it by str name too), decoding only the value
        # returned (`Headers.getRawHeaders` with a str name decodes every value): `header_text`
        # and `canonical` written out (the engine asks for three headers of every call).
        values = self._request.requestHeaders._rawHeaders.get(CANONICAL_NAMES.get(name) or canonical(name))
        return values[-1].decode("utf-8") if values else default

    def __iter__(self) -> Iterator[str]:
        return (name.decode("latin-1").lower() for name, _ in self._request.requestHeaders.getAllRawHeaders())

    def __len__(self) -> int:
        return sum(1 for _ in self._request.requestHeaders.getAllRawHeaders())


_ROUTING_HEADERS = ("mcp-protocol-version", "mcp-method", "mcp-name")


def _duplicated_routing_header(request: Request) -> str | None:
    for name in _ROUTING_HEADERS:
        values = request.requestHeaders.getRawHeaders(name)
        if values is not None and len(values) > 1:
            return name
    return None


def _loads_or_none(body: bytes) -> Any:
    """The message, for a look before the engine reads it; None when the engine will refuse
    it as unreadable (not strict JSON, or nested deeper than the codec accepts)."""
    try:
        return decode(body)
    except ParseError:
        return None


def _id_of(message: Any) -> Any:
    request_id = message.get("id") if isinstance(message, dict) else None
    return request_id if isinstance(request_id, (str, int)) and not isinstance(request_id, bool) else None


def _journaled(session: HTTPSession, key: str) -> bool:
    """Whether ``key`` names a stream the journal may hold for ``session``: its GET stream, or
    a POST's (keys of a clustered session carry their instance's id)."""
    return session.journal is not None and (key == STANDALONE or "-" in key)


def _write_later(body: bytes | int, request: Request) -> None:
    """Finish a response whose answer was decided after ``render`` returned."""
    if body is NOT_DONE_YET or request.finished or request._disconnected:  # type: ignore[attr-defined]
        return
    # Framed as twisted.web frames a body ``render`` returns: with its length, not chunked.
    request.setHeader(b"content-length", b"%d" % len(body))  # type: ignore[arg-type]
    request.write(body)  # type: ignore[arg-type]
    request.finish()
