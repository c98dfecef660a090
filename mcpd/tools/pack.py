# -*- test-case-name: tests.test_tools -*-
"""Tool packs: a module's worth of tools, and the registry that loads packs by name."""

from __future__ import annotations

import base64
import binascii
import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mcpd.config import ConfigError
from mcpd.tools.api import EMPTY_OBJECT_SCHEMA, Handler, Tool, ToolAnnotations
from mcpd.tools.prompts import Prompt, PromptArgument, PromptHandler
from mcpd.tools.resources import Completer, Reader, Resource, ResourceTemplate

# Built-in packs chosen with --toolsets: name -> module holding a `pack`.
BUILTIN_PACKS: dict[str, str] = {
    "server": "mcpd.packs.server",
    "tasks": "mcpd.packs.tasks",
    "notes": "mcpd.packs.notes",
    "cache": "mcpd.packs.cache",
    "sql": "mcpd.packs.sql",
    "kb": "mcpd.packs.kb",
    "memory": "mcpd.packs.memory",
}


class ToolPack:
    """A named group of tools, resources, resource templates and prompts, declared in one
    module as ``pack = ToolPack(...)``.

    ``needs`` names the interfaces of `mcpd.interfaces` its handlers reach through
    ``ctx.store(IThing)``: a daemon that does not provide one refuses to serve the pack at
    start-up, in one line, rather than failing its first call."""

    def __init__(self, name: str, description: str = "", *, needs: Iterable[Any] = ()) -> None:
        self.name = name
        self.description = description
        self.needs: tuple[Any, ...] = tuple(needs)
        self._tools: list[Tool] = []
        self.resources: list[Resource] = []
        self.templates: list[ResourceTemplate] = []
        self.prompts: list[Prompt] = []

    @property
    def tools(self) -> tuple[Tool, ...]:
        """The pack's tools, in declaration order."""
        return tuple(self._tools)

    def add(self, tool: Tool) -> Tool:
        """Add an already-built tool."""
        self._tools.append(tool)
        return tool

    def tool(
        self,
        name: str,
        *,
        description: str,
        input_schema: Mapping[str, Any] = EMPTY_OBJECT_SCHEMA,
        title: str | None = None,
        output_schema: Mapping[str, Any] | None = None,
        annotations: ToolAnnotations | None = None,
        blocking: bool = False,
        task_support: str = "forbidden",
        task_start: str = "call",
    ) -> Callable[[Handler], Handler]:
        """Declare the decorated function ``handler(ctx, arguments)`` as a tool (``task_support``
        and ``task_start``: see `mcpd.tools.api.Tool` and `mcpd.protocol.tasks`)."""

        def declare(handler: Handler) -> Handler:
            self.add(
                Tool(
                    name=name,
                    description=description,
                    handler=handler,
                    input_schema=input_schema,
                    title=title,
                    output_schema=output_schema,
                    annotations=annotations,
                    blocking=blocking,
                    task_support=task_support,
                    task_start=task_start,
                )
            )
            return handler

        return declare

    def resource(
        self,
        uri: str,
        *,
        name: str,
        title: str | None = None,
        description: str | None = None,
        mime_type: str | None = None,
        size: int | None = None,
        blocking: bool = False,
    ) -> Callable[[Reader], Reader]:
        """Declare the decorated ``reader(ctx, uri)`` as the resource at ``uri``."""

        def declare(reader: Reader) -> Reader:
            self.resources.append(Resource(uri, name, reader, title, description, mime_type, size, blocking=blocking))
            return reader

        return declare

    def resource_template(
        self,
        uri_template: str,
        *,
        name: str,
        title: str | None = None,
        description: str | None = None,
        mime_type: str | None = None,
        completions: Mapping[str, Completer] | None = None,
        blocking: bool = False,
        readers_only: bool = False,
    ) -> Callable[[Reader], Reader]:
        """Declare the decorated ``reader(ctx, uri, variables)`` for every URI the template matches
        (``readers_only``: subscribing to one needs what reading it needs)."""

        def declare(reader: Reader) -> Reader:
            self.templates.append(
                ResourceTemplate(
                    uri_template,
                    name,
                    reader,
                    title,
                    description,
                    mime_type,
                    completions=dict(completions or {}),
                    blocking=blocking,
                    readers_only=readers_only,
                )
            )
            return reader

        return declare

    def prompt(
        self,
        name: str,
        *,
        description: str | None = None,
        title: str | None = None,
        arguments: Iterable[PromptArgument] = (),
        blocking: bool = False,
    ) -> Callable[[PromptHandler], PromptHandler]:
        """Declare the decorated ``handler(ctx, arguments)`` as a prompt."""

        def declare(handler: PromptHandler) -> PromptHandler:
            self.prompts.append(Prompt(name, handler, description, title, tuple(arguments), blocking))
            return handler

        return declare


class PackLoadError(ConfigError):
    """A pack could not be found or is not a pack; the message names it and says why."""


