# -*- test-case-name: tests.test_metrics -*-
"""Prometheus metrics through prometheus-client, on a registry of the daemon's own.

Two kinds of series:

- Counted per request, in the engine's observer hook (`RequestMetrics.observe`): the request
  duration histogram by transport, method and tool, and the errors among them. The labelled
  children are resolved once per (transport, method, tool) and reused, so a request costs one
  dict lookup and two list increments (`DurationHistogram`). Labels are bounded: a method the
  engine does not serve and a tool the registry does not hold are counted as ``other``, so a
  client cannot grow the series.
- Read at scrape time (`VitalsCollector`): the seed's series (``mcp_uptime_seconds``,
  ``mcp_requests_total`` …), requests in flight, open connections and streams, thread-pool queue
  depth, refusals and the store checks; nothing is kept up to date between scrapes.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from mcpd.observe.stats import RequestStats, Vitals
    from mcpd.protocol.vocabulary import CallRecord

# Seconds: a trivial tools/call takes ~0.1 ms in the server, a tool in the pool far longer.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
OTHER = "other"
LABELS = ("transport", "method", "tool")


class DurationHistogram:
    """A labelled histogram exposed as prometheus_client's ``Histogram`` is (``_bucket`` per
    bound and ``+Inf``, ``_count``, ``_sum``, ``_created``), counted on the reactor thread alone:
    a child is a plain list, and an observation a bisect and two increments. (``Histogram``'s
    ``observe`` takes a lock for the sum and for the bucket, a tenth of a modern tools/call.)"""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(buckets)
        self._les = [floatToGoString(bound) for bound in (*self.bounds, float("inf"))]
        # label values -> [count per bucket (the last +Inf)..., sum]; and when each was made
        self._children: dict[tuple[str, ...], list[float]] = {}
        self._created: dict[tuple[str, ...], float] = {}

    def labels(self, *values: str) -> list[float]:
        """The child of ``values``: hand it to `observe`."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = [0.0] * (len(self.bounds) + 2)
            self._created[values] = time.time()
        return child

    def observe(self, child: list[float], seconds: float) -> None:
        # A bound is an upper bound (le): the first bound at or above ``seconds`` counts it.
        child[bisect.bisect_left(self.bounds, seconds)] += 1.0
        child[-1] += seconds

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        # Histogram's own switch: PROMETHEUS_DISABLE_CREATED_SERIES as the environment had it
        # when prometheus_client was imported, then disable/enable_created_metrics().
        created = prometheus_metrics._use_created
        for values, child in list(self._children.items()):
            counts, total = child[:-1], 0.0
            buckets = []
            for le, count in zip(self._les, counts, strict=True):
                total += count
                buckets.append((le, total))
            family.add_metric(values, buckets, child[-1])
            if created:
                labels = dict(zip(self.labelnames, values, strict=True))
                family.samples.append(Sample(self.name + "_created", labels, self._created[values]))
        yield family


