# -*- test-case-name: tests.test_sql_pack -*-
"""The operator's SQL data sources (``--sql-source NAME=URL``), read-only, for the ``sql`` pack.

Each source has its own engine (never mcpd's own store: a connection per call for SQLite, a pool
whose sessions are reset between calls for MySQL / MariaDB) and its own thread pool, as many
threads as connections. What keeps a source read-only is the database itself, not
the lexical pre-check (`mcpd.stores.sql.statements`):

- SQLite: the file is opened read-only (``mode=ro``), with ``PRAGMA query_only``, no attached
  databases, and an authorizer that lets a statement read and nothing else; a progress handler
  interrupts it past the time limit.
- MySQL / MariaDB: every call is one ``START TRANSACTION READ ONLY`` rolled back afterwards, with
  the server's statement time limit (MariaDB ``max_statement_time``, MySQL
  ``max_execution_time``) and ``sql_select_limit`` set again before it; the client never asks for
  multi-statements; rows are streamed and read no further than the row cap.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import functools
import json
import math
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import attrs
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList, fail, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mcpd.interfaces import (
    DEGRADED,
    DOWN,
    UP,
    ISQLSources,
    IStore,
    NotFound,
    Refused,
    StoreError,
    StoreStatus,
    StoreUnavailable,
)
from mcpd.stores.sql.statements import check_statement, to_pyformat
from mcpd.stores.threads import ThreadPoolService

log = Logger(namespace="mcpd.stores.sql.sources")

T = TypeVar("T")
STORE = "sql_sources"
CONNECT_TIMEOUT = 5.0
# Rows stop (truncated) once their text passes this many characters.
MAX_RESULT_CHARS = 1_000_000
# The largest string or blob SQLite may build or read (SQLITE_LIMIT_LENGTH) in mcpd's own
# statements (the schema, sql.describe's defaults).
SQLITE_MAX_LENGTH = 4 * MAX_RESULT_CHARS
# The same in a caller's statement. One function call is not interrupted by the time limit (the
# progress handler runs between virtual machine steps), and some are quadratic in their
# arguments' length: instr() and replace() of a 128 KB needle in a 256 KB haystack take ~0.3 s
# (with 1.6 MB and 0.8 MB, 19 s), LIKE and GLOB as long times their pattern's length. Bounded so,
# one call stays well within any time limit, and a row is at most this times its columns.
SQLITE_VALUE_LENGTH = 256 * 1024
SQLITE_LIKE_PATTERN_LENGTH = 1000
# A caller's result has at most this many columns, or as many as the widest table or view has
# (SQLITE_LIMIT_COLUMN: a table wider than the limit could not be read at all).
SQLITE_RESULT_COLUMNS = 100
# The largest packet (a row, most often) read from MySQL/MariaDB: a row of MAX_RESULT_CHARS
# characters in utf8mb4, and room for the lengths of its columns. A longer one is refused before
# it is read, and its connection dropped.
MYSQL_MAX_PACKET = 4 * MAX_RESULT_CHARS + 64 * 1024
# How long the rows left past a page may take to read before the connection is dropped instead.
DRAIN_SECONDS = 0.25
# sql.describe shows at most this many columns and indexes (truncated says there were more):
# MySQL allows 4,096 columns, SQLite up to 32,767, and indexes without end.
DESCRIBED_COLUMNS, DESCRIBED_INDEXES = 1000, 200
# /health waits this long for a source's probe (a team database does not hold it up).
PROBE_TIMEOUT = 2.0
OK, FAILING, STARTING = "ok", "down", "starting"
# SQLite's authorizer: what a statement may do (read), everything else is denied.
_SQLITE_READS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)
# What opening a full-text table (FTS3/4/5) asks of the authorizer, once per connection: FTS3/4
# read ``PRAGMA page_size`` and FTS5 ``PRAGMA data_version`` (no value: reads), and the table's
# declaration (sqlite3_declare_vtab) is compiled with an UPDATE of the schema table's columns that
# never runs. No statement of the caller's can ask for that UPDATE: SQLite refuses a write to
# sqlite_master ("may not be modified") before asking the authorizer, unless writable_schema is
# on, and that is a PRAGMA with a value, which stays denied.
_SQLITE_READ_PRAGMAS = frozenset({"page_size", "data_version"})
_SQLITE_SCHEMA_COLUMNS = frozenset({"type", "name", "tbl_name", "rootpage", "sql"})
# SQL functions the authorizer denies: fts3_tokenizer() reads (a library address) and sets (a
# pointer the next MATCH calls) a tokenizer's C struct; load_extension() loads native code; the
# shell's file functions (if ever built in) read and write the host's files.
_SQLITE_DENIED_FUNCTIONS = frozenset({"fts3_tokenizer", "load_extension", "readfile", "writefile", "edit", "fts5"})
# SQLITE_READONLY extended codes met opening a WAL file read-only (mode=ro) with no -shm beside
# it, where it cannot be made: not a statement writing, the source unreadable.
_SQLITE_WAL_UNREADABLE = frozenset(
    {
        sqlite3.SQLITE_READONLY_DIRECTORY,
        sqlite3.SQLITE_READONLY_CANTINIT,
        sqlite3.SQLITE_READONLY_CANTLOCK,
        sqlite3.SQLITE_READONLY_RECOVERY,
    }
)
_SQLITE_DEFAULT_COLUMNS = 2000  # SQLITE_MAX_COLUMN as SQLite is built by default
# The SQLite virtual machine instructions between two looks at the clock.
_PROGRESS_STEPS = 1000
# MySQL errors: the connection is gone; the statement ran out of time; a write in a read-only
# transaction; a privilege the user does not have.
# (A refused password or unknown database is only met when connecting: see `_unavailable`;
# code 0 is pymysql's InterfaceError on a connection it already closed.)
_MYSQL_GONE = {0, 2002, 2003, 2005, 2006, 2013, 2055, 1040, 1053, 1077, 1927, 4031}
_MYSQL_TIMED_OUT = {1969, 3024, 1317, 1028}
_MYSQL_READ_ONLY = {1792, 1290, 1836}
_MYSQL_DENIED = {1044, 1045, 1142, 1143, 1227, 1370}
_MYSQL_UNKNOWN_NAME = {1054, 1146}  # unknown column, unknown table
_NAME_KINDS = {"BASE TABLE": "table", "VIEW": "view", "SYSTEM VIEW": "view", "SEQUENCE": "sequence", "table": "table"}
_KEYS = {"PRI": "primary", "UNI": "unique", "MUL": "index"}
_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class SourceConfigError(ValueError):
    """A ``--sql-source`` cannot be used; the message names it."""


@attrs.frozen
class SourceConfig:
    """One data source: its name and URL (the password kept out of every log and answer)."""

    name: str
    url: URL = attrs.field(repr=False)

    @property
    def backend(self) -> str:
        """``sqlite`` or ``mysql`` (MariaDB included)."""
        return "sqlite" if self.url.get_backend_name() == "sqlite" else "mysql"

    @property
    def shown_url(self) -> str:
        return self.url.render_as_string(hide_password=True)


def source_config(name: str, raw_url: str, password: str | None = None) -> SourceConfig:
    """A `SourceConfig` from ``--sql-source NAME=URL`` (and the source's password, if given
    apart); `SourceConfigError` naming what is wrong."""
    where = f"--sql-source {name}"
    try:
        url = make_url(raw_url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise SourceConfigError(
            f"{where}: not a database URL (sqlite:///PATH or mysql+pymysql://USER@HOST:PORT/DB, the port a number)"
        ) from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise SourceConfigError(f"{where}: name the SQLite file, sqlite:///PATH (it is opened read-only)")
        return SourceConfig(name, url.set(database=os.path.abspath(url.database)))
    if backend in ("mysql", "mariadb"):
        if not url.database:
            raise SourceConfigError(f"{where}: name the database, mysql+pymysql://USER@HOST:3306/DATABASE")
        url = url.set(drivername="mysql+pymysql", query={**url.query, "charset": "utf8mb4"})
        if password is not None:
            url = url.set(password=password)
        return SourceConfig(name, url)
    raise SourceConfigError(f"{where}: {backend} is not supported (SQLite, MySQL 8 and MariaDB 10.11+ are)")


class SQLSource:
    """One data source: its engine, its threads and its guards."""

    def __init__(
        self,
        config: SourceConfig,
        timeout: float,
        connections: int,
        reactor: Any,
        metrics: SourceMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else SourceMetrics()
        self.name = config.name
        self.backend = config.backend
        self.timeout = timeout
        self.connections = connections
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=connections, name=f"mcpd-sql-{config.name}")
        self.engine: Engine = self._engine()
        self.state = STARTING
        self.last_error: str | None = None
        self.server_version: str | None = None
        self._widest: tuple[int, int] | None = None  # SQLite: (schema_version, its widest table's columns)

    # -- connections ----------------------------------------------------------------------------

    def _engine(self) -> Engine:
        # No session state (a lock from GET_LOCK(), a user variable, a tokenizer) may outlive a
        # call or pass to another tenant's. SQLite: a connection per call, closed after it (opening
        # a file costs little). MySQL / MariaDB: pooled (a connection costs a round trip or more
        # per handshake step, ~38 ms under load against ~0.3 ms pooled), each session reset when
        # its connection comes back (`_mysql_reset`). The source's threads keep the connections
        # at most ``connections``.
        if self.backend == "sqlite":
            path = str(self.config.url.database)
            uri = f"file:{urllib.parse.quote(path)}?mode=ro"
            if self.config.url.query.get("immutable") in ("1", "true"):
                # The operator says the file does not change while mcpd runs: no locks, no -shm
                # (a WAL file can then be read from a directory mcpd may not write).
                uri += "&immutable=1"

            def connect() -> sqlite3.Connection:
                # mode=ro: SQLite itself refuses every write; no statement cache, so every
                # statement meets the authorizer when it is prepared.
                connection = sqlite3.connect(
                    uri, uri=True, check_same_thread=False, isolation_level=None, cached_statements=0, timeout=1.0
                )
                connection.execute("PRAGMA query_only = ON")
                connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
                connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, SQLITE_MAX_LENGTH)
                return connection

            return create_engine("sqlite://", creator=connect, poolclass=NullPool)
        import pymysql.cursors

        engine = create_engine(
            self.config.url,
            pool_size=self.connections,
            max_overflow=0,
            pool_timeout=CONNECT_TIMEOUT,
            pool_pre_ping=True,
            pool_recycle=3600,
            # _mysql_reset instead of a ROLLBACK: it ends the transaction and much more.
            pool_reset_on_return=None,
            connect_args={
                "connect_timeout": CONNECT_TIMEOUT,
                # The server stops a statement at the limit; a server that stops answering is
                # given up on a little later.
                "read_timeout": self.timeout + CONNECT_TIMEOUT,
                "write_timeout": self.timeout + CONNECT_TIMEOUT,
                # No CLIENT.MULTI_STATEMENTS (whatever the URL says): one statement per call.
                "client_flag": 0,
                "local_infile": False,
                "cursorclass": pymysql.cursors.Cursor,
            },
        )
        event.listen(engine, "do_connect", _mysql_bounded_connect)
        event.listen(engine, "connect", _mysql_connect)
        event.listen(engine, "reset", _mysql_reset)
        return engine

    def close(self) -> None:
        self.engine.dispose()

    # -- work -----------------------------------------------------------------------------------

    def run(self, work: Callable[[Any], T]) -> Deferred[T]:
        """``work(driver_connection)`` in this source's threads; database errors mapped to
        `Refused` or `StoreUnavailable`."""
        if not self.pool.started:
            return fail(StoreUnavailable(self._store_name, "mcpd is not running its SQL sources"))
        return deferToThreadPool(self.reactor, self.pool, self._call, work)

    @property
    def _store_name(self) -> str:
        return f"SQL source {self.name!r}"

    def _call(self, work: Callable[[Any], T]) -> T:
        """In a source thread: ``work`` on a pooled connection, counted by outcome."""
        started = time.monotonic()
        outcome = "error"
        try:
            result = self._attempt(work)
            outcome = "ok"
            return result
        except StoreError as e:
            outcome = _outcome(e)
            raise
        finally:
            self.metrics.record(self.name, outcome, time.monotonic() - started)

    def _attempt(self, work: Callable[[Any], T]) -> T:
        try:
            fairy = self.engine.raw_connection()
        except (sa_exc.DBAPIError, sa_exc.TimeoutError, sqlite3.Error, _mysql_errors()) as e:
            raise self._unavailable(e) from None
        try:
            result = work(fairy.driver_connection)
        except _Discard as discard:
            fairy.invalidate()  # a result left unread: the connection goes, not the rows
            if discard.error is not None:
                self._reached()
                raise discard.error from None
            result = discard.result
        except (sqlite3.Error, sa_exc.DBAPIError, _mysql_errors()) as e:
            error = self._mapped(e)
            if isinstance(error, StoreUnavailable):
                fairy.invalidate()
            else:
                self._reached()
            raise error from None
        except Refused:
            self._reached()
            raise
        finally:
            fairy.close()
        self._reached()
        return result

    def _mapped(self, error: Exception) -> Exception:
        """`Refused` (the statement) or `StoreUnavailable` (the source) for a driver error."""
        cause = error.orig if isinstance(error, sa_exc.DBAPIError) and error.orig is not None else error
        if isinstance(cause, sqlite3.Error):
            message = str(cause)
            lowered = message.lower()
            if getattr(cause, "sqlite_errorcode", None) in _SQLITE_WAL_UNREADABLE:
                return self._unavailable(cause)  # not the statement's doing: the source's
            if "interrupted" in lowered:
                return self._timed_out()
            if "too big" in lowered:  # SQLITE_TOOBIG: past SQLITE_LIMIT_LENGTH
                return RowTooLarge(
                    f"one value is past {SQLITE_VALUE_LENGTH:,} bytes, the most a statement may read or build "
                    "on a SQLite source (functions such as instr(), replace() and LIKE would run for minutes on "
                    "longer ones): select shorter values; length() still measures a longer stored one"
                )
            if "too many columns" in lowered:  # SQLITE_LIMIT_COLUMN
                return RowTooLarge(
                    f"the result has more columns than a statement may return here ({message}): at most "
                    f"{SQLITE_RESULT_COLUMNS}, or as many as the widest table has; select fewer"
                )
            if "pattern too complex" in lowered:  # SQLITE_LIMIT_LIKE_PATTERN_LENGTH
                return Refused(
                    f"a LIKE or GLOB pattern is longer than {SQLITE_LIKE_PATTERN_LENGTH:,} bytes, the most on a "
                    "SQLite source: use a shorter pattern, or instr() / = for a long literal"
                )
            if "not authorized" in lowered or "readonly" in lowered or "read-only" in lowered:
                return Refused(f"the database refused it: {message} (the source is read-only)")
            if "unable to open" in lowered or "disk i/o" in lowered or "locked" in lowered or "busy" in lowered:
                return self._unavailable(cause)
            return self._refused(message, "no such table" in lowered or "no such column" in lowered)
        code = _mysql_code(cause)
        if code in _MYSQL_GONE or (code is None and _connection_error(cause)):
            return self._unavailable(cause)
        message = _mysql_message(cause)
        if code in _MYSQL_TIMED_OUT:
            return self._timed_out()
        if code in _MYSQL_READ_ONLY:
            return Refused(f"the database refused it: {message} (the source is read-only)")
        if code in _MYSQL_DENIED:
            return Refused(f"the database refused it: {message} (mcpd's user for this source may only read)")
        return self._refused(message, code in _MYSQL_UNKNOWN_NAME)

    def _refused(self, message: str, unknown_name: bool) -> Refused:
        """The database's own reason, and where to look when it names something unknown."""
        hint = "; sql.tables lists the tables and sql.describe their columns" if unknown_name else ""
        return Refused(f"the database refused the statement: {message}{hint}")

    def _timed_out(self) -> Refused:
        return TimedOut(
            f"the statement ran past the {self.timeout:g}s time limit (--sql-timeout) and was stopped: "
            "narrow it (a WHERE on an indexed column, fewer joins) or ask for fewer rows"
        )

    def _unavailable(self, error: Exception) -> StoreUnavailable:
        cause = error.orig if isinstance(error, sa_exc.DBAPIError) and error.orig is not None else error
        if isinstance(error, sa_exc.TimeoutError):
            reason = "every connection to it is busy"
        elif isinstance(cause, sqlite3.Error) and getattr(cause, "sqlite_errorcode", None) in _SQLITE_WAL_UNREADABLE:
            reason = (
                "cannot read its SQLite file: it is in WAL mode, and a reader must create its -shm (and -wal) "
                "file beside it when no other program has it open, in a directory mcpd may not write; let "
                "mcpd's user write that directory, or add ?immutable=1 to the source's URL if the file never "
                "changes while mcpd runs"
            )
        elif isinstance(cause, sqlite3.Error):
            reason = f"cannot read its SQLite file ({cause})"
        else:
            code = _mysql_code(cause)
            reason = {
                1045: "the server refused mcpd's user name or password",
                1049: "the database named in its URL does not exist",
                1040: "the server has too many connections",
            }.get(code or 0, "cannot reach the database server" if code in (2002, 2003) else "the connection was lost")
        self._down(reason)
        return StoreUnavailable(self._store_name, reason + "; try again later, or ask the operator whether it is down")

    def _down(self, reason: str) -> None:
        if self.state != FAILING:
            log.error(
                "SQL source {name} ({url}) is unavailable: {reason}",
                name=self.name,
                url=self.config.shown_url,
                reason=reason,
            )
        self.state, self.last_error = FAILING, reason

    def _reached(self) -> None:
        if self.state == FAILING:
            log.info("SQL source {name} is reachable again", name=self.name)
        self.state, self.last_error = OK, None

    # -- what the tools ask ---------------------------------------------------------------------

    def tables(self, limit: int, after: str | None) -> Deferred[tuple[list[dict[str, Any]], str | None]]:
        return self.run(lambda connection: self._tables(connection, limit, after))

    def _tables(self, connection: Any, limit: int, after: str | None) -> tuple[list[dict[str, Any]], str | None]:
        cursor = connection.cursor()
        try:
            if self.backend == "sqlite":
                cursor.execute(
                    "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') "
                    "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name > ? ORDER BY name LIMIT ?",
                    (after or "", limit + 1),
                )
                listed = cursor.fetchall()
                estimates = _sqlite_estimates(cursor, [name for name, _kind in listed])
                rows = [(name, kind, estimates.get(name)) for name, kind in listed]
            else:
                # Compared and ordered as bytes: information_schema's collation ignores case, but
                # the server's names need not (lower_case_table_names=0, the Unix default: zz and
                # ZZ are two tables), and a page would end between them.
                cursor.execute(
                    "SELECT TABLE_NAME, TABLE_TYPE, TABLE_ROWS FROM information_schema.TABLES "
                    "WHERE TABLE_SCHEMA = DATABASE() AND BINARY TABLE_NAME > %s ORDER BY BINARY TABLE_NAME LIMIT %s",
                    (after or "", limit + 1),
                )
                rows = list(cursor.fetchall())
        finally:
            cursor.close()
        tables = [
            {"name": name, "kind": _NAME_KINDS.get(kind, str(kind).lower()), "rows_estimate": _count(estimate)}
            for name, kind, estimate in rows[:limit]
        ]
        return tables, (tables[-1]["name"] if len(rows) > limit else None)

    def describe(self, table: str) -> Deferred[dict[str, Any]]:
        return self.run(lambda connection: self._describe(connection, table))

    def _describe(self, connection: Any, table: str) -> dict[str, Any]:
        cursor = connection.cursor()
        try:
            if self.backend == "sqlite":
                columns, indexes = _sqlite_describe(cursor, table)
            else:
                columns, indexes = _mysql_describe(cursor, table)
        finally:
            cursor.close()
        if not columns:
            raise NotFound(f"no table or view {table!r} in SQL source {self.name!r}: sql.tables lists them")
        columns, cut_columns = _bounded(columns, DESCRIBED_COLUMNS, MAX_RESULT_CHARS)
        indexes, cut_indexes = _bounded(indexes, DESCRIBED_INDEXES, MAX_RESULT_CHARS - _chars(columns))
        truncated = cut_columns or cut_indexes
        return {"source": self.name, "table": table, "columns": columns, "indexes": indexes, "truncated": truncated}

    def checked(self, sql: str, *, explain: bool = False) -> Deferred[str]:
        """`check_statement` in this source's threads (parsing a long statement takes tens of
        milliseconds: never on the reactor), a refusal counted."""
        if not self.pool.started:
            return fail(StoreUnavailable(self._store_name, "mcpd is not running its SQL sources"))

        def refused(failure: Any) -> Any:
            if failure.check(Refused):
                self.metrics.record(self.name, "refused", 0.0)
            return failure

        d = deferToThreadPool(self.reactor, self.pool, check_statement, sql, self.backend, explain=explain)
        return d.addErrback(refused)

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None, limit: int) -> Deferred[dict[str, Any]]:
        return self.checked(sql).addCallback(
            lambda statement: self.run(lambda connection: self.read(connection, statement, params, limit))
        )

    def explain(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None) -> Deferred[dict[str, Any]]:
        return self.checked(sql, explain=True).addCallback(lambda statement: self._explain(statement, params))

    def _explain(self, statement: str, params: Sequence[Any] | Mapping[str, Any] | None) -> Deferred[dict[str, Any]]:
        if self.backend == "sqlite":
            prefix, plan_format = "EXPLAIN QUERY PLAN ", "sqlite-query-plan"
        else:
            prefix, plan_format = "EXPLAIN FORMAT=JSON ", "json"

        def plan(connection: Any) -> dict[str, Any]:
            result = self.read(connection, prefix + statement, params, 10_000)
            if plan_format == "json":
                found: Any = json.loads(result["rows"][0][0]) if result["rows"] else None
            else:
                found = [dict(zip(result["columns"], row, strict=False)) for row in result["rows"]]
            return {"source": self.name, "format": plan_format, "plan": found}

        return self.run(plan)

    def read(
        self, connection: Any, statement: str, params: Sequence[Any] | Mapping[str, Any] | None, limit: int
    ) -> dict[str, Any]:
        """Run one statement under the database's guards (no pre-check: tests call this to show
        the guards hold on their own); at most ``limit`` rows."""
        if self.backend == "sqlite":
            return self._read_sqlite(connection, statement, params, limit)
        return self._read_mysql(connection, statement, params, limit)

    def _sqlite_columns(self, connection: sqlite3.Connection) -> int:
        """How many columns a caller's result may have: `SQLITE_RESULT_COLUMNS`, or as many as
        the widest table or view (found again when the schema changes)."""
        # The schema is read here, within mcpd's own SQLITE_MAX_LENGTH (PRAGMA schema_version
        # alone would not read it: the caller's statement would, within the caller's limits).
        version = connection.execute("SELECT schema_version FROM pragma_schema_version").fetchone()[0]
        known = self._widest
        if known is None or known[0] != version:
            try:
                widest = connection.execute(
                    "SELECT MAX((SELECT COUNT(*) FROM pragma_table_info(m.name))) FROM sqlite_master AS m "
                    "WHERE m.type IN ('table', 'view')"
                ).fetchone()[0]
            except sqlite3.Error:  # a view that no longer compiles: no bound but SQLite's own
                widest = _SQLITE_DEFAULT_COLUMNS
            known = self._widest = (version, int(widest or 0))
        return max(known[1], SQLITE_RESULT_COLUMNS)

    def _read_sqlite(self, connection: sqlite3.Connection, statement: str, params: Any, limit: int) -> dict[str, Any]:
        columns_limit = connection.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, self._sqlite_columns(connection))
        connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, SQLITE_VALUE_LENGTH)
        pattern_limit = connection.setlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, SQLITE_LIKE_PATTERN_LENGTH)
        deadline = time.monotonic() + self.timeout
        connection.set_authorizer(_sqlite_authorize)
        connection.set_progress_handler(lambda: time.monotonic() > deadline, _PROGRESS_STEPS)
        # The progress handler looks every _PROGRESS_STEPS instructions: with slow function calls
        # (each bounded by SQLITE_VALUE_LENGTH, but ~0.3 s) that can be minutes. An interrupt
        # from a timer is seen at the next row or loop step.
        watchdog = threading.Timer(self.timeout, connection.interrupt)
        watchdog.daemon = True
        watchdog.start()
        started = time.monotonic()
        try:
            try:
                cursor = connection.execute(statement, params if params else ())
            except OverflowError:
                raise Refused("a number in params is too large for SQLite (at most 64-bit integers)") from None
            try:
                columns = [d[0] for d in cursor.description or ()]
                rows, truncated, _ = _capped(cursor.fetchone, limit)
            finally:
                cursor.close()
        finally:
            watchdog.cancel()
            connection.set_authorizer(None)
            connection.set_progress_handler(None, 0)
            connection.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, columns_limit)
            connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, SQLITE_MAX_LENGTH)
            connection.setlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, pattern_limit)
        return self._result(columns, rows, truncated, started)

    def _read_mysql(self, connection: Any, statement: str, params: Any, limit: int) -> dict[str, Any]:
        import pymysql.cursors

        mariadb = "mariadb" in connection.get_server_info().lower()
        time_limit = (
            f"max_statement_time = {self.timeout:g}"
            if mariadb
            else f"max_execution_time = {round(self.timeout * 1000)}"
        )
        setup = connection.cursor()
        try:
            if params:
                try:
                    statement = setup.mogrify(to_pyformat(statement, params), params)
                except (TypeError, ValueError, KeyError, pymysql.err.ProgrammingError) as e:
                    raise Refused(f"params do not match the statement's placeholders ({e})") from None
            # Set again on every call: nothing a statement did to the session outlives it.
            setup.execute(f"SET SESSION {time_limit}, sql_select_limit = {limit + 1}")
            setup.execute("START TRANSACTION READ ONLY")
        finally:
            setup.close()
        started = time.monotonic()
        cursor = connection.cursor(pymysql.cursors.SSCursor)  # rows streamed, read up to the cap
        unread = False
        try:
            try:
                cursor.execute(statement)
                columns = [d[0] for d in cursor.description or ()]
                rows, truncated, exhausted = (
                    _capped(cursor.fetchone, limit) if cursor.description else ([], False, True)
                )
            except RowTooLarge as e:
                unread = True
                self._kill_query(connection)
                raise _Discard(None, e) from None
            except pymysql.err.OperationalError as e:
                if _mysql_code(e) != 2013 or "timed out" not in str(e):
                    raise
                # mcpd gave up waiting (read_timeout) on a statement the server did not stop:
                # stop it there too, so that nothing runs on past its call.
                self._kill_query(connection)
                raise _Discard(None, self._timed_out()) from None
            result = self._result(columns, rows, truncated, started)
            # Rows left unread past the cap: at most one with sql_select_limit, read to keep
            # the pooled connection. Past a few (the statement's own LIMIT beyond
            # sql_select_limit), or past DRAIN_SECONDS, the connection is dropped instead (and
            # its statement stopped), the page answered.
            try:
                unread = not exhausted and not _drained(cursor.fetchone, time.monotonic() + DRAIN_SECONDS)
            except (pymysql.err.Error, RowTooLarge):
                unread = True
            if unread:
                self._kill_query(connection)
            else:
                cursor.close()
        finally:
            # A connection the driver closed (a read timeout) has no transaction to roll back;
            # trying would raise InterfaceError and hide the real error.
            if not unread and connection.open:
                connection.rollback()
            if unread:
                # Dropped with its connection: closing the cursor, or collecting its result,
                # would read the rest of the rows first (PyMySQL has no public way to say not to).
                if cursor._result is not None:
                    cursor._result.unbuffered_active = False
                cursor.connection = None
        if unread:
            raise _Discard(result)
        return result

    def _kill_query(self, connection: Any) -> None:
        """Stop the statement running on ``connection`` (whose result is being given up) from a
        short connection of its own: ``KILL QUERY`` (a user may stop its own statements)."""
        import pymysql

        thread_id = connection.server_thread_id[0]
        try:
            args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
            # Briefly: a server that left the statement unanswered may not answer this either.
            kwargs.update(connect_timeout=PROBE_TIMEOUT, read_timeout=PROBE_TIMEOUT, write_timeout=PROBE_TIMEOUT)
            killer = pymysql.connect(*args, **kwargs)
            try:
                with killer.cursor() as cursor:
                    cursor.execute(f"KILL QUERY {int(thread_id)}")
            finally:
                killer.close()
        except pymysql.err.Error as e:
            log.warn(
                "SQL source {source}: could not stop statement {thread} after giving up on it: {error}",
                source=self.name,
                thread=thread_id,
                error=_mysql_message(e),
            )

    def _result(self, columns: list[str], rows: list[list[Any]], truncated: bool, started: float) -> dict[str, Any]:
        return {
            "source": self.name,
            "columns": columns,
            "rows": rows,
            "row_count": len(rows),
            "truncated": truncated,
            "elapsed_ms": round((time.monotonic() - started) * 1000, 3),
        }

    # -- health ---------------------------------------------------------------------------------

    def check(self) -> Deferred[Any]:
        """Reach the source (its version), within `PROBE_TIMEOUT`: a source that does not answer
        in time is down."""

        def probe(connection: Any) -> str:
            cursor = connection.cursor()
            try:
                cursor.execute("SELECT sqlite_version()" if self.backend == "sqlite" else "SELECT VERSION()")
                return str(cursor.fetchone()[0])
            finally:
                cursor.close()

        def seen(version: str) -> str:
            self.server_version = version
            return version

        def silent(failure: Any) -> None:
            if failure.check(defer.TimeoutError):
                self._down(f"no answer within {PROBE_TIMEOUT:g}s")
            return None

        return self.run(probe).addCallback(seen).addTimeout(PROBE_TIMEOUT, self.reactor).addErrback(silent)

    def describe_source(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "name": self.name,
            "backend": self.backend,
            "url": self.config.shown_url,
            "state": self.state,
        }
        if self.server_version:
            described["server_version"] = self.server_version
        if self.last_error:
            described["error"] = self.last_error
        return described


