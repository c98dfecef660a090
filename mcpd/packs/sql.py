# -*- test-case-name: tests.test_sql_pack -*-
"""The ``sql`` pack: read-only access to the databases the operator names with ``--sql-source``.

Thin handlers over `ISQLSources`: which tables there are, what a table looks like, the rows of
one read-only statement, and the database's plan for one. The database keeps it read-only
(`mcpd.stores.sql.sources`); the sources are the operator's, the same for every key allowed this
pack.
"""

from __future__ import annotations

from typing import Any

from mcpd.interfaces import ISQLSources
from mcpd.tools import ToolAnnotations, ToolContext, ToolError, ToolPack, object_schema
from mcpd.tools.paging import (
    CURSOR_SCHEMA,
    NEXT_CURSOR_SCHEMA,
    decode_cursor,
    encode_cursor,
    limit_of,
    limit_schema,
    text_position,
)

pack = ToolPack("sql", "Read-only SQL on the team's own databases.", needs=(ISQLSources,))

READ = ToolAnnotations(read_only=True, destructive=False, idempotent=True, open_world=False)
QUERY_LIMIT, QUERY_MAX = 100, 1000

_STRING = {"type": "string"}
_SOURCE = {
    "type": "string",
    "minLength": 1,
    "maxLength": 64,
    "description": "The data source (server.info lists them); default: the first the operator configured.",
}
# A statement, not a data load: longer lists of values go in params (or a join). The pre-check
# reads at most 10,000 tokens, about 30 KB of "1, 2, 3, …".
_SQL = {"type": "string", "minLength": 1, "maxLength": 20_000}
_SCALAR = {"type": ["string", "number", "integer", "boolean", "null"]}
_PARAMS = {
    "type": ["array", "object"],
    "description": "Values for the statement's placeholders: an array for ? placeholders, an object for :name ones.",
    "items": _SCALAR,
    "additionalProperties": _SCALAR,
    "maxItems": 100,
    "maxProperties": 100,
}


def _sources(ctx: Any) -> Any:
    return ctx.store(ISQLSources)


def _source(ctx: Any, arguments: dict[str, Any]) -> str:
    names = _sources(ctx).names
    source = arguments.get("source", names[0])
    if source not in names:
        raise ToolError(f"no SQL source {source!r}: the sources are {', '.join(names)}")
    return str(source)


