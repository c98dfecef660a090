# -*- test-case-name: tests.test_cluster -*-
"""Legacy sessions usable from any instance.

Streamable HTTP (``Mcp-Session-Id``): a request lands anywhere. An instance that does not know
the session adopts it from its record (`mcpd.protocol.session.SessionStore.adopt`) and serves
the request itself, its answer on the request's own response. What a session's instances share:

- its record (version, owner, capabilities) in the shared `ISessionStore`;
- its streams' events, in the `Journal`: a POST's stream is written by the instance serving it
  and read by any instance a ``Last-Event-ID`` lands on; the standalone (GET) stream is written
  by every instance with something to say to the session (list changes, a legacy task's
  questions) and read by the instance holding the GET;
- answers to the server's requests: request ids name the instance that asked
  (``mcpd-<instance>-<replica>-<n>``), so an answer landing elsewhere is sent there.

HTTP+SSE (``/sse``, ``/messages/``): the stream is the session. Its instance listens on the
session's channel; a POST landing elsewhere is sent there (and refused 404 when nobody holds
the session or it belongs to another key).
"""

from __future__ import annotations

import functools
import secrets
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpd.cluster.bus import ClusterUnavailable
from mcpd.cluster.journal import STANDALONE
from mcpd.interfaces import StoreFull
from mcpd.protocol.codec import encode
from mcpd.protocol.ledger import SUBSCRIPTION
from mcpd.protocol.outbound import OutboundRequests
from mcpd.tools.api import Caller
from mcpd.transport.legacy_sse import SSESession
from mcpd.transport.sse import finish_quietly, format_event
from mcpd.transport.streamable import HTTPSession

if TYPE_CHECKING:
    from collections.abc import Mapping

    from twisted.web.server import Request

    from mcpd.cluster.bus import ClusterBus
    from mcpd.cluster.instances import InstanceRegistry
    from mcpd.cluster.journal import Journal
    from mcpd.protocol.changes import ChangeFeed
    from mcpd.protocol.session import Session, SessionStore
    from mcpd.transport.legacy_sse import SSEMessagesResource

log = Logger(namespace="mcpd.cluster")

_PRIMED_VERSIONS = frozenset({"2025-11-25"})

