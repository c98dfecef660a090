# -*- test-case-name: tests.test_channel,tests.test_routes -*-
"""What a request head must look like before mcpd reads it: one valid ``Host`` (RFC 9112 §3.2),
one of each header mcpd reads as a single value, ASCII in the headers mcpd reads as text, and an
absolute-form target only when it names the same host."""

from __future__ import annotations

import re
from typing import Any

from mcpd.security.routes import split_target

# Twisted 26.10: the canonical form twisted.web keeps header names in, and its table of them
# (`Headers._rawHeaders`), read directly on the hot path.
from twisted.web.http_headers import _nameEncoder  # isort: skip

canonical = _nameEncoder.encode
# Header names (bytes and str) in that form, as twisted.web has met them: ``canonical`` without
# its call where it answers from this cache.
CANONICAL_NAMES = _nameEncoder._canonicalHeaderCache
HOST = canonical(b"host")
ORIGIN = canonical(b"origin")
ACCEPT = canonical(b"accept")
CONTENT_TYPE = canonical(b"content-type")
X_REQUEST_ID = canonical(b"x-request-id")
AUTHORIZATION = canonical(b"authorization")
X_API_KEY = canonical(b"x-api-key")
MCP_PROTOCOL_VERSION = canonical(b"mcp-protocol-version")


def header_text(request: Any, name: bytes) -> str | None:
    """A request header's last value as text (what ``request.getHeader`` gives for a str
    name), ``name`` in twisted.web's canonical form (`canonical`): one dictionary look-up."""
    values = request.requestHeaders._rawHeaders.get(name)
    return values[-1].decode("utf-8") if values else None


# Headers mcpd reads as one value: sent twice, which one counts would be a guess.
_SINGLE = frozenset(
    {
        b"host",
        b"authorization",
        b"x-api-key",
        b"origin",
        b"mcp-session-id",
        b"mcp-protocol-version",
        b"mcp-method",
        b"mcp-name",
        b"last-event-id",
    }
)
# Headers mcpd reads as text (and every Mcp-* and Sec-WebSocket-* one).
_TEXT = frozenset(
    {
        b"host",
        b"origin",
        b"accept",
        b"content-type",
        b"authorization",
        b"x-api-key",
        b"x-request-id",
        b"x-forwarded-for",
        b"x-real-ip",
        b"forwarded",
        b"last-event-id",
        b"upgrade",
        b"connection",
    }
)
# RFC 9112 §3.2 / RFC 3986 §3.2.2: uri-host [ ":" port ] (an IPv6 zone as RFC 6874 writes it).
_HOST = re.compile(rb"^(?:\[[0-9A-Fa-f:.]+(?:%25[A-Za-z0-9._~-]+)?\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?$")


def head_problem(headers: Any, version: bytes, target: bytes) -> str | None:
    """Why a request head must be refused with 400, as a message for the client, or None.

    ``headers`` are the request's (twisted.web ``Headers``), ``version`` and ``target`` its
    request line's.
    """
    for name, values in headers.getAllRawHeaders():
        if len(values) == 1:
            if values[0].isascii():
                continue  # the common case, as cheap as can be
        elif name.lower() in _SINGLE:
            # RFC 9112 §3.2: more than one Host is a 400; the same for the credentials and the
            # MCP headers, which mcpd reads as one value.
            return f"Bad Request: the {name.decode('latin-1')} header is sent more than once"
        elif all(value.isascii() for value in values):
            continue
        lowered = name.lower()
        if lowered in _TEXT or lowered.startswith((b"mcp-", b"sec-websocket-")):
            # The headers mcpd reads are text; a non-ASCII byte in one is a client bug (values
            # that need other characters travel as =?base64?…?=, 2026-07-28 transports).
            shown = name.decode("latin-1")
            return f"Bad Request: the {shown} header must be ASCII (send other characters as =?base64?...?=)"
    host = headers._rawHeaders.get(HOST)
    if host is None:
        if version == b"HTTP/1.1":
            return "Bad Request: an HTTP/1.1 request must carry a Host header (RFC 9112 section 3.2)"
    elif not _HOST.match(host[0]):
        return "Bad Request: the Host header is not a host name or address with an optional port"
    if target[:1] == b"/":
        return None  # origin-form: the common case
    authority, _path = split_target(target)
    if authority is not None and (host is None or authority.lower() != host[0].lower()):
        # RFC 9112 §3.2: a client sends a Host identical to the target's authority; two
        # different hosts would leave the Host checks (DNS rebinding) guessing.
        return "Bad Request: an absolute-form request target must name the same host as the Host header"
    return None
