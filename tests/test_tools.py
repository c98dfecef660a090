"""Tests for mcpd.tools.api and mcpd.tools.pack: declaring tools, shaping results, loading packs."""

from __future__ import annotations

import enum
import json
import threading
import time
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

import mcpd.packs.server
from mcpd.protocol.versions import LATEST_LEGACY
from mcpd.tools import (
    Caller,
    PackLoadError,
    Tool,
    ToolAnnotations,
    ToolContext,
    ToolPack,
    ToolRegistry,
    ToolResult,
    load_pack,
)
from mcpd.tools.api import error_result, invoke
from mcpd.tools.pack import decode_cursor, encode_cursor
from tests.engine_harness import Peer, assert_valid, make_engine, text_of

COUNT_OUTPUT = {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]}


def handler(ctx: ToolContext, arguments: dict[str, Any]) -> str:
    return "ok"


def make_tool(name: str = "t", **kwargs: Any) -> Tool:
    return Tool(name=name, description="A tool.", handler=handler, **kwargs)


def pack_of(name: str, *tool_names: str) -> ToolPack:
    pack = ToolPack(name, f"The {name} pack.")
    for tool_name in tool_names:
        pack.add(make_tool(tool_name))
    return pack


# Loaded by name in LoadPackTests.
extra_pack = pack_of("extra", "extra.one")
not_a_pack = "just a string"


class ToolDeclarationTests(SynchronousTestCase):
    def test_valid_names(self) -> None:
        for name in ("a", "server.info", "my-tool_2", "Get.Weather-v2", "x" * 128):
            self.assertEqual(make_tool(name).name, name)

    def test_invalid_names(self) -> None:
        for name in ("", "has space", "x" * 129, "slash/name", "ünïcode", "tab\tname", "new\nline"):
            with self.assertRaises(ValueError) as caught:
                make_tool(name)
            self.assertIn("1-128 characters", str(caught.exception))

    def test_input_schema_must_be_an_object_schema(self) -> None:
        for schema in ({"type": "string"}, {}, ["type", "object"], {"type": ["object", "null"]}):
            with self.assertRaises(ValueError) as caught:
                make_tool(input_schema=schema)
            self.assertIn("input_schema", str(caught.exception))

    def test_input_schema_must_be_a_valid_schema(self) -> None:
        for schema in ({"type": "object", "properties": 5}, {"type": "object", "required": "name"}):
            with self.assertRaises(ValueError) as caught:
                make_tool(input_schema=schema)
            self.assertIn("input_schema is not a valid JSON Schema", str(caught.exception))

    def test_a_schema_must_be_plain_json(self) -> None:
        """A value tools/list could not send as it is (it would send ``null`` for NaN, the
        number for an enum member) is refused at declaration, naming where it is: the daemon
        refuses to start rather than fail each call of the tool (-32603)."""

        class Priority(enum.IntEnum):
            HIGH = 1

        cases = [
            ({"default": Priority.HIGH, "minimum": 0}, "/properties/p/default: <Priority.HIGH: 1> (Priority)"),
            ({"minimum": float("inf")}, "/properties/p/minimum: inf is not a JSON number"),
            ({"maximum": float("nan")}, "/properties/p/maximum: nan is not a JSON number"),
            ({"enum": ("a", "b")}, "/properties/p/enum: ('a', 'b') (tuple)"),
            ({"default": {1: "x"}}, "/properties/p/default: key 1 is not a string"),
        ]
        for field in ("input_schema", "output_schema"):
            for subschema, where in cases:
                with self.assertRaises(ValueError) as caught:
                    make_tool(**{field: {"type": "object", "properties": {"p": subschema}}})
                self.assertIn(f"{field} is not plain JSON: {where}", str(caught.exception))

    def test_output_schema_is_checked_the_same_way(self) -> None:
        with self.assertRaises(ValueError) as caught:
            make_tool(output_schema={"type": "array"})
        self.assertIn("output_schema", str(caught.exception))
        with self.assertRaises(ValueError):
            make_tool(output_schema={"type": "object", "properties": {"n": {"type": "integr"}}})

    def test_pack_decorator_validates_at_declaration(self) -> None:
        pack = ToolPack("p")
        with self.assertRaises(ValueError):
            pack.tool("bad name", description="x")(handler)
        self.assertEqual(pack.tools, ())


