# -*- test-case-name: tests.test_packs -*-
"""The ``tasks`` pack: a team's task board (projects, tasks, dependencies, comments).

Thin handlers over `ITaskBoard`: arguments are checked by their schemas, records come back as
``structuredContent`` and the same JSON as text, every call sees only the caller's tenant, and
a task that changes tells the clients subscribed to its ``task://ID`` resource.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from mcpd.interfaces import TASK_PRIORITIES, TASK_STATUSES, ITaskBoard, NotFound
from mcpd.tools import ToolAnnotations, ToolContext, ToolError, ToolPack, object_schema
from mcpd.tools.paging import (
    CURSOR_SCHEMA,
    NEXT_CURSOR_SCHEMA,
    decode_cursor,
    encode_cursor,
    limit_of,
    limit_schema,
    text_position,
)
from mcpd.tools.prompts import PromptArgument

pack = ToolPack("tasks", "A shared task board: projects, tasks, dependencies and comments.", needs=(ITaskBoard,))

READ = ToolAnnotations(read_only=True, destructive=False, idempotent=True, open_world=False)
# Changes that add or edit records of the board but remove none: a `write` key may make them.
WRITE = ToolAnnotations(read_only=False, destructive=False, idempotent=False, open_world=False)

# The longest project name and task id (their columns' sizes).
NAME_CHARS = 200
ID_CHARS = 32

_STRING = {"type": "string"}
_NULLABLE = {"type": ["string", "null"]}
_TAGS_IN = {
    "type": "array",
    "items": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^\S+$"},
    "maxItems": 20,
    "description": 'Labels, e.g. ["backend", "bug"] (up to 20, no spaces).',
}
_IDS_IN = {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": ID_CHARS}, "maxItems": 50}
_DATE = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$", "description": "A date, YYYY-MM-DD."}
_TITLE = {"type": "string", "minLength": 1, "maxLength": 500, "pattern": r"\S"}
_TEXT = {"type": "string", "maxLength": 10000}
_PROJECT_REF = {"type": "string", "minLength": 1, "maxLength": NAME_CHARS, "description": "A project's id or name."}

PROJECT = {
    "type": "object",
    "properties": {
        "id": _STRING,
        "name": _STRING,
        "description": _NULLABLE,
        "created_at": _STRING,
        "created_by": _STRING,
    },
    "required": ["id", "name", "description", "created_at", "created_by"],
}
TASK = {
    "type": "object",
    "properties": {
        "id": _STRING,
        "project": {"type": "string", "description": "The project's id."},
        "project_name": _STRING,
        "title": _STRING,
        "description": _NULLABLE,
        "status": {"enum": list(TASK_STATUSES)},
        "priority": {"enum": list(TASK_PRIORITIES)},
        "assignee": _NULLABLE,
        "due": _NULLABLE,
        "tags": {"type": "array", "items": _STRING},
        "depends_on": {"type": "array", "items": _STRING},
        "version": {"type": "integer"},
        "created_at": _STRING,
        "created_by": _STRING,
        "updated_at": _STRING,
    },
    "required": [
        "id",
        "project",
        "title",
        "description",
        "status",
        "priority",
        "assignee",
        "due",
        "tags",
        "depends_on",
        "version",
        "created_at",
        "created_by",
        "updated_at",
    ],
}
COMMENT = {
    "type": "object",
    "properties": {"id": _STRING, "task": _STRING, "text": _STRING, "created_at": _STRING, "created_by": _STRING},
    "required": ["id", "task", "text", "created_at", "created_by"],
}


def _board(ctx: Any) -> Any:
    return ctx.store(ITaskBoard)


def _date(value: str | None, argument: str) -> datetime.date | None:
    if value is None:
        return None
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise ToolError(f"{argument} {value!r} is not a date: give it as YYYY-MM-DD, e.g. 2026-12-01") from None


def _task_uri(task_id: str) -> str:
    return f"task://{task_id}"


# -- projects -----------------------------------------------------------------------------------


@pack.tool(
    "project.create",
    title="Create a project",
    description=(
        "Create a project to group tasks; its name is unique within your team. "
        'Example: {"name": "website", "description": "The public site relaunch"}.'
    ),
    input_schema=object_schema(
        {
            "name": {"type": "string", "minLength": 1, "maxLength": NAME_CHARS, "pattern": r"^\S(.*\S)?$"},
            "description": _TEXT,
        },
        ("name",),
    ),
    output_schema=object_schema({"project": PROJECT}, ("project",)),
    annotations=WRITE,
)
def project_create(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    d = _board(ctx).create_project(ctx.tenant, arguments["name"], arguments.get("description"), ctx.caller.author)
    return d.addCallback(lambda project: {"project": project})


@pack.tool(
    "project.list",
    title="List projects",
    description=(
        "List your team's projects by name, with how many of their tasks are open (open, in progress "
        'or blocked) and done. Example: {"limit": 20}; pass next_cursor back as cursor for more.'
    ),
    input_schema=object_schema({"limit": limit_schema(), "cursor": CURSOR_SCHEMA}),
    output_schema=object_schema(
        {
            "projects": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        **PROJECT["properties"],  # type: ignore[dict-item]
                        "open_tasks": {"type": "integer"},
                        "done_tasks": {"type": "integer"},
                    },
                    "required": ["id", "name", "description", "open_tasks", "done_tasks"],
                },
            },
            "next_cursor": NEXT_CURSOR_SCHEMA,
        },
        ("projects", "next_cursor"),
    ),
    annotations=READ,
)
def project_list(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    after = text_position(decode_cursor(ctx, "project.list", {}, arguments.get("cursor")), NAME_CHARS)
    d = _board(ctx).list_projects(ctx.tenant, limit_of(arguments), after)
    return d.addCallback(
        lambda page: {"projects": page[0], "next_cursor": encode_cursor(ctx, "project.list", {}, page[1])}
    )


# -- tasks --------------------------------------------------------------------------------------


@pack.tool(
    "task.create",
    title="Create a task",
    description=(
        "Add a task to a project (by id or name). Priority is low, normal (the default), high or "
        "urgent; due is a date; depends_on lists the ids of tasks that must be done first. "
        'Example: {"project": "website", "title": "Fix the login redirect", "priority": "high", '
        '"assignee": "alice", "due": "2026-12-01", "tags": ["bug"]}.'
    ),
    input_schema=object_schema(
        {
            "project": _PROJECT_REF,
            "title": _TITLE,
            "description": _TEXT,
            "priority": {"enum": list(TASK_PRIORITIES), "default": "normal"},
            "assignee": {"type": "string", "minLength": 1, "maxLength": 200},
            "due": _DATE,
            "tags": _TAGS_IN,
            "depends_on": {**_IDS_IN, "description": "Ids of tasks that must be done before this one."},
        },
        ("project", "title"),
    ),
    output_schema=object_schema({"task": TASK}, ("task",)),
    annotations=WRITE,
)
def task_create(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    fields = dict(arguments)
    fields["due"] = _date(arguments.get("due"), "due")
    d = _board(ctx).create_task(ctx.tenant, fields, ctx.caller.author)

    def created(task: dict[str, Any]) -> dict[str, Any]:
        for dependency in task["depends_on"]:  # their `blocks` now list this task
            ctx.resource_updated(_task_uri(dependency))
        return {"task": task}

    return d.addCallback(created)


_TASK_FILTERS = ("project", "status", "assignee", "tag", "query")


@pack.tool(
    "task.list",
    title="List tasks",
    description=(
        "List tasks, newest first, filtered by project (id or name), status (open, in_progress, "
        "blocked, done, cancelled), assignee, tag, or words in the title or description (query). "
        'Example: {"project": "website", "status": "open", "limit": 20}; pass next_cursor back as '
        "cursor (with the same filters) for more."
    ),
    input_schema=object_schema(
        {
            "project": _PROJECT_REF,
            "status": {"enum": list(TASK_STATUSES)},
            "assignee": {"type": "string", "minLength": 1, "maxLength": 200},
            "tag": {"type": "string", "minLength": 1, "maxLength": 64},
            "query": {
                "type": "string",
                "minLength": 1,
                "maxLength": 200,
                "description": "Text in the title or description.",
            },
            "limit": limit_schema(),
            "cursor": CURSOR_SCHEMA,
        }
    ),
    output_schema=object_schema(
        {"tasks": {"type": "array", "items": TASK}, "next_cursor": NEXT_CURSOR_SCHEMA}, ("tasks", "next_cursor")
    ),
    annotations=READ,
)
def task_list(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    filters = {name: arguments[name] for name in _TASK_FILTERS if name in arguments}
    after = text_position(decode_cursor(ctx, "task.list", filters, arguments.get("cursor")), ID_CHARS)
    d = _board(ctx).list_tasks(ctx.tenant, filters, limit_of(arguments), after)
    return d.addCallback(
        lambda page: {"tasks": page[0], "next_cursor": encode_cursor(ctx, "task.list", filters, page[1])}
    )


_TASK_VIEW = object_schema(
    {
        "task": TASK,
        "comments": {"type": "array", "items": COMMENT, "description": "The latest 100 comments, oldest first."},
        "blocks": {
            "type": "array",
            "description": "Tasks waiting on this one (up to 100).",
            "items": {
                "type": "object",
                "properties": {"id": _STRING, "title": _STRING, "status": _STRING},
                "required": ["id", "title", "status"],
            },
        },
    },
    ("task", "comments", "blocks"),
)


@pack.tool(
    "task.get",
    title="Get a task",
    description=(
        "Get one task with its comments and the tasks it blocks (those that depend on it). "
        'Example: {"id": "01jdq3m8x4k2v7c9e5r1t6y0wz"}.'
    ),
    input_schema=object_schema({"id": {"type": "string", "minLength": 1, "maxLength": ID_CHARS}}, ("id",)),
    output_schema=_TASK_VIEW,
    annotations=READ,
)
def task_get(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    return _board(ctx).get_task(ctx.tenant, arguments["id"])


@pack.tool(
    "task.update",
    title="Update a task",
    description=(
        "Change a task: any of title, description, status, priority, assignee, due, tags and "
        "depends_on (tags and depends_on replace the lists; null clears description, assignee or "
        "due). Pass expected_version (the version you read) to refuse the change if someone else "
        "changed the task meanwhile. A dependency cycle is refused. "
        'Example: {"id": "01jdq3m8x4k2v7c9e5r1t6y0wz", "status": "done", "expected_version": 3}.'
    ),
    input_schema=object_schema(
        {
            "id": {"type": "string", "minLength": 1, "maxLength": ID_CHARS},
            "title": _TITLE,
            "description": {"type": ["string", "null"], "maxLength": 10000},
            "status": {"enum": list(TASK_STATUSES)},
            "priority": {"enum": list(TASK_PRIORITIES)},
            "assignee": {"type": ["string", "null"], "minLength": 1, "maxLength": 200},
            "due": {**_DATE, "type": ["string", "null"]},
            "tags": _TAGS_IN,
            "depends_on": _IDS_IN,
            "expected_version": {
                "type": "integer",
                "minimum": 1,
                "description": "The version you last read; the update is refused if the task is at another.",
            },
        },
        ("id",),
    ),
    output_schema=object_schema({"task": TASK}, ("task",)),
    annotations=WRITE,
)
def task_update(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    changes = {name: value for name, value in arguments.items() if name not in ("id", "expected_version")}
    if not changes:
        raise ToolError(
            "nothing to change: give at least one of title, description, status, priority, assignee, due, "
            "tags, depends_on"
        )
    if "due" in changes:
        changes["due"] = _date(changes["due"], "due")
    task_id = arguments["id"]
    d = _board(ctx).update_task(ctx.tenant, task_id, changes, arguments.get("expected_version"))

    def updated(outcome: tuple[dict[str, Any], list[str]]) -> dict[str, Any]:
        task, touched = outcome
        for changed in (task_id, *touched):
            ctx.resource_updated(_task_uri(changed))
        return {"task": task}

    return d.addCallback(updated)


@pack.tool(
    "task.comment",
    title="Comment on a task",
    description='Add a comment to a task. Example: {"id": "01jdq3m8x4k2v7c9e5r1t6y0wz", "text": "Blocked on the API key."}.',
    input_schema=object_schema(
        {
            "id": {"type": "string", "minLength": 1, "maxLength": ID_CHARS},
            "text": {"type": "string", "minLength": 1, "maxLength": 10000, "pattern": r"\S"},
        },
        ("id", "text"),
    ),
    output_schema=object_schema({"comment": COMMENT}, ("comment",)),
    annotations=WRITE,
)
def task_comment(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    d = _board(ctx).add_comment(ctx.tenant, arguments["id"], arguments["text"], ctx.caller.author)

    def commented(comment: dict[str, Any]) -> dict[str, Any]:
        ctx.resource_updated(_task_uri(arguments["id"]))
        return {"comment": comment}

    return d.addCallback(commented)


@pack.tool(
    "task.next",
    title="What to work on next",
    description=(
        "Pick the most urgent open task whose dependencies are all resolved (done or cancelled): "
        "highest priority first, then the earliest due date, then the oldest. task is null when "
        "nothing is ready, and reason says why. "
        'Example: {"project": "website", "assignee": "alice"}.'
    ),
    input_schema=object_schema(
        {"project": _PROJECT_REF, "assignee": {"type": "string", "minLength": 1, "maxLength": 200}}
    ),
    output_schema=object_schema({"task": {"anyOf": [TASK, {"type": "null"}]}, "reason": _STRING}, ("task", "reason")),
    annotations=READ,
)
def task_next(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    d = _board(ctx).next_task(ctx.tenant, arguments.get("project"), arguments.get("assignee"))
    return d.addCallback(lambda found: {"task": found[0], "reason": found[1]})


# -- resources, completion, prompt ------------------------------------------------------------


def _complete_task_id(ctx: Any, value: str, _arguments: Any) -> Any:
    if len(value) > ID_CHARS:  # no id starts so (nor may a LIKE pattern grow past SQLite's bound)
        return []
    return _board(ctx).task_ids(ctx.tenant, value, 100)


def _complete_project(ctx: Any, value: str, _arguments: Any) -> Any:
    if len(value) > NAME_CHARS:
        return []
    return _board(ctx).project_names(ctx.tenant, value, 100)


@pack.resource_template(
    "task://{id}",
    name="task",
    title="A task",
    description="A task of your team's board with its comments and the tasks it blocks, as task.get shows it.",
    mime_type="application/json",
    completions={"id": _complete_task_id},
)
def read_task(ctx: Any, uri: str, variables: dict[str, str]) -> Any:
    d = _board(ctx).get_task(ctx.tenant, variables["id"])

    def missing(failure: Any) -> list[Any]:
        failure.trap(NotFound)
        return []  # answered as an unknown resource

    return d.addCallbacks(lambda view: json.dumps(view, ensure_ascii=False), missing)


@pack.prompt(
    "project.status",
    title="Project status for a stand-up",
    description="A project's open work (in progress, blocked, overdue, what is ready next), for a stand-up summary.",
    arguments=[
        PromptArgument("project", description="The project's name or id.", required=True, complete=_complete_project)
    ],
)
def project_status(ctx: Any, arguments: dict[str, str]) -> Any:
    board = _board(ctx)
    d = board.project_status(ctx.tenant, arguments["project"], 50)

    def with_next(status: dict[str, Any]) -> Any:
        return board.next_task(ctx.tenant, status["project"]["id"], None).addCallback(
            lambda found: _status_messages(status, found)
        )

    return d.addCallback(with_next)


def _status_messages(status: dict[str, Any], found: tuple[dict[str, Any] | None, str]) -> list[dict[str, Any]]:
    project = status["project"]
    counts = status["counts"]
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    lines = [f"# Project {project['name']}", ""]
    if project["description"]:
        lines += [project["description"], ""]
    lines.append("Tasks by status: " + ", ".join(f"{name} {count}" for name, count in counts.items()))
    lines.append("")
    unfinished = status["unfinished"]
    if unfinished:
        lines.append(f"Unfinished tasks (most urgent first, up to {len(unfinished)}):")
        for task in unfinished:
            details = [task["status"], task["priority"]]
            if task["assignee"]:
                details.append(f"assigned to {task['assignee']}")
            if task["due"]:
                details.append(("OVERDUE since " if task["due"] < today else "due ") + task["due"])
            if task["depends_on"]:
                details.append(f"depends on {', '.join(task['depends_on'])}")
            lines.append(f"- {task['title']} [{task['id']}] ({'; '.join(details)})")
    else:
        lines.append("No unfinished tasks.")
    task, reason = found
    lines += ["", f"Ready next: {task['title']} [{task['id']}] — {reason}" if task else f"Ready next: none — {reason}"]
    return [
        {"role": "user", "content": {"type": "text", "text": "\n".join(lines)}},
        {
            "role": "user",
            "content": {
                "type": "text",
                "text": (
                    "Above is the state of this project's board. Write a short stand-up summary: what is in "
                    "progress and by whom, what is blocked and on what, what is overdue, and what should be "
                    "picked up next."
                ),
            },
        },
    ]
