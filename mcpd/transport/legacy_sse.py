# -*- test-case-name: tests.test_legacy_sse -*-
"""The HTTP+SSE transport of protocol 2024-11-05 (deprecated, still spoken by many clients).

``GET /sse`` opens a session and its one event stream; the first event is ``endpoint``, naming
``/messages/?session_id=…``. The client POSTs each of its messages there (answered 202 at once);
everything the server says — responses, notifications, its own requests — flows back as
``message`` events on the stream (2024-11-05 basic/transports §HTTP with SSE). The session lives
exactly as long as its stream: when the client goes, its requests are cancelled.

These sessions are kept in a `SessionStore` of their own, so an id issued here means nothing to
the Streamable HTTP endpoint, and an ``Mcp-Session-Id`` nothing here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from mcpd.protocol.codec import decode, encode
from mcpd.protocol.engine import Engine
from mcpd.protocol.errors import LimitExceeded, ParseError
from mcpd.protocol.session import Session, SessionStore
from mcpd.protocol.vocabulary import Exchange
from mcpd.security.identity import caller_of
from mcpd.security.responses import NoHead, json_error, limit_error
from mcpd.transport.sse import finish_quietly, format_event, hold_stream, settle, start_sse, when_finished

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.web.server import Request

    from mcpd.tools.api import Caller

# Several instances: hands a message for a session this process does not hold to the instance
# whose stream carries it; fires with whether that instance took it (False: no such session,
# or another key's).
Forward = Callable[[str, "Caller", bytes], "Deferred[bool]"]

log = Logger(namespace="mcpd.sse.legacy")

MESSAGES_PATH = "/messages/"
TRANSPORT = "sse"


class SSESession(Session):
    """A legacy session carried by one open ``GET /sse`` response."""

    def __init__(self, request: Request, caller: Caller, now: float = 0.0) -> None:
        super().__init__(now=now)
        self.request = request
        self.caller = caller
        self.peer = f"sse:{self.id}"
        self.sink = self.send

    @property
    def idle(self) -> bool:
        # Never expired while its stream is open; the stream closing ends it.
        return False

    def send(self, message: Any) -> None:
        """One server message as one ``message`` event."""
        request = self.request
        if not self.closed and not request.finished and not getattr(request, "_disconnected", False):
            request.write(format_event(encode(message), event="message"))

    def reply(self, response: Any) -> None:
        """The engine's answer to a POSTed message, if one is owed."""
        if response is not None:
            self.send(response)

    def close(self) -> None:
        super().close()
        finish_quietly(self.request)


class SSEStreamResource(NoHead, Resource):
    """``GET /sse``: a new session and its event stream."""

    isLeaf = True

    def __init__(self, sessions: SessionStore) -> None:
        super().__init__()
        self.sessions = sessions

    def render_GET(self, request: Request) -> bytes | int:
        caller = caller_of(request, TRANSPORT)
        session = SSESession(request, caller, now=self.sessions.now())
        try:
            # A session and a stream of its caller's: the server's session cap and the caller's
            # shares of sessions and streams (mcpd.protocol.ledger).
            self.sessions.open(session, caller.account, caller.peer)
            session.claims.append(hold_stream(self.sessions.ledger, caller, request))
        except LimitExceeded as e:
            for claim in session.claims:
                claim.release()
            return limit_error(request, e)
        self.sessions.add(session)
        start_sse(request)
        request.write(format_event(f"{MESSAGES_PATH}?session_id={session.id}".encode(), event="endpoint"))
        settle(request)
        when_finished(request, self._closed, session)
        log.info("SSE session {id} opened by {peer}", id=session.id, peer=session.caller.peer)
        return NOT_DONE_YET

    def _closed(self, session: SSESession) -> None:
        # A stream that ends, cleanly or not, ends its session (and cancels its requests).
        if self.sessions.remove(session.id) is not None:
            log.info("SSE session {id} closed", id=session.id)