class RequestMetrics:
    """The per-request series, fed by `Engine.observers`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        methods: Collection[str] = (),
        is_tool: Callable[[str], bool] = lambda name: True,
    ) -> None:
        self.methods = frozenset(methods)
        self.is_tool = is_tool
        self.duration = DurationHistogram(
            "mcp_request_duration_seconds",
            "Time the engine took to answer a request, by transport, method and tool.",
            LABELS,
            DURATION_BUCKETS,
        )
        registry.register(self.duration)  # type: ignore[arg-type]
        self.errors = Counter(
            "mcp_request_errors",
            "Requests that did not end well (error, tool_error, denied, cancelled), by transport, method and tool.",
            LABELS,
            registry=registry,
        )
        # (transport, method, tool) -> (histogram child, errors child); only bounded keys.
        self._children: dict[tuple[str, str, str | None], tuple[Any, Any]] = {}

    def observe(self, call: CallRecord) -> None:
        """An `Engine` observer."""
        key = (call.caller.transport, call.method, call.tool)
        children = self._children.get(key)
        if children is None:
            children = self._resolve(key)
        self.duration.observe(children[0], call.duration)
        if call.outcome != "ok":
            children[1].inc()

    def _resolve(self, key: tuple[str, str, str | None]) -> tuple[Any, Any]:
        transport, method, tool = key
        bounded = (
            transport or "unknown",
            method if method in self.methods else OTHER,
            "" if tool is None else (tool if self.is_tool(tool) else OTHER),
        )
        children = self._children.get(bounded)  # type: ignore[arg-type]
        if children is None:
            children = (self.duration.labels(*bounded), self.errors.labels(*bounded))
            self._children[bounded] = children  # type: ignore[index]
        if bounded == (transport, method, "" if tool is None else tool):
            self._children[key] = children  # a known key: cached under its own name too
        return children


class VitalsCollector:
    """A custom collector: the series computed when Prometheus scrapes."""

    def __init__(self, stats: RequestStats, vitals: Vitals) -> None:
        self.stats = stats
        self.vitals = vitals

    def describe(self) -> list[Metric]:
        return []  # no describe-time collection (the values are live)

    def collect(self) -> Iterator[Metric]:
        stats, vitals = self.stats, self.vitals
        # The seed deployment's series, with their names and meaning kept.
        yield _gauge("mcp_uptime_seconds", "Seconds since mcpd started.", vitals.uptime())
        yield _gauge("mcp_requests_total", "Requests served since start (seed series).", stats.total)
        yield _gauge("mcp_requests_successful", "Requests that ended well (seed series).", stats.successful)
        yield _gauge("mcp_requests_failed", "Requests that did not end well (seed series).", stats.failed)
        yield _gauge(
            "mcp_response_time_avg", "Mean time to answer a request, in seconds (seed series).", stats.average()
        )
        yield _gauge("mcp_active_connections", "Open client connections (seed series).", vitals.connections())
        yield _gauge("mcp_requests_in_flight", "Requests being served right now.", vitals.in_flight())
        yield _gauge("mcp_sse_streams_open", "Open SSE response streams (all HTTP transports).", vitals.sse_streams())
        yield _gauge("mcp_websocket_connections_open", "Open WebSocket connections.", vitals.websockets())
        yield _gauge(
            "mcp_thread_pool_queue_depth", "Blocking tool calls waiting for a thread.", vitals.pool_queue_depth()
        )
        yield _gauge("mcp_ready", "1 while mcpd serves and is not draining.", 1.0 if vitals.ready() else 0.0)
        refusals = vitals.refusals()
        yield _counter(
            "mcp_rate_limited", "Requests refused for exceeding the rate limit.", refusals.get("rate_limited", 0)
        )
        yield _counter(
            "mcp_auth_failures", "Requests refused for a missing or invalid API key.", refusals.get("auth_failure", 0)
        )
        refused = CounterMetricFamily("mcp_http_refusals", "HTTP requests refused, by reason.", labels=["reason"])
        for reason, count in sorted(refusals.items()):
            refused.add_metric([reason], count)
        yield refused
        yield _counter(
            "mcp_connections_refused_capacity",
            "Connections answered 503 because mcpd was at --max-connections or --max-connections-per-ip.",
            vitals.refused_at_capacity(),
        )
        yield _counter(
            "mcp_connections_dropped_slow_reader",
            "Connections dropped because their client left more than --max-write-buffer bytes unread.",
            vitals.dropped_slow_readers(),
        )
        latency = GaugeMetricFamily(
            "mcp_store_latency_seconds", "Latency of the last check of each backing store.", labels=["store"]
        )
        up = GaugeMetricFamily(
            "mcp_store_up", "1 if the last check of a store was ok, 0.5 degraded, 0 down.", labels=["store"]
        )
        for check in vitals.checks():
            latency.add_metric([check.name], check.latency)
            up.add_metric([check.name], {"ok": 1.0, "degraded": 0.5}.get(check.status, 0.0))
        yield latency
        yield up


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


class Metrics:
    """Every series of one daemon, and their text exposition for ``GET /metrics``."""

    # Text format 0.0.4: what generate_latest writes, and what every Prometheus release reads.
    content_type = CONTENT_TYPE_PLAIN_0_0_4

    def __init__(
        self,
        stats: RequestStats,
        vitals: Vitals,
        methods: Collection[str] = (),
        is_tool: Callable[[str], bool] = lambda name: True,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = RequestMetrics(self.registry, methods, is_tool)
        self.registry.register(VitalsCollector(stats, vitals))  # type: ignore[arg-type]

    def exposition(self) -> bytes:
        """The Prometheus text format of every series."""
        return generate_latest(self.registry)
