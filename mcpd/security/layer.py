# -*- test-case-name: tests.test_security_wiring -*-
"""The HTTP policy layer assembled from `Settings`: one `Gate` (per request) and one
`CapacityFactory` (per connection) around the Site that serves every network transport, the
engine's scope filter and audit observer, and ``kill -HUP`` reloading of the key and allowlist
files."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from mcpd.config import ConfigError
from mcpd.interfaces import IBucketStore
from mcpd.observe.audit import AuditTrail
from mcpd.protocol.ledger import Ledger
from mcpd.security.addresses import AddressList, AddressListError, read_address_file
from mcpd.security.capacity import CapacityFactory
from mcpd.security.gate import Gate, GuardedRequest, guarded_request_factory
from mcpd.security.keys import KeyFileError, KeyRing, load_keys
from mcpd.security.policy import beyond_loopback
from mcpd.security.ratelimit import MessageLimiter, RateLimit, RateLimiter
from mcpd.security.scopes import ScopePolicy, narrowed

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from mcpd.config import Settings
    from mcpd.lifecycle import Lifecycle
    from mcpd.tools.pack import ToolRegistry

log = Logger(namespace="mcpd.security")


class SecurityConfigError(ConfigError):
    """A key or allowlist file (or entry) is unusable; the message names it."""


def load_key_ring(settings: Settings) -> KeyRing:
    """The keys of ``--api-key`` / ``API_KEYS`` and ``--api-key-file``."""
    try:
        return load_keys(settings.api_key, settings.api_key_file)
    except (KeyFileError, ValueError) as e:
        raise SecurityConfigError(str(e)) from None


def load_allowlist(settings: Settings) -> AddressList:
    """The addresses of ``--allowed-ip`` / ``ALLOWED_IPS`` and ``--allowed-ip-file``."""
    try:
        entries = list(settings.allowed_ip)
        if settings.allowed_ip_file:
            entries.extend(read_address_file(settings.allowed_ip_file))
        return AddressList(entries)
    except AddressListError as e:
        raise SecurityConfigError(str(e)) from None


class Security:
    """Everything the policy layer needs, built once per daemon."""

    def __init__(
        self,
        settings: Settings,
        clock: IReactorTime,
        buckets: IBucketStore,
        audit: AuditTrail | None = None,
        lifecycle: Lifecycle | None = None,
        ledger: Ledger | None = None,
        persist_audit: Callable[[Any], None] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        # What every account holds: a reload ends what a revoked key holds, through it.
        self.ledger = ledger if ledger is not None else Ledger()
        if audit is None:
            # Every tool call in the log wherever others can call (with keys, or on a listener
            # beyond loopback) and no persisted trail keeps them. Where the SQL store persists
            # every call (server.audit), the log carries the refusals and the calls that went
            # wrong, as on a loopback-only daemon without keys (one local user): a line per call
            # would repeat the trail, cost a keyed call ~12% of its throughput (issue 15), and
            # past ~330 calls/s journald's default rate limit (10,000 messages in 30 s per
            # service) drops such lines anyway. ``--audit-log all`` logs every call regardless;
            # every call is in the in-memory buffer too.
            shared = bool(settings.api_key or settings.api_key_file) or any(
                beyond_loopback(endpoint) for endpoint in settings.http_endpoints()
            )
            log_calls = settings.audit_log == "all" if settings.audit_log else shared and persist_audit is None
            audit = AuditTrail(settings.audit_buffer, log_calls=log_calls, persist=persist_audit)
        self.audit = audit
        try:
            proxies = AddressList(settings.trusted_proxy)
        except AddressListError as e:
            raise SecurityConfigError(f"--trusted-proxy: {e}") from None
        limit = RateLimit(settings.rate_limit, settings.rate_window, settings.rate_burst)
        self.gate = Gate(
            keys=load_key_ring(settings),
            allowed=load_allowlist(settings),
            proxies=proxies,
            cors_origins=settings.cors_origin,
            limiter=RateLimiter(limit, buckets),
            max_body=settings.max_message_size,
            insecure_no_auth=settings.insecure_no_auth,
            audit=self.audit,
            public_metrics=settings.public_metrics,
            lifecycle=lifecycle,
            clock=clock,
        )

    @property
    def keyed(self) -> bool:
        return bool(self.gate.keys)

    def scope_policy(self, registry: ToolRegistry) -> ScopePolicy | None:
        """What the engine filters tools, resources and prompts by: the keys' scopes; None
        without keys (every caller sees everything)."""
        return ScopePolicy(registry) if self.keyed else None

    @property
    def message_limit(self) -> MessageLimiter | None:
        """The engine's limit on every message, however it came (a batch's, a WebSocket's),
        counted in the caller's rate-limit bucket; None without a rate limit."""
        if self.gate.limiter is None:
            return None
        return MessageLimiter(self.gate.limiter, self._rate_limited)

    def _rate_limited(self) -> None:
        self.gate.refusals["rate_limited"] += 1

    @property
    def request_factory(self) -> type[GuardedRequest]:
        """The Site's request class: every request passes the gate as its head arrives."""
        return guarded_request_factory(self.gate)

    def protect(self, site: Any) -> CapacityFactory:
        """Guard ``site``'s connections (caps, slow clients); its requests pass the gate
        through `request_factory`, given to the Site when it is made."""
        settings = self.settings
        return CapacityFactory(
            site,
            self.gate,
            self.clock,
            max_connections=settings.max_connections,
            max_per_ip=settings.max_connections_per_ip,
            head_timeout=settings.header_timeout,
            body_timeout=settings.request_timeout,
            ledger=self.ledger,
            max_write_buffer=settings.max_write_buffer,
        )

    def reload(self) -> bool:
        """Re-read the key and allowlist files; on any error keep what is in force.

        What changed applies at once to everything open, whatever carries it: a revoked key
        (gone from the file, or its secret changed) loses its streams, sessions, calls in flight
        and tasks, and so does a key moved to another tenant; a key whose scopes changed has
        its open WebSockets and sessions served under the new ones (and loses its calls in
        flight and tasks if it lost a scope); an address no longer allowed loses its streams
        and sessions.
        """
        try:
            keys, allowed = load_key_ring(self.settings), load_allowlist(self.settings)
        except SecurityConfigError as e:
            log.error("Reload refused, keeping the current keys and allowlist: {why}", why=str(e))
            return False
        if bool(keys) != self.keyed:
            log.error(
                "Reload refused: it would turn API keys {change}; restart mcpd for that",
                change="off" if self.keyed else "on",
            )
            return False
        previous = self.gate.keys
        self.gate.keys, self.gate.allowed = keys, allowed
        log.info(
            "Reloaded {keys} API key(s) and {networks} allowlist entr(ies)",
            keys=len(keys),
            networks=len(allowed.networks),
        )
        self._apply(previous, keys)
        return True

    def _apply(self, previous: KeyRing, keys: KeyRing) -> None:
        """End what revoked keys and refused addresses hold; rescope what changed keys hold."""
        before = {key.name: key for key in previous.keys}
        after = {key.name: key for key in keys.keys}
        revoked = sorted(name for name, key in before.items() if name not in after or after[name].digest != key.digest)
        # A key moved to another tenant: what it holds open was made under the old one (a
        # WebSocket's caller, a session's subscriptions) and would go on reading and writing
        # that tenant's records; it is ended as a revoked key's is, and reconnects as the new.
        moved = sorted(
            name
            for name, key in before.items()
            if name in after and after[name].digest == key.digest and after[name].tenant != key.tenant
        )
        if revoked:
            ended = self.ledger.end_accounts([f"key:{name}" for name in revoked], "the API key was revoked")
            log.info(
                "Revoked API key(s) {names}: {ended} stream(s), session(s), call(s) and task(s) ended",
                names=", ".join(revoked),
                ended=ended,
            )
        if moved:
            ended = self.ledger.end_accounts([f"key:{name}" for name in moved], "the API key moved to another tenant")
            log.info(
                "API key(s) {names} moved to another tenant: {ended} stream(s), session(s), call(s) and task(s) "
                "made under the old one ended",
                names=", ".join(f"{name} ({before[name].tenant} -> {after[name].tenant})" for name in moved),
                ended=ended,
            )
        for name, key in after.items():
            old = before.get(name)
            if old is not None and old.digest == key.digest and old.tenant == key.tenant and old.scopes != key.scopes:
                log.info("API key {name} now has scopes {scopes}", name=name, scopes=",".join(sorted(key.scopes)))
                self.ledger.rescope(f"key:{name}", key.scopes, narrowed(old.scopes, key.scopes))
        gate = self.gate
        ended = self.ledger.end(
            lambda _account, peer: bool(peer) and gate.address_refusal(peer) is not None,
            "its address is no longer allowed",
        )
        if ended:
            log.info("{ended} stream(s), session(s) and call(s) from addresses no longer allowed ended", ended=ended)

    def warn_about(self, beyond_loopback: list[str]) -> None:
        """Say loudly when mcpd listens beyond loopback without keys."""
        if self.keyed or not beyond_loopback:
            return
        where = ", ".join(beyond_loopback)
        if self.settings.insecure_no_auth:
            log.warn(
                "!!! INSECURE: listening beyond loopback on {where} with no API keys (--insecure-no-auth): "
                "anyone who can reach it can call every tool !!!",
                where=where,
            )
        else:
            log.warn(
                "Listening beyond loopback on {where} with no API keys: only loopback clients will be "
                "served; configure --api-key-file (or pass --insecure-no-auth on a trusted network)",
                where=where,
            )
