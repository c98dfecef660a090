"""Faults under load, against the real daemon and real databases.

- `OutageTests`: MariaDB is shut down while a client keeps creating tasks. Every call is answered
  (an ``isError`` result saying the database is unavailable, within a bounded time: never a hang,
  never a JSON-RPC error), ``/health`` says down (503) and ``/metrics`` and ``server.info`` agree;
  when MariaDB is back, mcpd reconnects by itself, every task it acknowledged is in the
  database, and every call is in the audit trail (``server.audit`` said unavailable meanwhile).
- `KillTests`: ``kill -9`` of mcpd in the middle of a burst of concurrent ``task.create`` calls
  (on SQLite and on MariaDB): after a restart every acknowledged task is there, and no task was
  half-written (each has all its tags and dependencies).
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import sqlite3
import threading
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred

from tests.daemon import MODERN, DaemonTestCase
from tests.services import PASSWORD, MariaDB, shared_mariadb

UNAVAILABLE = "database is unavailable (temporary)"
DB_TIMEOUT = 2.0
TAGS = ["alpha", "beta", "gamma"]
_ids = itertools.count(1)


def call_tool(port: int, tool: str, arguments: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """One stateless (2026-07-28) tools/call over HTTP; the JSON-RPC response."""
    request_id = next(_ids)
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments, "_meta": meta},
        }
    )
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": tool,
    }
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/mcp", body=body, headers=headers)
        response = connection.getresponse()
        reply: dict[str, Any] = json.loads(response.read())
        return reply
    finally:
        connection.close()


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def metric(exposition: bytes, name: str, labels: dict[str, str] | None = None) -> float | None:
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(sample.value)
    return None


class Writer(threading.Thread):
    """Creates tasks one after the other until stopped; remembers what was acknowledged."""

    def __init__(self, port: int, project: str, depends_on: list[str] | None = None) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.project = project
        self.depends_on = depends_on or []
        self.acknowledged: list[str] = []
        self.tool_errors: list[str] = []
        self.protocol_errors: list[Any] = []
        self.transport_errors = 0
        self.slowest = 0.0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                reply = call_tool(
                    self.port,
                    "task.create",
                    {"project": self.project, "title": "burst", "tags": TAGS, "depends_on": self.depends_on},
                )
            except (OSError, http.client.HTTPException, ValueError):
                self.transport_errors += 1  # the daemon was killed under us
                time.sleep(0.01)
                continue
            self.slowest = max(self.slowest, time.monotonic() - started)
            if "error" in reply:
                self.protocol_errors.append(reply["error"])
            elif reply["result"].get("isError"):
                self.tool_errors.append(reply["result"]["content"][0]["text"])
                time.sleep(0.05)
            else:
                self.acknowledged.append(reply["result"]["structuredContent"]["task"]["id"])


def rows_by_task(rows: list[tuple[str, int, int]]) -> dict[str, tuple[int, int]]:
    return {task_id: (tags, deps) for task_id, tags, deps in rows}


TASK_ROWS = (
    "SELECT t.id, (SELECT COUNT(*) FROM task_tags g WHERE g.task_id = t.id), "
    "(SELECT COUNT(*) FROM task_deps d WHERE d.task_id = t.id) FROM tasks t WHERE t.title = 'burst'"
)


class OutageTests(DaemonTestCase):
    timeout = 180

    def daemon_on_mariadb(self) -> tuple[MariaDB, str, int]:
        """A MariaDB server of the test's own and a daemon on a new database of it: the server,
        the database's name, the daemon's port."""
        server = MariaDB()
        self.addCleanup(server.destroy)
        server.start()
        database = server.new_database()
        daemon = self.start_daemon(
            "--db-url", server.url(database), "--db-timeout", str(DB_TIMEOUT), fixture_pack=False,
            env={"DB_PASSWORD": PASSWORD},
        )  # fmt: skip
        return server, database, daemon.port

    def test_mariadb_stops_mid_run_and_comes_back(self) -> Deferred[None]:
        server, database, port = self.daemon_on_mariadb()

        def wait_for(condition: Any, what: str, limit: float = 30.0) -> None:
            deadline = time.monotonic() + limit
            while not condition():
                if time.monotonic() > deadline:
                    raise AssertionError(f"{what} within {limit}s")
                time.sleep(0.1)

        def state() -> str:
            reply = call_tool(port, "server.info", {})
            return str(reply["result"]["structuredContent"]["stores"][0]["state"])

        def check() -> None:
            self.assertNotIn("isError", call_tool(port, "project.create", {"name": "p"})["result"])
            writer = Writer(port, "p")
            writer.start()
            wait_for(lambda: len(writer.acknowledged) >= 20, "20 tasks acknowledged")
            server.stop()
            wait_for(lambda: len(writer.tool_errors) >= 5, "5 calls answered while the database is down")
            status, body = get(port, "/health")
            health = json.loads(body)
            self.assertEqual(status, 503, health)
            self.assertEqual(health["checks"]["database"]["status"], "down", health)
            self.assertLess(health["checks"]["database"]["latency_ms"], (DB_TIMEOUT + 1) * 1000)
            _status, exposition = get(port, "/metrics")
            self.assertEqual(metric(exposition, "mcp_store_up", {"store": "database"}), 0.0)
            self.assertEqual(metric(exposition, "mcp_db_up"), 0.0)
            self.assertGreater(metric(exposition, "mcp_db_errors_total", {"kind": "unavailable"}) or 0, 0)
            self.assertEqual(state(), "down")
            # server.audit says so too; the audit records of these calls wait in memory.
            audit = call_tool(port, "server.audit", {})["result"]
            self.assertTrue(audit.get("isError"), audit)
            self.assertIn(UNAVAILABLE, audit["content"][0]["text"])
            acknowledged_before = len(writer.acknowledged)
            server.start()
            wait_for(lambda: len(writer.acknowledged) >= acknowledged_before + 20, "20 more tasks after the restart")
            writer.stopping.set()
            writer.join(30)
            status, body = get(port, "/health")
            self.assertEqual(status, 200, body)
            self.assertEqual(json.loads(body)["checks"]["database"]["status"], "ok")
            self.assertEqual(state(), "ok")
            # Every call was answered, soon, as a tool result; the outage as the database's.
            self.assertEqual(writer.protocol_errors, [])
            self.assertEqual(writer.transport_errors, 0)
            self.assertLess(writer.slowest, DB_TIMEOUT * 2 + 2)
            self.assertTrue(all(UNAVAILABLE in text for text in writer.tool_errors), writer.tool_errors[:3])
            # No acknowledged write was lost; nothing is half-written.
            rows = rows_by_task(server.sql(TASK_ROWS, database=database))
            missing = set(writer.acknowledged) - set(rows)
            self.assertEqual(missing, set())
            self.assertEqual({counts for counts in rows.values()}, {(len(TAGS), 0)})
            # Every call is in the audit trail, those made during the outage too.
            calls = len(writer.acknowledged) + len(writer.tool_errors)
            count = "SELECT COUNT(*) FROM audit_records WHERE tool = 'task.create'"
            wait_for(lambda: server.sql(count, database=database)[0][0] >= calls, f"{calls} audit records")
            self.assertEqual(server.sql(count, database=database)[0][0], calls)

        return self.in_thread(check)

    def test_a_frozen_idle_database_is_down_within_the_time_limit(self) -> Deferred[None]:
        """MariaDB stopped (SIGSTOP: the kernel still accepts, nothing answers) while no client
        calls: /health answers within --db-timeout and a little, and says down (503) every
        time, though the re-indexer's and earlier probes' queries hang on it."""
        server, _, port = self.daemon_on_mariadb()

        def check() -> None:
            status, body = get(port, "/health")
            self.assertEqual(status, 200, body)
            self.assertEqual(
                call_tool(port, "server.info", {})["result"]["structuredContent"]["stores"][0]["state"], "ok"
            )
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            self.addCleanup(os.kill, server.process.pid, signal.SIGCONT)
            for _ in range(3):
                started = time.monotonic()
                status, body = get(port, "/health")
                took = time.monotonic() - started
                health = json.loads(body)
                self.assertLess(took, DB_TIMEOUT + 2, health)
                self.assertEqual(status, 503, health)
                self.assertEqual(health["checks"]["database"]["status"], "down", health)
                self.assertIn(f"no answer within {DB_TIMEOUT:g}s", health["checks"]["database"]["detail"])

        return self.in_thread(check)


class _KillDuringBurst:
    """kill -9 in the middle of concurrent task.create calls; then restart and count."""

    backend: str
    start_daemon: Any
    in_thread: Any
    workdir: Any
    assertEqual: Any
    assertGreater: Any
    assertNotIn: Any

    def database(self) -> tuple[list[str], dict[str, str], Any]:
        """The daemon's database arguments and environment, and how to read its rows."""
        if self.backend == "sqlite":

            def rows() -> list[Any]:
                with sqlite3.connect(self.workdir / "mcpd-data" / "mcpd.sqlite3") as connection:
                    self.assertEqual(connection.execute("PRAGMA integrity_check").fetchone(), ("ok",))
                    return list(connection.execute(TASK_ROWS))

            return [], {}, rows
        server = shared_mariadb()
        name = server.new_database()
        return ["--db-url", server.url(name)], {"DB_PASSWORD": PASSWORD}, lambda: server.sql(TASK_ROWS, database=name)

    def test_every_acknowledged_task_survives(self) -> Deferred[None]:
        args, env, rows = self.database()
        daemon = self.start_daemon(*args, fixture_pack=False, env=env, name="first")

        def check() -> None:
            self.assertNotIn("isError", call_tool(daemon.port, "project.create", {"name": "p"})["result"])
            first = call_tool(daemon.port, "task.create", {"project": "p", "title": "root"})
            root = first["result"]["structuredContent"]["task"]["id"]
            writers = [Writer(daemon.port, "p", depends_on=[root]) for _ in range(6)]
            for writer in writers:
                writer.start()
            deadline = time.monotonic() + 30
            while sum(len(w.acknowledged) for w in writers) < 200 and time.monotonic() < deadline:
                time.sleep(0.02)
            daemon.process.kill()  # SIGKILL: no shutdown, no flush, mid-transaction
            daemon.process.wait(10)
            for writer in writers:
                writer.stopping.set()
                writer.join(30)
            acknowledged = {task_id for writer in writers for task_id in writer.acknowledged}
            self.assertGreater(len(acknowledged), 0)
            for writer in writers:
                self.assertEqual(writer.protocol_errors, [])
                self.assertEqual(writer.tool_errors, [])
            # Restarted on the same data: every acknowledged task is there, each one whole.
            restarted = self.start_daemon(*args, fixture_pack=False, env=env, name="second")
            listed: set[str] = set()
            cursor = None
            while True:
                arguments: dict[str, Any] = {"project": "p", "limit": 100}
                if cursor:
                    arguments["cursor"] = cursor
                page = call_tool(restarted.port, "task.list", arguments)["result"]["structuredContent"]
                listed |= {task["id"] for task in page["tasks"] if task["title"] == "burst"}
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            self.assertEqual(acknowledged - listed, set())
            stored = rows_by_task(rows())
            self.assertEqual(set(stored), listed)
            self.assertEqual(set(stored.values()), {(len(TAGS), 1)})

        return self.in_thread(check)


class SQLiteKillTests(_KillDuringBurst, DaemonTestCase):
    backend = "sqlite"
    timeout = 120


class MariaDBKillTests(_KillDuringBurst, DaemonTestCase):
    backend = "mariadb"
    timeout = 120
