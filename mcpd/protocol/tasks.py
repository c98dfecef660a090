# -*- test-case-name: tests.test_tasks -*-
"""Tasks: long-running tool calls the client polls instead of waiting for.

Two wire forms, one machinery:

- Modern era (2026-07-28): the ``io.modelcontextprotocol/tasks`` extension (SEP-2663). Task
  creation is server-directed: a client that declares the extension in a request's
  ``clientCapabilities`` may get a ``CreateTaskResult`` (``resultType: "task"``) for a tool that
  supports tasks; it polls ``tasks/get`` (the result or error is inlined once terminal), answers
  input requests with ``tasks/update`` and stops the work with ``tasks/cancel`` (both acks).
  ``tasks/result`` and ``tasks/list`` do not exist; status changes go to ``subscriptions/listen``
  streams that named the task (``notifications/tasks``).
- Legacy era, protocol 2025-11-25 only (basic/utilities/tasks, experimental): the client asks for
  a task with ``params.task`` on ``tools/call``; ``tasks/get``, blocking ``tasks/result``,
  ``tasks/list`` (the session's tasks) and ``tasks/cancel``; ``notifications/tasks/status`` on
  the session's standalone stream; server-to-client requests carry the related-task ``_meta``.

A tool says whether it runs as a task with ``task_support`` (forbidden, optional, required). By
default the task is created when the call arrives; a tool declared ``task_start="handler"`` runs
on the request first (it may gather input by multi-round trip) and becomes a task when its
handler calls ``ctx.start_task()`` (SEP-2663 §Composition with Multi Round-Trip Requests).

Task state lives in an `mcpd.interfaces.ITaskStore`; the work itself runs in this process.
"""

from __future__ import annotations

import collections
import functools
import itertools
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mcpd.interfaces import ITaskStore
from mcpd.protocol.errors import (
    InternalError,
    InvalidParams,
    InvalidRequest,
    LimitExceeded,
    MCPError,
    MethodNotFound,
    MissingClientCapability,
)
from mcpd.protocol.ledger import TASK, Claim, Ledger
from mcpd.protocol.versions import META_CLIENT_CAPABILITIES

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from mcpd.protocol.changes import ChangeFeed
    from mcpd.protocol.channel import RequestChannel
    from mcpd.protocol.engine import Request
    from mcpd.tools.api import Tool, ToolContext

log = Logger(namespace="mcpd.tasks")

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
RELATED_TASK = "io.modelcontextprotocol/related-task"
# The only handshake-era version with (experimental) tasks.
LEGACY_TASK_VERSION = "2025-11-25"

WORKING = "working"
INPUT_REQUIRED = "input_required"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})

# Tasks kept in memory at once (running, or finished and waiting to be fetched).
TASK_CAPACITY = 1000
# 2026-07-28 (SEP-2663) §Capability Negotiation: the error names the extension it needs.
NEEDS_TASKS: dict[str, Any] = {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}}


class TaskStoreFull(LimitExceeded):
    """No room for another task: every stored task is still running (HTTP 503)."""

    def __init__(self, message: str, capacity: int) -> None:
        super().__init__(message, limit=TASK, maximum=capacity, per_caller=False)


