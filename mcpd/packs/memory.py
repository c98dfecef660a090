# -*- test-case-name: tests.test_memory -*-
"""The ``memory`` pack: long-term memory for assistants, across conversations.

A memory is personal (only the key that made it sees it) or the team's (the whole tenant sees
it). Recall ranks by relevance (keyword, or hybrid with an embedding service), the newest first
among equals. Thin handlers over `IMemoryStore`; the ``memory.context`` prompt fills a
conversation with what is remembered about a topic.
"""

from __future__ import annotations

import json
import re
from typing import Any

from mcpd.interfaces import IMemoryStore, NotFound, StoreError
from mcpd.tools import ToolAnnotations, ToolContext, ToolError, ToolPack, object_schema
from mcpd.tools.paging import (
    CURSOR_SCHEMA,
    NEXT_CURSOR_SCHEMA,
    decode_cursor,
    encode_cursor,
    limit_of,
    limit_schema,
    shown_of,
    text_position,
)
from mcpd.tools.prompts import PromptArgument

pack = ToolPack(
    "memory",
    "Long-term memory for assistants: personal and team memories, recalled by relevance.",
    needs=(IMemoryStore,),
)

READ = ToolAnnotations(read_only=True, destructive=False, idempotent=True, open_world=False)
WRITE = ToolAnnotations(read_only=False, destructive=False, idempotent=False, open_world=False)
FORGET = ToolAnnotations(read_only=False, destructive=True, idempotent=True, open_world=False)

PERSONAL, TEAM = "personal", "team"
MAX_TEXT = 10_000
MAX_QUERY = 2000  # characters of memory.recall's query and memory.context's topic
_STRING = {"type": "string"}
_ID = {"type": "string", "minLength": 1, "maxLength": 32}
_TAGS = {
    "type": "array",
    "items": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^\S+$"},
    "maxItems": 20,
    "uniqueItems": True,
    "description": 'Labels, e.g. ["preferences", "project-x"] (up to 20, no spaces).',
}
_SCOPE = {
    "enum": [PERSONAL, TEAM],
    "description": "personal: only your key sees it; team: everyone of your team.",
}
_SCOPE_FILTER = {**_SCOPE, "description": "Only personal or only team memories (default: both)."}
_INDEXING = {
    "enum": ["done", "pending"],
    "description": (
        "pending: saved, but not recalled yet (the search index is down or slow); recall finds it once "
        "it is indexed. Do not remember it again."
    ),
}
MEMORY = {
    "type": "object",
    "properties": {
        "id": _STRING,
        "text": _STRING,
        "tags": {"type": "array", "items": _STRING},
        "scope": {"enum": [PERSONAL, TEAM]},
        "created_at": _STRING,
        "updated_at": _STRING,
        "created_by": _STRING,
    },
    "required": ["id", "text", "tags", "scope", "created_at", "created_by"],
}
RECALLED = {
    "type": "object",
    "properties": {
        **MEMORY["properties"],  # type: ignore[dict-item]
        "score": {"type": "number", "description": "Relevance, higher is better (comparable within one recall)."},
    },
    "required": ["id", "text", "tags", "scope", "score", "created_at"],
}


def _memories(ctx: Any) -> Any:
    return ctx.store(IMemoryStore)


def owners(ctx: Any, scope: str | None = None) -> list[str]:
    """Whose memories a call may see: the caller's own ("personal"), the team's (owner ""), or both."""
    if scope == PERSONAL:
        return [ctx.caller.author]
    if scope == TEAM:
        return [""]
    return [ctx.caller.author, ""]


def _shown(memory: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in memory.items() if key != "owner"}


def _uri(memory_id: str) -> str:
    return f"memory://{memory_id}"


