# -*- test-case-name: tests.test_monitoring -*-
"""The operator's routes: ``/health``, ``/ready``, ``/stats``, ``/metrics`` and ``/dashboard``.

Who may read them is the `Gate`'s business (``/health`` and ``/ready`` are open; the others are
open on loopback and need an admin-scoped key beyond it unless ``--public-metrics``); these
handlers only answer. The dashboard is a page and two assets shipped in ``mcpd/web/static``,
served from memory: no CDN, nothing fetched from elsewhere.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred

from mcpd.lifecycle import Lifecycle
from mcpd.observe.health import HealthChecks, overall, size_check, store_check, thread_pool_check
from mcpd.observe.metrics import Metrics
from mcpd.observe.stats import RequestStats, Vitals

if TYPE_CHECKING:
    from klein import Klein
    from twisted.python.threadpool import ThreadPool
    from twisted.web.server import Request

    from mcpd.protocol.engine import Engine
    from mcpd.protocol.session import SessionStore
    from mcpd.runtime import Runtime

_JSON = b"application/json"
# The dashboard's files: name -> content type.
ASSETS = {
    "dashboard.html": b"text/html; charset=utf-8",
    "dashboard.js": b"text/javascript; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
}
# Only what mcpd serves itself: a page that tried a CDN would fail, visibly.
_CSP = b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
MAX_RECENT = 1000


def load_assets() -> dict[str, bytes]:
    """The dashboard's files, read once from the package."""
    static = resources.files("mcpd.web") / "static"
    return {name: (static / name).read_bytes() for name in ASSETS}


@attrs.define
class Monitor:
    """What the operator's routes read: the daemon's runtime, statistics, metrics, checks and
    lifecycle."""

    runtime: Runtime
    stats: RequestStats
    metrics: Metrics
    health: HealthChecks
    lifecycle: Lifecycle
    vitals: Vitals
    assets: dict[str, bytes] = attrs.field(factory=load_assets)

    def route(self, app: Klein) -> None:
        """Add the routes to ``app``."""
        app.route("/health", methods=["GET"])(self.render_health)
        app.route("/ready", methods=["GET"])(self.render_ready)
        app.route("/stats", methods=["GET"])(self.render_stats)
        app.route("/metrics", methods=["GET"])(self.render_metrics)
        app.route("/dashboard", methods=["GET"])(self.render_dashboard)
        app.route("/dashboard/<string:name>", methods=["GET"])(self.render_asset)

    def render_health(self, request: Request) -> Deferred[bytes]:
        """The seed's shape, plus ``checks``; 503 when a required check is down or draining."""
        return self.health.run().addCallback(self._health_body, request)

    def _health_body(self, results: list[Any], request: Request) -> bytes:
        status = "draining" if self.lifecycle.draining else overall(results)
        body = {
            "status": status,
            "version": self.runtime.version,
            "uptime_seconds": round(self.runtime.uptime(), 3),
            "tools_count": len(self.runtime.registry),
            "active_connections": self.vitals.connections(),
            "total_requests": self.stats.total,
            "timestamp": time.time(),
            "ready": self.lifecycle.ready,
            "checks": {result.name: result.to_json() for result in results},
        }
        return _json(request, 503 if status in ("draining", "unhealthy") else 200, body)

    def render_ready(self, request: Request) -> bytes:
        """For load balancers: 200 while serving, 503 while starting or draining."""
        ready = self.lifecycle.ready
        return _json(request, 200 if ready else 503, {"ready": ready, "state": self.lifecycle.state})

    def render_stats(self, request: Request) -> bytes:
        """Totals, breakdowns, latency percentiles and the latest requests (``?recent=N``)."""
        args: dict[bytes, list[bytes]] = request.args or {}
        try:
            recent = int(args.get(b"recent", [b"50"])[0])
        except ValueError:
            recent = 50
        recent = max(0, min(recent, MAX_RECENT))
        return _json(request, 200, self.stats.snapshot(self.vitals, recent))

    def render_metrics(self, request: Request) -> bytes:
        """The Prometheus text exposition."""
        request.setHeader(b"content-type", self.metrics.content_type.encode())
        request.setHeader(b"cache-control", b"no-store")
        return self.metrics.exposition()

    def render_dashboard(self, request: Request) -> bytes:
        return self._asset(request, "dashboard.html")

    def render_asset(self, request: Request, name: str) -> bytes:
        if name not in self.assets:
            request.setResponseCode(404)
            request.setHeader(b"content-type", _JSON)
            return json.dumps({"error": f"Not Found: no dashboard file {name!r}"}).encode()
        return self._asset(request, name)

    def _asset(self, request: Request, name: str) -> bytes:
        request.setHeader(b"content-type", ASSETS[name])
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"content-security-policy", _CSP)
        request.setHeader(b"x-content-type-options", b"nosniff")
        return self.assets[name]


def _json(request: Request, status: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", _JSON)
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode()


def build_monitor(
    runtime: Runtime,
    engine: Engine,
    pool: ThreadPool,
    sessions: Mapping[str, SessionStore],
    lifecycle: Lifecycle,
    reactor: Any,
    stores: Sequence[Any] = (),
) -> Monitor:
    """Statistics, metrics and checks for one daemon, counted in the engine's observer hook.

    The readings that depend on the Site (connections, streams, refusals) are set on
    `Monitor.vitals` once it exists."""
    is_tool = lambda name: runtime.registry.get(name) is not None  # noqa: E731
    stats = RequestStats(is_tool=is_tool)
    checks = [thread_pool_check(pool, reactor, reactor)]
    checks += [size_check(name, store.__len__, "session(s)") for name, store in sessions.items()]
    # The stores behind the packs (mcpd.interfaces.IStore): a required check each, and their series.
    checks += [store_check(store, required=True) for store in stores]
    health = HealthChecks(checks)
    vitals = Vitals(
        uptime=runtime.uptime,
        in_flight=lambda: engine.in_flight,
        pool_queue_depth=lambda: pool._queue.qsize(),
        ready=lambda: lifecycle.ready,
        checks=lambda: health.last,
    )
    metrics = Metrics(stats, vitals, engine.methods, is_tool)
    for store in stores:
        for collector in store.collectors():
            metrics.registry.register(collector)
    engine.observers += [stats.observe, metrics.requests.observe]
    return Monitor(runtime, stats, metrics, health, lifecycle, vitals)
