"""Tests for `mcpd.web.monitoring`: the operator's routes, in memory through StubTreq."""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from mcpd.config import Settings
from mcpd.lifecycle import DRAINING, SERVING, Lifecycle
from mcpd.observe.health import DOWN, Check, CheckResult, HealthChecks, size_check
from mcpd.observe.metrics import Metrics
from mcpd.observe.stats import RequestStats, Vitals
from mcpd.runtime import Runtime
from mcpd.tools.pack import ToolRegistry
from mcpd.web.monitoring import Monitor
from tests.engine_harness import record


class MonitoringTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.lifecycle = Lifecycle()
        self.lifecycle.state = SERVING
        runtime = Runtime(Settings(), ToolRegistry([]))
        self.stats = RequestStats()
        vitals = Vitals(uptime=runtime.uptime, connections=lambda: 4, ready=lambda: self.lifecycle.ready)
        self.checks = [size_check("sessions", lambda: 0, "session(s)")]
        self.monitor = Monitor(
            runtime, self.stats, Metrics(self.stats, vitals), HealthChecks(self.checks), self.lifecycle, vitals
        )
        app = Klein()
        self.monitor.route(app)
        self.treq = StubTreq(app.resource())

    def get(self, path: str) -> tuple[int, Any, bytes]:
        response = self.successResultOf(self.treq.get(f"http://127.0.0.1{path}"))
        return response.code, response.headers, self.successResultOf(self.treq.content(response))

    def test_health_seed_shape_and_checks(self) -> None:
        self.stats.observe(record())
        code, headers, body = self.get("/health")
        self.assertEqual(code, 200)
        data = json.loads(body)
        for key in (
            "status",
            "version",
            "uptime_seconds",
            "tools_count",
            "active_connections",
            "total_requests",
            "timestamp",
        ):
            self.assertIn(key, data)
        self.assertEqual((data["status"], data["total_requests"], data["active_connections"]), ("healthy", 1, 4))
        self.assertEqual(data["checks"]["sessions"]["status"], "ok")
        self.assertIn("latency_ms", data["checks"]["sessions"])

    def test_health_503_when_required_store_down_or_draining(self) -> None:
        self.checks.append(Check("database", lambda: CheckResult("database", DOWN, 0.1, detail="refused")))
        self.monitor.health.checks = self.checks
        code, _, body = self.get("/health")
        self.assertEqual((code, json.loads(body)["status"]), (503, "unhealthy"))
        self.checks.pop()
        self.lifecycle.state = DRAINING
        code, _, body = self.get("/health")
        self.assertEqual((code, json.loads(body)["status"]), (503, "draining"))

    def test_ready(self) -> None:
        self.assertEqual(self.get("/ready")[:1], (200,))
        self.lifecycle.state = DRAINING
        code, _, body = self.get("/ready")
        self.assertEqual((code, json.loads(body)), (503, {"ready": False, "state": "draining"}))

    def test_stats(self) -> None:
        for _ in range(3):
            self.stats.observe(record())
        code, headers, body = self.get("/stats?recent=2")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        data = json.loads(body)
        self.assertEqual(len(data["recent_requests"]), 2)
        self.assertEqual(data["tools"]["echo"]["requests"], 3)
        self.assertEqual(len(json.loads(self.get("/stats?recent=nonsense")[2])["recent_requests"]), 3)

    def test_metrics(self) -> None:
        code, headers, body = self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers.getRawHeaders("content-type")[0].startswith("text/plain; version=0.0.4"))
        self.assertIn(b"mcp_uptime_seconds ", body)

    def test_dashboard_and_assets(self) -> None:
        code, headers, body = self.get("/dashboard")
        self.assertEqual(code, 200)
        self.assertIn(b'src="dashboard/dashboard.js"', body)
        self.assertIn("default-src 'self'", headers.getRawHeaders("content-security-policy")[0])
        # Self-contained: nothing from another origin.
        for name in ("dashboard.html", "dashboard.js", "dashboard.css"):
            self.assertNotIn(b"http://", self.monitor.assets[name])
            self.assertNotIn(b"https://", self.monitor.assets[name])
        code, headers, _ = self.get("/dashboard/dashboard.js")
        self.assertEqual((code, headers.getRawHeaders("content-type")[0]), (200, "text/javascript; charset=utf-8"))
        self.assertEqual(self.get("/dashboard/secrets.txt")[0], 404)
