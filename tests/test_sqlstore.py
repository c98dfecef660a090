"""The SQL store, in process, against a real SQLite file and a real MariaDB server.

`_StoreSuite` is the `ITaskBoard` / `INoteStore` suite every backend runs (SQLite and MariaDB
here): records, filters, pages, optimistic concurrency, dependency cycles, `task.next`, ranked
search and tenancy. Then the migrations (the schema they build is the one the code queries; a
database newer than the code is refused; concurrent start-ups do not race; ``mcpd migrate``),
the configuration (no password in what is shown), and an outage of a real MariaDB server.
"""

from __future__ import annotations

import datetime
import math
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import text
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mcpd.config import Settings
from mcpd.interfaces import Conflict, INoteStore, IStore, ITaskBoard, NotFound, StoreUnavailable
from mcpd.stores.shown import MAX_DEPTH
from mcpd.stores.sql import migrate
from mcpd.stores.sql.config import DatabaseConfig, DatabaseConfigError, database_url
from mcpd.stores.sql.database import SQLDatabase, build_engine
from mcpd.stores.sql.notes import (
    _MYSQL_NOTES,
    CANDIDATES,
    SQLNoteStore,
    _mysql_holding,
    cut_snippet,
    fold,
    holding_cap,
    rank,
    search_terms,
)
from mcpd.stores.sql.schema import notes as notes_table
from mcpd.stores.sql.service import SQLStoreService
from mcpd.stores.sql.tasks import SQLTaskBoard
from tests.daemon import MCPD, daemon_env
from tests.services import PASSWORD, MariaDB, shared_mariadb

A, B = "acme", "globex"


def sqlite_config(directory: str, **knobs: Any) -> DatabaseConfig:
    return DatabaseConfig(url=database_url(None, directory), **knobs)


def mariadb_config(server: MariaDB, database: str, **knobs: Any) -> DatabaseConfig:
    return DatabaseConfig(url=database_url(server.url(database), "unused", PASSWORD), **knobs)


