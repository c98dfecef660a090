# -*- test-case-name: tests.test_sqlstore -*-
"""The SQL store's connection to its database: engine, thread pool, transactions, outages.

Every store method is one transaction run by `SQLDatabase.run` in the store's own thread pool
(as many threads as the connection pool has connections), never on the reactor and never in
the tool pool. A database that cannot be reached, or that stays locked past ``--db-timeout``,
becomes `StoreUnavailable` — an ``isError`` result saying so — and for a second after that calls
fail at once instead of each waiting out a connect timeout; after it, the next call tries again,
and ``pool_pre_ping`` replaces the connections the outage broke. Deadlocks (MySQL) are retried.

SQLite runs in WAL mode (readers never wait for the writer) with ``synchronous=NORMAL`` (a
commit survives the process being killed; WAL's usual trade-off for power loss), foreign keys on;
writes run one at a time in a writer thread of their own, each started with ``BEGIN IMMEDIATE``
(so a writer in another process never deadlocks with it on a lock upgrade). MySQL/MariaDB sessions are utf8mb4, UTC, strict, with a lock
wait and per-statement time limit.
"""

from __future__ import annotations

import datetime
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import attrs
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from twisted.internet import defer
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from mcpd.interfaces import DEGRADED as STORE_DEGRADED
from mcpd.interfaces import DOWN as STORE_DOWN
from mcpd.interfaces import UP, IStore, StoreError, StoreStatus, StoreUnavailable
from mcpd.stores.sql import migrate
from mcpd.stores.sql.config import DatabaseConfig
from mcpd.stores.threads import ToolThreads

log = Logger(namespace="mcpd.stores.sql")

T = TypeVar("T")
STORE = "database"
# Said with every outage: what a model (or person) can do about it.
RETRY_ADVICE = (
    ". Try again in a few seconds; if this call was a change, read the record first to see whether it was saved."
)
# After a call finds the database unavailable, others fail at once for this long (seconds).
RETRY_INTERVAL = 1.0
DEADLOCK_RETRIES = 5
STARTING, OK, DOWN, STOPPED = "starting", "ok", "down", "stopped"
# MySQL client and server error numbers.
_CONNECTION_LOST = {2002, 2003, 2005, 2006, 2013, 2055, 1040, 1045, 1049, 1053, 1077, 1927, 4031}
_DEADLOCK = {1213}
_BUSY = {1205, 1969, 3024}  # lock wait timeout; statement time limit (MariaDB, MySQL)
# The store's own upkeep (the re-indexer, the audit writer, /health's count of the index outbox):
# not callers' work, so a probe that times out while only these wait finds the database down.
_UPKEEP = ("index.", "audit.append", "audit.prune")
_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class DatabaseMetrics:
    """The SQL store's Prometheus series: operation latency and errors, counted in the store's
    threads; pool and queue sizes read at scrape time."""

    def __init__(self, database: SQLDatabase) -> None:
        self.database = database
        self.duration = Histogram(
            "mcp_db_operation_duration_seconds",
            "Time a SQL store operation took (one transaction, in the store's thread), by operation.",
            ["operation"],
            buckets=_DURATION_BUCKETS,
            registry=None,
        )
        self.errors = Counter(
            "mcp_db_errors",
            "SQL store operations that failed: unavailable (cannot connect, connection lost), busy "
            "(lock or statement time limit), deadlock_retry (retried), error (unexpected).",
            ["operation", "kind"],
            registry=None,
        )

    def collectors(self) -> list[Any]:
        """What to register on the daemon's metrics registry."""
        return [self.duration, self.errors, self]

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        database = self.database
        pool = database.engine.pool if database.engine is not None else None
        in_use = pool.checkedout() if pool is not None and hasattr(pool, "checkedout") else 0  # type: ignore[attr-defined]
        yield GaugeMetricFamily(
            "mcp_db_connections_in_use", "SQL store connections in use right now.", value=float(in_use)
        )
        yield GaugeMetricFamily(
            "mcp_db_connections_max",
            "SQL store connections allowed (--db-pool-size + --db-max-overflow).",
            value=float(database.config.connections),
        )
        yield GaugeMetricFamily(
            "mcp_db_queue_depth",
            "SQL store operations waiting for one of the store's threads.",
            value=float(sum(pool.qsize() for pool in database.workers)),
        )
        yield GaugeMetricFamily(
            "mcp_db_up",
            "1 while the SQL store's last operation or check reached the database.",
            value=float(database.state == OK),
        )


