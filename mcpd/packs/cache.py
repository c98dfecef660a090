# -*- test-case-name: tests.test_cache -*-
"""The ``cache`` pack: JSON values under keys, each with a TTL, kept apart by tenant.

Thin handlers over `ICache` (in this process by default, in Redis with --redis-url): they check
what the operator bounds (the value's size, the TTL's cap) and turn values into JSON text and
back; the store keeps tenants apart.
"""

from __future__ import annotations

import json
from typing import Any

from mcpd.interfaces import ICache, StoreFull
from mcpd.tools import ToolAnnotations, ToolContext, ToolError, ToolPack, object_schema
from mcpd.tools.paging import CURSOR_SCHEMA, NEXT_CURSOR_SCHEMA, decode_cursor, encode_cursor, limit_of, limit_schema

pack = ToolPack(
    "cache", "A key-value cache of JSON values with a TTL on every key (Redis when configured).", needs=(ICache,)
)

READ = ToolAnnotations(read_only=True, destructive=False, idempotent=True, open_world=False)
# Setting a key replaces its value; doing it twice leaves the same value.
SET = ToolAnnotations(read_only=False, destructive=False, idempotent=True, open_world=False)
DELETE = ToolAnnotations(read_only=False, destructive=True, idempotent=True, open_world=False)
INCR = ToolAnnotations(read_only=False, destructive=False, idempotent=False, open_world=False)

MAX_KEY = 512
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_KEY = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_KEY,
    "description": "The key (any text; your keys are yours alone, other tenants never see them).",
}
_TTL = {
    "type": "integer",
    "minimum": 1,
    "description": "Seconds the key lives (default 3600 unless the operator set another; longer "
    "than the operator's maximum is capped to it).",
}


def _cache(ctx: Any) -> Any:
    return ctx.store(ICache)


def _full(failure: Any) -> Any:
    """An in-process cache at its bound: the model's to read (StoreFull is no StoreError)."""
    failure.trap(StoreFull)
    raise ToolError(str(failure.value))


def _text(arguments: dict[str, Any], name: str) -> str:
    """A key or pattern argument, checked to be text Redis can hold (UTF-8)."""
    value: str = arguments[name]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ToolError(f"{name} is not valid Unicode text (it holds a lone surrogate): send plain text") from None
    return value


def _ttl(cache: Any, arguments: dict[str, Any]) -> int:
    """The TTL asked for (or the default), capped at the operator's maximum."""
    return int(min(arguments.get("ttl", cache.default_ttl), cache.max_ttl))