class TaskFailed(MCPError):
    """Replays a failed task's JSON-RPC error (legacy ``tasks/result``)."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message", "the task failed")), error.get("data"))
        self.code = int(error.get("code", InternalError.code))


def iso8601(seconds: float) -> str:
    """An ISO 8601 UTC timestamp with milliseconds (basic/utilities/tasks §TTL)."""
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


@attrs.define(eq=False)
class Task:
    """One task: its public state, and what the process running it holds."""

    task_id: str
    # Who may see it: the caller's name (modern) or the legacy session.
    owner: str
    modern: bool
    created: float
    ttl_ms: int | None
    poll_interval_ms: int
    updated: float = 0.0
    status: str = WORKING
    status_message: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    # Outstanding requests to the client (modern: answered by tasks/update), by key.
    input_requests: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    answers: dict[str, Deferred[Any]] = attrs.field(factory=dict, repr=False)
    used_keys: set[str] = attrs.field(factory=set, repr=False)
    # Legacy only: where notifications/tasks/status go, and blocked tasks/result requests.
    notify: Callable[[dict[str, Any]], None] | None = attrs.field(default=None, repr=False)
    waiters: list[Deferred[Any]] = attrs.field(factory=list, repr=False)
    work: Deferred[Any] | None = attrs.field(default=None, repr=False)
    # The timer that ends the task when its TTL passes.
    expiry: Any = attrs.field(default=None, repr=False)
    # Whom the task is counted against, and its place in the ledger while it is kept.
    account: str = ""
    claim: Claim | None = attrs.field(default=None, repr=False)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def expired(self, now: float) -> bool:
        return self.ttl_ms is not None and now >= self.created + self.ttl_ms / 1000

    def info(self) -> dict[str, Any]:
        """The `Task` object in this task's era: ``ttlMs``/``pollIntervalMs`` (SEP-2663) or
        ``ttl``/``pollInterval`` (2025-11-25)."""
        info: dict[str, Any] = {
            "taskId": self.task_id,
            "status": self.status,
            "createdAt": iso8601(self.created),
            "lastUpdatedAt": iso8601(self.updated or self.created),
        }
        if self.status_message is not None:
            info["statusMessage"] = self.status_message
        if self.modern:
            info["ttlMs"] = self.ttl_ms
            info["pollIntervalMs"] = self.poll_interval_ms
        else:
            info["ttl"] = self.ttl_ms
            info["pollInterval"] = self.poll_interval_ms
        return info

    def detailed(self) -> dict[str, Any]:
        """SEP-2663 `DetailedTask`: the task with what its status carries inlined."""
        info = self.info()
        if self.status == INPUT_REQUIRED:
            info["inputRequests"] = dict(self.input_requests)
        elif self.status == COMPLETED and self.result is not None:
            info["result"] = self.result
        elif self.status == FAILED and self.error is not None:
            info["error"] = self.error
        return info


@implementer(ITaskStore)
class MemoryTaskStore:
    """Tasks of this process, at most ``capacity`` of them; a task is dropped once its TTL has
    passed, and the oldest finished tasks make room for new ones."""

    def __init__(self, capacity: int = TASK_CAPACITY) -> None:
        self.capacity = capacity
        self._tasks: collections.OrderedDict[str, Task] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, task: Task, now: float) -> list[Task]:
        dropped = self.expire(now)
        if len(self._tasks) >= self.capacity:
            oldest = next((t for t in self._tasks.values() if t.terminal), None)
            if oldest is None:
                raise TaskStoreFull(
                    f"The server is running {len(self._tasks)} tasks, its limit; try again when one has finished",
                    self.capacity,
                )
            del self._tasks[oldest.task_id]
            dropped.append(oldest)
        self._tasks[task.task_id] = task
        return dropped

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def remove(self, task_id: str) -> Task | None:
        return self._tasks.pop(task_id, None)

    def owned_by(self, owner: str) -> list[Task]:
        return [task for task in self._tasks.values() if task.owner == owner]

    def expire(self, now: float) -> list[Task]:
        gone = [task for task in self._tasks.values() if task.expired(now)]
        for task in gone:
            del self._tasks[task.task_id]
        return gone

    def __iter__(self) -> Iterator[Task]:
        return iter(list(self._tasks.values()))


@attrs.frozen
class TaskPlan:
    """How a tools/call will run as a task."""

    modern: bool
    ttl_ms: int | None
    # Created when the call arrives ("call"), or when the handler asks ("handler").
    start: str = "call"


class TaskChannel:
    """A task's way to its client, in place of the request's `RequestChannel` once the call
    became a task: log messages are not sent (the request's stream is gone), and the
    handler's requests to the client park the task in ``input_required``."""

    def __init__(self, inner: RequestChannel, task: Task, manager: TaskManager) -> None:
        self._inner = inner
        self.task = task
        self.manager = manager
        self._keys = itertools.count(1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def log(self, level: str, data: Any, logger: str | None = None) -> None:
        """SEP-2663 §Task Status Notifications: no notifications/message for tasks."""

    def ask(self, method: str, params: dict[str, Any], key: str | None = None) -> Deferred[dict[str, Any]]:
        missing = self._inner.missing_capability(method)
        if missing is not None:
            return fail(missing)
        if self.task.terminal:
            return fail(CancelledError(f"task {self.task.task_id} is over"))
        if self.task.modern:
            return self._park(method, params, key)
        return self._legacy_request(method, params)

    def _park(self, method: str, params: dict[str, Any], key: str | None) -> Deferred[dict[str, Any]]:
        # SEP-2663 §Task Update Requests: a key names one request over the task's lifetime.
        task = self.task
        base = key or "input"
        key = base if base not in task.used_keys else f"{base}-{next(self._keys)}"
        while key in task.used_keys:
            key = f"{base}-{next(self._keys)}"
        task.used_keys.add(key)

        def withdraw(_d: Deferred[Any]) -> None:
            task.answers.pop(key, None)
            task.input_requests.pop(key, None)

        d: Deferred[dict[str, Any]] = Deferred(withdraw)
        task.input_requests[key] = {"method": method, "params": params}
        task.answers[key] = d
        self.manager.set_status(task, INPUT_REQUIRED)
        return d

    def _legacy_request(self, method: str, params: dict[str, Any]) -> Deferred[dict[str, Any]]:
        # 2025-11-25 basic/utilities/tasks §Associating Task-Related Messages.
        session = self._inner.session
        if session is None or session.closed:
            return fail(MCPError("the session this task belongs to has ended"))
        task = self.task
        meta = dict(params.get("_meta") or {})
        meta[RELATED_TASK] = {"taskId": task.task_id}
        key = f"legacy-{next(self._keys)}"
        task.input_requests[key] = {"method": method, "params": params}
        self.manager.set_status(task, INPUT_REQUIRED)

        def emit(message: dict[str, Any]) -> None:
            if self._inner._trace is not None:
                self._inner._trace(message)
            session.push(message)

        d = session.outbound.request(emit, method, {**params, "_meta": meta}, self._inner.timeout, self._inner.clock)

        def answered(outcome: Any) -> Any:
            task.input_requests.pop(key, None)
            if not task.input_requests and task.status == INPUT_REQUIRED:
                self.manager.set_status(task, WORKING)
            return outcome

        return d.addBoth(answered)


class TaskManager:
    """Creates, runs, reports on and ends tasks; serves the ``tasks/*`` methods of both eras."""

    def __init__(
        self,
        store: ITaskStore,
        clock: IReactorTime,
        *,
        changes: ChangeFeed | None = None,
        ledger: Ledger | None = None,
        ttl_ms: int = 3_600_000,
        max_ttl_ms: int = 86_400_000,
        poll_interval_ms: int = 500,
    ) -> None:
        self.store = store
        self.clock = clock
        self.changes = changes
        # Counts each caller's tasks against its share (`mcpd.protocol.ledger`).
        self.ledger = ledger if ledger is not None else Ledger()
        self.ttl_ms = ttl_ms
        self.max_ttl_ms = max_ttl_ms
        self.poll_interval_ms = poll_interval_ms

    # -- negotiation ----------------------------------------------------------------------------

    @staticmethod
    def declared(request: Request) -> bool:
        """Whether a modern request's clientCapabilities name the tasks extension."""
        capabilities = request.meta.get(META_CLIENT_CAPABILITIES)
        extensions = capabilities.get("extensions") if isinstance(capabilities, dict) else None
        return isinstance(extensions, dict) and TASKS_EXTENSION in extensions

    def plan(self, request: Request, tool: Tool) -> TaskPlan | None:
        """How a tools/call of ``tool`` runs: as a task, or (None) as a plain call."""
        support = tool.task_support
        if request.modern:
            # SEP-2663: the server decides; a legacy `task` param is ignored.
            if support == "forbidden":
                return None
            if not self.declared(request):
                if support == "required":
                    raise MissingClientCapability(
                        f"Tool {tool.name} runs only as a task: declare the {TASKS_EXTENSION} extension",
                        data=NEEDS_TASKS,
                    )
                return None
            return TaskPlan(modern=True, ttl_ms=self.ttl_ms, start=tool.task_start)
        if request.version != LEGACY_TASK_VERSION:
            return None  # no tasks before 2025-11-25: every tool runs as a plain call
        augmented = request.params.get("task")
        # 2025-11-25 basic/utilities/tasks §Tool-Level Negotiation.
        if augmented is None:
            if support == "required":
                raise MethodNotFound(f"Tool {tool.name} must be called as a task (params.task)")
            return None
        if support == "forbidden":
            raise MethodNotFound(f"Tool {tool.name} does not support task-augmented calls")
        if not isinstance(augmented, dict):
            raise InvalidParams("Invalid params: task must be an object")
        ttl = augmented.get("ttl", self.ttl_ms)
        if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1):
            raise InvalidParams("Invalid params: task.ttl must be a positive whole number of milliseconds")
        # Receivers MAY override the requested ttl (§TTL and Resource Management).
        ttl = self.max_ttl_ms if ttl is None else min(ttl, self.max_ttl_ms)
        return TaskPlan(modern=False, ttl_ms=ttl, start=tool.task_start)

    def legacy_capabilities(self) -> dict[str, Any]:
        """2025-11-25 basic/utilities/tasks §Server Capabilities."""
        return {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}

    # -- running --------------------------------------------------------------------------------

    def start(
        self,
        request: Request,
        plan: TaskPlan,
        ctx: ToolContext,
        channel: RequestChannel,
        run: Callable[[ToolContext], Deferred[Any]],
    ) -> Deferred[Any]:
        """Run a tools/call as a task; fires with the ``CreateTaskResult`` (or, when the handler
        finishes or asks for input before it starts the task, with that result)."""
        return _TaskStart(self, request, plan, ctx, channel).run(run)

    def _create(self, request: Request, plan: TaskPlan) -> Task:
        now = self.clock.seconds()
        owner = self._owner(request)
        session = request.exchange.session
        task = Task(
            # SEP-2663 §Security: task ids are unguessable.
            task_id=secrets.token_urlsafe(18),
            owner=owner,
            modern=plan.modern,
            created=now,
            updated=now,
            ttl_ms=plan.ttl_ms,
            poll_interval_ms=self.poll_interval_ms,
            notify=session.push if (session is not None and not plan.modern) else None,
            account=request.exchange.caller.account,
        )
        task.claim = self._claim(task)
        try:
            dropped = self.store.add(task, now)
        except MCPError:
            task.claim.release()
            raise
        for gone in dropped:
            self._discard(gone)
        if task.ttl_ms is not None:
            # The TTL is kept by a timer, so a task nobody asks about still ends on time (and
            # lookups need not sweep the whole store).
            task.expiry = self.clock.callLater(task.ttl_ms / 1000, self._expire, task.task_id)
        log.debug("Task {id} created for {owner}", id=task.task_id, owner=owner)
        return task

    def _claim(self, task: Task) -> Claim:
        """The task's place among its caller's share of the tasks; at the share, the caller's
        oldest finished task makes room; `LimitExceeded` (429) if all of them still run."""
        claim = functools.partial(
            self.ledger.claim,
            task.account,
            TASK,
            end=functools.partial(self._revoke, task),
            rescope=functools.partial(self._rescoped, task),
        )
        try:
            return claim()
        except LimitExceeded as e:
            if e.status != 429:
                raise
            finished = [t for t in self.store if t.account == task.account and t.terminal]
            if not finished:
                raise
            oldest = min(finished, key=_order)
            self.store.remove(oldest.task_id)
            self._discard(oldest)
            return claim()

    def _revoke(self, task: Task, reason: str) -> None:
        """The task's account ended (a revoked key): stop it and forget it."""
        self._cancel(task, f"The task was cancelled: {reason}.")
        if self.store.remove(task.task_id) is not None:
            self._discard(task)

    def _rescoped(self, task: Task, scopes: frozenset[str], narrowed: bool) -> None:
        """The task's key lost a scope: it was started under a grant that no longer holds."""
        if narrowed:
            self._cancel(task, "The task was cancelled: its API key lost a scope.")

    def _expire(self, task_id: str) -> None:
        task = self.store.remove(task_id)
        if task is not None:
            task.expiry = None
            log.info("Task {id} expired (its TTL passed)", id=task_id)
            self._discard(task)

    def _created(self, task: Task) -> dict[str, Any]:
        if task.modern:
            # SEP-2663 §Task Creation: a flat Result & Task.
            return {"resultType": "task", **task.info()}
        return {"task": task.info()}

    def _track(self, task: Task, work: Deferred[Any]) -> None:
        task.work = work
        work.addBoth(self._finish, task)

    def _finish(self, outcome: Any, task: Task) -> None:
        if task.terminal:
            return None  # cancelled (or expired) first: it stays so
        if isinstance(outcome, Failure):
            if outcome.check(CancelledError):
                self._end(task, CANCELLED, message="The task was cancelled.")
            elif outcome.check(MCPError):
                error = outcome.value.to_error()
                self._end(task, FAILED, error=error, message=f"The tool call failed: {error['message']}")
            else:
                log.failure("Task {id} failed", outcome, id=task.task_id)
                error = InternalError("Internal error while running the task; the server log has the details")
                self._end(task, FAILED, error=error.to_error(), message=error.message)
            return None
        if not isinstance(outcome, dict) or outcome.get("resultType") == "input_required":
            error = InternalError("The task asked for input the way a request does; it cannot be resumed")
            self._end(task, FAILED, error=error.to_error(), message=error.message)
            return None
        result = dict(outcome)
        if task.modern:
            result.setdefault("resultType", "complete")
        self._end(task, COMPLETED, result=result)
        return None

    def _end(
        self,
        task: Task,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> None:
        task.result, task.error = result, error
        task.status_message = message
        for key, d in list(task.answers.items()):
            task.answers.pop(key, None)
            d.cancel()
        task.input_requests.clear()
        self.set_status(task, status)
        waiters, task.waiters = task.waiters, []
        for waiter in waiters:
            self._answer_waiter(task, waiter)

    def set_status(self, task: Task, status: str) -> None:
        """Move ``task`` to ``status`` and tell whoever listens."""
        task.status = status
        task.updated = max(self.clock.seconds(), task.created)
        if task.modern:
            if self.changes is not None:
                self.changes.task_status(task.task_id, task.detailed())
        elif task.notify is not None:
            # 2025-11-25 basic/utilities/tasks §Task Status Notification.
            task.notify({"jsonrpc": "2.0", "method": "notifications/tasks/status", "params": task.info()})

    def _discard(self, task: Task) -> None:
        """A task no longer kept (its TTL passed, or it made room): stop its work, forget it."""
        if task.claim is not None:
            task.claim.release()
        if task.expiry is not None and task.expiry.active():
            task.expiry.cancel()  # else the timer would keep the forgotten task until its TTL
        task.expiry = None
        if not task.terminal:
            task.status = CANCELLED
            if task.work is not None:
                task.work.cancel()
        for waiter in task.waiters:
            waiter.errback(Failure(InvalidParams(f"Task {task.task_id} has expired")))
        task.waiters = []

    def _cancel(self, task: Task, message: str) -> None:
        if task.terminal:
            return
        self._end(task, CANCELLED, message=message)
        if task.work is not None and not task.work.called:
            task.work.cancel()

    def shutdown(self) -> int:
        """Cancel every running task (the daemon is stopping); how many there were."""
        running = [task for task in self.store if not task.terminal]
        for task in running:
            self._cancel(task, "The server shut down.")
        for task in self.store:
            if task.expiry is not None and task.expiry.active():
                task.expiry.cancel()
            task.expiry = None
        return len(running)

    @property
    def running(self) -> int:
        return sum(1 for task in self.store if not task.terminal)

    # -- methods --------------------------------------------------------------------------------

    def _find(self, request: Request) -> Task:
        if request.modern and not self.declared(request):
            # SEP-2663 §Error Handling: tasks/* from a non-declaring client.
            raise MissingClientCapability(
                f"{request.method} needs the {TASKS_EXTENSION} extension in clientCapabilities",
                data=NEEDS_TASKS,
            )
        if not request.modern and request.version != LEGACY_TASK_VERSION:
            raise MethodNotFound(f"Method not found: {request.method} (tasks arrived in protocol 2025-11-25)")
        task_id = request.params.get("taskId")
        if not isinstance(task_id, str):
            raise InvalidParams("Invalid params: taskId must be a string")
        task = self.store.get(task_id)
        if task is None or task.owner != self._owner(request) or task.modern != request.modern:
            raise InvalidParams(f"Failed to retrieve task: Task not found ({task_id})")
        return task

    @staticmethod
    def _owner(request: Request) -> str:
        if request.modern:
            return f"caller:{request.exchange.caller.name}"
        session = request.exchange.session
        return f"session:{session.id}" if session is not None else "none"

    def own_tasks(self, request: Request, task_ids: list[str]) -> list[str]:
        """The ids among ``task_ids`` of modern tasks that ``request``'s caller owns."""
        owner = self._owner(request)
        found = (self.store.get(task_id) for task_id in task_ids)
        return [task.task_id for task in found if task is not None and task.modern and task.owner == owner]

    def get(self, request: Request) -> dict[str, Any]:
        """``tasks/get``: the task (SEP-2663: detailed, with its outcome inlined)."""
        task = self._find(request)
        return task.detailed() if task.modern else task.info()

    def update(self, request: Request) -> dict[str, Any]:
        """``tasks/update`` (modern): deliver answers to outstanding input requests; an ack."""
        task = self._find(request)
        responses = request.params.get("inputResponses")
        if not isinstance(responses, dict):
            raise InvalidParams("Invalid params: inputResponses must be an object")
        # Keys that are not outstanding are ignored (SEP-2663 §Task Update Requests).
        ready = [(task.answers.pop(key), value) for key, value in responses.items() if key in task.answers]
        for key in responses:
            task.input_requests.pop(key, None)
        if ready and not task.input_requests and task.status == INPUT_REQUIRED:
            self.set_status(task, WORKING)
        for d, value in ready:
            d.callback(value)
        return {}

    def cancel(self, request: Request) -> dict[str, Any]:
        """``tasks/cancel``: modern, an ack (idempotent on a finished task); legacy, the
        cancelled task, and -32602 for one already finished."""
        task = self._find(request)
        if not task.modern and task.terminal:
            # 2025-11-25 basic/utilities/tasks §Task Cancellation.
            raise InvalidParams(f"Invalid params: task {task.task_id} is already {task.status}")
        self._cancel(task, "The task was cancelled by request.")
        return {} if task.modern else task.info()

    def result(self, request: Request) -> Any:
        """``tasks/result`` (legacy): what the call would have returned, once it has."""
        task = self._find(request)
        d: Deferred[Any] = Deferred(lambda waiter: task.waiters.remove(waiter) if waiter in task.waiters else None)
        if task.terminal:
            self._answer_waiter(task, d)
        else:
            task.waiters.append(d)
        return d

    def list(self, request: Request, page_size: int) -> dict[str, Any]:
        """``tasks/list`` (legacy): the session's tasks, oldest first, paginated."""
        from mcpd.tools.pack import paginate

        if request.version != LEGACY_TASK_VERSION:
            raise MethodNotFound(f"Method not found: {request.method} (tasks arrived in protocol 2025-11-25)")
        cursor = request.params.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidParams("Invalid params: cursor must be a string")
        mine = sorted(self.store.owned_by(self._owner(request)), key=_order)
        try:
            page, next_cursor = paginate(mine, _order, cursor, page_size)
        except ValueError:
            raise InvalidParams("Invalid params: unknown cursor; start again without one") from None
        result: dict[str, Any] = {"tasks": [task.info() for task in page]}
        if next_cursor is not None:
            result["nextCursor"] = next_cursor
        return result

    def _answer_waiter(self, task: Task, waiter: Deferred[Any]) -> None:
        if task.status == COMPLETED and task.result is not None:
            result = dict(task.result)
            meta = dict(result.get("_meta") or {})
            meta[RELATED_TASK] = {"taskId": task.task_id}
            result["_meta"] = meta
            waiter.callback(result)
        elif task.status == FAILED and task.error is not None:
            waiter.errback(Failure(TaskFailed(task.error)))
        else:
            waiter.errback(Failure(InvalidRequest(f"Task {task.task_id} was cancelled; it has no result")))


class _TaskStart:
    """One tools/call on its way to becoming a task: the task begins when the call arrives, or
    when the handler calls ``ctx.start_task()``; until then the call is an ordinary request."""

    def __init__(
        self, manager: TaskManager, request: Request, plan: TaskPlan, ctx: ToolContext, channel: RequestChannel
    ) -> None:
        self.manager = manager
        self.request = request
        self.plan = plan
        self.ctx = ctx
        self.channel = channel
        self.task: Task | None = None
        self.work: Deferred[Any] | None = None
        self.response: Deferred[Any] = Deferred(self._abandon)

    def run(self, run: Callable[[ToolContext], Deferred[Any]]) -> Deferred[Any]:
        self.ctx._start_task = self.begin
        if self.plan.start == "call":
            begun = self.begin()
            if begun.called and isinstance(begun.result, Failure):
                return begun  # no room for the task: the call is refused
        self.work = run(self.ctx)
        if self.task is not None:
            self.manager._track(self.task, self.work)
        else:
            self.work.addBoth(self._before_task)
        return self.response

    def begin(self) -> Deferred[bool]:
        """Make the call a task now: the client gets its CreateTaskResult."""
        if self.task is None:
            try:
                task = self.task = self.manager._create(self.request, self.plan)
            except MCPError as e:
                return fail(e)
            self.ctx._channel = TaskChannel(self.channel, task, self.manager)
            self.ctx._progress_sink = None  # progress belongs to the request, now answered
            self.ctx.task_id = task.task_id
            if self.work is not None:
                self.manager._track(task, self.work)
            self.response.callback(self.manager._created(task))
        return succeed(True)

    def _before_task(self, outcome: Any) -> Any:
        if self.task is not None:
            return outcome  # the task began meanwhile: its own callback takes the outcome
        if self.response.called:
            return None  # the request was cancelled and the handler ended anyway
        if isinstance(outcome, Failure):
            self.response.errback(outcome)
        else:
            self.response.callback(outcome)
        return None

    def _abandon(self, _response: Deferred[Any]) -> None:
        # The request went away before the task began: so does the work.
        if self.work is not None and not self.work.called:
            self.work.cancel()


def _order(task: Task) -> str:
    return f"{task.created:020.6f}:{task.task_id}"


__all__ = [
    "TASKS_EXTENSION",
    "MemoryTaskStore",
    "Task",
    "TaskChannel",
    "TaskManager",
    "TaskPlan",
    "TaskStoreFull",
]