class _StoreSuite:
    """What every `ITaskBoard` / `INoteStore` backend must do; subclasses give `config()`."""

    addCleanup: Any
    assertEqual: Any
    assertIn: Any
    assertNotIn: Any
    assertTrue: Any
    assertFalse: Any
    assertIsNone: Any
    assertGreater: Any
    failUnlessFailure: Any
    mktemp: Any

    def config(self) -> DatabaseConfig:
        raise NotImplementedError

    def setUp(self) -> None:
        self.database = SQLDatabase(self.config(), reactor)
        service = SQLStoreService(self.database, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.board = SQLTaskBoard(self.database)
        self.notes = SQLNoteStore(self.database)

    def refused(self, d: Deferred[Any], error: type[Exception]) -> Deferred[Any]:
        return self.failUnlessFailure(d, error)

    # -- interfaces -----------------------------------------------------------------------------

    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(ITaskBoard, self.board))
        self.assertTrue(verifyObject(INoteStore, self.notes))
        self.assertTrue(verifyObject(IStore, self.database))

    @inlineCallbacks
    def test_check_and_describe(self) -> Any:
        health = yield self.database.check()
        self.assertEqual((health.store, health.state), ("database", "up"))
        self.assertEqual(self.database.status().state, "up")
        described = self.database.describe()
        self.assertEqual(described["state"], "ok")
        self.assertEqual(described["schema_revision"], migrate.scripts().get_current_head())
        self.assertNotIn(PASSWORD, repr(described))

    # -- projects -------------------------------------------------------------------------------

    @inlineCallbacks
    def test_projects(self) -> Any:
        web = yield self.board.create_project(A, "web", "The site", "alice")
        self.assertEqual((web["name"], web["description"], web["created_by"]), ("web", "The site", "alice"))
        self.assertTrue(web["created_at"].endswith("Z"))
        yield self.refused(self.board.create_project(A, "web", None, "bob"), Conflict)
        # Names are per tenant.
        yield self.board.create_project(B, "web", None, "carol")
        for name in ("api", "docs", "ops"):
            yield self.board.create_project(A, name, None, "alice")
        page, after = yield self.board.list_projects(A, 2, None)
        self.assertEqual([p["name"] for p in page], ["api", "docs"])
        page, after = yield self.board.list_projects(A, 2, after)
        self.assertEqual([p["name"] for p in page], ["ops", "web"])
        self.assertIsNone(after)
        task = yield self.board.create_task(A, {"project": "web", "title": "t1"}, "alice")
        yield self.board.create_task(A, {"project": web["id"], "title": "t2"}, "alice")
        yield self.board.update_task(A, task["id"], {"status": "done"}, None)
        page, _ = yield self.board.list_projects(A, 10, "ops")
        self.assertEqual((page[0]["open_tasks"], page[0]["done_tasks"]), (1, 1))
        names = yield self.board.project_names(A, "d", 10)
        self.assertEqual(names, ["docs"])
        # LIKE wildcards in a prefix are literal.
        self.assertEqual((yield self.board.project_names(A, "%", 10)), [])

    # -- tasks ----------------------------------------------------------------------------------

    @inlineCallbacks
    def test_create_and_get(self) -> Any:
        yield self.board.create_project(A, "web", None, "alice")
        yield self.refused(self.board.create_task(A, {"project": "nope", "title": "x"}, "alice"), NotFound)
        first = yield self.board.create_task(
            A,
            {
                "project": "web",
                "title": "Login",
                "description": "Fix it",
                "priority": "urgent",
                "assignee": "bob",
                "due": datetime.date(2026, 12, 1),
                "tags": ["bug", "auth", "bug"],
            },
            "alice",
        )
        self.assertEqual(first["tags"], ["bug", "auth"])
        self.assertEqual(
            (first["priority"], first["due"], first["status"], first["version"]), ("urgent", "2026-12-01", "open", 1)
        )
        yield self.refused(
            self.board.create_task(A, {"project": "web", "title": "y", "depends_on": ["missing"]}, "alice"), NotFound
        )
        second = yield self.board.create_task(
            A, {"project": "web", "title": "Deploy", "depends_on": [first["id"]]}, "al"
        )
        self.assertEqual(second["depends_on"], [first["id"]])
        yield self.board.add_comment(A, first["id"], "on it", "bob")
        yield self.board.add_comment(A, first["id"], "done soon", "bob")
        view = yield self.board.get_task(A, first["id"])
        self.assertEqual(view["task"], first)
        self.assertEqual([c["text"] for c in view["comments"]], ["on it", "done soon"])
        self.assertEqual(view["blocks"], [{"id": second["id"], "title": "Deploy", "status": "open"}])
        yield self.refused(self.board.get_task(A, "nope"), NotFound)
        yield self.refused(self.board.add_comment(A, "nope", "x", "bob"), NotFound)

    @inlineCallbacks
    def test_list_filters_and_pages(self) -> Any:
        yield self.board.create_project(A, "web", None, "alice")
        yield self.board.create_project(A, "api", None, "alice")
        made = []
        for i in range(7):
            task = yield self.board.create_task(
                A,
                {
                    "project": "web" if i % 2 else "api",
                    "title": f"task {i} {'login 100%' if i == 3 else ''}",
                    "assignee": "bob" if i < 3 else None,
                    "tags": ["even"] if i % 2 == 0 else [],
                },
                "alice",
            )
            made.append(task["id"])
        seen, after = [], None
        while True:
            page, after = yield self.board.list_tasks(A, {}, 3, after)
            seen += [t["id"] for t in page]
            if after is None:
                break
        self.assertEqual(seen, list(reversed(made)))  # newest first, every one once

        def ids(tasks: list[dict[str, Any]]) -> set[str]:
            return {t["id"] for t in tasks}

        page, _ = yield self.board.list_tasks(A, {"project": "web"}, 100, None)
        self.assertEqual(ids(page), {made[i] for i in (1, 3, 5)})
        page, _ = yield self.board.list_tasks(A, {"assignee": "bob"}, 100, None)
        self.assertEqual(ids(page), {made[i] for i in (0, 1, 2)})
        page, _ = yield self.board.list_tasks(A, {"tag": "even", "project": "api"}, 100, None)
        self.assertEqual(ids(page), {made[i] for i in (0, 2, 4, 6)})
        page, _ = yield self.board.list_tasks(A, {"query": "LOGIN 100%"}, 100, None)
        self.assertEqual(ids(page), {made[3]})
        page, _ = yield self.board.list_tasks(A, {"query": "_"}, 100, None)
        self.assertEqual(page, [])  # a literal underscore, not a wildcard
        yield self.board.update_task(A, made[4], {"status": "blocked"}, None)
        page, _ = yield self.board.list_tasks(A, {"status": "blocked"}, 100, None)
        self.assertEqual(ids(page), {made[4]})
        yield self.refused(self.board.list_tasks(A, {"project": "nope"}, 10, None), NotFound)

    @inlineCallbacks
    def test_update_and_versions(self) -> Any:
        yield self.board.create_project(A, "web", None, "alice")
        task = yield self.board.create_task(A, {"project": "web", "title": "t", "tags": ["a"]}, "alice")
        other = yield self.board.create_task(A, {"project": "web", "title": "o"}, "alice")
        updated, touched = yield self.board.update_task(
            A, task["id"], {"title": "T", "tags": ["b", "c"], "depends_on": [other["id"]], "assignee": "bob"}, 1
        )
        self.assertEqual((updated["title"], updated["tags"], updated["version"]), ("T", ["b", "c"], 2))
        self.assertEqual(updated["depends_on"], [other["id"]])
        self.assertEqual(touched, [other["id"]])  # its `blocks` changed
        failure = yield self.refused(self.board.update_task(A, task["id"], {"status": "done"}, 1), Conflict)
        self.assertIn("version 2", str(failure))
        cleared, touched = yield self.board.update_task(A, task["id"], {"assignee": None, "depends_on": []}, 2)
        self.assertEqual((cleared["assignee"], cleared["depends_on"], cleared["version"]), (None, [], 3))
        self.assertEqual(touched, [other["id"]])
        # The tasks whose `blocks` show this one: its title and status there tell every one.
        third = yield self.board.create_task(A, {"project": "web", "title": "3"}, "alice")
        _, touched = yield self.board.update_task(A, task["id"], {"depends_on": [other["id"]]}, 3)
        self.assertEqual(touched, [other["id"]])
        _, touched = yield self.board.update_task(A, task["id"], {"priority": "high", "status": "open"}, 4)
        self.assertEqual(touched, [])  # nothing `blocks` shows changed
        _, touched = yield self.board.update_task(A, task["id"], {"title": "T2"}, 5)
        self.assertEqual(touched, [other["id"]])
        _, touched = yield self.board.update_task(A, task["id"], {"status": "done", "depends_on": [third["id"]]}, 6)
        self.assertEqual(touched, sorted([other["id"], third["id"]]))
        page, _ = yield self.board.list_tasks(A, {"tag": "a"}, 10, None)
        self.assertEqual(page, [])
        yield self.refused(self.board.update_task(A, "nope", {"title": "x"}, None), NotFound)

    @inlineCallbacks
    def test_cycles_are_refused(self) -> Any:
        yield self.board.create_project(A, "web", None, "alice")
        a = (yield self.board.create_task(A, {"project": "web", "title": "a"}, "x"))["id"]
        b = (yield self.board.create_task(A, {"project": "web", "title": "b", "depends_on": [a]}, "x"))["id"]
        c = (yield self.board.create_task(A, {"project": "web", "title": "c", "depends_on": [b]}, "x"))["id"]
        yield self.refused(self.board.update_task(A, a, {"depends_on": [a]}, None), Conflict)
        failure = yield self.refused(self.board.update_task(A, a, {"depends_on": [c]}, None), Conflict)
        self.assertIn(f"{a} → {c} → {b} → {a}", str(failure))
        yield self.refused(self.board.update_task(A, a, {"depends_on": [b]}, None), Conflict)
        # Replacing c's own dependencies is no cycle, nor is a diamond.
        d = (yield self.board.create_task(A, {"project": "web", "title": "d", "depends_on": [a, b]}, "x"))["id"]
        yield self.board.update_task(A, c, {"depends_on": [a, d]}, None)
        view = yield self.board.get_task(A, a)
        self.assertEqual(view["task"]["depends_on"], [])

    @inlineCallbacks
    def test_concurrent_updates_cannot_make_a_cycle(self) -> Any:
        """a → b and b → a asked at once: one wins, the other is refused (serialised)."""
        yield self.board.create_project(A, "web", None, "alice")
        for _round in range(5):
            a = (yield self.board.create_task(A, {"project": "web", "title": "a"}, "x"))["id"]
            b = (yield self.board.create_task(A, {"project": "web", "title": "b"}, "x"))["id"]
            results = yield DeferredList(
                [
                    self.board.update_task(A, a, {"depends_on": [b]}, None),
                    self.board.update_task(A, b, {"depends_on": [a]}, None),
                ],
                consumeErrors=True,
            )
            outcomes = sorted(ok for ok, _value in results)
            self.assertEqual(outcomes, [False, True], results)
            self.assertTrue(any(not ok and value.check(Conflict) for ok, value in results), results)

    @inlineCallbacks
    def test_concurrent_version_checks(self) -> Any:
        """Ten updates all expecting version 1: exactly one is applied."""
        yield self.board.create_project(A, "web", None, "alice")
        task = yield self.board.create_task(A, {"project": "web", "title": "t"}, "x")
        results = yield DeferredList(
            [self.board.update_task(A, task["id"], {"title": f"v{i}"}, 1) for i in range(10)], consumeErrors=True
        )
        self.assertEqual(sum(1 for ok, _ in results if ok), 1, results)
        self.assertTrue(all(ok or value.check(Conflict) for ok, value in results))
        view = yield self.board.get_task(A, task["id"])
        self.assertEqual(view["task"]["version"], 2)

    @inlineCallbacks
    def test_next(self) -> Any:
        yield self.board.create_project(A, "web", None, "alice")
        task, reason = yield self.board.next_task(A, None, None)
        self.assertIsNone(task)
        self.assertEqual(reason, "no open task")
        base = {"project": "web"}
        low = yield self.board.create_task(A, {**base, "title": "low", "priority": "low"}, "x")
        later = yield self.board.create_task(
            A, {**base, "title": "later", "priority": "high", "due": datetime.date(2027, 1, 2)}, "x"
        )
        sooner = yield self.board.create_task(
            A, {**base, "title": "sooner", "priority": "high", "due": datetime.date(2026, 1, 2)}, "x"
        )
        undated = yield self.board.create_task(A, {**base, "title": "undated", "priority": "high"}, "x")
        blocked = yield self.board.create_task(
            A, {**base, "title": "blocked", "priority": "urgent", "depends_on": [low["id"]]}, "x"
        )
        task, reason = yield self.board.next_task(A, "web", None)
        self.assertEqual(task["id"], sooner["id"])
        self.assertIn("overdue since 2026-01-02", reason)
        yield self.board.update_task(A, sooner["id"], {"status": "in_progress"}, None)
        self.assertEqual((yield self.board.next_task(A, None, None))[0]["id"], later["id"])
        yield self.board.update_task(A, later["id"], {"status": "done"}, None)
        self.assertEqual((yield self.board.next_task(A, None, None))[0]["id"], undated["id"])
        yield self.board.update_task(A, low["id"], {"status": "cancelled"}, None)  # resolves `blocked`
        task, reason = yield self.board.next_task(A, None, None)
        self.assertEqual(task["id"], blocked["id"])
        self.assertIn("its dependency is resolved", reason)
        task, reason = yield self.board.next_task(A, None, "nobody")
        self.assertIsNone(task)
        yield self.board.update_task(A, undated["id"], {"depends_on": [sooner["id"]]}, None)
        yield self.board.update_task(A, blocked["id"], {"depends_on": [sooner["id"]]}, None)
        task, reason = yield self.board.next_task(A, None, None)
        self.assertIsNone(task)
        self.assertIn("all 2 open task(s) wait on dependencies", reason)

    @inlineCallbacks
    def test_project_status_and_ids(self) -> Any:
        yield self.board.create_project(A, "web", "Site", "alice")
        t1 = yield self.board.create_task(A, {"project": "web", "title": "one"}, "x")
        yield self.board.create_task(A, {"project": "web", "title": "two", "priority": "urgent"}, "x")
        yield self.board.update_task(A, t1["id"], {"status": "done"}, None)
        status = yield self.board.project_status(A, "web", 10)
        self.assertEqual(status["counts"]["done"], 1)
        self.assertEqual(status["counts"]["open"], 1)
        self.assertEqual([t["title"] for t in status["unfinished"]], ["two"])
        ids = yield self.board.task_ids(A, t1["id"][:20], 10)
        self.assertIn(t1["id"], ids)

    @inlineCallbacks
    def test_many_writes_at_once(self) -> Any:
        """As many writers as the pool has threads, and more: every write lands once."""
        yield self.board.create_project(A, "web", None, "alice")
        root = yield self.board.create_task(A, {"project": "web", "title": "root"}, "x")
        # Tags and a shared dependency: on InnoDB a DELETE of the new task's (absent) tags took
        # gap locks that deadlocked such concurrent inserts.
        writes = [
            self.board.create_task(
                A, {"project": "web", "title": f"t{i}", "tags": ["a", "b"], "depends_on": [root["id"]]}, "x"
            )
            for i in range(60)
        ]
        created = yield DeferredList(writes, fireOnOneErrback=True, consumeErrors=True)
        ids = {value["id"] for _ok, value in created}
        listed, _ = yield self.board.list_tasks(A, {"tag": "b"}, 100, None)
        self.assertEqual({t["id"] for t in listed}, ids)
        self.assertEqual(len(ids), 60)
        self.assertEqual(len((yield self.board.get_task(A, root["id"]))["blocks"]), 60)

    # -- tenancy --------------------------------------------------------------------------------

    @inlineCallbacks
    def test_tenants_never_meet(self) -> Any:
        yield self.board.create_project(A, "web", None, "alice")
        mine = yield self.board.create_task(A, {"project": "web", "title": "secret", "tags": ["t"]}, "alice")
        note = yield self.notes.save_note(
            A, {"title": "secret plan", "body": "the secret words", "tags": ["t"]}, "alice"
        )
        self.assertEqual((yield self.board.list_projects(B, 10, None)), ([], None))
        self.assertEqual((yield self.board.list_tasks(B, {}, 10, None)), ([], None))
        self.assertEqual((yield self.board.list_tasks(B, {"tag": "t"}, 10, None)), ([], None))
        yield self.refused(self.board.list_tasks(B, {"project": "web"}, 10, None), NotFound)
        yield self.refused(self.board.create_task(B, {"project": "web", "title": "x"}, "eve"), NotFound)
        yield self.refused(self.board.get_task(B, mine["id"]), NotFound)
        yield self.refused(self.board.update_task(B, mine["id"], {"title": "pwned"}, None), NotFound)
        yield self.refused(self.board.add_comment(B, mine["id"], "hi", "eve"), NotFound)
        yield self.board.create_project(B, "other", None, "eve")
        yield self.refused(
            self.board.create_task(B, {"project": "other", "title": "x", "depends_on": [mine["id"]]}, "eve"), NotFound
        )
        self.assertEqual((yield self.board.next_task(B, None, None))[0], None)
        self.assertEqual((yield self.board.task_ids(B, "", 100)), [])
        self.assertEqual((yield self.board.project_names(B, "", 100)), ["other"])
        yield self.refused(self.board.project_status(B, "web", 10), NotFound)
        self.assertEqual((yield self.notes.search_notes(B, "secret", None, 10)), ([], False, []))
        yield self.refused(self.notes.get_note(B, note["id"]), NotFound)
        yield self.refused(self.notes.save_note(B, {"id": note["id"], "title": "x", "body": "y"}, "eve"), NotFound)
        self.assertFalse((yield self.notes.delete_note(B, note["id"])))
        self.assertEqual((yield self.notes.note_ids(B, "", 100)), [])
        # And A still has everything.
        self.assertEqual((yield self.board.get_task(A, mine["id"]))["task"]["title"], "secret")
        self.assertEqual((yield self.notes.get_note(A, note["id"]))["title"], "secret plan")

    # -- notes ----------------------------------------------------------------------------------

    @inlineCallbacks
    def test_notes(self) -> Any:
        note = yield self.notes.save_note(A, {"title": "Deploy", "body": "# Steps\n1. test", "tags": ["ops"]}, "alice")
        self.assertEqual((note["title"], note["tags"], note["created_by"]), ("Deploy", ["ops"], "alice"))
        again = yield self.notes.get_note(A, note["id"])
        self.assertEqual(again, note)
        changed = yield self.notes.save_note(
            A, {"id": note["id"], "title": "Release", "body": "new", "tags": []}, "bob"
        )
        self.assertEqual((changed["title"], changed["created_by"], changed["tags"]), ("Release", "alice", []))
        self.assertEqual((yield self.notes.search_notes(A, "deploy", None, 10)), ([], False, []))
        found, _, _ = yield self.notes.search_notes(A, "release", None, 10)
        self.assertEqual([n["id"] for n in found], [note["id"]])
        yield self.refused(self.notes.save_note(A, {"id": "nope", "title": "x", "body": "y"}, "bob"), NotFound)
        self.assertTrue((yield self.notes.delete_note(A, note["id"])))
        self.assertFalse((yield self.notes.delete_note(A, note["id"])))
        yield self.refused(self.notes.get_note(A, note["id"]), NotFound)
        self.assertEqual((yield self.notes.search_notes(A, "release", None, 10)), ([], False, []))

    @inlineCallbacks
    def test_search_is_ranked(self) -> Any:
        filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor."
        save = self.notes.save_note
        yield save(A, {"title": "Kubernetes upgrade", "body": f"{filler} Drain nodes first.", "tags": ["ops"]}, "a")
        yield save(A, {"title": "Lunch menu", "body": f"{filler} Nothing about clusters here."}, "a")
        yield save(
            A, {"title": "Meeting notes", "body": f"{filler} We discussed the kubernetes budget.", "tags": ["ops"]}, "a"
        )
        yield save(A, {"title": "Random", "body": filler * 3}, "a")
        for i in range(3):
            yield save(A, {"title": f"Other {i}", "body": f"{filler} unrelated text number {i}"}, "a")
        found, more, _ = yield self.notes.search_notes(A, "Kubernetes", None, 10)
        self.assertFalse(more)
        self.assertEqual([n["title"] for n in found], ["Kubernetes upgrade", "Meeting notes"])  # title match first
        self.assertGreater(found[0]["score"], found[1]["score"])
        self.assertIn("**kubernetes**", found[1]["snippet"].lower())
        tagged, _, _ = yield self.notes.search_notes(A, "kubernetes", "nope", 10)
        self.assertEqual(tagged, [])
        first, more, shown = yield self.notes.search_notes(A, "kubernetes budget", None, 1)
        self.assertTrue(more)
        second, more, _ = yield self.notes.search_notes(A, "kubernetes budget", None, 1, frozenset(shown))
        self.assertFalse(more)
        self.assertEqual({first[0]["title"], second[0]["title"]}, {"Kubernetes upgrade", "Meeting notes"})
        self.assertEqual((yield self.notes.search_notes(A, "!!!", None, 10)), ([], False, []))

    @inlineCallbacks
    def test_search_folds_diacritics_and_case(self) -> Any:
        """ "cafe" finds "Café" (InnoDB's collation, FTS5's remove_diacritics) and ranks it as
        the word it is: the note about cafés first, its snippet marking "café"."""
        filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit."
        yield self.notes.save_note(
            A, {"title": "Café guide", "body": f"{filler} The best CAFÉ is near the office."}, "a"
        )
        yield self.notes.save_note(A, {"title": "Misc", "body": f"{filler} Lunch, then the cafe. {filler}"}, "a")
        for n in range(4):
            yield self.notes.save_note(A, {"title": f"Other {n}", "body": filler}, "a")
        for query in ("cafe", "CAFÉ", "café"):
            found, _, _ = yield self.notes.search_notes(A, query, None, 10)
            self.assertEqual([note["title"] for note in found], ["Café guide", "Misc"], query)
            self.assertGreater(found[0]["score"], found[1]["score"])
            self.assertGreater(found[1]["score"], 0)
            self.assertIn("**CAFÉ**", found[0]["snippet"])
            self.assertIn("**cafe**", found[1]["snippet"])

    @inlineCallbacks
    def test_search_pages_follow_what_was_shown(self) -> Any:
        """A later page is the best of the notes not shown yet, though a shown note was deleted
        between pages (the ranking moves up by one: an offset skipped a note, here the third)."""
        ids = {}
        for n in range(1, 7):  # "deploy" n times, bodies of one length: note 6 best
            body = " ".join(["deploy"] * n + ["filler"] * (6 - n))
            ids[n] = (yield self.notes.save_note(A, {"title": f"Note {n}", "body": body}, "alice"))["id"]
        first, more, shown = yield self.notes.search_notes(A, "deploy", None, 2)
        self.assertEqual(([note["id"] for note in first], more), ([ids[6], ids[5]], True))
        self.assertTrue((yield self.notes.delete_note(A, ids[6])))
        second, more, shown = yield self.notes.search_notes(A, "deploy", None, 2, frozenset(shown))
        self.assertEqual(([note["id"] for note in second], more), ([ids[4], ids[3]], True))
        # A note added between pages that ranks above what was shown is shown next.
        top = yield self.notes.save_note(A, {"title": "deploy", "body": "deploy deploy"}, "alice")
        third, more, shown = yield self.notes.search_notes(A, "deploy", None, 2, frozenset(shown))
        self.assertEqual(([note["id"] for note in third], more), ([top["id"], ids[2]], True))
        last, more, shown = yield self.notes.search_notes(A, "deploy", None, 2, frozenset(shown))
        self.assertEqual(([note["id"] for note in last], more, shown), ([ids[1]], False, []))

    @inlineCallbacks
    def test_search_scores_depend_only_on_the_tenants_notes(self) -> Any:
        """The same notes of one tenant get the same scores, order and snippets whether or not
        another tenant holds thousands of notes with the query's words: ranking statistics (how
        many notes, how long, how many hold each word) are the tenant's own, or the numbers
        would tell one tenant about another's notes."""
        save = self.notes.save_note
        filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit."
        mine = [
            {"title": "Deploy checklist", "body": f"{filler} Steps before a release.", "tags": ["ops"]},
            {"title": "Pipeline design", "body": f"{filler} Stages of the build.", "tags": ["ops"]},
            {"title": "Build stages", "body": f"{filler} The pipeline runs tests, then the pipeline ships."},
            {"title": "Release notes", "body": f"{filler} The pipeline was faster; deploy took a minute."},
            {"title": "Lunch", "body": f"{filler} Nothing to see."},
            {"title": "Other", "body": filler * 4},
        ]
        for note in mine:
            yield save(A, note, "alice")

        def searches() -> Deferred[list[Any]]:
            return DeferredList(
                [
                    self.notes.search_notes(A, "deploy pipeline", None, 10),
                    self.notes.search_notes(A, "deploy", None, 10),
                    self.notes.search_notes(A, "pipeline release", "ops", 10),
                    self.notes.search_notes(A, "deploy pipeline", None, 2),
                ],
                fireOnOneErrback=True,
                consumeErrors=True,
            )

        alone = yield searches()
        self.assertEqual(len(alone[0][1][0]), 4)
        # Another tenant's notes full of one query word and not the other: over every tenant's
        # notes, "deploy" would become common (worth little) and "pipeline" rare.
        theirs = [
            {"title": f"Deploy log {n}", "body": f"deploy deploy {filler} deploy again", "tags": ["ops"]}
            for n in range(1500)
        ]
        for start in range(0, len(theirs), 50):
            yield DeferredList([save(B, note, "bob") for note in theirs[start : start + 50]], fireOnOneErrback=True)
        self.assertEqual((yield searches()), alone)
        found, _, _ = yield self.notes.search_notes(B, "deploy", None, 5)
        self.assertEqual({n["title"][:10] for n in found}, {"Deploy log"})