class DescriptorTests(SynchronousTestCase):
    def test_minimal_descriptor(self) -> None:
        self.assertEqual(
            make_tool("plain").descriptor,
            {"name": "plain", "description": "A tool.", "inputSchema": {"type": "object", "properties": {}}},
        )

    def test_full_descriptor(self) -> None:
        tool = make_tool(
            "full",
            title="Full tool",
            input_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
            output_schema=COUNT_OUTPUT,
            annotations=ToolAnnotations(title="Full", read_only=True, open_world=False),
        )
        descriptor = tool.descriptor
        self.assertEqual(descriptor["title"], "Full tool")
        self.assertEqual(descriptor["inputSchema"]["properties"], {"n": {"type": "integer"}})
        self.assertEqual(descriptor["outputSchema"], COUNT_OUTPUT)
        self.assertEqual(descriptor["annotations"], {"title": "Full", "readOnlyHint": True, "openWorldHint": False})
        response = {"jsonrpc": "2.0", "id": 1, "result": {"tools": [descriptor]}}
        for version in ("2025-06-18", LATEST_LEGACY):
            assert_valid(self, version, response, "tools/list")

    def test_annotations_carry_only_given_hints(self) -> None:
        self.assertEqual(ToolAnnotations().to_json(), {})
        self.assertEqual(ToolAnnotations(destructive=False).to_json(), {"destructiveHint": False})
        self.assertEqual(
            ToolAnnotations(read_only=False, destructive=True, idempotent=True, open_world=True).to_json(),
            {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": True, "openWorldHint": True},
        )

    def test_argument_problems_name_the_path(self) -> None:
        tool = make_tool(
            input_schema={
                "type": "object",
                "properties": {"items": {"type": "array", "items": {"type": "integer"}}},
                "required": ["items"],
            }
        )
        self.assertEqual(tool.argument_problems({"items": [1, 2]}), [])
        self.assertEqual(tool.argument_problems({"items": [1, "x"]}), ["items/1: 'x' is not of type 'integer'"])
        self.assertEqual(tool.argument_problems({}), ["'items' is a required property"])


class ResultShapeTests(SynchronousTestCase):
    """What handlers return, as tools/call shows it (2025-11-25 server/tools §Tool Result)."""

    def serve(self, value: Any, output_schema: dict[str, Any] | None = None) -> dict[str, Any]:
        pack = ToolPack("shapes")
        pack.tool("shape", description="Return a fixed value.", output_schema=output_schema)(
            lambda ctx, arguments: value
        )
        peer = Peer(self, make_engine(pack))
        peer.initialize()
        return peer.call("shape")

    def test_output_that_breaks_the_schema_is_a_tool_error(self) -> None:
        result = self.serve({"count": "many"}, COUNT_OUTPUT)
        self.assertTrue(result["isError"])
        self.assertNotIn("structuredContent", result)
        self.assertIn("shape failed unexpectedly", text_of(result))
        [logged] = self.flushLoggedErrors(ValueError)
        self.assertIn("breaks its schema", str(logged.value))

    def test_output_that_fits_the_schema(self) -> None:
        result = self.serve({"count": 3}, COUNT_OUTPUT)
        self.assertEqual(result["structuredContent"], {"count": 3})
        self.assertEqual(json.loads(text_of(result)), {"count": 3})

    def test_tool_result_passes_through(self) -> None:
        image = {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"}
        result = self.serve(ToolResult(content=[image], structured={"count": 1}, is_error=False), COUNT_OUTPUT)
        self.assertEqual(result, {"content": [image], "structuredContent": {"count": 1}})

    def test_tool_result_error_skips_the_output_schema(self) -> None:
        result = self.serve(ToolResult.text("the service is down", is_error=True), COUNT_OUTPUT)
        self.assertEqual(result, {"content": [{"type": "text", "text": "the service is down"}], "isError": True})

    def test_content_block_and_none(self) -> None:
        block = {"type": "text", "text": "as is"}
        self.assertEqual(self.serve(block), {"content": [block]})
        self.assertEqual(self.serve(None), {"content": []})

    def test_other_values_become_json_text(self) -> None:
        self.assertEqual(json.loads(text_of(self.serve({"count": 2}))), {"count": 2})
        self.assertEqual(json.loads(text_of(self.serve([1, "two"]))), [1, "two"])

    def test_a_value_json_cannot_carry_is_named(self) -> None:
        """A set or bytes in a tool's value: the tool error names the type (json's own TypeError),
        not "'NoneType' object is not callable" from an encoder made without a default."""
        for value, kind in (({"ids": {1, 2}}, "set"), ({"raw": b"x"}, "bytes")):
            result = self.serve(value)
            self.assertTrue(result["isError"])
            self.assertIn(f"Object of type {kind} is not JSON serializable", text_of(result))
            self.assertNotIn("NoneType", text_of(result))

    def test_error_result(self) -> None:
        self.assertEqual(error_result("no"), {"content": [{"type": "text", "text": "no"}], "isError": True})


class ContextAndInvokeTests(SynchronousTestCase):
    def context(self, tool: Tool | None = None) -> ToolContext:
        return ToolContext(tool=tool or make_tool(), request_id=1, caller=Caller(name="me"))

    def test_cancellation_flag(self) -> None:
        ctx = self.context(make_tool(blocking=True))
        self.assertFalse(ctx.cancelled)
        self.assertFalse(ctx.wait_cancelled(0))
        ctx.raise_if_cancelled()
        ctx.mark_cancelled()
        self.assertTrue(ctx.cancelled)
        self.assertTrue(ctx.wait_cancelled(0))
        self.assertRaises(CancelledError, ctx.raise_if_cancelled)

    def test_wait_after_cancellation_returns_at_once(self) -> None:
        # The Event is made by the first wait: one made after the cancellation starts set.
        ctx = self.context(make_tool(blocking=True))
        ctx.mark_cancelled()
        self.assertTrue(ctx.wait_cancelled(None))

    def test_cancellation_wakes_a_waiting_thread(self) -> None:
        ctx = self.context(make_tool(blocking=True))
        woke: list[bool] = []
        waiter = threading.Thread(target=lambda: woke.append(ctx.wait_cancelled(30)))
        waiter.start()
        self.addCleanup(waiter.join)
        while ctx._cancel_event is None:
            time.sleep(0.001)  # until the waiter has made its Event
        ctx.mark_cancelled()
        waiter.join(30)
        self.assertEqual(woke, [True])

    def test_reactor_side_tools_may_not_block_on_cancellation(self) -> None:
        ctx = self.context()
        self.assertRaises(RuntimeError, ctx.wait_cancelled, 0)
        ctx.mark_cancelled()
        self.assertTrue(ctx.cancelled)

    def test_progress_without_a_sink_is_a_no_op(self) -> None:
        ctx = self.context()
        self.assertFalse(ctx.reports_progress)
        ctx.progress(1, 2, "fine")

    def test_invoke_passes_context_and_arguments(self) -> None:
        seen: list[Any] = []
        tool = Tool(name="t", description="d", handler=lambda ctx, arguments: seen.append((ctx, arguments)) or 7)
        ctx = self.context(tool)
        self.assertEqual(self.successResultOf(invoke(tool, ctx, {"a": 1}, None)), 7)
        self.assertEqual(seen, [(ctx, {"a": 1})])

    def test_cancelling_invoke_cancels_the_handler_and_marks_the_context(self) -> None:
        cancelled: list[Deferred[Any]] = []
        inner: Deferred[Any] = Deferred(cancelled.append)
        tool = Tool(name="t", description="d", handler=lambda ctx, arguments: inner)
        ctx = self.context(tool)
        d = invoke(tool, ctx, {}, None)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(cancelled, [inner])
        self.assertTrue(ctx.cancelled)

    def test_blocking_tool_needs_a_pool(self) -> None:
        tool = make_tool(blocking=True)
        self.assertRaises(RuntimeError, invoke, tool, self.context(tool), {}, None)


class RegistryTests(SynchronousTestCase):
    def test_tools_are_sorted_whatever_the_pack_order(self) -> None:
        first = ToolRegistry([pack_of("b", "zeta", "alpha"), pack_of("a", "mid")])
        second = ToolRegistry([pack_of("a", "mid"), pack_of("b", "zeta", "alpha")])
        for registry in (first, second):
            self.assertEqual([t.name for t in registry.tools], ["alpha", "mid", "zeta"])
            self.assertEqual(len(registry), 3)
            self.assertEqual(registry.pack_of("mid"), "a")
            self.assertEqual(registry.get("zeta").name, "zeta")  # type: ignore[union-attr]
            self.assertIsNone(registry.get("omega"))

    def test_name_clash_between_packs(self) -> None:
        registry = ToolRegistry([pack_of("first", "shared", "own")])
        with self.assertRaises(PackLoadError) as caught:
            registry.add_pack(pack_of("second", "shared"))
        message = str(caught.exception)
        for part in ("'shared'", "'first'", "'second'"):
            self.assertIn(part, message)
        self.assertEqual(registry.pack_of("shared"), "first")

    def test_pages_follow_the_names_not_positions(self) -> None:
        registry = ToolRegistry([pack_of("p", "a", "b", "c", "d")])
        page, cursor = registry.page(None, 2)
        self.assertEqual([t.name for t in page], ["a", "b"])
        # A tool added before the cursor between requests shifts no one.
        registry.add_pack(pack_of("q", "aa"))
        page, cursor = registry.page(cursor, 2)
        self.assertEqual([t.name for t in page], ["c", "d"])
        self.assertIsNone(cursor)
        self.assertEqual(registry.page(encode_cursor("zzz"), 2), ([], None))

    def test_cursors_round_trip_and_foreign_ones_fail(self) -> None:
        self.assertEqual(decode_cursor(encode_cursor("server.info")), "server.info")
        for foreign in ("", "abc", "é", encode_cursor("x")[:-3] + "###"):
            self.assertRaises(ValueError, decode_cursor, foreign)


class LoadPackTests(SynchronousTestCase):
    def test_builtin_name(self) -> None:
        pack = load_pack("server")
        self.assertIs(pack, mcpd.packs.server.pack)
        self.assertEqual({t.name for t in pack.tools}, {"server.audit", "server.info", "server.tools"})

    def test_dotted_module_uses_its_pack(self) -> None:
        self.assertIs(load_pack("mcpd.packs.server"), mcpd.packs.server.pack)

    def test_module_and_attribute(self) -> None:
        self.assertIs(load_pack("tests.test_tools:extra_pack"), extra_pack)

    def test_missing_module(self) -> None:
        with self.assertRaises(PackLoadError) as caught:
            load_pack("no_such_module.tools")
        self.assertIn("'no_such_module.tools' cannot be imported", str(caught.exception))

    def test_unimportable_names_are_pack_errors(self) -> None:
        for reference in (":pack", ".relative"):
            with self.assertRaises(PackLoadError) as caught:
                load_pack(reference)
            self.assertIn(repr(reference), str(caught.exception))

    def test_missing_or_wrong_attribute(self) -> None:
        cases = {
            "mcpd.tools.api": "no ToolPack named 'pack'",
            "tests.test_tools:nothing": "no ToolPack named 'nothing'",
            "tests.test_tools:not_a_pack": "no ToolPack named 'not_a_pack'",
        }
        for reference, expected in cases.items():
            with self.assertRaises(PackLoadError) as caught:
                load_pack(reference)
            self.assertIn(expected, str(caught.exception))
