# -*- test-case-name: tests.test_audit -*-
"""The audit trail on SQL (`IAuditLog`): written in batches, searched newest first, pruned by age.

Every audited call makes a row, so writing one must cost little: rows go to the driver as plain
tuples (SQLAlchemy's per-row type processing cost more than SQLite's own work), times as the text
SQLite stores and MySQL parses, and the table carries only the indexes the searches need.

A batch is written ``_GROUP`` rows to an ``INSERT``, each group's rows made just before it goes,
and after each group the store's thread yields the core (`yield_core`). On a busy daemon the
writer shares a core with the reactor, and nothing else bounded how long it kept it: it held the
GIL while it made a whole batch's rows first (2,000 rows, ~6 ms in which the reactor all but
stopped), and later, with the rows made group by group, it still ran for a scheduler tick (4 ms)
or more at a time, the GIL let go and taken back around each ``INSERT`` before the waiting
reactor was scheduled to take it (4-8 ms turns, seen with ``perf sched``). Those stalls, a few
after every flush, were most of a busy daemon's p99. A group is ~0.4 ms of the writer's work.
The yields stretch a batch under a busy reactor (~47 ms for 2,000 rows where it took ~14), so on
SQLite, whose writes all wait for one thread, a batch gives way after a group to a write that
waits for it (a tool's), and the writer gives the rest again (`AuditWriter.flush`).
Rows are read newest first by ``(at, seq)``, which every index of the table
ends with (InnoDB and SQLite both append the primary key to a secondary index), so a page is an
index range read backwards whatever the filter: the tenant, and one of key, tool or outcome.
Pruning walks the oldest rows by ``seq`` (rows are written in time order), so no index on the
time alone is kept up to date for it.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import bindparam, or_, select
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred
from zope.interface import implementer

from mcpd.interfaces import AUDIT_FIELDS, IAuditLog
from mcpd.stores.sql.database import RawConnection, SQLDatabase
from mcpd.stores.sql.schema import audit_records
from mcpd.stores.threads import yield_core

_C = audit_records.c
# AUDIT_FIELDS -> the columns, in that order.
_COLUMNS = (
    "tenant",
    "at",
    "key_name",
    "peer",
    "transport",
    "method",
    "tool",
    "outcome",
    "duration_ms",
    "request_id",
    "x_request_id",
    "detail",
)
assert len(_COLUMNS) == len(AUDIT_FIELDS)
_INSERT = "INSERT INTO audit_records ({columns}) VALUES ({markers})".format(
    columns=", ".join(_COLUMNS), markers="{marker}, " * (len(_COLUMNS) - 1) + "{marker}"
)
# By the driver's placeholders: SQLite's, PyMySQL's.
_INSERTS = {True: _INSERT.format(marker="?"), False: _INSERT.format(marker="%s")}
# _GROUP rows to an INSERT (SQLite: 480 values, under the 999 of SQLite before 3.32; PyMySQL
# makes one INSERT of an executemany's rows), the core yielded after each.
_GROUP = 40
_INSERT_GROUP = _INSERTS[True] + (", (" + ", ".join("?" * len(_COLUMNS)) + ")") * (_GROUP - 1)
_WIDTH = len(_COLUMNS)
_GROUP_VALUES = _GROUP * _WIDTH
_OLDEST = select(_C.seq, _C.at).order_by(_C.seq).limit(bindparam("batch"))
_DELETE = audit_records.delete().where(_C.seq.in_(bindparam("seqs", expanding=True)))
# Filter argument -> column.
_EQUAL = {"key": _C.key_name, "tool": _C.tool, "outcome": _C.outcome}


def _length(name: str) -> int:
    length = getattr(_C[name].type, "length", None)
    assert length is not None, name
    return int(length)


# Values that come from the request (a tool name, a header) are cut to their column's length,
# not refused by MySQL's strict mode, which would fail the whole batch.
_KEY, _PEER, _TRANSPORT, _METHOD, _TOOL, _OUTCOME, _REQUEST_ID, _X_REQUEST_ID = map(
    _length, ("key_name", "peer", "transport", "method", "tool", "outcome", "request_id", "x_request_id")
)


class _Rows:
    """Makes the rows of a batch (in a store thread): `AUDIT_FIELDS` tuples to column values."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def row(self, record: Sequence[Any]) -> tuple[Any, ...]:
        """One record's column values; its time as ``YYYY-MM-DD HH:MM:SS.ffffff`` UTC (what
        SQLAlchemy stores in SQLite and MySQL parses), the date and time of one second
        formatted once."""
        tenant, when, key, peer, transport, method, tool, outcome, duration, request_id, x_request_id, detail = record
        if request_id is not None:
            # JSON, so that 7 and "7" stay apart (a request id may be either); cut to the column
            # (an integer too long for it is kept as the start of its text).
            text = str(request_id) if type(request_id) is int else None
            if text is None or len(text) > _REQUEST_ID:
                text = json.dumps(text if text is not None else request_id)
            request_id = text[:_REQUEST_ID]
        second = int(when)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
        return (
            tenant,
            # printf-style: three quarters of an f-string's instructions (%d truncates as int()).
            "%s.%06d" % (self._prefix, (when - second) * 1_000_000),  # noqa: UP031
            key and key[:_KEY],
            (peer or "")[:_PEER],
            (transport or "")[:_TRANSPORT],
            method and method[:_METHOD],
            tool and tool[:_TOOL],
            outcome[:_OUTCOME],
            round(duration * 1000, 3),
            request_id,
            x_request_id and x_request_id[:_X_REQUEST_ID],
            detail,
        )