class SQLiteStoreTests(_StoreSuite, TestCase):
    def config(self) -> DatabaseConfig:
        return sqlite_config(self.mktemp())

    @inlineCallbacks
    def test_work_that_returns_a_deferred_fails_its_call(self) -> Any:
        """Work runs in a store thread and returns its result: a Deferred fails the call with a
        TypeError, on the readers and the writer alike, and the next call is answered (it
        reached ``Deferred.callback`` and never fired: an AssertionError in the reactor)."""
        for write in (False, True):
            wrong = self.database.run("wrong", lambda _connection: Deferred(), write=write)
            wrong.addTimeout(10, reactor)
            failure = yield self.refused(wrong, TypeError)
            self.assertIn("returned a Deferred", str(failure))
            right = yield self.database.run("right", lambda connection: connection.exec_driver_sql("SELECT 1").scalar())
            self.assertEqual(right, 1)

    @inlineCallbacks
    def test_next_reads_indexes_without_sorting_the_tasks(self) -> Any:
        """task.next's statement reads each (priority, dated or not) head from an index: the only
        sort is of the eight heads, whatever the filters. (MariaDB plans by what the tables hold:
        its figure is in bench/README.rst.)"""
        from mcpd.stores.sql.tasks import _NEXT

        project = yield self.board.create_project(A, "web", None, "alice")
        for n in range(30):
            yield self.board.create_task(
                A,
                {
                    "project": "web",
                    "title": f"t{n}",
                    "priority": ("low", "normal", "high", "urgent")[n % 4],
                    "assignee": "a" if n % 3 else None,
                    "due": datetime.date(2026, 12, 1 + n % 28) if n % 2 else None,
                },
                "alice",
            )
        params = {"tenant": A, "project_id": project["id"], "assignee": "a"}

        def plans(connection: Any) -> list[list[str]]:
            found = []
            for (on_sqlite, _project, _assignee), (ready, _count) in _NEXT.items():
                if on_sqlite:
                    # Bound values as literals: EXPLAIN takes no parameters.
                    sql = ready.params(**params).compile(
                        dialect=connection.dialect, compile_kwargs={"literal_binds": True}
                    )
                    rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", ()).all()
                    found.append([" ".join(str(v) for v in row) for row in rows])
            return found

        found = yield self.database.run("explain", plans)
        self.assertEqual(len(found), 4)
        for plan in found:
            text = "\n".join(plan)
            # Rows are (id, parent, _, detail): no sort inside a head (a CO-ROUTINE), only of
            # the heads' rows.
            rows = [row.split(" ", 3) for row in plan]
            heads = {row[0] for row in rows if row[3].startswith("CO-ROUTINE")}
            self.assertFalse([row for row in rows if row[1] in heads and "TEMP B-TREE" in row[3]], text)
            self.assertNotIn("SCAN tasks", text)
            searches = text.count("USING INDEX ix_tasks_next") + text.count("USING INDEX ix_tasks_project_next")
            self.assertEqual(searches, 8, text)


