# -*- test-case-name: tests.test_audit -*-
"""The audit trail on SQL (`IAuditLog`): written in batches, searched newest first, pruned by age.

Rows are read newest first by ``(at, seq)``, which every index of the table ends with (InnoDB
and SQLite both append the primary key to a secondary index), so a page is an index range read
backwards whatever the filter: the tenant, and one of key, tool or outcome.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import bindparam, or_, select
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred
from zope.interface import implementer

from mcpd.interfaces import IAuditLog
from mcpd.stores.sql.database import SQLDatabase
from mcpd.stores.sql.schema import audit_records

_C = audit_records.c
_INSERT = audit_records.insert()
_OLDEST = select(_C.seq).where(_C.at < bindparam("cutoff")).order_by(_C.at).limit(bindparam("batch"))
_DELETE = audit_records.delete().where(_C.seq.in_(bindparam("seqs", expanding=True)))
# Columns whose values come from the request (a tool name, a header): cut to the column's length
# rather than refused by MySQL's strict mode, which would fail the whole batch.
_LIMITS: dict[str, int] = {
    name: length
    for name, column in _C.items()
    if (length := getattr(column.type, "length", None)) is not None and name != "tenant"
}
# Filter argument -> column.
_EQUAL = {"key": _C.key_name, "tool": _C.tool, "outcome": _C.outcome}


def _cut(value: Any, limit: int) -> Any:
    return value[:limit] if isinstance(value, str) and len(value) > limit else value


def audit_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """The row of an audit record (`mcpd.observe.audit.entry`, with its ``tenant``)."""
    request_id = record.get("request_id")
    row = {
        "tenant": record.get("tenant") or "default",
        "at": datetime.datetime.fromtimestamp(record["time"], datetime.UTC).replace(tzinfo=None),
        "key_name": record.get("key"),
        "peer": record.get("peer") or "",
        "transport": record.get("transport") or "",
        "method": record.get("method"),
        "tool": record.get("tool"),
        "outcome": record["outcome"],
        "duration_ms": round(record.get("duration", 0.0) * 1000, 3),
        # JSON, so that 7 and "7" stay apart (a request id may be either).
        "request_id": None if request_id is None else json.dumps(request_id),
        "x_request_id": record.get("x_request_id"),
        "detail": record.get("detail"),
    }
    for name, limit in _LIMITS.items():
        row[name] = _cut(row[name], limit)
    return row


def _shown(row: Any) -> dict[str, Any]:
    """A stored record as server.audit shows it."""
    request_id = row.request_id
    if request_id is not None:
        with contextlib.suppress(ValueError):  # one cut to the column's length stays a string
            request_id = json.loads(request_id)
    return {
        "time": row.at.isoformat(timespec="microseconds") + "Z",
        "key": row.key_name,
        "peer": row.peer,
        "transport": row.transport,
        "method": row.method,
        "tool": row.tool,
        "outcome": row.outcome,
        "duration_ms": row.duration_ms,
        "request_id": request_id,
        "x_request_id": row.x_request_id,
        "detail": row.detail,
    }


@implementer(IAuditLog)
class SQLAuditLog:
    """`IAuditLog` on one `SQLDatabase`."""

    def __init__(self, database: SQLDatabase) -> None:
        self.database = database

    def append(self, records: Iterable[Mapping[str, Any]]) -> Deferred[int]:
        """Store ``records`` in one transaction. They are read in the store's thread, so they may
        be a lazy iterable (the rows are made off the reactor)."""

        def work(connection: Connection) -> int:
            rows = [audit_row(record) for record in records]
            if rows:
                connection.execute(_INSERT, rows)
            return len(rows)

        return self.database.run("audit.append", work, write=True)

    def search(
        self, tenant: str, filters: dict[str, Any], limit: int, before: Any
    ) -> Deferred[tuple[list[dict[str, Any]], Any]]:
        def work(connection: Connection) -> tuple[list[dict[str, Any]], Any]:
            query = select(audit_records).where(_C.tenant == tenant)
            if filters.get("since") is not None:
                query = query.where(_C.at >= filters["since"])
            if filters.get("until") is not None:
                query = query.where(_C.at < filters["until"])
            for name, column in _EQUAL.items():
                if filters.get(name) is not None:
                    query = query.where(column == filters[name])
            if before is not None:
                at, seq = datetime.datetime.fromisoformat(before[0]), int(before[1])
                # A range on the index (at <=), then the rows of that same instant already shown.
                query = query.where(_C.at <= at, or_(_C.at < at, _C.seq < seq))
            rows = connection.execute(query.order_by(_C.at.desc(), _C.seq.desc()).limit(limit + 1)).all()
            page = rows[:limit]
            position = [page[-1].at.isoformat(), page[-1].seq] if len(rows) > limit else None
            return [_shown(row) for row in page], position

        return self.database.run("audit.search", work)

    def prune(self, older_than: datetime.datetime, batch: int) -> Deferred[int]:
        def work(connection: Connection) -> int:
            seqs = list(connection.execute(_OLDEST, {"cutoff": older_than, "batch": batch}).scalars())
            if not seqs:
                return 0
            return int(connection.execute(_DELETE, {"seqs": seqs}).rowcount)

        return self.database.run("audit.prune", work, write=True)
