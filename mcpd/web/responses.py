# -*- test-case-name: tests.test_streamable -*-
"""Small pieces every HTTP resource of mcpd answers with."""

from __future__ import annotations

import json
from typing import Any

from mcpd.protocol.errors import LimitExceeded


def json_error(request: Any, status: int, message: str) -> bytes:
    """An HTTP error answered as ``{"error": message}`` JSON (the body to return)."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"error": message}).encode()


def limit_error(request: Any, error: LimitExceeded) -> bytes:
    """A used-up budget answered as ``{"error", "retry_after"}`` JSON: 429 for the caller's
    share, 503 for the server's whole, with ``Retry-After`` (the body to return)."""
    request.setResponseCode(error.status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"retry-after", b"%d" % error.retry_after)
    return json.dumps({"error": error.message, "retry_after": error.retry_after}).encode()


class NoHead:
    """For MCP resources: HEAD is 405.

    twisted.web's default ``render_HEAD`` runs ``render_GET``, which here would open an event
    stream or upgrade to a WebSocket that no stream limit counts, or fail where there is no GET.
    """

    allowed_methods: tuple[bytes, ...] = (b"GET",)

    def render_HEAD(self, request: Any) -> bytes:
        # Answered here, not raised: for UnsupportedMethod twisted.web retries a HEAD as GET.
        request.setResponseCode(405)
        request.setHeader(b"allow", b", ".join(self.allowed_methods))
        return b""
