# -*- test-case-name: tests.test_engine -*-
"""The protocol versions mcpd speaks, and which era each belongs to."""

from __future__ import annotations

# Handshake ("legacy") era: the version is negotiated once by `initialize`.
LEGACY_VERSIONS: tuple[str, ...] = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
# Stateless ("modern") era: every request names its version in `params._meta`.
MODERN_VERSIONS: tuple[str, ...] = ("2026-07-28",)
ALL_VERSIONS: tuple[str, ...] = LEGACY_VERSIONS + MODERN_VERSIONS

LATEST_LEGACY = LEGACY_VERSIONS[-1]
LATEST = MODERN_VERSIONS[-1]
# 2025-03-26 is the only version whose servers MUST accept JSON-RPC batches.
BATCH_VERSIONS = frozenset({"2025-03-26"})
# 2025-03-26 transports §Protocol Version Header: a request without the header is taken as this.
DEFAULT_HTTP_LEGACY_VERSION = "2025-03-26"

# `_meta` keys of the 2026-07-28 per-request envelope (basic §Per-request protocol fields).
META_PROTOCOL_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"


def is_legacy(version: str | None) -> bool:
    """Whether ``version`` is one negotiated by the `initialize` handshake."""
    return version in LEGACY_VERSIONS