def _shown(row: Any) -> dict[str, Any]:
    """A stored record as server.audit shows it."""
    request_id = row.request_id
    if request_id is not None:
        with contextlib.suppress(ValueError):  # one cut to the column's length stays a string
            loaded = json.loads(request_id)
            # server.audit shows a string or an integer: any other id as its JSON text.
            request_id = loaded if isinstance(loaded, str) or type(loaded) is int else request_id
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

    # Called in the store's thread after each group of rows written; a test counts them.
    pause: Callable[[], None] = staticmethod(yield_core)

    def __init__(self, database: SQLDatabase) -> None:
        self.database = database

    def append(self, records: Iterable[Sequence[Any]]) -> Deferred[int]:
        """Store ``records`` in one transaction, on the driver's own connection like the other
        hot writes; how many, the first that many of them. They are made into rows in the
        store's thread, each group's just before it is inserted, the core yielded after each
        group; on SQLite the batch stops after a group when another write waits for the one
        writer thread (both: the module's docstring). The rows are not kept there (SQLite's
        transaction, begun IMMEDIATE, is never retried); on MySQL they are, for a transaction
        retried after a deadlock (``records`` may be an iterator: the retry must write the same
        rows again, not none)."""
        source = iter(records)
        row = _Rows().row
        pause = self.pause
        writes_waiting = self.database.writes_waiting
        made: list[tuple[Any, ...]] = []

        def work(connection: RawConnection) -> int:
            if not connection.sqlite:
                start = 0
                while True:
                    if start == len(made):
                        made.extend(row(record) for record in itertools.islice(source, _GROUP))
                    group = made[start : start + _GROUP]
                    if not group:
                        return start
                    connection.executemany_sql(_INSERTS[False], group)
                    start += len(group)
                    pause()
            written = 0
            rest: list[list[Any]] = []

            def groups() -> Iterator[list[Any]]:
                """The values of _GROUP rows at a time, made as SQLite asks for them; the rows
                of a last, shorter group go to ``rest``."""
                nonlocal written
                values: list[Any] = []
                for record in source:
                    values += row(record)
                    if len(values) == _GROUP_VALUES:
                        written += _GROUP
                        yield values
                        values = []
                        pause()  # SQLite has inserted the group before it asks for the next
                        if writes_waiting():
                            return  # a tool's write goes first; the rest is the writer's to give again
                rest.extend(values[i : i + _WIDTH] for i in range(0, len(values), _WIDTH))

            connection.executemany_sql(_INSERT_GROUP, groups())
            if rest:
                connection.executemany_sql(_INSERTS[True], rest)
            return written + len(rest)

        return self.database.run_raw("audit.append", work, write=True)

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
            oldest = connection.execute(_OLDEST, {"batch": batch}).all()
            seqs = [row.seq for row in oldest if row.at < older_than]
            if seqs:
                connection.execute(_DELETE, {"seqs": seqs})
            # Rows are in time order by seq: once one is recent enough, so are those after it.
            return len(seqs)

        return self.database.run("audit.prune", work, write=True)