class TimedOut(Refused):
    """The statement ran past the time limit and the database stopped it."""


def _outcome(error: Exception) -> str:
    """How a call ended, for the metrics."""
    for kind, outcome in ((TimedOut, "timeout"), (StoreUnavailable, "unavailable"), (NotFound, "not_found")):
        if isinstance(error, kind):
            return outcome
    return "refused"


class SourceMetrics:
    """The sources' Prometheus series: calls by source and outcome, and how long they took."""

    def __init__(self) -> None:
        self.calls = Counter(
            "mcp_sql_source_calls",
            "Calls of the sql pack to its data sources, by source and outcome: ok, refused (by the "
            "pre-check or the database), timeout (stopped at --sql-timeout), not_found, unavailable, error.",
            ["source", "outcome"],
            registry=None,
        )
        self.duration = Histogram(
            "mcp_sql_source_call_duration_seconds",
            "Time a call to a data source took (in the source's thread), by source.",
            ["source"],
            buckets=_DURATION_BUCKETS,
            registry=None,
        )

    def record(self, source: str, outcome: str, seconds: float) -> None:
        self.calls.labels(source, outcome).inc()
        self.duration.labels(source).observe(seconds)


class RowTooLarge(Refused):
    """One row alone is past `MAX_RESULT_CHARS`."""


