"""The ``sql`` pack: read-only SQL on the operator's data sources (``--sql-source``).

- `SQLite*Tests` and `MariaDB*Tests` run a real daemon with a SQLite file and a real MariaDB
  database as sources and call every tool through the official SDK client over Streamable HTTP,
  in both eras, including the bypasses other MCP SQL servers fell to (writes, DDL, INTO OUTFILE,
  LOAD DATA, CALL, SET, REPLACE, multi-statements, comment and case tricks, SLEEP past the time
  limit, a write hidden in a CTE or a function): each is refused or cut off, and the database is
  the same afterwards.
- `GuardTests` send the same statements straight to a source's connection, past the lexical
  pre-check, to show that the database itself refuses them.
- `OutageTests`: a source that is down or missing answers isError "unavailable" while mcpd and
  its other sources serve on.
- `ConfigTests`: ``--sql-source`` and its passwords, and the refusals at start-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
from mcp import Client
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mcpd.config import ConfigError, resolve
from mcpd.daemon import load_packs, read_secrets, sql_sources_config, toolsets_of
from mcpd.interfaces import ISQLSources, IStore, Refused
from mcpd.stores.sql.sources import (
    CONNECT_TIMEOUT,
    DESCRIBED_COLUMNS,
    DESCRIBED_INDEXES,
    MAX_RESULT_CHARS,
    MYSQL_MAX_PACKET,
    PROBE_TIMEOUT,
    SQLITE_RESULT_COLUMNS,
    SQLITE_VALUE_LENGTH,
    SQLSource,
    SQLSources,
    source_config,
)
from mcpd.stores.sql.statements import check_statement
from mcpd.tools.paging import encode_cursor
from tests.daemon import LEGACY, MODERN, DaemonTestCase, free_port, run_anyio
from tests.services import PASSWORD, USER, shared_mariadb
from tests.test_packs import error_text, structured
from tests.test_sql_faults import call_tool, get, metric

SQL_TOOLS = {"sql.tables", "sql.describe", "sql.query", "sql.explain"}
TIME_LIMIT = 1.0
ORDERS = 150  # more than a page of sql.query's default limit
INVALID_PARAMS = -32602

_SCHEMA = (
    "CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR(100) NOT NULL, email VARCHAR(200) UNIQUE)",
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, total DECIMAL(10, 2) DEFAULT 0, "
    "placed VARCHAR(20))",
    "CREATE INDEX orders_customer ON orders (customer_id)",
    "CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100",
    "INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com'), (2, 'Grace', 'grace@example.com')",
)


def _orders() -> str:
    values = ", ".join(f"({i}, {1 + i % 2}, {i * 1.5:.2f}, '2026-11-{1 + i % 28:02d}')" for i in range(1, ORDERS + 1))
    return f"INSERT INTO orders VALUES {values}"


# Statements that must not change anything, each refused or cut off; (sql, words the refusal
# says). The lexical pre-check answers most; the rest reach the database, which refuses them.
BYPASSES: tuple[tuple[str, str], ...] = (
    ("INSERT INTO customers VALUES (3, 'Eve', 'eve@example.com')", "INSERT is refused"),
    ("UPDATE orders SET total = 0", "UPDATE is refused"),
    ("DELETE FROM orders", "DELETE is refused"),
    ("REPLACE INTO customers VALUES (1, 'Mallory', 'm@example.com')", "REPLACE is refused"),
    ("DROP TABLE orders", "DROP is refused"),
    ("CREATE TABLE pwned (a INTEGER)", "CREATE is refused"),
    ("ALTER TABLE orders ADD COLUMN x INTEGER", "ALTER is refused"),
    ("TRUNCATE TABLE orders", "TRUNCATE is refused"),
    ("sElEcT 1; dRoP tAbLe orders", "one statement per call"),
    ("SELECT 1 -- \n; DROP TABLE orders", "one statement per call"),
    ("SELECT 1; /* */ DELETE FROM orders", "one statement per call"),
    ("/* hello */ DrOp TaBlE orders", "DROP is refused"),
    ("WITH x AS (SELECT 1) DELETE FROM orders", "is refused"),
    ("SET @a = 1", "SET is refused"),
    ("CALL cleanup()", "CALL is refused"),
    ("LOAD DATA INFILE '/etc/hosts' INTO TABLE customers", "LOAD is refused"),
    ("LOAD DATA LOCAL INFILE '/etc/hosts' INTO TABLE customers", "LOAD is refused"),
    ("GRANT ALL ON *.* TO 'x'@'%'", "GRANT is refused"),
    ("BEGIN", "is refused"),
    ("", "holds no statement"),
    ("-- only a comment", "holds no statement"),
)
SQLITE_BYPASSES = (
    ("PRAGMA query_only = 0", "PRAGMA is refused"),
    ("ATTACH DATABASE 'elsewhere.db' AS elsewhere", "ATTACH is refused"),
    ("VACUUM INTO 'copy.db'", "VACUUM is refused"),
)
MARIADB_BYPASSES = (
    ("SELECT 1 INTO OUTFILE '{outfile}'", "INTO is refused"),
    ("SELECT * FROM customers INTO DUMPFILE '{outfile}'", "INTO is refused"),
    ("SELECT 1 --1 INTO OUTFILE '{outfile}'", "INTO is refused"),  # --1 is no comment to MySQL
    ("/*!50000 DROP TABLE orders*/", "executable comments"),
    ("SELECT 1 /*!50000 , (SELECT COUNT(*) FROM orders) */", "executable comments"),
    ("SELECT /*+ MAX_EXECUTION_TIME(100000) */ SLEEP(5)", "executable comments"),
    ("SELECT LOAD_FILE('/etc/passwd')", "LOAD_FILE() is refused"),
    ("SELECT * FROM orders FOR UPDATE", "locking reads"),
    ("SET SESSION max_statement_time = 0", "SET is refused"),
    ("SET STATEMENT max_statement_time = 0 FOR SELECT SLEEP(5)", "SET is refused"),
    ("SET SESSION TRANSACTION READ WRITE", "SET is refused"),
    ("HANDLER orders OPEN", "HANDLER is refused"),
    ("DO SLEEP(5)", "DO is refused"),
    ("LOCK TABLES orders WRITE", "LOCK is refused"),
)
# Refused by the database itself (the pre-check lets them through): a write hidden in a function.
MARIADB_HIDDEN_WRITES = (("SELECT sneaky_write()", "READ ONLY transaction"),)


def sqlite_source(path: Path) -> None:
    """A SQLite data source with the shop's tables."""
    connection = sqlite3.connect(path)
    for statement in (*_SCHEMA, _orders()):
        connection.execute(statement)
    connection.commit()
    connection.close()


