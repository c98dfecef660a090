# -*- test-case-name: tests.test_routes -*-
"""The routes of the Site, decided once per request from its raw target.

`route_of` maps a request target to exactly one `Route` or to `UNKNOWN`; the policy layer
(`mcpd.security.gate`) decides on that route and `mcpd.web.site.Root` serves that same route. Paths
are matched byte for byte against the table: nothing is decoded or normalised, so a target that
is not exactly a route's path (``//health``, ``/./health``, ``/mcp/``, ``/%68ealth``,
``/health;x``) names no route and is refused, never served by something else.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs


class Access(enum.Enum):
    """Who may reach a route (the `Gate` applies it)."""

    # Every client that may connect at all; answered while draining (load balancers read them).
    PROBE = "probe"
    # Loopback clients, everyone with --public-metrics, else an admin-scoped key of tenant
    # ``default`` (the pages show every tenant's activity).
    ADMIN = "admin"
    # MCP itself: an API key when keys are configured.
    MCP = "mcp"
    # No route: refused.
    NONE = "none"


@attrs.frozen
class Route:
    """One path of the Site: who may reach it, which methods it takes and what serves it."""

    name: str
    path: bytes
    access: Access
    methods: frozenset[bytes]
    # The key of the resource that serves it (`mcpd.web.site.Root`).
    handler: str

    @property
    def allow(self) -> bytes:
        """The ``Allow`` header for this route (RFC 9110 §10.2.1)."""
        return b", ".join(sorted(self.methods | {b"OPTIONS"}))


_MONITOR = frozenset({b"GET", b"HEAD"})
# The dashboard's files, served under /dashboard/ (their content types: mcpd.web.monitoring).
DASHBOARD_FILES = ("dashboard.html", "dashboard.js", "dashboard.css")

MCP = Route("mcp", b"/mcp", Access.MCP, frozenset({b"GET", b"POST", b"DELETE"}), "mcp")
SSE = Route("sse", b"/sse", Access.MCP, frozenset({b"GET"}), "sse")
MESSAGES = Route("messages", b"/messages/", Access.MCP, frozenset({b"POST"}), "messages")
WEBSOCKET = Route("ws", b"/ws", Access.MCP, frozenset({b"GET"}), "ws")
HEALTH = Route("health", b"/health", Access.PROBE, _MONITOR, "monitor")
READY = Route("ready", b"/ready", Access.PROBE, _MONITOR, "monitor")
STATS = Route("stats", b"/stats", Access.ADMIN, _MONITOR, "monitor")
METRICS = Route("metrics", b"/metrics", Access.ADMIN, _MONITOR, "monitor")
DASHBOARD = Route("dashboard", b"/dashboard", Access.ADMIN, _MONITOR, "monitor")
UNKNOWN = Route("unknown", b"", Access.NONE, frozenset(), "")

ROUTES: dict[bytes, Route] = {
    route.path: route
    for route in (
        MCP,
        attrs.evolve(MCP, path=b"/"),  # the seed's endpoint
        SSE,
        MESSAGES,
        WEBSOCKET,
        HEALTH,
        READY,
        STATS,
        METRICS,
        DASHBOARD,
        *(attrs.evolve(DASHBOARD, name=name, path=b"/dashboard/" + name.encode()) for name in DASHBOARD_FILES),
    )
}
# The methods some route implements (RFC 9110 §9.1: others are 501 Not Implemented).
IMPLEMENTED = frozenset({b"GET", b"HEAD", b"POST", b"DELETE", b"OPTIONS"})
# The attribute of a twisted.web request that holds its route once decided.
ROUTE_ATTRIBUTE = "mcpd_route"
_SHOWN = 80


def route_of(target: bytes) -> Route:
    """The route a request target names, or `UNKNOWN`.

    An absolute-form target (``http://host/mcp``, RFC 9112 §3.2.2) names the route of its path;
    that its authority matches ``Host`` is checked with the rest of the head
    (`mcpd.security.head.head_problem`).
    """
    route = ROUTES.get(target.partition(b"?")[0])
    if route is not None:
        return route
    authority, path = split_target(target)
    return UNKNOWN if authority is None else ROUTES.get(path, UNKNOWN)


def decide_route(request: Any, target: bytes) -> Route:
    """The route of a twisted.web ``request`` whose target is ``target``: decided the first time
    it is asked for (by the policy layer), then kept on the request for whatever serves it."""
    route: Route | None = getattr(request, ROUTE_ATTRIBUTE, None)
    if route is None:
        route = route_of(target)
        setattr(request, ROUTE_ATTRIBUTE, route)
    return route


def split_target(target: bytes) -> tuple[bytes | None, bytes]:
    """(authority, path) of a request target: the authority of an absolute-form ``http(s)://``
    target (its path ``/`` when empty), None for any other form."""
    path = target.partition(b"?")[0]
    scheme, separator, rest = path.partition(b"://")
    if not separator or scheme.lower() not in (b"http", b"https"):
        return None, path
    authority, slash, path = rest.partition(b"/")
    return authority, slash + path or b"/"


def route_problem(
    route: Route, method: bytes, target: bytes
) -> tuple[int, dict[str, str], tuple[tuple[str, str], ...]] | None:
    """Why a request for ``target`` (whose route is ``route``) with ``method`` cannot be served,
    as (status, JSON body, headers), or None. OPTIONS is answered on every route (a CORS
    preflight, else ``Allow``)."""
    if method not in IMPLEMENTED:
        # RFC 9110 §15.6.2: a method the server does not recognise or implement.
        shown = method[:_SHOWN].decode("latin-1")
        return 501, {"error": f"Not Implemented: mcpd does not implement the {shown} method"}, ()
    if route is UNKNOWN:
        path = target.partition(b"?")[0][:_SHOWN].decode("latin-1")
        why = f"Not Found: {path!r} is not a path of this server (paths are matched exactly; MCP is at /mcp)"
        return 404, {"error": why}, ()
    if method != b"OPTIONS" and method not in route.methods:
        allow = route.allow.decode()
        return 405, {"error": f"Method Not Allowed: {route.path.decode()} takes {allow}"}, (("Allow", allow),)
    return None