def _capped(fetchone: Callable[[], Any], limit: int) -> tuple[list[list[Any]], bool, bool]:
    """Rows read one at a time as JSON values, at most ``limit`` and about `MAX_RESULT_CHARS`
    of text (a model cannot read more anyway): (rows, truncated, every row read);
    `RowTooLarge` if the first row alone is past the size."""
    rows: list[list[Any]] = []
    size = 0
    while True:
        row = fetchone()
        if row is None:
            return rows, False, True
        if len(rows) == limit:
            return rows, True, False
        size += sum(map(_size, row))
        if size > MAX_RESULT_CHARS:
            if not rows:
                raise RowTooLarge(
                    f"one row holds about {size:,} characters, more than a result may ({MAX_RESULT_CHARS:,}): "
                    "select fewer or shorter columns (substr(), length())"
                )
            return rows, True, False
        rows.append([_json_value(value) for value in row])


def _drained(fetchone: Callable[[], Any], deadline: float, rows: int = 100, chars: int = MAX_RESULT_CHARS) -> bool:
    """Whether the rest of a result, read and dropped, ends within ``rows`` rows, about
    ``chars`` characters and by ``deadline`` (`time.monotonic`)."""
    for _ in range(rows):
        row = fetchone()
        if row is None:
            return True
        chars -= sum(map(_size, row))
        if chars < 0 or time.monotonic() > deadline:
            return False
    return fetchone() is None