class MariaDBStoreTests(_StoreSuite, TestCase):
    timeout = 60

    def config(self) -> DatabaseConfig:
        server = shared_mariadb()
        return mariadb_config(server, server.new_database())


class IdTests(SynchronousTestCase):
    def test_ids_are_unique_and_in_creation_order(self) -> None:
        from mcpd.stores.sql.ids import new_id

        ids = [new_id() for _ in range(5000)]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(len(set(ids)), len(ids))
        self.assertTrue(all(len(i) == 26 and i.isalnum() and i.islower() for i in ids))


class RankTests(SynchronousTestCase):
    def test_a_count_capped_at_half_the_notes_plus_one_weighs_the_same(self) -> None:
        """For every note count up to 200 and every count of notes holding a word, the word's
        count capped by `holding_cap` gives the same scores as the count itself."""
        row = ("id", "word in the title", "[]", "the word and others")
        for notes_count in range(1, 201):
            cap = holding_cap(notes_count)
            for holding in range(notes_count + 1):
                self.assertEqual(
                    rank([row], ["word"], [min(holding, cap)], notes_count, 30.0),
                    rank([row], ["word"], [holding], notes_count, 30.0),
                    (notes_count, holding),
                )
        self.assertEqual(holding_cap(40), 21)
        self.assertEqual(holding_cap(41), 21)


class SnippetTests(SynchronousTestCase):
    def test_terms(self) -> None:
        self.assertEqual(search_terms("Deploy, the DEPLOY checklist!"), ["deploy", "the", "checklist"])
        self.assertEqual(search_terms('"); DROP TABLE notes; --'), ["drop", "table", "notes"])

    def test_cut(self) -> None:
        body = " ".join(f"w{i}" for i in range(40)) + " target " + " ".join(f"x{i}" for i in range(40))
        snippet = cut_snippet(body, ["target"])
        self.assertIn("**target**", snippet)
        self.assertTrue(snippet.startswith("…") and snippet.endswith("…"))
        self.assertEqual(cut_snippet("short text", ["absent"]), "short text")

    def test_folded(self) -> None:
        """Words match without diacritics or case, as utf8mb4_unicode_ci matches them."""
        self.assertEqual(fold("Crème BRÛLÉE, ﬁne Straße"), "creme brulee, fine strasse")
        self.assertEqual(cut_snippet("Un Café noir, un cafe crème", ["cafe"]), "Un **Café** noir, un **cafe** crème")
        self.assertEqual(cut_snippet("Un café noir", ["CAFÉ"]), "Un **café** noir")
        row = ("id", "Café", "[]", "naïve café")
        ((score, _),) = rank([row], ["cafe", "naive"], [1, 1], 4, 10.0)
        self.assertEqual(score, rank([("id", "cafe", "[]", "naive cafe")], ["café", "naïve"], [1, 1], 4, 10.0)[0][0])
        self.assertGreater(score, 0)
        decomposed = ("id", "Cafe\u0301", "[]", "nai\u0308ve cafe\u0301 \u00bd")  # NFD, and "½" is "1", "2"
        for term in ("cafe", "naive", "2"):
            self.assertGreater(rank([decomposed], [term], [1], 4, 10.0)[0][0], 0, term)


