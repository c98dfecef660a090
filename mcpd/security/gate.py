# -*- test-case-name: tests.test_gate -*-
"""The per-request half of the HTTP policy layer, applied to every route of the Site.

`GuardedRequest` (the Site's request class) asks the `Gate` about each request as soon as its
headers are in, before its body is read: where it really comes from (the client behind a trusted
proxy) and whether that address may call, whether its Origin may (DNS-rebinding protection; CORS
preflights are answered here), whether the body is too large, who is calling (API key), whether
the caller is over its rate limit or its share of connections. A refused request is answered
with JSON saying what to do, and its body is discarded unread; an admitted one carries its
`Identity`, which transports turn into the engine's `Caller` (`mcpd.security.identity.caller_of`).
"""

from __future__ import annotations

import collections
import hmac
import itertools
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mcpd.interfaces import IClosingChannel, IGuardedConnection, StoreUnavailable
from mcpd.security.addresses import AddressList, forwarded_client, is_loopback_client, normal_form
from mcpd.security.channel import MCPRequest
from mcpd.security.head import AUTHORIZATION, ORIGIN, X_API_KEY, X_REQUEST_ID, head_problem, header_text
from mcpd.security.identity import Identity, admit, identity_of
from mcpd.security.keys import KeyRing
from mcpd.security.policy import ORIGIN_CHECKED, origin_problem
from mcpd.security.ratelimit import RateLimiter, retry_after
from mcpd.security.responses import REASONS, raw_response
from mcpd.security.routes import MESSAGES, UNKNOWN, Access, decide_route, route_problem
from mcpd.security.scopes import ADMIN
from mcpd.tools.api import DEFAULT_TENANT

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from mcpd.lifecycle import Lifecycle
    from mcpd.observe.audit import AuditTrail

log = Logger(namespace="mcpd.gate")

# Identities kept (`Gate._identity`): emptied when full.
_IDENTITIES = 4096
# Refusal log lines (with their audit records' lines) one client beyond loopback gets per
# interval; the rest are counted, audited and persisted, not logged (`Gate._refusal_logged`).
REFUSAL_LINES = 10
REFUSAL_INTERVAL = 60.0
# Refused requests with a body up to this size are read (and discarded) and answered on a
# connection that stays open; larger ones are answered at once and the connection closed.
READ_AND_ANSWER = 64 * 1024
# Where a connection keeps the key its last Bearer header named: (the `KeyRing` it was found
# in, the header's bytes, the `APIKey`). A reload makes a new ring, so nothing stale is reused.
KEY_MEMO = "_mcpd_key_memo"
# Query parameters that look like a credential: refused, since URLs end up in logs.
QUERY_KEY_NAMES = frozenset({"api_key", "apikey", "api-key", "key", "token", "access_token", "x-api-key"})
# The headers MCP clients send and read across origins (2025-11-25 transports).
CORS_ALLOW_HEADERS = (
    "Authorization, X-API-Key, Content-Type, Accept, Mcp-Session-Id, MCP-Protocol-Version, "
    "Mcp-Method, Mcp-Name, Last-Event-ID"
)
CORS_EXPOSE_HEADERS = "Mcp-Session-Id, MCP-Protocol-Version, WWW-Authenticate, Retry-After"
CORS_METHODS = "GET, POST, DELETE, OPTIONS"
# Server introspection (`Access.ADMIN` routes): open on loopback; beyond it, an admin-scoped key
# of tenant default, the operator's (or --public-metrics for /metrics). The pages are server-wide
# (every tenant's requests, every key's holdings): a tenant's admin sees its own tenant's records
# with server.audit instead.
_ADMIN_PAGE = "this page needs an admin-scoped API key beyond loopback (or the server's --public-metrics)"
_OPERATORS_PAGE = (
    f"this page shows every tenant's activity: beyond loopback it needs an admin key of tenant "
    f"'{DEFAULT_TENANT}' (the operator's), not a tenant's; a tenant's admin reads its own tenant's "
    f"records with the server.audit tool"
)
# Loopback reaches the server's pages and the probes whatever the allowlist.
_LOOPBACK_OPEN = frozenset({Access.PROBE, Access.ADMIN})
# Refusals of a route or method, by status, as counted (mcp_http_refusals_total{reason}).
_ROUTE_OUTCOMES = {404: "not_found", 405: "method_not_allowed", 501: "not_implemented"}
# A request id a client or proxy sent (X-Request-Id) is kept if it looks like one.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_ID_PREFIX = secrets.token_hex(3) + "-"
_ids = itertools.count(1)
_KEY_HINT = "Send the key as 'Authorization: Bearer <key>' (or 'X-API-Key: <key>'); ask the server's operator for one."


