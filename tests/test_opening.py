"""Tests for mcpd.stores.opening: a store opened in the background answers the calls made while it
opens, and one that cannot be opened says why. The store is the real SQL store (SQLite in a
temporary directory), opened in a real thread; `mcpd --stdio` is a real process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from mcpd.config import Settings
from mcpd.daemon import SQL_INTERFACES, _open_sql_store
from mcpd.interfaces import IStore, ITaskBoard, StoreUnavailable
from mcpd.stores import opening as opening_module
from mcpd.stores.opening import BackgroundOpening, Opened
from tests.daemon import MCPD, MODERN, PYTHON, DaemonTestMixin, StdioProcess


class BackgroundOpeningTests(TestCase):
    def opening(self, open_stores: Any) -> tuple[BackgroundOpening, list[str]]:
        stopped: list[str] = []
        opening = BackgroundOpening(
            "database", SQL_INTERFACES, open_stores, reactor, stop=lambda: stopped.append("stop")
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

    def waiting_opening(self, after: Deferred[None]) -> tuple[BackgroundOpening, list[int]]:
        """An opening of the real SQL store that waits for ``after``; the list counts openings."""
        settings = Settings(data_dir=self.mktemp())
        opened: list[int] = []

        def open_stores() -> Opened:
            opened.append(threading.get_ident())
            return _open_sql_store(settings, reactor)

        opening = BackgroundOpening("database", SQL_INTERFACES, open_stores, reactor)
        opening.after = after
        opening.startService()
        self.addCleanup(opening.stopService)
        return opening, opened

    @inlineCallbacks
    def test_with_after_it_opens_once_that_fires(self) -> Any:
        # --stdio: the first answer is written before the store's opening takes the CPU.
        # No call waits here (a waiting call opens the store itself), and the timer is far off:
        # what opens it is ``after`` alone.
        self.patch(opening_module, "OPEN_WAIT", 60)
        after: Deferred[None] = Deferred()
        opening, opened = self.waiting_opening(after)
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(opened, [])
        after.callback(None)
        for _ in range(200):
            if opened:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(opened), 1)
        project = yield opening.stand_ins[ITaskBoard].create_project("default", "web", None, "alice")
        self.assertEqual(project["name"], "web")
        self.assertEqual(len(opened), 1)

    @inlineCallbacks
    def test_with_after_it_opens_anyway_when_that_is_late(self) -> Any:
        # No client speaking yet: the store still opens (and a bad one still stops mcpd) soon.
        self.patch(opening_module, "OPEN_WAIT", 0.2)
        after: Deferred[None] = Deferred()
        opening, opened = self.waiting_opening(after)
        project = yield opening.stand_ins[ITaskBoard].create_project("default", "web", None, "alice")
        self.assertEqual(project["name"], "web")
        after.callback(None)  # too late: opened once
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(len(opened), 1)

    @inlineCallbacks
    def test_with_after_a_call_that_has_to_wait_opens_it_at_once(self) -> Any:
        # The call may be what holds up the first answer (a 2026-07-28 client's first line).
        self.patch(opening_module, "OPEN_WAIT", 60.0)
        after: Deferred[None] = Deferred()
        opening, opened = self.waiting_opening(after)
        project = yield opening.stand_ins[ITaskBoard].create_project("default", "web", None, "alice")
        self.assertEqual(project["name"], "web")
        self.assertEqual(len(opened), 1)
        self.assertFalse(opening._waiting.active())  # the timer is not left running
        after.callback(None)  # the first answer, later: opened once
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(len(opened), 1)

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
        self.assertEqual(stopped, ["stop"])
        self.assertIsNotNone(opening.failure)
        # Later calls fail at once, saying the same.
        yield self.assertFailure(board.list_projects("default", 10, None), StoreUnavailable)
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


# mcpd's command with `OPEN_WAIT` a minute.
_LONG_OPEN_WAIT = """
import sys
from mcpd.stores import opening
opening.OPEN_WAIT = 60.0
from mcpd.cli import main
sys.exit(main())
"""


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
        # can come before it, so the call starts the opening rather than wait for OPEN_WAIT
        # (made a minute here, longer than the test waits).
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

    def test_an_unusable_database_stops_stdio_with_one_line(self) -> None:
        blocker = self.workdir / "data"
        blocker.mkdir()
        (blocker / "mcpd.sqlite3").mkdir()  # a directory where the database file should be
        # No trace file: whether initialize is answered before the opening fails is a race.
        server = StdioProcess([MCPD, "--stdio", "--data-dir", str(blocker)], self.workdir, "unusable")
        self.addCleanup(server.kill)
        self.assertEqual(server.wait(30), 1)
        self.assertIn("mcpd: cannot start database:", server.stderr)
