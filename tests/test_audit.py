"""Tests for the audit trail: `mcpd.observe.audit` (records, the bounded buffer, the engine
observer, the writer that persists them) and `mcpd.stores.sql.audit` against a real SQLite file
and a real MariaDB server (search, pages, tenants, retention, an outage held in memory)."""

from __future__ import annotations

import datetime
import io
import json
import threading
import time
import weakref
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import anyio
from mcp import Client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
from mcp.shared.exceptions import MCPError
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, formatTime, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mcpd.interfaces import IAuditLog, StoreUnavailable
from mcpd.observe.audit import AuditTrail, AuditWriter, call_entry, call_text, entry, fields
from mcpd.observe.logging import file_observer
from mcpd.protocol.codec import dumps
from mcpd.protocol.vocabulary import CallRecord
from mcpd.stores.sql.audit import _GROUP, SQLAuditLog
from mcpd.stores.sql.config import DatabaseConfig, database_url
from mcpd.stores.sql.database import SQLDatabase
from mcpd.stores.sql.service import SQLStoreService
from mcpd.tools.api import Caller
from mcpd.tools.paging import encode_cursor
from tests.daemon import MODERN, DaemonTestCase, audit_records, run_anyio
from tests.services import PASSWORD, MariaDB, shared_mariadb


def _call(method: str, outcome: str, tool: str | None = None) -> CallRecord:
    caller = Caller(name="alice", scopes=frozenset({"read"}), peer="10.0.0.5", transport="http")
    return CallRecord(
        request_id=7, method=method, tool=tool, caller=caller, version="2026-07-28", outcome=outcome, duration=0.25
    )


def _refuse(name: str) -> object:
    raise AssertionError(f"{name} is not JSON")


class AuditTrailTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.logged: list[dict] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def test_tool_calls_and_denials_audited(self) -> None:
        trail = AuditTrail(clock=lambda: 1000.0)
        trail.observe(_call("tools/call", "ok", "notes.get"))
        trail.observe(_call("tools/list", "ok"))  # not audited
        trail.observe(_call("tools/call", "denied", "notes.drop"))
        self.assertEqual([r["outcome"] for r in trail], ["ok", "denied"])
        self.assertEqual(
            list(trail)[0],
            {
                "time": 1000.0,
                "tenant": "default",
                "key": "alice",
                "peer": "10.0.0.5",
                "transport": "http",
                "method": "tools/call",
                "tool": "notes.get",
                "outcome": "ok",
                "duration": 0.25,
                "request_id": 7,
                "x_request_id": None,
            },
        )

    def test_a_tool_calls_record_keeps_neither_the_call_nor_its_caller(self) -> None:
        """A tool call's record, in the trail and on its way to the writer, holds plain values:
        the call and its caller die with the request. Kept until written, they filled the
        collector's young generation (issue 15's p99)."""
        queued: list[Any] = []
        trail = AuditTrail(clock=lambda: 1000.0, emit=False, persist=queued.append)
        call = _call("tools/call", "ok", "notes.get")
        shown = call_entry(1000.0, call)
        gone = weakref.ref(call.caller)
        trail.observe(call)
        del call
        self.assertIsNone(gone())
        self.assertEqual(list(trail), [shown])
        self.assertEqual(
            [fields(record) for record in queued],
            [("default", 1000.0, "alice", "10.0.0.5", "http", "tools/call", "notes.get", "ok", 0.25, 7, None, None)],
        )

    def test_json_lines_in_the_log(self) -> None:
        trail = AuditTrail()
        trail.record(outcome="auth_failure", key=None, peer="::1", transport="http", detail="no key")
        audits = [event for event in self.logged if event.get("log_namespace") == "mcpd.audit"]
        self.assertEqual(len(audits), 1)
        self.assertEqual(audits[0]["log_level"], LogLevel.info)
        self.assertEqual(json.loads(str(audits[0]["audit"]))["outcome"], "auth_failure")

    def test_tool_call_lines_in_both_log_formats(self) -> None:
        """A tool call's record, written directly as JSON (`call_text`), reads as the record in
        a text log; in a JSON log its fields are spread into the line."""
        trail = AuditTrail(clock=lambda: 1796012731.2065361)
        trail.observe(_call("tools/call", "ok", "notes.get"))
        (event,) = [event for event in self.logged if event.get("log_namespace") == "mcpd.audit"]
        record = list(trail)[0]
        text, lines = io.StringIO(), io.StringIO()
        file_observer(text, "text")(event)
        file_observer(lines, "json")(event)
        self.assertEqual(json.loads(text.getvalue().split(" audit ", 1)[1]), record)
        line = json.loads(lines.getvalue())
        # Spread into the line, but for its time: the line's own, ISO, as on every JSON line;
        # the record's is "audit_time".
        self.assertEqual(
            {name: line[name] for name in record if name != "time"},
            {name: value for name, value in record.items() if name != "time"},
        )
        self.assertTrue(line["time"].endswith("+00:00"))
        self.assertEqual(line["audit_time"], record["time"])

    def test_tool_call_lines_byte_for_byte(self) -> None:
        """A keyed tool call's audit line and a key-less refusal's, exactly as both log formats
        write them (what log shippers parse: a faster path must not change a byte)."""
        keyed = Caller(
            name="key-86be9a55",
            scopes=frozenset({"tools"}),
            peer="127.0.0.1",
            transport="http",
            x_request_id="b431b5-1",
            tenant="acme",
        )
        keyless = Caller(peer="::1", transport="http")
        cases = [
            (1796046192.850275, CallRecord(7, "tools/call", "echo", keyed, "2026-07-28", "ok", 0.0001234), 0.8503),
            (1796046193.0000005, CallRecord("r-1", "tools/call", None, keyless, "2026-07-28", "denied", 1e-05), 0.25),
        ]
        texts = [
            '"time":1796046192.850275,"tenant":"acme","key":"key-86be9a55","peer":"127.0.0.1","transport":"http",'
            '"method":"tools/call","tool":"echo","outcome":"ok","duration":0.000123,"request_id":7,'
            '"x_request_id":"b431b5-1"',
            '"time":1796046193.0,"tenant":"default","key":null,"peer":"::1","transport":"http",'
            '"method":"tools/call","tool":null,"outcome":"denied","duration":0.00001,"request_id":"r-1",'
            '"x_request_id":null',
        ]
        spread = [
            '"tenant":"acme","key":"key-86be9a55","peer":"127.0.0.1","transport":"http","method":"tools/call",'
            '"tool":"echo","outcome":"ok","duration":0.000123,"request_id":7,"x_request_id":"b431b5-1"',
            '"tenant":"default","key":null,"peer":"::1","transport":"http","method":"tools/call","tool":null,'
            '"outcome":"denied","duration":1e-05,"request_id":"r-1","x_request_id":null',
        ]
        for (when, call, fraction), text, spread_fields in zip(cases, texts, spread, strict=True):
            del self.logged[:]
            AuditTrail(clock=lambda when=when: when).observe(call)
            (event,) = [event for event in self.logged if event.get("log_namespace") == "mcpd.audit"]
            event["log_time"] = int(when) + fraction
            lines = {}
            for log_format in ("text", "json"):
                stream = io.StringIO()
                file_observer(stream, log_format)(dict(event))
                lines[log_format] = stream.getvalue()
            stamp = formatTime(event["log_time"])
            self.assertEqual(lines["text"], f"{stamp} [mcpd.audit#info] audit {{{text}}}\n")
            escaped = text.replace('"', '\\"')
            # The line's own time (ISO, of the event), as on every other JSON line; the record's
            # float "time" is spread as "audit_time".
            iso = datetime.datetime.fromtimestamp(event["log_time"], datetime.UTC).isoformat(timespec="milliseconds")
            when_json = f'"time":"{iso}"'
            spread_fields = f'"audit_{text.split(",", 1)[0][1:]},{spread_fields}'
            self.assertEqual(
                lines["json"],
                f'{{{when_json},"level":"info","namespace":"mcpd.audit","message":"audit {{{escaped}}}",{spread_fields}}}\n',
            )

    def test_call_text_is_the_records_json(self) -> None:
        """Whatever a record holds (no key, a key with scopes, any request id, non-ASCII text,
        lone surrogates, quotes, newlines, numbers of any size, NaN and infinity), `call_text`
        reads back as `dumps` writes `call_entry`'s record: the same JSON values, valid JSON."""
        checked = 0
        callers = [
            Caller(peer="::1", transport="http"),
            Caller(name="anonymous", scopes=frozenset({"read"}), peer="10.0.0.5", transport="http", tenant="t\u00fc"),
            Caller(name="k\u00e9y", scopes=frozenset({"admin"}), peer="127.0.0.1", transport="ws", x_request_id="ab-1"),
            Caller(name='q"\\\n', scopes=frozenset({"admin"}), peer="h\udcff", transport="stdio", x_request_id="x"),
        ]
        numbers = [(1796012731.2065361, 0.000123), (1e-7, 1e-5), (5, 0), (-1e-9, 2.5e-6), (0.0, 1234567.8912345)]
        numbers += [(float("inf"), 1.0), (1.0, float("nan")), (1e300, -1e300)]
        for caller in callers:
            for request_id in [1, -3, 'a"b', None, 1.5, True, {"x": [1]}, "\ud800", 10**30]:
                for tool in [None, "echo", "e\ud800x", "\u00fcber"]:
                    for when, duration in numbers:
                        call = CallRecord(request_id, "tools/call", tool, caller, "2026-07-28", "ok", duration)
                        text = call_text(when, call)
                        expected = dumps(call_entry(when, call))

                        self.assertEqual(json.loads(text.encode("utf-8"), parse_constant=_refuse), json.loads(expected))
                        self.assertEqual(list(json.loads(text)), list(json.loads(expected)))
                        checked += 1
        self.assertEqual(checked, 4 * 9 * 4 * 8)

    def test_bounded(self) -> None:
        trail = AuditTrail(size=3, emit=False)
        for n in range(5):
            trail.record(outcome="ok", key="k", peer="p", transport="http", request_id=n)
        self.assertEqual([r["request_id"] for r in trail], [2, 3, 4])