@implementer(IStore)
class SQLDatabase:
    """One database, reached through SQLAlchemy Core by a thread pool of its own."""

    name = STORE

    def __init__(self, config: DatabaseConfig, reactor: Any = None) -> None:
        self.config = config
        self.backend = config.backend
        self._reactor = reactor
        self.engine: Engine | None = None
        # SQLite has one writer at a time: writes queue for one thread of their own (rather than
        # in a lock or SQLite's busy handler), reads share the others; MySQL: one pool for all.
        # Every thread starts with the store (`ToolThreads`, ``up_front``); Twisted's ThreadPool
        # hand-off cost ~5% of a task.create or task.list (instructions, callgrind).
        sqlite = self.backend == "sqlite"
        readers = max(1, config.connections - 1) if sqlite else config.connections
        self.pool = ToolThreads(readers, "mcpd-db", reactor, up_front=True)
        self.writer = ToolThreads(1, "mcpd-db-writer", reactor, up_front=True) if sqlite else None
        # The health probe has a thread and a connection of its own: it never waits behind
        # the readers' slow queries, so a busy store is not taken for a lost database.
        self.prober = ToolThreads(1, "mcpd-db-probe", reactor, up_front=True)
        self.probe_engine: Engine | None = None
        # The threads that run the store's calls (queue depth, busy or not), and every thread
        # the store runs (started and stopped with it): the probe's too.
        self.workers = [self.pool] if self.writer is None else [self.pool, self.writer]
        self.pools = [*self.workers, self.prober]
        self.metrics = DatabaseMetrics(self)
        self.state = STARTING
        self.last_error: str | None = None
        self.last_check: StoreStatus | None = None
        # Callers' calls submitted and not yet answered (upkeep apart; the reactor's thread).
        self.calls = 0
        self.schema_revision: str | None = None
        self.server_version: str | None = None
        self._retry_at = 0.0

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    # -- life -----------------------------------------------------------------------------------

    def open(self) -> None:
        """Create the engine and bring the schema up to date (blocking: at start-up, before the
        reactor serves). `migrate.MigrationError` or `StoreUnavailable` when it cannot."""
        self.engine = build_engine(self.config)
        self.probe_engine = build_engine(attrs.evolve(self.config, pool_size=1, max_overflow=0))
        shown = self.config.shown_url
        try:
            before, after = migrate.upgrade(self.engine, shown)
            with self.engine.connect() as connection:
                self.server_version = _server_version(connection)
        except sa_exc.DBAPIError as e:
            raise StoreUnavailable(STORE, f"cannot use {shown}: {_reason(e)}") from None
        self.schema_revision = after.current
        if before.pending:
            log.info(
                "Database {url}: schema upgraded from {before} to {after}",
                url=shown,
                before=before.current or "empty",
                after=after.current,
            )
        self.state = OK
        log.info(
            "SQL store: {url} ({server}), schema {revision}, {threads} connection(s) and thread(s)",
            url=shown,
            server=self.server_version,
            revision=self.schema_revision,
            threads=self.config.connections,
        )

    def close(self) -> None:
        """Close every pooled connection."""
        self.state = STOPPED
        for engine in (self.engine, self.probe_engine):
            if engine is not None:
                engine.dispose()

    # -- work -----------------------------------------------------------------------------------

    def run(
        self,
        operation: str,
        work: Callable[[Connection], T],
        *,
        write: bool = False,
        serializable: bool = False,
    ) -> Deferred[T]:
        """Run ``work(connection)`` as one transaction in the store's thread pool.

        ``write`` marks a transaction that changes rows (SQLite takes the write lock at BEGIN);
        ``serializable`` runs it at SERIALIZABLE on MySQL (reads that a concurrent writer could
        invalidate, as the dependency-cycle check does)."""
        return self._submit(operation, work, write, serializable)

    def run_raw(self, operation: str, work: Callable[[RawConnection], T], *, write: bool = False) -> Deferred[T]:
        """`run`, with ``work`` given the driver's own connection (`RawConnection`): for the
        hottest statements, where SQLAlchemy's execution path cost more than the database's
        work (a transaction ~100 µs, a statement ~40 µs, against ~10 µs through the driver)."""
        return self._submit(operation, work, write, None)

    def writes_waiting(self) -> bool:
        """Whether a write waits for SQLite's one writer thread (from any thread: a long write
        may stop early to let it go first). Never on MySQL, whose writes share the pool."""
        return self.writer is not None and self.writer.qsize() > 0

    def _submit(self, operation: str, work: Callable[[Any], T], write: bool, serializable: bool | None) -> Deferred[T]:
        if self.state == STOPPED or not self.pool.started:
            return fail(StoreUnavailable(STORE, "mcpd is not running its SQL store"))
        if self.state == DOWN and time.monotonic() < self._retry_at:
            self.metrics.errors.labels(operation, "unavailable").inc()
            return fail(StoreUnavailable(STORE, (self.last_error or "not reachable") + RETRY_ADVICE))
        pool = self.writer if write and self.writer is not None else self.pool
        d = pool.submit(self._transaction, operation, work, write, serializable)
        if not operation.startswith(_UPKEEP):
            self.calls += 1
            d.addBoth(self._answered)
        return d

    def _answered(self, result: T) -> T:
        self.calls -= 1
        return result

    def _transaction(self, operation: str, work: Callable[[Any], T], write: bool, serializable: bool | None) -> T:
        """In a store thread: the transaction, retried on deadlock; outages mapped.
        ``serializable`` None: a raw transaction (`run_raw`)."""
        assert self.engine is not None
        started = time.monotonic()
        for attempt in range(DEADLOCK_RETRIES):
            try:
                if serializable is None:
                    result = self._raw_transaction(work, write)
                else:
                    with self.engine.connect() as connection:
                        options: dict[str, Any] = {"mcpd_write": write}
                        if serializable and self.backend == "mysql":
                            options["isolation_level"] = "SERIALIZABLE"
                        connection = connection.execution_options(**options)
                        with connection.begin():
                            result = work(connection)
            except StoreError:
                self._reached()
                raise
            except (sa_exc.DBAPIError, sa_exc.TimeoutError) as e:
                kind = self._classify(e)
                self.metrics.errors.labels(operation, kind).inc()
                if kind == "deadlock_retry" and attempt + 1 < DEADLOCK_RETRIES:
                    time.sleep(random.uniform(0.005, 0.02) * (attempt + 1))  # in a store thread
                    continue
                self._raise_outage(kind, e)
                raise
            else:
                self._reached()
                self.metrics.duration.labels(operation).observe(time.monotonic() - started)
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _raw_transaction(self, work: Callable[[RawConnection], T], write: bool) -> T:
        assert self.engine is not None
        dialect = self.engine.dialect
        try:
            pooled = self.engine.raw_connection()
        except dialect.loaded_dbapi.Error as e:  # the pool's connect: the driver's error, unwrapped
            raise sa_exc.DBAPIError.instance(None, None, e, dialect.loaded_dbapi.Error, dialect=dialect) from e
        raw = RawConnection(pooled, dialect)
        try:
            raw.begin(write)
            result = work(raw)
            raw.commit()
            return result
        except BaseException:
            raw.rollback()
            raise
        finally:
            pooled.close()

    def _classify(self, error: Exception) -> str:
        """unavailable, busy, deadlock_retry or error."""
        if isinstance(error, sa_exc.TimeoutError):
            return "busy"
        assert isinstance(error, sa_exc.DBAPIError)
        if error.connection_invalidated:
            return "unavailable"
        if self.backend == "sqlite":
            message = str(error.orig).lower()
            if "locked" in message or "busy" in message:
                return "busy"
            if isinstance(error, sa_exc.OperationalError) and ("unable to open" in message or "i/o" in message):
                return "unavailable"
            return "error"
        code = _mysql_code(error)
        if code in _DEADLOCK:
            return "deadlock_retry"
        if code in _BUSY:
            return "busy"
        if code in _CONNECTION_LOST or isinstance(error, (sa_exc.InterfaceError, sa_exc.OperationalError)):
            return "unavailable"
        return "error"

    def _reached(self) -> None:
        if self.state == DOWN:
            log.info("Database {url} is reachable again", url=self.config.shown_url)
        if self.state != STOPPED:
            self.state = OK
        self.last_error = None

    def _unreachable(self, reason: str) -> None:
        if self.state != DOWN:
            log.error("Database {url} is unavailable: {reason}", url=self.config.shown_url, reason=reason)
        if self.state != STOPPED:
            self.state = DOWN
        self.last_error = reason
        self._retry_at = time.monotonic() + RETRY_INTERVAL

    # -- IStore ---------------------------------------------------------------------------------

    def status(self) -> StoreStatus:
        """The state the latest call or check saw (no I/O)."""
        latency = self.last_check.latency if self.last_check is not None else None
        if self.state == OK:
            return StoreStatus(STORE, UP, f"{self.backend} {self.server_version}", latency)
        return StoreStatus(STORE, STORE_DOWN, self.last_error or f"the SQL store is {self.state}", latency)

    def check(self) -> Deferred[StoreStatus]:
        """``SELECT 1`` on the probe's own thread and connection, within ``--db-timeout`` (the
        probe that also finds a database come back); never fails.

        Down only when the database refuses or drops the connection, or when the probe times
        out while the store is idle; a probe that times out while the store's threads are busy
        says degraded, with the queue, and leaves calls flowing. Busy means callers' calls: the
        store's upkeep stuck on a frozen database (`_UPKEEP`) does not make it busy."""
        started = time.monotonic()
        if self.state == STOPPED or not self.prober.started or self.probe_engine is None:
            return succeed(StoreStatus(STORE, STORE_DOWN, "the SQL store is not running", 0.0))
        self._retry_at = 0.0  # the probe always tries
        d = self.prober.submit(self._probe)
        d.addTimeout(self.config.timeout, self.reactor)  # cancels: a probe still queued is skipped

        def done(_value: Any) -> StoreStatus:
            return StoreStatus(STORE, UP, f"{self.backend} {self.server_version}", time.monotonic() - started)

        def failed(failure: Any) -> StoreStatus:
            latency = time.monotonic() - started
            if failure.check(StoreUnavailable):
                return StoreStatus(STORE, STORE_DOWN, self.last_error or failure.value.detail, latency)
            why = f"no answer within {self.config.timeout:g}s"
            if failure.check(defer.TimeoutError):
                waiting = sum(pool.qsize() for pool in self.workers)
                running = sum(pool.running() for pool in self.workers)
                if self.calls:
                    busy = f"{why}: {running} call(s) running, {waiting} waiting for a thread"
                    return StoreStatus(STORE, STORE_DEGRADED, busy, latency)
            else:
                why = f"the probe failed: {failure.getErrorMessage()}"
            self._unreachable(why)
            return StoreStatus(STORE, STORE_DOWN, why, latency)

        def keep(status: StoreStatus) -> StoreStatus:
            self.last_check = status
            return status

        return d.addCallbacks(done, failed).addCallback(keep)

    def _probe(self) -> None:
        """In the probe's thread: ``SELECT 1``; outages mapped as `_transaction` maps them."""
        assert self.probe_engine is not None
        try:
            with self.probe_engine.connect() as connection:
                connection.execute(text("SELECT 1")).scalar()
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as e:
            kind = self._classify(e)
            self.metrics.errors.labels("check", kind).inc()
            self._raise_outage(kind, e)
            raise
        self._reached()

    def _raise_outage(self, kind: str, error: Exception) -> None:
        """Raise `StoreUnavailable` for an outage (``kind`` from `_classify`): unavailable (the
        store marked unreachable), busy or deadlock_retry; return for anything else."""
        if kind in ("unavailable", "busy", "deadlock_retry"):
            reason = _reason(error)
            if kind == "unavailable":
                self._unreachable(reason)
            raise StoreUnavailable(STORE, reason + RETRY_ADVICE) from None

    def collectors(self) -> list[Any]:
        return self.metrics.collectors()

    def describe(self) -> dict[str, Any]:
        """The store's state for server.info: never its password."""
        pool = self.engine.pool if self.engine is not None else None
        described: dict[str, Any] = {
            "name": STORE,
            "backend": self.backend,
            "url": self.config.shown_url,
            "state": self.state,
            "schema_revision": self.schema_revision,
            "server_version": self.server_version,
            "connections": {
                "in_use": pool.checkedout() if pool is not None and hasattr(pool, "checkedout") else 0,  # type: ignore[attr-defined]
                "max": self.config.connections,
            },
        }
        if self.last_error:
            described["error"] = self.last_error
        if self.last_check is not None and self.last_check.latency is not None:
            described["latency_ms"] = round(self.last_check.latency * 1000, 3)
        return described


