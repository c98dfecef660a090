"""Tests for mcpd.protocol.engine: JSON-RPC framing, both protocol eras, progress and cancellation.

Everything runs in memory: a `Peer` plays one client (one `Session`, as a stdio connection or a
legacy HTTP session has) and checks every response it gets against the official schema of the
protocol version in force.
"""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python import threadable
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mcpd.protocol import errors
from mcpd.protocol.codec import MAX_DEPTH, encode
from mcpd.protocol.engine import BATCH_SLICE, Engine
from mcpd.protocol.trace import Tracer
from mcpd.protocol.versions import (
    ALL_VERSIONS,
    LATEST_LEGACY,
    LEGACY_VERSIONS,
    META_CLIENT_CAPABILITIES,
    META_CLIENT_INFO,
    META_PROTOCOL_VERSION,
    META_SERVER_INFO,
    MODERN_VERSIONS,
)
from mcpd.protocol.vocabulary import CallRecord
from mcpd.security.ratelimit import MessageLimiter, RateLimit, RateLimiter
from mcpd.stores.memory import MemoryBucketStore
from mcpd.stores.threads import ToolThreads
from mcpd.tools import Caller, Tool, ToolContext, ToolPack, ToolRegistry, ToolResult
from tests.engine_harness import (
    ECHO_OUTPUT,
    MODERN,
    SECRET,
    Peer,
    assert_valid,
    envelope,
    error_code,
    make_engine,
    sample_pack,
    text_of,
)
from tests.schema_check import assert_trace_valid


class InitializeTests(SynchronousTestCase):
    """The legacy handshake (2025-11-25 basic/lifecycle)."""

    def test_echoes_every_supported_version(self) -> None:
        for version in LEGACY_VERSIONS:
            peer = Peer(self, make_engine())
            result = peer.initialize(version)
            self.assertEqual(result["protocolVersion"], version)
            self.assertEqual(peer.session.version, version)  # type: ignore[union-attr]
            self.assertEqual(result["serverInfo"]["name"], "mcpd")
            self.assertIn("tools", result["capabilities"])
            self.assertTrue(peer.session.initialized)  # type: ignore[union-attr]

    def test_unsupported_version_is_answered_with_the_latest_legacy(self) -> None:
        peer = Peer(self, make_engine())
        result = peer.initialize("1999-01-01")
        self.assertEqual(result["protocolVersion"], "2025-11-25")
        self.assertEqual(peer.session.version, "2025-11-25")  # type: ignore[union-attr]

    def test_client_info_and_capabilities_are_remembered(self) -> None:
        peer = Peer(self, make_engine())
        peer.result(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {"roots": {}},
                "clientInfo": {"name": "c", "version": "2"},
            },
        )
        self.assertEqual(peer.session.client_capabilities, {"roots": {}})  # type: ignore[union-attr]
        self.assertEqual(peer.session.client_info, {"name": "c", "version": "2"})  # type: ignore[union-attr]

    def test_second_initialize_is_an_invalid_request(self) -> None:
        peer = Peer(self, make_engine())
        peer.initialize("2025-03-26")
        response = peer.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})
        self.assertEqual(error_code(response), errors.INVALID_REQUEST)
        self.assertEqual(peer.session.version, "2025-03-26")  # type: ignore[union-attr]

    def test_initialize_needs_a_string_version(self) -> None:
        peer = Peer(self, make_engine())
        response = peer.request("initialize", {"protocolVersion": 20251125, "capabilities": {}})
        self.assertEqual(error_code(response), errors.INVALID_PARAMS)
        self.assertIsNone(peer.session.version)  # type: ignore[union-attr]

    def test_initialize_without_a_session_is_refused(self) -> None:
        peer = Peer(self, make_engine(), session=False)
        response = peer.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})
        self.assertEqual(error_code(response), errors.INVALID_REQUEST)

    def test_ping_answers_an_empty_result(self) -> None:
        peer = Peer(self, make_engine())
        peer.initialize()
        self.assertEqual(peer.request("ping"), {"jsonrpc": "2.0", "id": 2, "result": {}})

    def test_ping_before_initialize_is_answered(self) -> None:
        # 2025-11-25 basic/lifecycle: pings are allowed before the handshake.
        peer = Peer(self, make_engine())
        response = peer.send({"jsonrpc": "2.0", "id": 7, "method": "ping"})
        self.assertEqual(response, {"jsonrpc": "2.0", "id": 7, "result": {}})


class LegacyToolsListTests(SynchronousTestCase):
    def test_lists_every_tool_sorted_with_its_schemas(self) -> None:
        peer = Peer(self, make_engine())
        peer.initialize("2025-06-18")
        result = peer.result("tools/list")
        self.assertEqual([t["name"] for t in result["tools"]], ["echo", "explode", "greet", "refuse"])
        echo = result["tools"][0]
        self.assertEqual(echo["description"], "Return the text given, as structured content.")
        self.assertEqual(echo["inputSchema"]["required"], ["text"])
        self.assertEqual(echo["outputSchema"], ECHO_OUTPUT)
        self.assertEqual(result["tools"][2]["inputSchema"], {"type": "object", "properties": {}})
        self.assertNotIn("nextCursor", result)
        # Caching hints are 2026-07-28 only.
        self.assertNotIn("ttlMs", result)
        self.assertNotIn("resultType", result)

    def test_pages_of_one_walk_every_tool_in_order(self) -> None:
        peer = Peer(self, make_engine(page_size=1))
        peer.initialize()
        names, cursors, cursor = [], [], None
        for _ in range(10):
            result = peer.result("tools/list", {"cursor": cursor} if cursor else None)
            self.assertEqual(len(result["tools"]), 1)
            names.append(result["tools"][0]["name"])
            cursor = result.get("nextCursor")
            if cursor is None:
                break
            cursors.append(cursor)
        self.assertEqual(names, ["echo", "explode", "greet", "refuse"])
        self.assertEqual(len(set(cursors)), 3)
        for cursor, name in zip(cursors, names, strict=False):
            self.assertNotIn(name, cursor, "cursors are opaque")

    def test_a_cursor_not_issued_by_the_server_is_invalid_params(self) -> None:
        peer = Peer(self, make_engine(page_size=1))
        peer.initialize()
        for cursor in ("not-a-cursor", base64.urlsafe_b64encode(b"before:echo").decode(), 42):
            response = peer.request("tools/list", {"cursor": cursor})
            self.assertEqual(error_code(response), errors.INVALID_PARAMS, cursor)


class LegacyToolsCallTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.peer = Peer(self, make_engine())
        self.peer.initialize()

    def test_structured_result_also_comes_as_json_text(self) -> None:
        result = self.peer.call("echo", {"text": "héllo"})
        self.assertEqual(result["structuredContent"], {"text": "héllo"})
        self.assertEqual(json.loads(text_of(result)), {"text": "héllo"})
        self.assertFalse(result.get("isError", False))

    def test_plain_value_becomes_text(self) -> None:
        result = self.peer.call("greet")
        self.assertEqual(text_of(result), "hello")
        self.assertNotIn("structuredContent", result)

    def test_unknown_tool_is_invalid_params(self) -> None:
        response = self.peer.request("tools/call", {"name": "no.such.tool", "arguments": {}})
        self.assertEqual(error_code(response), errors.INVALID_PARAMS)
        self.assertIn("no.such.tool", response["error"]["message"])

    def test_a_name_is_required(self) -> None:
        response = self.peer.request("tools/call", {"arguments": {}})
        self.assertEqual(error_code(response), errors.INVALID_PARAMS)

    def test_invalid_arguments_are_a_tool_error_naming_the_problem(self) -> None:
        missing = self.peer.call("echo", {})
        self.assertTrue(missing["isError"])
        self.assertIn("'text' is a required property", text_of(missing))
        wrong_type = self.peer.call("echo", {"text": 5})
        self.assertTrue(wrong_type["isError"])
        self.assertIn("text: 5 is not of type 'string'", text_of(wrong_type))

    def test_arguments_that_are_not_an_object_are_a_tool_error(self) -> None:
        for arguments in (["text"], "text", 3):
            result = self.peer.call("echo", arguments)
            self.assertTrue(result["isError"])
            self.assertIn("must be a JSON object", text_of(result))

    def test_tool_error_message_reaches_the_model(self) -> None:
        result = self.peer.call("refuse")
        self.assertTrue(result["isError"])
        self.assertEqual(text_of(result), "the quota for today is used up")

    def test_unexpected_exception_is_a_tool_error_without_details(self) -> None:
        result = self.peer.call("explode")
        self.assertTrue(result["isError"])
        text = text_of(result)
        self.assertIn("explode failed unexpectedly", text)
        self.assertNotIn(SECRET, text)
        self.assertNotIn("Traceback", text)
        # The operator gets the details in the log instead.
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_result_of_a_deferred_arrives_when_it_fires(self) -> None:
        later: Deferred[str] = Deferred()
        pack = ToolPack("slow")
        pack.tool("slow", description="Answer later.")(lambda ctx, arguments: later)
        peer = Peer(self, make_engine(pack))
        peer.initialize()
        d = peer.start(peer.message("tools/call", {"name": "slow"}))
        self.assertNoResult(d)
        later.callback("done")
        self.assertEqual(text_of(self.successResultOf(d)["result"]), "done")

    def test_cancelled_error_the_client_did_not_ask_for_still_gets_an_answer(self) -> None:
        # A handler whose own Deferred was cancelled (a timeout, say) must not leave the
        # request unanswered: only the client's cancellation suppresses the response.
        pack = ToolPack("timeouts")
        pack.tool("timeout", description="Time out.")(lambda ctx, arguments: fail(CancelledError()))
        peer = Peer(self, make_engine(pack))
        peer.initialize()
        result = peer.call("timeout")
        self.assertTrue(result["isError"])
        self.assertEqual(len(self.flushLoggedErrors(CancelledError)), 1)


class HandlerAnswerShapesTests(SynchronousTestCase):
    """Whatever a reactor handler answers with (a value, a Deferred, a Failure, a coroutine, an
    exception, a protocol error) is answered the same, whether it is ready at once or not."""

    def peer(self, handler: Any) -> Peer:
        pack = ToolPack("shapes")
        pack.tool("shape", description="Answer in one shape.")(handler)
        peer = Peer(self, make_engine(pack))
        peer.initialize()
        return peer

    def test_a_coroutine_is_awaited(self) -> None:
        async def answer(ctx: Any, arguments: Any) -> str:
            return "awaited"

        self.assertEqual(text_of(self.peer(answer).call("shape")), "awaited")

    def test_a_returned_failure_is_a_tool_error(self) -> None:
        result = self.peer(lambda ctx, arguments: Failure(RuntimeError("broken"))).call("shape")
        self.assertTrue(result["isError"])
        self.assertIn("failed unexpectedly", text_of(result))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_a_protocol_error_raised_at_once_is_answered_as_one(self) -> None:
        def refuse(ctx: Any, arguments: Any) -> None:
            raise errors.InvalidParams("Invalid params: no such record")

        response = self.peer(refuse).request("tools/call", {"name": "shape", "arguments": {}})
        self.assertEqual(error_code(response), errors.INVALID_PARAMS)
        self.assertEqual(response["error"]["message"], "Invalid params: no such record")

    def test_a_result_that_is_not_json_is_a_tool_error_at_once_and_later(self) -> None:
        for answer in (float("nan"), succeed(float("nan"))):
            result = self.peer(lambda ctx, arguments, answer=answer: answer).call("shape")
            self.assertTrue(result["isError"])


class BrokenRegistry(ToolRegistry):
    """A registry that fails as a bug in the engine's own code path would."""

    def page(self, cursor: str | None, size: int, visible: Any = None) -> Any:
        raise RuntimeError(SECRET)