# -- persisted: the SQL store and the writer ------------------------------------------------------

A, B = "acme", "globex"
T0 = datetime.datetime(2026, 11, 29, 12, 0, 0, tzinfo=datetime.UTC).timestamp()


def record(
    n: int,
    *,
    tenant: str = A,
    key: str | None = "alice",
    tool: str | None = "task.list",
    outcome: str = "ok",
    when: float | None = None,
    **more: Any,
) -> dict[str, Any]:
    """The nth audit record, n seconds after T0 (or at ``when``)."""
    made = entry(
        T0 + n if when is None else when,
        key=key,
        peer="10.0.0.5",
        transport="http",
        method="tools/call",
        tool=tool,
        outcome=outcome,
        duration=0.0015,
        request_id=n,
        x_request_id=None,
        tenant=tenant,
    )
    return {**made, **more}


def at(n: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(T0 + n, datetime.UTC).replace(tzinfo=None)


def give_way_once(database: SQLDatabase, order: list[str]) -> Callable[[], None]:
    """A `SQLAuditLog.pause` that, after the first group, has the reactor queue a write for the
    SQLite writer thread (a tool's), and waits until it waits; ``order`` gets "group" at each
    pause and "write" when that write runs."""
    queued = threading.Event()

    def queue_write() -> None:
        database.run("test.write", lambda _connection: order.append("write"), write=True)

    def pause() -> None:
        order.append("group")
        if not queued.is_set():
            queued.set()
            reactor.callFromThread(queue_write)
            deadline = time.monotonic() + 10
            while not database.writes_waiting() and time.monotonic() < deadline:
                time.sleep(0.001)

    return pause


class _AuditStoreSuite:
    """What `SQLAuditLog` does on every backend; subclasses give `config()`."""

    addCleanup: Any
    pauses: int  # the pauses a batch of 2 * _GROUP + 7 rows makes
    assertEqual: Any
    assertIsNone: Any
    assertTrue: Any

    def config(self) -> DatabaseConfig:
        raise NotImplementedError

    def setUp(self) -> None:
        self.database = SQLDatabase(self.config(), reactor)
        service = SQLStoreService(self.database, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.log = SQLAuditLog(self.database)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IAuditLog, self.log))

    @inlineCallbacks
    def test_search_pages_and_filters(self) -> Any:
        records = [record(n, tool="task.list" if n % 2 else "note.get") for n in range(10)]
        records.append(record(10, key=None, outcome="auth_failure", tool=None))
        records.append(record(11, tenant=B, key="eve"))
        self.assertEqual((yield self.log.append(map(fields, records))), 12)
        page, after = yield self.log.search(A, {}, 4, None)
        self.assertEqual([r["request_id"] for r in page], [10, 9, 8, 7])  # newest first
        self.assertEqual(
            page[1],
            {
                "time": "2026-11-29T12:00:09.000000Z",
                "key": "alice",
                "peer": "10.0.0.5",
                "transport": "http",
                "method": "tools/call",
                "tool": "task.list",
                "outcome": "ok",
                "duration_ms": 1.5,
                "request_id": 9,
                "x_request_id": None,
                "detail": None,
            },
        )
        seen = [r["request_id"] for r in page]
        while after is not None:
            page, after = yield self.log.search(A, {}, 4, after)
            seen += [r["request_id"] for r in page]
        self.assertEqual(seen, list(range(10, -1, -1)))  # every record once, never another tenant's
        page, _ = yield self.log.search(A, {"tool": "note.get", "since": at(2), "until": at(8)}, 10, None)
        self.assertEqual([r["request_id"] for r in page], [6, 4, 2])
        page, _ = yield self.log.search(A, {"outcome": "auth_failure"}, 10, None)
        self.assertEqual([(r["request_id"], r["key"]) for r in page], [(10, None)])
        page, _ = yield self.log.search(A, {"key": "eve"}, 10, None)
        self.assertEqual(page, [])
        page, _ = yield self.log.search(B, {}, 10, None)
        self.assertEqual([r["key"] for r in page], ["eve"])

    @inlineCallbacks
    def test_records_of_one_instant_page_apart(self) -> Any:
        yield self.log.append([fields(record(1, key=f"k{i}")) for i in range(5)])
        seen: list[str] = []
        page, after = yield self.log.search(A, {}, 2, None)
        seen += [r["key"] for r in page]
        while after is not None:
            page, after = yield self.log.search(A, {}, 2, after)
            seen += [r["key"] for r in page]
        self.assertEqual(seen, ["k4", "k3", "k2", "k1", "k0"])

    @inlineCallbacks
    def test_a_large_batch_is_written_whole_and_exact(self) -> Any:
        """A batch of more rows than one grouped INSERT holds (`_GROUP`), from an iterator,
        with a shorter last group: every record is stored once, with its own values."""
        count = 2 * _GROUP + 7
        records = [
            record(n, tool=f"tool{n}", key=f"key{n % 3}", outcome="ok" if n % 5 else "error") for n in range(count)
        ]
        self.assertEqual((yield self.log.append(map(fields, records))), count)
        page, after = yield self.log.search(A, {}, 500, None)
        self.assertIsNone(after)
        shown = [(r["request_id"], r["tool"], r["key"], r["outcome"], r["time"]) for r in reversed(page)]
        expected = [
            (n, f"tool{n}", f"key{n % 3}", "ok" if n % 5 else "error", at(n).isoformat(timespec="microseconds") + "Z")
            for n in range(count)
        ]
        self.assertEqual(shown, expected)

    @inlineCallbacks
    def test_the_store_thread_yields_the_core_after_each_group(self) -> Any:
        """After each group of rows written, the store's thread offers the core to the reactor
        (`SQLAuditLog.pause`): a batch written in one go held it for 4-8 ms at a time."""
        pauses: list[bool] = []
        self.log.pause = lambda: pauses.append(threading.current_thread() is threading.main_thread())
        count = 2 * _GROUP + 7
        self.assertEqual((yield self.log.append(map(fields, [record(n) for n in range(count)]))), count)
        self.assertEqual(pauses, [False] * self.pauses)  # in the store's thread, never the reactor's

    @inlineCallbacks
    def test_long_values_are_cut_not_refused(self) -> Any:
        long = record(1, tool="t" * 500, x_request_id="x" * 500, request_id="r" * 500, detail="d" * 5000)
        yield self.log.append([fields(long)])
        (shown,), _ = yield self.log.search(A, {}, 10, None)
        self.assertEqual((len(shown["tool"]), len(shown["x_request_id"])), (128, 64))
        self.assertEqual(len(shown["request_id"]), 64)
        self.assertEqual(len(shown["detail"]), 5000)

    @inlineCallbacks
    def test_any_request_id_is_stored_and_shown_as_a_string_or_an_integer(self) -> Any:
        ids = [2**300, [1, 2], 1.5, True, {"a": 1}, -7, "7", "x" * 500]
        yield self.log.append([fields(record(n, request_id=rid)) for n, rid in enumerate(ids)])
        page, _ = yield self.log.search(A, {}, 10, None)
        shown = [r["request_id"] for r in reversed(page)]
        self.assertEqual(shown[1:7], ["[1, 2]", "1.5", "true", '{"a": 1}', -7, "7"])
        self.assertEqual((shown[0], shown[7]), (json.dumps(str(2**300))[:64], json.dumps("x" * 500)[:64]))
        self.assertTrue(all(isinstance(r, str) or type(r) is int for r in shown), shown)

    @inlineCallbacks
    def test_prune(self) -> Any:
        yield self.log.append([fields(record(n)) for n in range(7)])
        self.assertEqual((yield self.log.prune(at(5), 3)), 3)
        self.assertEqual((yield self.log.prune(at(5), 3)), 2)
        self.assertEqual((yield self.log.prune(at(5), 3)), 0)
        page, _ = yield self.log.search(A, {}, 10, None)
        self.assertEqual([r["request_id"] for r in page], [6, 5])


