"""Tests for `mcpd.observe.metrics`."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import prometheus_client
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from mcpd.observe.health import CheckResult
from mcpd.observe.metrics import DURATION_BUCKETS, Metrics
from mcpd.observe.stats import RequestStats, Vitals
from tests.engine_harness import record

CREATED = re.compile(rb"(_created\{[^}]*\}) \S+")
SEED = (
    "mcp_uptime_seconds",
    "mcp_requests_total",
    "mcp_requests_successful",
    "mcp_requests_failed",
    "mcp_response_time_avg",
    "mcp_active_connections",
)


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class MetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stats = RequestStats()
        self.vitals = Vitals(
            uptime=lambda: 12.5,
            connections=lambda: 3,
            in_flight=lambda: 1,
            sse_streams=lambda: 2,
            pool_queue_depth=lambda: 4,
            refusals=lambda: {"rate_limited": 5, "auth_failure": 6},
            refused_at_capacity=lambda: 7,
            dropped_slow_readers=lambda: 8,
            checks=lambda: [CheckResult("thread_pool", "ok", 0.002)],
        )
        self.metrics = Metrics(self.stats, self.vitals, {"tools/call", "tools/list"}, lambda name: name == "echo")
        self.observe = [self.stats.observe, self.metrics.requests.observe]

    def feed(self, *records: object) -> None:
        for r in records:
            for observer in self.observe:
                observer(r)  # type: ignore[arg-type]

    def test_seed_series_and_live_gauges(self) -> None:
        self.feed(record(duration=0.002), record(outcome="error", duration=0.004))
        found = samples(self.metrics)
        for name in SEED:
            self.assertIn((name, ()), found, name)
        self.assertEqual(found[("mcp_requests_total", ())], 2)
        self.assertEqual(found[("mcp_requests_failed", ())], 1)
        self.assertAlmostEqual(found[("mcp_response_time_avg", ())], 0.003)
        self.assertEqual(found[("mcp_active_connections", ())], 3)
        self.assertEqual(found[("mcp_requests_in_flight", ())], 1)
        self.assertEqual(found[("mcp_sse_streams_open", ())], 2)
        self.assertEqual(found[("mcp_thread_pool_queue_depth", ())], 4)
        self.assertEqual(found[("mcp_rate_limited_total", ())], 5)
        self.assertEqual(found[("mcp_auth_failures_total", ())], 6)
        self.assertEqual(found[("mcp_connections_refused_capacity_total", ())], 7)
        self.assertEqual(found[("mcp_connections_dropped_slow_reader_total", ())], 8)
        self.assertEqual(found[("mcp_store_latency_seconds", (("store", "thread_pool"),))], 0.002)
        self.assertEqual(found[("mcp_store_up", (("store", "thread_pool"),))], 1.0)

    def test_histogram_by_transport_method_tool(self) -> None:
        self.feed(record(duration=0.002), record(outcome="error", duration=0.004, transport="websocket"))
        found = samples(self.metrics)
        labels = (("method", "tools/call"), ("tool", "echo"), ("transport", "http"))
        self.assertEqual(found[("mcp_request_duration_seconds_count", labels)], 1)
        self.assertEqual(found[("mcp_request_duration_seconds_bucket", tuple(sorted((*labels, ("le", "0.0025")))))], 1)
        ws = (("method", "tools/call"), ("tool", "echo"), ("transport", "websocket"))
        self.assertEqual(found[("mcp_request_errors_total", ws)], 1)

    def test_labels_are_bounded(self) -> None:
        self.feed(record(tool="made-up-1"), record(tool="made-up-2"), record(method="evil/method", tool=None))
        found = samples(self.metrics)
        other = (("method", "tools/call"), ("tool", "other"), ("transport", "http"))
        self.assertEqual(found[("mcp_request_duration_seconds_count", other)], 2)
        method = (("method", "other"), ("tool", ""), ("transport", "http"))
        self.assertEqual(found[("mcp_request_duration_seconds_count", method)], 1)
        # Unknown names are not cached under their own keys.
        self.assertNotIn(("http", "tools/call", "made-up-1"), self.metrics.requests._children)

    def test_children_resolved_once(self) -> None:
        self.feed(record())
        children = dict(self.metrics.requests._children)
        self.feed(record(), record())
        self.assertEqual(self.metrics.requests._children, children)
        self.assertIs(
            self.metrics.requests._children[("http", "tools/call", "echo")], children[("http", "tools/call", "echo")]
        )

    def exposed_alike(self) -> bytes:
        """What /metrics shows of the durations (`DurationHistogram`, counted in plain lists) after
        a set of observations, asserted to be what prometheus_client's own Histogram shows for
        the same ones (its ``_created`` times aside)."""
        registry = CollectorRegistry(auto_describe=False)
        reference = Histogram(
            "mcp_request_duration_seconds",
            "Time the engine took to answer a request, by transport, method and tool.",
            ("transport", "method", "tool"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        ours = CollectorRegistry(auto_describe=False)
        ours.register(self.metrics.requests.duration)  # type: ignore[arg-type]
        durations = (0.0, 0.0001, 0.0005, 0.0007, 0.001, 0.0025, 0.003, 5.0, 12.0, 30.0, 31.0, 1e9)
        for transport in ("http", "websocket"):
            for method, tool in (("tools/call", "echo"), ("tools/list", None)):
                for duration in durations:
                    self.feed(record(method=method, tool=tool, duration=duration, transport=transport))
                    reference.labels(transport, method, "" if tool is None else tool).observe(duration)
        expected, got = (CREATED.sub(rb"\1 T", generate_latest(r)) for r in (registry, ours))
        self.assertEqual(got, expected)
        return got

    def test_duration_exposed_as_prometheus_client_histogram_is(self) -> None:
        got = self.exposed_alike()
        self.assertIn(b"mcp_request_duration_seconds_created{", got)
        self.assertIn(
            b'mcp_request_duration_seconds_bucket{le="+Inf",method="tools/list",tool="",transport="websocket"} 12.0',
            got,
        )

    def test_created_series_switched_as_prometheus_client_switches_them(self) -> None:
        """``disable_created_metrics()`` and ``enable_created_metrics()`` at run time switch the
        ``_created`` series of the durations as they switch Histogram's; the environment variable
        set after prometheus_client was imported does not, as it does not for Histogram. (Only
        the variable was read, at every scrape.)"""
        self.patch(prometheus_client.metrics, "_use_created", prometheus_client.metrics._use_created)
        prometheus_client.disable_created_metrics()
        self.assertNotIn(b"_created", self.exposed_alike())
        prometheus_client.enable_created_metrics()
        self.setUp()
        self.assertIn(b"_created", self.exposed_alike())
        self.patch(os, "environ", os.environ.copy())  # restored as it was after the test
        os.environ["PROMETHEUS_DISABLE_CREATED_SERIES"] = "true"
        self.setUp()
        self.assertIn(b"_created", self.exposed_alike())

    def test_created_series_off_from_the_environment_at_start(self) -> None:
        """PROMETHEUS_DISABLE_CREATED_SERIES set when the process starts: no ``_created`` series,
        in a fresh interpreter, for the durations as for Histogram."""
        script = (
            "from prometheus_client import CollectorRegistry, Histogram, generate_latest\n"
            "from mcpd.observe.metrics import DURATION_BUCKETS, DurationHistogram\n"
            "registry, ours = CollectorRegistry(auto_describe=False), CollectorRegistry(auto_describe=False)\n"
            "reference = Histogram('d', 'Durations.', ('tool',), buckets=DURATION_BUCKETS, registry=registry)\n"
            "durations = DurationHistogram('d', 'Durations.', ('tool',), DURATION_BUCKETS)\n"
            "ours.register(durations)\n"
            "for seconds in (0.0, 0.0007, 5.0, 1e9):\n"
            "    reference.labels('echo').observe(seconds)\n"
            "    durations.observe(durations.labels('echo'), seconds)\n"
            "import sys\n"
            "sys.stdout.buffer.write(generate_latest(registry) + bytes(1) + generate_latest(ours))\n"
        )
        for value, created in (("true", False), ("1", False), ("False", True)):
            environ = {**os.environ, "PROMETHEUS_DISABLE_CREATED_SERIES": value}
            ran = subprocess.run(
                [sys.executable, "-c", script], env=environ, capture_output=True, timeout=60, check=True
            )
            expected, got = (CREATED.sub(rb"\1 T", text) for text in ran.stdout.split(bytes(1)))
            self.assertEqual(got, expected)
            self.assertEqual(b"d_created{" in got, created, value)
            self.assertIn(b'd_bucket{le="+Inf",tool="echo"} 4.0', got)
