# -*- test-case-name: tests.test_catalog -*-
"""Talking back to the client while a request is served: log messages, and the requests a
handler makes of the client (elicitation, sampling, roots), in both eras.

- Legacy era (a session that ran ``initialize``): the server sends a JSON-RPC request on the
  session's streams and the handler awaits the client's response as a Deferred, with a timeout
  (2025-11-25 client/elicitation, client/sampling, client/roots). `OutboundRequests` holds the
  session's pending requests by id; the engine routes each client response to it.
- Modern era (2026-07-28): no server-to-client requests. The handler's questions go back in an
  ``InputRequiredResult`` (``inputRequests`` plus a signed, opaque ``requestState``) and the
  client retries the request with ``inputResponses``; the handler runs again and this time finds
  its answers (2026-07-28 basic §Multi Round-Trip Requests).

Either way a handler writes ``answer = yield ctx.elicit(...)`` once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpd.protocol.errors import InvalidParams, MCPError, MissingClientCapability
from mcpd.protocol.outbound import Send
from mcpd.protocol.versions import META_CLIENT_CAPABILITIES, META_LOG_LEVEL

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from mcpd.protocol.changes import ChangeFeed
    from mcpd.protocol.session import Session
    from mcpd.tools.api import RequestContext

log = Logger(namespace="mcpd.channel")

# 2025-11-25 server/utilities/logging §Log Levels (RFC 5424 severities, least severe first).
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
LOG_RANK = {level: rank for rank, level in enumerate(LOG_LEVELS)}

# The client capability each server-to-client request needs.
CAPABILITY_FOR = {"elicitation/create": "elicitation", "sampling/createMessage": "sampling", "roots/list": "roots"}


class InputRequired(Exception):
    """A modern-era handler needs answers from the client: the engine replies with an
    ``InputRequiredResult`` carrying ``requests`` (2026-07-28 basic §Multi Round-Trip Requests)."""

    def __init__(self, requests: dict[str, dict[str, Any]]) -> None:
        super().__init__(f"input required: {', '.join(requests)}")
        self.requests = requests


class StateSigner:
    """Signs and checks modern-era ``requestState`` so a client cannot forge or alter it
    (2026-07-28 basic §Multi Round-Trip Requests: the state is opaque to the client, and the
    server MUST validate it). Instances sharing a key accept each other's state."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def sign(self, state: Any) -> str:
        body = base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode().rstrip("=")
        return f"{body}.{self._mac(body)}"

    def verify(self, token: Any) -> Any:
        """The state inside ``token``; `InvalidParams` if it is not one we signed."""
        if not isinstance(token, str) or "." not in token:
            raise InvalidParams("Invalid params: requestState is not one this server issued")
        body, _, mac = token.rpartition(".")
        # Bytes: compare_digest refuses str with non-ASCII characters, which a client may send.
        if not hmac.compare_digest(mac.encode("utf-8", "replace"), self._mac(body).encode()):
            raise InvalidParams("Invalid params: requestState failed its integrity check")
        try:
            return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            raise InvalidParams("Invalid params: requestState is not one this server issued") from None

    def _mac(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode("utf-8", "replace"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class RequestChannel:
    """What a handler may say to, or ask of, the client of the request it serves.

    Built by the engine per request that can use it (tools/call, prompts/get, resources/read);
    handlers reach it through their context.
    """

    def __init__(
        self,
        *,
        version: str,
        modern: bool,
        params: Mapping[str, Any],
        send: Send | None,
        session: Session | None,
        changes: ChangeFeed,
        clock: IReactorTime,
        timeout: float | None,
        signer: StateSigner,
        trace: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.version = version
        self.modern = modern
        self.send = send
        self.session = session
        self.changes = changes
        self.clock = clock
        self.timeout = timeout
        self.signer = signer
        self._trace = trace
        meta = params.get("_meta")
        meta = meta if isinstance(meta, dict) else {}
        self._meta = meta
        responses = params.get("inputResponses")
        self.input_responses: dict[str, Any] = responses if isinstance(responses, dict) else {}
        self.request_state: Any = None
        if "requestState" in params and modern:
            self.request_state = signer.verify(params["requestState"])
        # What the handler set for the next round (modern era).
        self.next_state: Any = None
        self.missing: dict[str, dict[str, Any]] = {}
        self._keys = itertools.count(1)

    # -- logging --------------------------------------------------------------------------------

    @property
    def log_threshold(self) -> int | None:
        """The least severe level the client wants; None when it wants no messages."""
        if self.modern:
            # 2026-07-28 server/utilities/logging: only when the request's _meta asks for it.
            level = self._meta.get(META_LOG_LEVEL)
            return LOG_RANK.get(level) if isinstance(level, str) else None
        level = self.session.log_level if self.session is not None else None
        # 2025-11-25 server/utilities/logging: before logging/setLevel the server chooses; send all.
        return 0 if level is None else LOG_RANK.get(level, 0)

    def log(self, level: str, data: Any, logger: str | None = None) -> None:
        """Send ``notifications/message`` on this request's own stream, if the client wants it."""
        rank = LOG_RANK.get(level)
        if rank is None:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}")
        threshold = self.log_threshold
        if threshold is None or rank < threshold or self.send is None:
            return
        params: dict[str, Any] = {"level": level, "data": data}
        if logger is not None:
            params["logger"] = logger
        self._emit({"jsonrpc": "2.0", "method": "notifications/message", "params": params})

    def _emit(self, message: dict[str, Any]) -> None:
        if self._trace is not None:
            self._trace(message)
        if self.send is not None:
            self.send(message)

    # -- requests to the client -----------------------------------------------------------------

    def client_capabilities(self) -> Mapping[str, Any]:
        if self.modern:
            capabilities = self._meta.get(META_CLIENT_CAPABILITIES)
            return capabilities if isinstance(capabilities, dict) else {}
        return self.session.client_capabilities if self.session is not None else {}

    def ask(self, method: str, params: dict[str, Any], key: str | None = None) -> Deferred[dict[str, Any]]:
        """Ask the client (``elicitation/create``, ``sampling/createMessage``, ``roots/list``)."""
        missing = self.missing_capability(method)
        if missing is not None:
            return fail(missing)
        if self.modern:
            key = key or f"input_{next(self._keys)}"
            if key in self.input_responses:
                return succeed(self.input_responses[key])
            self.missing[key] = {"method": method, "params": params}
            return fail(InputRequired(self.missing))
        session = self.session
        if session is None or self.send is None:
            return fail(MCPError("this transport cannot carry requests to the client"))
        return session.outbound.request(self._emit, method, params, self.timeout, self.clock)

    def ping(self) -> Deferred[dict[str, Any]]:
        """Ask the client whether it is still there (2025-11-25 basic/utilities/ping: either
        party may ping); fires with its empty result. The stateless era has no requests from
        the server, so there the answer is an error."""
        if self.modern:
            return fail(MCPError("protocol 2026-07-28 has no requests from the server to the client, ping included"))
        session = self.session
        if session is None or self.send is None:
            return fail(MCPError("this transport cannot carry requests to the client"))
        return session.outbound.request(self._emit, "ping", {}, self.timeout, self.clock)

    def missing_capability(self, method: str) -> MissingClientCapability | None:
        """The error for asking ``method`` of a client that did not declare its capability."""
        capability = CAPABILITY_FOR.get(method)
        if capability is None or capability in self.client_capabilities():
            return None
        # 2026-07-28 basic §Error codes: a request needing an undeclared client capability.
        return MissingClientCapability(
            f"This request needs the client capability {capability!r}, which the client did not declare",
            data={"requiredCapabilities": {capability: {}}},
        )

    def input_required_result(self) -> dict[str, Any]:
        """The ``InputRequiredResult`` asking for everything the handler was missing."""
        result: dict[str, Any] = {"resultType": "input_required", "inputRequests": dict(self.missing)}
        if self.next_state is not None:
            result["requestState"] = self.signer.sign(self.next_state)
        return result


def input_required(failure: Failure, ctx: RequestContext) -> Any:
    """A handler that needs the client's input ends its modern-era round with an
    InputRequiredResult (2026-07-28 basic §Multi Round-Trip Requests); any other failure is
    returned as it is."""
    channel = ctx.link.channel
    if channel is not None and channel.missing and (failure.check(InputRequired) or channel.modern):
        return channel.input_required_result()
    return failure