class SQLiteAuditStoreTests(_AuditStoreSuite, TestCase):
    pauses = 2  # after each full group (the shorter last one is inserted after the loop)

    def config(self) -> DatabaseConfig:
        return DatabaseConfig(url=database_url(None, self.mktemp()))

    @inlineCallbacks
    def test_a_batch_gives_way_to_a_waiting_write(self) -> Any:
        """SQLite has one writer thread: after a group, a write waiting for it (a tool's) goes
        first. The batch stops there, having stored its first group, and says so."""
        order: list[str] = []
        self.log.pause = give_way_once(self.database, order)
        stored = yield self.log.append(map(fields, [record(n) for n in range(5 * _GROUP)]))
        self.assertEqual(stored, _GROUP)
        page, _ = yield self.log.search(A, {}, 500, None)
        self.assertEqual([r["request_id"] for r in page], list(reversed(range(_GROUP))))
        yield self.database.run("after", lambda _connection: None, write=True)
        self.assertEqual(order, ["group", "write"])


class MariaDBAuditStoreTests(_AuditStoreSuite, TestCase):
    pauses = 3  # after every group, the shorter last one too

    def config(self) -> DatabaseConfig:
        server = shared_mariadb()
        return DatabaseConfig(url=database_url(server.url(server.new_database()), "unused", PASSWORD))

    @inlineCallbacks
    def test_a_batch_retried_after_a_deadlock_is_written(self) -> Any:
        """A batch whose transaction MariaDB fails as a deadlock (1213) in its second group is
        retried with its rows: the records came as an iterator, which the first attempt had
        partly used up, and the retry must write the rows already made and then make the rest
        (before, a retry wrote none and said 0, so the writer lost the batch uncounted)."""

        def fail_once(connection: Any) -> None:
            # The counter is MyISAM: the failed insert's rollback does not undo its decrement.
            connection.exec_driver_sql("CREATE TABLE deadlocks (n INT) ENGINE=MyISAM")
            connection.exec_driver_sql("INSERT INTO deadlocks VALUES (1)")
            connection.exec_driver_sql(
                "CREATE TRIGGER audit_deadlock BEFORE INSERT ON audit_records FOR EACH ROW BEGIN "
                f"IF NEW.request_id = '{_GROUP + 3}' AND (SELECT n FROM deadlocks) > 0 THEN "
                "UPDATE deadlocks SET n = n - 1; "
                "SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'Deadlock found'; END IF; END"
            )

        yield self.database.run("setup", fail_once, write=True)
        count = 2 * _GROUP + 7
        written = yield self.log.append(map(fields, [record(n) for n in range(count)]))
        self.assertEqual(written, count)
        page, _ = yield self.log.search(A, {}, 500, None)
        self.assertEqual([r["request_id"] for r in page], list(reversed(range(count))))
        left = yield self.database.run("left", lambda c: c.exec_driver_sql("SELECT n FROM deadlocks").scalar())
        self.assertEqual(left, 0)  # the deadlock did happen


