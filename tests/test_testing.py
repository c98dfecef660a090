"""Tests for mcpd.testing: the pack harness calls tools with a caller and their stores, blocking
handlers run at once in the synchronous pool, results are checked against output schemas."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface, implementer

from mcpd.testing import HarnessError, PackHarness, SynchronousThreadPool, memory_stores
from mcpd.tools import Caller, ToolContext, ToolError, ToolPack


class ICounter(Interface):
    """A store the test pack needs."""

    def bump(name: str) -> int:
        """Add one to ``name``'s count; the new count."""


@implementer(ICounter)
class Counter:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def bump(self, name: str) -> int:
        self.counts[name] = self.counts.get(name, 0) + 1
        return self.counts[name]


COUNT = {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]}
pack = ToolPack("counting", "Counts calls per caller.", needs=(ICounter,))


@pack.tool("count", description="Count this caller's calls.", output_schema=COUNT, blocking=True)
def count(ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"count": ctx.store(ICounter).bump(ctx.caller.name)}


@pack.tool("refuse", description="Always a tool error.")
def refuse(ctx: ToolContext, arguments: dict[str, Any]) -> None:
    raise ToolError("no")


@pack.tool("lie", description="Breaks its output schema.", output_schema=COUNT)
def lie(ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"count": "many"}


class PackHarnessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.counter = Counter()
        self.harness = PackHarness(pack, stores={ICounter: self.counter})

    def test_a_blocking_tool_with_its_store_and_caller(self) -> None:
        result = self.successResultOf(self.harness.call("count"))
        self.assertEqual(result["structuredContent"], {"count": 1})
        self.assertEqual(self.harness.output_problems("count", result), [])
        alice = Caller(name="alice")
        self.assertEqual(
            self.successResultOf(self.harness.call("count", caller=alice))["structuredContent"]["count"], 1
        )
        self.assertEqual(self.counter.counts, {"tester": 1, "alice": 1})

    def test_tool_errors_and_protocol_errors(self) -> None:
        result = self.successResultOf(self.harness.call("refuse"))
        self.assertTrue(result["isError"])
        failure = self.failureResultOf(self.harness.call("nope"), HarnessError)
        self.assertEqual(failure.value.error["code"], -32602)

    def test_output_against_the_schema(self) -> None:
        result = self.successResultOf(self.harness.call("lie"))
        self.assertTrue(result["isError"])  # the engine refuses output that breaks the schema
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertNotEqual(self.harness.output_problems("count", {"structuredContent": {"count": "x"}}), [])
        self.assertEqual(
            self.harness.output_problems("count", {"content": []}),
            ["the result has no structuredContent, and the tool declares an output schema"],
        )

    def test_without_its_store_a_call_fails_clearly(self) -> None:
        result = self.successResultOf(PackHarness(pack).call("count"))
        self.assertTrue(result["isError"])


class SynchronousThreadPoolTests(SynchronousTestCase):
    def test_work_runs_at_once_and_reports(self) -> None:
        pool = SynchronousThreadPool()
        seen: list[tuple[bool, Any]] = []
        pool.callInThreadWithCallback(lambda ok, result: seen.append((ok, result)), lambda: 42)
        pool.callInThreadWithCallback(lambda ok, result: seen.append((ok, type(result.value))), lambda: 1 / 0)
        self.assertEqual(seen, [(True, 42), (False, ZeroDivisionError)])


class MemoryStoresTests(SynchronousTestCase):
    def test_one_per_interface(self) -> None:
        self.assertEqual(len(memory_stores()), 4)
