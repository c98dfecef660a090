# -*- test-case-name: tests.test_stats -*-
"""Request statistics for ``GET /stats`` and the dashboard, counted in the engine's observer hook.

`RequestStats` keeps running totals, per-tool and per-transport breakdowns and a bounded ring
buffer of the latest requests (the `CallRecord` itself, made into a dict only when read), from
which /stats takes the recent requests and the latency percentiles. `Vitals` is what the
daemon knows about itself right now (connections, streams, readiness): read, never stored.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from mcpd.observe.health import CheckResult
    from mcpd.protocol.vocabulary import CallRecord

OTHER = "other"
# Distinct tool names kept in the breakdown; more (a registry that grows at run time) fold into "other".
_MAX_TOOLS = 1000


def _zero() -> float:
    return 0


@attrs.define
class Vitals:
    """Live readings of the running daemon, each a callable read on demand."""

    uptime: Callable[[], float] = _zero
    connections: Callable[[], int] = _zero  # type: ignore[assignment]
    in_flight: Callable[[], int] = _zero  # type: ignore[assignment]
    sse_streams: Callable[[], int] = _zero  # type: ignore[assignment]
    websockets: Callable[[], int] = _zero  # type: ignore[assignment]
    pool_queue_depth: Callable[[], int] = _zero  # type: ignore[assignment]
    ready: Callable[[], bool] = lambda: True
    refusals: Callable[[], Mapping[str, int]] = dict
    refused_at_capacity: Callable[[], int] = _zero  # type: ignore[assignment]
    dropped_slow_readers: Callable[[], int] = _zero  # type: ignore[assignment]
    # What each account holds (mcpd.protocol.ledger): connections, streams, sessions, tasks …
    holdings: Callable[[], Mapping[str, Mapping[str, int]]] = dict
    checks: Callable[[], Sequence[CheckResult]] = tuple


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of an ascending sequence (0.0 when it is empty)."""
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered) - 1e-9) - 1))
    return ordered[rank]


def request_entry(when: float, call: CallRecord) -> dict[str, Any]:
    """One recent request, as /stats shows it."""
    caller = call.caller
    return {
        "time": round(when, 3),
        "method": call.method,
        "tool": call.tool,
        "transport": caller.transport,
        "key": caller.name,
        "peer": caller.peer,
        "outcome": call.outcome,
        "duration": round(call.duration, 6),
        "x_request_id": caller.x_request_id,
    }


class RequestStats:
    """Totals and breakdowns of every request the engine answered."""

    def __init__(
        self,
        recent: int = 1000,
        clock: Callable[[], float] = time.time,
        is_tool: Callable[[str], bool] = lambda name: True,
    ) -> None:
        self.clock = clock
        self.is_tool = is_tool
        self.total = 0
        self.successful = 0
        self.failed = 0
        self.duration_sum = 0.0
        # name -> [requests, failures, seconds]
        self.tools: dict[str, list[float]] = {}
        self.transports: dict[str, list[float]] = {}
        self._recent: collections.deque[tuple[float, CallRecord]] = collections.deque(maxlen=recent)

    def observe(self, call: CallRecord) -> None:
        """An `Engine` observer."""
        duration = call.duration
        failed = call.outcome != "ok"
        self.total += 1
        if failed:
            self.failed += 1
        else:
            self.successful += 1
        self.duration_sum += duration
        self._recent.append((self.clock(), call))
        row = self.transports.get(call.caller.transport)
        if row is None:
            row = self.transports[call.caller.transport] = [0, 0, 0.0]
        row[0] += 1
        row[1] += failed
        row[2] += duration
        tool = call.tool
        if tool is not None:
            row = self.tools.get(tool)
            if row is None:
                row = self._tool_row(tool)
            row[0] += 1
            row[1] += failed
            row[2] += duration

    def _tool_row(self, tool: str) -> list[float]:
        # Unknown names (a client can send any) and an overflow share one row.
        name = tool if self.is_tool(tool) and len(self.tools) < _MAX_TOOLS else OTHER
        return self.tools.setdefault(name, [0, 0, 0.0])

    def average(self) -> float:
        """Mean seconds per request (0.0 before the first)."""
        return self.duration_sum / self.total if self.total else 0.0

    def recent(self, count: int) -> list[dict[str, Any]]:
        """The newest ``count`` requests, newest first."""
        records = list(self._recent)[-count:] if count > 0 else []
        return [request_entry(when, call) for when, call in reversed(records)]

    def latency(self) -> dict[str, float]:
        """Percentiles, in seconds, of the requests in the ring buffer."""
        ordered = sorted(call.duration for _when, call in self._recent)
        return {
            "p50": round(percentile(ordered, 0.50), 6),
            "p95": round(percentile(ordered, 0.95), 6),
            "p99": round(percentile(ordered, 0.99), 6),
            "max": round(ordered[-1], 6) if ordered else 0.0,
            "window": len(ordered),
        }

    def snapshot(self, vitals: Vitals, recent: int = 50) -> dict[str, Any]:
        """The body of ``GET /stats``: the seed's shape, then the breakdowns."""
        return {
            "uptime_seconds": round(vitals.uptime(), 3),
            "total_requests": self.total,
            "successful_requests": self.successful,
            "failed_requests": self.failed,
            "success_rate": round(self.successful / self.total, 6) if self.total else 1.0,
            "avg_response_time": round(self.average(), 6),
            "active_connections": vitals.connections(),
            "recent_requests": self.recent(recent),
            "in_flight": vitals.in_flight(),
            "sse_streams": vitals.sse_streams(),
            "websockets": vitals.websockets(),
            "thread_pool_queue": vitals.pool_queue_depth(),
            "latency": self.latency(),
            "refusals": dict(vitals.refusals()),
            "holdings": _largest(vitals.holdings()),
            "tools": _breakdown(self.tools),
            "transports": _breakdown(self.transports),
            "timestamp": round(self.clock(), 3),
        }


def _largest(holdings: Mapping[str, Mapping[str, int]], count: int = 100) -> dict[str, dict[str, int]]:
    """The ``count`` accounts holding the most, for /stats (a keyless LAN server may have many)."""
    ranked = sorted(holdings.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    return {account: dict(held) for account, held in ranked[:count]}


def _breakdown(rows: Mapping[str, list[float]]) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "requests": int(count),
            "failed": int(failed),
            "avg_response_time": round(seconds / count, 6) if count else 0.0,
        }
        for name, (count, failed, seconds) in sorted(rows.items())
    }