class AuditWriterTests(TestCase):
    """The writer against a real SQLite store, its loops on a Clock."""

    def setUp(self) -> None:
        self.database = SQLDatabase(DatabaseConfig(url=database_url(None, self.mktemp())), reactor)
        service = SQLStoreService(self.database, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.log = SQLAuditLog(self.database)
        self.clock = Clock()

    def writer(self, **options: Any) -> AuditWriter:
        writer = AuditWriter(self.log, self.clock, **options)
        writer.startService()
        self.addCleanup(lambda: writer.running and writer.stopService())
        return writer

    @inlineCallbacks
    def test_calls_reach_the_database_in_batches(self) -> Any:
        writer = self.writer(retention_days=0, batch=3)
        trail = AuditTrail(clock=lambda: T0, emit=False, persist=writer.add)
        for n in range(7):
            trail.observe(_call("tools/call", "ok", f"t{n}"))
        trail.record(outcome="auth_failure", key=None, peer="::1", transport="http", detail="no key", tenant=B)
        self.assertEqual(len(writer.queue), 8)
        yield writer.flush()
        self.assertEqual((len(writer.queue), writer.written), (0, 8))
        page, _ = yield self.log.search("default", {}, 10, None)
        self.assertEqual(sorted(r["tool"] for r in page), [f"t{n}" for n in range(7)])
        self.assertEqual(page[0]["key"], "alice")
        page, _ = yield self.log.search(B, {}, 10, None)
        self.assertEqual([(r["outcome"], r["detail"]) for r in page], [("auth_failure", "no key")])

    @inlineCallbacks
    def test_a_flush_gives_way_to_a_tools_write_then_writes_the_rest(self) -> Any:
        """A batch the store stopped early for a tool's write: the rest is written next, in the
        same flush and in order, after that write; nothing lost or written twice."""
        order: list[str] = []
        self.log.pause = give_way_once(self.database, order)
        writer = self.writer(retention_days=0)
        for n in range(5 * _GROUP):
            writer.add(record(n))
        yield writer.flush()
        self.assertEqual((len(writer.queue), writer.written, writer.dropped), (0, 5 * _GROUP, 0))
        self.assertEqual(order, ["group", "write", "group", "group", "group", "group"])
        page, _ = yield self.log.search(A, {}, 500, None)
        self.assertEqual([r["request_id"] for r in page], list(reversed(range(5 * _GROUP))))

    @inlineCallbacks
    def test_shutdown_flushes(self) -> Any:
        writer = self.writer(retention_days=0)
        writer.add(record(1))
        yield writer.stopService()
        page, _ = yield self.log.search(A, {}, 10, None)
        self.assertEqual(len(page), 1)

    @inlineCallbacks
    def test_a_flush_leaves_what_comes_meanwhile_to_the_next(self) -> Any:
        """A flush writes what was queued when it began; records queued while it writes wait
        for the next one (chasing them made a busy daemon commit a train of small batches)."""
        writer = self.writer(retention_days=0, batch=2)
        for n in range(3):
            writer.add(record(n))
        flushing = writer.flush()
        for n in range(3, 5):
            writer.add(record(n))
        yield flushing
        self.assertEqual((writer.written, [item["request_id"] for item in writer.queue]), (3, [3, 4]))
        yield writer.flush()
        self.assertEqual((writer.written, len(writer.queue)), (5, 0))

    @inlineCallbacks
    def test_shutdown_drains_after_a_running_flush(self) -> Any:
        """Shutdown during a flush waits for it, then writes everything, what came meanwhile too."""
        writer = self.writer(retention_days=0, batch=2)
        for n in range(3):
            writer.add(record(n))
        writer.flush()
        for n in range(3, 7):
            writer.add(record(n))
        yield writer.stopService()
        self.assertEqual((writer.written, len(writer.queue)), (7, 0))
        page, _ = yield self.log.search(A, {}, 10, None)
        self.assertEqual([r["request_id"] for r in page], [6, 5, 4, 3, 2, 1, 0])

    @inlineCallbacks
    def test_prunes_past_the_retention(self) -> Any:
        now = time.time()
        old = [record(n, when=now - 40 * 86400 + n) for n in range(5)]
        recent = [record(n, when=now - 86400 + n) for n in range(2)]
        yield self.log.append(map(fields, old + recent))
        writer = self.writer(retention_days=30, prune_batch=2)
        yield writer.prune()
        self.assertEqual(writer.pruned, 5)
        page, _ = yield self.log.search(A, {}, 10, None)
        self.assertEqual(len(page), 2)

    @inlineCallbacks
    def test_a_refused_record_costs_only_itself(self) -> Any:
        """A record the database refuses (here: no tenant, a NOT NULL column) is dropped,
        counted and logged alone; the rest of its batch is written."""
        writer = self.writer(retention_days=0, batch=10)
        logged: list[dict] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        for n in range(5):
            writer.add(record(n, tenant=None if n == 2 else A))  # type: ignore[arg-type]
        yield writer.flush()
        self.assertEqual((writer.written, writer.dropped), (4, 1))
        page, _ = yield self.log.search(A, {}, 10, None)
        self.assertEqual([r["request_id"] for r in page], [4, 3, 1, 0])
        self.assertEqual(sum("could not be written and is lost" in str(e.get("log_format")) for e in logged), 1)
        self.flushLoggedErrors()

    def test_bounded_backlog_counts_what_it_drops(self) -> None:
        writer = AuditWriter(self.log, self.clock, retention_days=0, backlog=3)
        logged: list[dict] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        for n in range(5):
            writer.add(record(n))
        self.assertEqual([item["request_id"] for item in writer.queue], [2, 3, 4])
        self.assertEqual(writer.dropped, 2)
        self.assertEqual(sum("are being dropped" in str(e.get("log_format")) for e in logged), 1)
        samples = {m.name: m.samples[0].value for m in writer.collect()}
        self.assertEqual((samples["mcp_audit_queued"], samples["mcp_audit_dropped"]), (3, 2))


class AuditOutageTests(TestCase):
    """A real MariaDB server stopped under the writer: records wait in memory, then are written."""

    timeout = 120

    @inlineCallbacks
    def test_held_while_down_then_written(self) -> Any:
        server = MariaDB()
        self.addCleanup(server.destroy)
        yield deferToThread(server.start)
        database = SQLDatabase(
            DatabaseConfig(url=database_url(server.url(server.new_database()), "unused", PASSWORD), timeout=2.0),
            reactor,
        )
        service = SQLStoreService(database, reactor)
        yield deferToThread(database.open)
        for threads in service.threads:
            threads.startService()
        self.addCleanup(service.stopService)
        log = SQLAuditLog(database)
        writer = AuditWriter(log, Clock(), retention_days=0, batch=2)
        writer.add(record(0))
        yield writer.flush()
        yield deferToThread(server.stop)
        for n in range(1, 6):
            writer.add(record(n))
        yield writer.flush()
        self.assertEqual((len(writer.queue), writer.held, writer.dropped), (5, True, 0))
        yield self.failUnlessFailure(log.search(A, {}, 10, None), StoreUnavailable)
        yield deferToThread(server.start)
        for _attempt in range(50):
            yield writer.flush()
            if not writer.queue:
                break
            yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual((len(writer.queue), writer.held, writer.written), (0, False, 6))
        page, _ = yield log.search(A, {}, 10, None)
        self.assertEqual([r["request_id"] for r in page], [5, 4, 3, 2, 1, 0])


# -- server.audit through the SDK client ----------------------------------------------------------

AUDIT_KEYS = {
    "alice": ("alice-key", "admin", A),
    "bob": ("bob-key", "read", A),
    "eve": ("eve-key", "admin", B),
}


class ServerAuditTests(DaemonTestCase):
    """Three keys of two tenants on one daemon (SQLite): each tenant's admin sees its tenant's
    calls in server.audit, and only those; a key without admin scope cannot call it."""

    def test_admins_see_their_tenants_trail(self) -> Deferred[None]:
        key_file = self.workdir / "keys"
        key_file.write_text(
            "".join(f"{name}:{key}:{scopes}:{tenant}\n" for name, (key, scopes, tenant) in AUDIT_KEYS.items())
        )
        daemon = self.start_daemon("--api-key-file", str(key_file), fixture_pack=False)

        def client(name: str) -> Any:
            http = create_mcp_http_client(headers={"Authorization": f"Bearer {AUDIT_KEYS[name][0]}"})
            return Client(streamable_http_client(daemon.url, http_client=http), mode=MODERN)

        async def trail(who: Client, expected: int, **arguments: Any) -> dict[str, Any]:
            """server.audit once ``expected`` records are there (the writer flushes every second)."""
            with anyio.fail_after(10):
                while True:
                    result = await who.call_tool("server.audit", arguments)
                    assert not result.is_error, result
                    found = dict(result.structured_content or {})
                    # Not the calls of this poll itself.
                    found["records"] = [
                        r for r in found["records"] if r["outcome"] != "ok" or r["tool"] != "server.audit"
                    ]
                    if len(found["records"]) >= expected:
                        return found
                    await anyio.sleep(0.2)

        async def main() -> None:
            with anyio.fail_after(40):
                async with client("alice") as alice, client("bob") as bob, client("eve") as eve:
                    assert not (await alice.call_tool("project.create", {"name": "p"})).is_error
                    for _ in range(3):
                        assert not (await bob.call_tool("task.list", {})).is_error
                    assert (await alice.call_tool("task.get", {"id": "nope"})).is_error
                    assert not (await eve.call_tool("note.search", {"query": "x"})).is_error
                    try:
                        refused = await bob.call_tool("server.audit", {})
                    except MCPError:
                        pass  # a tool its scopes hide is unknown to it
                    else:
                        assert refused.is_error, refused

                    # Alice sees Acme's calls (hers and Bob's, his refusal too), newest first.
                    seen = (await trail(alice, 6, limit=100))["records"]
                    keys_and_tools = [(r["key"], r["tool"], r["outcome"]) for r in seen]
                    self.assertEqual(
                        keys_and_tools[:6],
                        [
                            ("bob", "server.audit", "denied"),
                            ("alice", "task.get", "tool_error"),
                            ("bob", "task.list", "ok"),
                            ("bob", "task.list", "ok"),
                            ("bob", "task.list", "ok"),
                            ("alice", "project.create", "ok"),
                        ],
                    )
                    self.assertNotIn("eve", {r["key"] for r in seen})
                    self.assertTrue(all(r["time"].endswith("Z") and r["transport"] for r in seen))
                    # Filters, and pages with a cursor.
                    bobs = await trail(alice, 2, key="bob", tool="task.list", limit=2)
                    self.assertEqual([r["key"] for r in bobs["records"]], ["bob", "bob"])
                    rest = await trail(alice, 1, key="bob", tool="task.list", limit=2, cursor=bobs["next_cursor"])
                    self.assertEqual((len(rest["records"]), rest["next_cursor"]), (1, None))
                    failed = await trail(alice, 1, outcome="tool_error")
                    self.assertEqual([r["tool"] for r in failed["records"]], ["task.get"])
                    future = await alice.call_tool("server.audit", {"since": "2999-01-01"})
                    self.assertEqual(future.structured_content["records"], [])
                    bad = await alice.call_tool("server.audit", {"since": "yesterday at noon"})
                    self.assertTrue(bad.is_error)
                    self.assertIn("ISO 8601", bad.content[0].text)

                    # Eve, Globex's admin, sees Globex's calls only, and not through Alice's cursor.
                    theirs = (await trail(eve, 1))["records"]
                    self.assertEqual({r["key"] for r in theirs}, {"eve"})
                    stolen = await eve.call_tool(
                        "server.audit", {"key": "bob", "tool": "task.list", "limit": 2, "cursor": bobs["next_cursor"]}
                    )
                    self.assertTrue(stolen.is_error)
                    self.assertIn("another listing", stolen.content[0].text)
                    await self.bad_cursors(alice, bobs["next_cursor"])

        def logged(_: object) -> None:
            # The trail keeps every call, so by default the log has only what went wrong.
            calls = [r for r in audit_records(daemon.log("stdout")) if r.get("method") == "tools/call"]
            self.assertNotIn("ok", {r["outcome"] for r in calls})
            self.assertIn(("task.get", "tool_error"), {(r["tool"], r["outcome"]) for r in calls})

        return self.in_thread(lambda: run_anyio(main)).addCallback(logged)

    async def bad_cursors(self, admin: Client, good: str) -> None:
        """Forged (the digest right, the position not the store's), truncated, other-tool and
        other-tenant cursors: each refused with the invalid-cursor message, never "failed
        unexpectedly"."""
        filters = {"key": "bob", "tool": "task.list"}
        acme = SimpleNamespace(tenant=A)
        forged = [
            encode_cursor(acme, "server.audit", filters, position)
            for position in (
                ["yesterday", 1],
                ["2026-11-30T00:00:00", 2**70],
                ["2026-11-30T00:00:00", -1],
                ["2026-11-30T00:00:00", True],
                ["2026-11-30T00:00:00+05:00", 1],
                ["2026-11-30T00:00:00", 1, 2],
                "2026-11-30T00:00:00",
                7,
                {"at": "2026-11-30T00:00:00"},
            )
        ]
        for cursor in (*forged, good[:-4], good[:5], "!!", "e30"):
            answer = await admin.call_tool("server.audit", {**filters, "limit": 2, "cursor": cursor})
            self.assertTrue(answer.is_error, cursor)
            self.assertIn("cursor is not one this server gave out", answer.content[0].text, cursor)
        for cursor in (
            encode_cursor(SimpleNamespace(tenant=B), "server.audit", filters, ["2026-11-30T00:00:00", 1]),
            encode_cursor(acme, "task.list", filters, ["2026-11-30T00:00:00", 1]),
            encode_cursor(acme, "server.audit", {"key": "alice"}, ["2026-11-30T00:00:00", 1]),
        ):
            answer = await admin.call_tool("server.audit", {**filters, "cursor": cursor})
            self.assertTrue(answer.is_error, cursor)
            self.assertIn("cursor belongs to another listing", answer.content[0].text)
        # The good one still pages.
        answer = await admin.call_tool("server.audit", {**filters, "limit": 2, "cursor": good})
        self.assertFalse(answer.is_error, answer)


class StdioAuditTests(DaemonTestCase):
    """``mcpd --stdio`` persists its tool calls to the audit trail as HTTP does (the caller
    ``local``, transport stdio): server.audit shows them, and the next process on the same data
    directory too, the calls of the last second included (flushed at shutdown)."""

    def test_stdio_calls_are_audited_and_persisted(self) -> Deferred[None]:
        def session(name: str) -> Any:
            return stdio_client(self.stdio_parameters(name=name), errlog=self.errlog(name))

        async def trail(client: Client, expected: int) -> list[dict[str, Any]]:
            with anyio.fail_after(15):
                while True:
                    result = await client.call_tool("server.audit", {"limit": 100})
                    assert not result.is_error, result
                    records = [r for r in (result.structured_content or {})["records"] if r["tool"] != "server.audit"]
                    if len(records) >= expected:
                        return records
                    await anyio.sleep(0.2)

        async def main() -> None:
            with anyio.fail_after(60):
                async with Client(session("first"), mode=MODERN) as client:
                    assert not (await client.call_tool("project.create", {"name": "stdio"})).is_error
                    assert not (await client.call_tool("task.list", {})).is_error
                    assert (await client.call_tool("task.get", {"id": "nope"})).is_error
                    seen = await trail(client, 3)
                    self.assertEqual(
                        [(r["key"], r["transport"], r["tool"], r["outcome"]) for r in seen[:3]],
                        [
                            ("local", "stdio", "task.get", "tool_error"),
                            ("local", "stdio", "task.list", "ok"),
                            ("local", "stdio", "project.create", "ok"),
                        ],
                    )
                    # The last call before the client leaves: written at shutdown.
                    assert not (await client.call_tool("task.list", {"project": "stdio"})).is_error
                async with Client(session("second"), mode=MODERN) as client:
                    seen = await trail(client, 4)
                    self.assertEqual(
                        [(r["key"], r["tool"]) for r in seen[:4]],
                        [
                            ("local", "task.list"),
                            ("local", "task.get"),
                            ("local", "task.list"),
                            ("local", "project.create"),
                        ],
                    )

        return self.in_thread(lambda: run_anyio(main))