def load_pack(reference: str) -> ToolPack:
    """Import a pack by built-in name (``server``) or dotted module path (``my.tools``).

    A module path may end in ``:attribute``; otherwise the module's ``pack`` attribute is used.
    """
    module_name, _, attribute = BUILTIN_PACKS.get(reference, reference).partition(":")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError, TypeError) as e:  # "" and ".relative" raise these
        raise PackLoadError(f"tool pack {reference!r} cannot be imported: {e}") from None
    pack = getattr(module, attribute or "pack", None)
    if not isinstance(pack, ToolPack):
        raise PackLoadError(
            f"tool pack {reference!r}: module {module_name} has no ToolPack named {attribute or 'pack'!r}"
        )
    return pack


class ToolRegistry:
    """Every tool the daemon serves, by name, in a deterministic (sorted) order."""

    def __init__(self, packs: Iterable[ToolPack] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        self._pack_of: dict[str, str] = {}
        self._ordered: list[Tool] = []
        self.resources: dict[str, Resource] = {}
        self.templates: list[ResourceTemplate] = []
        self.prompts: dict[str, Prompt] = {}
        # The pack of every resource, template and prompt (by identity), for scope checks.
        self._entry_pack: dict[int, str] = {}
        for pack in packs:
            self.add_pack(pack)

    def add_pack(self, pack: ToolPack) -> None:
        """Register every tool of ``pack``; a name may only be taken once."""
        for tool in pack.tools:
            if tool.name in self._tools:
                raise PackLoadError(
                    f"tool {tool.name!r} of pack {pack.name!r} clashes with pack {self._pack_of[tool.name]!r}"
                )
            self._tools[tool.name] = tool
            self._pack_of[tool.name] = pack.name
        self._ordered = [self._tools[name] for name in sorted(self._tools)]
        for entry in (*pack.resources, *pack.templates, *pack.prompts):
            self._entry_pack[id(entry)] = pack.name
        for resource in pack.resources:
            if resource.uri in self.resources:
                raise PackLoadError(f"resource {resource.uri!r} of pack {pack.name!r} is declared twice")
            self.resources[resource.uri] = resource
        self.resources = dict(sorted(self.resources.items()))
        self.templates = sorted(self.templates + pack.templates, key=lambda t: t.uri_template)
        for prompt in pack.prompts:
            if prompt.name in self.prompts:
                raise PackLoadError(f"prompt {prompt.name!r} of pack {pack.name!r} is declared twice")
            self.prompts[prompt.name] = prompt
        self.prompts = dict(sorted(self.prompts.items()))

    def entry_pack(self, entry: Any) -> str | None:
        """The pack that declared a resource, template or prompt."""
        return self._entry_pack.get(id(entry))

    def find_resource(self, uri: str) -> tuple[Resource | ResourceTemplate, dict[str, str] | None] | None:
        """The resource at ``uri``, or the first template matching it with its variables."""
        resource = self.resources.get(uri)
        if resource is not None:
            return resource, None
        for template in self.templates:
            variables = template.match(uri)
            if variables is not None:
                return template, variables
        return None

    def template(self, uri_template: str) -> ResourceTemplate | None:
        """The template declared with exactly this URI template."""
        return next((t for t in self.templates if t.uri_template == uri_template), None)

    def __len__(self) -> int:
        return len(self._tools)

    def get(self, name: str) -> Tool | None:
        """The tool called ``name``, if there is one."""
        return self._tools.get(name)

    def pack_of(self, name: str) -> str:
        """The name of the pack that provided tool ``name``."""
        return self._pack_of[name]

    @property
    def tools(self) -> list[Tool]:
        """All tools, sorted by name."""
        return self._ordered

    def page(
        self, cursor: str | None, size: int, visible: Callable[[Tool], bool] | None = None
    ) -> tuple[list[Tool], str | None]:
        """One page of tools after ``cursor`` and the cursor of the next page, if any.

        The cursor is opaque to clients; it names the last tool shown, so a page stays correct
        when tools are added or removed between requests. A cursor that is not ours raises
        `ValueError`.
        """
        tools = self._ordered if visible is None else [tool for tool in self._ordered if visible(tool)]
        return paginate(tools, lambda tool: tool.name, cursor, size)


def paginate(
    items: list[Any], key: Callable[[Any], str], cursor: str | None, size: int
) -> tuple[list[Any], str | None]:
    """One page of ``items`` (sorted by ``key``) after ``cursor``, and the next page's cursor.

    `ValueError` for a cursor we did not issue.
    """
    start = 0
    if cursor is not None:
        after = decode_cursor(cursor)
        start = next((i for i, item in enumerate(items) if key(item) > after), len(items))
    page = items[start : start + size]
    more = start + size < len(items)
    return page, (encode_cursor(key(page[-1])) if more and page else None)


def encode_cursor(after: str) -> str:
    """An opaque cursor pointing after ``after``."""
    return base64.urlsafe_b64encode(b"after:" + after.encode()).decode()


def decode_cursor(cursor: str) -> str:
    """The name a cursor points after; `ValueError` for anything we did not issue."""
    try:
        raw = base64.urlsafe_b64decode(cursor.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError("cursor is not valid") from None
    if not raw.startswith(b"after:"):
        raise ValueError("cursor is not valid")
    return raw[len(b"after:") :].decode("utf-8", "replace")