def _size(value: Any) -> int:
    """About how many characters a column value takes as JSON (before it is made JSON)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return (len(value) + 2) // 3 * 4 + 7  # base64 at most
    return 8


class _Discard(Exception):
    """The call is over but its connection has rows left unread: drop the connection, then
    answer ``result`` (or raise ``error``)."""

    def __init__(self, result: Any, error: Exception | None = None) -> None:
        self.result = result
        self.error = error


@implementer(ISQLSources, IStore)
class SQLSources:
    """Every configured data source, by name (the first is the default), each with
    ``connections`` connections and threads and a statement time limit of ``timeout``."""

    def __init__(self, configs: Sequence[SourceConfig], timeout: float, connections: int, reactor: Any) -> None:
        self.metrics = SourceMetrics()
        sources = [SQLSource(config, timeout, connections, reactor, self.metrics) for config in configs]
        self.sources = {source.name: source for source in sources}
        self.names = [source.name for source in sources]
        self.last_check: StoreStatus | None = None

    @property
    def pools(self) -> list[ThreadPool]:
        return [source.pool for source in self.sources.values()]

    def source(self, name: str) -> SQLSource:
        source = self.sources.get(name)
        if source is None:
            raise NotFound(f"no SQL source {name!r}: the sources are {', '.join(self.names)}")
        return source

    def _on(self, name: str, call: Callable[[SQLSource], Deferred[T]]) -> Deferred[T]:
        try:
            source = self.source(name)
        except NotFound as e:
            return fail(e)
        return call(source)

    def tables(self, source: str, limit: int, after: str | None) -> Deferred[tuple[dict[str, Any], str | None]]:
        def shaped(found: tuple[list[dict[str, Any]], str | None]) -> tuple[dict[str, Any], str | None]:
            return {"source": source, "tables": found[0]}, found[1]

        return self._on(source, lambda s: s.tables(limit, after)).addCallback(shaped)

    def describe_table(self, source: str, table: str) -> Deferred[dict[str, Any]]:
        return self._on(source, lambda s: s.describe(table))

    def query(
        self, source: str, sql: str, params: Sequence[Any] | Mapping[str, Any] | None, limit: int
    ) -> Deferred[dict[str, Any]]:
        return self._on(source, lambda s: s.query(sql, params, limit))

    def explain(
        self, source: str, sql: str, params: Sequence[Any] | Mapping[str, Any] | None
    ) -> Deferred[dict[str, Any]]:
        return self._on(source, lambda s: s.explain(sql, params))

    def close(self) -> None:
        for source in self.sources.values():
            source.close()

    # -- IStore: the team's databases are reported, not required ---------------------------------

    def status(self) -> StoreStatus:
        down = [source.name for source in self.sources.values() if source.state == FAILING]
        latency = self.last_check.latency if self.last_check is not None else None
        if not down:
            return StoreStatus(STORE, UP, f"{len(self.sources)} source(s)", latency)
        state = DOWN if len(down) == len(self.sources) else DEGRADED
        return StoreStatus(STORE, state, f"unavailable: {', '.join(down)}", latency)

    def check(self) -> Deferred[StoreStatus]:
        """Probe every source at once; never fails."""
        started = time.monotonic()
        probes = [source.check() for source in self.sources.values()]

        def done(_results: Any) -> StoreStatus:
            status = self.status()
            self.last_check = attrs.evolve(status, latency=time.monotonic() - started)
            return self.last_check

        return DeferredList(probes, consumeErrors=True).addCallback(done)

    def describe(self) -> dict[str, Any]:
        """The sources for server.info: never a password."""
        return {
            "name": STORE,
            "backend": "sql",
            "state": self.status().state,
            "sources": [source.describe_source() for source in self.sources.values()],
        }

    def collectors(self) -> list[Any]:
        return [self.metrics.calls, self.metrics.duration, _SourcesUp(self)]


class _SourcesUp:
    """``mcp_sql_source_up{source}``, read at scrape time."""

    def __init__(self, sources: SQLSources) -> None:
        self.sources = sources

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "mcp_sql_source_up", "1 while a data source's last call or probe reached it.", labels=["source"]
        )
        for source in self.sources.sources.values():
            up.add_metric([source.name], float(source.state == OK))
        yield up


def _mysql_bounded_connect(_dialect: Any, _record: Any, args: Any, kwargs: Any) -> Any:
    """A PyMySQL connection that reads no packet past `MYSQL_MAX_PACKET`."""
    return _bounded_connection_class()(*args, **kwargs)


@functools.cache
def _bounded_connection_class() -> type:
    """PyMySQL's connection, refusing to read a packet past `MYSQL_MAX_PACKET` before reading
    it: a row comes in one packet (in 16 MB pieces past that), and PyMySQL reads a whole packet
    into memory before the row cap can look at it. The server offers no bound a user may set
    (``max_allowed_packet`` is global, and bounds one value, not a row)."""
    import pymysql

    class BoundedConnection(pymysql.connections.Connection):  # type: ignore[misc]
        def _read_bytes(self, num_bytes: int) -> bytes:
            if num_bytes > MYSQL_MAX_PACKET:
                raise RowTooLarge(
                    f"one row is past {MYSQL_MAX_PACKET:,} bytes, more than a result may hold "
                    f"({MAX_RESULT_CHARS:,} characters): select fewer or shorter columns (LEFT(), LENGTH())"
                )
            return super()._read_bytes(num_bytes)  # type: ignore[no-any-return]

    return BoundedConnection


def _mysql_connect(dbapi_connection: Any, record: Any) -> None:
    """A new MySQL/MariaDB connection: its session as every call finds it, and its role (the
    user's default role) noted, to be restored by `_mysql_reset`."""
    _mysql_session(dbapi_connection)
    if "mariadb" in dbapi_connection.get_server_info().lower():
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT CURRENT_ROLE()")
            record.info["mcpd_role"] = cursor.fetchone()[0]
        finally:
            cursor.close()
    dbapi_connection.commit()


def _mysql_role(dbapi_connection: Any, record: Any) -> None:
    """The connection's role back to what it was connected with: ``SET ROLE`` outlives
    COM_RESET_CONNECTION (MariaDB 10.11 keeps it). MySQL 8 has ``SET ROLE DEFAULT``; MariaDB
    has not, so the role `_mysql_connect` noted is set by name."""
    if "mariadb" in dbapi_connection.get_server_info().lower():
        role = record.info.get("mcpd_role")
        statement = "SET ROLE NONE" if role is None else "SET ROLE `{}`".format(role.replace("`", "``"))
    else:
        statement = "SET ROLE DEFAULT"
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(statement)
    finally:
        cursor.close()


def _mysql_session(dbapi_connection: Any) -> None:
    """The session every call starts in: read-only by default too, in UTC, utf8mb4, no
    autocommit (MariaDB names the read-only default tx_read_only, MySQL 8 transaction_read_only)."""
    mariadb = "mariadb" in dbapi_connection.get_server_info().lower()
    read_only = "tx_read_only" if mariadb else "transaction_read_only"
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"SET NAMES utf8mb4, autocommit = 0, time_zone = '+00:00', {read_only} = 1")
    finally:
        cursor.close()