# -- migrations ---------------------------------------------------------------------------------


class MigrationTests(TestCase):
    timeout = 60

    def _compare(self, config: DatabaseConfig) -> list[Any]:
        from alembic.autogenerate import compare_metadata
        from alembic.migration import MigrationContext

        from mcpd.stores.sql.schema import metadata

        engine = build_engine(config)
        try:
            migrate.upgrade(engine, config.shown_url)

            def ours(obj: Any, name: str | None, kind: str, reflected: bool, _compare_to: Any) -> bool:
                # The full-text index (FTS5 tables, FULLTEXT indexes) is migrations-only, as is
                # the version table.
                return not (name or "").startswith(("notes_fts", "ft_notes", migrate.VERSION_TABLE))

            with engine.connect() as connection:
                context = MigrationContext.configure(connection, opts={"include_object": ours, "compare_type": True})
                return list(compare_metadata(context, metadata))
        finally:
            engine.dispose()

    def test_schema_matches_the_tables_sqlite(self) -> None:
        self.assertEqual(self._compare(sqlite_config(self.mktemp())), [])

    def test_schema_matches_the_tables_mariadb(self) -> Deferred[None]:
        server = shared_mariadb()
        config = mariadb_config(server, server.new_database())
        return deferToThread(lambda: self.assertEqual(self._compare(config), []))

    def test_a_newer_database_is_refused(self) -> None:
        config = sqlite_config(self.mktemp())
        engine = build_engine(config)
        migrate.upgrade(engine, config.shown_url)
        with engine.begin() as connection:
            connection.exec_driver_sql(f"UPDATE {migrate.VERSION_TABLE} SET version_num = '9999'")
        engine.dispose()
        database = SQLDatabase(config, reactor)
        with self.assertRaises(migrate.SchemaTooNew) as caught:
            database.open()
        database.close()
        message = str(caught.exception)
        self.assertIn("schema revision 9999, newer than this mcpd knows", message)
        self.assertNotIn("\n", message)

    def test_head_is_the_newest_migration(self) -> None:
        # What a database at head is recognised by without loading Alembic (migrate.HEAD).
        self.assertEqual(migrate.HEAD, migrate.scripts().get_current_head())

    def test_a_database_at_head_opens_without_alembic(self) -> None:
        # Every start after the first: one query of the version table, no migration scripts.
        directory = self.mktemp()
        config = sqlite_config(directory)
        engine = build_engine(config)
        migrate.upgrade(engine, config.shown_url)
        engine.dispose()
        probe = (
            "import sys\n"
            "from twisted.internet import reactor\n"
            "from mcpd.stores.sql.config import DatabaseConfig, database_url\n"
            "from mcpd.stores.sql.database import SQLDatabase\n"
            "database = SQLDatabase(DatabaseConfig(url=database_url(None, sys.argv[1])), reactor)\n"
            "database.open()\n"
            "print(database.schema_revision, 'alembic' in sys.modules)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe, directory],
            capture_output=True,
            check=True,
            text=True,
            env=daemon_env(Path(directory)),
        )
        self.assertEqual(out.stdout.split(), [migrate.HEAD, "False"])

    def _race(self, config: DatabaseConfig) -> None:
        """Four engines upgrade one empty database at once: all succeed, once."""
        errors: list[BaseException] = []
        barrier = threading.Barrier(4)

        def start() -> None:
            engine = build_engine(config)
            try:
                barrier.wait()
                migrate.upgrade(engine, config.shown_url)
            except BaseException as e:  # noqa: BLE001 -- reported below
                errors.append(e)
            finally:
                engine.dispose()

        threads = [threading.Thread(target=start) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.assertEqual(errors, [])
        engine = build_engine(config)
        with engine.connect() as connection:
            state = migrate.schema_state(connection, config.shown_url)
            rows = connection.exec_driver_sql(f"SELECT COUNT(*) FROM {migrate.VERSION_TABLE}").scalar()
        engine.dispose()
        self.assertTrue(state.up_to_date)
        self.assertEqual(rows, 1)

    def test_concurrent_start_ups_sqlite(self) -> Deferred[None]:
        config = sqlite_config(self.mktemp())
        return deferToThread(self._race, config)

    def test_concurrent_start_ups_mariadb(self) -> Deferred[None]:
        server = shared_mariadb()
        config = mariadb_config(server, server.new_database())
        return deferToThread(self._race, config)

    @inlineCallbacks
    def test_notes_move_to_tenant_indexes(self) -> Any:
        """Revision 0007 moves SQLite's notes from the FTS5 table every tenant shared to one per
        tenant: notes saved before it are found after it, each tenant's by its own ranking; its
        downgrade rebuilds the shared table."""
        from alembic import command

        config = sqlite_config(self.mktemp())
        engine = build_engine(config)

        def at(revision: str, down: bool = False) -> None:
            with engine.connect() as connection:
                (command.downgrade if down else command.upgrade)(migrate._config(connection), revision)
                connection.commit()

        yield deferToThread(at, "0006_kb")
        with engine.begin() as connection:
            for n, (tenant, title) in enumerate([(A, "deploy plan"), (A, "lunch"), (B, "deploy deploy")]):
                connection.exec_driver_sql(
                    "INSERT INTO notes (id, tenant, title, body, tags, created_at, updated_at, created_by) "
                    "VALUES (?, ?, ?, 'body text', '[]', '2026-11-30 00:00:00', '2026-11-30 00:00:00', 'a')",
                    (f"n{n}", tenant, title),
                )
        engine.dispose()
        database = SQLDatabase(config, reactor)
        service = SQLStoreService(database, reactor)
        service.startService()
        store = SQLNoteStore(database)
        try:
            found, _, _ = yield store.search_notes(A, "deploy", None, 10)
            self.assertEqual([note["id"] for note in found], ["n0"])
            theirs, _, _ = yield store.search_notes(B, "deploy", None, 10)
            self.assertEqual([note["id"] for note in theirs], ["n2"])
            # A tenant's only note holding the word scores as in an index of its own notes.
            alone = SQLDatabase(sqlite_config(self.mktemp()), reactor)
            alone_service = SQLStoreService(alone, reactor)
            alone_service.startService()
            self.addCleanup(alone_service.stopService)
            yield SQLNoteStore(alone).save_note(A, {"title": "deploy plan", "body": "body text"}, "a")
            yield SQLNoteStore(alone).save_note(A, {"title": "lunch", "body": "body text"}, "a")
            again, _, _ = yield SQLNoteStore(alone).search_notes(A, "deploy", None, 10)
            self.assertEqual(found[0]["score"], again[0]["score"])
        finally:
            yield service.stopService()
        yield deferToThread(at, "0006_kb", down=True)
        with engine.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT notes.id FROM notes_fts JOIN notes ON notes.seq = notes_fts.rowid "
                "WHERE notes_fts MATCH 'deploy' ORDER BY notes.id"
            ).all()
            tables = connection.exec_driver_sql("SELECT name FROM sqlite_master WHERE name LIKE 'notes_fts_%'").all()
        engine.dispose()
        self.assertEqual([row[0] for row in rows], ["n0", "n2"])
        self.assertEqual([name for (name,) in tables if len(name) > 30], [])

    @inlineCallbacks
    def note_lengths(self, config: DatabaseConfig) -> Any:
        """Revision 0008 gives every note its length in characters (not bytes), kept on save;
        its downgrade keeps every note and its tags."""
        from alembic import command

        engine = build_engine(config)
        self.addCleanup(engine.dispose)

        def at(revision: str, down: bool = False) -> None:
            with engine.connect() as connection:
                (command.downgrade if down else command.upgrade)(migrate._config(connection), revision)
                connection.commit()

        def rows(query: str) -> list[tuple[Any, ...]]:
            with engine.connect() as connection:
                return [tuple(row) for row in connection.exec_driver_sql(query).all()]

        yield deferToThread(at, "0007")
        now = datetime.datetime(2026, 11, 30)
        with engine.begin() as connection:
            for n, (title, body) in enumerate([("café", "naïve ☃ text"), ("plain", "x" * 70_000)]):
                connection.execute(
                    notes_table.insert().values(
                        id=f"n{n}",
                        tenant=A,
                        title=title,
                        body=body,
                        tags="[]",
                        created_at=now,
                        updated_at=now,
                        created_by="a",
                    )
                )
                connection.exec_driver_sql(f"INSERT INTO note_tags VALUES ('n{n}', '{A}', 'ops')")
        yield deferToThread(at, "heads")
        self.assertEqual(rows("SELECT id, length FROM notes ORDER BY id"), [("n0", 16), ("n1", 70_005)])
        yield deferToThread(at, "0007", down=True)
        self.assertEqual(rows("SELECT id, title FROM notes ORDER BY id"), [("n0", "café"), ("n1", "plain")])
        self.assertEqual(rows("SELECT note_id, tag FROM note_tags ORDER BY note_id"), [("n0", "ops"), ("n1", "ops")])
        yield deferToThread(at, "heads")
        engine.dispose()
        database = SQLDatabase(config, reactor)
        service = SQLStoreService(database, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        store = SQLNoteStore(database)
        saved = yield store.save_note(A, {"title": "é", "body": "☃☃"}, "a")
        changed = yield store.save_note(A, {"id": saved["id"], "title": "ünï", "body": "çödé 😀"}, "a")
        added = yield store.save_note(A, {"title": "é", "body": "☃☃"}, "a")
        found = yield database.run("lengths", lambda c: c.exec_driver_sql("SELECT id, length FROM notes").all())
        self.assertEqual(
            sorted(tuple(row) for row in found),
            sorted([("n0", 16), ("n1", 70_005), (changed["id"], 9), (added["id"], 3)]),
        )

    def test_note_lengths_sqlite(self) -> Deferred[None]:
        return self.note_lengths(sqlite_config(self.mktemp()))

    def test_note_lengths_mariadb(self) -> Deferred[None]:
        server = shared_mariadb()
        return self.note_lengths(mariadb_config(server, server.new_database()))

    def test_migrate_command(self) -> Deferred[None]:
        """``mcpd migrate --check`` says what is pending (exit 1); ``mcpd migrate`` applies it."""
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir()
        env = daemon_env(workdir, {"DATA_DIR": str(workdir / "data")})

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [MCPD, "migrate", *args], env=env, cwd=workdir, capture_output=True, text=True, timeout=60
            )

        def check() -> None:
            before = run("--check")
            self.assertEqual(before.returncode, 1, before)
            self.assertIn("needs", before.stdout + before.stderr)
            applied = run()
            self.assertEqual(applied.returncode, 0, applied)
            self.assertIn(f"at {migrate.scripts().get_current_head()}", applied.stdout)
            after = run("--check")
            self.assertEqual(after.returncode, 0, after)
            self.assertIn("up to date", after.stdout)

        return deferToThread(check)

    def test_migrate_and_reindex_read_the_password_file(self) -> Deferred[None]:
        """``mcpd migrate`` and ``mcpd reindex`` read --db-password-file as the daemon does
        (`read_secrets`): the password reaches MariaDB, and a file that cannot be read stops
        either command with one line naming it, before anything is reached."""
        server = shared_mariadb()
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir()
        env = daemon_env(workdir, {"DATA_DIR": str(workdir / "data")})
        password_file = workdir / "db-password"
        password_file.write_text(PASSWORD + "\n")
        missing = workdir / "no-such-file"

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([MCPD, *args], env=env, cwd=workdir, capture_output=True, text=True, timeout=60)

        def check() -> None:
            url = f"--db-url={server.url(server.new_database())}"
            applied = run("migrate", url, f"--db-password-file={password_file}")
            self.assertEqual(applied.returncode, 0, applied)
            self.assertIn(f"at {migrate.scripts().get_current_head()}", applied.stdout)
            # The daemon's other password files, in the environment (or the --config file)
            # they share, are not theirs to read: unreadable here, they stop neither.
            others = {
                "REDIS_URL": "redis://127.0.0.1:1/0",
                "REDIS_PASSWORD_FILE": str(missing),
                "SQL_PASSWORD_FILES": f"crm={missing}",
            }
            env.update(others)
            for command in ("migrate", "reindex"):
                done = run(command, url, f"--db-password-file={password_file}")
                self.assertEqual(done.returncode, 0, done)
            for command in ("migrate", "reindex"):
                refused = run(command, url, f"--db-password-file={missing}")
                self.assertEqual(refused.returncode, 2, refused)
                self.assertEqual(
                    refused.stderr,
                    f"mcpd {command}: --db-password-file {missing}: cannot read it (No such file or directory)\n",
                )
                self.assertEqual(refused.stdout, "")

        return deferToThread(check)