def sqlite_fingerprint(path: Path) -> Any:
    """What a SQLite database holds, and the files beside it (nothing new may appear)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        dump = "\n".join(connection.iterdump())
    finally:
        connection.close()
    return hashlib.sha256(dump.encode()).hexdigest(), sorted(p.name for p in path.parent.iterdir())


def mariadb_source() -> tuple[Any, str]:
    """The shared MariaDB server and a fresh database with the shop's tables, a function and a
    procedure that write."""
    server = shared_mariadb()
    database = server.new_database()
    server.sql(
        *(statement.replace("INTEGER PRIMARY KEY", "INT PRIMARY KEY") for statement in _SCHEMA),
        _orders(),
        "CREATE FUNCTION sneaky_write() RETURNS INT MODIFIES SQL DATA "
        "BEGIN INSERT INTO customers VALUES (66, 'Sneaky', NULL); RETURN 1; END",
        "CREATE PROCEDURE cleanup() BEGIN DELETE FROM orders; END",
        database=database,
    )
    return server, database


def mariadb_fingerprint(server: Any, database: str) -> Any:
    tables = server.sql("SHOW FULL TABLES", database=database)
    sums = server.sql("CHECKSUM TABLE customers, orders", database=database)
    routines = server.sql(
        f"SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = '{database}' ORDER BY 1"
    )
    return tables, sums, routines


class _Scenarios:
    backend: str
    mode: str

    workdir: Path
    start_daemon: Any
    in_thread: Any
    assertEqual: Any
    assertIn: Any
    assertTrue: Any
    assertFalse: Any
    assertLess: Any
    assertGreater: Any
    assertIsNone: Any
    assertRegex: Any

    def source(self) -> tuple[list[str], dict[str, str], Any]:
        """The daemon's source arguments, its environment, and a function fingerprinting the database."""
        if self.backend == "sqlite":
            (self.workdir / "source").mkdir()
            path = self.workdir / "source" / "shop.sqlite3"
            sqlite_source(path)
            return [f"--sql-source=shop=sqlite:///{path}"], {}, lambda: sqlite_fingerprint(path)
        server, database = mariadb_source()
        self.outfile = f"/tmp/mcpd-test-outfile-{database}"
        # The password apart from the URL, in the source's own variable.
        return (
            [f"--sql-source=shop={server.url(database)}"],
            {"SQL_PASSWORD_SHOP": PASSWORD},
            lambda: mariadb_fingerprint(server, database),
        )

    def test_every_tool_and_every_bypass(self) -> Deferred[None]:
        args, env, fingerprint = self.source()
        before = fingerprint()
        daemon = self.start_daemon(*args, "--sql-timeout", str(TIME_LIMIT), fixture_pack=False, env=env)
        outfile = getattr(self, "outfile", "/nonexistent")

        async def scenario(client: Client) -> None:
            await self.tools(client)
            await self.bypasses(client, outfile)

        async def main() -> None:
            with anyio.fail_after(120):
                async with Client(daemon.url, mode=self.mode) as client:
                    await scenario(client)

        def check() -> None:
            run_anyio(main)
            self.assertEqual(fingerprint(), before)
            self.assertFalse(Path(outfile).exists())
            self.assertFalse(PASSWORD in daemon.log() + daemon.log("stdout"))

        return self.in_thread(check)

    async def tools(self, client: Client) -> None:
        call = client.call_tool
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        # A source configured: the default toolsets include the pack.
        self.assertTrue(set(listed) >= SQL_TOOLS, sorted(listed))
        for name in SQL_TOOLS:
            tool = listed[name]
            self.assertEqual(tool.input_schema.get("additionalProperties"), False, name)
            self.assertTrue(tool.output_schema, name)
            self.assertIn("Example", tool.description or "", name)
            hints = tool.annotations
            assert hints is not None
            self.assertEqual(
                (hints.read_only_hint, hints.destructive_hint, hints.open_world_hint), (True, False, False)
            )

        info = structured(await call("server.info", {}))
        self.assertIn("sql", info["toolsets"])
        sources = next(store for store in info["stores"] if store["name"] == "sql_sources")
        self.assertEqual([(s["name"], s["backend"]) for s in sources["sources"]], [("shop", self.backend_name)])
        self.assertFalse(PASSWORD in str(info))

        # sql.tables, a page at a time.
        tables = structured(await call("sql.tables", {}))
        self.assertEqual(tables["source"], "shop")
        self.assertEqual(
            [(t["name"], t["kind"]) for t in tables["tables"]],
            [("big_orders", "view"), ("customers", "table"), ("orders", "table")],
        )
        self.assertIsNone(tables["next_cursor"])
        first = structured(await call("sql.tables", {"source": "shop", "limit": 2}))
        self.assertEqual(len(first["tables"]), 2)
        rest = structured(await call("sql.tables", {"limit": 2, "cursor": first["next_cursor"]}))
        self.assertEqual(([t["name"] for t in rest["tables"]], rest["next_cursor"]), (["orders"], None))
        self.assertIn("not one this server gave out", error_text(await call("sql.tables", {"cursor": "nope"})))
        # Forged (the digest right, the position not a name), truncated, other-tenant and
        # other-tool cursors: refused, never "failed unexpectedly".
        here = SimpleNamespace(tenant="default")
        for cursor in (
            encode_cursor(here, "sql.tables", {"source": "shop"}, 7),
            encode_cursor(here, "sql.tables", {"source": "shop"}, ["customers"]),
            first["next_cursor"][:-3],
            first["next_cursor"][:4],
        ):
            self.assertIn("not one this server gave out", error_text(await call("sql.tables", {"cursor": cursor})))
        for cursor in (
            encode_cursor(SimpleNamespace(tenant="globex"), "sql.tables", {"source": "shop"}, "customers"),
            encode_cursor(here, "task.list", {"source": "shop"}, "customers"),
        ):
            self.assertIn("another listing", error_text(await call("sql.tables", {"cursor": cursor})))

        # sql.describe: columns, keys, indexes.
        described = structured(await call("sql.describe", {"table": "orders"}))
        columns = {c["name"]: c for c in described["columns"]}
        self.assertEqual(list(columns), ["id", "customer_id", "total", "placed"])
        self.assertEqual(columns["id"]["key"], "primary")
        self.assertEqual(columns["customer_id"]["key"], "index")
        self.assertFalse(columns["customer_id"]["nullable"])
        self.assertTrue(columns["placed"]["nullable"])
        self.assertIn("decimal", columns["total"]["type"].lower())
        self.assertIn("0", columns["total"]["default"])
        self.assertFalse(described["truncated"])
        indexes = {i["name"]: i for i in described["indexes"]}
        self.assertEqual(indexes["orders_customer"]["columns"], ["customer_id"])
        self.assertTrue(any(i["primary"] and i["columns"] == ["id"] for i in described["indexes"]))
        unique = structured(await call("sql.describe", {"table": "customers"}))
        self.assertEqual({c["name"]: c["key"] for c in unique["columns"]}["email"], "unique")
        self.assertIn("no table or view 'nope'", error_text(await call("sql.describe", {"table": "nope"})))

        # sql.query: parameters (positional and named), the row cap, truncated, elapsed_ms.
        page = structured(await call("sql.query", {"sql": "SELECT id, total FROM orders ORDER BY id"}))
        self.assertEqual(page["columns"], ["id", "total"])
        self.assertEqual((page["row_count"], page["truncated"]), (100, True))
        self.assertEqual(page["rows"][0][0], 1)
        self.assertGreater(page["elapsed_ms"], 0)
        everything = structured(await call("sql.query", {"sql": "SELECT id FROM orders", "limit": 1000}))
        self.assertEqual((everything["row_count"], everything["truncated"]), (ORDERS, False))
        # A LIMIT of the statement's own beyond the cap: still at most `limit` rows.
        capped = structured(await call("sql.query", {"sql": "SELECT id FROM orders ORDER BY id LIMIT 140", "limit": 3}))
        self.assertEqual((capped["rows"], capped["truncated"]), ([[1], [2], [3]], True))
        positional = structured(
            await call(
                "sql.query",
                {"sql": "SELECT name FROM customers WHERE id = ? OR email = ?", "params": [2, "ada@example.com"]},
            )
        )
        self.assertEqual(sorted(r[0] for r in positional["rows"]), ["Ada", "Grace"])
        named = structured(
            await call(
                "sql.query",
                {
                    "sql": "SELECT COUNT(*) AS n FROM orders WHERE customer_id = :who AND placed LIKE '2026-11-%'",
                    "params": {"who": 1},
                },
            )
        )
        self.assertEqual(named["rows"], [[ORDERS // 2]])
        literal = structured(await call("sql.query", {"sql": "SELECT '12:30' AS t, 'a%b' AS p"}))
        self.assertEqual(literal["rows"], [["12:30", "a%b"]])
        view = structured(
            await call("sql.query", {"sql": "WITH c AS (SELECT COUNT(*) AS n FROM big_orders) SELECT n FROM c"})
        )
        self.assertEqual(view["rows"], [[ORDERS - 66]])
        exact = structured(await call("sql.query", {"sql": "SELECT total FROM orders WHERE id = 3"}))
        self.assertIn(exact["rows"][0][0], ("4.5", "4.50", 4.5))
        # Rows stop at about 1 MB of text, whatever the limit.
        wide = structured(
            await call(
                "sql.query", {"sql": "SELECT id, ? AS filler FROM orders", "params": ["x" * 50_000], "limit": 100}
            )
        )
        self.assertEqual((wide["row_count"], wide["truncated"]), (19, True))
        over = await call("sql.query", {"sql": "SELECT 1", "limit": 5000})
        self.assertIn("limit", error_text(over))

        # sql.explain: the database's own plan.
        explained = structured(
            await call("sql.explain", {"sql": "SELECT * FROM orders WHERE customer_id = ?", "params": [1]})
        )
        self.assertEqual(explained["format"], "sqlite-query-plan" if self.backend == "sqlite" else "json")
        self.assertIn("orders", str(explained["plan"]))
        self.assertIn("is refused", error_text(await call("sql.explain", {"sql": "DELETE FROM orders"})))

        # A bad source name, a bad statement, bad placeholders: isError naming the fix.
        self.assertIn(
            "no SQL source 'nope': the sources are shop",
            error_text(await call("sql.query", {"source": "nope", "sql": "SELECT 1"})),
        )
        self.assertIn("no SQL source", error_text(await call("sql.tables", {"source": "nope"})))
        bad = error_text(await call("sql.query", {"sql": "SELECT * FROM no_such_table"}))
        self.assertIn("refused the statement", bad)
        self.assertIn("no_such_table", bad)
        self.assertIn("sql.tables lists the tables", bad)
        self.assertIn("refused", error_text(await call("sql.query", {"sql": "SELEC 1"})))
        for sql, params in (("SELECT ? + ?", [1]), ("SELECT :a", {"b": 1})):
            self.assertRegex(
                error_text(await call("sql.query", {"sql": sql, "params": params})), "placeholders|binding"
            )

    async def bypasses(self, client: Client, outfile: str) -> None:
        extra = SQLITE_BYPASSES if self.backend == "sqlite" else MARIADB_BYPASSES + MARIADB_HIDDEN_WRITES
        for sql, said in BYPASSES + extra:
            sql = sql.format(outfile=outfile)
            result = await client.call_tool("sql.query", {"sql": sql} if sql else {"sql": " "})
            self.assertIn(said, error_text(result), sql)
        # Past the time limit: stopped by the database, the call answered soon after.
        slow = (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c"
            if self.backend == "sqlite"
            else "SELECT SLEEP(30)"
        )
        started = time.monotonic()
        result = await client.call_tool("sql.query", {"sql": slow})
        self.assertIn("time limit", error_text(result))
        self.assertLess(time.monotonic() - started, TIME_LIMIT + 4)
        # The source still answers afterwards.
        self.assertEqual(structured(await client.call_tool("sql.query", {"sql": "SELECT 1"}))["rows"], [[1]])

    @property
    def backend_name(self) -> str:
        return "sqlite" if self.backend == "sqlite" else "mysql"


class SQLiteModernTests(_Scenarios, DaemonTestCase):
    backend, mode = "sqlite", MODERN
    timeout = 120


class SQLiteLegacyTests(_Scenarios, DaemonTestCase):
    backend, mode = "sqlite", LEGACY
    timeout = 120


class MariaDBModernTests(_Scenarios, DaemonTestCase):
    backend, mode = "mariadb", MODERN
    timeout = 120


class MariaDBLegacyTests(_Scenarios, DaemonTestCase):
    backend, mode = "mariadb", LEGACY
    timeout = 120


# -- the database is the guard ------------------------------------------------------------------

SQLITE_GUARDED = (
    "INSERT INTO customers VALUES (3, 'Eve', 'eve@example.com')",
    "UPDATE orders SET total = 0",
    "DELETE FROM orders",
    "REPLACE INTO customers VALUES (1, 'Mallory', NULL)",
    "DROP TABLE orders",
    "CREATE TABLE pwned (a INTEGER)",
    "CREATE TEMP TABLE pwned (a INTEGER)",
    "WITH x AS (SELECT 3) INSERT INTO customers SELECT x, 'Eve', NULL FROM (SELECT 3 AS x)",
    "PRAGMA query_only = 0",
    # The pragmas a full-text table reads, allowed only without a value (as reads).
    "PRAGMA page_size = 512",
    "PRAGMA main.page_size = 512",
    "PRAGMA data_version = 1",
    "PRAGMA writable_schema = ON",
    "ATTACH DATABASE '{dir}/elsewhere.db' AS elsewhere",
    "VACUUM INTO '{dir}/copy.db'",
    "BEGIN IMMEDIATE",
    "SELECT 1; DELETE FROM orders",
)
MARIADB_GUARDED = (
    "INSERT INTO customers VALUES (3, 'Eve', 'eve@example.com')",
    "UPDATE orders SET total = 0",
    "DELETE FROM orders",
    "REPLACE INTO customers VALUES (1, 'Mallory', NULL)",
    "DROP TABLE orders",
    "CREATE TABLE pwned (a INT)",
    "CREATE TEMPORARY TABLE pwned (a INT)",
    "TRUNCATE TABLE orders",
    "SELECT sneaky_write()",
    "CALL cleanup()",
    "/*!50000 DROP TABLE orders*/",
    "SELECT 1; DELETE FROM orders",
    "SELECT 1 INTO OUTFILE '{outfile}'",
    "LOAD DATA INFILE '/etc/hosts' INTO TABLE customers",
    "LOAD DATA LOCAL INFILE '/etc/hosts' INTO TABLE customers",
    "LOCK TABLES orders WRITE",
    "SET TRANSACTION READ WRITE",
)


class _Guarded:
    """Calls straight to a source's connection, past the lexical pre-check."""

    addCleanup: Any

    def run_guarded(self, source: SQLSource, sql: str) -> Any:
        return source._call(lambda connection: source.read(connection, sql, None, 10))

    def assert_refused(self, source: SQLSource, sql: str) -> str:
        try:
            result = self.run_guarded(source, sql)
        except Refused as e:
            return str(e)
        raise AssertionError(f"the database ran {sql!r}: {result}")

    def started(self, source: SQLSource) -> SQLSource:
        source.pool.start()
        self.addCleanup(source.close)
        self.addCleanup(source.pool.stop)
        return source


class GuardTests(_Guarded, TestCase):
    """Statements sent straight to a source's connection, past the lexical pre-check: the
    database refuses every write, and nothing changes."""

    timeout = 60

    def test_sqlite(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "shop.sqlite3"
        sqlite_source(path)
        before = sqlite_fingerprint(path)
        source = self.started(SQLSource(source_config("shop", f"sqlite:///{path}"), TIME_LIMIT, 1, None))
        for sql in SQLITE_GUARDED:
            said = self.assert_refused(source, sql.format(dir=directory))
            self.assertTrue("not authorized" in said or "one statement" in said or "denied" in said, said)
        # The schema table's UPDATE a full-text table's opening compiles is never the caller's.
        for sql in (
            "UPDATE sqlite_master SET sql = 'x' WHERE name = 'orders'",
            "UPDATE main.sqlite_schema SET name = 'x'",
        ):
            self.assertIn("may not be modified", self.assert_refused(source, sql))
        # Without the authorizer, the read-only open and query_only still refuse writes.
        connection = source.engine.raw_connection()
        try:
            with self.assertRaises(sqlite3.OperationalError) as caught:
                connection.driver_connection.execute("DELETE FROM orders")
            self.assertIn("readonly", str(caught.exception))
        finally:
            connection.close()
        started = time.monotonic()
        said = self.assert_refused(
            source, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c"
        )
        self.assertIn("time limit", said)
        self.assertLess(time.monotonic() - started, TIME_LIMIT + 2)
        self.assertEqual(sqlite_fingerprint(path), before)
        # A parameter past SQLite's 64-bit integers: a refusal, not an OverflowError.
        with self.assertRaises(Refused) as caught:
            source._call(lambda connection: source.read(connection, "SELECT ?", [2**70], 10))
        self.assertIn("too large for SQLite", str(caught.exception))

    def test_mariadb(self) -> None:
        server, database = mariadb_source()
        before = mariadb_fingerprint(server, database)
        outfile = f"/tmp/mcpd-test-outfile-{database}"
        # The test user may write this database: only mcpd's read-only transaction stops it.
        source = self.started(SQLSource(source_config("shop", server.url(database), PASSWORD), TIME_LIMIT, 1, None))
        for sql in MARIADB_GUARDED:
            self.assert_refused(source, sql.format(outfile=outfile))
        # What a statement does to its session ends with it: the next call on the same
        # connection is read-only and time-limited again.
        for setting in ("SET SESSION max_statement_time = 0", "SET SESSION TRANSACTION READ WRITE"):
            self.run_guarded(source, setting)
        self.assertIn("READ ONLY", self.assert_refused(source, "INSERT INTO customers VALUES (4, 'x', NULL)"))
        started = time.monotonic()
        self.assertIn("time limit", self.assert_refused(source, "SELECT SLEEP(10)"))
        self.assertLess(time.monotonic() - started, TIME_LIMIT + 2)
        self.assertEqual(mariadb_fingerprint(server, database), before)
        self.assertFalse(Path(outfile).exists())

    def assert_capped(self, source: SQLSource, big: str, huge: int = 50_000_000) -> None:
        """One row past the size cap is refused; rows stop (truncated) before the cap is passed."""
        # (SQLite refuses to build a value past SQLITE_MAX_LENGTH at all.)
        self.assertRegex(
            self.assert_refused(source, f"SELECT {big.format(n=huge)}"), "one row holds about|one value is past"
        )
        three = ", ".join([big.format(n=200_000)] * 3)  # about 600,000 characters a row
        wide = self.run_guarded(source, f"SELECT {three} FROM orders")
        self.assertEqual((wide["row_count"], wide["truncated"], len(wide["rows"][0][0])), (1, True, 200_000))
        self.assertEqual(self.run_guarded(source, "SELECT COUNT(*) FROM orders")["rows"], [[ORDERS]])

    def test_sqlite_size_cap(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        sqlite_source(directory / "shop.sqlite3")
        source = SQLSource(source_config("shop", f"sqlite:///{directory / 'shop.sqlite3'}"), 10.0, 1, None)
        self.assert_capped(self.started(source), "zeroblob({n})")

    def test_mariadb_size_cap(self) -> None:
        server, database = mariadb_source()
        source = self.started(SQLSource(source_config("shop", server.url(database), PASSWORD), 10.0, 1, None))
        self.assert_capped(source, "REPEAT('x', {n})", 4_000_000)  # under max_allowed_packet

    def test_no_session_state_outlives_a_call(self) -> None:
        """Whatever a statement leaves on its session is gone before the next call reuses the
        connection (the next caller may be another tenant): locks, user variables, prepared
        statements, session variables, the character set, the default database. Statements go
        past the pre-check, straight to the connection."""
        server, database = mariadb_source()
        other = server.new_database()
        source = self.started(SQLSource(source_config("shop", server.url(database), PASSWORD), TIME_LIMIT, 1, None))

        def one(sql: str) -> Any:
            return self.run_guarded(source, sql)["rows"][0][0]

        connection_id = one("SELECT CONNECTION_ID()")
        defaults = self.run_guarded(source, "SELECT @@sql_mode, @@max_statement_time, @@sql_select_limit")["rows"]
        lock = f"mcpd-test-{database}"
        self.assertEqual(one(f"SELECT GET_LOCK('{lock}', 0)"), 1)
        self.assertEqual(server.sql(f"SELECT IS_FREE_LOCK('{lock}')"), [(1,)])
        self.run_guarded(source, "SELECT @v := 'secret'")
        self.assertIsNone(one("SELECT @v"))
        self.run_guarded(source, "PREPARE leftover FROM 'SELECT 1'")
        self.assertIn("Unknown prepared statement", self.assert_refused(source, "EXECUTE leftover"))
        for setting in (
            "SET SESSION sql_mode = ''",
            "SET @@session.max_statement_time = 0",
            "SET STATEMENT sql_select_limit = 1 FOR SELECT 1",
        ):
            self.run_guarded(source, setting)
        self.assertEqual(
            self.run_guarded(source, "SELECT @@sql_mode, @@max_statement_time, @@sql_select_limit")["rows"], defaults
        )
        self.run_guarded(source, "SET NAMES latin1")
        self.assertEqual(one("SELECT CONCAT('é', '😀')"), "é😀")
        self.assertEqual(one("SELECT @@character_set_client"), "utf8mb4")
        self.run_guarded(source, f"USE `{other}`")
        self.assertEqual(one("SELECT DATABASE()"), database)
        # A temporary table is refused in the read-only session; made before it, it is gone too.
        self.assert_refused(source, "CREATE TEMPORARY TABLE leftover (a INT)")
        self.assertEqual(one("SELECT @@tx_read_only"), 1)
        self.assertEqual(one("SELECT @@time_zone"), "+00:00")
        # A page cut at the cap (the server sends one row more): its connection is kept too.
        page = self.run_guarded(source, "SELECT id FROM orders ORDER BY id")
        self.assertEqual((page["row_count"], page["truncated"]), (10, True))
        # All on one connection, reused: pooled, not a connection per call.
        self.assertEqual(one("SELECT CONNECTION_ID()"), connection_id)
        # The statement's own LIMIT past the cap leaves more than is worth reading: that
        # connection is closed, not reused with rows pending.
        page = self.run_guarded(source, f"SELECT id FROM orders ORDER BY id LIMIT {ORDERS}")
        self.assertEqual((page["row_count"], page["truncated"], page["rows"][-1]), (10, True, [10]))
        self.assertNotEqual(one("SELECT CONNECTION_ID()"), connection_id)
        self.assertEqual(one("SELECT COUNT(*) FROM orders"), ORDERS)

    def test_a_pooled_connection_the_server_dropped(self) -> None:
        """A pooled connection the server ended while it was idle is replaced, not an error."""
        server, database = mariadb_source()
        source = self.started(SQLSource(source_config("shop", server.url(database), PASSWORD), TIME_LIMIT, 1, None))
        first = self.run_guarded(source, "SELECT CONNECTION_ID()")["rows"][0][0]
        server.sql(f"KILL {first}")
        second = self.run_guarded(source, "SELECT CONNECTION_ID()")["rows"][0][0]
        self.assertNotEqual(first, second)
        self.assertEqual(self.run_guarded(source, "SELECT COUNT(*) FROM orders")["rows"], [[ORDERS]])

    def test_the_readme_reader(self) -> None:
        """The SELECT-only user README's GRANT statements make reads tables, and can neither
        write nor reach the server's files, whatever mcpd does."""
        server, database = mariadb_source()
        readme = (Path(__file__).resolve().parent.parent / "README.rst").read_text(encoding="utf-8")
        statements = [
            line.strip().rstrip(";")
            for line in readme.splitlines()
            if line.strip().startswith(("CREATE USER 'mcpd_reader'", "GRANT SELECT, SHOW VIEW ON shop.*"))
        ]
        self.assertEqual(len(statements), 2, statements)
        user = f"reader_{database[-8:]}"
        server.sql(
            *(
                statement.replace("mcpd_reader", user)
                .replace("10.0.0.%", "127.0.0.1")
                .replace("shop.*", f"`{database}`.*")
                for statement in statements
            )
        )
        grants = " ".join(row[0] for row in server.sql(f"SHOW GRANTS FOR '{user}'@'127.0.0.1'"))
        self.assertNotIn("FILE", grants)
        url = f"mysql+pymysql://{user}@127.0.0.1:{server.port}/{database}"
        source = self.started(
            SQLSource(source_config("shop", url, "another long random password"), TIME_LIMIT, 1, None)
        )
        self.assertEqual(self.run_guarded(source, "SELECT COUNT(*) FROM orders")["rows"], [[ORDERS]])
        self.assertIn("customers", str(source._call(lambda connection: source._tables(connection, 10, None))))
        self.assertEqual(self.run_guarded(source, "SELECT LOAD_FILE('/etc/passwd')")["rows"], [[None]])
        outfile = f"/tmp/mcpd-test-outfile-{user}"
        self.assertIn("FILE", self.assert_refused(source, f"SELECT 1 INTO OUTFILE '{outfile}'"))
        self.assertFalse(Path(outfile).exists())


# -- bounded lists --------------------------------------------------------------------------------


class BoundedListTests(DaemonTestCase):
    """sql.tables pages as every list does (TOOLS.md: 20 by default, at most 100); sql.describe
    shows at most `DESCRIBED_COLUMNS` columns and `DESCRIBED_INDEXES` indexes in about
    `MAX_RESULT_CHARS`, and says when it left some out."""

    timeout = 120

    def test_sqlite(self) -> Deferred[None]:
        path = self.workdir / "wide.sqlite3"
        connection = sqlite3.connect(path)
        for n in range(25):
            connection.execute(f"CREATE TABLE t{n:02d} (a INTEGER)")
        wide = ", ".join(f"c{n} INTEGER" for n in range(DESCRIBED_COLUMNS + 10))
        connection.execute(f"CREATE TABLE wide ({wide})")
        for n in range(DESCRIBED_INDEXES + 10):
            connection.execute(f"CREATE INDEX wide_{n} ON wide (c{n}, c{n + 1})")
        # Two defaults of 600,000 characters: the second column is past the size.
        big = "x" * 600_000
        connection.execute(f"CREATE TABLE heavy (a TEXT DEFAULT '{big}', b TEXT DEFAULT '{big}', c INTEGER)")
        connection.commit()
        connection.close()
        daemon = self.start_daemon(f"--sql-source=wide=sqlite:///{path}", fixture_pack=False)
        assert daemon.port is not None
        port = daemon.port

        def check() -> None:
            tables = call_tool(port, "sql.tables", {})["result"]["structuredContent"]
            self.assertEqual(len(tables["tables"]), 20)
            rest = call_tool(port, "sql.tables", {"cursor": tables["next_cursor"]})["result"]["structuredContent"]
            self.assertEqual([t["name"] for t in rest["tables"]], [f"t{n}" for n in range(19, 25)] + ["wide"])
            self.assertIsNone(rest["next_cursor"])
            self.assertEqual(
                len(call_tool(port, "sql.tables", {"limit": 100})["result"]["structuredContent"]["tables"]), 27
            )
            over = call_tool(port, "sql.tables", {"limit": 101})
            self.assertIn("limit", str(over))
            self.assertTrue(over.get("error") or over["result"].get("isError"), over)
            described = call_tool(port, "sql.describe", {"table": "wide"})["result"]["structuredContent"]
            self.assertEqual(
                (len(described["columns"]), len(described["indexes"]), described["truncated"]),
                (DESCRIBED_COLUMNS, DESCRIBED_INDEXES, True),
            )
            self.assertEqual(described["columns"][-1]["name"], f"c{DESCRIBED_COLUMNS - 1}")
            heavy = call_tool(port, "sql.describe", {"table": "heavy"})
            self.assertLess(len(json.dumps(heavy)), 2 * MAX_RESULT_CHARS + 10_000)  # the text and the structure
            shown = heavy["result"]["structuredContent"]
            self.assertEqual(([c["name"] for c in shown["columns"]], shown["truncated"]), (["a"], True))
            narrow = call_tool(port, "sql.describe", {"table": "t00"})["result"]["structuredContent"]
            self.assertEqual((len(narrow["columns"]), narrow["truncated"]), (1, False))

        return self.in_thread(check)

    def test_mariadb(self) -> None:
        server, database = mariadb_source()
        # InnoDB takes at most 1,017 columns and 64 indexes.
        wide = ", ".join(f"c{n} INT" for n in range(DESCRIBED_COLUMNS + 10))
        server.sql(f"CREATE TABLE wide ({wide})", database=database)
        source = SQLSource(source_config("shop", server.url(database), PASSWORD), TIME_LIMIT, 1, None)
        source.pool.start()
        self.addCleanup(source.close)
        self.addCleanup(source.pool.stop)
        described = source._call(lambda connection: source._describe(connection, "wide"))
        self.assertEqual((len(described["columns"]), described["truncated"]), (DESCRIBED_COLUMNS, True))
        orders = source._call(lambda connection: source._describe(connection, "orders"))
        self.assertEqual((len(orders["columns"]), orders["truncated"]), (4, False))

    def test_mariadb_names_differing_in_case(self) -> None:
        """Table names compare as the server's (lower_case_table_names=0): zz and ZZ are two
        tables, each listed once and described alone."""
        server, database = mariadb_source()
        server.sql(
            *(f"CREATE TABLE a{n:02d} (a INT)" for n in range(1, 20)),
            "CREATE TABLE zz (lower_one INT)",
            "CREATE TABLE ZZ (upper_one INT, upper_two INT, KEY upper_key (upper_two))",
            database=database,
        )
        source = SQLSource(source_config("shop", server.url(database), PASSWORD), TIME_LIMIT, 1, None)
        source.pool.start()
        self.addCleanup(source.close)
        self.addCleanup(source.pool.stop)
        listed: list[str] = []
        after: str | None = None
        while True:
            tables, after = source._call(partial(source._tables, limit=10, after=after))
            listed += [table["name"] for table in tables]
            if after is None:
                break
        shop = ["big_orders", "customers", "orders"]
        self.assertEqual(listed, sorted([*(f"a{n:02d}" for n in range(1, 20)), "zz", "ZZ", *shop]))
        lower = source._call(lambda connection: source._describe(connection, "zz"))
        self.assertEqual(([c["name"] for c in lower["columns"]], lower["indexes"]), (["lower_one"], []))
        upper = source._call(lambda connection: source._describe(connection, "ZZ"))
        self.assertEqual([c["name"] for c in upper["columns"]], ["upper_one", "upper_two"])
        self.assertEqual([index["name"] for index in upper["indexes"]], ["upper_key"])


# -- outages ------------------------------------------------------------------------------------


class OutageTests(DaemonTestCase):
    timeout = 60

    def test_a_source_that_is_down(self) -> Deferred[None]:
        path = self.workdir / "shop.sqlite3"
        sqlite_source(path)
        password_file = self.workdir / "gone-password"
        password_file.write_text("secret-of-gone\n")
        # A server that takes connections and never answers.
        hung = socket.socket()
        self.addCleanup(hung.close)
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        daemon = self.start_daemon(
            f"--sql-source=shop=sqlite:///{path}",
            f"--sql-source=hung=mysql+pymysql://{USER}@127.0.0.1:{hung.getsockname()[1]}/mcpd_hung",
            f"--sql-source=gone=mysql+pymysql://{USER}@127.0.0.1:{free_port()}/mcpd_gone",
            f"--sql-source=missing=sqlite:///{self.workdir / 'no-such.sqlite3'}",
            f"--sql-password-file=gone={password_file}",
            f"--sql-timeout={TIME_LIMIT}",
            fixture_pack=False,
        )
        assert daemon.port is not None
        port = daemon.port

        def result(arguments: dict[str, Any]) -> dict[str, Any]:
            reply = call_tool(port, "sql.query", arguments)
            self.assertNotIn("error", reply)  # never -32603
            return dict(reply["result"])

        def check() -> None:
            for name in ("gone", "missing", "hung"):
                started = time.monotonic()
                answer = result({"source": name, "sql": "SELECT 1"})
                self.assertTrue(answer.get("isError"), answer)
                self.assertIn(f"SQL source '{name}' is unavailable (temporary)", answer["content"][0]["text"])
                # A server that never answers is given up on after --sql-timeout + CONNECT_TIMEOUT.
                self.assertLess(time.monotonic() - started, TIME_LIMIT + CONNECT_TIMEOUT + 3)
            # mcpd and its other sources serve on; /health does not fail or wait for a team database.
            self.assertEqual(result({"sql": "SELECT COUNT(*) FROM customers"})["structuredContent"]["rows"], [[2]])
            started = time.monotonic()
            status, body = get(port, "/health")
            self.assertLess(time.monotonic() - started, PROBE_TIMEOUT + 1.5)
            self.assertEqual(status, 200, body)
            self.assertIn(b"sql_sources", body)
            info = call_tool(port, "server.info", {})["result"]["structuredContent"]
            sources = next(store for store in info["stores"] if store["name"] == "sql_sources")
            states = {s["name"]: s["state"] for s in sources["sources"]}
            self.assertEqual(states, {"shop": "ok", "gone": "down", "missing": "down", "hung": "down"})
            self.assertNotIn("secret-of-gone", str(info) + daemon.log() + daemon.log("stdout"))
            status, exposition = get(port, "/metrics")
            self.assertEqual(status, 200)
            self.assertEqual(metric(exposition, "mcp_sql_source_up", {"source": "shop"}), 1.0)
            self.assertEqual(metric(exposition, "mcp_sql_source_up", {"source": "gone"}), 0.0)
            self.assertGreaterEqual(
                metric(exposition, "mcp_sql_source_calls_total", {"source": "gone", "outcome": "unavailable"}), 1.0
            )
            # The query, and the probes of start-up and /health.
            self.assertGreaterEqual(
                metric(exposition, "mcp_sql_source_calls_total", {"source": "shop", "outcome": "ok"}), 1.0
            )

        return self.in_thread(check)


class SQLiteFunctionTests(DaemonTestCase):
    """SQL functions that reach past the database are denied by the authorizer."""

    timeout = 60

    def test_fts3_tokenizer_is_refused_and_the_daemon_lives(self) -> Deferred[None]:
        path = self.workdir / "docs.sqlite3"
        connection = sqlite3.connect(path)
        connection.execute("CREATE VIRTUAL TABLE docs USING fts4(body)")
        connection.execute("INSERT INTO docs VALUES ('hello world')")
        connection.execute("CREATE VIRTUAL TABLE docs5 USING fts5(title, body)")
        connection.execute("INSERT INTO docs5 VALUES ('greeting', 'hello world'), ('farewell', 'goodbye world')")
        connection.commit()
        connection.close()
        # One connection: the MATCH meets whatever the tokenizer call left on it.
        daemon = self.start_daemon(f"--sql-source=docs=sqlite:///{path}", "--sql-connections=1", fixture_pack=False)
        assert daemon.port is not None
        port = daemon.port

        def result(sql: str) -> dict[str, Any]:
            reply = call_tool(port, "sql.query", {"sql": sql})
            self.assertNotIn("error", reply)
            return dict(reply["result"])

        def check() -> None:
            # sql.describe opens the FTS table too.
            described = call_tool(port, "sql.describe", {"table": "docs"})["result"]
            self.assertFalse(described.get("isError"), described)
            for sql in (
                "SELECT fts3_tokenizer('simple', x'4141414141414141')",  # a pointer the next MATCH calls
                "SELECT fts3_tokenizer('simple')",  # a library address
                "SELECT hex(fts3_tokenizer('porter'))",
                "SELECT load_extension('/tmp/x.so')",
            ):
                refused = result(sql)
                self.assertTrue(refused.get("isError"), (sql, refused))
                self.assertIn("not authorized", refused["content"][0]["text"], sql)
            # The MATCH that would call the planted tokenizer finds the row with the real one,
            # and mcpd serves on.
            found = result("SELECT body FROM docs WHERE docs MATCH 'hello'")
            self.assertEqual(found["structuredContent"]["rows"], [["hello world"]], found)
            found = result("SELECT c0body FROM docs_content")
            self.assertEqual(found["structuredContent"]["rows"], [["hello world"]])

        return self.in_thread(check)

    def test_full_text_tables_can_be_searched(self) -> Deferred[None]:
        """A MATCH on an FTS4 and an FTS5 table of a source, with their ranking and snippet
        functions: what opening such a table asks of the authorizer is allowed, and writes to
        them are still refused."""
        (self.workdir / "source").mkdir()
        path = self.workdir / "source" / "docs.sqlite3"
        connection = sqlite3.connect(path)
        connection.execute("CREATE VIRTUAL TABLE docs4 USING fts4(title, body)")
        connection.execute("CREATE VIRTUAL TABLE docs5 USING fts5(title, body, tokenize = 'porter')")
        for table in ("docs4", "docs5"):
            connection.execute(
                f"INSERT INTO {table} VALUES ('greeting', 'hello wide world'), ('farewell', 'goodbye world')"
            )
        connection.commit()
        connection.close()
        before = sqlite_fingerprint(path)
        daemon = self.start_daemon(f"--sql-source=docs=sqlite:///{path}", fixture_pack=False)
        assert daemon.port is not None
        port = daemon.port

        def result(sql: str) -> dict[str, Any]:
            reply = call_tool(port, "sql.query", {"sql": sql})
            self.assertNotIn("error", reply)
            return dict(reply["result"])

        def rows(sql: str) -> list[Any]:
            answer = result(sql)
            self.assertFalse(answer.get("isError"), (sql, answer))
            return list(answer["structuredContent"]["rows"])

        def check() -> None:
            self.assertEqual(
                rows(
                    "SELECT title, snippet(docs5, 1, '[', ']', '…', 4), highlight(docs5, 0, '<', '>') "
                    "FROM docs5 WHERE docs5 MATCH 'hello' ORDER BY rank"
                ),
                [["greeting", "[hello] wide world", "greeting"]],
            )
            ranked = rows("SELECT title, bm25(docs5) FROM docs5 WHERE docs5 MATCH 'world' ORDER BY rank")
            self.assertEqual(sorted(row[0] for row in ranked), ["farewell", "greeting"])
            self.assertEqual(rows("SELECT title FROM docs5 WHERE docs5 MATCH 'title:farewell'"), [["farewell"]])
            self.assertEqual(
                rows("SELECT title, snippet(docs4), offsets(docs4) FROM docs4 WHERE docs4 MATCH 'goodbye'"),
                [["farewell", "<b>goodbye</b> world", "1 0 0 7"]],
            )
            self.assertEqual(len(rows("SELECT matchinfo(docs4) FROM docs4 WHERE docs4 MATCH 'world'")), 2)
            # A fresh connection per call opens the tables afresh: a second search works as well.
            self.assertEqual(rows("SELECT title FROM docs4 WHERE docs4 MATCH 'hello'"), [["greeting"]])
            # The pragmas a full-text table reads are allowed only as reads, the rest still denied.
            for sql in (
                "INSERT INTO docs5(docs5) VALUES ('rebuild')",
                "INSERT INTO docs4 VALUES ('x', 'y')",
                "SELECT fts3_tokenizer('simple')",
            ):
                self.assertTrue(result(sql).get("isError"), sql)
            self.assertEqual(sqlite_fingerprint(path), before)

        return self.in_thread(check)


# -- configuration ------------------------------------------------------------------------------


class ConfigTests(SynchronousTestCase):
    def settings(self, flags: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Any:
        return resolve(flags or {}, environ or {}, {})

    def test_the_pack_is_offered_with_a_source(self) -> None:
        self.assertNotIn("sql", toolsets_of(self.settings()))
        settings = self.settings({"sql_source": ["shop=sqlite:///shop.db"]})
        self.assertIn("sql", toolsets_of(settings))
        with self.assertRaises(ConfigError) as caught:
            load_packs(self.settings({"toolsets": "server,sql"}))
        self.assertIn("--sql-source NAME=URL", str(caught.exception))

    def test_sources_from_the_environment_with_their_passwords(self) -> None:
        settings = self.settings(
            environ={
                "SQL_SOURCES": "shop=sqlite:///shop.db, crm-eu=mysql+pymysql://reader@db.internal:3306/crm",
                "SQL_PASSWORD_CRM_EU": "s3cret",
            }
        )
        self.assertNotIn("s3cret", repr(settings))
        shop, crm = sql_sources_config(settings)
        self.assertEqual((shop.name, shop.backend, crm.name, crm.backend), ("shop", "sqlite", "crm-eu", "mysql"))
        self.assertEqual(crm.url.password, "s3cret")
        self.assertNotIn("s3cret", crm.shown_url + repr(crm))

    def test_a_password_file(self) -> None:
        path = Path(self.mktemp())
        path.write_text("from-file\n")
        settings = self.settings(
            {"sql_source": ["crm=mysql+pymysql://reader@db/crm"], "sql_password_file": [f"crm={path}"]}
        )
        self.assertEqual(sql_sources_config(read_secrets(settings))[0].url.password, "from-file")
        stray = self.settings({"sql_source": ["crm=mysql+pymysql://reader@db/crm"], "sql_password_file": ["x=/p"]})
        with self.assertRaises(ConfigError) as caught:
            read_secrets(stray)
        self.assertIn("--sql-password-file x: there is no --sql-source x", str(caught.exception))

    def test_bad_sources_are_refused_in_one_line(self) -> None:
        for entry, said in (
            ("no-equals-sign", "NAME=VALUE"),
            ("1st=sqlite:///x.db", "not a name"),
            ("pg=postgresql://u@h/db", "sqlite:/// or mysql+pymysql://"),
            # A URL without its NAME=: its password is never echoed.
            ("mysql+pymysql://reader:hunter2@db/crm", "NAME=VALUE"),
            ("mysql+pymysql://reader:hun=ter2@db/crm", "NAME=VALUE"),
        ):
            with self.assertRaises(ConfigError) as caught:
                self.settings({"sql_source": [entry]})
            self.assertIn(said, str(caught.exception))
            self.assertIn("--sql-source", str(caught.exception))
            self.assertNotIn("hunter2", str(caught.exception))
            self.assertNotIn("hun=", str(caught.exception))
        for entries, said in (
            (["a=sqlite:///x.db", "a=sqlite:///y.db"], "named more than once"),
            (["a=sqlite://"], "name the SQLite file"),
            (["a=mysql+pymysql://u@h"], "name the database"),
            (["a=mysql+pymysql://u:pw@h:abc/db"], "the port a number"),
        ):
            with self.assertRaises(ConfigError) as caught:
                load_packs(self.settings({"sql_source": entries}))
            self.assertIn(said, str(caught.exception))

    def test_the_sources_provide_their_interfaces(self) -> None:
        settings = self.settings({"sql_source": ["a=sqlite:///a.db", "b=mysql+pymysql://u@h/db"]})
        sources = SQLSources(sql_sources_config(settings), 1.0, 1, None)
        self.addCleanup(sources.close)
        self.assertTrue(verifyObject(ISQLSources, sources))
        self.assertTrue(verifyObject(IStore, sources))
        self.assertEqual(sources.names, ["a", "b"])
        self.assertEqual(sources.describe()["name"], "sql_sources")

    def test_the_pre_check_names_the_statement(self) -> None:
        self.assertEqual(check_statement("  SELECT 1 ;  ", "sqlite"), "SELECT 1")
        self.assertEqual(check_statement("(SELECT 1) UNION (SELECT 2)", "mysql"), "(SELECT 1) UNION (SELECT 2)")
        self.assertEqual(check_statement("SELECT 'into' AS `into`", "mysql"), "SELECT 'into' AS `into`")
        # Words that only matter in one place: a SQLite column may be called lock.
        self.assertEqual(check_statement("SELECT lock FROM doors", "sqlite"), "SELECT lock FROM doors")
        for sql in ("SELECT 1 FOR UPDATE", "SELECT 1 FOR SHARE", "SELECT 1 LOCK IN SHARE MODE"):
            with self.assertRaises(Refused):
                check_statement(sql, "mysql")
        # MySQL's -- starts a comment only before a blank: --1 is minus minus one.
        with self.assertRaises(Refused) as caught:
            check_statement("SELECT 1 --1 INTO OUTFILE '/tmp/x'", "mysql")
        self.assertIn("INTO is refused", str(caught.exception))
        self.assertEqual(check_statement("SELECT '--1' --1\n", "mysql"), "SELECT '--1' - -1")
        self.assertEqual(check_statement("SELECT 1 -- INTO\n", "mysql"), "SELECT 1 -- INTO")
        with self.assertRaises(Refused) as caught:
            check_statement("EXPLAIN SELECT 1", "mysql")
        self.assertIn("sql.explain", str(caught.exception))


# -- where sqlparse and MariaDB read a statement differently (review of issue 11) ------------------


def mariadb_reader(server: Any, database: str, *grants: str) -> tuple[str, str]:
    """A SELECT-only user of ``database`` (README's reader) with ``grants`` more ({user} in
    them): its name and its source URL (the password is `PASSWORD`)."""
    user = f"rd_{database[-10:]}"
    server.sql(
        f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'",
        f"GRANT SELECT, SHOW VIEW ON `{database}`.* TO '{user}'@'127.0.0.1'",
        *(grant.format(user=f"'{user}'@'127.0.0.1'") for grant in grants),
    )
    return user, f"mysql+pymysql://{user}@127.0.0.1:{server.port}/{database}"


def statements_of(server: Any, user: str) -> list[Any]:
    """The statements the server is running for ``user``."""
    return list(
        server.sql(
            f"SELECT ID, TIME, LEFT(INFO, 80) FROM information_schema.PROCESSLIST "
            f"WHERE USER = '{user}' AND COMMAND = 'Query'"
        )
    )


def without_statements(server: Any, user: str, seconds: float = 3.0) -> list[Any]:
    """``user``'s statements on the server, once none are left or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while (running := statements_of(server, user)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return running


# Statements MariaDB reads otherwise than sqlparse does: a `-- ` or `#` comment ends at a line
# feed only (sqlparse: at a bare carriage return too), and '\\' is one backslash (sqlparse: an
# escaped quote, the string going on). Each would run a statement the pre-check refuses.
DESYNCS = (
    "-- \rSELECT\nSET STATEMENT max_statement_time=0 FOR SELECT SLEEP(20)",
    "-- \rSELECT\nSET STATEMENT max_statement_time=0 FOR SELECT BENCHMARK(100000000, SHA2('x', 256))",
    "# \rSELECT\nKILL {victim}",
    "-- \rSELECT\nKILL QUERY {victim}",
    "-- \rSELECT\nSET ROLE {role}",
    "-- \rSELECT\nSET PASSWORD = PASSWORD('attacker-knows-this')",
    "SELECT '\\\\' INTO OUTFILE '{outfile}'",
    'SELECT "\\\\" INTO DUMPFILE \'{outfile}\' -- "',
    "-- \rSELECT '\nSELECT email FROM customers INTO OUTFILE '{outfile}' #'",
    "SELECT '\\\\', LOAD_FILE('/etc/hostname')",
    "SELECT '\\\\', GET_LOCK('held', 0)",
    "SELECT 1 AS $$, LOAD_FILE('/etc/hostname') AS $$",
    "SELECT 1 [ INTO OUTFILE '{outfile}' ]",
    "SELECT 1 /* \x00 */",
    # One shared database user: its process list shows every caller's statements.
    "SHOW FULL PROCESSLIST",
    "SELECT INFO FROM information_schema.PROCESSLIST",
    "SELECT INFO FROM information_schema.`processlist`",
)


class LexerTests(SynchronousTestCase):
    """The MySQL pre-check reads a statement as the server will."""

    def test_desyncs_are_refused(self) -> None:
        for sql in DESYNCS:
            with self.assertRaises(Refused, msg=repr(sql)):
                check_statement(sql.format(victim=1, role="r", outfile="/tmp/x"), "mysql")

    def test_what_reads_still_runs(self) -> None:
        for sql, sent in (
            ("SELECT 'it''s', \"a;b\" AS `x;y` -- note\r\n", "SELECT 'it''s', \"a;b\" AS `x;y` -- note"),
            ("SELECT 1 # why\n FROM orders;", "SELECT 1 # why\n FROM orders"),
            ("SELECT\r\n  id\tFROM orders /* a /* b */ ;  -- done", "SELECT\r\n  id\tFROM orders /* a /* b */"),
            ("SELECT 'line\rfeed' AS `é$`", "SELECT 'line\rfeed' AS `é$`"),
            ("SELECT 2 ---1", "SELECT 2 - - -1"),
        ):
            self.assertEqual(check_statement(sql, "mysql"), sent)
        with self.assertRaises(Refused) as caught:
            check_statement("SELECT 'a\\'b'", "mysql")
        self.assertIn("as a parameter", str(caught.exception))
        for sql in ("SELECT 'open", "SELECT 1 /* open", "SELECT `open"):
            with self.assertRaises(Refused):
                check_statement(sql, "mysql")
        # A SQLite table may be called processlist.
        self.assertEqual(check_statement("SELECT * FROM processlist", "sqlite"), "SELECT * FROM processlist")


class DesyncTests(DaemonTestCase):
    """Through a real daemon against MariaDB, as a reader that was also granted FILE and a
    non-default role: the desyncs neither run nor outlive their call."""

    timeout = 120

    def test_mariadb(self) -> Deferred[None]:
        server, database = mariadb_source()
        secret = server.new_database()
        server.sql("CREATE TABLE hidden (a INT)", "INSERT INTO hidden VALUES (7)", database=secret)
        role = f"role_{database[-10:]}"
        user, url = mariadb_reader(
            server,
            database,
            "GRANT FILE ON *.* TO {user}",
            f"CREATE ROLE {role}",
            f"GRANT SELECT ON `{secret}`.* TO {role}",
            f"GRANT {role} TO {{user}}",
        )
        self.addCleanup(server.sql, f"DROP USER IF EXISTS '{user}'@'127.0.0.1'", f"DROP ROLE IF EXISTS {role}")
        outfile = f"/tmp/mcpd-test-outfile-{database}"
        before = mariadb_fingerprint(server, database)
        daemon = self.start_daemon(
            f"--sql-source=shop={url}",
            f"--sql-timeout={TIME_LIMIT}",
            "--sql-connections=2",
            fixture_pack=False,
            env={"SQL_PASSWORD_SHOP": PASSWORD},
        )
        assert daemon.port is not None
        port = daemon.port

        def query(sql: str) -> dict[str, Any]:
            reply = call_tool(port, "sql.query", {"sql": sql})
            self.assertNotIn("error", reply)
            return dict(reply["result"])

        def check() -> None:
            victim = query("SELECT CONNECTION_ID()")["structuredContent"]["rows"][0][0]
            for sql in DESYNCS:
                sql = sql.format(victim=victim, role=role, outfile=outfile)
                started = time.monotonic()
                answer = query(sql)
                self.assertTrue(answer.get("isError"), (sql, answer))
                self.assertLess(time.monotonic() - started, TIME_LIMIT + 1, sql)
                self.assertEqual(without_statements(server, user), [], sql)
            self.assertFalse(Path(outfile).exists())
            self.assertIn("denied", query(f"SELECT a FROM `{secret}`.hidden")["content"][0]["text"])
            # The victim's connection was not killed: the next calls are served as before.
            self.assertEqual(query("SELECT COUNT(*) FROM orders")["structuredContent"]["rows"], [[ORDERS]])
            self.assertEqual(mariadb_fingerprint(server, database), before)

        return self.in_thread(check)


class GiveUpTests(_Guarded, TestCase):
    """No statement outlives its call on the server; no session outlives it with a role."""

    timeout = 60

    def test_a_role_set_does_not_outlive_the_call(self) -> None:
        server, database = mariadb_source()
        secret = server.new_database()
        server.sql("CREATE TABLE hidden (a INT)", "INSERT INTO hidden VALUES (7)", database=secret)
        role = f"role_{database[-10:]}"
        user, url = mariadb_reader(
            server,
            database,
            f"CREATE ROLE {role}",
            f"GRANT SELECT ON `{secret}`.* TO {role}",
            f"GRANT {role} TO {{user}}",
        )
        self.addCleanup(server.sql, f"DROP USER IF EXISTS '{user}'@'127.0.0.1'", f"DROP ROLE IF EXISTS {role}")
        source = self.started(SQLSource(source_config("shop", url, PASSWORD), TIME_LIMIT, 1, None))
        connection_id = self.run_guarded(source, "SELECT CONNECTION_ID()")["rows"][0][0]
        self.assertIn("denied", self.assert_refused(source, f"SELECT a FROM `{secret}`.hidden"))
        self.run_guarded(source, f"SET ROLE {role}")  # past the pre-check
        self.assertEqual(
            self.run_guarded(source, "SELECT CURRENT_ROLE(), CONNECTION_ID()")["rows"], [[None, connection_id]]
        )
        self.assertIn("denied", self.assert_refused(source, f"SELECT a FROM `{secret}`.hidden"))

    def test_a_default_role_is_kept(self) -> None:
        server, database = mariadb_source()
        role = f"drole_{database[-10:]}"
        user, url = mariadb_reader(
            server,
            database,
            f"CREATE ROLE {role}",
            f"GRANT {role} TO {{user}}",
            f"SET DEFAULT ROLE {role} FOR {{user}}",
        )
        self.addCleanup(server.sql, f"DROP USER IF EXISTS '{user}'@'127.0.0.1'", f"DROP ROLE IF EXISTS {role}")
        source = self.started(SQLSource(source_config("shop", url, PASSWORD), TIME_LIMIT, 1, None))
        self.run_guarded(source, "SET ROLE NONE")
        self.assertEqual(self.run_guarded(source, "SELECT CURRENT_ROLE()")["rows"], [[role]])

    def test_a_statement_the_server_does_not_stop(self) -> None:
        """Past the pre-check, a statement that lifts its own time limit: mcpd gives up after
        the limit and CONNECT_TIMEOUT, says it timed out, and stops it on the server."""
        server, database = mariadb_source()
        user, url = mariadb_reader(server, database)
        self.addCleanup(server.sql, f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
        source = self.started(SQLSource(source_config("shop", url, PASSWORD), TIME_LIMIT, 1, None))
        started = time.monotonic()
        said = self.assert_refused(source, "SET STATEMENT max_statement_time = 0 FOR SELECT SLEEP(60)")
        self.assertLess(time.monotonic() - started, TIME_LIMIT + CONNECT_TIMEOUT + 2)
        self.assertIn("time limit", said)
        self.assertEqual(without_statements(server, user), [])
        self.assertEqual(self.run_guarded(source, "SELECT COUNT(*) FROM orders")["rows"], [[ORDERS]])

    def test_rows_past_the_page_are_not_waited_for(self) -> None:
        server, database = mariadb_source()
        user, url = mariadb_reader(server, database)
        self.addCleanup(server.sql, f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
        for timeout in (10.0, 2.0):
            source = self.started(SQLSource(source_config("shop", url, PASSWORD), timeout, 1, None))
            started = time.monotonic()
            # Rows wide enough that the server sends them as they come (it holds small ones
            # until its 16 KB buffer fills, here the statement's end: then the wait is the
            # statement's own, bounded by the time limit). No ORDER BY: a sort would call
            # SLEEP() on every row before sending the first.
            page = self.run_guarded(source, f"SELECT id, SLEEP(0.05), REPEAT('x', 4000) FROM orders LIMIT {ORDERS}")
            self.assertLess(time.monotonic() - started, 0.55 + 1.5)
            self.assertEqual((page["row_count"], page["truncated"]), (10, True))
            self.assertEqual(without_statements(server, user), [])
            self.assertEqual(self.run_guarded(source, "SELECT COUNT(*) FROM orders")["rows"], [[ORDERS]])

    def test_sqlite_values_are_bounded(self) -> None:
        """One function call is not interrupted by the time limit: its size is bounded."""
        directory = Path(self.mktemp())
        directory.mkdir()
        sqlite_source(directory / "shop.sqlite3")
        source = SQLSource(source_config("shop", f"sqlite:///{directory / 'shop.sqlite3'}"), TIME_LIMIT, 1, None)
        self.started(source)
        started = time.monotonic()
        said = self.assert_refused(source, "SELECT length(randomblob(400000000))")
        self.assertLess(time.monotonic() - started, 0.5)
        self.assertIn("one value is past", said)
        self.assertEqual(self.run_guarded(source, "SELECT length(randomblob(200000))")["rows"], [[200_000]])


# -- password files ---------------------------------------------------------------------------


def _fifo_once(path: Path, text: str) -> None:
    """A named pipe at ``path`` that gives ``text`` to its first reader only (as a shell's
    ``<(...)`` does): a second reader waits for a writer that never comes."""
    os.mkfifo(path)

    def write() -> None:
        with open(path, "w", encoding="utf-8") as pipe:
            pipe.write(text)

    threading.Thread(target=write, name=f"fifo-{path.name}", daemon=True).start()


class PasswordFileTests(DaemonTestCase):
    """Start-up reads each password file once, however many parts of the daemon need it."""

    timeout = 60

    def test_each_password_file_is_read_once(self) -> None:
        path = self.workdir / "shop.sqlite3"
        sqlite_source(path)
        _fifo_once(self.workdir / "db-password", "unused by SQLite\n")
        _fifo_once(self.workdir / "crm-password", "secret-of-crm\n")
        daemon = self.start_daemon(
            f"--sql-source=shop=sqlite:///{path}",
            f"--sql-source=crm=mysql+pymysql://{USER}@127.0.0.1:{free_port()}/mcpd_crm",
            f"--sql-password-file=crm={self.workdir / 'crm-password'}",
            f"--db-password-file={self.workdir / 'db-password'}",
            fixture_pack=False,
        )
        assert daemon.port is not None
        reply = call_tool(daemon.port, "sql.query", {"source": "shop", "sql": "SELECT COUNT(*) FROM customers"})
        self.assertEqual(reply["result"]["structuredContent"]["rows"], [[2]])
        reply = call_tool(daemon.port, "task.list", {})
        self.assertFalse(reply["result"].get("isError"), reply)

    def test_the_passwords_are_those_read_at_start_up(self) -> None:
        """A file changed after start-up read it changes none of the passwords the daemon's
        stores are then built with (they used to read each file again)."""
        from mcpd.daemon import redis_settings, sql_config
        from mcpd.tap import Options

        files = {name: self.workdir / f"{name}-password" for name in ("db", "redis", "crm")}
        for name, file in files.items():
            file.write_text(f"{name}-at-start\n")
        options = Options()
        options.parseOptions(
            [
                "--db-url=mysql+pymysql://mcpd@127.0.0.1/mcpd",
                f"--db-password-file={files['db']}",
                "--redis-url=redis://127.0.0.1:1/0",
                f"--redis-password-file={files['redis']}",
                "--sql-source=crm=mysql+pymysql://reader@127.0.0.1/crm",
                f"--sql-password-file=crm={files['crm']}",
            ]
        )
        for file in files.values():
            file.write_text("changed\n")
        settings = options.settings
        self.assertEqual(sql_config(settings).url.password, "db-at-start")
        redis = redis_settings(settings)
        assert redis is not None
        self.assertEqual(redis.password, "redis-at-start")
        self.assertEqual([source.url.password for source in sql_sources_config(settings)], ["crm-at-start"])


# -- what a reader may not see: other callers' statements, the source user's credentials ----------

# Statements that show another session's running statement with its values, or the source
# user's grants and password hash; each refused by the pre-check ({victim}: a connection id).
OTHER_SESSIONS = (
    "SHOW EXPLAIN FORMAT=JSON FOR {victim}",
    "SHOW EXPLAIN FOR {victim}",
    "SHOW ANALYZE FORMAT=JSON FOR {victim}",
    "DESC FORMAT=JSON FOR CONNECTION {victim}",
    "DESCRIBE FOR CONNECTION {victim}",
    "SHOW GRANTS",
    "SHOW GRANTS FOR CURRENT_USER",
    "SHOW CREATE USER CURRENT_USER",
    "SHOW ENGINE INNODB STATUS",
    "SHOW BINLOG EVENTS",
    "SHOW FULL PROCESSLIST",
)


class OtherSessionsTests(_Guarded, TestCase):
    """Every caller shares the source's database user, so nothing may show another session's
    statement (its values bound) or that user's credentials."""

    timeout = 60

    def test_the_pre_check(self) -> None:
        for sql in OTHER_SESSIONS:
            with self.assertRaises(Refused, msg=sql):
                check_statement(sql.format(victim=7), "mysql")
        for sql in (
            "SHOW FULL TABLES",
            "SHOW TABLE STATUS",
            "SHOW COLUMNS FROM orders",
            "SHOW EXTENDED FULL COLUMNS FROM orders",
            "SHOW INDEX FROM orders",
            "SHOW CREATE TABLE orders",
            "SHOW GLOBAL STATUS LIKE 'Uptime'",
            "SHOW VARIABLES LIKE 'version'",
            "SHOW WARNINGS",
            "DESC orders",
            "DESCRIBE orders placed",
        ):
            self.assertEqual(check_statement(sql, "mysql"), sql)

    def test_mariadb(self) -> Deferred[None]:
        import pymysql
        from twisted.internet import reactor

        server, database = mariadb_source()
        user, url = mariadb_reader(server, database)
        self.addCleanup(server.sql, f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
        source = self.started(SQLSource(source_config("shop", url, PASSWORD), 10.0, 1, reactor))
        # Another caller's statement, running on its own connection as the same user.
        victim = pymysql.connect(host="127.0.0.1", port=server.port, user=user, password=PASSWORD, database=database)
        self.addCleanup(victim.close)
        running = threading.Thread(
            target=victim.cursor().execute,
            args=("SELECT id FROM orders WHERE placed <> 'secret-4242' AND SLEEP(0.02) = 0",),
        )
        running.start()
        self.addCleanup(running.join)
        deadline = time.monotonic() + 5
        while not statements_of(server, user) and time.monotonic() < deadline:
            time.sleep(0.02)
        # Past the pre-check the server shows it, value and all: the pre-check is the guard.
        shown = self.run_guarded(source, f"SHOW EXPLAIN FORMAT=JSON FOR {victim.thread_id()}")
        self.assertIn("secret-4242", json.dumps(shown))
        self.assertIn("PASSWORD", json.dumps(self.run_guarded(source, "SHOW GRANTS")).upper())

        def refused(sql: str) -> Deferred[None]:
            def said(error: Refused) -> None:
                self.assertIn("refused", str(error))
                self.assertNotIn("secret-4242", str(error))

            return self.assertFailure(source.query(sql, None, 10), Refused).addCallback(said)

        calls = [refused(sql.format(victim=victim.thread_id())) for sql in OTHER_SESSIONS]
        calls.append(source.query("SHOW TABLES", None, 10).addCallback(lambda r: self.assertEqual(r["row_count"], 3)))
        return gatherResults(calls)


# -- long statements: checked in the source's threads, refused past what sqlparse reads ---------

# 12,000 tokens in 12 KB: within the schema's maxLength, past sqlparse's 10,000.
MANY_TOKENS = "SELECT id FROM orders WHERE id IN (" + ",".join("1" for _ in range(6000)) + ")"


class LongStatementTests(DaemonTestCase):
    timeout = 120

    def test_refused_not_crashed(self) -> Deferred[None]:
        (self.workdir / "source").mkdir()
        path = self.workdir / "source" / "shop.sqlite3"
        sqlite_source(path)
        daemon = self.start_daemon(f"--sql-source=shop=sqlite:///{path}", fixture_pack=False)
        assert daemon.port is not None
        port = daemon.port

        def check() -> None:
            for tool in ("sql.query", "sql.explain"):
                answer = call_tool(port, tool, {"sql": MANY_TOKENS})["result"]
                self.assertTrue(answer["isError"], answer)
                self.assertIn("more than 10,000 tokens", answer["content"][0]["text"])
                self.assertNotIn("unexpectedly", answer["content"][0]["text"])
            deep = call_tool(port, "sql.query", {"sql": "SELECT " + "(" * 150 + "1" + ")" * 150})["result"]
            self.assertIn("nested more than 100", deep["content"][0]["text"])
            # 30 KB is no statement: the schema refuses it before anything parses it.
            long = "SELECT id FROM orders WHERE id IN (" + ",".join(str(n) for n in range(6000)) + ")"
            answer = call_tool(port, "sql.query", {"sql": long})["result"]
            self.assertTrue(answer["isError"], answer)
            self.assertTrue(answer["content"][0]["text"].endswith("is too long"))
            answer = call_tool(port, "sql.query", {"sql": "SELECT COUNT(*) FROM orders"})["result"]
            self.assertEqual(answer["structuredContent"]["rows"], [[ORDERS]])
            exposition = get(port, "/metrics")[1]
            refused = metric(exposition, "mcp_sql_source_calls_total", {"source": "shop", "outcome": "refused"})
            self.assertEqual(refused, 3.0)

        return self.in_thread(check)

    def test_never_on_the_reactor(self) -> Deferred[None]:
        """The pre-check of a long statement runs in the source's threads: the call returns to
        the reactor before it has been checked."""
        from twisted.internet import reactor

        directory = Path(self.mktemp())
        directory.mkdir()
        sqlite_source(directory / "shop.sqlite3")
        source = SQLSource(source_config("shop", f"sqlite:///{directory / 'shop.sqlite3'}"), TIME_LIMIT, 1, reactor)
        source.pool.start()
        self.addCleanup(source.close)
        self.addCleanup(source.pool.stop)
        refused = source.query(MANY_TOKENS, None, 10)
        explained = source.explain("DROP TABLE orders", None)
        self.assertFalse(refused.called or explained.called)
        return gatherResults([self.assertFailure(refused, Refused), self.assertFailure(explained, Refused)])


# -- a WAL file in a directory mcpd may not write ---------------------------------------------

# Reads once from a SQLite source, as the user running it: its rows, or the error's class and text.
_READ_ONCE = """
import json, sys
from mcpd.stores.sql.sources import SQLSource, source_config
source = SQLSource(source_config("shop", sys.argv[1]), 1.0, 1, None)
try:
    result = source._call(lambda connection: source.read(connection, "SELECT COUNT(*) FROM orders", None, 10))
    print(json.dumps({"rows": result["rows"]}))
except Exception as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
"""


class ReadOnlyDirectoryTests(TestCase):
    """A WAL-mode SQLite file mcpd may read in a directory it may not write: while its app has it
    open, it reads; once the app closes it (and SQLite removes -wal and -shm), the source is
    unavailable with the fix, never "the database refused it"; with ?immutable=1 it reads."""

    timeout = 60

    def read_once(self, url: str) -> dict[str, Any]:
        """One read in a process of its own that may not write the directory: root keeps its
        user (so it still reads the checkout and the interpreter wherever they are) but loses
        CAP_DAC_OVERRIDE, which is what lets root write any directory."""
        import subprocess
        import sys

        drop = ["setpriv", "--bounding-set=-dac_override"] if os.geteuid() == 0 else []
        done = subprocess.run(
            [*drop, sys.executable, "-c", _READ_ONCE, url], capture_output=True, text=True, timeout=30, check=False
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        return dict(json.loads(done.stdout))

    def test_wal_file(self) -> None:
        import shutil
        import tempfile

        top = Path(tempfile.mkdtemp(prefix="mcpd-ro-"))
        self.addCleanup(shutil.rmtree, top)
        top.chmod(0o755)
        directory = top / "ro"
        directory.mkdir()
        path = directory / "shop.sqlite3"
        sqlite_source(path)
        app = sqlite3.connect(path)
        app.execute("PRAGMA journal_mode = WAL")
        app.execute("INSERT INTO customers VALUES (3, 'Eve', 'eve@example.com')")
        app.commit()
        directory.chmod(0o555)
        self.addCleanup(directory.chmod, 0o755)
        url = f"sqlite:///{path}"
        self.assertEqual(self.read_once(url), {"rows": [[ORDERS]]})  # the app has it open
        app.close()
        self.assertEqual(sorted(p.name for p in directory.iterdir()), ["shop.sqlite3"])
        said = self.read_once(url)
        self.assertEqual(said["error"], "StoreUnavailable", said)
        self.assertIn("WAL mode", said["message"])
        self.assertIn("?immutable=1", said["message"])
        self.assertNotIn("refused", said["message"])
        self.assertEqual(self.read_once(url + "?immutable=1"), {"rows": [[ORDERS]]})


# -- a row's size and a function call's time are bounded before they happen ----------------------


class BoundsTests(_Guarded, TestCase):
    """Past the pre-check, straight to a source: a row of ~50 MB is refused before it is built
    (peak memory stays a few MB), and no SQLite function call outlasts the time limit."""

    timeout = 60

    def sqlite(self, timeout: float) -> SQLSource:
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "shop.sqlite3"
        sqlite_source(path)
        connection = sqlite3.connect(path)
        connection.execute(f"CREATE TABLE wide ({', '.join(f'c{n} INTEGER' for n in range(150))})")
        connection.execute(f"INSERT INTO wide VALUES ({', '.join(['1'] * 150)})")
        # A schema entry past a caller's value limit: the schema is still read.
        connection.execute(f"CREATE TABLE heavy (a TEXT DEFAULT '{'x' * 300_000}', c INTEGER)")
        connection.execute("INSERT INTO heavy (c) VALUES (7)")
        connection.commit()
        connection.close()
        return self.started(SQLSource(source_config("shop", f"sqlite:///{path}"), timeout, 1, None))

    def peak(self, source: SQLSource, sql: str) -> tuple[str, int]:
        """The refusal of ``sql`` and the most memory Python held meanwhile."""
        import tracemalloc

        tracemalloc.start()
        try:
            said = self.assert_refused(source, sql)
            return said, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def test_sqlite_row_size(self) -> None:
        source = self.sqlite(10.0)
        said, peak = self.peak(source, "SELECT " + ", ".join(["zeroblob(250000)"] * 200))  # 50 MB
        self.assertIn("more columns than a statement may return", said)
        self.assertLess(peak, 5_000_000)
        said, peak = self.peak(source, f"SELECT zeroblob({SQLITE_VALUE_LENGTH + 1}), 1")
        self.assertIn("one value is past", said)
        self.assertLess(peak, 5_000_000)
        # As many columns as the widest table: it is read whole.
        self.assertEqual(len(self.run_guarded(source, "SELECT * FROM wide")["rows"][0]), 150)
        self.assertEqual(len(self.run_guarded(source, "SELECT " + ", ".join(["1"] * 150))["rows"][0]), 150)
        self.assertGreater(150, SQLITE_RESULT_COLUMNS)
        for _ in range(2):  # the widest is known after the first: the schema is read all the same
            self.assertEqual(self.run_guarded(source, "SELECT c FROM heavy")["rows"], [[7]])

    def test_sqlite_function_time(self) -> None:
        source = self.sqlite(TIME_LIMIT)
        # One instr() call, 19 s with a 4 MB value limit: its values are too long to build
        # (printf() answers NULL past the limit), so it is over at once.
        started = time.monotonic()
        found = self.run_guarded(
            source, "SELECT instr(printf('%.*c', 1600000, 'a'), printf('%.*c', 800000, 'a') || 'b')"
        )
        self.assertEqual(found["rows"], [[None]])
        self.assertLess(time.monotonic() - started, TIME_LIMIT)
        # The longest allowed, call after call (the needle depends on the row: SQLite computes a
        # constant once): each is short, and the time limit stops the rows.
        haystack = f"printf('%.*c', {SQLITE_VALUE_LENGTH - 1}, 'a')"
        needle = f"printf('%.*c', {SQLITE_VALUE_LENGTH // 2} + id, 'a')"
        for call in (f"instr({haystack}, {needle} || 'b')", f"length(replace({haystack}, {needle} || 'b', 'x'))"):
            started = time.monotonic()
            said = self.assert_refused(source, f"SELECT {call} FROM orders")
            self.assertIn("time limit", said)
            self.assertLess(time.monotonic() - started, TIME_LIMIT + 1.0)
        started = time.monotonic()
        said = self.assert_refused(source, f"SELECT {haystack} LIKE '%' || printf('%.*c', 49000, 'a') || 'b'")
        self.assertIn("LIKE or GLOB pattern", said)
        self.assertLess(time.monotonic() - started, TIME_LIMIT)

    def test_mariadb_row_size(self) -> None:
        server, database = mariadb_source()
        user, url = mariadb_reader(server, database)
        self.addCleanup(server.sql, f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
        source = self.started(SQLSource(source_config("shop", url, PASSWORD), 10.0, 1, None))
        started = time.monotonic()
        said, peak = self.peak(source, "SELECT " + ", ".join(f"REPEAT('{c}', 16000000)" for c in "xyz"))  # 48 MB
        self.assertIn("one row is past", said)
        self.assertLess(peak, MYSQL_MAX_PACKET + 2_000_000)
        self.assertLess(time.monotonic() - started, 5.0)
        self.assertEqual(without_statements(server, user), [])
        # The connection it was read on was dropped, not pooled half read: the next call is served.
        self.assertEqual(self.run_guarded(source, "SELECT COUNT(*) FROM orders")["rows"], [[ORDERS]])