@pack.tool(
    "memory.remember",
    title="Remember something",
    description=(
        "Remember a fact, preference or decision for later conversations. scope personal (the default) "
        "keeps it to your key; team shares it with your team. "
        'Example: {"text": "Alice prefers release notes as bullet points.", "tags": ["preferences"], '
        '"scope": "team"}.'
    ),
    input_schema=object_schema(
        {
            "text": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": r"\S"},
            "tags": _TAGS,
            "scope": {**_SCOPE, "default": PERSONAL},
        },
        ("text",),
    ),
    output_schema=object_schema({"memory": MEMORY, "indexing": _INDEXING}, ("memory", "indexing")),
    annotations=WRITE,
)
def memory_remember(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    owner = "" if arguments.get("scope", PERSONAL) == TEAM else ctx.caller.author
    d = _memories(ctx).remember(ctx.tenant, owner, arguments["text"], arguments.get("tags") or [], ctx.caller.author)
    return d.addCallback(lambda kept: {"memory": _shown(kept["memory"]), "indexing": kept["indexing"]})


@pack.tool(
    "memory.recall",
    title="Recall memories",
    description=(
        "Recall the memories most relevant to a query (yours and your team's), best first and the newest "
        "first among equals; tags keeps those with every tag given. notice says when the index is "
        'degraded. Example: {"query": "how does Alice like release notes", "limit": 5}; pass '
        "next_cursor back as cursor for more."
    ),
    input_schema=object_schema(
        {
            "query": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY},
            "tags": _TAGS,
            "scope": _SCOPE_FILTER,
            "limit": limit_schema(),
            "cursor": CURSOR_SCHEMA,
        },
        ("query",),
    ),
    output_schema=object_schema(
        {
            "memories": {"type": "array", "items": RECALLED},
            "mode": {"enum": ["keyword", "semantic", "hybrid"]},
            "notice": {"type": ["string", "null"]},
            "index": {"enum": ["ok", "degraded"]},
            "next_cursor": NEXT_CURSOR_SCHEMA,
        },
        ("memories", "mode", "notice", "index", "next_cursor"),
    ),
    annotations=READ,
)
def memory_recall(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    query = arguments["query"]
    if not re.search(r"\w", query):
        raise ToolError('query has no words to search for: say what to recall, e.g. "deploy preferences"')
    tags = list(arguments.get("tags") or ())
    listing = {"query": query, "tags": tags, "scope": arguments.get("scope")}
    shown = shown_of(decode_cursor(ctx, "memory.recall", listing, arguments.get("cursor")))
    d = _memories(ctx).recall(ctx.tenant, owners(ctx, arguments.get("scope")), query, tags, limit_of(arguments), shown)

    def page(found: dict[str, Any]) -> dict[str, Any]:
        after = "".join(found["shown"]) if found["more"] else None
        return {
            "memories": [_shown(memory) for memory in found["memories"]],
            "mode": found["mode"],
            "notice": found["notice"],
            "index": found["index"],
            "next_cursor": encode_cursor(ctx, "memory.recall", listing, after),
        }

    return d.addCallback(page)


@pack.tool(
    "memory.list",
    title="List memories",
    description=(
        "List memories, newest first: yours and your team's, or only one scope; tags keeps those with "
        'every tag given. Example: {"scope": "team", "tags": ["preferences"], "limit": 20}; pass '
        "next_cursor back as cursor (with the same filters) for more."
    ),
    input_schema=object_schema(
        {"tags": _TAGS, "scope": _SCOPE_FILTER, "limit": limit_schema(), "cursor": CURSOR_SCHEMA}
    ),
    output_schema=object_schema(
        {"memories": {"type": "array", "items": MEMORY}, "next_cursor": NEXT_CURSOR_SCHEMA}, ("memories", "next_cursor")
    ),
    annotations=READ,
)
def memory_list(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    tags = list(arguments.get("tags") or ())
    listing = {"tags": tags, "scope": arguments.get("scope")}
    after = text_position(decode_cursor(ctx, "memory.list", listing, arguments.get("cursor")), 32)  # _ID's most
    d = _memories(ctx).list_memories(ctx.tenant, owners(ctx, arguments.get("scope")), tags, limit_of(arguments), after)
    return d.addCallback(
        lambda page: {
            "memories": [_shown(memory) for memory in page[0]],
            "next_cursor": encode_cursor(ctx, "memory.list", listing, page[1]),
        }
    )


@pack.tool(
    "memory.update",
    title="Update a memory",
    description=(
        "Change a memory's text or tags (tags are replaced whole); its scope stays. "
        'Example: {"id": "01jdq3m8x4k2v7c9e5r1t6y0wz", "text": "Alice prefers release notes as a short table."}.'
    ),
    input_schema=object_schema(
        {"id": _ID, "text": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": r"\S"}, "tags": _TAGS},
        ("id",),
    ),
    output_schema=object_schema({"memory": MEMORY, "indexing": _INDEXING}, ("memory", "indexing")),
    annotations=WRITE,
)
def memory_update(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    changes = {key: arguments[key] for key in ("text", "tags") if key in arguments}
    if not changes:
        raise ToolError("nothing to change: give text or tags")
    d = _memories(ctx).update_memory(ctx.tenant, owners(ctx), arguments["id"], changes)

    def updated(kept: dict[str, Any]) -> dict[str, Any]:
        ctx.resource_updated(_uri(arguments["id"]))
        return {"memory": _shown(kept["memory"]), "indexing": kept["indexing"]}

    return d.addCallback(updated)


@pack.tool(
    "memory.forget",
    title="Forget a memory",
    description=(
        "Delete a memory (yours, or your team's) for good. forgotten is false when there was no such memory. "
        'Example: {"id": "01jdq3m8x4k2v7c9e5r1t6y0wz"}.'
    ),
    input_schema=object_schema({"id": _ID}, ("id",)),
    output_schema=object_schema({"forgotten": {"type": "boolean"}}, ("forgotten",)),
    annotations=FORGET,
)
def memory_forget(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    memory_id = arguments["id"]

    def forgotten(gone: bool) -> dict[str, Any]:
        if gone:
            ctx.resource_updated(_uri(memory_id))
        return {"forgotten": gone}

    return _memories(ctx).forget(ctx.tenant, owners(ctx), memory_id).addCallback(forgotten)


# -- the resource, completion and the prompt ------------------------------------------------------


def _complete_memory_id(ctx: Any, value: str, _arguments: Any) -> Any:
    return _memories(ctx).memory_ids(ctx.tenant, owners(ctx), value, 100)


@pack.resource_template(
    "memory://{id}",
    name="memory",
    title="A memory",
    description="A memory of yours or your team's, as memory.list shows it.",
    mime_type="application/json",
    completions={"id": _complete_memory_id},
    readers_only=True,
)
def read_memory(ctx: Any, uri: str, variables: dict[str, str]) -> Any:
    def missing(failure: Any) -> list[Any]:
        failure.trap(NotFound)
        return []  # answered as an unknown resource

    d = _memories(ctx).get_memory(ctx.tenant, owners(ctx), variables["id"])
    return d.addCallbacks(lambda memory: json.dumps(_shown(memory), ensure_ascii=False), missing)


CONTEXT_LIMIT = 20


@pack.prompt(
    "memory.context",
    title="What is remembered about a topic",
    description="The memories (yours and your team's) most relevant to a topic, to ground a conversation.",
    arguments=[PromptArgument("topic", description="What the conversation is about.", required=True)],
)
def memory_context(ctx: Any, arguments: dict[str, str]) -> Any:
    topic = arguments["topic"]
    if len(topic) > MAX_QUERY:
        raise StoreError(
            f"topic is {len(topic)} characters, over {MAX_QUERY}: say what the conversation is about briefly"
        )
    if not re.search(r"\w", topic):
        raise StoreError("topic has no words: say what the conversation is about")
    d = _memories(ctx).recall(ctx.tenant, owners(ctx), topic, [], CONTEXT_LIMIT)
    return d.addCallback(lambda found: _context_messages(topic, found))


def _context_messages(topic: str, found: dict[str, Any]) -> list[dict[str, Any]]:
    lines = [f"# What is remembered about: {topic}", ""]
    if found["memories"]:
        for memory in found["memories"]:
            tags = f" [{', '.join(memory['tags'])}]" if memory["tags"] else ""
            lines.append(f"- ({memory['scope']}, {memory['created_at']}){tags} {memory['text']}")
    else:
        lines.append("Nothing is remembered about this yet.")
    if found["notice"]:
        lines += ["", f"Note: {found['notice']}"]
    return [
        {"role": "user", "content": {"type": "text", "text": "\n".join(lines)}},
        {
            "role": "user",
            "content": {
                "type": "text",
                "text": (
                    "Above is what is remembered about this topic, most relevant first. Use it as background "
                    "for the conversation; where two memories disagree, prefer the newer one."
                ),
            },
        },
    ]