class SSEMessagesResource(NoHead, Resource):
    """``POST /messages/?session_id=…``: one client message into a session (202)."""

    isLeaf = True
    allowed_methods = (b"POST",)

    def __init__(
        self, engine: Engine, sessions: SessionStore, max_message_size: int, forward: Forward | None = None
    ) -> None:
        super().__init__()
        self.engine = engine
        self.sessions = sessions
        self.max_message_size = max_message_size
        self.forward = forward

    def live(self, query: bytes, name: str) -> bool:
        """Whether a POST with this query string names a session whose stream is here, opened
        by key ``name``: the gate leaves such a message's rate-limit count to the engine, which
        answers it in-band on the stream (`Gate.in_session`); every other POST is counted,
        and refused with 429 over the limit, before its body is read."""
        values = _session_ids(parse_qs(query))
        session = self.sessions.get(values[0].decode("latin-1")) if values else None
        return isinstance(session, SSESession) and session.caller.name == name

    def render_POST(self, request: Request) -> bytes | int:
        args: dict[bytes, list[bytes]] = request.args or {}
        values = _session_ids(args)
        if not values:
            return json_error(request, 400, "Bad Request: session_id is required (from the endpoint event of GET /sse)")
        session = self.sessions.get(values[0].decode("latin-1"))
        caller = caller_of(request, TRANSPORT)
        if isinstance(session, SSESession) and session.caller.name != caller.name:
            # Bound to the key that opened it: anyone else is told it does not exist.
            log.info("Refused SSE session {id} to a caller that did not open it", id=session.id)
            session = None
        if not isinstance(session, SSESession) and self.forward is None:
            return json_error(request, 404, "Not Found: no such session; open a new one with GET /sse")
        body = request.content.read() if request.content is not None else b""
        if len(body) > self.max_message_size:
            return json_error(request, 413, f"Payload Too Large: messages are limited to {self.max_message_size} bytes")
        try:
            message = decode(body)
        except ParseError as e:
            # As the reference server does: a 400 to the POST. A JSON-RPC parse error (id null)
            # is not a valid message in 2024-11-05, and nothing on the stream could be correlated.
            return json_error(
                request, 400, f"Bad Request: the body is not a JSON-RPC message (invalid JSON). {e.message}"
            )
        if not isinstance(session, SSESession) and self.forward is not None:
            # Another instance may hold the session's stream: it serves the message there.
            self.forward(values[0].decode("latin-1"), caller, body).addCallbacks(
                self._forwarded, self._not_forwarded, callbackArgs=(request,), errbackArgs=(request,)
            )
            return NOT_DONE_YET
        assert isinstance(session, SSESession)
        # A live session of the caller's: the gate left the message's count to the engine
        # (`live`), which answers it in-band if over the limit.
        self._serve(session, caller, message, prepaid=0)
        return _accepted(request)

    def _serve(self, session: SSESession, caller: Caller, message: Any, prepaid: int) -> None:
        # The caller of this POST, admitted just now: its key's scopes as they are now (a
        # reload may have changed them since the stream opened). ``prepaid``: the gate of the
        # instance the POST came to counted it against the caller's rate limit.
        exchange = Exchange(peer=session.peer, caller=caller, session=session, notify=session.send, prepaid=prepaid)
        self.engine.handle(message, exchange).addCallbacks(session.reply, _failed)

    def serve_forwarded(self, session_id: str, caller: Caller, body: bytes) -> bool:
        """Serve a message another instance received for a session whose stream is here;
        False when there is no such session here or it is another key's."""
        session = self.sessions.get(session_id)
        if not isinstance(session, SSESession) or session.caller.name != caller.name:
            return False
        # The instance it came to found no session of its own to name: its gate counted it.
        self._serve(session, caller, decode(body), prepaid=1)
        return True

    def _forwarded(self, taken: bool, request: Request) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        if taken:
            request.write(_accepted(request))
        else:
            request.write(json_error(request, 404, "Not Found: no such session; open a new one with GET /sse"))
        request.finish()

    def _not_forwarded(self, failure: Failure, request: Request) -> None:
        log.warn("Could not forward an SSE session message: {e}", e=failure.getErrorMessage())
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.setHeader(b"retry-after", b"2")
        detail = f"Service Unavailable: the instance holding this session could not be reached ({failure.getErrorMessage()}); try again shortly"
        request.write(json_error(request, 503, detail))
        request.finish()


def _session_ids(args: dict[bytes, list[bytes]]) -> list[bytes] | None:
    # The Python SDK's servers name it session_id, the TypeScript SDK's sessionId.
    return args.get(b"session_id") or args.get(b"sessionId")


def _accepted(request: Request) -> bytes:
    request.setResponseCode(202)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b"Accepted"


def _failed(failure: Failure) -> None:
    log.failure("Serving an SSE session message failed", failure)
