"""The pack-author API: everything a pack module needs, and nothing of the engine.

Pack authors import from here (and the store interfaces they need from `mcpd.interfaces`)::

    from mcpd.interfaces import INoteStore  # the store a notes pack would need
    from mcpd.tools import ToolPack, ToolAnnotations, ToolError

    pack = ToolPack("notes", "Team notes", needs=(INoteStore,))

    @pack.tool("notes.add", description="Add a note.", input_schema={...})
    def add(ctx, arguments):
        ...
"""

from mcpd.tools.api import (
    Caller,
    RequestContext,
    StoreNotConfigured,
    Tool,
    ToolAnnotations,
    ToolContext,
    ToolError,
    ToolResult,
)
from mcpd.tools.pack import PackLoadError, ToolPack, ToolRegistry, load_pack
from mcpd.tools.prompts import PromptArgument
from mcpd.tools.validation import object_schema

__all__ = [
    "Caller",
    "PackLoadError",
    "PromptArgument",
    "RequestContext",
    "StoreNotConfigured",
    "Tool",
    "ToolAnnotations",
    "ToolContext",
    "ToolError",
    "ToolPack",
    "ToolRegistry",
    "ToolResult",
    "object_schema",
    "load_pack",
]
