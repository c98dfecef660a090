# -*- test-case-name: tests.test_streamable -*-
"""HTTP policies that wrap every MCP transport resource (one place, not one per transport)."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from mcpd.security.head import HOST, ORIGIN, header_text
from mcpd.security.responses import json_error

log = Logger(namespace="mcpd.policy")

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@functools.lru_cache(maxsize=1024)
def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 possibly in brackets) is this machine."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    # A dual-stack listener sees IPv4 loopback peers as ::ffff:127.0.0.1, which Python before
    # 3.13 does not call loopback.
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def beyond_loopback(endpoint: str) -> bool:
    """Whether a Twisted server endpoint string listens beyond this machine (no ``interface=``
    means every interface)."""
    match = re.search(r"interface=((?:\\.|[^:])*)", endpoint)
    return match is None or not is_loopback(match.group(1).replace("\\", ""))


def _host_of(authority: str) -> str:
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else authority
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


@functools.lru_cache(maxsize=1024)
def _loopback_host(host: str) -> bool:
    """Whether a ``Host`` header's value names this machine (one look-up per request)."""
    return is_loopback(_host_of(host))


# mcpd's own attribute on Twisted's HTTPChannel: whether it was accepted on a loopback address.
_LOOPBACK = "_mcpd_loopback"


def _arrived_on_loopback(request: Request) -> bool:
    """Whether the connection carrying ``request`` was accepted on a loopback address
    (remembered on the connection: a getsockname per request shows in profiles)."""
    channel = request.channel
    local = getattr(channel, _LOOPBACK, None)
    if local is None:
        local = is_loopback(getattr(request.getHost(), "host", ""))
        if channel is not None:
            setattr(channel, _LOOPBACK, local)
    return local


# Set on a request whose Origin and Host the policy layer has checked.
ORIGIN_CHECKED = "mcpd_origin_checked"


def origin_problem(request: Request, allowed_origins: frozenset[str], origin: str | None = "") -> str | None:
    """Why ``request`` must be refused as cross-site (see `OriginGuard`), or None if it may pass.

    Shared by `OriginGuard` and the policy layer (`mcpd.security.gate`), which applies it to every
    route with the ``--cors-origin`` list as ``allowed_origins``.
    """
    if origin == "":  # not looked up by the caller yet
        origin = header_text(request, ORIGIN)
    local = _arrived_on_loopback(request)
    host = header_text(request, HOST) or ""
    if local and host and not _loopback_host(host):
        return f"Host {host!r} is not a name of this loopback server"
    if origin is not None and not origin_allowed(origin, host, local, allowed_origins):
        return f"Origin {origin!r} is not allowed"
    return None


def origin_allowed(origin: str, host: str, local: bool, allowed_origins: frozenset[str]) -> bool:
    """Whether a browser page from ``origin`` may call this server (asked as ``host``)."""
    origin = origin.rstrip("/")
    if "*" in allowed_origins or origin in allowed_origins:
        return True
    parts = urlsplit(origin)
    if parts.netloc and parts.netloc == host:
        return True
    return local and is_loopback(parts.hostname or "")


class OriginGuard(Resource):
    """Refuses cross-site browser requests: DNS-rebinding protection.

    2025-11-25 transports §Security Warning: servers MUST validate Origin and answer 403 when it
    is not allowed. Allowed: no Origin at all (not a browser), an Origin listed in
    ``allowed_origins``, the same origin as the Host asked for, or a loopback origin when the
    request arrived on a loopback address. A request arriving on loopback must also name a
    loopback Host, so a rebinding name cannot reach a local server.
    """

    isLeaf = True

    def __init__(self, wrapped: Resource, allowed_origins: Iterable[str] = ()) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.allowed_origins = frozenset(origin.rstrip("/") for origin in allowed_origins)

    def render(self, request: Request) -> bytes | int:
        if getattr(request, ORIGIN_CHECKED, False):
            # The policy layer (mcpd.security.gate) already checked it, against --cors-origin.
            return self.wrapped.render(request)
        why = origin_problem(request, self.allowed_origins)
        if why is not None:
            return self._forbidden(request, why)
        return self.wrapped.render(request)

    def _forbidden(self, request: Request, why: str) -> bytes:
        log.info("Refused {method} from {peer}: {why}", method=request.method, peer=request.getClientAddress(), why=why)
        return json_error(request, 403, f"Forbidden: {why}")
