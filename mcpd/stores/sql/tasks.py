# -*- test-case-name: tests.test_sqlstore -*-
"""The task board on SQL: projects, tasks, tags, dependencies, comments (`ITaskBoard`)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Row, bindparam, func, or_, select, text, union_all
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from twisted.internet.defer import Deferred
from zope.interface import implementer

from mcpd.interfaces import RESOLVED_STATUSES as RESOLVED
from mcpd.interfaces import TASK_PRIORITIES as PRIORITIES
from mcpd.interfaces import TASK_STATUSES as STATUSES
from mcpd.interfaces import Conflict, ITaskBoard, NotFound
from mcpd.stores.sql.database import RawConnection, SQLDatabase
from mcpd.stores.sql.ids import new_id
from mcpd.stores.sql.schema import projects, task_comments, task_deps, task_tags, tasks

UNFINISHED = ("open", "in_progress", "blocked")
# How many comments and blocked tasks task.get shows (the newest).
SHOWN = 100

# Statements used on every call are built once (building one costs more than running it on
# SQLite: a task.list spent half its time constructing selects); parameters are bound per call.
_TASKS = select(*tasks.c, projects.c.name.label("project_name")).join(projects, projects.c.id == tasks.c.project_id)
_FIND_PROJECT = select(projects).where(
    projects.c.tenant == bindparam("tenant"),
    or_(projects.c.id == bindparam("reference"), projects.c.name == bindparam("reference")),
)
_DEPS_OF = (
    select(task_deps.c.task_id, task_deps.c.depends_on)
    .where(task_deps.c.task_id.in_(bindparam("ids", expanding=True)))
    .order_by(task_deps.c.depends_on)
)
_FIND_PROJECT_REF = select(projects.c.id, projects.c.name).where(
    projects.c.tenant == bindparam("tenant"),
    or_(projects.c.id == bindparam("reference"), projects.c.name == bindparam("reference")),
)
_INSERT_TASK = tasks.insert()
_INSERT_TASK_TAGS = task_tags.insert()
_INSERT_DEPS = task_deps.insert()


def utcnow() -> datetime.datetime:
    """Now, in UTC, as stored (naive: every stored time is UTC)."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def iso(when: datetime.datetime | str | None) -> str | None:
    """A stored time as the contract shows it: ``2026-11-29T12:00:00Z`` (from a datetime, or
    from SQLite's text read through the driver: ``2026-11-29 12:00:00.000000``)."""
    if when is None:
        return None
    if isinstance(when, str):
        return f"{when[:10]}T{when[11:19]}Z"
    # isoformat is C code; strftime took 8% of a task.list call.
    return when.isoformat(timespec="seconds") + "Z"


def like_prefix(prefix: str) -> str:
    """A LIKE pattern matching what starts with ``prefix`` (its wildcards escaped with ``\\``)."""
    return _escape_like(prefix) + "%"


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def replace_tags(
    connection: Connection, table: Any, owner: str, owner_id: str, tenant: str, tags: Iterable[str], new: bool = False
) -> None:
    """Make ``tags`` the tags of one record (in ``table``: task_tags or note_tags); a ``new``
    record has none to delete (and a DELETE of absent rows would take a gap lock on InnoDB that
    deadlocks concurrent inserts)."""
    delete, insert = _TAG_STATEMENTS.get(table.name) or _tag_statements(table, owner)
    if not new:
        connection.execute(delete, {"owner": owner_id})
    rows = [{owner: owner_id, "tenant": tenant, "tag": tag} for tag in dict.fromkeys(tags)]
    if rows:
        connection.execute(insert, rows)


# A tag table's name -> its DELETE (of one owner's tags) and INSERT, built once.
_TAG_STATEMENTS: dict[str, tuple[Any, Any]] = {}


def _tag_statements(table: Any, owner: str) -> tuple[Any, Any]:
    statements = _TAG_STATEMENTS[table.name] = (
        table.delete().where(table.c[owner] == bindparam("owner")),
        table.insert(),
    )
    return statements


