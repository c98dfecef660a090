"""The tool API and the built-in tool packs.

Pack authors import from here::

    from mcpd.tools import ToolPack, ToolAnnotations, ToolError

    pack = ToolPack("notes", "Team notes")

    @pack.tool("notes.add", description="Add a note.", input_schema={...})
    def add(ctx, arguments):
        ...
"""

from mcpd.tools.api import (
    Caller,
    Tool,
    ToolAnnotations,
    ToolContext,
    ToolError,
    ToolResult,
)
from mcpd.tools.pack import PackLoadError, ToolPack, ToolRegistry, load_pack

__all__ = [
    "Caller",
    "PackLoadError",
    "Tool",
    "ToolAnnotations",
    "ToolContext",
    "ToolError",
    "ToolPack",
    "ToolRegistry",
    "ToolResult",
    "load_pack",
]