@pack.tool(
    "sql.tables",
    title="List a database's tables",
    description=(
        "List the tables and views of a data source with about how many rows each has (rows_estimate "
        "is null when the database keeps no estimate). "
        'Example: {"source": "analytics"}; pass next_cursor back as cursor for more.'
    ),
    input_schema=object_schema({"source": _SOURCE, "limit": limit_schema(), "cursor": CURSOR_SCHEMA}),
    output_schema=object_schema(
        {
            "source": _STRING,
            "tables": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": _STRING,
                        "kind": {"type": "string", "description": "table or view"},
                        "rows_estimate": {"type": ["integer", "null"]},
                    },
                    "required": ["name", "kind", "rows_estimate"],
                },
            },
            "next_cursor": NEXT_CURSOR_SCHEMA,
        },
        ("source", "tables", "next_cursor"),
    ),
    annotations=READ,
)
def sql_tables(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    source = _source(ctx, arguments)
    filters = {"source": source}
    after = text_position(decode_cursor(ctx, "sql.tables", filters, arguments.get("cursor")), 256)  # as sql.describe
    d = _sources(ctx).tables(source, limit_of(arguments), after)

    def page(found: tuple[dict[str, Any], str | None]) -> dict[str, Any]:
        listed, last = found
        return {**listed, "next_cursor": encode_cursor(ctx, "sql.tables", filters, last)}

    return d.addCallback(page)


@pack.tool(
    "sql.describe",
    title="Describe a table",
    description=(
        "Show a table's (or view's) columns with their types, whether they may be null, their "
        # mcpd.stores.sql.sources.DESCRIBED_COLUMNS and DESCRIBED_INDEXES (not imported: SQLAlchemy).
        "defaults and keys, and its indexes: at most 1000 columns and 200 indexes, in about 1 MB (truncated says some were left out; sql.query on the database's catalog "
        'shows the rest). Example: {"table": "orders"}.'
    ),
    input_schema=object_schema(
        {"source": _SOURCE, "table": {"type": "string", "minLength": 1, "maxLength": 256}}, ("table",)
    ),
    output_schema=object_schema(
        {
            "source": _STRING,
            "table": _STRING,
            "columns": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": _STRING,
                        "type": _STRING,
                        "nullable": {"type": "boolean"},
                        "default": {"type": ["string", "null"]},
                        "key": {
                            "type": ["string", "null"],
                            "description": "primary, unique, index (leads an index) or null",
                        },
                    },
                    "required": ["name", "type", "nullable", "default", "key"],
                },
            },
            "indexes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": _STRING,
                        "columns": {"type": "array", "items": _STRING},
                        "unique": {"type": "boolean"},
                        "primary": {"type": "boolean"},
                    },
                    "required": ["name", "columns", "unique", "primary"],
                },
            },
            "truncated": {
                "type": "boolean",
                "description": "True when the table has more columns or indexes than are shown.",
            },
        },
        ("source", "table", "columns", "indexes", "truncated"),
    ),
    annotations=READ,
)
def sql_describe(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    return _sources(ctx).describe_table(_source(ctx, arguments), arguments["table"])


@pack.tool(
    "sql.query",
    title="Run a read-only SQL query",
    description=(
        "Run one read-only statement (SELECT, WITH … SELECT, VALUES, SHOW, DESCRIBE) and get its rows, "
        "at most limit of them (truncated says there were more). Writes, DDL, SET, CALL and several "
        "statements at once are refused; a statement past the time limit is stopped. Use ? or :name "
        "placeholders with params rather than pasting values into the SQL. "
        'Example: {"sql": "SELECT id, total FROM orders WHERE customer_id = ? ORDER BY id DESC", '
        '"params": [42], "limit": 10}.'
    ),
    input_schema=object_schema(
        {
            "source": _SOURCE,
            "sql": {**_SQL, "description": "One read-only statement."},
            "params": _PARAMS,
            "limit": {
                "type": "integer",
                "minimum": 1,
                "maximum": QUERY_MAX,
                "default": QUERY_LIMIT,
                "description": f"Most rows to return (default {QUERY_LIMIT}, at most {QUERY_MAX}).",
            },
        },
        ("sql",),
    ),
    output_schema=object_schema(
        {
            "source": _STRING,
            "columns": {"type": "array", "items": _STRING},
            "rows": {
                "type": "array",
                "items": {"type": "array"},
                "description": (
                    "One array per row, in column order. Exact numbers (DECIMAL) are strings, times ISO 8601, "
                    "binary values base64: prefixed when they are not UTF-8 text."
                ),
            },
            "row_count": {"type": "integer"},
            "truncated": {
                "type": "boolean",
                "description": "True when the statement had more rows than limit (or than about 1 MB of text).",
            },
            "elapsed_ms": {"type": "number"},
        },
        ("source", "columns", "rows", "row_count", "truncated", "elapsed_ms"),
    ),
    annotations=READ,
)
def sql_query(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    limit = arguments.get("limit", QUERY_LIMIT)
    return _sources(ctx).query(_source(ctx, arguments), arguments["sql"], arguments.get("params"), limit)


@pack.tool(
    "sql.explain",
    title="Explain a query's plan",
    description=(
        "Show how the database would run one SELECT (its own EXPLAIN output: SQLite's query plan rows, "
        "MySQL's and MariaDB's EXPLAIN FORMAT=JSON), without running it. "
        'Example: {"sql": "SELECT * FROM orders WHERE customer_id = 42"}.'
    ),
    input_schema=object_schema(
        {"source": _SOURCE, "sql": {**_SQL, "description": "One SELECT statement."}, "params": _PARAMS}, ("sql",)
    ),
    output_schema=object_schema(
        {
            "source": _STRING,
            "format": {"type": "string", "description": "sqlite-query-plan (rows) or json (MySQL, MariaDB)"},
            "plan": {"type": ["array", "object", "null"]},
        },
        ("source", "format", "plan"),
    ),
    annotations=READ,
)
def sql_explain(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    return _sources(ctx).explain(_source(ctx, arguments), arguments["sql"], arguments.get("params"))