@implementer(ITaskBoard)
class SQLTaskBoard:
    """`ITaskBoard` on one `SQLDatabase`."""

    def __init__(self, database: SQLDatabase) -> None:
        self.database = database

    # -- projects -------------------------------------------------------------------------------

    def create_project(self, tenant: str, name: str, description: str | None, author: str) -> Deferred[dict[str, Any]]:
        def work(connection: Connection) -> dict[str, Any]:
            row = {
                "id": new_id(),
                "tenant": tenant,
                "name": name,
                "description": description,
                "created_at": utcnow(),
                "created_by": author,
            }
            try:
                connection.execute(projects.insert(), row)
            except IntegrityError:
                raise Conflict(
                    f"a project named {name!r} already exists: use it (project.list shows it), or pick another name"
                ) from None
            return _project(row)

        return self.database.run("project.create", work, write=True)

    def list_projects(
        self, tenant: str, limit: int, after: str | None
    ) -> Deferred[tuple[list[dict[str, Any]], str | None]]:
        def work(connection: Connection) -> tuple[list[dict[str, Any]], str | None]:
            query = select(projects).where(projects.c.tenant == tenant)
            if after is not None:
                query = query.where(projects.c.name > after)
            rows = connection.execute(query.order_by(projects.c.name).limit(limit + 1)).all()
            page = rows[:limit]
            counts: dict[tuple[str, str], int] = {}
            if page:
                by_status = (
                    select(tasks.c.project_id, tasks.c.status, func.count())
                    .where(tasks.c.tenant == tenant, tasks.c.project_id.in_([row.id for row in page]))
                    .group_by(tasks.c.project_id, tasks.c.status)
                )
                counts = {(project, status): count for project, status, count in connection.execute(by_status)}
            listed = []
            for row in page:
                project = _project(row._mapping)
                project["open_tasks"] = sum(counts.get((row.id, status), 0) for status in UNFINISHED)
                project["done_tasks"] = counts.get((row.id, "done"), 0)
                listed.append(project)
            return listed, (page[-1].name if len(rows) > limit else None)

        return self.database.run("project.list", work)

    def project_names(self, tenant: str, prefix: str, limit: int) -> Deferred[list[str]]:
        def work(connection: Connection) -> list[str]:
            query = (
                select(projects.c.name)
                .where(projects.c.tenant == tenant, projects.c.name.like(like_prefix(prefix), escape="\\"))
                .order_by(projects.c.name)
                .limit(limit)
            )
            return list(connection.execute(query).scalars())

        return self.database.run("project.complete", work)

    # -- tasks ----------------------------------------------------------------------------------

    def create_task(self, tenant: str, task: dict[str, Any], author: str) -> Deferred[dict[str, Any]]:
        # The busiest write: on the driver's own connection (SQLAlchemy's execution path cost
        # more than SQLite's work).
        def work(connection: RawConnection) -> dict[str, Any]:
            project_id, project_name = _project_ref(connection, tenant, task["project"])
            depends_on = list(dict.fromkeys(task.get("depends_on") or ()))
            if depends_on:
                found = {
                    row[0] for row in connection.execute(_known_ids(len(depends_on)), _id_params(tenant, depends_on))
                }
                _refuse_unknown(depends_on, found, "depends_on")
            now = utcnow()
            tags = list(dict.fromkeys(task.get("tags") or ()))
            row = {
                "id": new_id(),
                "tenant": tenant,
                "project_id": project_id,
                "title": task["title"],
                "description": task.get("description"),
                "status": "open",
                "priority": PRIORITIES.index(task.get("priority") or "normal"),
                "assignee": task.get("assignee"),
                "due": task.get("due"),
                "tags": json.dumps(tags),
                "version": 1,
                "created_at": now,
                "created_by": author,
                "updated_at": now,
            }
            connection.execute(_INSERT_TASK, connection.stored(row))
            if tags:
                connection.executemany(
                    _INSERT_TASK_TAGS, [{"task_id": row["id"], "tenant": tenant, "tag": tag} for tag in tags]
                )
            if depends_on:
                connection.executemany(
                    _INSERT_DEPS, [{"task_id": row["id"], "depends_on": d, "tenant": tenant} for d in depends_on]
                )
            return _task({**row, "project_name": project_name}, depends_on)

        return self.database.run_raw("task.create", work, write=True)

    def list_tasks(
        self, tenant: str, filters: dict[str, Any], limit: int, after: str | None
    ) -> Deferred[tuple[list[dict[str, Any]], str | None]]:
        # The busiest read: on the driver's own connection (see create_task).
        def work(connection: RawConnection) -> tuple[list[dict[str, Any]], str | None]:
            params: dict[str, Any] = {"tenant": tenant, "limit": limit + 1, "after": after}
            used = frozenset(name for name in _LIST_FILTERS if filters.get(name)) | (
                {"after"} if after is not None else set()
            )
            if "project" in used:
                params["project_id"] = _project_ref(connection, tenant, filters["project"])[0]
            for name in ("status", "assignee", "tag"):
                params[name] = filters.get(name)
            if "query" in used:
                params["pattern"] = "%" + _escape_like(filters["query"]) + "%"
            cursor = connection.execute(_list_statement(used), params)
            names = [column[0] for column in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            page = rows[:limit]
            deps: dict[str, list[str]] = {}
            if page:
                ids = [row["id"] for row in page]
                for task_id, depends_on in connection.execute(_deps_of_ids(len(ids)), _id_params(tenant, ids)):
                    deps.setdefault(task_id, []).append(depends_on)
            listed = [_task(row, deps.get(row["id"], [])) for row in page]
            return listed, (page[-1]["id"] if len(rows) > limit else None)

        return self.database.run_raw("task.list", work)

    def get_task(self, tenant: str, task_id: str) -> Deferred[dict[str, Any]]:
        def work(connection: Connection) -> dict[str, Any]:
            return _task_view(connection, tenant, task_id)

        return self.database.run("task.get", work)

    def update_task(
        self, tenant: str, task_id: str, changes: dict[str, Any], expected_version: int | None
    ) -> Deferred[tuple[dict[str, Any], list[str]]]:
        new_deps = changes.get("depends_on")

        def work(connection: Connection) -> tuple[dict[str, Any], list[str]]:
            if connection.dialect.name != "sqlite":  # SQLite: BEGIN IMMEDIATE already holds the write lock
                connection.execute(
                    select(tasks.c.version).where(tasks.c.tenant == tenant, tasks.c.id == task_id).with_for_update()
                )
            current = connection.execute(_task_query(tenant).where(tasks.c.id == task_id)).first()
            if current is None:
                raise NotFound(_no_task(task_id))
            if expected_version is not None and current.version != expected_version:
                raise Conflict(
                    f"task {task_id} is at version {current.version}, not {expected_version}: it changed since "
                    "you read it. Get it again (task.get), check the change still makes sense, and retry with "
                    f"expected_version {current.version}."
                )
            values: dict[str, Any] = {}
            for name in ("title", "description", "status", "assignee", "due"):
                if name in changes:
                    values[name] = changes[name]
            if "priority" in changes:
                values["priority"] = PRIORITIES.index(changes["priority"])
            if "tags" in changes:
                tags = list(dict.fromkeys(changes["tags"]))
                values["tags"] = json.dumps(tags)
                replace_tags(connection, task_tags, "task_id", task_id, tenant, tags)
            old_deps = _deps_of(connection, [task_id]).get(task_id, [])
            deps = old_deps
            if new_deps is not None:
                deps = list(dict.fromkeys(new_deps))
                if task_id in deps:
                    raise Conflict(f"task {task_id} cannot depend on itself: remove it from depends_on")
                _check_tasks_exist(connection, tenant, deps, "depends_on")
                _refuse_cycle(connection, tenant, task_id, deps)
                connection.execute(task_deps.delete().where(task_deps.c.task_id == task_id))
                if deps:
                    connection.execute(
                        task_deps.insert(), [{"task_id": task_id, "depends_on": d, "tenant": tenant} for d in deps]
                    )
            # The tasks whose `blocks` change: each that gains or loses this one, and, when its
            # title or status (which `blocks` shows) changes, every one it depended or depends on.
            if any(name in values and values[name] != current._mapping[name] for name in ("title", "status")):
                touched = sorted(set(old_deps) | set(deps))
            else:
                touched = sorted(set(old_deps) ^ set(deps))
            values["version"] = current.version + 1
            values["updated_at"] = utcnow()
            updated = connection.execute(
                tasks.update()
                .where(tasks.c.id == task_id, tasks.c.tenant == tenant, tasks.c.version == current.version)
                .values(**values)
            )
            if updated.rowcount != 1:
                raise Conflict(f"task {task_id} changed while this update ran: get it again (task.get) and retry")
            row = {**current._mapping, **values}
            return _task(row, deps), touched

        # A dependency change reads the graph a concurrent change could make cyclic: serialisable.
        return self.database.run("task.update", work, write=True, serializable=new_deps is not None)

    def add_comment(self, tenant: str, task_id: str, text: str, author: str) -> Deferred[dict[str, Any]]:
        def work(connection: Connection) -> dict[str, Any]:
            found = connection.execute(
                select(tasks.c.id).where(tasks.c.tenant == tenant, tasks.c.id == task_id)
            ).first()
            if found is None:
                raise NotFound(_no_task(task_id))
            row = {
                "id": new_id(),
                "task_id": task_id,
                "tenant": tenant,
                "text": text,
                "created_at": utcnow(),
                "created_by": author,
            }
            connection.execute(task_comments.insert(), row)
            return _comment(row)

        return self.database.run("task.comment", work, write=True)

    def next_task(
        self, tenant: str, project: str | None, assignee: str | None
    ) -> Deferred[tuple[dict[str, Any] | None, str]]:
        def work(connection: Connection) -> tuple[dict[str, Any] | None, str]:
            params: dict[str, Any] = {"tenant": tenant, "project_id": None, "assignee": assignee}
            project_name = None
            if project is not None:
                found = _find_project(connection, tenant, project)
                project_name = found.name
                params["project_id"] = found.id
            sqlite = connection.dialect.name == "sqlite"
            ready, waiting = _NEXT[sqlite, project is not None, assignee is not None]
            row = connection.execute(ready, params).first()
            scope = "".join(
                part
                for part in (
                    f" in project {project_name!r}" if project_name else "",
                    f" assigned to {assignee!r}" if assignee else "",
                )
            )
            if row is None:
                count = connection.execute(waiting, params).scalar() or 0
                if not count:
                    return None, f"no open task{scope}"
                return None, (
                    f"all {count} open task(s){scope} wait on dependencies that are not done yet; "
                    "task.list with status in_progress or blocked shows what holds them"
                )
            why = [f"{PRIORITIES[row.priority]} priority"]
            if row.due is not None:
                overdue = row.due < utcnow().date()
                why.append(f"{'overdue since' if overdue else 'due'} {row.due.isoformat()}")
            deps = _deps_of(connection, [row.id]).get(row.id, [])
            if deps:
                why.append(
                    "its dependency is resolved" if len(deps) == 1 else f"its {len(deps)} dependencies are resolved"
                )
            else:
                why.append("no dependencies")
            reason = f"the most urgent open task{scope} that is ready: " + ", ".join(why)
            return _task(row._mapping, deps), reason

        return self.database.run("task.next", work)

    def task_ids(self, tenant: str, prefix: str, limit: int) -> Deferred[list[str]]:
        def work(connection: Connection) -> list[str]:
            query = (
                select(tasks.c.id)
                .where(tasks.c.tenant == tenant, tasks.c.id.like(like_prefix(prefix), escape="\\"))
                .order_by(tasks.c.id.desc())
                .limit(limit)
            )
            return list(connection.execute(query).scalars())

        return self.database.run("task.complete", work)

    def project_status(self, tenant: str, project: str, limit: int) -> Deferred[dict[str, Any]]:
        def work(connection: Connection) -> dict[str, Any]:
            found = _find_project(connection, tenant, project)
            by_status = (
                select(tasks.c.status, func.count())
                .where(tasks.c.tenant == tenant, tasks.c.project_id == found.id)
                .group_by(tasks.c.status)
            )
            counts: dict[str, int] = {status: count for status, count in connection.execute(by_status)}
            rows = connection.execute(
                _task_query(tenant)
                .where(tasks.c.project_id == found.id, tasks.c.status.in_(UNFINISHED))
                .order_by(tasks.c.priority.desc(), tasks.c.due.is_(None), tasks.c.due, tasks.c.id)
                .limit(limit)
            ).all()
            return {
                "project": _project(found._mapping),
                "counts": {status: counts.get(status, 0) for status in STATUSES},
                "unfinished": _tasks_with_deps(connection, rows),
            }

        return self.database.run("project.status", work)


# -- queries ----------------------------------------------------------------------------------


def _task_query(tenant: str) -> Any:
    return _TASKS.where(tasks.c.tenant == tenant)


def _ready() -> Any:
    """Whether a task (``tasks``) has no dependency left that is not resolved.

    A correlated lookup of its first unresolved dependency (``LIMIT 1 ... IS NULL``) rather than
    ``NOT EXISTS``, which MariaDB turned into an anti-join that materialised every dependency of
    every task at each use (task.next uses it eight times)."""
    blocker = tasks.alias("blocker")
    first_blocker = (
        select(task_deps.c.depends_on)
        .join(blocker, blocker.c.id == task_deps.c.depends_on)
        .where(task_deps.c.task_id == tasks.c.id, blocker.c.status.not_in(RESOLVED))
        .limit(1)
        .scalar_subquery()
    )
    return first_blocker.is_(None)


def _next_statements(sqlite: bool, project: bool, assignee: bool) -> tuple[Any, Any]:
    """task.next's statements for one backend and combination of filters (bound: ``tenant``,
    ``project_id``, ``assignee``): the most urgent ready open task, and the count of open ones.

    The first is one statement of index reads rather than a sort of every open task (17 ms at
    12,000): for each priority, the first ready task with a due date (by date, then id) and the
    first without one (by id), each the head of a range of ix_tasks_next or ix_tasks_project_next;
    the outer query picks among those eight the most urgent, dated before undated. SQLite takes
    the heads as subqueries; MySQL as parenthesised members of the UNION (as subqueries MariaDB
    made a temporary table of each: 25 ms). Built once: building and compiling the statement took
    a hundred times longer than SQLite took to run it.
    """
    query = _TASKS.where(tasks.c.tenant == bindparam("tenant"), tasks.c.status == "open")
    if project:
        query = query.where(tasks.c.project_id == bindparam("project_id"))
    if assignee:
        query = query.where(tasks.c.assignee == bindparam("assignee"))
    ready = query.add_columns(tasks.c.due.is_(None).label("undated")).where(_ready())
    heads = []
    for priority in reversed(range(len(PRIORITIES))):
        level = ready.where(tasks.c.priority == priority)
        heads.append(level.where(tasks.c.due.is_not(None)).order_by(tasks.c.due, tasks.c.id).limit(1))
        heads.append(level.where(tasks.c.due.is_(None)).order_by(tasks.c.id).limit(1))
    urgency = ("priority DESC", "undated", "due", "id")
    first: Any
    if sqlite:
        candidates = union_all(*(select(head.subquery()) for head in heads)).subquery()
        c = candidates.c
        first = select(candidates).order_by(c.priority.desc(), c.undated, c.due, c.id).limit(1)
    else:
        first = union_all(*heads).order_by(*map(text, urgency)).limit(1)
    return first, select(func.count()).select_from(query.subquery())


_LIST_FILTERS = ("project", "status", "assignee", "tag", "query")
# The filters a task.list uses (and "after", for a page after the first) -> its statement.
_LISTS: dict[frozenset[str], Any] = {}


def _list_statement(used: frozenset[str]) -> Any:
    """task.list's statement for one combination of filters, built on first use with bound
    parameters (``tenant``, ``project_id``, ``status``, ``assignee``, ``tag``, ``pattern``,
    ``after``, ``limit``): building one per call cost twice as much as running it."""
    statement = _LISTS.get(used)
    if statement is None:
        query = _TASKS.where(tasks.c.tenant == bindparam("tenant"))
        if "project" in used:
            query = query.where(tasks.c.project_id == bindparam("project_id"))
        if "status" in used:
            query = query.where(tasks.c.status == bindparam("status"))
        if "assignee" in used:
            query = query.where(tasks.c.assignee == bindparam("assignee"))
        if "tag" in used:
            tagged = select(task_tags.c.task_id).where(
                task_tags.c.tenant == bindparam("tenant"), task_tags.c.tag == bindparam("tag")
            )
            query = query.where(tasks.c.id.in_(tagged))
        if "query" in used:
            pattern: Any = bindparam("pattern")
            query = query.where(
                or_(tasks.c.title.like(pattern, escape="\\"), tasks.c.description.like(pattern, escape="\\"))
            )
        if "after" in used:
            query = query.where(tasks.c.id < bindparam("after"))
        statement = _LISTS[used] = query.order_by(tasks.c.id.desc()).limit(bindparam("limit"))
    return statement


# (on SQLite, a project filter, an assignee filter) -> task.next's statements.
_NEXT = {
    (sqlite, project, assignee): _next_statements(sqlite, project, assignee)
    for sqlite in (True, False)
    for project in (False, True)
    for assignee in (False, True)
}


def _find_project(connection: Connection, tenant: str, reference: str) -> Row[Any]:
    """A project by id, else by name, in ``tenant``; `NotFound` naming what to do."""
    rows = connection.execute(_FIND_PROJECT, {"tenant": tenant, "reference": reference}).all()
    if not rows:
        raise NotFound(_no_project(reference))
    return next((row for row in rows if row.id == reference), rows[0])


def _check_tasks_exist(connection: Connection, tenant: str, ids: Sequence[str], argument: str) -> None:
    if not ids:
        return
    found = set(connection.execute(select(tasks.c.id).where(tasks.c.tenant == tenant, tasks.c.id.in_(ids))).scalars())
    _refuse_unknown(ids, found, argument)


def _refuse_unknown(ids: Sequence[str], found: set[str], argument: str) -> None:
    missing = [task_id for task_id in ids if task_id not in found]
    if missing:
        raise NotFound(f"{argument} names unknown task(s): {', '.join(missing)}; task.list shows the task ids")


# How many ids -> which of them a tenant has (for the driver's connection: no expanding IN).
_KNOWN_IDS: dict[int, Any] = {}


def _known_ids(count: int) -> Any:
    statement = _KNOWN_IDS.get(count)
    if statement is None:
        wanted: list[Any] = [bindparam(f"id{n}") for n in range(count)]
        statement = _KNOWN_IDS[count] = select(tasks.c.id).where(
            tasks.c.tenant == bindparam("tenant"), tasks.c.id.in_(wanted)
        )
    return statement


# How many task ids -> their dependencies (for the driver's connection: no expanding IN).
_DEPS_OF_IDS: dict[int, Any] = {}


def _deps_of_ids(count: int) -> Any:
    statement = _DEPS_OF_IDS.get(count)
    if statement is None:
        wanted: list[Any] = [bindparam(f"id{n}") for n in range(count)]
        statement = _DEPS_OF_IDS[count] = (
            select(task_deps.c.task_id, task_deps.c.depends_on)
            .where(task_deps.c.tenant == bindparam("tenant"), task_deps.c.task_id.in_(wanted))
            .order_by(task_deps.c.depends_on)
        )
    return statement


def _id_params(tenant: str, ids: Sequence[str]) -> dict[str, Any]:
    return {"tenant": tenant, **{f"id{n}": task_id for n, task_id in enumerate(ids)}}


def _project_ref(connection: RawConnection, tenant: str, reference: str) -> tuple[str, str]:
    """`_find_project` on the driver's connection: the project's id and name."""
    rows = connection.execute(_FIND_PROJECT_REF, {"tenant": tenant, "reference": reference}).fetchall()
    if not rows:
        raise NotFound(_no_project(reference))
    found = next((row for row in rows if row[0] == reference), rows[0])
    return found[0], found[1]


def _refuse_cycle(connection: Connection, tenant: str, task_id: str, deps: Sequence[str]) -> None:
    """`Conflict` when ``task_id`` depending on ``deps`` would close a cycle (some dependency
    already depends, through others, on ``task_id``). Walks the graph one level per query."""
    came_from: dict[str, str] = {dep: task_id for dep in deps}
    frontier = set(deps)
    while frontier:
        if task_id in frontier:
            break
        edges = connection.execute(
            select(task_deps.c.task_id, task_deps.c.depends_on).where(
                task_deps.c.tenant == tenant, task_deps.c.task_id.in_(sorted(frontier)), task_deps.c.task_id != task_id
            )
        ).all()
        frontier = set()
        for source, target in edges:
            if target not in came_from:
                came_from[target] = source
                frontier.add(target)
    else:
        return
    # Rebuild the loop: task_id -> dep -> ... -> task_id.
    path = [task_id]
    step = came_from[task_id]
    while step != task_id:
        path.append(step)
        step = came_from[step]
    path.append(task_id)
    path.reverse()
    loop = " → ".join(path)
    raise Conflict(
        f"refused: the dependencies would make a cycle ({loop}, each depending on the next); "
        f"remove {path[1]} from depends_on or change the tasks along the loop"
    )


def _deps_of(connection: Connection, ids: Sequence[str]) -> dict[str, list[str]]:
    deps: dict[str, list[str]] = {}
    if ids:
        rows = connection.execute(_DEPS_OF, {"ids": list(ids)})
        for task_id, depends_on in rows:
            deps.setdefault(task_id, []).append(depends_on)
    return deps


def _tasks_with_deps(connection: Connection, rows: Sequence[Row[Any]]) -> list[dict[str, Any]]:
    deps = _deps_of(connection, [row.id for row in rows])
    return [_task(row._mapping, deps.get(row.id, [])) for row in rows]


def _task_view(connection: Connection, tenant: str, task_id: str) -> dict[str, Any]:
    row = connection.execute(_task_query(tenant).where(tasks.c.id == task_id)).first()
    if row is None:
        raise NotFound(_no_task(task_id))
    comments = connection.execute(
        select(task_comments)
        .where(task_comments.c.task_id == task_id, task_comments.c.tenant == tenant)
        .order_by(task_comments.c.id.desc())
        .limit(SHOWN)
    ).all()
    blocks = connection.execute(
        select(tasks.c.id, tasks.c.title, tasks.c.status)
        .join(task_deps, task_deps.c.task_id == tasks.c.id)
        .where(task_deps.c.depends_on == task_id, tasks.c.tenant == tenant)
        .order_by(tasks.c.id)
        .limit(SHOWN)
    ).all()
    return {
        "task": _task(row._mapping, _deps_of(connection, [task_id]).get(task_id, [])),
        "comments": [_comment(comment._mapping) for comment in reversed(comments)],
        "blocks": [{"id": b.id, "title": b.title, "status": b.status} for b in blocks],
    }


def _no_project(reference: str) -> str:
    return f"no project {reference!r} (by id or name): project.list shows the projects, project.create makes one"


def _no_task(task_id: str) -> str:
    return f"no task {task_id!r}: task.list shows the task ids"


# -- shapes (the tool contract's) -------------------------------------------------------------


def _project(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "description": row["description"],
        "created_at": iso(row["created_at"]),
        "created_by": row["created_by"],
    }


def _task(row: Any, depends_on: list[str]) -> dict[str, Any]:
    due = row["due"]
    return {
        "id": row["id"],
        "project": row["project_id"],
        "project_name": row["project_name"],
        "title": row["title"],
        "description": row["description"],
        "status": row["status"],
        "priority": PRIORITIES[row["priority"]],
        "assignee": row["assignee"],
        "due": due if due is None or isinstance(due, str) else due.isoformat(),
        "tags": json.loads(row["tags"]),
        "depends_on": depends_on,
        "version": row["version"],
        "created_at": iso(row["created_at"]),
        "created_by": row["created_by"],
        "updated_at": iso(row["updated_at"]),
    }


def _comment(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "task": row["task_id"],
        "text": row["text"],
        "created_at": iso(row["created_at"]),
        "created_by": row["created_by"],
    }
