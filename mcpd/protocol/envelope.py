# -*- test-case-name: tests.test_engine -*-
"""Which era a request belongs to, and the rules of its envelope and headers.

A request of a session that ran ``initialize`` is served in the session's version; any other
must carry the 2026-07-28 envelope in ``params._meta``, and over HTTP its headers must mirror its
body (``MCP-Protocol-Version``, ``Mcp-Method``, ``Mcp-Name``, ``Mcp-Param-*``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from mcpd.protocol.errors import HeaderMismatch, InvalidParams, UnsupportedProtocolVersion
from mcpd.protocol.versions import (
    LATEST_LEGACY,
    LEGACY_VERSIONS,
    META_CLIENT_CAPABILITIES,
    META_CLIENT_INFO,
    META_PROTOCOL_VERSION,
    MODERN_VERSIONS,
)
from mcpd.protocol.vocabulary import NAME_BEARING, Exchange, Request
from mcpd.tools.validation import HeaderParameter


def route(request_id: Any, method: str, params: dict[str, Any], exchange: Exchange) -> Request:
    """The request in its era: its session's version, the handshake's (``initialize``, an early
    ``ping``), or the 2026-07-28 envelope's, checked (`modern_envelope`)."""
    session = exchange.session
    if session is not None and session.version is not None:
        exchange.version = session.version
        return Request(request_id, method, params, session.version, exchange)
    legacy_shaped = exchange.headers is None and "_meta" not in params
    if (method == "initialize" and legacy_shaped) or (method == "ping" and session is not None and legacy_shaped):
        # 2025-11-25 basic/lifecycle: pings are allowed before the handshake completes.
        # Served (and traced) under the latest handshake version; initialize then records
        # the version it negotiated.
        exchange.version = LATEST_LEGACY
        return Request(request_id, method, params, LATEST_LEGACY, exchange)
    version = modern_envelope(method, params, exchange.headers)
    exchange.version = version
    return Request(request_id, method, params, version, exchange)


def modern_envelope(method: str, params: dict[str, Any], headers: Mapping[str, str] | None) -> str:
    """Check a stateless request's envelope; the first failing rung wins.

    2026-07-28 basic §Per-request protocol fields, then transports §Streamable HTTP headers.
    """
    meta = params.get("_meta")
    if not isinstance(meta, dict) or META_PROTOCOL_VERSION not in meta or META_CLIENT_CAPABILITIES not in meta:
        raise InvalidParams(
            f"Invalid params: params._meta must carry {META_PROTOCOL_VERSION!r} and "
            f"{META_CLIENT_CAPABILITIES!r} (protocol 2026-07-28), or send initialize first "
            f"(protocol versions {', '.join(LEGACY_VERSIONS)})"
        )
    version = meta[META_PROTOCOL_VERSION]
    if headers is not None:
        if headers.get("mcp-protocol-version") != version:
            raise HeaderMismatch("MCP-Protocol-Version header does not match params._meta protocolVersion")
        if headers.get("mcp-method") != method:
            raise HeaderMismatch("Mcp-Method header does not match the request's method")
        name_key = NAME_BEARING.get(method)
        named = params.get(name_key) if name_key is not None else None
        if named is not None and decode_header_value(headers.get("mcp-name")) != named:
            raise HeaderMismatch(f"Mcp-Name header does not match params.{name_key}")
    if not isinstance(version, str):
        raise InvalidParams("Invalid params: the protocol version in params._meta must be a string")
    if version not in MODERN_VERSIONS:
        raise UnsupportedProtocolVersion(
            f"Unsupported protocol version {version}",
            data={"supported": list(MODERN_VERSIONS), "requested": version},
        )
    if not isinstance(meta[META_CLIENT_CAPABILITIES], dict):
        raise InvalidParams(f"Invalid params: {META_CLIENT_CAPABILITIES} must be an object")
    info = meta.get(META_CLIENT_INFO)
    if info is not None and not isinstance(info, dict):
        raise InvalidParams(f"Invalid params: {META_CLIENT_INFO} must be an object")
    return version


def check_parameter_headers(
    parameters: tuple[HeaderParameter, ...], arguments: dict[str, Any], headers: Mapping[str, str]
) -> None:
    """2026-07-28 transports §Server Behavior for Custom Headers: every ``Mcp-Param-*`` header
    must mirror its argument; a value in the body without its header is rejected too."""
    for parameter in parameters:
        value = parameter.value_in(arguments)
        raw = headers.get(parameter.header)
        if value is None:
            if raw is not None:
                raise HeaderMismatch(f"{parameter.header} header is present but its argument is absent")
            continue
        decoded = decode_header_value(raw)
        if decoded is None or not parameter.matches(decoded, value):
            raise HeaderMismatch(f"{parameter.header} header does not match argument {'.'.join(parameter.path)}")


def decode_header_value(value: str | None) -> str | None:
    """Undo the ``=?base64?…?=`` wrapping of header values (2026-07-28 transports §Value
    Encoding); None for a value that is not a valid header value at all."""
    if value is None:
        return None
    if not (value.startswith("=?base64?") and value.endswith("?=")):
        # Printable ASCII, %x20-7E (no line break: a pattern's ``$`` let a last one through).
        return value if value.isascii() and value.isprintable() else None
    try:
        return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