# -- configuration ------------------------------------------------------------------------------


class ConfigTests(SynchronousTestCase):
    def test_default_is_sqlite_in_a_private_data_dir(self) -> None:
        data = Path(self.mktemp()) / "data"
        url = database_url(None, str(data))
        self.assertEqual(url.get_backend_name(), "sqlite")
        self.assertEqual(Path(url.database or ""), (data / "mcpd.sqlite3").resolve())
        self.assertEqual(stat.S_IMODE(os.stat(data).st_mode), 0o700)

    def test_password_never_shown(self) -> None:
        url = database_url("mysql://mcpd@db.example:3306/team", "unused", "s3cret")
        config = DatabaseConfig(url=url)
        self.assertEqual(url.password, "s3cret")
        self.assertEqual(url.drivername, "mysql+pymysql")
        self.assertEqual(url.query["charset"], "utf8mb4")
        self.assertNotIn("s3cret", config.shown_url)
        self.assertNotIn("s3cret", repr(config))
        with_password = database_url("mysql+pymysql://mcpd:inurl@db/team", "unused")
        self.assertNotIn("inurl", DatabaseConfig(url=with_password).shown_url)
        self.assertNotIn("inurl", repr(Settings(db_url="mysql+pymysql://mcpd:inurl@db/team", db_password="x")))

    def test_options(self) -> None:
        """The default serves every pack whose store runs; an unusable data directory or URL stops
        start-up with one line; a daemon without a SQL-backed pack has no SQL store."""
        from twisted.python import usage

        from mcpd.daemon import load_packs, needs_sql
        from mcpd.tap import Options

        defaults = Settings()
        # The kb and memory packs too: the tests' environment has pymilvus and Milvus Lite.
        self.assertEqual(
            [pack.name for pack in load_packs(defaults)], ["server", "tasks", "notes", "cache", "kb", "memory"]
        )
        self.assertTrue(needs_sql(load_packs(defaults)))
        self.assertFalse(needs_sql(load_packs(Settings(toolsets=("server",)))))
        for args, says in (
            (["--data-dir", "/proc/no/such/dir"], "--data-dir /proc/no/such/dir: cannot create it"),
            (["--db-url", "postgresql://u@h/db"], "--db-url: must be a sqlite:/// or mysql+pymysql:// URL"),
            (["--db-url", "mysql://u@h/db", "--db-password-file", "/no/such/file"], "--db-password-file /no/such/file"),
        ):
            with self.assertRaises(usage.UsageError) as caught:
                Options().parseOptions(["--stdio", *args])
            self.assertIn(says, str(caught.exception))

    def test_bad_urls(self) -> None:
        for url, says in (
            ("sqlite://", "in-memory"),
            ("sqlite:///:memory:", "in-memory"),
            ("mysql+pymysql://u@h/", "name the database"),
            ("postgresql://u@h/db", "not supported"),
            ("::::", "not a database URL"),
        ):
            with self.assertRaises(DatabaseConfigError) as caught:
                database_url(url, "unused")
            self.assertIn(says, str(caught.exception), url)


# -- the MariaDB fixture ------------------------------------------------------------------------


