# -*- test-case-name: tests.test_engine -*-
"""The words every part of the protocol layer shares: where a message came from (`Exchange`),
the request being served (`Request`), how it went (`CallRecord`), which methods exist, which
carry a name in their headers and which may take their time, and the JSON-RPC id rules.

It imports nothing else of the protocol layer, so the engine, the catalog, tool calls and
tasks all name these types without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeGuard

import attrs
from twisted.internet.defer import Deferred

from mcpd.protocol.versions import MODERN_VERSIONS
from mcpd.tools.api import Caller

if TYPE_CHECKING:
    from mcpd.protocol.ledger import Claim
    from mcpd.protocol.session import Session

Notify = Callable[[dict[str, Any]], None]
# None while a caller may send, else the error to answer its message with (or a Deferred of
# either): the security layer's rate limit (mcpd.security.ratelimit.MessageLimiter).
MessageLimit = Callable[[Caller], Any]

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

# 2026-07-28 transports §Streamable HTTP: methods whose target is mirrored in `Mcp-Name`.
# SEP-2663 §Streamable HTTP: Routing Headers: tasks methods mirror their taskId.
NAME_BEARING = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "tasks/get": "taskId",
    "tasks/update": "taskId",
    "tasks/cancel": "taskId",
}

# Requests whose handlers may take their time, held to the caller's share of calls in flight;
# the others answer at once (and stay open to a caller at its share: ping, lists, tasks/cancel).
LONG_RUNNING = frozenset(
    {"tools/call", "resources/read", "prompts/get", "completion/complete", "tasks/result", "subscriptions/listen"}
)


@attrs.define
class Exchange:
    """Where a message came from, as the transport describes it.

    ``session`` is the client's protocol state (a stdio connection or a legacy HTTP session;
    None for a stateless modern HTTP request). ``headers`` are the lowercase HTTP headers of a
    modern request, checked against its body; None where there are none (stdio).
    """

    peer: str
    caller: Caller
    session: Session | None = None
    notify: Notify | None = None
    headers: Mapping[str, str] | None = None
    # Messages the transport's own policy already counted against the caller's rate limit (the
    # HTTP gate counts each request): the engine counts only the ones beyond (a batch's others).
    prepaid: int = 0
    # Set by the engine: the protocol version the message was served under.
    version: str | None = None
    # Set by the engine: the method of the request being served.
    method: str | None = None
    # Set by the engine when the caller named a tool it may not call.
    denied: bool = False
    # The stream this exchange holds in the ledger (a subscriptions/listen, an SSE response),
    # so that one stream is counted once whoever opens it first.
    stream: Claim | None = None


class CallRecord(NamedTuple):
    """How one request went, for the audit trail and metrics (see `Engine.observers`).

    A NamedTuple rather than a frozen attrs class: one is made per request, and the frozen
    class's ``__init__`` (a ``object.__setattr__`` call per field) cost three times as much."""

    request_id: Any
    method: str
    tool: str | None
    caller: Caller
    version: str | None
    # ok | error | tool_error | denied | cancelled
    outcome: str
    duration: float


@attrs.define
class Request:
    """One request being served: what handlers need to know about it."""

    id: Any
    method: str
    params: dict[str, Any]
    version: str
    exchange: Exchange

    @property
    def modern(self) -> bool:
        return self.version in MODERN_VERSIONS

    @property
    def meta(self) -> dict[str, Any]:
        meta = self.params.get("_meta")
        return meta if isinstance(meta, dict) else {}


# What JSON decodes to and handlers mostly answer with: never a Deferred, a Failure or a coroutine.
PLAIN_TYPES = frozenset({dict, list, str, int, float, bool, type(None)})


def is_deferred(value: Any) -> TypeGuard[Deferred[Any]]:
    """``isinstance(value, Deferred)``, quick for the plain answers most requests get: Deferred
    is an abc (``Awaitable``), so isinstance goes through ``ABCMeta.__instancecheck__``, a call
    that showed, several times a request, in the hot path's profile."""
    kind = type(value)
    return kind is Deferred or (kind not in PLAIN_TYPES and isinstance(value, Deferred))


def valid_id(value: Any) -> bool:
    """basic §Requests: ids are strings or integers, never null (MCP forbids null ids)."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def readable_id(value: Any) -> Any:
    """The id to answer with: the request's own, or null when it had none we can read."""
    return value if valid_id(value) else None
