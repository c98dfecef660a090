# -*- test-case-name: tests.test_server_pack -*-
"""The ``server`` pack: what this mcpd is, which tools it offers, and its audit trail."""

from __future__ import annotations

import datetime
import fnmatch
import re
from collections.abc import Callable
from typing import Any

from mcpd.interfaces import IAuditLog, IRuntime, IStore
from mcpd.tools import StoreNotConfigured, ToolAnnotations, ToolContext, ToolError, ToolPack
from mcpd.tools.paging import CURSOR_SCHEMA, NEXT_CURSOR_SCHEMA, decode_cursor, encode_cursor, limit_of, limit_schema

pack = ToolPack("server", "Introspection of the mcpd server itself.", needs=(IRuntime,))

READ_ONLY = ToolAnnotations(read_only=True, destructive=False, idempotent=True, open_world=False)

_STRINGS = {"type": "array", "items": {"type": "string"}}


@pack.tool(
    "server.info",
    title="Server information",
    description=(
        "Describe this MCP server: its version, how long it has been up, the protocol versions "
        "it speaks, its transports and listening addresses, how many tools it offers, and the "
        "stores behind them with their state. Example: {}."
    ),
    output_schema={
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "uptime_seconds": {"type": "number"},
            "protocol_versions": {
                "type": "object",
                "properties": {"legacy": _STRINGS, "modern": _STRINGS},
                "required": ["legacy", "modern"],
            },
            "transports": _STRINGS,
            "listeners": _STRINGS,
            "tool_count": {"type": "integer"},
            "toolsets": _STRINGS,
            "stores": {
                "type": "array",
                "description": "The stores behind the packs and their state (ok, down, starting, stopped).",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "backend": {"type": "string"},
                        "state": {"type": "string"},
                    },
                    "required": ["name", "state"],
                },
            },
        },
        "required": ["name", "version", "uptime_seconds", "protocol_versions", "transports", "tool_count"],
    },
    annotations=READ_ONLY,
)
def info(ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    runtime = _runtime(ctx)
    return {
        "name": "mcpd",
        "version": runtime.version,
        "uptime_seconds": round(runtime.uptime(), 3),
        "protocol_versions": runtime.protocol_versions(),
        "transports": list(runtime.transports),
        "listeners": list(runtime.listeners),
        "tool_count": len(runtime.registry),
        "toolsets": list(runtime.settings.toolsets or ()) + list(runtime.settings.tool_pack),
        "stores": _stores(runtime.stores),
    }


def _stores(stores: Any) -> list[dict[str, Any]]:
    """Each store's state. Under --stdio the search index opens with the database, in the
    background, behind stand-ins that are no stores themselves (`mcpd.stores.opening`): each
    opened store found behind one is shown too."""
    shown = stores.describe()
    names = {store["name"] for store in shown}
    for provider in stores.providers().values():
        opened = getattr(provider, "provider", None)
        if opened is not None and IStore.providedBy(opened):
            described = opened.describe()
            if described["name"] not in names:
                names.add(described["name"])
                shown.append(described)
    return shown


@pack.tool(
    "server.tools",
    title="List tools with annotations",
    description=(
        "List the tools this server offers with their titles, packs and behaviour hints. "
        "Filter by name (a part of it, or a glob such as cache.*), by pack, or by hint: "
        "read_only true for tools that change nothing, destructive false for tools that destroy "
        'nothing. Example: {"name": "cache.*", "read_only": true}.'
    ),
    input_schema={
        "type": "object",
        "properties": {
            "name": {
                "type": "string",
                "maxLength": 128,
                "description": "Only tools whose name contains this, or matches it as a glob (*, ?, [...]).",
            },
            "match": {
                "type": "string",
                "description": "The former name of the name filter, still accepted; name wins when both are given.",
            },
            "pack": {"type": "string", "description": "Only tools of this pack."},
            "read_only": {"type": "boolean", "description": "Only tools whose readOnlyHint is this."},
            "destructive": {"type": "boolean", "description": "Only tools whose destructiveHint is this."},
        },
        "additionalProperties": False,
    },
    output_schema={
        "type": "object",
        "properties": {
            "count": {"type": "integer"},
            "tools": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "title": {"type": "string"},
                        "pack": {"type": "string"},
                        "description": {"type": "string"},
                        "annotations": {"type": "object"},
                        "blocking": {"type": "boolean"},
                    },
                    "required": ["name", "pack", "annotations"],
                },
            },
        },
        "required": ["count", "tools"],
    },
    annotations=READ_ONLY,
)
def tools(ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    registry = _runtime(ctx).registry
    wanted_name = arguments.get("name", arguments.get("match"))
    named = _name_filter(wanted_name) if wanted_name is not None else None
    wanted_pack = arguments.get("pack")
    filters = {"readOnlyHint": arguments.get("read_only"), "destructiveHint": arguments.get("destructive")}
    rows = []
    for tool in registry.tools:
        annotations = tool.descriptor.get("annotations", {})  # built once, when declared
        pack_name = registry.pack_of(tool.name)
        if named is not None and not named(tool.name):
            continue
        if wanted_pack is not None and pack_name != wanted_pack:
            continue
        # ToolAnnotations defaults: readOnlyHint false; destructiveHint true, meaningful only when
        # readOnlyHint is false (2025-11-25 schema).
        read_only = bool(annotations.get("readOnlyHint", False))
        hints = {
            "readOnlyHint": read_only,
            "destructiveHint": not read_only and annotations.get("destructiveHint", True),
        }
        if any(want is not None and bool(hints[hint]) != want for hint, want in filters.items()):
            continue
        row: dict[str, Any] = {
            "name": tool.name,
            "pack": pack_name,
            "description": tool.description,
            "annotations": annotations,
            "blocking": tool.blocking,
        }
        if tool.title is not None:
            row["title"] = tool.title
        rows.append(row)
    return {"count": len(rows), "tools": rows}


def _name_filter(wanted: str) -> Callable[[str], bool]:
    """Whether a tool name is wanted: a glob matches the whole name, anything else a part of
    it. A tool name holds no glob character (# 2025-11-25 server/tools §Tool names, enforced by
    `mcpd.tools.api.TOOL_NAME`), so no name is ever both."""
    if any(c in wanted for c in "*?["):
        glob = re.compile(fnmatch.translate(wanted))
        return lambda name: glob.match(name) is not None
    return lambda name: wanted in name


_AUDIT_RECORD = {
    "type": "object",
    "properties": {
        "time": {"type": "string", "description": "When, ISO 8601 UTC to the microsecond."},
        "key": {"type": ["string", "null"], "description": "The API key's name (null without one)."},
        "peer": {"type": "string"},
        "transport": {"type": "string"},
        "method": {"type": ["string", "null"]},
        "tool": {"type": ["string", "null"]},
        "outcome": {"type": "string"},
        "duration_ms": {"type": ["number", "null"]},
        "request_id": {"type": ["string", "integer", "null"]},
        "x_request_id": {"type": ["string", "null"]},
        "detail": {"type": ["string", "null"]},
    },
    "required": ["time", "key", "peer", "transport", "method", "tool", "outcome", "duration_ms"],
}
_TIME = {
    "type": "string",
    "minLength": 10,
    "maxLength": 40,
    "description": "An ISO 8601 time (UTC unless it names an offset) or date, e.g. 2026-11-29T12:00:00Z.",
}
_AUDIT_FILTERS = ("since", "until", "key", "tool", "outcome")


@pack.tool(
    "server.audit",
    title="Search the audit trail",
    description=(
        "Search the audit trail of this server, newest first: every tool call, refused call, "
        "failed authentication and rate-limit hit of your tenant, with who made it (key), from "
        "where (peer), when, the tool, the outcome (ok, error, tool_error, denied, rate_limited, "
        "auth_failure, forbidden, ...) and how long it took. Filter by time (since inclusive, "
        "until exclusive), key name, tool and outcome. "
        'Example: {"since": "2026-11-29T00:00:00Z", "outcome": "denied", "limit": 50}; pass '
        "next_cursor back as cursor (with the same filters) for more. Admin keys only."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "since": _TIME,
            "until": _TIME,
            "key": {"type": "string", "minLength": 1, "maxLength": 64, "description": "An API key's name."},
            "tool": {"type": "string", "minLength": 1, "maxLength": 128, "description": "A tool name."},
            "outcome": {"type": "string", "minLength": 1, "maxLength": 32, "description": "e.g. ok, denied."},
            "limit": limit_schema(),
            "cursor": CURSOR_SCHEMA,
        },
        "additionalProperties": False,
    },
    output_schema={
        "type": "object",
        "properties": {"records": {"type": "array", "items": _AUDIT_RECORD}, "next_cursor": NEXT_CURSOR_SCHEMA},
        "required": ["records", "next_cursor"],
    },
    annotations=READ_ONLY,
)
def audit(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    try:
        trail = ctx.store(IAuditLog)
    except StoreNotConfigured:
        raise ToolError(
            "the audit trail is persisted in the SQL store, which this server does not run (no pack it serves "
            "needs it); the operator can serve the tasks or notes pack, or read the audit lines in the log"
        ) from None
    filters = {name: arguments[name] for name in _AUDIT_FILTERS if name in arguments}
    before = _audit_position(decode_cursor(ctx, "server.audit", filters, arguments.get("cursor")))
    query = dict(filters)
    for name in ("since", "until"):
        if name in query:
            query[name] = _utc(name, query[name])
    d = trail.search(ctx.tenant, query, limit_of(arguments), before)
    return d.addCallback(
        lambda page: {"records": page[0], "next_cursor": encode_cursor(ctx, "server.audit", filters, page[1])}
    )


def _audit_position(position: Any) -> Any:
    """Where a server.audit page starts, ``[time, seq]`` as the store gave it out (None: the
    first page); `ToolError` for anything else, such as a forged cursor whose digest is right
    (it is no secret), so that it is refused like every bad cursor rather than failing in the store."""
    if position is None:
        return None
    if isinstance(position, list) and len(position) == 2:
        at, seq = position
        if isinstance(at, str) and type(seq) is int and 0 <= seq < 2**63 and len(at) <= 40:
            try:
                when = datetime.datetime.fromisoformat(at)
            except ValueError:
                when = None
            if when is not None and when.tzinfo is None:
                return position
    raise ToolError("cursor is not one this server gave out: call again without cursor")


def _utc(name: str, value: str) -> datetime.datetime:
    """An ISO 8601 time or date as a naive UTC datetime (as stored); `ToolError` otherwise."""
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ToolError(f"{name} must be an ISO 8601 time or date, e.g. 2026-11-29T12:00:00Z, not {value!r}") from None
    if when.tzinfo is not None:
        when = when.astimezone(datetime.UTC).replace(tzinfo=None)
    return when


def _runtime(ctx: ToolContext) -> Any:
    try:
        return ctx.store(IRuntime)
    except StoreNotConfigured:
        raise ToolError("This tool needs a running server; none is attached to this call.") from None


@pack.resource(
    "mcpd://server/info",
    name="server.info",
    title="Server information",
    description="The same description of this server as the server.info tool, as a JSON resource.",
    mime_type="application/json",
)
def info_resource(ctx: Any, uri: str) -> str:
    import json

    return json.dumps(info(ctx, {}), sort_keys=True)


@pack.prompt(
    "server.tour",
    title="Tour this server",
    description="Ask the model to introduce this MCP server and what its tools are good for.",
)
def tour(ctx: Any, arguments: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": {
                "type": "resource",
                "resource": {
                    "uri": "mcpd://server/info",
                    "mimeType": "application/json",
                    "text": info_resource(ctx, ""),
                },
            },
        },
        {
            "role": "user",
            "content": {
                "type": "text",
                "text": "Above is this MCP server's description. Call server.tools, then explain in a few "
                "sentences which tools it offers and when each is useful.",
            },
        },
    ]
