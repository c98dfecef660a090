# -*- test-case-name: tests.test_kb -*-
"""The ``kb`` pack: a team's knowledge base of collections of documents, searched by their words
(BM25, no model needed) or, with an embedding service, by meaning (semantic, hybrid).

Thin handlers over `IKnowledgeBase`: every call sees only the caller's tenant; a document is
chunked and kept in SQL, then indexed, and its ``kb://COLLECTION/ID`` resource tells subscribed
clients when it changes. Writes succeed while the index is down (``indexing: pending``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThread

from mcpd.interfaces import ANALYZERS, SEARCH_MODES, IKnowledgeBase, NotFound
from mcpd.packs.chunking import DEFAULT_OVERLAP, DEFAULT_SIZE, MAX_SIZE, MIN_SIZE, Chunk, chunk_markdown
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

pack = ToolPack(
    "kb",
    "A knowledge base: collections of documents, chunked and searched by words or meaning.",
    needs=(IKnowledgeBase,),
)

READ = ToolAnnotations(read_only=True, destructive=False, idempotent=True, open_world=False)
WRITE = ToolAnnotations(read_only=False, destructive=False, idempotent=False, open_world=False)
DESTROY = ToolAnnotations(read_only=False, destructive=True, idempotent=True, open_world=False)

MAX_TEXT = 1_000_000
# Texts longer than this (characters) are chunked in a thread, off the reactor (500 take at
# most ~1.2 ms, for a run of empty headings).
INLINE_CHUNKING = 500
MAX_COLLECTIONS = 10  # searched at once
# What the search index stores (Milvus: a JSON field of at most 64 KiB whose integers are 64-bit);
# refused here so a write is never stuck in the outbox. A chunk's text (with the title and its
# headings) is measured by the store, which knows the title a kb.update keeps (`unindexable`).
MAX_METADATA_BYTES = 65_536
MIN_INTEGER, MAX_INTEGER = -(2**63), 2**63 - 1
_STRING = {"type": "string"}
_NULLABLE = {"type": ["string", "null"]}
_NAME = {
    "type": "string",
    "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
    "description": "A collection's name: letters, digits, '_', '.', '-' (at most 100).",
}
_ID = {"type": "string", "minLength": 1, "maxLength": 32}
_METADATA_KEY = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
_METADATA = {
    "type": "object",
    "maxProperties": 50,
    "propertyNames": {"pattern": _METADATA_KEY},
    "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
    "description": 'Flat: names to strings, numbers or booleans, e.g. {"team": "ops", "year": 2026}.',
}
# A search's filter: metadata equality, so no null (it equals no stored value: the index cannot
# match it, and a key to be absent is not a filter kb.search offers).
_FILTER = {
    **_METADATA,
    "additionalProperties": {"type": ["string", "number", "boolean"]},
    "description": 'Metadata every result has: names to strings, numbers or booleans, e.g. {"team": "ops"}.',
}
_INDEXING = {
    "enum": ["done", "pending"],
    "description": (
        "pending: saved, but not searchable yet (the search index is down or slow); it is indexed "
        "as soon as the index can take it. Do not add it again."
    ),
}
_CHUNKING = {
    "chunk_size": {
        "type": "integer",
        "minimum": MIN_SIZE,
        "maximum": MAX_SIZE,
        "default": DEFAULT_SIZE,
        "description": "Target chunk size in tokens (about 4 characters, or 1 CJK character, each).",
    },
    "chunk_overlap": {
        "type": "integer",
        "minimum": 0,
        "maximum": MAX_SIZE // 2,
        "default": DEFAULT_OVERLAP,
        "description": (
            "Tokens of the previous chunk's last sentences repeated at the start of the next; "
            "at most half the chunk_size."
        ),
    },
}
COLLECTION = {
    "type": "object",
    "properties": {
        "name": _STRING,
        "description": _NULLABLE,
        "documents": {"type": "integer"},
        "chunks": {"type": "integer"},
        "analyzer": {"enum": list(ANALYZERS)},
        "embedding_model": {**_NULLABLE, "description": "null: keyword search only (or the index is down)."},
        "dimension": {"type": ["integer", "null"]},
    },
    "required": ["name", "description", "documents", "chunks", "analyzer", "embedding_model", "dimension"],
}
DOCUMENT = {
    "type": "object",
    "properties": {
        "id": _STRING,
        "collection": _STRING,
        "title": _NULLABLE,
        "text": _STRING,
        "source": _NULLABLE,
        "metadata": {"type": "object"},
        "chunks": {"type": "integer", "description": "How many chunks it was cut into."},
        "created_at": _STRING,
        "updated_at": _STRING,
        "created_by": _STRING,
    },
    "required": ["id", "title", "text", "source", "metadata", "chunks", "created_at"],
}
ADDED = {
    "type": "object",
    "properties": {"id": _STRING, "title": _NULLABLE, "chunks": {"type": "integer"}, "collection": _STRING},
    "required": ["id", "title", "chunks"],
}
RESULT = {
    "type": "object",
    "properties": {
        "collection": _STRING,
        "document_id": _STRING,
        "chunk_id": _STRING,
        "title": _NULLABLE,
        "text": {"type": "string", "description": "The chunk: a passage of the document."},
        "score": {"type": "number", "description": "Relevance, higher is better (comparable within one search)."},
        "metadata": {"type": "object"},
    },
    "required": ["document_id", "chunk_id", "title", "text", "score", "metadata"],
}


def _kb(ctx: Any) -> Any:
    return ctx.store(IKnowledgeBase)


def _uri(collection: str, document_id: str) -> str:
    return f"kb://{collection}/{document_id}"


def _chunking(arguments: dict[str, Any]) -> tuple[int, int]:
    size = int(arguments.get("chunk_size", DEFAULT_SIZE))
    overlap = int(arguments.get("chunk_overlap", DEFAULT_OVERLAP))
    if overlap > size // 2:
        raise ToolError(f"chunk_overlap ({overlap}) is at most half the chunk_size ({size // 2} for {size})")
    return size, overlap


def chunked(text: str, size: int, overlap: int) -> Deferred[list[Chunk]]:
    """The text's chunks; a long text is chunked in a thread."""
    if len(text) <= INLINE_CHUNKING:
        return succeed(chunk_markdown(text, size, overlap))
    return deferToThread(chunk_markdown, text, size, overlap)


