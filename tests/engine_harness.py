"""An engine in memory for the protocol tests: a `Peer` plays one client and checks every message
it gets against the official schema of the protocol version in force; sample packs and records."""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpd.protocol.engine import Engine
from mcpd.protocol.session import Session
from mcpd.protocol.versions import (
    LATEST_LEGACY,
    META_CLIENT_CAPABILITIES,
    META_PROTOCOL_VERSION,
)
from mcpd.protocol.vocabulary import CallRecord, Exchange
from mcpd.tools import Caller, ToolContext, ToolError, ToolPack, ToolRegistry
from tests import conformance_pack
from tests.schema_check import validate_message

MODERN = "2026-07-28"


# The first schema whose error responses may leave out an unreadable id (JSON-RPC's null id);
# the older schemas require an id, so id-less errors are checked against this one.
IDLESS_ERRORS_SINCE = "2025-11-25"


# Put in exception messages that must never reach the wire.
SECRET = "s3cret-detail-from-the-database"


ECHO_OUTPUT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


def sample_pack() -> ToolPack:
    """Four tools covering a structured result, plain text, a ToolError and a crash."""
    pack = ToolPack("sample", "Tools for the engine tests.")

    @pack.tool(
        "echo",
        description="Return the text given, as structured content.",
        input_schema={
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
            "additionalProperties": False,
        },
        output_schema=ECHO_OUTPUT,
    )
    def echo(ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
        return {"text": arguments["text"]}

    @pack.tool("greet", description="Say hello.")
    def greet(ctx: ToolContext, arguments: dict[str, Any]) -> str:
        return "hello"

    @pack.tool("refuse", description="Always fail in a way the model can act on.")
    def refuse(ctx: ToolContext, arguments: dict[str, Any]) -> None:
        raise ToolError("the quota for today is used up")

    @pack.tool("explode", description="Fail unexpectedly.")
    def explode(ctx: ToolContext, arguments: dict[str, Any]) -> None:
        raise RuntimeError(SECRET)

    return pack


def envelope(version: str = MODERN, **extra: Any) -> dict[str, Any]:
    """The `params._meta` of a 2026-07-28 request."""
    return {META_PROTOCOL_VERSION: version, META_CLIENT_CAPABILITIES: {}, **extra}


def assert_valid(case: SynchronousTestCase, version: str, message: Any, method: str | None = None) -> None:
    """Fail ``case`` unless ``message`` (or each message of a batch) is valid under ``version``."""
    for item in message if isinstance(message, list) else [message]:
        checked = version
        if "error" in item and "id" not in item and version < IDLESS_ERRORS_SINCE:
            checked = IDLESS_ERRORS_SINCE
        problems = validate_message(checked, item, method)
        case.assertEqual(problems, [], f"{item!r} is not valid under {checked}")


def error_code(response: dict[str, Any]) -> int:
    """The JSON-RPC error code of ``response`` (fails loudly when it is a result)."""
    assert "result" not in response, f"expected an error, got {response!r}"
    return int(response["error"]["code"])


def text_of(result: dict[str, Any]) -> str:
    """The text of a CallToolResult's only content block."""
    [block] = result["content"]
    assert block["type"] == "text"
    return str(block["text"])


class Peer:
    """One in-memory client of an `Engine`: its session, and the notifications sent to it.

    With ``modern=True`` every request it builds carries the 2026-07-28 `_meta` envelope.
    """

    def __init__(
        self,
        case: SynchronousTestCase,
        engine: Engine,
        *,
        session: bool = True,
        modern: bool = False,
        caller: Caller | None = None,
    ) -> None:
        self.case = case
        self.caller = caller or Caller(name="tester", transport="memory")
        self.engine = engine
        self.session = Session() if session else None
        self.modern = modern
        self.notes: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    def exchange(self, headers: dict[str, str] | None = None) -> Exchange:
        return Exchange(
            peer="test",
            caller=self.caller,
            session=self.session,
            notify=self.notes.append,
            headers=headers,
        )

    def message(
        self, method: str, params: dict[str, Any] | None = None, *, meta: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A request with a fresh id (and the modern envelope when this peer is modern)."""
        params = dict(params or {})
        if self.modern or meta:
            params["_meta"] = {**(envelope() if self.modern else {}), **(meta or {})}
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params:
            message["params"] = params
        return message

    def start(self, message: Any, headers: dict[str, str] | None = None) -> Deferred[Any]:
        """Hand ``message`` to the engine; the Deferred fires with the response (or None)."""
        return self.engine.handle(message, self.exchange(headers))

    def send(self, message: Any, headers: dict[str, str] | None = None) -> Any:
        """Send ``message``; return the response after checking it against the schema."""
        response = self.case.successResultOf(self.start(message, headers))
        if response is not None:
            self.check(message, response)
        return response

    def request(self, method: str, params: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        response = self.send(self.message(method, params, **kwargs))
        self.case.assertIsInstance(response, dict)
        return response  # type: ignore[no-any-return]

    def result(self, method: str, params: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Send a request that must succeed and return its result."""
        response = self.request(method, params, **kwargs)
        self.case.assertNotIn("error", response)
        return response["result"]  # type: ignore[no-any-return]

    def call(self, name: str, arguments: Any = None, **kwargs: Any) -> dict[str, Any]:
        """The CallToolResult of a tools/call (a protocol error fails the test)."""
        params: dict[str, Any] = {"name": name}
        if arguments is not None:
            params["arguments"] = arguments
        return self.result("tools/call", params, **kwargs)

    def initialize(self, version: str = LATEST_LEGACY) -> dict[str, Any]:
        result = self.result(
            "initialize",
            {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}},
        )
        self.case.assertIsNone(self.send({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        return result

    def version_in_force(self, message: Any) -> str:
        if self.session is not None and self.session.version is not None:
            return self.session.version
        first = message[0] if isinstance(message, list) and message else message
        params = first.get("params") if isinstance(first, dict) else None
        if (
            isinstance(params, dict)
            and isinstance(params.get("_meta"), dict)
            and META_PROTOCOL_VERSION in params["_meta"]
        ):
            return MODERN
        return LATEST_LEGACY

    def check(self, message: Any, response: Any) -> None:
        version = self.version_in_force(message)
        if isinstance(response, list):
            methods = {m.get("id"): m.get("method") for m in message if isinstance(m, dict)}
            for item in response:
                assert_valid(self.case, version, item, methods.get(item.get("id")))
        else:
            method = message.get("method") if isinstance(message, dict) else None
            assert_valid(self.case, version, response, method if isinstance(method, str) else None)


def make_engine(*packs: ToolPack, **kwargs: Any) -> Engine:
    return Engine(ToolRegistry(packs or (sample_pack(),)), **kwargs)


CAPABILITIES = {"elicitation": {}, "sampling": {}, "roots": {}}


def engine() -> Engine:
    return Engine(ToolRegistry([conformance_pack.pack]), clock=Clock(), client_timeout=5)


def legacy_peer(case: SynchronousTestCase, capabilities: dict[str, Any] | None = None, e: Engine | None = None) -> Peer:
    peer = Peer(case, e or engine())
    peer.result(
        "initialize",
        {
            "protocolVersion": LATEST_LEGACY,
            "capabilities": capabilities or {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    )
    peer.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    return peer


def record(
    method: str = "tools/call",
    tool: str | None = "echo",
    outcome: str = "ok",
    duration: float = 0.01,
    transport: str = "http",
) -> CallRecord:
    caller = Caller(name="alice", peer="10.0.0.1", transport=transport, x_request_id="r-1")
    return CallRecord(1, method, tool, caller, "2026-07-28", outcome, duration)
