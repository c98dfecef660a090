# -*- test-case-name: tests.test_streamable -*-
"""The Site: one `Root` serving the routes of `mcpd.security.routes` (the MCP endpoint at ``/`` and
``/mcp``, the other transports, the monitoring routes in a Klein app)."""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

from klein import Klein
from twisted.python.failure import Failure
from twisted.web import resource
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from werkzeug.exceptions import HTTPException

from mcpd.security.channel import MCPChannel, MCPRequest
from mcpd.security.policy import ORIGIN_CHECKED
from mcpd.security.responses import json_error
from mcpd.security.routes import ROUTE_ATTRIBUTE, UNKNOWN, Route, decide_route, route_problem

if TYPE_CHECKING:
    from twisted.web import http

    from mcpd.runtime import Runtime
    from mcpd.web.monitoring import Monitor

# The attributes twisted.web sets on every request as it makes it (and mcpd's policy layer on
# most), kept in slots by `lean_request_class`. The others have class defaults (``code``,
# ``chunked``, ``startedWriting``…) and reach the instance dict only when set: too few for it to
# outgrow its class's shared keys.
_REQUEST_SLOTS = (
    "_adapterCache",
    "_parsePOSTFormSubmission",
    "channel",
    "client",
    "cookies",
    "host",
    "notifications",
    "queued",
    "received_cookies",
    "requestHeaders",
    "responseHeaders",
    "sitepath",
    "transport",
    # Read with a default where they may be unset.
    "_mcpd_identity",  # mcpd.security.identity: a keyed request's identity
    ROUTE_ATTRIBUTE,
    ORIGIN_CHECKED,
)


def lean_request_class(base: type[Request]) -> type[Request]:
    """``base`` with the attributes every request sets in slots rather than its instance dict.

    A twisted.web request holds ~30 attributes: past the 30 keys an instance dict shares with
    its class (which the first requests of a process decide: a tools/call sets others than a
    GET stream), the dict becomes a table of its own, 1.6 KiB of every idle stream (issue 15).
    Slots take 8 bytes each, and cost nothing more to set."""
    inherited = {name for klass in base.__mro__ for name in getattr(klass, "__slots__", ())}
    slots = tuple(name for name in _REQUEST_SLOTS if name not in inherited)
    return type(base.__name__, (base,), {"__slots__": slots, "__doc__": base.__doc__, "__module__": base.__module__})


# Bodies up to this size are read into memory, larger ones (and those of unknown length) into a
# temporary file: twisted.web's own rule (`twisted.web.http.Request.gotLength`).
_IN_MEMORY_BODY = 100_000


class MCPSite(Site):
    """A Site of `MCPChannel` connections (HTTP/1.1 only: the policy layer reads its requests'
    heads), without the per-request access-log line (structured request logs replace it)."""

    protocol = MCPChannel  # type: ignore[assignment]
    noisy = False
    displayTracebacks = False
    # Seconds between keep-alive comments on open SSE streams (mcpd.transport.sse.start_sse).
    sse_keepalive: float | None = None
    # The responses currently carrying an SSE stream (make_site gives each Site its own set).
    sse_streams: set[Request] | None = None

    def __init__(
        self,
        resource: Resource,
        *,
        sse_keepalive: float | None = None,
        request_factory: type[Request] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, requestFactory=lean_request_class(request_factory or MCPRequest), **kwargs)
        self.sse_keepalive = sse_keepalive
        self.sse_streams = set()

    def log(self, request: http.Request) -> None:
        pass

    def getContentFile(self, length: int | None) -> IO[bytes]:
        """Where a request's body is kept (as twisted.web keeps it: memory for small bodies).
        Defined here because twisted.web looks for it on the Site with every request, and a
        miss costs an AttributeError each time."""
        if length is not None and length < _IN_MEMORY_BODY:
            return io.BytesIO()
        return tempfile.TemporaryFile()

    def getResourceFor(self, request: Any) -> Resource:
        """As twisted.web's (26.10), copying ``prepath`` (a list: `MCPRequest.process`) by
        slicing rather than `copy.copy`."""
        request.site = self
        request.sitepath = request.prepath[:]
        return resource.getChildForRequest(self.resource, request)  # type: ignore[no-any-return]

    def acceptableProtocols(self) -> list[bytes]:
        """ALPN: HTTP/1.1 only, even where Twisted could speak h2."""
        return [b"http/1.1"]