class RawConnection:
    """One transaction on the driver's own connection (sqlite3, PyMySQL), for `SQLDatabase.run_raw`.

    Statements are SQLAlchemy constructs compiled once per dialect (`raw_sql`); parameters are
    passed as the driver takes them (no type processing: SQLite gets times as text, MySQL as
    datetimes). The driver's errors come out as SQLAlchemy's, and a connection the server
    dropped is invalidated, so outages are classified as for any other transaction.
    """

    def __init__(self, pooled: Any, dialect: Any) -> None:
        self.pooled = pooled
        self.dialect = dialect
        self.sqlite = dialect.name == "sqlite"
        self.driver = pooled.driver_connection
        self.cursor = self.driver.cursor()

    def stored(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` with its times and dates as the driver stores them: SQLite as the text
        SQLAlchemy writes (``2026-11-29 12:00:00.000000``, ``2026-11-29``); MySQL as they are."""
        if not self.sqlite:
            return row
        return {
            name: (
                value.isoformat(" ", "microseconds")
                if isinstance(value, datetime.datetime)
                else value.isoformat()
                if isinstance(value, datetime.date)
                else value
            )
            for name, value in row.items()
        }

    def begin(self, write: bool) -> None:
        if self.sqlite:  # the driver runs in autocommit mode (see _sqlite_connect)
            self.execute_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    def commit(self) -> None:
        self._call("COMMIT", None, self.driver.commit)

    def rollback(self) -> None:
        try:
            if self.sqlite:
                if self.driver.in_transaction:
                    self.driver.execute("ROLLBACK")
            else:
                self.driver.rollback()
        except Exception:  # noqa: BLE001 -- a dead connection: invalidated, the error is the one raised
            self.pooled.invalidate()

    def execute(self, statement: Any, params: Mapping[str, Any] | None = None) -> Any:
        """Run a statement (a construct, compiled once for this dialect); the cursor."""
        sql, defaults = raw_sql(statement, self.dialect)
        return self.execute_sql(sql, {**defaults, **params} if params else defaults)

    def executemany(self, statement: Any, rows: Sequence[Mapping[str, Any]]) -> Any:
        sql, _defaults = raw_sql(statement, self.dialect)
        return self.executemany_sql(sql, rows)

    def executemany_sql(self, sql: str, rows: Iterable[Any]) -> Any:
        """Run the driver's own SQL once per row (PyMySQL makes one INSERT of them all); the
        driver takes the rows one at a time, so ``rows`` may make them as they are asked for."""
        return self._call(sql, rows, self.cursor.executemany, sql, rows)

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        if params is None:
            return self._call(sql, params, self.cursor.execute, sql)
        return self._call(sql, params, self.cursor.execute, sql, params)

    def _call(self, sql: str, params: Any, method: Callable[..., Any], *args: Any) -> Any:
        """``method(*args)``; the cursor. A driver error comes out as SQLAlchemy's."""
        try:
            method(*args)
        except self.dialect.loaded_dbapi.Error as e:
            lost = self.dialect.is_disconnect(e, self.driver, self.cursor)
            if lost:
                self.pooled.invalidate(e)
            raise sa_exc.DBAPIError.instance(
                sql, params, e, self.dialect.loaded_dbapi.Error, connection_invalidated=lost, dialect=self.dialect
            ) from e
        return self.cursor


_RAW: dict[tuple[int, str], tuple[str, dict[str, Any], Any]] = {}


def raw_sql(statement: Any, dialect: Any) -> tuple[str, dict[str, Any]]:
    """A construct's SQL for the driver of ``dialect`` (SQLite: ``:name``; PyMySQL:
    ``%(name)s``), with its parameters' defaults (an OFFSET's 0); compiled once."""
    key = (id(statement), dialect.name)
    found = _RAW.get(key)
    if found is None:
        if dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

            dialect = SQLiteDialect_pysqlite(paramstyle="named")
        compiled = statement.compile(dialect=dialect)
        # The entry keeps the statement alive, so its id is never another statement's (a
        # statement made for one call would otherwise free its id for the next one made).
        found = _RAW[key] = (str(compiled), dict(compiled.params), statement)
    return found[0], found[1]


_NO_ADAPTERS: dict[Any, None] = {}
_NULL = _NO_ADAPTERS.get  # None for None, in C


def build_engine(config: DatabaseConfig) -> Engine:
    """A SQLAlchemy engine set up for mcpd (see the module docstring)."""
    if config.backend == "sqlite":
        import sqlite3

        # The driver binds an exact str, int or float directly and runs anything else, None
        # included, through its adapter registry: a None with no adapter costs a failed
        # ``__adapt__`` lookup whose AttributeError message is formatted and thrown away (~3k
        # instructions; an audit row binds two or three). An adapter that gives None back
        # (an empty dict's ``get``) binds the same NULL for ~1.2k.
        sqlite3.register_adapter(type(None), _NULL)
        engine = create_engine(
            config.url,
            pool_size=config.pool_size,
            max_overflow=config.max_overflow,
            pool_timeout=config.timeout,
            pool_recycle=config.pool_recycle,
            connect_args={"timeout": config.timeout, "check_same_thread": False},
        )
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    engine = create_engine(
        config.url,
        pool_size=config.pool_size,
        max_overflow=config.max_overflow,
        pool_timeout=config.timeout,
        pool_recycle=config.pool_recycle,
        pool_pre_ping=config.pre_ping,
        # No gap locks between unrelated writers; the cycle check asks for SERIALIZABLE itself.
        isolation_level="READ COMMITTED",
        connect_args={
            "connect_timeout": config.timeout,
            # A server that stops answering mid-statement is given up on after this long.
            "read_timeout": config.statement_timeout + config.timeout,
            "write_timeout": config.statement_timeout + config.timeout,
        },
    )
    event.listen(engine, "connect", _mysql_session(config))
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy's recipe: the driver starts no transactions itself; `_sqlite_begin` does.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode = WAL", "synchronous = NORMAL", "foreign_keys = ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    write = connection.get_execution_options().get("mcpd_write", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _mysql_session(config: DatabaseConfig) -> Callable[[Any, Any], None]:
    lock_wait = max(1, round(config.timeout))

    def connect(dbapi_connection: Any, _record: Any) -> None:
        mariadb = "mariadb" in dbapi_connection.get_server_info().lower()
        if mariadb:
            limit = f"max_statement_time = {config.statement_timeout:g}"
        else:
            limit = f"max_execution_time = {round(config.statement_timeout * 1000)}"
        cursor = dbapi_connection.cursor()
        cursor.execute(
            "SET SESSION time_zone = '+00:00', "
            "sql_mode = 'STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
            f"NO_ENGINE_SUBSTITUTION', innodb_lock_wait_timeout = {lock_wait}, {limit}, "
            # Every query filters by tenant and, often, by a project of that tenant: MariaDB then
            # intersected the two indexes and sorted (17 ms for a page) instead of reading one.
            "optimizer_switch = 'index_merge_intersection=off'"
        )
        cursor.close()
        dbapi_connection.commit()

    return connect


def _server_version(connection: Connection) -> str:
    if connection.dialect.name == "sqlite":
        return str(connection.execute(text("SELECT sqlite_version()")).scalar())
    return str(connection.execute(text("SELECT VERSION()")).scalar())


def _mysql_code(error: sa_exc.DBAPIError) -> int | None:
    args = getattr(error.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _reason(error: Exception) -> str:
    """A short cause a person can act on, without the SQL or the driver's traceback."""
    if isinstance(error, sa_exc.TimeoutError):
        return "every connection is busy"
    if isinstance(error, sa_exc.DBAPIError):
        code = _mysql_code(error)
        if code in (2002, 2003):
            return "cannot connect to the database server"
        if code == 1045:
            return "the database refused mcpd's user name or password"
        if code == 1049:
            return "the database named in --db-url does not exist"
        if code == 1205:
            return "a lock was held too long by another transaction"
        if code == 1213:
            return "the change kept colliding with concurrent ones (deadlock)"
        if code in (1969, 3024):
            return "a statement ran past --db-statement-timeout"
        if code == 1040:
            return "the database server has too many connections"
        if error.connection_invalidated or code in _CONNECTION_LOST:
            return "the connection to the database server was lost"
        message = str(error.orig).strip().splitlines()[0] if error.orig is not None else ""
        if "locked" in message.lower():
            return "the database is locked by another writer"
        return message[:200]
    return str(error)[:200]
