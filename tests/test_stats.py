"""Tests for `mcpd.observe.stats`."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mcpd.observe.stats import RequestStats, Vitals, percentile
from tests.engine_harness import record


class PercentileTests(SynchronousTestCase):
    def test_nearest_rank(self) -> None:
        values = [float(n) for n in range(1, 101)]
        self.assertEqual(percentile(values, 0.5), 50.0)
        self.assertEqual(percentile(values, 0.99), 99.0)
        self.assertEqual(percentile([], 0.5), 0.0)
        self.assertEqual(percentile([3.0], 0.99), 3.0)


class RequestStatsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.now = 1000.0
        self.stats = RequestStats(recent=3, clock=lambda: self.now, is_tool=lambda name: name in {"echo", "add"})

    def test_totals_and_breakdowns(self) -> None:
        self.stats.observe(record(duration=0.02))
        self.stats.observe(record(tool="add", outcome="tool_error", transport="websocket"))
        self.stats.observe(record(method="tools/list", tool=None))
        self.stats.observe(record(tool="nonsense-from-a-client", outcome="error"))
        snapshot = self.stats.snapshot(Vitals(uptime=lambda: 5.0, connections=lambda: 2))
        self.assertEqual(snapshot["total_requests"], 4)
        self.assertEqual(snapshot["successful_requests"], 2)
        self.assertEqual(snapshot["failed_requests"], 2)
        self.assertEqual(snapshot["success_rate"], 0.5)
        self.assertAlmostEqual(snapshot["avg_response_time"], 0.0125)
        self.assertEqual(snapshot["active_connections"], 2)
        self.assertEqual(snapshot["uptime_seconds"], 5.0)
        self.assertEqual(set(snapshot["tools"]), {"echo", "add", "other"})
        self.assertEqual(snapshot["tools"]["add"], {"requests": 1, "failed": 1, "avg_response_time": 0.01})
        self.assertEqual(snapshot["transports"]["http"]["requests"], 3)
        self.assertEqual(snapshot["transports"]["websocket"]["failed"], 1)

    def test_recent_ring_buffer_newest_first(self) -> None:
        for n in range(5):
            self.now = 1000.0 + n
            self.stats.observe(record(duration=n / 100))
        recent = self.stats.recent(10)
        self.assertEqual([r["time"] for r in recent], [1004.0, 1003.0, 1002.0])
        self.assertEqual(recent[0]["x_request_id"], "r-1")
        self.assertEqual(recent[0]["key"], "alice")
        self.assertEqual(self.stats.recent(0), [])
        self.assertEqual(self.stats.latency()["p50"], 0.03)
        self.assertEqual(self.stats.latency()["window"], 3)

    def test_seed_shape_before_any_request(self) -> None:
        snapshot = self.stats.snapshot(Vitals())
        for key in (
            "uptime_seconds",
            "total_requests",
            "successful_requests",
            "failed_requests",
            "success_rate",
            "avg_response_time",
            "active_connections",
            "recent_requests",
        ):
            self.assertIn(key, snapshot)
        self.assertEqual(snapshot["success_rate"], 1.0)
        self.assertEqual(snapshot["avg_response_time"], 0.0)
