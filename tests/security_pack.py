# -*- test-case-name: tests.test_security -*-
"""A test-only tool pack for the security tests: every execution is recorded in the events
file (``MCPD_TEST_EVENTS``), so a test can prove that a refused call ran nothing."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from mcpd.tools.api import ToolAnnotations, ToolContext
from mcpd.tools.pack import ToolPack
from tests.fixture_pack import record

pack = ToolPack("sec", "Test-only tools that record their executions.")


@pack.tool("sec.record", description="Record an execution (may be destructive: admin scope).")
def record_call(ctx: ToolContext, arguments: dict[str, Any]) -> str:
    record("executed", ctx.tool.name, ctx.caller.name)
    return "recorded"


@pack.tool("sec.read", description="Record an execution; read-only.", annotations=ToolAnnotations(read_only=True))
def read_call(ctx: ToolContext, arguments: dict[str, Any]) -> str:
    record("executed", ctx.tool.name, ctx.caller.name)
    return "read"


@pack.tool("sec.slow", description="Never finish; record the cancellation.")
def slow_call(ctx: ToolContext, arguments: dict[str, Any]) -> Deferred[None]:
    record("started", ctx.tool.name, ctx.caller.name)
    return Deferred(lambda _d: record("cancelled", ctx.tool.name, ctx.caller.name))