# COM_RESET_CONNECTION (MySQL 5.7.3+, MariaDB 10.2.4+; pymysql's COMMAND calls it COM_END).
_COM_RESET_CONNECTION = 0x1F


def _mysql_reset(dbapi_connection: Any, record: Any, state: Any) -> None:
    """A connection back in the pool: its session reset, so that nothing one call left on it
    reaches the next (which may be another tenant's). COM_RESET_CONNECTION rolls back the
    transaction and drops user variables, GET_LOCK() locks, temporary tables, prepared
    statements and every session variable's change; the default database and the role survive
    it, so the source's database is selected again, the role restored (`_mysql_role`), then
    `_mysql_session` set again.

    pymysql has no public call for this command (the C API's mysql_reset_connection(); there
    is no SQL statement for it), so it is sent the way pymysql sends its own (select_db, ping).
    Should that ever fail, SQLAlchemy closes the connection instead of pooling it."""
    if state.terminate_only:  # the connection is being closed anyway
        return
    dbapi_connection._execute_command(_COM_RESET_CONNECTION, b"")
    dbapi_connection._read_ok_packet()
    dbapi_connection.select_db(dbapi_connection.db)
    _mysql_role(dbapi_connection, record)
    _mysql_session(dbapi_connection)


def _sqlite_authorize(action: int, arg1: Any, arg2: Any, database: Any, _trigger: Any) -> int:
    if action not in _SQLITE_READS:
        if action == sqlite3.SQLITE_PRAGMA and arg1 in _SQLITE_READ_PRAGMAS and arg2 is None:
            return sqlite3.SQLITE_OK  # a full-text table opening (SQLITE_PRAGMA: its name, its value)
        if (
            action == sqlite3.SQLITE_UPDATE
            and arg1 == "sqlite_master"
            and arg2 in _SQLITE_SCHEMA_COLUMNS
            and database == "main"
        ):
            return sqlite3.SQLITE_OK  # a full-text table's declaration (SQLITE_UPDATE: table, column)
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and str(arg2).lower() in _SQLITE_DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY  # SQLITE_FUNCTION's second argument is the function's name
    return sqlite3.SQLITE_OK