class MariaDBFixtureTests(TestCase):
    """When the test server cannot be set up, the failure shows what the installer or the server
    said (tests.services)."""

    timeout = 120

    def test_installer_failure_shows_its_output(self) -> Deferred[None]:
        server = MariaDB()
        self.addCleanup(server.destroy)
        server.datadir.write_text("not a directory")
        failure = self.failUnlessFailure(deferToThread(server.start), RuntimeError)
        return failure.addCallback(
            lambda e: (
                self.assertIn("mariadb-install-db", str(e)),
                self.assertIn("exited with status", str(e)),
                self.assertGreater(len(str(e).partition("its output:\n")[2].strip()), 0, str(e)),
            )
        )

    def test_server_failure_shows_its_output(self) -> Deferred[None]:
        taken = shared_mariadb().port
        server = MariaDB()
        self.addCleanup(server.destroy)
        server.port = taken  # mariadbd cannot bind it
        failure = self.failUnlessFailure(deferToThread(server.start), RuntimeError)
        return failure.addCallback(
            lambda e: (
                self.assertIn("exited with status", str(e)),
                self.assertIn(str(taken), str(e)),
                self.assertIn("ind", str(e)),
            )
        )


# -- an outage ----------------------------------------------------------------------------------


class OutageTests(TestCase):
    """A real MariaDB server stopped under the store, then started again."""

    timeout = 120

    @inlineCallbacks
    def test_down_then_back(self) -> Any:
        server = MariaDB()
        self.addCleanup(server.destroy)
        yield deferToThread(server.start)
        config = mariadb_config(server, server.new_database(), timeout=2.0)
        database = SQLDatabase(config, reactor)
        service = SQLStoreService(database, reactor)
        yield deferToThread(database.open)
        for threads in service.threads:
            threads.startService()
        self.addCleanup(service.stopService)
        board = SQLTaskBoard(database)
        yield board.create_project(A, "web", None, "alice")
        yield deferToThread(server.stop)
        started = reactor.seconds()
        failure = yield self.failUnlessFailure(board.list_projects(A, 10, None), StoreUnavailable)
        self.assertIn("database is unavailable (temporary)", str(failure))
        self.assertIn("try again in a few seconds", str(failure).lower())
        self.assertLess(reactor.seconds() - started, 10)
        health = yield database.check()
        self.assertEqual(health.state, "down")
        self.assertEqual(database.status().state, "down")
        self.assertEqual(database.describe()["state"], "down")
        # Within the retry interval calls fail at once, without waiting on the network.
        yield self.failUnlessFailure(board.list_projects(A, 10, None), StoreUnavailable)
        # A statement on the driver's own connection (note.search) is classified alike.
        yield deferLater(reactor, 1.1, lambda: None)  # past the retry interval: it tries
        failure = yield self.failUnlessFailure(SQLNoteStore(database).search_notes(A, "x", None, 10), StoreUnavailable)
        self.assertIn("database is unavailable (temporary)", str(failure))
        yield deferToThread(server.start)
        for _attempt in range(50):
            try:
                page, _ = yield board.list_projects(A, 10, None)
                break
            except StoreUnavailable:
                yield deferLater(reactor, 0.2, lambda: None)
        else:
            raise AssertionError("the store did not come back after the server did")
        self.assertEqual([p["name"] for p in page], ["web"])
        self.assertEqual((yield database.check()).state, "up")
        self.assertEqual((yield SQLNoteStore(database).search_notes(A, "x", None, 10)), ([], False, []))


