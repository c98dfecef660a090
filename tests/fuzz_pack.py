# -*- test-case-name: tests.test_fuzz -*-
"""A test-only tool pack for the fuzz suite: tools that send back what they were given.

``fuzz.echo`` returns its arguments unchanged as ``structuredContent`` (and as text), so every
value a client can send (huge integers, NUL, astral and odd Unicode, deep nesting) goes through
mcpd's output encoding on every transport; ``fuzz.progress`` reports progress first, so a
Streamable HTTP answer turns into an SSE stream.
"""

from __future__ import annotations

from typing import Any

from mcpd.tools.api import ToolAnnotations, ToolContext
from mcpd.tools.pack import ToolPack

pack = ToolPack("fuzz", "Test-only tools that echo their arguments.")

_READ_ONLY = ToolAnnotations(read_only=True, destructive=False, idempotent=True, open_world=False)


@pack.tool(
    "fuzz.echo",
    description="Return the arguments unchanged.",
    input_schema={"type": "object"},
    output_schema={"type": "object"},
    annotations=_READ_ONLY,
)
def echo(ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    return arguments


@pack.tool(
    "fuzz.progress",
    description="Report progress once, then return the arguments unchanged.",
    input_schema={"type": "object"},
    output_schema={"type": "object"},
    annotations=_READ_ONLY,
)
def progress(ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    ctx.progress(1, 2, "halfway")
    return arguments