def _integers_fit(values: dict[str, Any], what: str) -> dict[str, Any]:
    """``values``, unless an integer among them is beyond the index's 64 bits (`ToolError`)."""
    for key, item in values.items():
        if isinstance(item, int) and not isinstance(item, bool) and not MIN_INTEGER <= item <= MAX_INTEGER:
            raise ToolError(
                f"{what} {key!r}: integers must fit in 64 bits ({MIN_INTEGER} to {MAX_INTEGER}); "
                "give a larger number as a string"
            )
    return values


def _metadata(value: dict[str, Any] | None) -> dict[str, Any]:
    """Flat metadata the index can store (the schema checked its shape)."""
    metadata = _integers_fit(value or {}, "metadata")
    size = len(json.dumps(metadata, ensure_ascii=False).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise ToolError(f"metadata is {size} bytes as JSON, over {MAX_METADATA_BYTES}: keep long values in the text")
    return metadata


def _text(value: str) -> str:
    if not value.strip():
        raise ToolError("text is empty: give the document's text (markdown or plain)")
    return value


@pack.tool(
    "kb.collections",
    title="List knowledge-base collections",
    description=(
        "List your team's knowledge-base collections by name, with how many documents and chunks each "
        "holds, its text analyzer and the embedding model its index was built with (null: keyword search "
        'only). Example: {"limit": 20}; pass next_cursor back as cursor for more.'
    ),
    input_schema=object_schema({"limit": limit_schema(), "cursor": CURSOR_SCHEMA}),
    output_schema=object_schema(
        {"collections": {"type": "array", "items": COLLECTION}, "next_cursor": NEXT_CURSOR_SCHEMA},
        ("collections", "next_cursor"),
    ),
    annotations=READ,
)
def kb_collections(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    after = text_position(decode_cursor(ctx, "kb.collections", {}, arguments.get("cursor")), 100)  # _NAME's most
    d = _kb(ctx).list_collections(ctx.tenant, limit_of(arguments), after)
    return d.addCallback(
        lambda page: {"collections": page[0], "next_cursor": encode_cursor(ctx, "kb.collections", {}, page[1])}
    )


@pack.tool(
    "kb.create_collection",
    title="Create a knowledge-base collection",
    description=(
        "Create a collection to hold documents; its name is unique within your team. analyzer is how "
        "words are found for keyword search: standard (most languages), or jieba for Chinese text. "
        'Example: {"name": "runbooks", "description": "Operations runbooks", "analyzer": "standard"}.'
    ),
    input_schema=object_schema(
        {
            "name": _NAME,
            "description": {"type": "string", "maxLength": 2000},
            "analyzer": {"enum": list(ANALYZERS), "default": "standard"},
        },
        ("name",),
    ),
    output_schema=object_schema({"collection": COLLECTION}, ("collection",)),
    annotations=WRITE,
)
def kb_create_collection(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    d = _kb(ctx).create_collection(
        ctx.tenant,
        arguments["name"],
        arguments.get("description"),
        arguments.get("analyzer", "standard"),
        ctx.caller.author,
    )
    return d.addCallback(lambda collection: {"collection": collection})


@pack.tool(
    "kb.drop_collection",
    title="Drop a knowledge-base collection",
    description=(
        "Delete a collection and every document in it, for good. confirm must repeat the name. "
        'Example: {"name": "old-runbooks", "confirm": "old-runbooks"}.'
    ),
    input_schema=object_schema({"name": _NAME, "confirm": {"type": "string"}}, ("name", "confirm")),
    output_schema=object_schema({"dropped": {"type": "boolean"}, "indexing": _INDEXING}, ("dropped",)),
    annotations=DESTROY,
)
def kb_drop_collection(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    name = arguments["name"]
    if arguments["confirm"] != name:
        raise ToolError(f"confirm must repeat the collection's name ({name!r}) to drop it and all its documents")
    d = _kb(ctx).drop_collection(ctx.tenant, name)
    return d.addCallback(lambda dropped: {"dropped": True, "indexing": dropped["indexing"]})


@pack.tool(
    "kb.add",
    title="Add a document",
    description=(
        "Add a document (markdown or plain text) to a collection: it is cut into chunks at headings and "
        "paragraphs and indexed for kb.search. metadata is flat and can filter searches. It answers once "
        "the document is saved, within seconds (indexing pending if the index is slow or down); calling "
        "it again adds a second copy. "
        'Example: {"collection": "runbooks", "title": "Restore a backup", "text": "# Restore\\n1. Stop '
        'the service...", "source": "wiki/restore", "metadata": {"team": "ops"}}.'
    ),
    input_schema=object_schema(
        {
            "collection": _NAME,
            "text": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT},
            "title": {"type": "string", "maxLength": 500},
            "source": {"type": "string", "maxLength": 2000, "description": "Where it comes from (a URL, a path)."},
            "metadata": _METADATA,
            **_CHUNKING,
        },
        ("collection", "text"),
    ),
    output_schema=object_schema({"document": ADDED, "indexing": _INDEXING}, ("document", "indexing")),
    annotations=WRITE,
)
def kb_add(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    size, overlap = _chunking(arguments)
    text = _text(arguments["text"])
    metadata = _metadata(arguments.get("metadata"))

    def add(chunks: list[Chunk]) -> Any:
        document = {
            "text": text,
            "title": arguments.get("title"),
            "source": arguments.get("source"),
            "metadata": metadata,
            "chunks": chunks,
        }
        return _kb(ctx).add_document(ctx.tenant, arguments["collection"], document, ctx.caller.author)

    d = chunked(text, size, overlap).addCallback(add)

    def added(outcome: dict[str, Any]) -> dict[str, Any]:
        document = outcome["document"]
        shown = {key: document[key] for key in ("id", "title", "chunks", "collection")}
        return {"document": shown, "indexing": outcome["indexing"]}

    return d.addCallback(added)


@pack.tool(
    "kb.search",
    title="Search the knowledge base",
    description=(
        "Search one collection (or several) for the passages that best answer a query, best first, each "
        "with its document. mode: keyword (words, BM25), semantic (meaning; needs the embedding service) "
        "or hybrid (both; the default when an embedding service is configured, else keyword). filter keeps "
        "documents whose metadata equals every pair given. notice says when the mode had to change or the "
        'index is degraded. Example: {"collection": "runbooks", "query": "restore a database backup", '
        '"filter": {"team": "ops"}, "limit": 5}; pass next_cursor back as cursor for more.'
    ),
    input_schema=object_schema(
        {
            "collection": {
                "anyOf": [
                    _NAME,
                    {"type": "array", "items": _NAME, "minItems": 1, "maxItems": MAX_COLLECTIONS, "uniqueItems": True},
                ],
                "description": "A collection's name, or a list of names.",
            },
            "query": {"type": "string", "minLength": 1, "maxLength": 2000},
            "mode": {"enum": list(SEARCH_MODES)},
            "filter": _FILTER,
            "limit": limit_schema(),
            "cursor": CURSOR_SCHEMA,
        },
        ("collection", "query"),
    ),
    output_schema=object_schema(
        {
            "results": {"type": "array", "items": RESULT},
            "mode": {"enum": list(SEARCH_MODES), "description": "The mode that produced the results."},
            "notice": {
                **_NULLABLE,
                "description": "Why the mode differs from the one asked, or that the index is degraded.",
            },
            "index": {"enum": ["ok", "degraded"], "description": "degraded: the index is down or behind."},
            "next_cursor": NEXT_CURSOR_SCHEMA,
        },
        ("results", "mode", "notice", "index", "next_cursor"),
    ),
    annotations=READ,
)
def kb_search(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    query = arguments["query"]
    if not re.search(r"\w", query):
        raise ToolError('query has no words to search for: give a question or some words, e.g. "restore a backup"')
    names = arguments["collection"]
    names = [names] if isinstance(names, str) else list(names)
    filters = _integers_fit(dict(arguments.get("filter") or {}), "filter")
    listing = {"collection": names, "query": query, "mode": arguments.get("mode"), "filter": filters}
    shown = shown_of(decode_cursor(ctx, "kb.search", listing, arguments.get("cursor")))
    limit = limit_of(arguments)
    d = _kb(ctx).search(ctx.tenant, names, query, arguments.get("mode"), filters, limit, shown)

    def page(found: dict[str, Any]) -> dict[str, Any]:
        after = "".join(found["shown"]) if found["more"] else None
        return {
            "results": found["results"],
            "mode": found["mode"],
            "notice": found["notice"],
            "index": found["index"],
            "next_cursor": encode_cursor(ctx, "kb.search", listing, after),
        }

    return d.addCallback(page)


@pack.tool(
    "kb.get",
    title="Get a document",
    description=(
        "Get one document of a collection with its whole text, source and metadata. "
        'Example: {"collection": "runbooks", "id": "01jdq3m8x4k2v7c9e5r1t6y0wz"}.'
    ),
    input_schema=object_schema({"collection": _NAME, "id": _ID}, ("collection", "id")),
    output_schema=object_schema({"document": DOCUMENT}, ("document",)),
    annotations=READ,
)
def kb_get(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    d = _kb(ctx).get_document(ctx.tenant, arguments["collection"], arguments["id"])
    return d.addCallback(lambda document: {"document": document})


@pack.tool(
    "kb.update",
    title="Update a document",
    description=(
        "Change a document's text (it is chunked and indexed again), title or metadata (replaced whole). "
        'Example: {"collection": "runbooks", "id": "01jdq3m8x4k2v7c9e5r1t6y0wz", "title": "Restore a '
        'backup (v2)", "metadata": {"team": "ops", "reviewed": true}}.'
    ),
    input_schema=object_schema(
        {
            "collection": _NAME,
            "id": _ID,
            "text": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT},
            "title": {"type": "string", "maxLength": 500},
            "metadata": _METADATA,
            **_CHUNKING,
        },
        ("collection", "id"),
    ),
    output_schema=object_schema({"document": DOCUMENT, "indexing": _INDEXING}, ("document", "indexing")),
    annotations=WRITE,
)
def kb_update(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    changes: dict[str, Any] = {key: arguments[key] for key in ("text", "title", "metadata") if key in arguments}
    if not changes:
        raise ToolError("nothing to change: give text, title or metadata")
    if "metadata" in changes:
        changes["metadata"] = _metadata(changes["metadata"])
    collection = arguments["collection"]

    def update(chunks: list[Chunk] | None) -> Any:
        if chunks is not None:
            changes["chunks"] = chunks
        return _kb(ctx).update_document(ctx.tenant, collection, arguments["id"], changes)

    if "text" in changes:
        d = chunked(_text(changes["text"]), *_chunking(arguments)).addCallback(update)
    else:
        d = succeed(None).addCallback(update)

    def updated(outcome: dict[str, Any]) -> dict[str, Any]:
        ctx.resource_updated(_uri(collection, arguments["id"]))
        return outcome

    return d.addCallback(updated)


@pack.tool(
    "kb.delete",
    title="Delete a document",
    description=(
        "Delete a document and its chunks from a collection, for good. deleted is false when there was "
        'no such document. Example: {"collection": "runbooks", "id": "01jdq3m8x4k2v7c9e5r1t6y0wz"}.'
    ),
    input_schema=object_schema({"collection": _NAME, "id": _ID}, ("collection", "id")),
    output_schema=object_schema({"deleted": {"type": "boolean"}}, ("deleted",)),
    annotations=DESTROY,
)
def kb_delete(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    collection, document_id = arguments["collection"], arguments["id"]

    def deleted(gone: bool) -> dict[str, Any]:
        if gone:
            ctx.resource_updated(_uri(collection, document_id))
        return {"deleted": gone}

    return _kb(ctx).delete_document(ctx.tenant, collection, document_id).addCallback(deleted)


# -- the resource, and completion -----------------------------------------------------------------


def _complete_collection(ctx: Any, value: str, _arguments: Any) -> Any:
    return _kb(ctx).collection_names(ctx.tenant, value, 100)


def _complete_document(ctx: Any, value: str, arguments: Any) -> Any:
    collection = (arguments or {}).get("collection")
    if not collection:
        return []

    def unknown(failure: Any) -> list[str]:
        failure.trap(NotFound)
        return []

    return _kb(ctx).document_ids(ctx.tenant, collection, value, 100).addErrback(unknown)


@pack.resource_template(
    "kb://{collection}/{id}",
    name="kb-document",
    title="A knowledge-base document",
    description="A document of one of your team's knowledge-base collections, as kb.get shows it.",
    mime_type="application/json",
    completions={"collection": _complete_collection, "id": _complete_document},
    readers_only=True,
)
def read_document(ctx: Any, uri: str, variables: dict[str, str]) -> Any:
    def missing(failure: Any) -> list[Any]:
        failure.trap(NotFound)
        return []  # answered as an unknown resource

    d = _kb(ctx).get_document(ctx.tenant, variables["collection"], variables["id"])
    return d.addCallbacks(lambda document: json.dumps(document, ensure_ascii=False), missing)
