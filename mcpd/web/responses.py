# -*- test-case-name: tests.test_streamable -*-
"""Small pieces every HTTP resource of mcpd answers with."""

from __future__ import annotations

import json
from typing import Any


def json_error(request: Any, status: int, message: str) -> bytes:
    """An HTTP error answered as ``{"error": message}`` JSON (the body to return)."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"error": message}).encode()


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