class Root(Resource):
    """Serves each request's route (`mcpd.security.routes`, decided once, by the policy layer when
    there is one): the MCP endpoint (a plain Resource: Klein's router costs a third of the
    throughput on the hot path), the other transports (``sse``, ``messages``, ``ws``) and the
    Klein app for the monitoring routes. A path or method no route takes is answered with a
    JSON error, a plain OPTIONS with the route's ``Allow``."""

    isLeaf = True

    def __init__(self, mcp: Resource, app: Resource, transports: Mapping[bytes, Resource] | None = None) -> None:
        super().__init__()
        self.handlers = {"mcp": mcp, "monitor": app}
        self.handlers.update((name.decode(), resource) for name, resource in (transports or {}).items())

    def render(self, request: Request) -> bytes | int:
        assert request.uri is not None and request.method is not None
        route = decide_route(request, request.uri)
        handler = self.handlers.get(route.handler)
        if handler is None or request.method not in route.methods:
            return self._unserved(request, route, handler is None)
        if route.handler == "monitor":
            # Klein routes by path: it sees the route's own path, whatever form the target had.
            request.prepath, request.postpath = [], route.path[1:].split(b"/")
        return handler.render(request)

    def _unserved(self, request: Request, route: Route, missing: bool) -> bytes:
        assert request.uri is not None and request.method is not None
        problem = route_problem(UNKNOWN if missing else route, request.method, request.uri)
        if problem is None:  # OPTIONS, not a CORS preflight (the policy layer answers those)
            request.setResponseCode(204)
            request.setHeader(b"allow", route.allow)
            return b""  # and no Content-Length (RFC 9110 §8.6): `MCPRequest.write` drops it
        status, body, headers = problem
        for name, value in headers:
            request.setHeader(name, value)
        return json_error(request, status, body["error"])


def make_app(runtime: Runtime, monitor: Monitor | None = None) -> Klein:
    """The Klein application for the routes that are not MCP itself."""
    app = Klein()

    @app.handle_errors(HTTPException)
    def routing_error(request: Any, failure: Failure) -> bytes:
        # Root hands Klein only the paths and methods of its routes; should they ever differ,
        # the answer is still JSON, not werkzeug's HTML page.
        error = failure.value
        for name, value in getattr(error, "get_headers", lambda: [])():
            if name.lower() == "allow":
                request.setHeader(b"allow", value.encode("latin-1"))
        return json_error(request, error.code or 500, f"{error.code} {error.name}")

    if monitor is not None:
        # /health, /ready, /stats, /metrics and /dashboard (mcpd.web.monitoring).
        monitor.route(app)
        return app

    @app.route("/health", methods=["GET"])
    def health(request: Request) -> bytes:
        request.setHeader("content-type", "application/json")
        body: dict[str, Any] = {
            "status": "healthy",
            "version": runtime.version,
            "uptime_seconds": round(runtime.uptime(), 3),
            "tools_count": len(runtime.registry),
            "timestamp": time.time(),
        }
        return json.dumps(body).encode()

    return app


def make_site(
    mcp: Resource,
    runtime: Runtime,
    transports: Mapping[bytes, Resource] | None = None,
    sse_keepalive: float | None = None,
    monitor: Monitor | None = None,
    request_factory: type[Request] | None = None,
) -> MCPSite:
    """The Site serving MCP (Streamable HTTP, and the other HTTP transports by first path
    segment) and the auxiliary routes."""
    # MCP bodies are JSON, never HTML forms: twisted.web's form sniffing (an email-package
    # Content-Type parse per POST) would cost a quarter of a tools/call.
    return MCPSite(
        Root(mcp, make_app(runtime, monitor).resource(), transports),
        sse_keepalive=sse_keepalive,
        request_factory=request_factory,
        parsePOSTFormSubmission=False,
    )