def _sqlite_estimates(cursor: Any, names: list[str]) -> dict[str, int]:
    """Row counts ANALYZE left in sqlite_stat1 (none without it)."""
    cursor.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'")
    if not names or cursor.fetchone() is None:
        return {}
    marks = ", ".join("?" * len(names))
    cursor.execute(f"SELECT tbl, stat FROM sqlite_stat1 WHERE tbl IN ({marks})", names)
    estimates: dict[str, int] = {}
    for name, stat in cursor.fetchall():
        first = str(stat or "").split(" ", 1)[0]
        if first.isdigit():
            estimates[name] = max(estimates.get(name, 0), int(first))
    return estimates


def _chars(items: list[dict[str, Any]]) -> int:
    """About how many characters ``items`` (columns or indexes) take as JSON."""
    return sum(_item_chars(item) for item in items)


def _item_chars(item: dict[str, Any]) -> int:
    texts = (value for value in item.values() if isinstance(value, str))
    listed = (column for column in item.get("columns", ()) if isinstance(column, str))
    return 60 + sum(map(len, texts)) + sum(len(column) + 3 for column in listed)


def _bounded(items: list[dict[str, Any]], most: int, chars: int) -> tuple[list[dict[str, Any]], bool]:
    """The first ``items``, at most ``most`` of them and about ``chars`` characters; whether
    some were left out."""
    kept: list[dict[str, Any]] = []
    for item in items[:most]:
        chars -= _item_chars(item)
        if chars < 0:
            return kept, True
        kept.append(item)
    return kept, len(items) > most


