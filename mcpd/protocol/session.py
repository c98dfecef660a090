# -*- test-case-name: tests.test_engine -*-
"""Per-client protocol state: one per stdio connection and one per legacy HTTP session."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpd.interfaces import ISessionStore, SessionRecord
from mcpd.protocol.errors import LimitExceeded
from mcpd.protocol.ledger import SESSION, SUBSCRIPTION, Claim, Ledger
from mcpd.protocol.outbound import OutboundRequests
from mcpd.stores.memory import MemorySessionStore

log = Logger(namespace="mcpd.session")


def new_session_id() -> str:
    """A cryptographically random id of visible ASCII (2025-11-25 transports §Session Management)."""
    return secrets.token_urlsafe(24)


class Session:
    """What the engine remembers about one client between messages.

    ``version`` stays None until a legacy `initialize` handshake fixes it; a stdio client that
    only sends modern (2026-07-28) requests never sets it. ``in_flight`` maps request ids to the
    Deferreds serving them, so `notifications/cancelled` can stop them.
    """

    def __init__(self, session_id: str | None = None, now: float = 0.0) -> None:
        self.id = session_id or new_session_id()
        self.version: str | None = None
        self.initialized = False
        self.client_info: dict[str, Any] | None = None
        self.client_capabilities: dict[str, Any] = {}
        self.in_flight: dict[Any, Deferred[Any]] = {}
        self.last_active = now
        self.closed = False
        # Who opened the session (the caller's key name): nobody else may use it
        # (2025-11-25 security best practices §Session Hijacking: bind sessions to the user).
        self.owner: str | None = None
        # Whom the session is counted against (`mcpd.protocol.ledger`).
        self.account = ""
        # 2025-11-25 server/utilities/logging: set by logging/setLevel; None until then.
        self.log_level: str | None = None
        # URIs subscribed to with resources/subscribe, with what each holds in the ledger (None:
        # subscribed through another instance, which holds it), and the tenant of the caller
        # that subscribed (the owner's: a session has one caller).
        self.subscriptions: dict[str, Claim | None] = {}
        self.subscriptions_tenant: str | None = None
        # Several instances: tells the others serving the session of a change to its state
        # (`changed`); set by `mcpd.cluster.sessions`.
        self.share: Callable[[dict[str, str]], Deferred[Any]] | None = None
        # What the session holds in the ledger (its place among the sessions), given back
        # when it closes.
        self.claims: list[Claim] = []
        # Requests the server sent the client, awaiting answers.
        self.outbound = OutboundRequests()
        # How the transport delivers a message unrelated to any request (stdio: a line).
        self.sink: Callable[[dict[str, Any]], None] | None = None

    def record(self) -> SessionRecord:
        """What the session must keep wherever its requests land (`mcpd.interfaces`)."""
        return SessionRecord(
            self.id,
            version=self.version,
            owner=self.owner,
            account=self.account,
            client_info=self.client_info,
            client_capabilities=self.client_capabilities,
            log_level=self.log_level,
            subscriptions=sorted(self.subscriptions),
            subscriptions_tenant=self.subscriptions_tenant,
        )

    def restore(self, record: SessionRecord) -> None:
        """Take the state `record` made (its inverse), as when another instance's session is
        adopted here, but for what this process's ledger holds for it: its account and its
        subscriptions are claimed by `SessionStore.adopt`."""
        self.version = record.version
        self.owner = record.owner
        self.client_info = record.client_info
        self.client_capabilities = record.client_capabilities
        self.log_level = record.log_level
        self.subscriptions_tenant = record.subscriptions_tenant

    def changed(self, **change: str) -> Deferred[Any] | None:
        """A request changed the session's state (`apply`'s arguments): with several
        instances, every one serving the session applies it too, and its record keeps it.
        With several instances, fires once the record has it; fails with `StoreFull` when a
        subscribe would take the record past its account's share."""
        if self.share is not None:
            return self.share(change)
        return None

    def apply(
        self,
        log_level: str | None = None,
        subscribe: str | None = None,
        unsubscribe: str | None = None,
        tenant: str | None = None,
    ) -> None:
        """A change to the session's state made through another instance (`changed`)."""
        if log_level is not None:
            self.log_level = log_level
        if tenant is not None:
            self.subscriptions_tenant = tenant
        if subscribe is not None:
            self.subscriptions.setdefault(subscribe, None)
        if unsubscribe is not None:
            claim = self.subscriptions.pop(unsubscribe, None)
            if claim is not None:
                claim.release()

    def push(self, message: dict[str, Any]) -> None:
        """Send a message that belongs to no request (list changes, resource updates, requests
        made outside a request); dropped when the transport has nowhere to put it."""
        if self.sink is not None and not self.closed:
            self.sink(message)

    def push_change(self, message: dict[str, Any], change: str) -> None:
        """`push` a change notification; ``change`` names the change, so that a session served
        by several instances, each told of it, gets it once."""
        self.push(message)

    @property
    def idle(self) -> bool:
        """Whether nothing is happening in the session (no request being served)."""
        return not self.in_flight and not len(self.outbound)

    def close(self) -> None:
        """The session is going away: cancel every request still being served."""
        self.closed = True
        pending, self.in_flight = self.in_flight, {}
        for deferred in pending.values():
            deferred.cancel()
        self.outbound.close()
        claims = [*self.claims, *self.subscriptions.values()]
        self.claims, self.subscriptions = [], {}
        for claim in claims:
            if claim is not None:
                claim.release()


