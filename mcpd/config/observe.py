# -*- test-case-name: tests.test_settings -*-
"""Logs, audit records, traces and the monitoring routes (mcpd.observe)."""

from __future__ import annotations

from mcpd.config import parse
from mcpd.config.knob import Knob

SECTION = "observe"
KNOBS: tuple[Knob, ...] = (
    Knob(
        "trace_file",
        "TRACE_FILE",
        parse.text,
        None,
        "Write every JSON-RPC message in and out to this file as JSON lines (debugging).",
    ),
    Knob("audit_buffer", "AUDIT_BUFFER", parse.positive_int, 1000, "Audit records kept in memory."),
    Knob(
        "audit_retention",
        "AUDIT_RETENTION",
        parse.count,
        90,
        "Days the audit trail is kept in the SQL store (server.audit); older records are deleted "
        "hourly. 0 keeps them forever.",
    ),
    Knob(
        "audit_log",
        "AUDIT_LOG",
        parse.audit_choice,
        None,
        "Which audit records are logged as JSON lines: all, or refusals (every refusal, denial and "
        "failed call, not the tool calls that went well). Default: refusals where the SQL store "
        "persists every call (server.audit); without it, all with API keys or a listener beyond "
        "loopback.",
    ),
    Knob(
        "public_metrics",
        "PUBLIC_METRICS",
        parse.boolean,
        False,
        "Serve /stats, /metrics and /dashboard to any client that may connect; by default clients "
        "beyond loopback need an admin-scoped API key for them (/health and /ready are always open).",
        switch=True,
    ),
    Knob(
        "log_format",
        "LOG_FORMAT",
        parse.log_format,
        "text",
        "Log lines as text, or as JSON lines (request id, key, peer, method, tool, duration, outcome).",
    ),
    Knob(
        "logfile",
        "LOG_FILE",
        parse.text,
        None,
        "Append the log to this file (default: stdout under twistd, stderr for the mcpd command and in --stdio mode).",
    ),
)