class BusyProbeTests(TestCase):
    """The health probe has its own thread and connection: readers busy with slow work do not
    make it time out, and a probe that does time out while the store is busy says degraded,
    without refusing the calls that follow."""

    timeout = 60

    def setUp(self) -> None:
        # One reader thread, one writer thread; the probe waits at most 0.5 s.
        config = sqlite_config(self.mktemp(), pool_size=2, max_overflow=0, timeout=0.5)
        self.database = SQLDatabase(config, reactor)
        service = SQLStoreService(self.database, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.board = SQLTaskBoard(self.database)
        self.release = threading.Event()
        self.addCleanup(self.release.set)

    def hold(self, count: int) -> list[Deferred[Any]]:
        """``count`` reads that keep their thread until `release` is set."""
        return [self.database.run("hold", lambda _connection: self.release.wait(30)) for _ in range(count)]

    @inlineCallbacks
    def test_probe_does_not_wait_behind_readers(self) -> Any:
        held = self.hold(self.database.pool.count + 2)  # every reader busy, two more queued
        yield deferLater(reactor, 0.1, lambda: None)
        status = yield self.database.check()
        self.assertEqual((status.state, status.detail), ("up", "sqlite " + str(self.database.server_version)))
        self.assertEqual(self.database.state, "ok")
        # An unrelated call is not refused as "database is unavailable".
        project = yield self.board.create_project(A, "web", None, "alice")
        self.assertEqual(project["name"], "web")
        self.release.set()
        yield DeferredList(held, fireOnOneErrback=True)
        page, _ = yield self.board.list_projects(A, 10, None)
        self.assertEqual([p["name"] for p in page], ["web"])

    @inlineCallbacks
    def test_probe_timeout_while_busy_is_degraded(self) -> Any:
        prober = self.database.prober
        stuck = prober.submit(self.release.wait, 30)  # the probe's own thread, held too
        held = self.hold(self.database.pool.count + 2)
        yield deferLater(reactor, 0.1, lambda: None)
        status = yield self.database.check()
        self.assertEqual(status.state, "degraded")
        self.assertIn("no answer within 0.5s", status.detail)
        self.assertIn("1 call(s) running, 2 waiting for a thread", status.detail)
        self.assertEqual(self.database.state, "ok")
        self.assertEqual(self.database.status().state, "up")
        # A second probe times out too; neither stays queued once the thread is free.
        self.assertEqual((yield self.database.check()).state, "degraded")
        project = yield self.board.create_project(A, "web", None, "alice")
        self.assertEqual(project["name"], "web")
        self.release.set()
        yield DeferredList([stuck, *held], fireOnOneErrback=True)
        self.assertEqual((yield self.database.check()).state, "up")
        self.assertEqual(prober.qsize(), 0)

    @inlineCallbacks
    def test_queue_depth_counts_the_store_calls_alone(self) -> Any:
        """mcp_db_queue_depth is the calls waiting for the store's threads: probes queued behind
        a stuck probe are not store calls (they made a stuck database look like a busy store)."""

        def depth() -> float:
            gauges = {metric.name: metric for metric in self.database.metrics.collect()}
            return float(gauges["mcp_db_queue_depth"].samples[0].value)

        prober = self.database.prober
        stuck = prober.submit(self.release.wait, 30)
        queued = [prober.submit(lambda: None) for _ in range(3)]
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(prober.qsize(), 3)
        self.assertEqual(depth(), 0.0)
        held = self.hold(self.database.pool.count + 2)
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(depth(), 2.0)
        self.release.set()
        yield DeferredList([stuck, *queued, *held], fireOnOneErrback=True)
        self.assertEqual(depth(), 0.0)


class MariaDBSearchTests(TestCase):
    """note.search on a real MariaDB server: InnoDB's FULLTEXT index finds candidates, BM25 over
    the tenant's statistics orders them."""

    def setUp(self) -> None:
        server = shared_mariadb()
        self.database = SQLDatabase(mariadb_config(server, server.new_database()), reactor)
        service = SQLStoreService(self.database, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.notes = SQLNoteStore(self.database)

    @inlineCallbacks
    def save_all(self, tenant: str, batch: list[dict[str, Any]]) -> Any:
        for note in batch:
            yield self.notes.save_note(tenant, note, "alice")

    @inlineCallbacks
    def test_words_innodb_does_not_index_weigh_nothing(self) -> None:
        """ "the" is an InnoDB stopword: it finds nothing, so it must not count as the rarest word
        (SQLite ranks "kubernetes kubernetes" first too)."""
        filler = "Lorem ipsum dolor sit amet."
        yield self.save_all(
            A,
            [
                {"title": "One", "body": f"{filler} the the the kubernetes"},
                {"title": "Two", "body": f"{filler} kubernetes kubernetes"},
                *({"title": f"Other {n}", "body": filler} for n in range(4)),
            ],
        )
        found, _, _ = yield self.notes.search_notes(A, "the kubernetes", None, 10)
        self.assertEqual([note["title"] for note in found], ["Two", "One"])
        self.assertEqual((yield self.notes.search_notes(A, "the a", None, 10)), ([], False, []))

    @inlineCallbacks
    def test_statistics_from_the_length_index(self) -> None:
        """A search's statistics are two statements: the notes and their mean length from the
        (tenant, length) index, not every note's body, then the notes holding each word; the
        scores are BM25's."""
        yield self.save_all(A, [{"title": f"doc {n}", "body": "alpha beta gamma " * (n + 1)} for n in range(6)])
        yield self.save_all(A, [{"title": "other", "body": "delta"}])
        yield self.notes.search_notes(A, "alpha", None, 10)  # InnoDB's token rules, read once

        def selects(connection: Any) -> int:
            return int(connection.execute(text("SHOW GLOBAL STATUS LIKE 'Com_select'")).one()[1])

        before = yield self.database.run("status", selects)
        found, _, _ = yield self.notes.search_notes(A, "alpha beta gamma", None, 10)
        after = yield self.database.run("status", selects)
        # The candidates, their rows, the statistics, the words' counts.
        self.assertEqual(after - before, 4)
        self.assertEqual(len(found), 6)
        lengths = [len(f"doc {n}") + len("alpha beta gamma " * (n + 1)) for n in range(6)] + [len("other") + 5]
        mean = sum(lengths) / len(lengths)
        weight = math.log((7 - 6 + 0.5) / (6 + 0.5))
        weight = max(weight, 1e-6)
        best = 3 * weight * 6 * 2.2 / (6 + 1.2 * (0.25 + 0.75 * lengths[5] / mean))
        self.assertAlmostEqual(found[0]["score"], round(best, 6), places=5)

        def plan(connection: Any) -> list[Any]:
            cursor = connection.connection.driver_connection.cursor()
            cursor.execute("EXPLAIN " + _MYSQL_NOTES, {"tenant": A})
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

        rows = yield self.database.run("explain", plan)
        (only,) = rows
        self.assertEqual(only["key"], "ix_notes_tenant_length", rows)
        self.assertIn("Using index", only["Extra"], rows)

    @inlineCallbacks
    def test_counts_capped_at_half_the_notes_rank_as_counted_in_full(self) -> None:
        """Each word's notes are counted up to half the tenant's notes + 1: on notes whose words
        are held by all, most, about half, and few of them, every query's ranking and scores are
        those of the counts in full (the statement before the cap), and the count of a word
        held by most notes did stop at the cap."""
        for total in (40, 41):  # half is a note count, then between two
            tenant = f"t{total}"
            held = {
                "everywhere": total,
                "most": total - 4,
                "below": total // 2 - 1,
                "half": total // 2,
                "above": total // 2 + 1,
                "rare": 3,
            }
            yield self.save_all(
                tenant,
                [
                    {
                        "title": f"note {n}" + (" rare" if n % 7 == 0 else ""),
                        "body": " ".join([word for word, count in held.items() if n < count] * (1 + n % 3))
                        + " filler" * (n % 5),
                    }
                    for n in range(total)
                ],
            )
            for query in ("everywhere", "most rare", "below half above", "above", "half", "rare everywhere below"):
                terms = search_terms(query)
                found, _, _ = yield self.notes.search_notes(tenant, query, None, 100)

                def in_full(connection: Any, terms: list[str] = terms, tenant: str = tenant) -> Any:
                    count, mean = connection.execute(
                        text("SELECT COUNT(*), AVG(length) FROM notes WHERE tenant = :t"), {"t": tenant}
                    ).one()
                    holding = [
                        connection.execute(
                            text(
                                "SELECT COUNT(*) FROM notes WHERE tenant = :t AND MATCH(title, body) "
                                "AGAINST (:w IN BOOLEAN MODE)"
                            ),
                            {"t": tenant, "w": term},
                        ).scalar()
                        for term in terms
                    ]
                    rows = connection.execute(
                        text("SELECT id, title, tags, body FROM notes WHERE tenant = :t"), {"t": tenant}
                    ).all()
                    return rank(rows, terms, holding, count, float(mean)), holding, count

                ranked, holding, count = yield self.database.run("in full", in_full)
                expected = [(row[0], round(score, 6)) for score, row in ranked if score > 0]
                self.assertEqual([(note["id"], note["score"]) for note in found], expected, query)
                if "everywhere" in terms:
                    self.assertGreater(holding[terms.index("everywhere")], holding_cap(count))

            def capped(connection: Any, tenant: str = tenant, total: int = total) -> Any:
                cursor = connection.connection.driver_connection.cursor()
                words = {"tenant": tenant, "w0": "everywhere", "w1": "above", "w2": "rare", "cap": holding_cap(total)}
                cursor.execute(_mysql_holding(3), words)
                return cursor.fetchone()

            # rare: notes 0-2 and every seventh (0, 7, ..., 35).
            self.assertEqual((yield self.database.run("capped", capped)), (21, 21, 8))

    @inlineCallbacks
    def test_a_tag_filter_does_not_move_scores(self) -> None:
        """How many notes hold a word is counted over all the tenant's notes, whatever the tag."""
        filler = "lorem ipsum dolor sit amet"
        yield self.save_all(
            A,
            [
                {
                    "title": f"doc {n}",
                    "body": f"{filler} {'deploy' if n < 4 else 'nothing'}",
                    "tags": ["ops"] if n in (0, 5) else [],
                }
                for n in range(6)
            ],
        )
        everything, _, _ = yield self.notes.search_notes(A, "deploy", None, 10)
        tagged, _, _ = yield self.notes.search_notes(A, "deploy", "ops", 10)
        self.assertEqual(len(everything), 4)
        self.assertEqual(tagged, [note for note in everything if note["title"] == "doc 0"])

    @inlineCallbacks
    def test_work_is_bounded_by_the_candidates(self) -> None:
        """5,000 notes holding the word: the server sends the store the `CANDIDATES` best seqs and rows
        (and some of statistics and status), not every match; the page is still ranked and full."""
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        body = "alpha beta gamma delta " * 20
        rows = [
            {
                "id": f"n{n:09d}",
                "tenant": A,
                "title": f"alpha note {n}",
                "body": body,
                "tags": "[]",
                "created_at": now,
                "updated_at": now,
                "created_by": "alice",
            }
            for n in range(5000)
        ]

        def insert(connection: Any) -> None:
            connection.execute(notes_table.insert(), rows)

        yield self.database.run("bulk", insert, write=True)

        def rows_sent(connection: Any) -> int:
            return int(connection.execute(text("SHOW GLOBAL STATUS LIKE 'Rows_sent'")).one()[1])

        before = yield self.database.run("status", rows_sent)
        found, more, _ = yield self.notes.search_notes(A, "alpha", None, 10)
        after = yield self.database.run("status", rows_sent)
        self.assertEqual((len(found), more), (10, True))
        self.assertLessEqual(after - before, 2 * CANDIDATES + 100)
        # A deep page ranks as many as it needs, up to MAX_DEPTH; past that, an empty page, not a scan.
        shown = frozenset(f"{n:012d}" for n in range(MAX_DEPTH - 20))
        before = yield self.database.run("status", rows_sent)
        found, more, _ = yield self.notes.search_notes(A, "alpha", None, 10, shown)
        after = yield self.database.run("status", rows_sent)
        self.assertEqual((len(found), more), (10, True))
        self.assertLessEqual(after - before, 2 * MAX_DEPTH + 100)
        shown = frozenset(f"{n:012d}" for n in range(MAX_DEPTH))
        self.assertEqual((yield self.notes.search_notes(A, "alpha", None, 10, shown)), ([], False, []))

    @inlineCallbacks
    def test_pages_reach_the_documented_depth(self) -> None:
        """560 notes holding the word, pages of 100: all 560, each once, then no cursor (the
        candidates stopped at 500 and the sixth page came back empty)."""
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        texts = [(f"deploy note {n}", "deploy " * (1 + n % 9) + "filler text " * (n % 5)) for n in range(560)]
        rows = [
            {
                "id": f"n{n:09d}",
                "tenant": A,
                "title": title,
                "body": body,
                "length": len(title) + len(body),
                "tags": "[]",
                "created_at": now,
                "updated_at": now,
                "created_by": "alice",
            }
            for n, (title, body) in enumerate(texts)
        ]

        def insert(connection: Any) -> None:
            connection.execute(notes_table.insert(), rows)

        yield self.database.run("bulk", insert, write=True)
        seen: list[str] = []
        shown: frozenset[str] = frozenset()
        for _ in range(6):
            found, more, now_shown = yield self.notes.search_notes(A, "deploy", None, 100, shown)
            seen += [note["id"] for note in found]
            shown = frozenset(now_shown)
            if not more:
                break
        self.assertEqual((len(seen), len(set(seen)), more), (560, 560, False))
