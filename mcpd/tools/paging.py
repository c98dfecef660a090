# -*- test-case-name: tests.test_packs -*-
"""Opaque cursors for the lists and searches of packs, bound to the listing they came from.

A cursor carries where the next page starts and a digest of what was listed (the tool, its
filters and the caller's tenant): handed to another tool, other filters or another tenant, it is
refused rather than misread, so no cursor ever leads into another tenant's records.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from mcpd.tools.api import RequestContext, ToolError

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def limit_schema(default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> dict[str, Any]:
    """The ``limit`` argument of a list."""
    return {
        "type": "integer",
        "minimum": 1,
        "maximum": maximum,
        "default": default,
        "description": f"Most items to return (default {default}, at most {maximum}).",
    }


CURSOR_SCHEMA: dict[str, Any] = {
    "type": "string",
    "description": "The next_cursor of the previous page, to get the next one (same other arguments).",
}
NEXT_CURSOR_SCHEMA: dict[str, Any] = {
    "type": ["string", "null"],
    "description": "Pass as cursor (with the same other arguments) for the next page; null at the end.",
}


# The json module's encoders, made once: `json.dumps` with arguments makes one per call, which
# cost a cursor more than the rest of its work. Their text is `json.dumps`'s, so a cursor (and its
# listing's digest) is the same as ever.
_identity_text = json.JSONEncoder(default=str).encode
_compact_text = json.JSONEncoder(separators=(",", ":")).encode


def _listing(ctx: RequestContext, tool: str, filters: Mapping[str, Any]) -> str:
    identity = _identity_text([ctx.tenant, tool, dict(sorted(filters.items()))])
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def encode_cursor(ctx: RequestContext, tool: str, filters: Mapping[str, Any], position: Any) -> str | None:
    """The cursor of the page starting after ``position`` (None: there is no next page)."""
    if position is None:
        return None
    # {"l": listing, "p": position} in compact JSON (the digest is hex: nothing to escape).
    raw = '{"l":"' + _listing(ctx, tool, filters) + '","p":' + _compact_text(position) + "}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(ctx: RequestContext, tool: str, filters: Mapping[str, Any], cursor: str | None) -> Any:
    """Where the page a cursor names starts (None without a cursor); `ToolError` for a cursor
    that is not one of ours, or belongs to another listing."""
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        decoded = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        listing, position = decoded["l"], decoded["p"]
    except (binascii.Error, UnicodeError, ValueError, KeyError, TypeError):
        raise ToolError(NOT_OURS) from None
    if listing != _listing(ctx, tool, filters):
        raise ToolError(
            f"cursor belongs to another listing: pass it to {tool} with the same other arguments as the "
            "call that returned it, or call again without cursor"
        )
    return position


NOT_OURS = "cursor is not one this server gave out: call again without cursor"


def text_position(position: Any, longest: int) -> str | None:
    """A list's cursor position as this server gives it out: a name or id of at most
    ``longest`` characters (None: the first page). A cursor's check value is no secret, so
    anything else a client could build (a list, a number, a lone surrogate, an overlong text) is
    refused here rather than failing in the store."""
    if position is None:
        return None
    if isinstance(position, str) and len(position) <= longest:
        try:
            position.encode()
        except UnicodeEncodeError:
            pass
        else:
            return position
    raise ToolError(NOT_OURS)


# The length of each key a search's cursor carries (`mcpd.stores.shown.shown_key`: base64url of
# nine bytes), and how many it carries at most (`mcpd.stores.shown.MAX_DEPTH`).
SHOWN_KEY_CHARS = 12
MAX_SHOWN_KEYS = 1000
_SHOWN = re.compile(rf"(?:[A-Za-z0-9_-]{{{SHOWN_KEY_CHARS}}})+")


def shown_of(position: Any) -> frozenset[str]:
    """The keys of the results a search's earlier pages showed, from its cursor's position
    (none without a cursor); `ToolError` for a position that is not one a search gave out."""
    if position is None:
        return frozenset()
    if (
        not isinstance(position, str)
        or len(position) > MAX_SHOWN_KEYS * SHOWN_KEY_CHARS
        or not _SHOWN.fullmatch(position)
    ):
        raise ToolError(NOT_OURS)
    return frozenset(position[i : i + SHOWN_KEY_CHARS] for i in range(0, len(position), SHOWN_KEY_CHARS))


def limit_of(arguments: Mapping[str, Any], default: int = DEFAULT_LIMIT) -> int:
    """The ``limit`` argument (validated by the schema), or its default."""
    return int(arguments.get("limit", default))
