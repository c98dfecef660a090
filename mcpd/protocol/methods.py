# -*- test-case-name: tests.test_engine -*-
"""The request methods mcpd serves, in either era: the vocabulary the metrics' labels are
bounded by (an unknown method is counted as ``other``), known before any engine exists."""

from __future__ import annotations

# The handshake era (2024-11-05 … 2025-11-25); tasks/* only in 2025-11-25.
LEGACY_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "tasks/get",
        "tasks/result",
        "tasks/list",
        "tasks/cancel",
    }
)
# The stateless era (2026-07-28), with the io.modelcontextprotocol/tasks extension (SEP-2663).
MODERN_METHODS = frozenset(
    {
        "server/discover",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "subscriptions/listen",
        "tasks/get",
        "tasks/update",
        "tasks/cancel",
    }
)
REQUEST_METHODS = LEGACY_METHODS | MODERN_METHODS
