# -*- test-case-name: tests.test_streamable -*-
"""The resource tree: the MCP endpoint at ``/`` and ``/mcp``, Klein routes for the rest."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

if TYPE_CHECKING:
    from twisted.web import http

    from mcpd.runtime import Runtime
    from mcpd.web.monitoring import Monitor


class MCPSite(Site):
    """A Site without the per-request access-log line (structured request logs replace it)."""

    noisy = False
    displayTracebacks = False
    # Seconds between keep-alive comments on open SSE streams (mcpd.transport.sse.start_sse).
    sse_keepalive: float | None = None
    # The responses currently carrying an SSE stream (make_site gives each Site its own set).
    sse_streams: set[Request] | None = None

    def log(self, request: http.Request) -> None:
        pass


class Root(Resource):
    """``/`` and ``/mcp`` go to the MCP endpoint (a plain Resource: Klein's router costs a third
    of the throughput on the hot path); the other transports (``sse``, ``messages``, ``ws``) to
    their resources; every other path goes to the Klein app."""

    def __init__(self, mcp: Resource, app: Resource, transports: Mapping[bytes, Resource] | None = None) -> None:
        super().__init__()
        self.mcp = mcp
        self.app = app
        self.transports = dict(transports or {})

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path in (b"mcp", b""):
            return self.mcp
        transport = self.transports.get(path)
        if transport is not None:
            return transport
        # Hand Klein the whole path back (traversal runs after Request.process has set both).
        assert request.postpath is not None and request.prepath is not None
        request.postpath.insert(0, request.prepath.pop())
        return self.app

    def render(self, request: Request) -> bytes | int:
        return self.mcp.render(request)


def make_app(runtime: Runtime, monitor: Monitor | None = None) -> Klein:
    """The Klein application for the routes that are not MCP itself."""
    app = Klein()
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
) -> MCPSite:
    """The Site serving MCP (Streamable HTTP, and the other HTTP transports by first path
    segment) and the auxiliary routes."""
    # MCP bodies are JSON, never HTML forms: twisted.web's form sniffing (an email-package
    # Content-Type parse per POST) would cost a quarter of a tools/call.
    site = MCPSite(Root(mcp, make_app(runtime, monitor).resource(), transports), parsePOSTFormSubmission=False)
    site.sse_keepalive = sse_keepalive
    site.sse_streams = set()
    return site
