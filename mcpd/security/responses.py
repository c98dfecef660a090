# -*- test-case-name: tests.test_streamable -*-
"""Small pieces every HTTP resource of mcpd answers with."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from twisted.web.http import NO_BODY_CODES

from mcpd.protocol.errors import LimitExceeded

# Reason phrases of the statuses mcpd answers outside a resource (RFC 9110 §15, RFC 6585).
REASONS = {
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    414: "URI Too Long",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


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


def raw_response(status: int, body: bytes, headers: Iterable[tuple[bytes | str, bytes | str]] = ()) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, for answers given outside
    twisted.web's request machinery (a connection over the cap, a refused body, a head too
    large to parse)."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}".encode()]
    for name, value in headers:
        lines.append(_b(name) + b": " + _b(value))
    if body:
        lines.append(b"Content-Type: application/json")
    if status not in NO_BODY_CODES:  # RFC 9110 §8.6: none in a 204 (a CORS preflight's answer)
        lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _b(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


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
