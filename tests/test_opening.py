"""Tests for mcpd.stores.opening: a store opened in the background answers the calls made while it
opens, and one that cannot be opened says why. The store is the real SQL store (SQLite in a
temporary directory), opened in a real thread; `mcpd --stdio` is a real process."""

from __future__ import annotations

import contextlib
import datetime
import json
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any

from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import LoopingCall, deferLater
from twisted.trial.unittest import TestCase

from mcpd.config import Settings
from mcpd.daemon import SQL_INTERFACES, _open_sql_store
from mcpd.interfaces import IAuditLog, IStore, ITaskBoard, StoreUnavailable
from mcpd.stores import opening as opening_module
from mcpd.stores.opening import BackgroundOpening, Opened
from tests.daemon import MCPD, MODERN, PYTHON, DaemonTestMixin, StdioProcess


class FailingStoreService(Service):
    """A store's service whose start fails after its opening succeeded."""

    def startService(self) -> None:
        raise OSError("the store's service would not start")


class BackgroundOpeningTests(TestCase):
    def opening(self, open_stores: Any, stop: Any = None) -> tuple[BackgroundOpening, list[str]]:
        stopped: list[str] = []
        opening = BackgroundOpening(
            "database", SQL_INTERFACES, open_stores, reactor, stop=stop or (lambda: stopped.append("stop"))
        )
        opening.startService()
        self.addCleanup(opening.stopService)
        return opening, stopped

    @inlineCallbacks
    def test_calls_made_while_it_opens_wait_for_it(self) -> Any:
        release = threading.Event()
        settings = Settings(data_dir=self.mktemp())

        def open_stores() -> Opened:
            release.wait(10)
            return _open_sql_store(settings, reactor)

        opening, stopped = self.opening(open_stores)
        board = opening.stand_ins[ITaskBoard]
        store = opening.stand_ins[IStore]
        self.assertEqual(store.describe(), {"name": "database", "state": "starting"})
        created: Deferred[Any] = board.create_project("default", "web", None, "alice")
        self.assertNoResult(created)
        release.set()
        project = yield created
        self.assertEqual(project["name"], "web")
        page, _next = yield board.list_projects("default", 10, None)
        self.assertEqual([p["name"] for p in page], ["web"])
        self.assertEqual(store.describe()["state"], "ok")
        self.assertEqual((yield store.check()).state, "up")
        self.assertEqual(stopped, [])

    def busy_opening(
        self, housekeeping: Any = None, dropped_at_exit: Any = None
    ) -> tuple[BackgroundOpening, list[int], list[int]]:
        """An opening of the real SQL store whose client sends something every 50 ms until the
        second list (its activity count) is emptied; the first list counts openings."""
        settings = Settings(data_dir=self.mktemp())
        opened: list[int] = []

        def open_stores() -> Opened:
            opened.append(threading.get_ident())
            return _open_sql_store(settings, reactor)

        interfaces = (*SQL_INTERFACES, IAuditLog)
        opening = BackgroundOpening(
            "database", interfaces, open_stores, reactor, housekeeping=housekeeping, dropped_at_exit=dropped_at_exit
        )
        activity = [0]
        opening.activity = lambda: activity[0] if activity else -1
        sending = LoopingCall(lambda: activity and activity.__setitem__(0, activity[0] + 1))
        sending.start(0.05)
        self.addCleanup(lambda: sending.running and sending.stop())
        opening.startService()
        self.addCleanup(opening.stopService)
        return opening, opened, activity

    @inlineCallbacks
    def until(self, condition: Any, what: str) -> Any:
        for _ in range(200):
            if condition():
                return
            yield deferLater(reactor, 0.05, lambda: None)
        self.fail(f"not within 10 s: {what}")

    @inlineCallbacks
    def test_it_opens_once_the_client_is_quiet(self) -> Any:
        # --stdio: the client's calls are answered before the store's opening takes the CPU.
        self.patch(opening_module, "QUIET", 0.15)
        self.patch(opening_module, "OPEN_LATEST", 60)
        opening, opened, activity = self.busy_opening()
        yield deferLater(reactor, 0.6, lambda: None)
        self.assertEqual(opened, [])
        activity.clear()  # the client goes quiet
        yield self.until(lambda: opened, "opened")
        project = yield opening.stand_ins[ITaskBoard].create_project("default", "web", None, "alice")
        self.assertEqual(project["name"], "web")
        self.assertEqual(len(opened), 1)

    @inlineCallbacks
    def test_it_opens_anyway_when_the_client_is_never_quiet(self) -> Any:
        # A store that cannot be opened still stops mcpd soon, and the audit records held
        # meanwhile stay few.
        self.patch(opening_module, "QUIET", 0.15)
        self.patch(opening_module, "OPEN_LATEST", 0.3)
        opening, opened, activity = self.busy_opening()
        yield self.until(lambda: opened, "opened")
        self.assertTrue(activity)  # still busy
        yield opening.stand_ins[ITaskBoard].create_project("default", "web", None, "alice")
        self.assertEqual(len(opened), 1)

    @inlineCallbacks
    def test_a_call_that_has_to_wait_opens_it_at_once(self) -> Any:
        # The call may be what holds up the answer the client waits for (a 2026-07-28 client's
        # first line): no quiet moment to wait for.
        self.patch(opening_module, "QUIET", 60.0)
        self.patch(opening_module, "OPEN_LATEST", 60.0)
        opening, opened, _activity = self.busy_opening()
        project = yield opening.stand_ins[ITaskBoard].create_project("default", "web", None, "alice")
        self.assertEqual(project["name"], "web")
        self.assertEqual(len(opened), 1)
        # Neither timer is left running.
        self.assertFalse(opening._latest.active())
        self.assertFalse(opening._quiet.running)

    @inlineCallbacks
    def test_housekeeping_waits_for_the_opening_without_starting_it(self) -> Any:
        # The audit writer's records wait in memory while the client is busy, are written once
        # the store opens, and what waits when mcpd stops (due) opens it.
        self.patch(opening_module, "QUIET", 60.0)
        self.patch(opening_module, "OPEN_LATEST", 60.0)
        opening, opened, _activity = self.busy_opening({IAuditLog: ("append", "prune")})
        audit = opening.stand_ins[IAuditLog]
        record = ("default", 1.0e9, "local", "stdio", "stdio", "tools/call", "echo", "ok", 0.1, "1", None, None)
        written = audit.append(iter([record]))
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertNoResult(written)
        self.assertEqual(opened, [])
        opening.due()
        self.assertEqual((yield written), 1)
        self.assertEqual(len(opened), 1)
        page = yield audit.search("default", {}, 10, None)
        self.assertEqual([r["tool"] for r in page[0]], ["echo"])

    @inlineCallbacks
    def test_housekeeping_dropped_at_exit_does_not_open_it(self) -> Any:
        # A pruning waiting when mcpd stops is dropped (the next one is another process's),
        # and so is one asked for later; a record still to be written opens the store.
        self.patch(opening_module, "QUIET", 60.0)
        self.patch(opening_module, "OPEN_LATEST", 60.0)
        opening, opened, _activity = self.busy_opening({IAuditLog: ("append", "prune")}, {IAuditLog: ("prune",)})
        audit = opening.stand_ins[IAuditLog]
        cutoff = datetime.datetime(2000, 1, 1)
        pruned = audit.prune(cutoff, 100)
        opening.due()
        yield self.assertFailure(pruned, StoreUnavailable)
        yield self.assertFailure(audit.prune(cutoff, 100), StoreUnavailable)
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(opened, [])
        self.assertEqual(opening.waiters, [])
        record = ("default", 1.0e9, "local", "stdio", "stdio", "tools/call", "echo", "ok", 0.1, "1", None, None)
        self.assertEqual((yield audit.append(iter([record]))), 1)
        self.assertEqual(len(opened), 1)
        self.assertEqual((yield audit.prune(cutoff, 100)), 0)  # the store's own, once open

    @inlineCallbacks
    def test_a_store_that_cannot_be_opened_says_why_and_stops_mcpd(self) -> Any:
        release = threading.Event()

        def open_stores() -> Opened:
            release.wait(10)
            raise OSError("the disk is gone")

        opening, stopped = self.opening(open_stores)
        board = opening.stand_ins[ITaskBoard]
        waiting = board.list_projects("default", 10, None)
        release.set()
        failure = yield self.assertFailure(waiting, StoreUnavailable)
        self.assertIn("the database store could not be opened: the disk is gone", str(failure))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        yield deferLater(reactor, 0, lambda: None)  # mcpd is stopped after the calls are told
        self.assertEqual(stopped, ["stop"])
        self.assertIsNotNone(opening.failure)
        # Later calls fail at once, saying the same.
        yield self.assertFailure(board.list_projects("default", 10, None), StoreUnavailable)
        self.assertEqual(opening.stand_ins[IStore].describe()["state"], "failed")

    @inlineCallbacks
    def test_the_waiting_calls_are_told_before_mcpd_is_stopped(self) -> Any:
        # At shutdown the audit writer's last flush waits for them; stopping the reactor then
        # raised ReactorNotRunning, and they were never told.
        release = threading.Event()
        told: list[bool] = []

        def open_stores() -> Opened:
            release.wait(10)
            raise OSError("the disk is gone")

        opening, _ = self.opening(open_stores, lambda: told.append(waiting.called))
        waiting = opening.stand_ins[ITaskBoard].list_projects("default", 10, None)
        release.set()
        failure = yield self.assertFailure(waiting, StoreUnavailable)
        self.assertIn("the disk is gone", str(failure))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(told, [True])

    @inlineCallbacks
    def test_a_store_service_that_cannot_start_fails_the_opening(self) -> Any:
        opening, stopped = self.opening(lambda: (FailingStoreService(), {}))
        waiting = opening.stand_ins[ITaskBoard].list_projects("default", 10, None)
        waiting.addTimeout(20, reactor)  # it was never answered
        failure = yield self.assertFailure(waiting, StoreUnavailable)
        self.assertIn("the database store could not be opened: the store's service would not start", str(failure))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(stopped, ["stop"])
        self.assertEqual(opening.stand_ins[IStore].describe()["state"], "failed")


