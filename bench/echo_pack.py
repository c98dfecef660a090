"""The ``bench`` tool pack: one trivial ``echo`` tool, so a benchmark measures the server, not a tool.

Load it with ``mcpd --tool-pack bench.echo_pack`` (the repository root on ``PYTHONPATH``);
``MCPD_ECHO_BLOCKING=1`` declares the tool blocking (run in the thread pool), as the shared
instrument's anchor does.
"""

from __future__ import annotations

import os
from typing import Any

from mcpd.tools import ToolAnnotations, ToolContext, ToolPack

pack = ToolPack("bench", "A trivial tool for benchmarking the server's request path.")


@pack.tool(
    "echo",
    description="Return the given text unchanged.",
    input_schema={
        "type": "object",
        "properties": {"text": {"type": "string", "description": "The text to send back."}},
        "required": ["text"],
        "additionalProperties": False,
    },
    annotations=ToolAnnotations(read_only=True, destructive=False, idempotent=True, open_world=False),
    blocking=os.environ.get("MCPD_ECHO_BLOCKING") == "1",
)
def echo(ctx: ToolContext, arguments: dict[str, Any]) -> str:
    """Send ``text`` back as the call's single text block."""
    return str(arguments["text"])
