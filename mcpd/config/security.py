# -*- test-case-name: tests.test_settings -*-
"""The HTTP policy layer (mcpd.security): keys, addresses, rate limits, budgets, deadlines."""

from __future__ import annotations

from mcpd.config import parse
from mcpd.config.knob import Knob

SECTION = "security"
KNOBS: tuple[Knob, ...] = (
    Knob(
        "api_key",
        "API_KEYS",
        parse.names,
        (),
        "An API key clients must send (Authorization: Bearer KEY, or X-API-Key: KEY); repeatable "
        "(comma-separated in the environment). Keys on the command line show in ps: prefer --api-key-file.",
        repeatable=True,
    ),
    Knob(
        "api_key_file",
        "API_KEY_FILE",
        parse.text,
        None,
        "File of API keys, one a line: KEY, NAME:KEY, NAME:KEY:SCOPES or NAME:KEY:SCOPES:TENANT (scopes "
        "comma-separated: read, write, admin, or tool and toolset names; none = admin; the tenant whose "
        "records the key sees, default: default). Reloaded on SIGHUP.",
    ),
    Knob(
        "insecure_no_auth",
        "INSECURE_NO_AUTH",
        parse.boolean,
        False,
        "Serve clients beyond loopback without API keys (a trusted network only).",
        switch=True,
    ),
    Knob(
        "allowed_ip",
        "ALLOWED_IPS",
        parse.networks,
        (),
        "Only these client addresses or CIDR ranges (IPv4 or IPv6) may connect; repeatable "
        "(comma-separated in the environment). Others get 403.",
        repeatable=True,
    ),
    Knob(
        "allowed_ip_file",
        "ALLOWED_IP_FILE",
        parse.text,
        None,
        "File of allowed addresses and CIDR ranges, one a line, added to --allowed-ip. Reloaded on SIGHUP.",
    ),
    Knob(
        "trusted_proxy",
        "TRUSTED_PROXIES",
        parse.networks,
        (),
        "A reverse proxy (address or CIDR) whose X-Forwarded-For / X-Real-IP is believed; repeatable. "
        "From other peers those headers are ignored.",
        repeatable=True,
    ),
    Knob(
        "cors_origin",
        "CORS_ORIGINS",
        parse.names,
        (),
        "A browser origin allowed to call mcpd (https://app.example), or * for any; repeatable. "
        "Answers CORS preflights and exposes Mcp-Session-Id.",
        repeatable=True,
    ),
    Knob(
        "rate_limit",
        "RATE_LIMIT",
        parse.positive_int,
        100,
        "Requests allowed per --rate-window, per API key (per client address without keys; loopback exempt).",
    ),
    Knob("rate_window", "RATE_WINDOW", parse.seconds, 60.0, "The rate-limit window, in seconds."),
    Knob("rate_burst", "RATE_BURST", parse.positive_int, None, "Largest burst of requests (default: --rate-limit)."),
    Knob(
        "max_connections",
        "MAX_CONNECTIONS",
        parse.positive_int,
        1000,
        "Open HTTP connections allowed; the next gets 503.",
    ),
    Knob(
        "max_connections_per_ip",
        "MAX_CONNECTIONS_PER_IP",
        parse.positive_int,
        None,
        "Open HTTP connections allowed from one address (trusted proxies exempt); the next gets 503.",
    ),
    Knob(
        "max_streams_per_key",
        "MAX_STREAMS_PER_KEY",
        parse.positive_int,
        16,
        "Long-lived streams allowed per API key (per address without keys): SSE GET streams, /sse, WebSockets, "
        "subscriptions/listen (over HTTP, WebSocket or stdio) and SSE responses; the next gets 429.",
    ),
    Knob(
        "max_sessions",
        "MAX_SESSIONS",
        parse.positive_int,
        10_000,
        "Sessions held at once (Streamable HTTP Mcp-Session-Id, /sse, WebSocket); a new one over it gets 503.",
    ),
    Knob(
        "share_per_key",
        "SHARE_PER_KEY",
        parse.percent,
        25,
        "Percent of each server-wide budget (connections, sessions, tasks, subscriptions, SSE replay buffers) "
        "one API key may hold (one address without keys); over it, 429.",
    ),
    Knob(
        "header_timeout",
        "HEADER_TIMEOUT",
        parse.seconds,
        10.0,
        "Seconds a client has to send a request's headers (from its first byte, or from connecting).",
    ),
    Knob(
        "request_timeout",
        "REQUEST_TIMEOUT",
        parse.seconds,
        30.0,
        "Seconds a client has to send a request's body (or the rest of a WebSocket message split over frames).",
    ),
)
