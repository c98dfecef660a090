# -*- test-case-name: tests.test_codec -*-
"""A test-only tool pack for the wire tests: tools that send back what they were given, and
tools whose results JSON cannot carry as they are (NaN, a lone surrogate, a Python set)."""

from __future__ import annotations

from typing import Any

from mcpd.tools.api import ToolContext, ToolResult
from mcpd.tools.pack import ToolPack

pack = ToolPack("wire", "Test-only tools that return awkward values.")

_ANY_OBJECT = {"type": "object"}


@pack.tool("wire.echo", description="Return the arguments as structured content.", output_schema=_ANY_OBJECT)
def echo(ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    return arguments


@pack.tool("wire.nan", description="Return NaN as structured content.", output_schema=_ANY_OBJECT)
def nan(ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"value": float("nan"), "limit": float("inf")}


@pack.tool("wire.nan_block", description="Return a content block whose annotation is NaN.")
def nan_block(ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    return ToolResult(content=[{"type": "text", "text": "x", "annotations": {"priority": float("nan")}}])


@pack.tool(
    "wire.surrogate", description="Return text holding a lone surrogate (a file name read with surrogateescape)."
)
def surrogate(ctx: ToolContext, arguments: dict[str, Any]) -> str:
    return b"report-\xff.txt".decode("utf-8", "surrogateescape")


@pack.tool("wire.set", description="Return a Python set, which is not JSON.", output_schema=_ANY_OBJECT)
def python_set(ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"items": {1, 2}}
