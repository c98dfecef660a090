# -*- test-case-name: tests.test_engine -*-
"""JSON-RPC and MCP error codes, and the typed exceptions the engine maps onto them.

Handlers raise these; the engine turns them into JSON-RPC error responses. Anything else raised
while serving a request becomes -32603 with the detail kept in the server log, never on the wire.
"""

from __future__ import annotations

from typing import Any

# JSON-RPC 2.0 §5.1
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# 2026-07-28 basic §Error codes: -32020…-32099 are reserved for the specification.
HEADER_MISMATCH = -32020
MISSING_REQUIRED_CLIENT_CAPABILITY = -32021
UNSUPPORTED_PROTOCOL_VERSION = -32022
# JSON-RPC 2.0 §5.1 leaves -32000…-32099 to implementations (MCP takes -32020 and up): a caller's
# share of a budget, or the server's whole budget, is used up (`LimitExceeded`).
LIMIT_EXCEEDED = -32000
# A request still running when the server stopped (--shutdown-timeout ran out) was cancelled;
# sending it again later, or to another instance, may succeed.
SERVER_SHUTTING_DOWN = -32010
# The answers to one batch would pass the bytes they may take (not a budget that refills: a
# retry fails alike; the request must go on its own).
RESPONSE_TOO_LARGE = -32011

# 2026-07-28 transports §Streamable HTTP: the HTTP status that accompanies each error code.
HTTP_STATUS_FOR_CODE: dict[int, int] = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    MISSING_REQUIRED_CLIENT_CAPABILITY: 400,
    UNSUPPORTED_PROTOCOL_VERSION: 400,
    METHOD_NOT_FOUND: 404,
    SERVER_SHUTTING_DOWN: 503,
}


class MCPError(Exception):
    """A failure that has a JSON-RPC error code and a message a person (or model) can act on."""

    code = INTERNAL_ERROR

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_error(self) -> dict[str, Any]:
        """The JSON-RPC ``error`` member for this failure."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class ParseError(MCPError):
    code = PARSE_ERROR


class InvalidRequest(MCPError):
    code = INVALID_REQUEST


class MethodNotFound(MCPError):
    code = METHOD_NOT_FOUND


class InvalidParams(MCPError):
    code = INVALID_PARAMS


class InternalError(MCPError):
    code = INTERNAL_ERROR


class ResponseTooLarge(MCPError):
    code = RESPONSE_TOO_LARGE


class ServerShuttingDown(MCPError):
    """The daemon stopped before the request was served (``--shutdown-timeout`` ran out)."""

    code = SERVER_SHUTTING_DOWN


class HeaderMismatch(MCPError):
    code = HEADER_MISMATCH


class MissingClientCapability(MCPError):
    code = MISSING_REQUIRED_CLIENT_CAPABILITY


class UnsupportedProtocolVersion(MCPError):
    code = UNSUPPORTED_PROTOCOL_VERSION


class LimitExceeded(MCPError):
    """A budget is used up: the caller's share of it (HTTP 429), or the server's whole (503).

    ``data`` names the budget, its size, whose it is and when to retry, so a client can back off.
    """

    code = LIMIT_EXCEEDED

    def __init__(self, message: str, *, limit: str, maximum: int, per_caller: bool, retry_after: int = 5) -> None:
        scope = "caller" if per_caller else "server"
        super().__init__(message, {"limit": limit, "max": maximum, "scope": scope, "retryAfter": retry_after})
        self.status = 429 if per_caller else 503
        self.retry_after = retry_after


def limit_status(error: Any) -> tuple[int, int] | None:
    """The HTTP status and Retry-After seconds that go with a `LimitExceeded` error member (the
    ``error`` of a response), or None for any other error."""
    if not isinstance(error, dict) or error.get("code") != LIMIT_EXCEEDED:
        return None
    data = error.get("data")
    if not isinstance(data, dict):
        return None
    return (429 if data.get("scope") == "caller" else 503), int(data.get("retryAfter", 5))


def error_response(request_id: Any, error: dict[str, Any]) -> dict[str, Any]:
    """A JSON-RPC error response.

    When the request's id could not be read, ``id`` is left out: MCP's schema (2025-11-25 and
    later, `JSONRPCErrorResponse`) makes it optional and never allows null.
    """
    if request_id is None:
        return {"jsonrpc": "2.0", "error": error}
    return {"jsonrpc": "2.0", "id": request_id, "error": error}
