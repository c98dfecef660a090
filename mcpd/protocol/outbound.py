# -*- test-case-name: tests.test_catalog -*-
"""Requests the server makes of a legacy-session client (elicitation, sampling, roots, ping),
awaiting their responses: one `OutboundRequests` per session."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

log = Logger(namespace="mcpd.channel")

Send = Callable[[dict[str, Any]], None]


class ClientError(Exception):
    """The client answered a server-to-client request with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.data = data


class ClientTimeout(Exception):
    """The client did not answer a server-to-client request in time."""


class OutboundRequests:
    """The server-to-client requests of one legacy session, awaiting their responses.

    Transport-neutral: a request is written by whatever ``send`` callable the transport gave
    (a stdio line, an SSE event on the related POST's stream or on the standalone GET stream, a
    WebSocket frame); the transport hands every client response to the engine, which calls
    `resolve`. Ids are strings of our own (``mcpd-<n>``), so they never collide with the
    client's request ids.
    """

    def __init__(self, prefix: str = "mcpd-", forward: Callable[[Mapping[str, Any]], bool] | None = None) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[Any, tuple[Deferred[Any], IDelayedCall | None]] = {}
        # Several instances: ids name this one (``mcpd-<instance>-<replica>-<n>``), and a response to
        # another's request goes to it (``forward``, True if it took the message).
        self.prefix = prefix
        self.forward = forward

    def __len__(self) -> int:
        return len(self._pending)

    def request(
        self,
        send: Send,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
        clock: IReactorTime,
    ) -> Deferred[dict[str, Any]]:
        """Send one request; the Deferred fires with the client's result, fails with
        `ClientError` on an error response and `ClientTimeout` after ``timeout`` seconds.
        Cancelling it tells the client (``notifications/cancelled``)."""
        request_id = f"{self.prefix}{next(self._ids)}"

        def cancel(_d: Deferred[Any]) -> None:
            if self._forget(request_id):
                # 2025-11-25 basic/utilities/cancellation: either side may cancel its request.
                send(
                    {
                        "jsonrpc": "2.0",
                        "method": "notifications/cancelled",
                        "params": {"requestId": request_id, "reason": "the server no longer needs the answer"},
                    }
                )

        d: Deferred[dict[str, Any]] = Deferred(cancel)
        call = clock.callLater(timeout, self._expire, request_id, method, timeout) if timeout else None
        self._pending[request_id] = (d, call)
        send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        return d

    def resolve(self, message: Mapping[str, Any]) -> bool:
        """Deliver a client response; False if no request of ours has its id."""
        entry = self._pending.pop(message.get("id"), None)
        if entry is None:
            return self.forward is not None and self.forward(message)
        d, call = entry
        if call is not None and call.active():
            call.cancel()
        error = message.get("error")
        if "result" in message and isinstance(message["result"], dict):
            d.callback(message["result"])
        elif isinstance(error, dict):
            d.errback(ClientError(error.get("code", 0), str(error.get("message", "")), error.get("data")))
        else:
            d.errback(ClientError(-32600, "the client's response had neither an object result nor an error"))
        return True

    def close(self) -> None:
        """The session ended: every pending request fails with `CancelledError`."""
        pending, self._pending = self._pending, {}
        for d, call in pending.values():
            if call is not None and call.active():
                call.cancel()
            d.errback(CancelledError("the session ended"))

    def _forget(self, request_id: str) -> bool:
        entry = self._pending.pop(request_id, None)
        if entry is None:
            return False
        if entry[1] is not None and entry[1].active():
            entry[1].cancel()
        return True

    def _expire(self, request_id: str, method: str, timeout: float) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None:
            log.warn("The client did not answer {method} within {timeout}s", method=method, timeout=timeout)
            entry[0].errback(ClientTimeout(f"the client did not answer {method} within {timeout} seconds"))