def _sqlite_describe(cursor: Any, table: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    # One more than is shown: enough to tell there were more.
    cursor.execute(
        'SELECT name, type, "notnull", dflt_value, pk FROM pragma_table_info(?) LIMIT ?', (table, DESCRIBED_COLUMNS + 1)
    )
    info = cursor.fetchall()
    cursor.execute('SELECT name, "unique", origin FROM pragma_index_list(?) LIMIT ?', (table, DESCRIBED_INDEXES + 1))
    listed = cursor.fetchall()
    indexes = []
    for name, unique, origin in listed:
        cursor.execute("SELECT name FROM pragma_index_info(?) ORDER BY seqno", (name,))
        columns = [row[0] for row in cursor.fetchall()]
        indexes.append({"name": name, "columns": columns, "unique": bool(unique), "primary": origin == "pk"})
    primary = [name for name, _type, _nn, _default, pk in sorted(info, key=lambda row: row[4]) if pk]
    if primary and not any(index["primary"] for index in indexes):  # a rowid table's INTEGER PRIMARY KEY
        indexes.insert(0, {"name": "PRIMARY", "columns": primary, "unique": True, "primary": True})
    columns = [
        {
            "name": name,
            "type": kind or "",
            "nullable": not notnull and not pk,
            "default": None if default is None else str(default),
            "key": _column_key(name, bool(pk), indexes),
        }
        for name, kind, notnull, default, pk in info
    ]
    return columns, indexes


def _mysql_describe(cursor: Any, table: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    # The name as sql.tables lists it, compared as bytes (zz and ZZ may be two tables: see _tables).
    cursor.execute(
        "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, COLUMN_KEY FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND BINARY TABLE_NAME = %s ORDER BY ORDINAL_POSITION LIMIT %s",
        (table, DESCRIBED_COLUMNS + 1),
    )
    info = cursor.fetchall()
    # An index has at most 32 columns (MariaDB; MySQL 16): the rows of one more index than shown.
    cursor.execute(
        "SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME FROM information_schema.STATISTICS "
        "WHERE TABLE_SCHEMA = DATABASE() AND BINARY TABLE_NAME = %s ORDER BY INDEX_NAME, SEQ_IN_INDEX LIMIT %s",
        (table, (DESCRIBED_INDEXES + 1) * 32),
    )
    indexes: dict[str, dict[str, Any]] = {}
    for name, non_unique, column in cursor.fetchall():
        index = indexes.setdefault(
            name, {"name": name, "columns": [], "unique": not int(non_unique), "primary": name == "PRIMARY"}
        )
        index["columns"].append(column)
    columns = [
        {
            "name": name,
            "type": _text(kind),
            "nullable": nullable == "YES",
            # MariaDB shows a NULL default as the word NULL, and literals quoted.
            "default": None if default is None or default == "NULL" else _text(default),
            "key": _KEYS.get(key),
        }
        for name, kind, nullable, default, key in info
    ]
    return columns, sorted(indexes.values(), key=lambda index: (not index["primary"], index["name"]))


def _column_key(name: str, primary: bool, indexes: list[dict[str, Any]]) -> str | None:
    """primary, unique, index (the first column of one) or None, as MySQL's COLUMN_KEY says."""
    if primary:
        return "primary"
    leading = [index for index in indexes if index["columns"][:1] == [name]]
    if any(index["unique"] and len(index["columns"]) == 1 for index in leading):
        return "unique"
    return "index" if leading else None


def _json_value(value: Any) -> Any:
    """A column value as JSON: exact numbers as text, times ISO 8601, bytes as text or base64."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):  # MySQL TIME
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(raw).decode("ascii")
    return str(value)


def _count(value: Any) -> int | None:
    return None if value is None else int(value)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _mysql_errors() -> type[Exception]:
    import pymysql

    return pymysql.err.Error  # type: ignore[no-any-return]


def _connection_error(error: Exception) -> bool:
    import pymysql

    return isinstance(error, (pymysql.err.InterfaceError, pymysql.err.OperationalError))


def _mysql_code(error: Any) -> int | None:
    args = getattr(error, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _mysql_message(error: Any) -> str:
    args: tuple[Any, ...] = getattr(error, "args", ())
    text = str(args[1]) if len(args) > 1 else str(error)
    return text.strip().splitlines()[0][:300] if text.strip() else type(error).__name__


class SQLSourcesService(Service):
    """Runs the sources' thread pools with the daemon's tree; nothing connects at start-up (a
    source that is down does not keep mcpd from serving), but each is probed once and a source
    that cannot be used is logged."""

    def __init__(self, sources: SQLSources, clock: IReactorTime) -> None:
        self.sources = sources
        self.threads = [ThreadPoolService(pool, clock) for pool in sources.pools]

    def startService(self) -> None:
        for threads in self.threads:
            threads.startService()
        super().startService()
        self.sources.check().addErrback(lambda failure: log.failure("Probing the SQL sources failed", failure))

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        d = gatherResults([threads.stopService() for threads in self.threads])
        d.addBoth(lambda _: self.sources.close())
        return d