@pack.tool(
    "cache.get",
    title="Read a cached value",
    description=(
        "Read the JSON value under a key, and the seconds it has left. found is false (value null) "
        'for a key never set or expired. Example: {"key": "report:2026-11"}.'
    ),
    input_schema=object_schema({"key": _KEY}, ("key",)),
    output_schema=object_schema(
        {
            "found": {"type": "boolean"},
            "value": {"description": "The JSON value stored (null when not found)."},
            "ttl": {"type": ["integer", "null"], "description": "Seconds left before the key expires."},
        },
        ("found", "value", "ttl"),
    ),
    annotations=READ,
)
def cache_get(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    def found(kept: tuple[str | None, int | None]) -> dict[str, Any]:
        text, ttl = kept
        if text is None:
            return {"found": False, "value": None, "ttl": None}
        try:
            value = json.loads(text)
        except ValueError:
            raise ToolError(f"{arguments['key']!r} holds a value that is not JSON: set it again") from None
        return {"found": True, "value": value, "ttl": ttl}

    return _cache(ctx).get(ctx.tenant, _text(arguments, "key")).addCallback(found)


@pack.tool(
    "cache.set",
    title="Cache a value",
    description=(
        "Store any JSON value under a key for ttl seconds (default 3600; capped by the operator's "
        "maximum), replacing what the key held. Returns the ttl applied. "
        'Example: {"key": "report:2026-11", "value": {"total": 42, "rows": [1, 2]}, "ttl": 600}.'
    ),
    input_schema=object_schema(
        {
            "key": _KEY,
            "value": {"description": "Any JSON value: object, array, string, number, true/false or null."},
            "ttl": _TTL,
        },
        ("key", "value"),
    ),
    output_schema=object_schema({"stored": {"type": "boolean"}, "ttl": {"type": "integer"}}, ("stored", "ttl")),
    annotations=SET,
)
def cache_set(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    cache = _cache(ctx)
    key = _text(arguments, "key")
    try:
        text = json.dumps(arguments["value"], ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        size = len(text.encode("utf-8"))
    except ValueError:  # UnicodeEncodeError is one
        raise ToolError("value must be JSON text: no NaN or Infinity, no lone surrogates in strings") from None
    if size > cache.max_value:
        raise ToolError(
            f"value is {size} bytes as JSON, more than this server's limit of {cache.max_value}: store a "
            "smaller value, or split it across several keys"
        )
    ttl = _ttl(cache, arguments)
    d = cache.set(ctx.tenant, key, text, ttl)
    return d.addCallbacks(lambda _: {"stored": True, "ttl": ttl}, _full)


@pack.tool(
    "cache.delete",
    title="Delete a cached key",
    description='Delete a key and its value; deleted is false when there was none. Example: {"key": "report:2026-11"}.',
    input_schema=object_schema({"key": _KEY}, ("key",)),
    output_schema=object_schema({"deleted": {"type": "boolean"}}, ("deleted",)),
    annotations=DELETE,
)
def cache_delete(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    return _cache(ctx).delete(ctx.tenant, _text(arguments, "key")).addCallback(lambda deleted: {"deleted": deleted})


@pack.tool(
    "cache.scan",
    title="List cached keys",
    description=(
        "List your keys matching a glob pattern: * any text, ? one character, [abc] one of them, "
        "[^a] any but a, [a-z] a range, \\ escapes the next character. Pages may hold fewer keys "
        "than limit before the end: keep passing next_cursor back until it is null. A key kept "
        'throughout is listed at least once. Example: {"pattern": "report:*", "limit": 50}.'
    ),
    input_schema=object_schema(
        {
            "pattern": {"type": "string", "minLength": 1, "maxLength": MAX_KEY, "default": "*"},
            "limit": limit_schema(),
            "cursor": CURSOR_SCHEMA,
        }
    ),
    output_schema=object_schema(
        {"keys": {"type": "array", "items": {"type": "string"}}, "next_cursor": NEXT_CURSOR_SCHEMA},
        ("keys", "next_cursor"),
    ),
    annotations=READ,
)
def cache_scan(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    filters = {"pattern": _text({"pattern": "*", **arguments}, "pattern")}
    position = decode_cursor(ctx, "cache.scan", filters, arguments.get("cursor"))
    d = _cache(ctx).scan(ctx.tenant, filters["pattern"], limit_of(arguments), position)

    def page(found: tuple[list[str], Any]) -> dict[str, Any]:
        keys, after = found
        return {"keys": keys, "next_cursor": encode_cursor(ctx, "cache.scan", filters, after)}

    return d.addCallback(page)


@pack.tool(
    "cache.incr",
    title="Add to a cached counter",
    description=(
        "Atomically add by (default 1; negative subtracts) to the integer under a key and return "
        "the new value; a missing key counts as 0 and gets ttl (or the default). ttl given resets "
        "an existing key's TTL; otherwise it keeps its own. The key must hold an integer. "
        'Example: {"key": "visits:home", "by": 1, "ttl": 86400}.'
    ),
    input_schema=object_schema(
        {
            "key": _KEY,
            "by": {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX, "default": 1},
            "ttl": _TTL,
        },
        ("key",),
    ),
    output_schema=object_schema({"value": {"type": "integer"}}, ("value",)),
    annotations=INCR,
)
def cache_incr(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    cache = _cache(ctx)
    ttl = _ttl(cache, arguments) if "ttl" in arguments else None
    d = cache.incr(ctx.tenant, _text(arguments, "key"), int(arguments.get("by", 1)), ttl)
    return d.addCallbacks(lambda value: {"value": value}, _full)