# One GET stream per session across instances. KEYS: the claim. ARGV: the new reader's token,
# TTL (ms), the token it may replace ("": none). Answers "" when the stream is now the new
# reader's, else the token of the reader holding it.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[3] then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ''
"""
# Resuming the GET stream takes it over. KEYS: the claim. ARGV: the new reader's token, TTL (ms).
# Answers the token of the reader it took it from ("": none).
_TAKE = """
local holder = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return holder or ''
"""
# KEYS: the claim. ARGV: the reader's token. Gives it up if it is still that reader's.
_LET_GO = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# The GET stream's delivered mark only moves forward: marks go out over a pool of connections
# and may reach Redis out of order. KEYS: the mark. ARGV: the event's number, TTL (ms).
_DELIVERED = """
local mark = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > mark then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return mark
"""


def caller_to_json(caller: Caller) -> dict[str, Any]:
    return {
        "name": caller.name,
        "scopes": sorted(caller.scopes),
        "peer": caller.peer,
        "transport": caller.transport,
        "account": caller.account,
        "x_request_id": caller.x_request_id,
        "tenant": caller.tenant,
    }


def caller_from_json(data: Mapping[str, Any]) -> Caller:
    return Caller(**{**data, "scopes": frozenset(data.get("scopes", ()))})


class _RecordKeeper:
    """Keeping the records of the sessions used here lately, for both legacy transports."""

    sessions: SessionStore

    def keep_records(self, live: list[Session]) -> Deferred[Any]:
        """Touch the records of ``live`` (a sweep's sessions, in one call: `touch_many`). One
        that was lost (Redis restarted without persistence, a blip while it was saved) is saved
        again from its live session, or other instances 404 it for good; the store refuses when
        the session was ended (its tombstone): then this instance's part ends too."""
        if not live:
            return succeed(None)

        def kept(flags: list[bool]) -> Deferred[Any]:
            lost = [session for session, kept in zip(live, flags, strict=True) if not kept]
            return gatherResults([self._lost(session) for session in lost], consumeErrors=True)

        d = self.sessions.records.touch_many([session.id for session in live]).addCallback(kept)
        return d.addErrback(_logged, "keep the records of {id}", f"{len(live)} sessions")

    def _lost(self, session: Session) -> Deferred[Any]:
        if session.closed or session.id not in self.sessions:
            return succeed(None)
        log.info("The record of session {id} was lost; saving it again", id=session.id)
        d = self.sessions.records.save(session.record()).addCallback(self._saved_again, session)
        return d.addErrback(_logged, "save session {id} again", session.id)

    def _saved_again(self, saved: bool, session: Session) -> None:
        if not saved and not session.closed and session.id in self.sessions:
            log.info("Session {id} was ended on another instance; ending it here too", id=session.id)
            self.sessions.retire(session.id)
            self.ended_here(session)

    def ended_here(self, session: Session) -> None:
        """This instance's part of a session ended elsewhere has ended."""


class ClusterSessions(_RecordKeeper):
    """The `SessionCluster` of the Streamable HTTP sessions (and its `JournalReader`), and the
    forwarding of HTTP+SSE messages."""

    def __init__(
        self, bus: ClusterBus, journal: Journal, registry: InstanceRegistry, sessions: SessionStore, feed: ChangeFeed
    ) -> None:
        self.feed = feed
        self.bus = bus
        self.journal = journal
        self.registry = registry
        self.sessions = sessions
        self.instance = bus.instance
        # Sessions whose GET stream this instance is claiming now.
        self._holding: set[str] = set()
        # The GET-stream readers open here, by their claim.
        self._claims: dict[str, _Reader] = {}
        bus.on("response", self._response)
        bus.on("let-go", self._told_to_let_go)
        bus.on("session-ended", self._ended_elsewhere)
        bus.on("session-state", self._changed_elsewhere)

    # -- SessionCluster -------------------------------------------------------------------------

    def fit(self, session: Session) -> None:
        # A nonce per replica: a session adopted again here gets a fresh HTTPSession whose
        # numbering restarts, so its stream keys and request ids must not repeat the last one's.
        replica = f"{self.instance}-{secrets.token_hex(4)}-"
        session.outbound = OutboundRequests(
            prefix=f"mcpd-{replica}", forward=functools.partial(self._forward_response, session)
        )
        # A session adopted here hears of changes too (its resources/subscribe may land here);
        # the journal's change ids keep it from hearing one change twice.
        self.feed.join(session)
        session.share = functools.partial(self._share, session)
        if isinstance(session, HTTPSession):
            session.stream_prefix = replica
            session.journal = functools.partial(self._journal, session.id)
            session.relay_push = functools.partial(self._push, session)

    def ended(self, session: Session) -> None:
        keys = [STANDALONE, *getattr(session, "streams", {})]
        self.journal.forget(session.id, keys).addErrback(_logged, "forget the streams of session {id}", session.id)
        self.bus.broadcast("session-ended", {"session": session.id}).addErrback(
            _logged, "announce the end of session {id}", session.id
        )

    def refresh(self, sessions: list[Session]) -> Deferred[Any]:
        """Keep the records and GET streams of the sessions used lately (a sweep's): a few
        scripts however many there are. End the POST streams read here whose writer has gone
        since their replay (`_end_orphans`)."""
        orphans = self._end_orphans(sessions)
        live = [session for session in sessions if session.initialized and not session.closed]
        if not live:
            return orphans
        streams = self.journal.keep([session.id for session in live])
        streams.addErrback(_logged, "keep the GET streams of {id}", f"{len(live)} sessions")
        return gatherResults([self.keep_records(live), streams, orphans])

    def _end_orphans(self, sessions: list[Session]) -> Deferred[Any]:
        """End the POST streams read here (resumed) whose writer has gone since the replay
        looked (killed, crashed, or its end lost): nothing more will come, not even their end,
        and the open response would keep its session from expiring. One question per writer,
        answered from memory when it is known gone; a writer without a registry entry is gone
        once the registry is `sure` (after an outage a live one may not have written it again).
        2025-11-25 basic/transports §Resumability and Redelivery: a stream closed before its
        response is resumed by the client (GET with ``Last-Event-ID``), which replays it and
        ends at once while the writer stays gone."""
        readers: dict[str, list[_Reader]] = {}
        for session in sessions:
            for reader in getattr(session, "readers", ()):
                # Still replaying: its replay looks at the writer when it is written.
                if isinstance(reader, _Reader) and reader.key != STANDALONE and reader.live is None:
                    readers.setdefault(reader.writer, []).append(reader)
        if not readers:
            return succeed(None)
        return gatherResults(
            [
                self.registry.gone(writer)
                .addCallback(_end_if_gone, these)
                .addErrback(_logged, "ask whether the writer of stream {id} has gone", these[0].key)
                for writer, these in readers.items()
            ]
        )

    def _share(self, session: Session, change: dict[str, str]) -> Deferred[Any]:
        """A change to the session's state made here: into its record (for instances that
        adopt it later), then to the instances serving it now. Fails with `StoreFull` when a
        subscribe would take the record past the account's share of subscriptions, which
        bounds the session's URIs whatever instances they were subscribed through."""

        def tell(_kept: bool) -> Deferred[int]:
            return self.bus.broadcast("session-state", {"session": session.id, "change": change})

        def failed(failure: Failure) -> Failure | None:
            if failure.check(StoreFull):
                return failure
            _logged(failure, "share a change of session {id}", session.id)
            return None

        limit = self.sessions.ledger.limits.get(SUBSCRIPTION)
        cap = limit.per_account if limit is not None and "subscribe" in change else None
        return self.sessions.records.update(session.id, cap=cap, **change).addCallback(tell).addErrback(failed)

    def _changed_elsewhere(self, message: dict[str, Any]) -> None:
        session = self.sessions.get(str(message.get("session")))
        change = message.get("change")
        if session is None or not isinstance(change, dict):
            return
        known = {"log_level", "subscribe", "unsubscribe", "tenant"}
        session.apply(**{name: value for name, value in change.items() if name in known and isinstance(value, str)})

    def _ended_elsewhere(self, message: dict[str, Any]) -> None:
        session_id = str(message.get("session"))
        if session_id in self.sessions:
            # Its client ended it on another instance: the record is gone, so is our part.
            self.sessions.retire(session_id)

    # -- events ---------------------------------------------------------------------------------

    def _journal(self, session_id: str, key: str, seq: int, data: bytes) -> None:
        self.journal.append(session_id, key, data, seq=seq).addErrback(
            _logged, "journal an event of session {id}", session_id
        )

    def _push(self, session: HTTPSession, message: dict[str, Any], change: str | None) -> None:
        self.journal.append(session.id, STANDALONE, encode(message), once=change).addErrback(
            _logged, "send a message to session {id}", session.id
        )

    # -- answers to the server's requests -------------------------------------------------------

    def _forward_response(self, session: Session, message: Mapping[str, Any]) -> bool:
        request_id = message.get("id")
        if not isinstance(request_id, str) or not request_id.startswith("mcpd-"):
            return False
        instance = request_id.split("-")[1]
        if instance == self.instance:
            return False
        self.bus.send(instance, "response", {"session": session.id, "message": dict(message)}).addErrback(
            _logged, "forward an answer of session {id}", session.id
        )
        return True

    def _response(self, message: dict[str, Any]) -> None:
        session = self.sessions.get(str(message.get("session")))
        answer = message.get("message")
        if session is None or not isinstance(answer, dict) or not session.outbound.resolve(answer):
            log.info("A forwarded answer found no request waiting for it")

    # -- JournalReader --------------------------------------------------------------------------

    def read(
        self, request: Request, session: HTTPSession, key: str, after: int | None, claim: str | None = None
    ) -> None:
        if key == STANDALONE and claim is None:
            # Resuming the GET stream (Last-Event-ID) makes it this reader's, as on one
            # instance, where the resumed stream replaces the old one; the old reader ends.
            # 2025-11-25 basic/transports §Multiple Connections: no message on two streams.
            claim = self._token()
            d = self.bus.redis.eval(_TAKE, [self.journal.reader(session.id)], [claim, self.journal.ttl_ms])
            d.addCallback(self._taken_over, session.id).addErrback(
                _logged, "claim the GET stream of session {id}", session.id
            )
        _Reader(self, request, session, key, after, claim).start()

    def _taken_over(self, previous: Any, session_id: str) -> None:
        """End the reader a resumed GET stream replaced: here, or on its instance."""
        previous = previous.decode() if isinstance(previous, bytes) else str(previous or "")
        if not previous:
            return
        instance = previous.split("-")[0]
        if instance == self.instance:
            self._end_reader(previous)
        else:
            self.bus.send(instance, "let-go", {"session": session_id, "claim": previous}).addErrback(
                _logged, "end the replaced GET stream of session {id}", session_id
            )

    def _told_to_let_go(self, message: dict[str, Any]) -> None:
        self._end_reader(str(message.get("claim")))

    def _end_reader(self, claim: str) -> None:
        reader = self._claims.get(claim)
        if reader is not None:
            reader.finish()

    def hold_standalone(self, session: HTTPSession) -> Deferred[str | None]:
        """Claim the session's GET stream for a new reader here: fires with the claim (to
        give to `read`, which lets it go when the stream ends), or None when a GET stream of
        the session is open on another instance that is running.

        2025-11-25 basic/transports §Multiple Connections: each message goes on one stream
        only; the journal would give every open GET stream of the session every message, so a
        second GET gets the 409 it gets on one instance, wherever it lands.
        """
        if session.id in self._holding:
            return succeed(None)  # a GET of this session landed here a moment ago
        self._holding.add(session.id)
        token = self._token()

        def hold(replaceable: str) -> Deferred[str | None]:
            d = self.bus.redis.eval(_HOLD, [self.journal.reader(session.id)], [token, self.journal.ttl_ms, replaceable])
            return d.addCallback(held, replaceable)

        def held(holder: Any, replaced: str) -> Any:
            holder = holder.decode() if isinstance(holder, bytes) else str(holder or "")
            if not holder:
                return token
            if replaced:
                return None  # taken again meanwhile: a live reader
            instance = holder.split("-")[0]
            if instance == self.instance:
                if holder in self._claims:
                    return None  # a resumed GET stream of ours is open
                return hold(holder)  # a reader of ours that ended without letting go
            # An instance without a registry entry is gone only once this instance's own
            # entries have been written long enough (`InstanceRegistry.sure`): after a Redis
            # outage a live holder may not have written its entry again yet. One of this host
            # killed is known gone at once.
            return self.registry.gone(instance).addCallback(lambda gone: hold(holder) if gone else None)

        def done(result: Any) -> Any:
            self._holding.discard(session.id)
            return result

        return hold("").addBoth(done)

    def reading(self, claim: str, reader: _Reader) -> None:
        """``reader``, open here, holds ``claim`` on its session's GET stream (until `let_go`):
        a resumed GET stream replacing it ends it (`_end_reader`)."""
        self._claims[claim] = reader

    def let_go(self, session_id: str, claim: str) -> None:
        """Give up a claim on the GET stream (its reader ended)."""
        self._claims.pop(claim, None)
        self.bus.redis.eval(_LET_GO, [self.journal.reader(session_id)], [claim]).addErrback(
            _logged, "let go of the GET stream of session {id}", session_id
        )

    def _token(self) -> str:
        return f"{self.instance}-{secrets.token_hex(6)}"

    def unavailable(self, failure: Failure) -> str | None:
        if failure.check(ClusterUnavailable):
            return str(failure.value)
        name = type(failure.value).__name__
        if "Connection" in name or "Timeout" in name or "Unavailable" in name:
            return f"the shared session store (Redis) is unavailable ({failure.getErrorMessage()})"
        return None


class _Reader:
    """One SSE response carrying a journaled stream: replay, then live events, in order."""

    def __init__(
        self,
        cluster: ClusterSessions,
        request: Request,
        session: HTTPSession,
        key: str,
        after: int | None,
        claim: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.claim = claim
        self.request = request
        self.session = session
        self.key = key
        self.after = after
        self.position = after or 0
        self.live: list[tuple[int, bytes]] | None = []  # held until the replay is written
        self.channel = cluster.journal.channel(session.id, key)
        self.done = False

    def start(self) -> None:
        session, journal = self.session, self.cluster.journal
        session.readers[self] = self.finish
        if self.claim is not None:
            self.cluster.reading(self.claim, self)
        # Subscribed first (live events are held meanwhile), then the replay: an event
        # published in between is in one or the other, and its number keeps it from being
        # written twice (`_event`).
        d: Deferred[Any] = self.cluster.bus.listen(self.channel, self.heard_raw, raw=True)
        self.request.notifyFinish().addBoth(self._stop)
        self.request.write(b"")
        if self.after is None:
            d.addCallback(lambda _: self.cluster.bus.redis.execute("GET", self._delivered_key()))
            d.addCallback(self._begin_fresh)
        d.addCallback(lambda _: journal.read_after(session.id, self.key, self.position))
        d.addCallback(self._replayed)
        d.addErrback(self._failed)

    def _delivered_key(self) -> str:
        return self.cluster.bus.key("ev", self.session.id, self.key, "delivered")

    def _begin_fresh(self, delivered: Any) -> None:
        self.position = int(delivered or 0)
        if self.session.version in _PRIMED_VERSIONS:
            # 2025-11-25 transports §Sending Messages: prime with an id and empty data.
            self._write(format_event(b"", f"{self.key}.{self.position}", retry_ms=3000))

    def _replayed(self, events: list[tuple[int, bytes]]) -> Deferred[Any] | None:
        held, self.live = self.live or [], None
        for seq, data in [*events, *sorted(held)]:
            self._event(seq, data)
        if self.done or self.key == STANDALONE:
            return None
        # A POST's stream: if the instance that wrote it is gone, nothing more will come (one
        # of this host that was killed is known gone at once). Ending a stream is undone by
        # resuming it, so one without a registry entry ends too, `sure` or not. A writer gone
        # later is found by the sweep (`ClusterSessions._end_orphans`).
        return self.cluster.registry.gone(self.writer, lapsed_is_gone=True).addCallback(self._origin_gone)

    @property
    def writer(self) -> str:
        """The instance writing this stream (a POST's: its key starts with its id)."""
        return self.key.split("-")[0]

    def _origin_gone(self, gone: bool) -> None:
        if gone and not self.done:
            self.finish()

    def heard_raw(self, raw: str) -> None:
        """A live event, as the journal's script published it: ``<seq> <data>``."""
        seq_text, _, data = raw.partition(" ")
        event = (int(seq_text), data.encode("utf-8"))
        if self.live is not None:
            self.live.append(event)
        else:
            self._event(*event)

    def _event(self, seq: int, data: bytes) -> None:
        if self.done or seq <= self.position:
            return
        self.position = seq
        if not data:
            self.finish()  # the stream ended
            return
        self._write(format_event(data, f"{self.key}.{seq}"))
        if self.key == STANDALONE:
            self.cluster.bus.redis.eval(
                _DELIVERED, [self._delivered_key()], [seq, self.cluster.journal.ttl_ms]
            ).addErrback(lambda _f: None)

    def _write(self, frame: bytes) -> None:
        request = self.request
        if not request.finished and not getattr(request, "_disconnected", False):
            request.write(frame)

    def finish(self) -> None:
        self.done = True
        finish_quietly(self.request)

    def _failed(self, failure: Failure) -> None:
        log.warn(
            "Reading stream {key} of session {id} failed: {e}",
            key=self.key,
            id=self.session.id,
            e=failure.getErrorMessage(),
        )
        self.finish()

    def _stop(self, _result: object) -> None:
        self.done = True
        self.session.readers.pop(self, None)
        self.cluster.bus.unlisten(self.channel, self.heard_raw)
        if self.claim is not None:
            self.cluster.let_go(self.session.id, self.claim)


class SSEForwarding(_RecordKeeper):
    """HTTP+SSE sessions across instances: the instance holding a session's stream listens on
    its channel; a message for it landing elsewhere is sent there."""

    def __init__(self, bus: ClusterBus, sessions: SessionStore) -> None:
        self.bus = bus
        self.sessions = sessions
        self.messages: SSEMessagesResource | None = None

    def channel(self, session_id: str) -> str:
        return self.bus.key("sse", session_id)

    def fit(self, session: Session) -> None:
        if isinstance(session, SSESession):
            # Refused (Redis busy): the channel stays, subscribed on the bus's next connection.
            listened = self.bus.listen(self.channel(session.id), functools.partial(self._message, session.id))
            listened.addErrback(lambda _failure: None)

    def ended(self, session: Session) -> None:
        self.bus.unlisten(self.channel(session.id))

    def refresh(self, sessions: list[Session]) -> Deferred[Any]:
        """Keep the records of the sessions whose streams are open (the session lives as long
        as its stream; its record counts it for every instance): touched once per sweep, and
        saved again if lost (`keep_records`)."""
        return self.keep_records([session for session in sessions if not session.closed])

    def ended_here(self, session: Session) -> None:
        # Its stream closing finds it gone from the store (`SessionStore.remove` does nothing):
        # its channel is left here.
        self.ended(session)

    def forward(self, session_id: str, caller: Caller, body: bytes) -> Deferred[bool]:
        """Send a POSTed message to the instance holding the session; fires with whether it
        took it."""
        payload = {"caller": caller_to_json(caller), "body": body.decode("utf-8")}
        return self.bus.ask(self.channel(session_id), "sse-message", payload).addCallback(
            lambda reply: bool(reply.get("taken"))
        )

    def _message(self, session_id: str, message: dict[str, Any]) -> None:
        assert self.messages is not None
        try:
            taken = self.messages.serve_forwarded(
                session_id, caller_from_json(message["caller"]), message["body"].encode("utf-8")
            )
        except Exception:
            log.failure("A forwarded SSE message could not be served")
            taken = False
        if "ask" in message:
            self.bus.send(str(message["from"]), "reply", {"re": message["ask"], "body": {"taken": taken}}).addErrback(
                _logged, "answer a forwarded message of session {id}", session_id
            )


def _end_if_gone(gone: bool, readers: list[_Reader]) -> None:
    if gone:
        for reader in readers:
            if not reader.done:
                log.info("The writer of stream {key} has gone: ending its reader", key=reader.key)
                reader.finish()


def _logged(failure: Failure, what: str, session_id: str) -> None:
    log.warn("Could not " + what + ": {e}", id=session_id, e=failure.getErrorMessage())