@attrs.frozen
class Refusal:
    """An answer given instead of serving a request (or a CORS preflight's answer)."""

    status: int
    body: dict[str, Any] | None
    headers: tuple[tuple[str, str], ...] = ()
    # Answer at once and close the connection rather than reading the body first.
    close: bool = False

    def payload(self) -> bytes:
        return b"" if self.body is None else json.dumps(self.body).encode()


def forbidden(why: str) -> Refusal:
    return Refusal(403, {"error": f"Forbidden: {why}"})


class Gate:
    """The request policy: keys, addresses, origins, sizes, rates and connection shares.

    ``keys`` and ``allowed`` may be swapped at any time (``kill -HUP`` reloads their files);
    requests already admitted keep their identity.
    """

    def __init__(
        self,
        *,
        keys: KeyRing | None = None,
        allowed: AddressList | None = None,
        proxies: AddressList | None = None,
        cors_origins: Iterable[str] = (),
        limiter: RateLimiter | None = None,
        max_body: int = 4 * 1024 * 1024,
        insecure_no_auth: bool = False,
        audit: AuditTrail | None = None,
        public_metrics: bool = False,
        lifecycle: Lifecycle | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self.keys = keys if keys is not None else KeyRing()
        self.allowed = allowed if allowed is not None else AddressList()
        self.proxies = proxies if proxies is not None else AddressList()
        self.cors_origins = frozenset(origin.rstrip("/") for origin in cors_origins)
        self.limiter = limiter
        self.max_body = max_body
        self.insecure_no_auth = insecure_no_auth
        self.audit = audit
        self.public_metrics = public_metrics
        self.lifecycle = lifecycle
        self._now = clock.seconds if clock is not None else time.monotonic
        # Refusals by outcome (auth_failure, rate_limited, …), for /metrics and /stats.
        self.refusals: collections.Counter[str] = collections.Counter()
        # The identities admitted requests carry, by what they are made of (`_identity`).
        self._identities: dict[tuple[bool, str, frozenset[str], str, str], Identity] = {}
        # Whether a POST to /messages/ (its query, its key's name) is for a live /sse session
        # of its caller's here (`SSEMessagesResource.live`): its message is counted by the
        # engine, which answers one over the rate limit in-band on the session's stream, as
        # the spec's clients expect (2024-11-05 basic/transports §HTTP with SSE: the POST's
        # answer carries nothing; the official SDK's client loses its session on a 429).
        # Any other POST there is counted here, before its body is read.
        self.in_session: Callable[[bytes, str], bool] | None = None
        # Refusal log lines by client beyond loopback: [interval's start, lines logged, left out].
        self._refusal_lines: dict[str, list[float]] = {}

    # -- addresses ------------------------------------------------------------------------------

    def trusts(self, peer: str) -> bool:
        """Whether ``peer`` is a trusted proxy (its forwarding headers are believed)."""
        return bool(self.proxies) and peer in self.proxies

    def address_refusal(self, client: str) -> Refusal | None:
        """Why a client address may not call at all, or None."""
        if self.allowed and client not in self.allowed:
            return forbidden(f"address {client} is not in this server's allowlist")
        if not self.keys and not self.insecure_no_auth and not is_loopback_client(client):
            return forbidden(
                "this server has no API keys configured, so it serves loopback clients only; its "
                "operator can configure keys (--api-key-file) or pass --insecure-no-auth on a trusted network"
            )
        return None

    def connection_refusal(self, peer: str) -> Refusal | None:
        """Checked when a connection is accepted, before anything is read from it."""
        if self.trusts(peer):
            return None  # the client behind it is checked per request
        return self.address_refusal(peer)

    def connection_refused(self, peer: str, refusal: Refusal, head: bytes) -> None:
        """Log and audit a connection `connection_refusal` refused, once answered (``head``:
        what it sent, maybe nothing), as a refused request is (counted when refused)."""
        logged, note = self._refusal_logged(peer)
        if logged:
            line = head.split(b"\n", 1)[0].split()
            method, path = (line[0], line[1].partition(b"?")[0]) if len(line) >= 2 else (b"-", b"-")
            log.info(
                "Refused {method} {path} from {client}: {status} {outcome}{note}",
                method=method.decode("latin-1"),
                path=path.decode("latin-1"),
                client=peer,
                status=refusal.status,
                outcome="forbidden",
                note=note,
            )
        if self.audit is not None:
            detail = str((refusal.body or {}).get("error", ""))
            self.audit.record(outcome="forbidden", key=None, peer=peer, transport="http", detail=detail, logged=logged)

    # -- requests -------------------------------------------------------------------------------

    def admit(self, request: GuardedRequest, length: int | None, peer: str, checked: bool) -> Any:
        """A `Refusal`, None to serve the request, or a Deferred of either (a remote bucket
        store). ``checked``: the peer already passed `connection_refusal`.

        Every decision is made on the request's route, decided here once: the route
        `mcpd.web.site.Root` serves.
        """
        route = decide_route(request, request.channel._path)
        lifecycle = self.lifecycle
        if lifecycle is not None and lifecycle.draining and route.access is not Access.PROBE:
            return self._audited(request, _DRAINING, "draining", peer, None, None)
        client = peer
        if self.proxies and peer in self.proxies:
            headers = request.requestHeaders
            client = forwarded_client(
                peer,
                self.proxies,
                forwarded_for=headers.getRawHeaders("x-forwarded-for", ()),
                real_ip=headers.getRawHeaders("x-real-ip", ()),
                forwarded=headers.getRawHeaders("forwarded", ()),
            )
            checked = False
        if not checked:
            refusal = self.address_refusal(client)
            # Loopback reads the probes and the server's pages whatever the allowlist (README,
            # Monitoring: /health and /ready always open, /stats and /metrics on loopback).
            if refusal is not None and not (route.access in _LOOPBACK_OPEN and is_loopback_client(client)):
                return self._audited(request, refusal, "forbidden", client, None, refusal.body["error"])  # type: ignore[index]
        origin = header_text(request, ORIGIN)
        why = origin_problem(request, self.cors_origins, origin)
        if why is not None:
            return self._audited(request, forbidden(why), "forbidden", client, None, why)
        setattr(request, ORIGIN_CHECKED, True)
        command = request.channel._command
        preflight = origin is not None and command == b"OPTIONS" and request.getHeader("access-control-request-method")
        if origin is not None and not preflight:
            _cors_headers(request, origin)  # on refusals too, so that the page can read them
        if route is UNKNOWN or command not in route.methods:
            problem = route_problem(route, command, request.channel._path)
            if problem is not None:
                status, body, allow = problem
                refusal = Refusal(status, body, allow)
                return self._audited(request, refusal, _ROUTE_OUTCOMES[status], client, None, body["error"])
        if preflight:
            assert origin is not None
            return self._preflight(request, origin)
        if length is not None and length > self.max_body:
            refusal = Refusal(
                413,
                {"error": f"Payload Too Large: request bodies are limited to {self.max_body} bytes"},
                close=True,
            )
            return self._audited(request, refusal, "too_large", client, None, None)
        query = request.channel._path.partition(b"?")[2]
        if route.access is Access.PROBE:
            # Without a key, the connection counts against the client's address.
            return self._hold_connection(request, f"ip:{client}", client, None)
        admin = route.access is Access.ADMIN
        if admin and (self.public_metrics or is_loopback_client(client)):
            return self._hold_connection(request, f"ip:{client}", client, None)
        name, scopes, tenant = "anonymous", frozenset[str](), DEFAULT_TENANT
        keyed = bool(self.keys)
        if keyed:
            key, refusal = self._authenticate(request, query)
            if refusal is not None:
                return self._auth_failure(request, refusal, client)
            assert key is not None
            name, scopes, tenant = key.name, key.scopes, key.tenant
        if admin and (ADMIN not in scopes or tenant != DEFAULT_TENANT):
            why = _ADMIN_PAGE if ADMIN not in scopes else _OPERATORS_PAGE
            return self._audited(
                request, forbidden(why), "forbidden", client, name if keyed else None, why, tenant=tenant
            )
        if keyed or client is not peer:
            # Without keys or proxies, `caller_of` finds the peer by itself.
            identity = self._identities.get((keyed, name, scopes, client, tenant))
            if identity is None:
                identity = self._identity(keyed, name, scopes, client, tenant)
            admit(request, identity)
            account = identity.account
        else:
            account = f"ip:{client}"
        if (
            self.limiter is not None
            and (keyed or not is_loopback_client(client))
            and (route is not MESSAGES or not self._counted_in_session(query, name))
        ):
            wait = self.limiter.check(account)
            # (A float first: `isinstance` with Deferred, an ABC, costs ~1 us.)
            if wait.__class__ is not float and isinstance(wait, Deferred):
                # A remote store answers once the channel may have read the whole request and
                # forgotten its request line: keep it for the refusal's log line.
                line = (command, request.channel._path)
                return wait.addCallback(self._after_rate, request, account, client, name if keyed else None, line)
            if wait:
                return self._after_rate(wait, request, account, client, name if keyed else None)
        return self._hold_connection(request, account, client, name if keyed else None)

    def _counted_in_session(self, query: bytes, name: str) -> bool:
        """Whether the engine counts this /messages/ POST (see ``in_session``)."""
        return self.in_session is not None and self.in_session(query, name)

    def _identity(self, keyed: bool, name: str, scopes: frozenset[str], client: str, tenant: str) -> Identity:
        """A caller's `Identity`, kept for its next request (one per key and address is made:
        a frozen attrs instance cost a keyed request 6k instructions)."""
        # Whom limits count against: the key, or the address without keys (mcpd.protocol.ledger).
        account = f"key:{name}" if keyed else f"ip:{client}"
        identity = Identity(name, scopes, client, account, tenant)
        if len(self._identities) >= _IDENTITIES:
            self._identities.clear()
        self._identities[keyed, name, scopes, client, tenant] = identity
        return identity

    def _auth_failure(self, request: GuardedRequest, refusal: Refusal, client: str) -> Any:
        """A key missing or not valid. With a rate limit, each such request from beyond loopback
        takes from its address's bucket (``ip:CLIENT``, unused by keyed requests), and once that
        is empty is answered 429: keys cannot be guessed faster than the limit."""
        if self.limiter is None or is_loopback_client(client):
            return self._audited(request, refusal, "auth_failure", client, None, refusal.body["error"])  # type: ignore[index]
        wait = self.limiter.check(f"ip:{client}")
        if wait.__class__ is not float and isinstance(wait, Deferred):
            line = (request.channel._command, request.channel._path)
            return wait.addCallback(self._after_auth_rate, request, refusal, client, line)
        return self._after_auth_rate(wait, request, refusal, client)

    def _after_auth_rate(
        self,
        wait: float,
        request: GuardedRequest,
        refusal: Refusal,
        client: str,
        line: tuple[bytes, bytes] | None = None,
    ) -> Refusal | None:
        if request._disconnected:
            return None  # as in `_after_rate`
        if wait > 0:
            return self._audited(request, _rate_limited(wait), "rate_limited", client, None, None, line)
        return self._audited(request, refusal, "auth_failure", client, None, refusal.body["error"], line)  # type: ignore[index]

    def _after_rate(
        self,
        wait: float,
        request: GuardedRequest,
        account: str,
        client: str,
        key: str | None,
        line: tuple[bytes, bytes] | None = None,
    ) -> Any:
        if request._disconnected:
            # The client left while the store answered: no one to answer, and its connection
            # has given back its place already (holding one now would never be released).
            return None
        if wait > 0:
            return self._audited(request, _rate_limited(wait), "rate_limited", client, key, None, line)
        return self._hold_connection(request, account, client, key)

    def _hold_connection(self, request: GuardedRequest, account: str, client: str, key: str | None) -> Refusal | None:
        """Counts the connection against its account's share of the connection budget (see
        `mcpd.security.capacity`); over it, the request is refused and the connection closed.
        Streams and sessions are counted where they open (`mcpd.protocol.ledger`)."""
        guarded = request.guarded
        exceeded = guarded.hold_for(account, client) if guarded is not None else None
        if exceeded is None:
            return None
        refusal = Refusal(
            exceeded.status,
            {"error": exceeded.message, "retry_after": exceeded.retry_after},
            (("Retry-After", str(exceeded.retry_after)),),
            close=True,
        )
        return self._audited(request, refusal, "connection_limit", client, key, exceeded.message)

    def _authenticate(self, request: GuardedRequest, query: bytes) -> tuple[Any, Refusal | None]:
        if query and any(name.lower() in QUERY_KEY_NAMES for name, _ in parse_qsl(query.decode("latin-1"))):
            return None, _unauthorized(
                "Unauthorized: API keys are refused in the URL (URLs end up in logs and histories)",
                "invalid_request",
            )
        # Single ASCII values (`head_problem` refused the request otherwise).
        raw = request.requestHeaders._rawHeaders.get(AUTHORIZATION)
        if raw is not None:
            channel = request.channel
            memo = getattr(channel, KEY_MEMO, None)
            # The connection's last Bearer header again, against the same keys: its key again,
            # without its SHA-256 (compared in constant time: behind a proxy, a connection
            # may carry several clients' requests).
            if memo is not None and memo[0] is self.keys and hmac.compare_digest(memo[1], raw[-1]):
                return memo[2], None
            scheme, _, token = raw[-1].decode("utf-8").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                key = self.keys.find(token.strip())
                if key is None:
                    return None, _unauthorized("Unauthorized: the API key is not valid", "invalid_token")
                setattr(channel, KEY_MEMO, (self.keys, raw[-1], key))
                return key, None
        presented = header_text(request, X_API_KEY)
        if not presented:
            return None, _unauthorized("Unauthorized: this server needs an API key", None)
        key = self.keys.find(presented.strip())
        if key is None:
            return None, _unauthorized("Unauthorized: the API key is not valid", "invalid_token")
        return key, None

    def _preflight(self, request: GuardedRequest, origin: str) -> Refusal:
        asked = request.getHeader("access-control-request-headers")
        return Refusal(
            204,
            None,
            (
                ("Access-Control-Allow-Origin", origin),
                ("Vary", "Origin"),
                ("Access-Control-Allow-Methods", CORS_METHODS),
                ("Access-Control-Allow-Headers", asked or CORS_ALLOW_HEADERS),
                ("Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS),
                ("Access-Control-Max-Age", "600"),
            ),
        )

    def _audited(
        self,
        request: GuardedRequest,
        refusal: Refusal,
        outcome: str,
        client: str,
        key: str | None,
        detail: str | None,
        line: tuple[bytes, bytes] | None = None,
        tenant: str | None = None,
    ) -> Refusal:
        """Count, log and audit a refusal. ``line``: the request's method and path, when the
        channel may no longer hold them (a decision that came later)."""
        self.refusals[outcome] += 1
        logged, note = self._refusal_logged(client)
        if logged:
            command, path = line if line is not None else (request.channel._command, request.channel._path)
            # The path without its query, which may hold a key.
            log.info(
                "Refused {method} {path} from {client}: {status} {outcome}{note}",
                method=command.decode("latin-1"),
                path=path.partition(b"?")[0].decode("latin-1"),
                client=client,
                status=refusal.status,
                outcome=outcome,
                note=note,
                x_request_id=request.x_request_id,
            )
        if self.audit is not None:
            method = request.getHeader("mcp-method")
            self.audit.record(
                outcome=outcome,
                key=key,
                peer=client,
                transport="http",
                method=method,
                tool=request.getHeader("mcp-name") if method == "tools/call" else None,
                detail=detail,
                x_request_id=request.x_request_id,
                # The key's tenant once it is known (admitted), so that its admin sees the record.
                tenant=tenant or _tenant_of(request),
                # Kept and persisted all the same.
                logged=logged,
            )
        if not refusal.close:
            # A refused client keeps its connection only within its share (its key's, or its
            # address's): refusals cannot be used to hold every connection.
            guarded = request.guarded
            if guarded is not None and guarded.hold_for(f"key:{key}" if key else f"ip:{client}", client) is not None:
                refusal = attrs.evolve(refusal, close=True)
        return refusal

    def _refusal_logged(self, client: str) -> tuple[bool, str]:
        """Whether a refusal of ``client``'s is logged (and its audit record), and what its line
        adds: a client beyond loopback gets `REFUSAL_LINES` lines every `REFUSAL_INTERVAL`
        seconds, so that a flood of refused requests (guessed keys, say) cannot flood the log;
        the next line logged says how many were left out."""
        if is_loopback_client(client):
            return True, ""
        now = self._now()
        lines = self._refusal_lines
        entry = lines.get(client)
        if entry is None or now - entry[0] >= REFUSAL_INTERVAL:
            left_out = int(entry[2]) if entry is not None else 0
            if entry is None and len(lines) >= _IDENTITIES:
                lines.clear()
            lines[client] = [now, 1, 0]
            return True, (f" ({left_out} earlier refusal(s) from {client} left out of the log)" if left_out else "")
        if entry[1] < REFUSAL_LINES:
            entry[1] += 1
            if entry[1] == REFUSAL_LINES:
                return (
                    True,
                    f" (further refusals from {client} are left out of the log for up to {REFUSAL_INTERVAL:g} s)",
                )
            return True, ""
        entry[2] += 1
        return False, ""


def _rate_limited(wait: float) -> Refusal:
    seconds = retry_after(wait)
    return Refusal(429, {"error": "Rate limit exceeded", "retry_after": seconds}, (("Retry-After", str(seconds)),))


def _tenant_of(request: GuardedRequest) -> str:
    identity = identity_of(request)
    return identity.tenant if identity is not None else DEFAULT_TENANT


_DRAINING = Refusal(
    503,
    {"error": "Service Unavailable: mcpd is shutting down; retry on another instance", "retry_after": 2},
    (("Retry-After", "2"),),
    close=True,
)


def _unauthorized(message: str, error: str | None) -> Refusal:
    challenge = 'Bearer realm="mcpd"' + (f', error="{error}"' if error else "")
    return Refusal(401, {"error": message, "hint": _KEY_HINT}, (("WWW-Authenticate", challenge),))


def _cors_headers(request: GuardedRequest, origin: str) -> None:
    request.setHeader(b"access-control-allow-origin", origin.encode("latin-1", "replace"))
    request.setHeader(b"vary", b"Origin")
    request.setHeader(b"access-control-expose-headers", CORS_EXPOSE_HEADERS.encode())


class _Discard:
    """Where a refused request's body goes: nowhere."""

    def write(self, data: bytes) -> None:
        pass

    def read(self, size: int = -1) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def close(self) -> None:
        pass


class GuardedRequest(MCPRequest):
    """A twisted.web request that is admitted by a `Gate` before its body is read.

    Use `guarded_request_factory` to make the class a Site builds its requests with.
    """

    # The route and the origin check the policy layer records on the request (ROUTE_ATTRIBUTE,
    # ORIGIN_CHECKED) live in slots, out of the instance dict: a streaming request otherwise
    # holds 31 attributes, one past what a key-sharing dict holds, and its dict grows to a
    # table of its own (1.5 KiB each idle stream, issue 15). Read them with getattr and a default.
    __slots__ = ("mcpd_route", "mcpd_origin_checked")

    gate: ClassVar[Gate]
    # Its head passed `head_problem` before anything served it (no routing header sent twice).
    head_checked: ClassVar[bool] = True
    # Returned in the X-Request-Id header and carried into the logs and the audit trail.
    x_request_id: str = ""
    refusal: Refusal | None = None
    _admission: Deferred[Any] | None = None
    # The connection carrying the request, as the policy layer watches it (set with its head).
    guarded: IGuardedConnection | None = None
    _answered = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        # Slots read with a default (`decide_route`, `caller_of`) hold None until decided: an
        # unset slot read so costs a formatted AttributeError each time.
        self.mcpd_route = None
        self._mcpd_identity = None
        given = self.requestHeaders._rawHeaders.get(X_REQUEST_ID)
        if given and _REQUEST_ID.match(given[-1].decode("latin-1")):
            self.x_request_id = given[-1].decode("latin-1")
        else:
            self.x_request_id = _ID_PREFIX + format(next(_ids), "x")
        # (An id is ASCII without line ends: nothing for `Headers` to sanitise.)
        self.responseHeaders._rawHeaders[X_REQUEST_ID] = [self.x_request_id.encode("latin-1")]
        channel = self.channel
        problem = head_problem(self.requestHeaders, channel._version, channel._path)
        if problem is not None:
            self.gate.refusals["bad_request"] += 1
            log.info("Refused a malformed request head: {why}", why=problem, x_request_id=self.x_request_id)
            self._refuse(Refusal(400, {"error": problem}, close=True), length)
            return
        # The connection the policy layer watches (mcpd.security.capacity); None under a bare Site.
        transport = self.channel.transport
        # providedBy, not adaptation: adapting asks the transport for __conform__, which a
        # ProtocolWrapper forwards to the socket's transport (a miss, and an exception, per request).
        guarded = self.guarded = transport if IGuardedConnection.providedBy(transport) else None
        if guarded is not None:
            guarded.head_complete(length)
            peer, checked = guarded.peer, guarded.checked_with is self.gate.allowed
        else:
            peer, checked = normal_form(getattr(self.client, "host", "") or ""), False
        outcome = self.gate.admit(self, length, peer, checked)
        if outcome is None:
            super().gotLength(length)
        elif isinstance(outcome, Deferred):
            super().gotLength(length)
            self._admission = outcome
            outcome.addCallbacks(self._admitted, self._admission_failed)
        else:
            self._refuse(outcome, length)

    def _admitted(self, outcome: Refusal | None) -> None:
        self._admission = None
        if outcome is not None:
            self.refusal = outcome

    def _admission_failed(self, failure: Any) -> None:
        """A remote store (rate-limit buckets) failed: answer 503, saying which store, rather
        than leave the request hanging."""
        if failure.check(StoreUnavailable):  # the store logs its outage, once
            error = f"Service Unavailable: {failure.getErrorMessage()}"
        else:
            log.failure("Admitting a request failed", failure)
            error = "Service Unavailable: try again shortly"
        self._admitted(Refusal(503, {"error": error}, (("Retry-After", "5"),)))

    def _refuse(self, refusal: Refusal, length: int | None) -> None:
        self.refusal = refusal
        self.content = _Discard()  # type: ignore[assignment]
        if refusal.close or length is None or length > READ_AND_ANSWER:
            self._answer_now(refusal)

    def _answer_now(self, refusal: Refusal) -> None:
        """Answer without reading the rest of the request, and close the connection."""
        self._answered = True
        # No "100 Continue" after the answer.
        self.requestHeaders.removeHeader(b"expect")
        headers: list[tuple[bytes | str, bytes | str]] = [
            (name, value)
            for name, values in self.responseHeaders.getAllRawHeaders()
            if name.lower() != b"connection"  # raw_response says close
            for value in values
        ]
        headers.extend(refusal.headers)
        response = raw_response(refusal.status, refusal.payload(), headers)
        channel: Any = self.channel
        closing = IClosingChannel(channel, None)
        if closing is not None:
            closing.answer_and_close(response)  # mcpd.security.channel: lets the client read it
        else:
            channel.transport.write(response)
            channel.loseConnection()

    def handleContentChunk(self, data: bytes) -> None:
        if self.refusal is not None:
            return
        self._received += len(data)
        if self._received > self.gate.max_body:
            self._refuse(
                Refusal(413, {"error": f"Payload Too Large: request bodies are limited to {self.gate.max_body} bytes"}),
                None,
            )
            return
        content: Any = self.content
        content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.guarded is not None:
            self.guarded.body_complete()
        super().requestReceived(command, path, version)

    def process(self) -> None:
        if self._answered or self._disconnected:
            return  # answered already, or the client left while its admission was decided
        if self._admission is not None:
            self._admission.addCallback(lambda _: self.process())
            return
        refusal = self.refusal
        if refusal is None:
            super().process()
            return
        self.setResponseCode(refusal.status, REASONS.get(refusal.status, "Error").encode())
        for name, value in refusal.headers:
            self.setHeader(name, value)
        payload = refusal.payload()
        if payload:
            self.setHeader(b"content-type", b"application/json")
        # (MCPRequest.write drops it from a preflight's 204: RFC 9110 §8.6.)
        self.setHeader(b"content-length", b"%d" % len(payload))
        self.write(payload)
        self.finish()

    def processingFailed(self, reason: Any) -> Any:
        """A resource raised: log it and answer a JSON 500 (twisted.web would answer HTML)."""
        log.failure("Serving {method} {path} failed", reason, method=self.method, path=self.path)
        if self.finished or self._disconnected:
            return reason
        if self.startedWriting:
            self.loseConnection()  # the status line is out: only closing can say it failed
            return reason
        body = json.dumps({"error": "Internal Server Error: mcpd failed to answer this request; see its log"})
        self.setResponseCode(500, b"Internal Server Error")
        self.setHeader(b"content-type", b"application/json")
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body.encode())
        self.finish()
        return reason

    def finish(self) -> None:
        # Before the channel replays any pipelined request, which may start a new deadline.
        if self.guarded is not None:
            self.guarded.request_finished()
        super().finish()


def guarded_request_factory(gate: Gate) -> type[GuardedRequest]:
    """A `GuardedRequest` class bound to ``gate``, for ``Site.requestFactory``."""
    return type("GuardedRequest", (GuardedRequest,), {"gate": gate})