class SessionCluster(Protocol):
    """What a `SessionStore` asks of the other instances when several serve one deployment
    (`mcpd.cluster.sessions`); None for one process."""

    def fit(self, session: Session) -> None:
        """Make a new (or adopted) session of this process reachable from the others."""

    def ended(self, session: Session) -> None:
        """The session ended for good (its client ended it): every instance forgets it."""

    def refresh(self, sessions: list[Session]) -> object:
        """These sessions were used lately: keep their records (what it returns, a Deferred
        for a test to wait on, is not waited for)."""


class SessionStore:
    """Legacy sessions of this process, by id, ended after ``idle_timeout`` seconds unused.

    Each session holds a place in the ``ledger`` (`open`): the server's session cap, and its
    caller's share of it. The live sessions (their streams, the requests they serve) stay in
    this process; each one's record goes to ``records`` (an `ISessionStore`) when its handshake
    succeeds and leaves it when it ends, so a shared store can know every instance's sessions.
    """

    def __init__(
        self, clock: Any, idle_timeout: float, ledger: Ledger | None = None, records: ISessionStore | None = None
    ) -> None:
        from twisted.internet.task import LoopingCall

        self._clock = clock
        self.idle_timeout = idle_timeout
        self.ledger = ledger if ledger is not None else Ledger()
        self.records: ISessionStore = records if records is not None else MemorySessionStore()
        self._sessions: dict[str, Session] = {}
        # Set when several instances serve one deployment: sessions open on any of them.
        self.cluster: SessionCluster | None = None
        self._last_sweep = 0.0
        self._sweeper = LoopingCall(self.expire_idle)
        self._sweeper.clock = clock

    def start(self) -> None:
        """Begin sweeping idle sessions."""
        self._sweeper.start(min(60.0, max(self.idle_timeout / 4, 0.05)), now=False)

    def stop(self) -> None:
        """Stop sweeping and end every session."""
        if self._sweeper.running:
            self._sweeper.stop()
        for session_id in list(self._sessions):
            self.retire(session_id)

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def now(self) -> float:
        """The store's clock."""
        return self._clock.seconds()

    def open(self, session: Session, account: str, peer: str = "") -> None:
        """Claim a place for a new session of ``account`` (before it is added).

        At the account's share, its least recently used idle session is ended to make room;
        `LimitExceeded` when none is idle, or when the server holds its cap of sessions.
        """
        session.account = account
        end = functools.partial(self._end, session)
        try:
            claim = self.ledger.claim(account, SESSION, peer=peer, end=end)
        except LimitExceeded as e:
            if e.status != 429 or not self._make_room(account):
                raise
            claim = self.ledger.claim(account, SESSION, peer=peer, end=end)
        session.claims.append(claim)
        if self.cluster is not None:
            self.cluster.fit(session)

    def adopt(self, session_id: str, make: Callable[[SessionRecord], Session], owner: str) -> Deferred[Session | None]:
        """The session ``session_id`` when another instance opened it for ``owner`` (None if
        unknown, or another key's): made here from its record by ``make`` and kept like one of
        ours. Only with a cluster."""
        assert self.cluster is not None

        def loaded(record: SessionRecord | None) -> Session | None:
            known = self._sessions.get(session_id)
            if known is not None or record is None:
                return known
            if record.owner != owner:
                # Another key's session (a leaked id): refused before it takes a place in this
                # instance's ledger, against its owner's account
                # (2025-11-25 security best practices §Session Hijacking).
                log.info("Refused to adopt session {id} for a caller that did not open it", id=session_id)
                return None
            session = make(record)
            session.restore(record)
            session.initialized = True  # a record is kept once its handshake succeeded
            self.open(session, record.account)  # its account, and its place in the ledger
            # Counted against the account's share here too (the record holds at most that
            # many), so subscribes through this instance are refused once past it.
            session.subscriptions = {
                uri: self.ledger.claim(record.account, SUBSCRIPTION, force=True) for uri in record.subscriptions
            }
            session.last_active = self._clock.seconds()
            self._sessions[session.id] = session
            log.info("Session {id} adopted from another instance", id=session_id)
            return session

        return self.records.load(session_id).addCallback(loaded)

    def _make_room(self, account: str) -> bool:
        idle = [s for s in self._sessions.values() if s.account == account and s.idle]
        if not idle:
            return False
        oldest = min(idle, key=lambda s: s.last_active)
        log.info("Session {id} ended to make room for a new one of {account}", id=oldest.id, account=account)
        self.retire(oldest.id)
        return True

    def _end(self, session: Session, reason: str) -> None:
        log.info("Session {id} ended: {reason}", id=session.id, reason=reason)
        if self.retire(session.id) is None:
            session.close()  # not added yet (its initialize is being served)

    def add(self, session: Session) -> None:
        """Keep ``session`` (its handshake succeeded)."""
        session.last_active = self._clock.seconds()
        self._sessions[session.id] = session
        if self.cluster is not None:
            # Its notifications/initialized may land on another instance: the handshake's
            # success is what this one can know.
            session.initialized = True
        self.records.save(session.record()).addErrback(_store_failed, "keep", session.id)

    def get(self, session_id: str) -> Session | None:
        """The live session with this id, marked as just used; None if unknown or ended."""
        session = self._sessions.get(session_id)
        if session is not None:
            session.last_active = self._clock.seconds()
        return session

    def remove(self, session_id: str) -> Session | None:
        """End a session: its requests are cancelled and its streams closed (on every
        instance, with a cluster)."""
        session = self._sessions.pop(session_id, None)
        if session is not None:
            session.close()
            self.records.delete(session_id).addErrback(_store_failed, "forget", session_id)
            if self.cluster is not None:
                self.cluster.ended(session)
        return session

    def retire(self, session_id: str) -> Session | None:
        """End this process's part of a session (idle here, making room, shutting down): with
        a cluster, the others may go on serving it; alone, it ends (`remove`)."""
        if self.cluster is None:
            return self.remove(session_id)
        session = self._sessions.pop(session_id, None)
        if session is not None:
            session.close()
        return session

    def expire_idle(self) -> None:
        """End sessions unused for longer than the idle timeout."""
        now = self._clock.seconds()
        deadline = now - self.idle_timeout
        for session in list(self._sessions.values()):
            if session.last_active < deadline and session.idle:
                self.retire(session.id)
        if self.cluster is not None:
            used = [s for s in self._sessions.values() if s.last_active >= self._last_sweep or not s.idle]
            self.cluster.refresh(used)
        self._last_sweep = now


def _store_failed(failure: Failure, action: str, session_id: str) -> None:
    log.failure("The session store could not {action} session {id}", failure, action=action, id=session_id)
