# -*- test-case-name: tests.test_settings -*-
"""Where and how mcpd serves: listeners, the protocol engine's limits and timers, shutdown."""

from __future__ import annotations

from mcpd.config import parse
from mcpd.config.knob import Knob

SECTION = "server"
KNOBS: tuple[Knob, ...] = (
    Knob("host", "HOST", parse.text, "127.0.0.1", "Interface for --port (0.0.0.0 or :: serves the LAN)."),
    Knob("port", "PORT", parse.port, 8765, "TCP port for Streamable HTTP."),
    Knob(
        "listen",
        "LISTEN",
        parse.names,
        (),
        "A Twisted endpoint string to serve HTTP on, e.g. tcp:8765:interface=0.0.0.0; repeatable "
        "(comma-separated in the environment). Given without --port, only these are served.",
        repeatable=True,
    ),
    Knob("threads", "THREADS", parse.positive_int, 10, "Size of the thread pool that runs blocking tools."),
    Knob(
        "session_timeout",
        "SESSION_TIMEOUT",
        parse.seconds,
        1800.0,
        "Seconds after which an idle legacy HTTP session (Mcp-Session-Id) is ended.",
    ),
    Knob("page_size", "PAGE_SIZE", parse.positive_int, 100, "Items per page of tools/list and other lists."),
    Knob(
        "max_message_size",
        "MAX_MESSAGE_SIZE",
        parse.positive_int,
        4 * 1024 * 1024,
        "Largest JSON-RPC message accepted, in bytes (stdio line or HTTP body).",
    ),
    Knob(
        "max_batch",
        "MAX_BATCH",
        parse.positive_int,
        100,
        "Most messages one JSON-RPC batch may hold (protocol 2025-03-26 only; a larger batch is refused "
        "whole); their answers together may take at most --max-message-size bytes.",
    ),
    Knob(
        "max_write_buffer",
        "MAX_WRITE_BUFFER",
        parse.positive_int,
        8 * 1024 * 1024,
        "Bytes of output one client may leave unread: a connection whose client does not read (an HTTP, "
        "SSE or WebSocket connection; stdout in --stdio mode) is no longer read from once its buffer is "
        "full, and dropped past this many more bytes (--stdio stops).",
    ),
    Knob(
        "sse_replay",
        "SSE_REPLAY",
        parse.positive_int,
        256,
        "Events kept per SSE stream for Last-Event-ID resumption.",
    ),
    Knob(
        "sse_keepalive",
        "SSE_KEEPALIVE",
        parse.seconds,
        15.0,
        "Seconds between keep-alive comments on open SSE streams (Streamable HTTP and legacy /sse) "
        "and between pings on WebSocket connections: proxies keep them, dead clients are found.",
    ),
    Knob(
        "tool_timeout",
        "TOOL_TIMEOUT",
        parse.seconds,
        None,
        "Cancel a tool call after this many seconds and tell the client (default: no limit).",
    ),
    Knob(
        "client_timeout",
        "CLIENT_TIMEOUT",
        parse.seconds,
        60.0,
        "Seconds a client has to answer a request mcpd sends it (elicitation, sampling, roots; legacy sessions).",
    ),
    Knob(
        "state_key",
        "STATE_KEY",
        parse.state_key,
        None,
        "Secret (at least 32 characters) that signs 2026-07-28 requestState, so instances behind one load "
        "balancer accept each other's; default: random per process. Prefer the environment or --config to a flag.",
    ),
    Knob(
        "shutdown_timeout",
        "SHUTDOWN_TIMEOUT",
        parse.seconds,
        30.0,
        "On SIGTERM / SIGINT, seconds the calls in flight have to finish before they are cancelled.",
    ),
)