# Loaded by a --stdio daemon before it answers: the HTTP stack and the SQL store's libraries are not.
_PROBE = """
import json, sys
from mcpd.tap import Options
from mcpd.daemon import build_service
from twisted.internet import reactor
options = Options()
options.parseOptions(["--stdio", "--data-dir", sys.argv[1]])
build_service(options.settings, reactor, options.packs)
print(json.dumps(sorted(sys.modules)))
"""


# mcpd's command with `OPEN_LATEST` a minute, and `QUIET` as given first (a minute without).
_LONG_OPEN_WAIT = """
import sys
from mcpd.stores import opening
opening.OPEN_LATEST = 60.0
opening.QUIET = float(sys.argv.pop(1)) if sys.argv[1:2] != ["--stdio"] else 60.0
from mcpd.cli import main
sys.exit(main())
"""

_INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


def database_state(answer: dict[str, Any]) -> str:
    """The SQL store's state in a server.info answer."""
    stores = answer["result"]["structuredContent"]["stores"]
    return str(next(store["state"] for store in stores if store["name"] == "database"))


class StdioStartTests(DaemonTestMixin, TestCase):
    def test_stdio_loads_neither_http_nor_sql_before_it_serves(self) -> None:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, str(self.workdir / "data")], capture_output=True, check=True, text=True
        )
        loaded = set(json.loads(out.stdout))
        for module in ("sqlalchemy", "alembic", "klein", "twisted.web.server", "prometheus_client", "wsproto"):
            self.assertNotIn(module, loaded)
        self.assertIn("mcpd.packs.tasks", loaded)

    def test_a_task_call_right_after_start_is_served(self) -> None:
        server = self.spawn_stdio(MCPD, "--stdio", "--data-dir", str(self.workdir / "data"))
        server.send(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"},
                },
            }
        )
        server.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        server.send(
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "project.create", "arguments": {"name": "web"}},
            }
        )
        self.assertEqual(server.receive(30)["result"]["serverInfo"]["name"], "mcpd")
        result = server.receive(30)["result"]
        self.assertFalse(result.get("isError", False), result)
        self.assertEqual(result["structuredContent"]["project"]["name"], "web")
        server.close_stdin()
        self.assertEqual(server.wait(), 0)

    def test_a_first_line_that_needs_the_store_opens_it_at_once(self) -> None:
        # A 2026-07-28 client's very first line may be a call that needs the store: no answer
        # can come before it, so the call starts the opening rather than wait for a quiet
        # moment or OPEN_LATEST (each made a minute here, longer than the test waits).
        server = self.spawn_stdio(PYTHON, "-c", _LONG_OPEN_WAIT, "--stdio", "--data-dir", str(self.workdir / "data"))
        meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
        arguments = {"title": "first", "body": "before any answer"}
        params = {"name": "note.save", "arguments": arguments, "_meta": meta}
        server.send({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params})
        answer = server.receive(30)
        self.assertEqual(answer["id"], 7)
        result = answer["result"]
        self.assertFalse(result.get("isError", False), result)
        self.assertEqual(result["structuredContent"]["note"]["title"], "first")
        server.close_stdin()
        self.assertEqual(server.wait(), 0)

    def test_the_store_opens_once_a_busy_client_is_quiet(self) -> None:
        # A client's first burst of calls is answered without the store's opening sharing the
        # core (it was opened at once by the audit trail's first pruning, which ran as mcpd
        # started); it opens when the client goes quiet, as Claude Desktop does once it has
        # listed the tools, and every call's audit record is written.
        data = self.workdir / "data"
        server = self.spawn_stdio(PYTHON, "-c", _LONG_OPEN_WAIT, "1.0", "--stdio", "--data-dir", str(data))
        server.send(_INITIALIZE)
        server.receive(30)
        server.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        info = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "server.info", "arguments": {}}}
        calls, states = 0, set()
        started = time.monotonic()
        while time.monotonic() - started < 3:  # one call after the other, no pause
            calls += 1
            server.send({**info, "id": calls})
            states.add(database_state(server.receive(30)))
        self.assertEqual(states, {"starting"})
        server.send({"jsonrpc": "2.0", "id": "list", "method": "tools/list"})
        server.receive(30)
        for _ in range(12):
            time.sleep(2.5)  # quiet for over QUIET
            calls += 1
            server.send({**info, "id": calls})
            if database_state(server.receive(30)) == "ok":
                break
        else:
            self.fail("the store did not open while the client was quiet")
        server.close_stdin()
        self.assertEqual(server.wait(), 0)
        with contextlib.closing(sqlite3.connect(data / "mcpd.sqlite3")) as db:
            rows = db.execute("SELECT tool, COUNT(*) FROM audit_records GROUP BY tool").fetchall()
        self.assertEqual(rows, [("server.info", calls)])

    def test_records_of_a_client_that_never_paused_are_written_at_exit(self) -> None:
        # The store never opened while mcpd served: the audit writer's last flush opens it.
        data = self.workdir / "data"
        server = self.spawn_stdio(PYTHON, "-c", _LONG_OPEN_WAIT, "--stdio", "--data-dir", str(data))
        server.send(_INITIALIZE)
        server.receive(30)
        for n in range(1, 201):
            server.send({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "server.info"}})
        states = {database_state(server.receive(30)) for _ in range(200)}
        self.assertEqual(states, {"starting"})
        server.close_stdin()
        self.assertEqual(server.wait(), 0)
        with contextlib.closing(sqlite3.connect(data / "mcpd.sqlite3")) as db:
            rows = db.execute("SELECT tool, transport, COUNT(*) FROM audit_records GROUP BY tool").fetchall()
        self.assertEqual(rows, [("server.info", "stdio", 200)])

    def test_a_session_with_nothing_to_write_leaves_the_database_alone(self) -> None:
        # The audit writer's first pruning waits for the opening from the start; at exit only
        # what is still to be written opens the store, so nothing is created or migrated.
        data = self.workdir / "data"
        data.mkdir()
        server = self.spawn_stdio(PYTHON, "-c", _LONG_OPEN_WAIT, "--stdio", "--data-dir", str(data))
        server.send(_INITIALIZE)
        self.assertEqual(server.receive(30)["result"]["serverInfo"]["name"], "mcpd")
        server.send({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        self.assertIn("tools", server.receive(30)["result"])
        server.close_stdin()
        self.assertEqual(server.wait(), 0)
        self.assertEqual(sorted(path.name for path in data.iterdir()), [])

    def test_a_database_refused_at_exit_stops_stdio_in_time(self) -> None:
        # A schema newer than mcpd's is found when the audit writer's last flush opens the
        # store, while the reactor is stopping: mcpd says why and exits 1 (it hung for good).
        data = self.workdir / "data"
        data.mkdir()
        with contextlib.closing(sqlite3.connect(data / "mcpd.sqlite3")) as db:
            db.execute("CREATE TABLE mcpd_schema_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
            db.execute("INSERT INTO mcpd_schema_version VALUES ('9999')")
            db.commit()
        server = self.spawn_stdio(PYTHON, "-c", _LONG_OPEN_WAIT, "--stdio", "--data-dir", str(data))
        server.send(_INITIALIZE)
        server.receive(30)
        server.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        server.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "server.tools"}})
        self.assertIn("tools", server.receive(30)["result"]["structuredContent"])
        server.close_stdin()
        self.assertEqual(server.wait(30), 1)
        self.assertIn("mcpd: cannot start database:", server.stderr)
        self.assertIn("9999", server.stderr)

    def test_an_unusable_database_stops_stdio_with_one_line(self) -> None:
        blocker = self.workdir / "data"
        blocker.mkdir()
        (blocker / "mcpd.sqlite3").mkdir()  # a directory where the database file should be
        # No trace file: whether initialize is answered before the opening fails is a race.
        server = StdioProcess([MCPD, "--stdio", "--data-dir", str(blocker)], self.workdir, "unusable")
        self.addCleanup(server.kill)
        self.assertEqual(server.wait(30), 1)
        self.assertIn("mcpd: cannot start database:", server.stderr)