class InternalErrorTests(SynchronousTestCase):
    def test_an_exception_in_the_engine_is_internal_error_without_details(self) -> None:
        peer = Peer(self, Engine(BrokenRegistry([sample_pack()])))
        peer.initialize()
        response = peer.request("tools/list")
        self.assertEqual(error_code(response), errors.INTERNAL_ERROR)
        self.assertNotIn(SECRET, json.dumps(response))
        self.assertNotIn("Traceback", json.dumps(response))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        # The session carries on.
        self.assertEqual(peer.result("ping"), {})

    def test_blocking_tool_without_a_thread_pool_is_internal_error(self) -> None:
        pack = ToolPack("threads")
        pack.tool("block", description="Block.", blocking=True)(lambda ctx, arguments: "never")
        peer = Peer(self, make_engine(pack))
        peer.initialize()
        response = peer.request("tools/call", {"name": "block"})
        self.assertEqual(error_code(response), errors.INTERNAL_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class FramingTests(SynchronousTestCase):
    """JSON-RPC 2.0 §4-§5 as MCP restricts it (basic §Messages)."""

    def setUp(self) -> None:
        self.peer = Peer(self, make_engine())
        self.peer.initialize()

    def send_bytes(self, data: bytes) -> Any:
        return self.successResultOf(self.peer.engine.handle_bytes(data, self.peer.exchange()))

    def test_parse_error_and_the_session_survives(self) -> None:
        for data in (b'{"jsonrpc": "2.0", "id": 1, "method": ', b"\xff\xfe{}", b"[" * 100_000):
            response = self.send_bytes(data)
            self.assertEqual(error_code(response), errors.PARSE_ERROR)
            self.assertNotIn("id", response)
            assert_valid(self, "2025-11-25", response)
        self.assertEqual(
            self.send_bytes(encode({"jsonrpc": "2.0", "id": 9, "method": "ping"})),
            {"jsonrpc": "2.0", "id": 9, "result": {}},
        )

    def test_nesting_past_the_limit_is_a_parse_error(self) -> None:
        """A message nested deeper than MAX_DEPTH containers is refused before anything reads
        it (re-encoding it for the trace or a tool's result would overflow the stack); one
        level less is served. Either way the bytes may be str (a WebSocket frame)."""

        def call(depth: int) -> bytes:
            # The message, its params and its arguments are three levels; the rest is the value.
            value = "[" * (depth - 3) + "1" + "]" * (depth - 3)
            return (
                b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x","v":'
                + value.encode()
                + b"}}}"
            )

        response = self.send_bytes(call(MAX_DEPTH))
        self.assertEqual(response["id"], 7)
        self.assertIn("Invalid arguments", response["result"]["content"][0]["text"])  # v is not allowed
        for data in (call(MAX_DEPTH + 1), call(MAX_DEPTH + 1).decode(), call(900)):
            response = self.successResultOf(self.peer.engine.handle_bytes(data, self.peer.exchange()))
            self.assertEqual(error_code(response), errors.PARSE_ERROR)
            self.assertIn(f"nests deeper than {MAX_DEPTH} levels", response["error"]["message"])
            self.assertNotIn("id", response)

    def test_missing_or_wrong_jsonrpc_member(self) -> None:
        for message in ({"id": 1, "method": "ping"}, {"jsonrpc": "1.0", "id": 2, "method": "ping"}):
            response = self.peer.send(message)
            self.assertEqual(error_code(response), errors.INVALID_REQUEST)
            self.assertEqual(response["id"], message["id"])

    def test_method_must_be_a_string(self) -> None:
        response = self.peer.send({"jsonrpc": "2.0", "id": 3, "method": 7})
        self.assertEqual(error_code(response), errors.INVALID_REQUEST)

    def test_id_must_be_a_string_or_an_integer(self) -> None:
        for bad_id in (None, True, 1.5, {"n": 1}, [1]):
            response = self.peer.send({"jsonrpc": "2.0", "id": bad_id, "method": "ping"})
            self.assertEqual(error_code(response), errors.INVALID_REQUEST, bad_id)
            self.assertNotIn("id", response)
        self.assertEqual(self.peer.send({"jsonrpc": "2.0", "id": "", "method": "ping"})["result"], {})

    def test_message_must_be_an_object(self) -> None:
        for message in (42, "ping", None):
            self.assertEqual(error_code(self.peer.send(message)), errors.INVALID_REQUEST)

    def test_id_without_method_or_result_is_invalid(self) -> None:
        response = self.peer.send({"jsonrpc": "2.0", "id": 4})
        self.assertEqual(error_code(response), errors.INVALID_REQUEST)
        self.assertEqual(response["id"], 4)

    def test_unknown_method(self) -> None:
        response = self.peer.request("resources/frobnicate")
        self.assertEqual(error_code(response), errors.METHOD_NOT_FOUND)
        self.assertIn("resources/frobnicate", response["error"]["message"])

    def test_params_must_be_an_object(self) -> None:
        response = self.peer.send({"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": ["x"]})
        self.assertEqual(error_code(response), errors.INVALID_PARAMS)
        self.assertEqual(response["id"], 5)

    def test_notifications_get_no_response(self) -> None:
        for method in ("notifications/initialized", "notifications/roots/list_changed", "tools/list"):
            self.assertIsNone(self.peer.send({"jsonrpc": "2.0", "method": method}))

    def test_a_response_to_nothing_is_ignored(self) -> None:
        self.assertIsNone(self.peer.send({"jsonrpc": "2.0", "id": 99, "result": {}}))
        self.assertIsNone(self.peer.send({"jsonrpc": "2.0", "id": 98, "error": {"code": -1, "message": "no"}}))
        self.assertEqual(self.peer.result("ping"), {})

    def test_a_trace_records_a_schema_valid_conversation(self) -> None:
        path = self.mktemp()
        tracer = Tracer(path)
        self.addCleanup(tracer.close)
        peer = Peer(self, make_engine(tracer=tracer))
        peer.initialize()
        peer.call("echo", {"text": "x"})
        peer.request("tools/call", {"name": "missing"})
        peer.send({"jsonrpc": "2.0", "id": None, "method": "ping"})
        self.successResultOf(peer.engine.handle_bytes(b"{not json", peer.exchange()))
        tracer.close()
        assert_trace_valid(self, path)
        with open(path, encoding="utf-8") as f:
            lines = [json.loads(line) for line in f]
        # initialize in/out, initialized in, three requests in and out, the unparseable bytes.
        self.assertEqual(
            [line["dir"] for line in lines], ["in", "out", "in", "in", "out", "in", "out", "in", "out", "in", "out"]
        )
        self.assertEqual(lines[-2]["message"], "{not json")

    def test_a_ping_before_the_handshake_is_traced_with_its_version(self) -> None:
        """basic/lifecycle allows a ping before initialize; it is served under the latest
        handshake version, and the trace says so (a null version is for errors only)."""
        path = self.mktemp()
        tracer = Tracer(path)
        self.addCleanup(tracer.close)
        peer = Peer(self, make_engine(tracer=tracer))
        self.assertEqual(peer.result("ping"), {})
        tracer.close()
        assert_trace_valid(self, path)
        with open(path, encoding="utf-8") as f:
            self.assertEqual([json.loads(line)["version"] for line in f], [None, LATEST_LEGACY])


class BatchTests(SynchronousTestCase):
    """Batches exist in 2025-03-26 only (2025-06-18 changelog: batching removed)."""

    def batch(self) -> list[dict[str, Any]]:
        return [
            {"jsonrpc": "2.0", "id": 1, "method": "ping"},
            {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"},
            {
                "jsonrpc": "2.0",
                "id": "two",
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "b"}},
            },
            {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
        ]

    def test_2025_03_26_answers_each_request_of_a_batch(self) -> None:
        peer = Peer(self, make_engine())
        peer.initialize("2025-03-26")
        responses = peer.send(self.batch())
        self.assertIsInstance(responses, list)
        self.assertEqual([r["id"] for r in responses], [1, "two", 3])
        self.assertEqual(responses[0]["result"], {})
        self.assertEqual(responses[1]["result"]["structuredContent"], {"text": "b"})
        self.assertEqual(len(responses[2]["result"]["tools"]), 4)

    def test_a_batch_of_notifications_gets_no_response(self) -> None:
        peer = Peer(self, make_engine())
        peer.initialize("2025-03-26")
        self.assertIsNone(peer.send([{"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}]))

    def test_a_bad_member_is_answered_alone(self) -> None:
        peer = Peer(self, make_engine())
        peer.initialize("2025-03-26")
        responses = peer.send([42, {"jsonrpc": "2.0", "id": 1, "method": "ping"}])
        self.assertEqual(error_code(responses[0]), errors.INVALID_REQUEST)
        self.assertEqual(responses[1], {"jsonrpc": "2.0", "id": 1, "result": {}})

    def test_later_versions_reject_batches(self) -> None:
        for version in ("2025-06-18", "2025-11-25"):
            peer = Peer(self, make_engine())
            peer.initialize(version)
            response = peer.send(self.batch())
            self.assertIsInstance(response, dict)
            self.assertEqual(error_code(response), errors.INVALID_REQUEST)

    def test_batches_are_rejected_before_initialize(self) -> None:
        peer = Peer(self, make_engine())
        response = peer.send(
            [{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-03-26"}}]
        )
        self.assertEqual(error_code(response), errors.INVALID_REQUEST)
        self.assertIsNone(peer.session.version)  # type: ignore[union-attr]

    def test_an_empty_batch_is_invalid(self) -> None:
        peer = Peer(self, make_engine())
        peer.initialize("2025-03-26")
        response = peer.send([])
        self.assertEqual(error_code(response), errors.INVALID_REQUEST)
        self.assertIn("empty batch", response["error"]["message"])


class BatchLimitTests(SynchronousTestCase):
    """A batch is bounded in messages and in the bytes of its answers, and never holds the
    reactor for more than a slice of its messages."""

    def peer(self, **kwargs: Any) -> Peer:
        self.clock = Clock()
        caller = Caller(name="tester", transport="memory", account="key:tester")
        peer = Peer(self, make_engine(clock=self.clock, **kwargs), caller=caller)
        peer.initialize("2025-03-26")
        return peer

    def pings(self, count: int) -> list[dict[str, Any]]:
        return [{"jsonrpc": "2.0", "id": n, "method": "ping"} for n in range(count)]

    def test_a_batch_over_max_batch_is_refused_whole(self) -> None:
        peer = self.peer(max_batch=5)
        self.assertEqual(len(peer.send(self.pings(5))), 5)
        response = peer.send(self.pings(6))
        self.assertEqual(error_code(response), errors.INVALID_REQUEST)
        self.assertIn("at most 5 messages, this one has 6", response["error"]["message"])
        self.assertNotIn("id", response)

    def test_slices_give_the_reactor_back(self) -> None:
        peer = self.peer()
        records: list[CallRecord] = []
        peer.engine.observers.append(records.append)
        d = peer.start(self.pings(BATCH_SLICE * 2 + 1))
        # The first slice ran at once; the others wait for the next reactor turn.
        self.assertNoResult(d)
        self.assertEqual(len(records), BATCH_SLICE)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        responses = self.successResultOf(d)
        self.assertEqual([r["id"] for r in responses], list(range(BATCH_SLICE * 2 + 1)))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_later_messages_of_the_session_wait_for_the_batch(self) -> None:
        """A session's messages are served in the order they came: what it sends while a batch
        is served a slice at a time is answered after the batch (one stream carries both on
        /sse, a WebSocket or stdio), and a batch among them holds the rest back in turn."""
        peer = self.peer()
        other = Peer(self, peer.engine)
        other.initialize("2025-03-26")
        answered: list[Any] = []
        for message in (self.pings(BATCH_SLICE * 2), {"jsonrpc": "2.0", "id": "a", "method": "ping"}):
            peer.start(message).addCallback(answered.append)
        second = [{"jsonrpc": "2.0", "id": f"b{n}", "method": "ping"} for n in range(BATCH_SLICE + 1)]
        peer.start(second).addCallback(answered.append)
        peer.start({"jsonrpc": "2.0", "id": "c", "method": "ping"}).addCallback(answered.append)
        # Another session is not held up.
        self.assertEqual(other.send({"jsonrpc": "2.0", "id": "x", "method": "ping"})["id"], "x")
        self.assertEqual(answered, [])
        self.clock.advance(0)
        self.clock.advance(0)
        ids = [[r["id"] for r in a] if isinstance(a, list) else a["id"] for a in answered]
        self.assertEqual(ids, [list(range(BATCH_SLICE * 2)), "a", [m["id"] for m in second], "c"])
        self.assertEqual(peer.engine._behind_batch, {})

    def test_a_message_cancelled_while_it_waits_for_a_batch_is_not_served(self) -> None:
        peer = self.peer()
        records: list[CallRecord] = []
        peer.engine.observers.append(records.append)
        batch = peer.start(self.pings(BATCH_SLICE * 2))
        cancelled = peer.start({"jsonrpc": "2.0", "id": "gone", "method": "ping"})
        later = peer.start({"jsonrpc": "2.0", "id": "later", "method": "ping"})
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        self.clock.advance(0)
        self.assertEqual(len(self.successResultOf(batch)), BATCH_SLICE * 2)
        self.assertEqual(self.successResultOf(later)["id"], "later")
        self.assertNotIn("gone", [record.request_id for record in records])

    def test_a_closed_session_stops_the_batch(self) -> None:
        peer = self.peer()
        d = peer.start(self.pings(BATCH_SLICE * 3))
        assert peer.session is not None
        peer.session.close()
        self.clock.advance(0)
        # Only the first slice was served; nothing more is scheduled.
        self.assertEqual(len(self.successResultOf(d)), BATCH_SLICE)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answers_past_the_byte_budget_are_errors(self) -> None:
        one = len(encode({"jsonrpc": "2.0", "id": 0, "result": {}}))
        peer = self.peer(max_batch_bytes=one * 3)
        responses = peer.send(self.pings(5))
        self.assertEqual([r.get("result") for r in responses], [{}, {}, {}, None, None])
        self.assertEqual([r["id"] for r in responses], [0, 1, 2, 3, 4])
        self.assertEqual(error_code(responses[3]), errors.RESPONSE_TOO_LARGE)
        self.assertIn(f"{one * 3} bytes", responses[3]["error"]["message"])

    def test_rate_limit_counts_every_message_of_a_batch(self) -> None:
        peer = self.peer()
        store = MemoryBucketStore(self.clock)
        peer.engine.message_limit = MessageLimiter(RateLimiter(RateLimit(3, 60.0), store))
        exchange = peer.exchange()
        exchange.prepaid = 1  # as the HTTP gate counted the request that carried the batch
        batch = [*self.pings(4), {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}, *self.pings(2)]
        responses = self.successResultOf(peer.engine.handle(batch, exchange))
        outcomes = [r.get("result", r.get("error", {}).get("code")) for r in responses]
        # One prepaid and three from the bucket served; the rest refused in-band (the
        # notification, over the limit too, is dropped unanswered).
        self.assertEqual(outcomes, [{}, {}, {}, {}, errors.LIMIT_EXCEEDED, errors.LIMIT_EXCEEDED])
        self.assertEqual(
            responses[4]["error"]["data"], {"limit": "rate", "max": 3, "scope": "caller", "retryAfter": 20}
        )
        assert_valid(self, "2025-03-26", responses)
        self.clock.advance(20)
        self.assertEqual(peer.send(self.pings(1))[0]["result"], {})

    def test_rate_limited_requests_are_observed(self) -> None:
        peer = self.peer()
        records: list[CallRecord] = []
        peer.engine.observers.append(records.append)
        refusal = errors.LimitExceeded("over", limit="rate", maximum=1, per_caller=True, retry_after=5)
        peer.engine.message_limit = lambda caller: refusal
        response = peer.request("tools/call", {"name": "greet"})
        self.assertEqual(response["error"]["data"]["retryAfter"], 5)
        self.assertEqual([(r.tool, r.outcome) for r in records], [("greet", "rate_limited")])


class UnsendableResultTests(SynchronousTestCase):
    """A handler's value that JSON cannot carry is a tool error or an internal error, never bad
    JSON on the wire."""

    def pack(self) -> ToolPack:
        pack = ToolPack("odd", "Tools returning values JSON cannot carry.")
        pack.add(Tool(name="nan", description="NaN.", handler=lambda ctx, arguments: float("nan")))
        pack.add(
            Tool(
                name="structured",
                description="Infinity, structured.",
                handler=lambda ctx, arguments: {"v": float("inf")},
                output_schema={"type": "object"},
            )
        )
        pack.add(
            Tool(
                name="explicit",
                description="A ToolResult with NaN structured content.",
                handler=lambda ctx, arguments: ToolResult(content=[], structured={"v": float("nan")}),
            )
        )
        pack.add(Tool(name="set", description="A set.", handler=lambda ctx, arguments: {1, 2}))
        return pack

    def test_values_json_cannot_carry_are_tool_errors(self) -> None:
        peer = Peer(self, make_engine(self.pack()))
        peer.initialize()
        for name, why in (("nan", "NaN"), ("structured", "NaN or Infinity"), ("explicit", "NaN"), ("set", "set")):
            result = peer.call(name)
            self.assertTrue(result["isError"], name)
            self.assertIn(f"Tool {name} returned a value JSON cannot carry", text_of(result))
            self.assertIn(why, text_of(result))
            encode(result)  # and it is JSON

    def test_progress_must_be_finite(self) -> None:
        seen: list[Any] = []

        def report(ctx: ToolContext, arguments: dict[str, Any]) -> str:
            for value in (float("nan"), float("inf")):
                try:
                    ctx.progress(value)
                except ValueError as e:
                    seen.append(str(e))
            return "done"

        pack = ToolPack("progress", "Progress that is not a number.")
        pack.add(Tool(name="report", description="Report NaN progress.", handler=report))
        peer = Peer(self, make_engine(pack))
        peer.initialize()
        peer.call("report", meta={"progressToken": "p"})
        self.assertEqual(len(seen), 2)
        self.assertIn("finite", seen[0])
        self.assertEqual(peer.notes, [])


class ModernTests(SynchronousTestCase):
    """The stateless 2026-07-28 era: every request carries its version in `_meta`."""

    def setUp(self) -> None:
        self.peer = Peer(self, make_engine(page_size=2, list_ttl_ms=5_000), session=False, modern=True)

    def test_discover(self) -> None:
        result = self.peer.result("server/discover")
        self.assertEqual(result["supportedVersions"], list(ALL_VERSIONS))
        self.assertIn(MODERN, result["supportedVersions"])
        self.assertEqual(result["capabilities"]["tools"], {"listChanged": True})
        self.assertEqual(
            set(result["capabilities"]), {"tools", "resources", "prompts", "completions", "logging", "extensions"}
        )
        self.assertEqual(result["capabilities"]["extensions"], {"io.modelcontextprotocol/tasks": {}})
        self.assertEqual(result["_meta"][META_SERVER_INFO]["name"], "mcpd")
        self.assertEqual(result["ttlMs"], 5_000)
        self.assertEqual(result["cacheScope"], "public")
        self.assertEqual(result["resultType"], "complete")
        self.assertIn("server.tools", result["instructions"])

    def test_tools_list_carries_caching_hints_and_pages(self) -> None:
        first = self.peer.result("tools/list")
        self.assertEqual([t["name"] for t in first["tools"]], ["echo", "explode"])
        self.assertEqual((first["resultType"], first["ttlMs"], first["cacheScope"]), ("complete", 5_000, "public"))
        second = self.peer.result("tools/list", {"cursor": first["nextCursor"]})
        self.assertEqual([t["name"] for t in second["tools"]], ["greet", "refuse"])
        self.assertNotIn("nextCursor", second)
        self.assertEqual(second["resultType"], "complete")
        self.assertEqual(error_code(self.peer.request("tools/list", {"cursor": "bogus"})), errors.INVALID_PARAMS)

    def test_tools_call_results_are_complete(self) -> None:
        result = self.peer.call("echo", {"text": "now"})
        self.assertEqual(result["resultType"], "complete")
        self.assertEqual(result["structuredContent"], {"text": "now"})
        failed = self.peer.call("refuse")
        self.assertEqual((failed["resultType"], failed["isError"]), ("complete", True))

    def test_client_info_is_optional_but_must_be_an_object(self) -> None:
        meta = {META_CLIENT_INFO: {"name": "c", "version": "1"}}
        self.assertEqual(self.peer.result("server/discover", meta=meta)["resultType"], "complete")
        response = self.peer.request("server/discover", meta={META_CLIENT_INFO: "c"})
        self.assertEqual(error_code(response), errors.INVALID_PARAMS)

    def test_missing_envelope_is_invalid_params(self) -> None:
        legacy = Peer(self, make_engine(), session=False)
        cases = [
            None,
            {"_meta": "nope"},
            {"_meta": {META_CLIENT_CAPABILITIES: {}}},
            {"_meta": {META_PROTOCOL_VERSION: MODERN}},
            {"_meta": {META_PROTOCOL_VERSION: MODERN, META_CLIENT_CAPABILITIES: []}},
            {"_meta": {META_PROTOCOL_VERSION: 2026, META_CLIENT_CAPABILITIES: {}}},
        ]
        for params in cases:
            response = legacy.send({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": params})
            self.assertEqual(error_code(response), errors.INVALID_PARAMS, params)
            assert_valid(self, MODERN, response, "tools/list")

    def test_unsupported_version(self) -> None:
        for version in ("2099-01-01", "2025-11-25"):
            response = self.peer.request("server/discover", meta=envelope(version))
            self.assertEqual(error_code(response), errors.UNSUPPORTED_PROTOCOL_VERSION)
            # Only the per-request (modern) versions can be retried in _meta.
            self.assertEqual(response["error"]["data"], {"supported": list(MODERN_VERSIONS), "requested": version})

    def test_legacy_only_methods_do_not_exist(self) -> None:
        for method in ("ping", "logging/setLevel"):
            response = self.peer.request(method)
            self.assertEqual(error_code(response), errors.METHOD_NOT_FOUND, method)

    def test_a_stdio_session_stays_stateless_for_modern_requests(self) -> None:
        peer = Peer(self, make_engine(), modern=True)
        self.assertEqual(peer.result("tools/list")["resultType"], "complete")
        self.assertIsNone(peer.session.version)  # type: ignore[union-attr]

    def test_an_initialized_session_stays_legacy(self) -> None:
        peer = Peer(self, make_engine())
        peer.initialize()
        result = peer.result("tools/list", meta=envelope())
        self.assertNotIn("resultType", result)
        self.assertEqual(error_code(peer.request("server/discover", meta=envelope())), errors.METHOD_NOT_FOUND)


class HeaderTests(SynchronousTestCase):
    """2026-07-28 transports §Streamable HTTP: headers mirror the body."""

    def setUp(self) -> None:
        self.peer = Peer(self, make_engine(), session=False, modern=True)

    def call(self, headers: dict[str, str], name: str = "greet") -> dict[str, Any]:
        response = self.peer.send(self.peer.message("tools/call", {"name": name}), headers)
        self.assertIsInstance(response, dict)
        return response  # type: ignore[no-any-return]

    def headers(self, **changes: str) -> dict[str, str]:
        return {"mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": "greet", **changes}

    def test_matching_headers_are_accepted(self) -> None:
        self.assertEqual(text_of(self.call(self.headers())["result"]), "hello")

    def test_base64_wrapped_name_is_accepted(self) -> None:
        wrapped = "=?base64?" + base64.b64encode(b"greet").decode() + "?="
        self.assertEqual(text_of(self.call(self.headers(**{"mcp-name": wrapped}))["result"]), "hello")

    def test_mismatches_are_header_mismatch(self) -> None:
        cases = [
            self.headers(**{"mcp-protocol-version": "2025-11-25"}),
            self.headers(**{"mcp-method": "tools/list"}),
            self.headers(**{"mcp-name": "echo"}),
            self.headers(**{"mcp-name": "=?base64?!!not base64!!?="}),
            {"mcp-method": "tools/call", "mcp-name": "greet"},
            {"mcp-protocol-version": MODERN, "mcp-method": "tools/call"},
        ]
        for headers in cases:
            response = self.call(headers)
            self.assertEqual(error_code(response), errors.HEADER_MISMATCH, headers)

    def test_only_name_bearing_methods_need_mcp_name(self) -> None:
        headers = {"mcp-protocol-version": MODERN, "mcp-method": "tools/list"}
        response = self.peer.send(self.peer.message("tools/list"), headers)
        self.assertEqual(len(response["result"]["tools"]), 4)


class ProgressTests(SynchronousTestCase):
    """2025-11-25 basic/utilities/progress."""

    def setUp(self) -> None:
        # ToolContext.progress runs the sink directly on the reactor thread; this thread is it,
        # but the reactor never ran here to register it.
        threadable.registerAsIOThread()
        self.contexts: list[ToolContext] = []
        self.later: Deferred[str] = Deferred()
        pack = ToolPack("progress")

        @pack.tool("count", description="Report progress a few times.")
        def count(ctx: ToolContext, arguments: dict[str, Any]) -> Deferred[str]:
            self.contexts.append(ctx)
            for value in arguments.get("steps", [1, 2, 3]):
                ctx.progress(value, 3, f"step {value}")
            return self.later

        self.engine = make_engine(pack)

    def progress_values(self, peer: Peer) -> list[float]:
        return [note["params"]["progress"] for note in peer.notes]

    def test_progress_notifications_carry_the_token(self) -> None:
        peer = Peer(self, self.engine)
        peer.initialize()
        d = peer.start(peer.message("tools/call", {"name": "count"}, meta={"progressToken": "tok-1"}))
        self.assertEqual(self.progress_values(peer), [1, 2, 3])
        for note in peer.notes:
            self.assertEqual(note["method"], "notifications/progress")
            self.assertEqual(note["params"]["progressToken"], "tok-1")
            self.assertEqual(note["params"]["total"], 3)
            assert_valid(self, LATEST_LEGACY, note)
        self.assertEqual(peer.notes[0]["params"]["message"], "step 1")
        self.assertTrue(self.contexts[0].reports_progress)
        self.later.callback("done")
        self.assertEqual(text_of(self.successResultOf(d)["result"]), "done")
        self.contexts[0].progress(4, 3)
        self.assertEqual(self.progress_values(peer), [1, 2, 3], "nothing after the result")

    def test_modern_requests_get_progress_too(self) -> None:
        peer = Peer(self, self.engine, session=False, modern=True)
        peer.start(peer.message("tools/call", {"name": "count"}, meta={"progressToken": 7}))
        self.assertEqual(self.progress_values(peer), [1, 2, 3])
        self.assertEqual({note["params"]["progressToken"] for note in peer.notes}, {7})
        for note in peer.notes:
            assert_valid(self, MODERN, note)

    def test_falsy_tokens_get_progress_too(self) -> None:
        for token in (0, ""):
            peer = Peer(self, self.engine)
            peer.initialize()
            peer.start(peer.message("tools/call", {"name": "count"}, meta={"progressToken": token}))
            self.assertEqual(self.progress_values(peer), [1, 2, 3], token)
            self.assertEqual({note["params"]["progressToken"] for note in peer.notes}, {token})

    def test_a_token_neither_string_nor_integer_is_invalid_params(self) -> None:
        for token in (False, 1.5, {"a": [1]}, [1]):
            peer = Peer(self, self.engine)
            peer.initialize()
            d = peer.start(peer.message("tools/call", {"name": "count"}, meta={"progressToken": token}))
            answer = self.successResultOf(d)
            self.assertEqual(answer["error"]["code"], -32602, token)
            self.assertIn("progressToken must be a string or an integer", answer["error"]["message"])
            self.assertEqual((peer.notes, self.contexts), ([], []))

    def test_no_token_no_progress(self) -> None:
        peer = Peer(self, self.engine)
        peer.initialize()
        peer.start(peer.message("tools/call", {"name": "count"}))
        self.assertEqual(peer.notes, [])
        self.assertFalse(self.contexts[0].reports_progress)

    def test_values_that_do_not_increase_are_dropped(self) -> None:
        peer = Peer(self, self.engine)
        peer.initialize()
        peer.start(
            peer.message(
                "tools/call", {"name": "count", "arguments": {"steps": [1, 1, 0.5, 2, 2]}}, meta={"progressToken": 1}
            )
        )
        self.assertEqual(self.progress_values(peer), [1, 2])


class CancellationTests(SynchronousTestCase):
    """2025-11-25 basic/utilities/cancellation: a cancelled request gets no response."""

    def setUp(self) -> None:
        threadable.registerAsIOThread()
        self.contexts: list[ToolContext] = []
        self.cancelled: list[Deferred[Any]] = []
        self.pending: list[Deferred[Any]] = []
        pack = ToolPack("forever")

        @pack.tool("wait", description="Answer only when the test says so.")
        def wait(ctx: ToolContext, arguments: dict[str, Any]) -> Deferred[Any]:
            self.contexts.append(ctx)
            self.pending.append(Deferred(self.cancelled.append))
            return self.pending[-1]

        self.peer = Peer(self, make_engine(pack))
        self.peer.initialize()

    def cancel(self, request_id: Any, peer: Peer | None = None) -> None:
        note = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": request_id, "reason": "bored"},
        }
        self.assertIsNone((peer or self.peer).send(note))

    def test_cancelled_notification_stops_the_call_without_a_response(self) -> None:
        message = self.peer.message("tools/call", {"name": "wait"}, meta={"progressToken": "p"})
        d = self.peer.start(message)
        self.assertNoResult(d)
        self.assertIn(message["id"], self.peer.session.in_flight)  # type: ignore[union-attr]
        self.cancel(message["id"])
        self.assertEqual(len(self.cancelled), 1, "the handler's canceller ran")
        self.assertTrue(self.contexts[0].cancelled)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.peer.session.in_flight, {})  # type: ignore[union-attr]
        self.contexts[0].progress(1)
        self.assertEqual(self.peer.notes, [], "no progress after cancellation")

    def test_cancelling_another_id_or_session_changes_nothing(self) -> None:
        message = self.peer.message("tools/call", {"name": "wait"})
        d = self.peer.start(message)
        self.cancel(message["id"] + 100)
        other = Peer(self, self.peer.engine)
        other.initialize()
        self.cancel(message["id"], other)
        self.assertNoResult(d)
        self.assertFalse(self.contexts[0].cancelled)
        self.assertEqual(self.cancelled, [])

    def test_closing_the_session_cancels_its_calls(self) -> None:
        d = self.peer.start(self.peer.message("tools/call", {"name": "wait"}))
        self.peer.session.close()  # type: ignore[union-attr]
        self.assertIsNone(self.successResultOf(d))
        self.assertTrue(self.contexts[0].cancelled)
        self.assertTrue(self.peer.session.idle)  # type: ignore[union-attr]

    def test_finished_calls_leave_nothing_in_flight(self) -> None:
        d = self.peer.start(self.peer.message("tools/call", {"name": "wait"}))
        self.assertEqual(len(self.peer.session.in_flight), 1)  # type: ignore[union-attr]
        self.pending[0].callback("answered")
        self.assertEqual(text_of(self.successResultOf(d)["result"]), "answered")
        self.assertEqual(self.peer.session.in_flight, {})  # type: ignore[union-attr]
        self.assertFalse(self.contexts[0].cancelled)


class BlockingToolTests(TestCase):
    """Blocking handlers run in the daemon's thread pool (real reactor: results hop back to it)."""

    def setUp(self) -> None:
        self.pool = ToolThreads(2, "test-tools")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.threads: list[threading.Thread] = []
        self.started: Deferred[ToolContext] = Deferred()
        self.observed: Deferred[bool] = Deferred()
        pack = ToolPack("threads")

        @pack.tool("where", description="Say which thread ran this.", blocking=True)
        def where(ctx: ToolContext, arguments: dict[str, Any]) -> str:
            self.threads.append(threading.current_thread())
            ctx.progress(1, 2)
            ctx.progress(2, 2)
            return "done"

        @pack.tool("poll", description="Work until cancelled.", blocking=True)
        def poll(ctx: ToolContext, arguments: dict[str, Any]) -> str:
            reactor.callFromThread(self.started.callback, ctx)
            cancelled = ctx.wait_cancelled(5)
            reactor.callFromThread(self.observed.callback, cancelled and ctx.cancelled)
            ctx.raise_if_cancelled()
            return "finished without being cancelled"

        self.peer = Peer(self, make_engine(pack, thread_pool=self.pool))
        self.peer.initialize()

    async def test_runs_off_the_reactor_thread(self) -> None:
        message = self.peer.message("tools/call", {"name": "where"}, meta={"progressToken": "t"})
        response = await self.peer.start(message)
        self.assertEqual(text_of(response["result"]), "done")
        self.assertEqual(len(self.threads), 1)
        self.assertIsNot(self.threads[0], threading.main_thread())
        self.assertEqual([note["params"]["progress"] for note in self.peer.notes], [1, 2])

    async def test_cancelling_is_visible_to_the_polling_thread(self) -> None:
        message = self.peer.message("tools/call", {"name": "poll"})
        d = self.peer.start(message)
        ctx = await self.started
        self.assertFalse(ctx.cancelled)
        self.peer.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": message["id"]}})
        self.assertIsNone(await d)
        self.assertTrue(await self.observed)


class ToolFilterTests(SynchronousTestCase):
    """The hook the security layer uses: a caller sees and calls only the tools it may."""

    def setUp(self) -> None:
        only_greet = lambda caller, tool: tool.name == "greet"  # noqa: E731
        self.engine = make_engine(tool_filter=only_greet)
        self.records: list[CallRecord] = []
        self.engine.observers.append(self.records.append)
        self.peer = Peer(self, self.engine)
        self.peer.initialize()

    def test_list_shows_only_allowed_tools(self) -> None:
        self.assertEqual([tool["name"] for tool in self.peer.result("tools/list")["tools"]], ["greet"])

    def test_a_forbidden_tool_is_answered_as_unknown_and_recorded_as_denied(self) -> None:
        forbidden = self.peer.request("tools/call", {"name": "echo", "arguments": {"text": "x"}})
        unknown = self.peer.request("tools/call", {"name": "nope"})
        self.assertEqual(error_code(forbidden), errors.INVALID_PARAMS)
        self.assertEqual(forbidden["error"]["message"].replace("echo", "nope"), unknown["error"]["message"])
        self.assertEqual([r.outcome for r in self.records if r.method == "tools/call"], ["denied", "error"])
        self.assertEqual(self.records[-2].tool, "echo")

    def test_allowed_tool_is_called(self) -> None:
        self.assertEqual(self.peer.call("greet")["content"][0]["text"], "hello")


class ObserverTests(SynchronousTestCase):
    """Every request is reported once to the observers, with its outcome."""

    def test_client_answers_are_not_requests(self) -> None:
        engine = make_engine()
        records: list[CallRecord] = []
        engine.observers.append(records.append)
        peer = Peer(self, engine)
        peer.initialize()
        self.assertIsNone(peer.send({"jsonrpc": "2.0", "id": "mcpd-1", "result": {}}))
        self.assertEqual([r.method for r in records], ["initialize"])

    def test_tool_timeout_runs_on_the_engine_clock(self) -> None:
        clock = Clock()
        pack = ToolPack("slow", "A tool that never answers.")
        pack.add(Tool(name="never", description="Never answers.", handler=lambda ctx, arguments: Deferred()))
        engine = make_engine(pack, clock=clock, tool_timeout=2.0)
        peer = Peer(self, engine)
        peer.initialize()
        d = peer.start(peer.message("tools/call", {"name": "never"}))
        clock.advance(1.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        result = self.successResultOf(d)["result"]
        self.assertTrue(result["isError"])
        self.assertIn("timed out after 2 seconds", result["content"][0]["text"])

    def test_outcomes(self) -> None:
        engine = make_engine()
        records: list[CallRecord] = []
        engine.observers.append(records.append)
        peer = Peer(self, engine)
        peer.initialize()
        peer.call("greet")
        peer.call("refuse")
        peer.request("tools/call", {"name": "missing"})
        peer.request("no/such/method")
        self.assertEqual(
            [(r.method, r.tool, r.outcome) for r in records],
            [
                ("initialize", None, "ok"),
                ("tools/call", "greet", "ok"),
                ("tools/call", "refuse", "tool_error"),
                ("tools/call", "missing", "error"),
                ("no/such/method", None, "error"),
            ],
        )
        self.assertTrue(all(r.duration >= 0 and r.caller.name == "tester" for r in records))
        self.assertEqual(records[1].version, LATEST_LEGACY)

    def test_what_the_client_chose_is_kept_short(self) -> None:
        """The audit buffer and the recent-requests ring keep records: a client's huge method
        name, tool name or id must not be kept whole."""
        engine = make_engine()
        records: list[CallRecord] = []
        engine.observers.append(records.append)
        peer = Peer(self, engine)
        peer.initialize()
        peer.request("x" * 100_000)
        peer.send({"jsonrpc": "2.0", "id": "i" * 100_000, "method": "tools/call", "params": {"name": "t" * 100_000}})
        self.assertEqual([len(r.method) for r in records[1:]], [129, 10])
        self.assertEqual((len(records[2].tool or ""), len(records[2].request_id)), (129, 129))

    def test_a_failing_observer_does_not_break_the_answer(self) -> None:
        engine = make_engine()

        def broken(record: CallRecord) -> None:
            raise ValueError("observer bug")

        engine.observers.append(broken)
        peer = Peer(self, engine)
        self.assertEqual(peer.initialize()["serverInfo"]["name"], "mcpd")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)  # the initialize request; not the notification
