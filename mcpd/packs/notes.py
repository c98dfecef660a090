# -*- test-case-name: tests.test_packs -*-
"""The ``notes`` pack: a team's markdown notes with tags and ranked full-text search.

Thin handlers over `INoteStore`; every call sees only the caller's tenant, and a note that
changes or goes tells the clients subscribed to its ``note://ID`` resource.
"""

from __future__ import annotations

import json
import re
from typing import Any

from mcpd.interfaces import INoteStore, NotFound
from mcpd.tools import ToolAnnotations, ToolContext, ToolError, ToolPack, object_schema
from mcpd.tools.paging import (
    CURSOR_SCHEMA,
    NEXT_CURSOR_SCHEMA,
    decode_cursor,
    encode_cursor,
    limit_of,
    limit_schema,
    shown_of,
)

pack = ToolPack("notes", "Shared markdown notes with tags and ranked full-text search.", needs=(INoteStore,))

READ = ToolAnnotations(read_only=True, destructive=False, idempotent=True, open_world=False)
# Saving replaces a note's text but deletes no note: a `write` key may do it.
SAVE = ToolAnnotations(read_only=False, destructive=False, idempotent=False, open_world=False)
DELETE = ToolAnnotations(read_only=False, destructive=True, idempotent=True, open_world=False)

_STRING = {"type": "string"}
# The longest note id (its column's size).
ID_CHARS = 32
_ID = {"type": "string", "minLength": 1, "maxLength": ID_CHARS}
MAX_BODY = 200_000

NOTE = {
    "type": "object",
    "properties": {
        "id": _STRING,
        "title": _STRING,
        "body": _STRING,
        "tags": {"type": "array", "items": _STRING},
        "created_at": _STRING,
        "updated_at": _STRING,
        "created_by": _STRING,
    },
    "required": ["id", "title", "body", "tags", "created_at", "updated_at", "created_by"],
}
FOUND = {
    "type": "object",
    "properties": {
        "id": _STRING,
        "title": _STRING,
        "snippet": {"type": "string", "description": "Words around the match, matched words in **bold**."},
        "score": {"type": "number", "description": "Relevance: higher is better (comparable within one search)."},
        "tags": {"type": "array", "items": _STRING},
    },
    "required": ["id", "title", "snippet", "score", "tags"],
}


def _notes(ctx: Any) -> Any:
    return ctx.store(INoteStore)


def _note_uri(note_id: str) -> str:
    return f"note://{note_id}"


@pack.tool(
    "note.save",
    title="Save a note",
    description=(
        "Save a markdown note for the team; give id to replace that note's title, body and tags. "
        'Example: {"title": "Deploy checklist", "body": "1. Run the tests\\n2. Tag the release", '
        '"tags": ["ops"]}.'
    ),
    input_schema=object_schema(
        {
            "id": {**_ID, "description": "The note to replace; leave out to create a note."},
            "title": {"type": "string", "minLength": 1, "maxLength": 500, "pattern": r"\S"},
            "body": {"type": "string", "maxLength": MAX_BODY, "description": "Markdown."},
            "tags": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^\S+$"},
                "maxItems": 20,
            },
        },
        ("title", "body"),
    ),
    output_schema=object_schema({"note": NOTE}, ("note",)),
    annotations=SAVE,
)
def note_save(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    d = _notes(ctx).save_note(ctx.tenant, arguments, ctx.caller.author)

    def saved(note: dict[str, Any]) -> dict[str, Any]:
        if "id" in arguments:
            ctx.resource_updated(_note_uri(note["id"]))
        return {"note": note}

    return d.addCallback(saved)


@pack.tool(
    "note.search",
    title="Search notes",
    description=(
        "Search the team's notes by their words, best matches first, each with a snippet around "
        "the match; tag narrows to notes with that tag. "
        'Example: {"query": "deploy checklist", "limit": 10}; pass next_cursor back as cursor for more.'
    ),
    input_schema=object_schema(
        {
            "query": {"type": "string", "minLength": 1, "maxLength": 500},
            "tag": {"type": "string", "minLength": 1, "maxLength": 64},
            "limit": limit_schema(),
            "cursor": CURSOR_SCHEMA,
        },
        ("query",),
    ),
    output_schema=object_schema(
        {"notes": {"type": "array", "items": FOUND}, "next_cursor": NEXT_CURSOR_SCHEMA}, ("notes", "next_cursor")
    ),
    annotations=READ,
)
def note_search(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    query = arguments["query"]
    if not re.search(r"\w", query):
        raise ToolError('query has no words to search for: give one or more words, e.g. "deploy checklist"')
    filters = {"query": query, "tag": arguments.get("tag")}
    # The cursor names the notes already shown, not an offset: the ranking may move between
    # pages (a note saved or deleted), and an offset would then repeat notes or skip them.
    shown = shown_of(decode_cursor(ctx, "note.search", filters, arguments.get("cursor")))
    d = _notes(ctx).search_notes(ctx.tenant, query, arguments.get("tag"), limit_of(arguments), shown)

    def page(found: tuple[list[dict[str, Any]], bool, list[str]]) -> dict[str, Any]:
        notes, more, now_shown = found
        after = "".join(now_shown) if more else None
        return {"notes": notes, "next_cursor": encode_cursor(ctx, "note.search", filters, after)}

    return d.addCallback(page)


@pack.tool(
    "note.get",
    title="Get a note",
    description='Get one note with its whole body. Example: {"id": "01jdq3m8x4k2v7c9e5r1t6y0wz"}.',
    input_schema=object_schema({"id": _ID}, ("id",)),
    output_schema=object_schema({"note": NOTE}, ("note",)),
    annotations=READ,
)
def note_get(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    return _notes(ctx).get_note(ctx.tenant, arguments["id"]).addCallback(lambda note: {"note": note})


@pack.tool(
    "note.delete",
    title="Delete a note",
    description=(
        "Delete a note for good. deleted is false when there was no such note. "
        'Example: {"id": "01jdq3m8x4k2v7c9e5r1t6y0wz"}.'
    ),
    input_schema=object_schema({"id": _ID}, ("id",)),
    output_schema=object_schema({"deleted": {"type": "boolean"}}, ("deleted",)),
    annotations=DELETE,
)
def note_delete(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    note_id = arguments["id"]

    def deleted(gone: bool) -> dict[str, Any]:
        if gone:
            ctx.resource_updated(_note_uri(note_id))
        return {"deleted": gone}

    return _notes(ctx).delete_note(ctx.tenant, note_id).addCallback(deleted)


def _complete_note_id(ctx: Any, value: str, _arguments: Any) -> Any:
    if len(value) > ID_CHARS:  # no id starts so (nor may a LIKE pattern grow past SQLite's bound)
        return []
    return _notes(ctx).note_ids(ctx.tenant, value, 100)


@pack.resource_template(
    "note://{id}",
    name="note",
    title="A note",
    description="A note of your team, as note.get shows it.",
    mime_type="application/json",
    completions={"id": _complete_note_id},
)
def read_note(ctx: Any, uri: str, variables: dict[str, str]) -> Any:
    def missing(failure: Any) -> list[Any]:
        failure.trap(NotFound)
        return []  # answered as an unknown resource

    d = _notes(ctx).get_note(ctx.tenant, variables["id"])
    return d.addCallbacks(lambda note: json.dumps(note, ensure_ascii=False), missing)
