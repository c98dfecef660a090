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

What a task must keep is a `mcpd.interfaces.TaskRecord` in an `mcpd.interfaces.ITaskStore`
(every call a Deferred, so a shared store can answer any instance's polls); what runs in this
process (the work's Deferred, the TTL timer, the answers it waits for) is its `TaskRun`.
"""

from __future__ import annotations

import functools
import itertools
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import attrs
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpd.interfaces import (
    CANCELLED,
    COMPLETED,
    FAILED,
    INPUT_REQUIRED,
    TERMINAL,
    WORKING,
    ITaskStore,
    StoreFull,
    StoreUnavailable,
    TaskRecord,
)
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
    from mcpd.protocol.vocabulary import Request
    from mcpd.tools.api import Tool, ToolContext

log = Logger(namespace="mcpd.tasks")

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
RELATED_TASK = "io.modelcontextprotocol/related-task"
# The only handshake-era version with (experimental) tasks.
LEGACY_TASK_VERSION = "2025-11-25"

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


def task_info(record: TaskRecord) -> dict[str, Any]:
    """The `Task` object in the task's era: ``ttlMs``/``pollIntervalMs`` (SEP-2663) or
    ``ttl``/``pollInterval`` (2025-11-25)."""
    info: dict[str, Any] = {
        "taskId": record.task_id,
        "status": record.status,
        "createdAt": iso8601(record.created),
        "lastUpdatedAt": iso8601(record.updated or record.created),
    }
    if record.status_message is not None:
        info["statusMessage"] = record.status_message
    if record.modern:
        info["ttlMs"] = record.ttl_ms
        info["pollIntervalMs"] = record.poll_interval_ms
    else:
        info["ttl"] = record.ttl_ms
        info["pollInterval"] = record.poll_interval_ms
    return info


def detailed_info(record: TaskRecord) -> dict[str, Any]:
    """SEP-2663 `DetailedTask`: the task with what its status carries inlined."""
    info = task_info(record)
    if record.status == INPUT_REQUIRED:
        info["inputRequests"] = dict(record.input_requests)
    elif record.status == COMPLETED and record.result is not None:
        info["result"] = record.result
    elif record.status == FAILED and record.error is not None:
        info["error"] = record.error
    return info


@attrs.define(eq=False)
class TaskRun:
    """The half of a task that lives in the process running it: its record as this process
    last wrote it, and what cannot leave the process."""

    record: TaskRecord
    # Answers awaited from the client (modern: delivered by tasks/update), by key.
    answers: dict[str, Deferred[Any]] = attrs.field(factory=dict, repr=False)
    used_keys: set[str] = attrs.field(factory=set, repr=False)
    # Legacy only: where notifications/tasks/status go, and blocked tasks/result requests.
    notify: Callable[[dict[str, Any]], None] | None = attrs.field(default=None, repr=False)
    waiters: list[Deferred[Any]] = attrs.field(factory=list, repr=False)
    work: Deferred[Any] | None = attrs.field(default=None, repr=False)
    # The timer that ends the task when its TTL passes.
    expiry: Any = attrs.field(default=None, repr=False)
    # Its place in the ledger while it is kept.
    claim: Claim | None = attrs.field(default=None, repr=False)

    @property
    def task_id(self) -> str:
        return self.record.task_id

    @property
    def terminal(self) -> bool:
        return self.record.terminal


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

    def __init__(self, inner: RequestChannel, run: TaskRun, manager: TaskManager) -> None:
        self._inner = inner
        self.run = run
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
        if self.run.terminal:
            return fail(CancelledError(f"task {self.run.task_id} is over"))
        if self.run.record.modern:
            return self._park(method, params, key)
        return self._legacy_request(method, params)

    def _park(self, method: str, params: dict[str, Any], key: str | None) -> Deferred[dict[str, Any]]:
        # SEP-2663 §Task Update Requests: a key names one request over the task's lifetime.
        run, manager = self.run, self.manager
        base = key or "input"
        key = base if base not in run.used_keys else f"{base}-{next(self._keys)}"
        while key in run.used_keys:
            key = f"{base}-{next(self._keys)}"
        run.used_keys.add(key)

        def withdraw(_d: Deferred[Any]) -> None:
            run.answers.pop(key, None)
            if run.record.input_requests.pop(key, None) is not None:
                manager.save(run)

        d: Deferred[dict[str, Any]] = Deferred(withdraw)
        run.record.input_requests[key] = {"method": method, "params": params}
        run.answers[key] = d
        manager.set_status(run, INPUT_REQUIRED)
        return d

    def _legacy_request(self, method: str, params: dict[str, Any]) -> Deferred[dict[str, Any]]:
        # 2025-11-25 basic/utilities/tasks §Associating Task-Related Messages.
        session = self._inner.session
        if session is None or session.closed:
            return fail(MCPError("the session this task belongs to has ended"))
        run, manager = self.run, self.manager
        meta = dict(params.get("_meta") or {})
        meta[RELATED_TASK] = {"taskId": run.task_id}
        key = f"legacy-{next(self._keys)}"
        run.record.input_requests[key] = {"method": method, "params": params}
        manager.set_status(run, INPUT_REQUIRED)

        def emit(message: dict[str, Any]) -> None:
            if self._inner._trace is not None:
                self._inner._trace(message)
            session.push(message)

        d = session.outbound.request(emit, method, {**params, "_meta": meta}, self._inner.timeout, self._inner.clock)

        def answered(outcome: Any) -> Any:
            run.record.input_requests.pop(key, None)
            if not run.record.input_requests and run.record.status == INPUT_REQUIRED:
                manager.set_status(run, WORKING)
            else:
                manager.save(run)
            return outcome

        return d.addBoth(answered)


class TaskRemote(Protocol):
    """How a `TaskManager` reaches the instance running a task's work, when several
    instances serve one deployment (`mcpd.cluster.relay`)."""

    def cancel(self, record: TaskRecord) -> Deferred[TaskRecord]:
        """Cancel the work; fires with the record as it then is."""

    def update(self, record: TaskRecord, responses: dict[str, Any]) -> Deferred[Any]:
        """Deliver ``tasks/update`` answers to the work."""

    def wait(self, record: TaskRecord) -> Deferred[TaskRecord]:
        """Fires with the record once the task has ended; cancelling it stops the wait."""

    def check(self, record: TaskRecord) -> Deferred[TaskRecord]:
        """The record of a running task of another instance as it is now: ended (failed) if
        that instance has gone."""

    def check_many(self, records: list[TaskRecord]) -> Deferred[list[TaskRecord]]:
        """`check` for each of ``records`` (any tasks: those not running elsewhere as read),
        in order."""

    def ended(self, record: TaskRecord) -> None:
        """A task of this process has ended and its record is saved: wake its waiters on the
        other instances."""


class TaskManager:
    """Creates, runs, reports on and ends tasks; serves the ``tasks/*`` methods of both eras.

    Records go to the ``store`` (read back for every poll); the runs of this process stay
    here, by task id."""

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
        self._runs: dict[str, TaskRun] = {}
        # Records whose save failed (the store unreachable), saved again until it answers.
        self.unsaved = UnsavedRecords(store, clock, landed=self._saved)
        # Several instances: this one's id (each record names its runner) and the way to the
        # others' tasks; "" and None for one process.
        self.instance = ""
        self.remote: TaskRemote | None = None

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

    def run_of(self, task_id: str) -> TaskRun | None:
        """The run of a task this process runs (or ran, while it is kept)."""
        return self._runs.get(task_id)

    def _create(self, request: Request, plan: TaskPlan) -> Deferred[TaskRun]:
        now = self.clock.seconds()
        session = request.exchange.session
        record = TaskRecord(
            # SEP-2663 §Security: task ids are unguessable.
            task_id=secrets.token_urlsafe(18),
            owner=self._owner(request),
            modern=plan.modern,
            created=now,
            updated=now,
            ttl_ms=plan.ttl_ms,
            poll_interval_ms=self.poll_interval_ms,
            account=request.exchange.caller.account,
            runner=self.instance,
        )
        run = TaskRun(record, notify=session.push if (session is not None and not plan.modern) else None)
        try:
            claim = run.claim = self._claim(run)
        except MCPError as e:
            return fail(e)

        def added(dropped: list[TaskRecord]) -> TaskRun:
            for gone in dropped:
                self._dropped(gone.task_id)
            self._runs[record.task_id] = run
            if record.ttl_ms is not None:
                # The TTL is kept by a timer, so a task nobody asks about still ends on time
                # (and lookups need not sweep the whole store).
                run.expiry = self.clock.callLater(record.ttl_ms / 1000, self._expire, record.task_id)
            log.debug("Task {id} created for {owner}", id=record.task_id, owner=record.owner)
            return run

        def refused(failure: Failure) -> Failure:
            claim.release()
            if failure.check(StoreFull):
                raise TaskStoreFull(str(failure.value), failure.value.capacity)
            return failure

        return self.store.add(record, now).addCallbacks(added, refused)

    def _claim(self, run: TaskRun) -> Claim:
        """The task's place among its caller's share of the tasks; at the share, the caller's
        oldest finished task makes room; `LimitExceeded` (429) if all of them still run."""
        claim = functools.partial(
            self.ledger.claim,
            run.record.account,
            TASK,
            end=functools.partial(self._revoke, run),
            rescope=functools.partial(self._rescoped, run),
        )
        try:
            return claim()
        except LimitExceeded as e:
            if e.status != 429:
                raise
            finished = [r for r in self._runs.values() if r.record.account == run.record.account and r.terminal]
            if not finished:
                raise
            self._forget(min(finished, key=lambda r: _order(r.record)))
            return claim()

    def _forget(self, run: TaskRun) -> None:
        """Stop keeping a task: its record leaves the store, its run this process."""
        self._discard(run)
        self.store.remove(run.task_id).addErrback(_store_failed, "remove", run.task_id)

    def _dropped(self, task_id: str) -> None:
        """The store dropped a record (its TTL passed, or it made room)."""
        run = self._runs.get(task_id)
        if run is not None:
            self._discard(run)

    def _revoke(self, run: TaskRun, reason: str) -> None:
        """The task's account ended (a revoked key): stop it and forget it."""
        self._cancel(run, f"The task was cancelled: {reason}.")
        if run.task_id in self._runs:
            self._forget(run)

    def _rescoped(self, run: TaskRun, scopes: frozenset[str], narrowed: bool) -> None:
        """The task's key lost a scope: it was started under a grant that no longer holds."""
        if narrowed:
            self._cancel(run, "The task was cancelled: its API key lost a scope.")

    def _expire(self, task_id: str) -> None:
        run = self._runs.get(task_id)
        if run is not None:
            run.expiry = None
            log.info("Task {id} expired (its TTL passed)", id=task_id)
            self._forget(run)

    def _created(self, run: TaskRun) -> dict[str, Any]:
        if run.record.modern:
            # SEP-2663 §Task Creation: a flat Result & Task.
            return {"resultType": "task", **task_info(run.record)}
        return {"task": task_info(run.record)}

    def _track(self, run: TaskRun, work: Deferred[Any]) -> None:
        run.work = work
        work.addBoth(self._finish, run)

    def _finish(self, outcome: Any, run: TaskRun) -> None:
        if run.terminal:
            return None  # cancelled (or expired) first: it stays so
        if isinstance(outcome, Failure):
            if outcome.check(CancelledError):
                self._end(run, CANCELLED, message="The task was cancelled.")
            elif outcome.check(MCPError):
                error = outcome.value.to_error()
                self._end(run, FAILED, error=error, message=f"The tool call failed: {error['message']}")
            else:
                log.failure("Task {id} failed", outcome, id=run.task_id)
                error = InternalError("Internal error while running the task; the server log has the details")
                self._end(run, FAILED, error=error.to_error(), message=error.message)
            return None
        if not isinstance(outcome, dict) or outcome.get("resultType") == "input_required":
            error = InternalError("The task asked for input the way a request does; it cannot be resumed")
            self._end(run, FAILED, error=error.to_error(), message=error.message)
            return None
        result = dict(outcome)
        if run.record.modern:
            result.setdefault("resultType", "complete")
        self._end(run, COMPLETED, result=result)
        return None

    def _end(
        self,
        run: TaskRun,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> None:
        record = run.record
        record.result, record.error = result, error
        record.status_message = message
        for key, d in list(run.answers.items()):
            run.answers.pop(key, None)
            d.cancel()
        record.input_requests.clear()
        self.set_status(run, status)
        waiters, run.waiters = run.waiters, []
        for waiter in waiters:
            self._answer_waiter(record, waiter)

    def set_status(self, run: TaskRun, status: str) -> None:
        """Move a task to ``status``, keep it, and tell whoever listens."""
        record = run.record
        record.status = status
        record.updated = max(self.clock.seconds(), record.created)
        self.save(run)
        if record.modern:
            if self.changes is not None:
                self.changes.task_status(record.task_id, detailed_info(record))
        elif run.notify is not None:
            # 2025-11-25 basic/utilities/tasks §Task Status Notification.
            run.notify({"jsonrpc": "2.0", "method": "notifications/tasks/status", "params": task_info(record)})

    def save(self, run: TaskRun) -> None:
        """Write the task's record to the store (polls read it from there). Nothing to wait
        for: what the store answers is handled here (`_saved`: a refusal is adopted), and a
        record it cannot take now is saved again when it can (`UnsavedRecords`)."""
        record = run.record
        if run.task_id in self.unsaved:
            # An earlier status waits for the store: this one goes after it, not past it.
            self.unsaved.hold(record)
            return
        self.store.save(record).addCallbacks(
            self._saved, self.unsaved.failed, callbackArgs=(record,), errbackArgs=(record,)
        )

    def _saved(self, refused: TaskRecord | None, record: TaskRecord) -> None:
        """The store took ``record`` (now or from `UnsavedRecords`), or refused it for the
        ended record it keeps (``refused``)."""
        if isinstance(refused, TaskRecord):
            run = self._runs.get(record.task_id)
            if run is not None:
                self._adopt(run, refused)
        elif record.terminal and not record.modern and self.remote is not None:
            # Its tasks/result may be awaited on another instance: once the record says so.
            self.remote.ended(record)

    def _adopt(self, run: TaskRun, kept: TaskRecord) -> None:
        """Another instance ended this task first (it took this one for gone while Redis was
        away): the run takes the kept record, so every instance answers alike, and its work
        stops."""
        if run.record.to_json() == kept.to_json():
            return
        log.warn(
            "Task {id} was ended as {status} by another instance; its work here stops",
            id=run.task_id,
            status=kept.status,
        )
        run.record = kept
        for key, d in list(run.answers.items()):
            run.answers.pop(key, None)
            d.cancel()
        waiters, run.waiters = run.waiters, []
        for waiter in waiters:
            self._answer_waiter(kept, waiter)
        if run.work is not None and not run.work.called:
            run.work.cancel()
        if not kept.modern and run.notify is not None:
            # 2025-11-25 basic/utilities/tasks §Task Status Notification.
            run.notify({"jsonrpc": "2.0", "method": "notifications/tasks/status", "params": task_info(kept)})

    def _discard(self, run: TaskRun) -> None:
        """A task no longer kept (its TTL passed, or it made room): stop its work, forget it."""
        self._runs.pop(run.task_id, None)
        if run.claim is not None:
            run.claim.release()
        if run.expiry is not None and run.expiry.active():
            run.expiry.cancel()  # else the timer would keep the forgotten task until its TTL
        run.expiry = None
        if not run.terminal:
            run.record.status = CANCELLED
            if run.work is not None:
                run.work.cancel()
        for waiter in run.waiters:
            waiter.errback(Failure(InvalidParams(f"Task {run.task_id} has expired")))
        run.waiters = []

    def _cancel(self, run: TaskRun, message: str) -> None:
        if run.terminal:
            return
        self._end(run, CANCELLED, message=message)
        if run.work is not None and not run.work.called:
            run.work.cancel()

    def shutdown(self) -> int:
        """Cancel every running task (the daemon is stopping); how many there were."""
        running = [run for run in self._runs.values() if not run.terminal]
        for run in running:
            self._cancel(run, "The server shut down.")
        for run in self._runs.values():
            if run.expiry is not None and run.expiry.active():
                run.expiry.cancel()
            run.expiry = None
        if self.unsaved:
            log.warn("{count} task status(es) could not be saved before the shutdown", count=len(self.unsaved))
        self.unsaved.stop()
        return len(running)

    @property
    def running(self) -> int:
        """How many tasks this process is running."""
        return sum(1 for run in self._runs.values() if not run.terminal)

    # -- methods --------------------------------------------------------------------------------

    def _find(self, request: Request) -> Deferred[TaskRecord]:
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
        owner = self._owner(request)

        def found(record: TaskRecord | None) -> TaskRecord:
            if record is None or record.owner != owner or record.modern != request.modern:
                raise InvalidParams(f"Failed to retrieve task: Task not found ({task_id})")
            return record

        run = self._runs.get(task_id)
        if run is not None:
            # Run here: its record is the freshest (a shared store may still be saving the
            # last change), and no round trip is needed.
            return succeed(run.record).addCallback(found)
        d = self.store.get(task_id).addCallback(found)
        if self.remote is not None:
            d.addCallback(self._as_it_is)
        return d

    def _as_it_is(self, record: TaskRecord) -> Any:
        """Another instance's running task: failed, if that instance has gone."""
        if record.terminal or not self._elsewhere(record):
            return record
        assert self.remote is not None
        return self.remote.check(record)

    @staticmethod
    def _owner(request: Request) -> str:
        if request.modern:
            return f"caller:{request.exchange.caller.name}"
        session = request.exchange.session
        return f"session:{session.id}" if session is not None else "none"

    def own_tasks(self, request: Request, task_ids: list[str]) -> list[str]:
        """The ids among ``task_ids`` of modern tasks of this process that ``request``'s caller
        owns."""
        owner = self._owner(request)
        found = (self._runs.get(task_id) for task_id in task_ids)
        return [run.task_id for run in found if run is not None and run.record.modern and run.record.owner == owner]

    def get(self, request: Request) -> Deferred[dict[str, Any]]:
        """``tasks/get``: the task (SEP-2663: detailed, with its outcome inlined)."""
        return self._find(request).addCallback(lambda r: detailed_info(r) if r.modern else task_info(r))

    def update(self, request: Request) -> Deferred[dict[str, Any]]:
        """``tasks/update`` (modern): deliver answers to outstanding input requests; an ack."""
        return self._find(request).addCallback(self._update, request)

    def _update(self, record: TaskRecord, request: Request) -> Any:
        responses = request.params.get("inputResponses")
        if not isinstance(responses, dict):
            raise InvalidParams("Invalid params: inputResponses must be an object")
        run = self._runs.get(record.task_id)
        if run is None:
            if self._elsewhere(record):
                assert self.remote is not None
                return self.remote.update(record, responses).addCallback(lambda _done: {})
            return {}  # nothing outstanding in this process
        return self.update_here(run, responses)

    def update_here(self, run: TaskRun, responses: dict[str, Any]) -> dict[str, Any]:
        """Deliver ``tasks/update`` answers to a task this process runs; an ack."""
        # Keys that are not outstanding are ignored (SEP-2663 §Task Update Requests).
        ready = [(run.answers.pop(key), value) for key, value in responses.items() if key in run.answers]
        withdrawn = [run.record.input_requests.pop(key, None) for key in responses]
        if ready and not run.record.input_requests and run.record.status == INPUT_REQUIRED:
            self.set_status(run, WORKING)
        elif any(request is not None for request in withdrawn):
            self.save(run)
        for d, value in ready:
            d.callback(value)
        return {}

    def cancel(self, request: Request) -> Deferred[dict[str, Any]]:
        """``tasks/cancel``: modern, an ack (idempotent on a finished task); legacy, the
        cancelled task, and -32602 for one already finished."""
        return self._find(request).addCallback(self._cancel_found)

    def _cancel_found(self, record: TaskRecord) -> Any:
        if not record.modern and record.terminal:
            # 2025-11-25 basic/utilities/tasks §Task Cancellation.
            raise InvalidParams(f"Invalid params: task {record.task_id} is already {record.status}")
        run = self._runs.get(record.task_id)
        if run is None and self._elsewhere(record) and not record.terminal:
            assert self.remote is not None
            return self.remote.cancel(record).addCallback(self._cancelled_elsewhere)
        if run is not None:
            self._cancel(run, "The task was cancelled by request.")
            record = run.record
        return {} if record.modern else task_info(record)

    @staticmethod
    def _cancelled_elsewhere(record: TaskRecord) -> dict[str, Any]:
        """The answer to a cancel of another instance's task, with the record it then had."""
        if record.modern:
            return {}
        if record.terminal and record.status != CANCELLED:
            # It ended before the cancel reached it: 2025-11-25 basic/utilities/tasks §Task
            # Cancellation (a task already in a terminal status: -32602).
            raise InvalidParams(f"Invalid params: task {record.task_id} is already {record.status}")
        return task_info(record)

    def cancel_here(self, task_id: str) -> TaskRecord | None:
        """Cancel a task this process runs (asked by another instance); its record, or None."""
        run = self._runs.get(task_id)
        if run is None:
            return None
        self._cancel(run, "The task was cancelled by request.")
        return run.record

    def _elsewhere(self, record: TaskRecord) -> bool:
        """Whether another instance runs the task's work."""
        return self.remote is not None and bool(record.runner) and record.runner != self.instance

    def result(self, request: Request) -> Deferred[Any]:
        """``tasks/result`` (legacy): what the call would have returned, once it has."""
        return self._find(request).addCallback(self._result_found)

    def _result_found(self, record: TaskRecord) -> Deferred[Any]:
        run = self._runs.get(record.task_id)
        if run is None and not record.terminal and self._elsewhere(record):
            assert self.remote is not None
            # Cancelling the request (its client went away) cancels the wait.
            return self.remote.wait(record).addCallback(self._result_of)
        waiters = run.waiters if run is not None else []
        d: Deferred[Any] = Deferred(lambda waiter: waiters.remove(waiter) if waiter in waiters else None)
        if record.terminal or run is None:
            self._answer_waiter(record, d)
        else:
            waiters.append(d)
        return d

    def list(self, request: Request, page_size: int) -> Deferred[dict[str, Any]]:
        """``tasks/list`` (legacy): the session's tasks, oldest first, paginated."""
        from mcpd.tools.pack import paginate

        if request.version != LEGACY_TASK_VERSION:
            raise MethodNotFound(f"Method not found: {request.method} (tasks arrived in protocol 2025-11-25)")
        cursor = request.params.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidParams("Invalid params: cursor must be a string")

        def listed(records: list[TaskRecord]) -> Any:
            mine = sorted(records, key=_order)
            try:
                page, next_cursor = paginate(mine, _order, cursor, page_size)
            except ValueError:
                raise InvalidParams("Invalid params: unknown cursor; start again without one") from None
            if self.remote is not None:
                # Another instance's running task: failed, if that instance has gone (as for
                # tasks/get), not "working" until the next sweep.
                return self.remote.check_many(page).addCallback(answer, next_cursor)
            return answer(page, next_cursor)

        def answer(page: list[TaskRecord], next_cursor: str | None) -> dict[str, Any]:
            result: dict[str, Any] = {"tasks": [task_info(record) for record in page]}
            if next_cursor is not None:
                result["nextCursor"] = next_cursor
            return result

        return self.store.owned_by(self._owner(request)).addCallback(listed)

    def _answer_waiter(self, record: TaskRecord, waiter: Deferred[Any]) -> None:
        try:
            result = self._result_of(record)
        except MCPError as e:
            waiter.errback(Failure(e))
        else:
            waiter.callback(result)

    @staticmethod
    def _result_of(record: TaskRecord) -> dict[str, Any]:
        """``tasks/result``'s answer for an ended task (its error is raised)."""
        if record.status == COMPLETED and record.result is not None:
            result = dict(record.result)
            meta = dict(result.get("_meta") or {})
            meta[RELATED_TASK] = {"taskId": record.task_id}
            result["_meta"] = meta
            return result
        if record.status == FAILED and record.error is not None:
            raise TaskFailed(record.error)
        raise InvalidRequest(f"Task {record.task_id} was cancelled; it has no result")


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
        self.task_run: TaskRun | None = None
        self._creating: Deferred[TaskRun] | None = None
        self.work: Deferred[Any] | None = None
        self.response: Deferred[Any] = Deferred(self._abandon)

    def run(self, work: Callable[[ToolContext], Deferred[Any]]) -> Deferred[Any]:
        self.ctx.link.start_task = self.begin
        if self.plan.start == "call":
            # The task exists before its work starts (or the call is refused: no room).
            return self.begin().addCallback(self._start_work, work)
        self._start_work(None, work)
        return self.response

    def _start_work(self, _begun: Any, work: Callable[[ToolContext], Deferred[Any]]) -> Deferred[Any]:
        self.work = work(self.ctx)
        if self.task_run is not None:
            self.manager._track(self.task_run, self.work)
        else:
            self.work.addBoth(self._before_task)
        return self.response

    def begin(self) -> Deferred[bool]:
        """Make the call a task now: the client gets its CreateTaskResult."""
        if self.task_run is not None:
            return succeed(True)
        if self._creating is None:
            self._creating = self.manager._create(self.request, self.plan)
            self._creating.addCallback(self._begun)
        outcome: Deferred[bool] = Deferred()
        self._creating.addCallbacks(self._relay, self._relay_failure, callbackArgs=(outcome,), errbackArgs=(outcome,))
        return outcome

    def _begun(self, run: TaskRun) -> TaskRun:
        self.task_run = run
        link = self.ctx.link
        link.channel = TaskChannel(self.channel, run, self.manager)
        link.progress_sink = None  # progress belongs to the request, now answered
        link.task_id = run.task_id
        if self.work is not None:
            self.manager._track(run, self.work)
        self.response.callback(self.manager._created(run))
        return run

    @staticmethod
    def _relay(run: TaskRun, outcome: Deferred[bool]) -> TaskRun:
        outcome.callback(True)
        return run

    def _relay_failure(self, failure: Failure, outcome: Deferred[bool]) -> None:
        self._creating = None  # no room: a later start_task() may try again
        outcome.errback(failure)

    def _before_task(self, outcome: Any) -> Any:
        if self.task_run is not None:
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


class UnsavedRecords:
    """Task records the store could not take (Redis down): each task's latest record (a copy
    taken when it is held) is saved again, with backoff, until the store answers (oldest first,
    `BATCH` at a time, so a store coming back is not flooded); while one is held, the task's
    later saves are held behind it (`TaskManager.save`), so they land in order. At most ``limit`` tasks are held (the oldest unfinished one is dropped, and counted:
    an end is lost only when every held record is one); a record that has ended is never
    replaced by one that has not. ``landed`` hears each save the store answered (None, or the
    ended record it kept instead: a refusal). Its counts are metrics (a prometheus-client
    collector)."""

    FIRST_DELAY = 0.5
    MAX_DELAY = 10.0
    # How many held records are sent to the store at once.
    BATCH = 100

    def __init__(
        self,
        store: ITaskStore,
        clock: IReactorTime,
        limit: int = 10_000,
        landed: Callable[[TaskRecord | None, TaskRecord], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.limit = limit
        self.landed = landed
        self._held: dict[str, TaskRecord] = {}
        self._delay = self.FIRST_DELAY
        self._call: Any = None
        self._flushing = False
        self._stopped = False
        self.retried = 0
        self.recovered = 0
        self.refused = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._held

    def failed(self, failure: Failure, record: TaskRecord) -> None:
        """A save of ``record`` failed: hold it if the store may take it later."""
        if not failure.check(StoreUnavailable):
            _store_failed(failure, "save", record.task_id)
            return
        if record.task_id not in self._held:
            log.warn(
                "Task {id}'s status could not be saved ({e}); saving it again once the store answers",
                id=record.task_id,
                e=failure.getErrorMessage(),
            )
        self.hold(record)

    def hold(self, record: TaskRecord) -> None:
        """Save (a copy of) ``record`` with the next try, in place of what its task held."""
        held = self._held.get(record.task_id)
        if held is not None and held.terminal and not record.terminal:
            return  # never go back from an end
        self._held.pop(record.task_id, None)
        self._held[record.task_id] = TaskRecord.from_json(record.to_json())
        if len(self._held) > self.limit:
            unfinished = (task_id for task_id, held in self._held.items() if not held.terminal)
            oldest = next(unfinished, None) or next(iter(self._held))
            del self._held[oldest]
            self.dropped += 1
            log.error("Task {id}'s status is lost: too many unsaved task records", id=oldest)
        self._schedule()

    def _schedule(self) -> None:
        if self._call is None and not self._flushing and self._held and not self._stopped:
            self._call = self.clock.callLater(self._delay, self._flush)

    def _flush(self) -> Deferred[None]:
        """Save the held records again, oldest first, `BATCH` at a time (each batch once the
        one before has been answered, so a store coming back is not sent them all at once),
        until one is still away."""
        self._call, self._flushing = None, True
        batch = list(itertools.islice(self._held.items(), self.BATCH))
        self.retried += len(batch)

        def saved(refused: TaskRecord | None, task_id: str, record: TaskRecord) -> None:
            if self._held.get(task_id) is record:
                del self._held[task_id]
                if isinstance(refused, TaskRecord):
                    self.refused += 1  # another instance ended the task first: not recovered
                else:
                    self.recovered += 1
            if self.landed is not None:
                self.landed(refused, record)

        def not_saved(failure: Failure, task_id: str, record: TaskRecord) -> None:
            # The store still away: kept for the next try. Anything else would be retried
            # forever unseen: said once, and the record given up.
            if failure.check(StoreUnavailable):
                return
            _store_failed(failure, "save", task_id)
            if self._held.get(task_id) is record:
                del self._held[task_id]
                self.dropped += 1

        def answered(_results: Any) -> Deferred[None] | None:
            # A record of the batch still held as it was sent: the store is still away.
            away = any(self._held.get(task_id) is record for task_id, record in batch)
            if self._held and not away and not self._stopped:
                return self._flush()
            self._flushing = False
            self._delay = min(self._delay * 2, self.MAX_DELAY) if self._held else self.FIRST_DELAY
            if not self._held:
                log.info("Every unsaved task status is saved")
            self._schedule()
            return None

        saves = [
            self.store.save(record).addCallback(saved, task_id, record).addErrback(not_saved, task_id, record)
            for task_id, record in batch
        ]
        return gatherResults(saves).addCallback(answered)

    def stop(self) -> None:
        """Stop trying (the daemon stops)."""
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        """``mcp_task_unsaved`` and its counters, read at scrape time."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily(
            "mcp_task_unsaved", "Task records whose latest status waits for the task store.", len(self._held)
        )
        for name, value, what in (
            ("mcp_task_save_retries", self.retried, "Task record saves tried again after the store failed."),
            ("mcp_task_save_recovered", self.recovered, "Task records saved after the store came back."),
            (
                "mcp_task_save_refused",
                self.refused,
                "Task records the store refused when it came back: another instance had ended the task.",
            ),
            ("mcp_task_save_dropped", self.dropped, "Task statuses lost: too many unsaved task records."),
        ):
            yield CounterMetricFamily(name, what, value)


def _order(record: TaskRecord) -> str:
    return f"{record.created:020.6f}:{record.task_id}"


def _store_failed(failure: Failure, action: str, task_id: str) -> None:
    log.failure("The task store could not {action} task {id}", failure, action=action, id=task_id)


__all__ = [
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "INPUT_REQUIRED",
    "TASKS_EXTENSION",
    "TERMINAL",
    "WORKING",
    "TaskChannel",
    "TaskManager",
    "TaskPlan",
    "TaskRun",
    "TaskStoreFull",
    "detailed_info",
    "task_info",
]
