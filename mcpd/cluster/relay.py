# -*- test-case-name: tests.test_cluster -*-
"""Change notifications and task commands between instances.

- Changes (list changed, resource updated, a modern task's status): the instance where one
  happens delivers it to its own subscribers and broadcasts it with an id; every other instance
  delivers it to its own (the ``relay`` of `mcpd.protocol.changes.ChangeFeed`). Tenant rules are the
  feed's, applied where the subscriber is.
- Tasks: records are in the shared `ITaskStore`, so any instance answers ``tasks/get`` and
  ``tasks/list``; ``tasks/cancel`` and ``tasks/update`` are sent to the instance named by the
  record's ``runner`` (`mcpd.protocol.tasks.TaskRemote`). When that instance is gone (its
  registry entry expired), the work went with it: the task is settled as failed by the first
  instance to see it (`TaskRelay`), or cancelled by a cancel that nobody heard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, FirstError, gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpd.cluster.bus import ClusterUnavailable, InstanceGone
from mcpd.interfaces import CANCELLED, FAILED, StoreUnavailable, TaskRecord
from mcpd.protocol.errors import InternalError, InvalidParams
from mcpd.protocol.tasks import detailed_info

if TYPE_CHECKING:
    from mcpd.cluster.bus import ClusterBus
    from mcpd.cluster.instances import InstanceRegistry
    from mcpd.protocol.changes import ChangeFeed
    from mcpd.protocol.tasks import TaskManager
    from mcpd.stores.redis.tasks import RedisTaskStore

log = Logger(namespace="mcpd.cluster")


class ChangeRelay:
    """Carries a `ChangeFeed`'s changes to and from the other instances."""

    def __init__(self, bus: ClusterBus, feed: ChangeFeed) -> None:
        self.bus = bus
        self.feed = feed
        feed.relay = self.send
        bus.on("change", self._received)

    def send(self, what: str, args: dict[str, Any]) -> None:
        self.bus.broadcast("change", {"what": what, "args": args}).addErrback(
            lambda f: log.warn("A change could not reach the other instances: {e}", e=f.getErrorMessage())
        )

    def _received(self, message: dict[str, Any]) -> None:
        what, args = message.get("what"), dict(message.get("args") or {})
        if what == "list_changed":
            self.feed.list_changed(str(args["kind"]), change=str(args["change"]))
        elif what == "resource_updated":
            tenant = args.get("tenant")
            self.feed.resource_updated(
                str(args["uri"]), tenant=None if tenant is None else str(tenant), change=str(args["change"])
            )
        elif what == "task_status":
            self.feed.task_status(str(args["task_id"]), dict(args["task"]), change=str(args["change"]))


class TaskRelay:
    """The `TaskRemote` of a `TaskManager`: its commands to the instance running a task, and
    that instance's side of them; the watch over tasks whose runner has gone.

    A task's work lives in its runner's process: when the runner stops (``kill -9``, a crash),
    the record would say "working" until its TTL. Its registry entry (`InstanceRegistry`) is
    gone within `TTL` seconds, and then the task is settled as failed (`ORPHANED`), once, by
    whichever instance sees it first: a reader (``tasks/get``, ``tasks/result``, ...), or the
    sweep every `SWEEP` seconds, which also drops the records whose TTL has passed. Nothing is
    settled while the registry is not `sure <InstanceRegistry.sure>` (back from a Redis outage,
    live runners may not have written their entries again yet); a runner taken for gone all the
    same learns it at its next save (`TaskManager._adopt`).
    Blocked ``tasks/result`` requests for others' tasks wait for the runner's "task-ended"
    broadcast, with a check at each sweep (a broadcast lost while the bus reconnected, a runner
    that died); they end when their request is cancelled or this instance stops.
    """

    # Seconds between sweeps; and how long a runner not found gone is believed alive.
    SWEEP = 5.0
    SEEN_ALIVE = 2.0

    def __init__(
        self,
        bus: ClusterBus,
        manager: TaskManager,
        clock: Any,
        registry: InstanceRegistry,
        store: RedisTaskStore | None = None,
    ) -> None:
        self.bus = bus
        self.registry = registry
        self.manager = manager
        self.clock = clock
        self.store: RedisTaskStore = store if store is not None else manager.store  # type: ignore[assignment]
        manager.instance = bus.instance
        manager.remote = self
        bus.on("task-cancel", self._cancel_here)
        bus.on("task-update", self._update_here)
        bus.on("task-ended", self._ended_elsewhere)
        # Runners not found gone, until when they are believed alive.
        self._alive: dict[str, float] = {}
        # Blocked tasks/result requests for tasks of other instances, by task id.
        self._waiting: dict[str, list[Deferred[TaskRecord]]] = {}
        self._sweep = LoopingCall(self.sweep)
        self._sweep.clock = clock

    def start(self) -> None:
        self._sweep.start(self.SWEEP, now=False)

    def stop(self) -> None:
        """This instance stops: its sweeps end, and so do the requests waiting here."""
        if self._sweep.running:
            self._sweep.stop()
        waiting, self._waiting = self._waiting, {}
        for task_id, waiters in waiting.items():
            for waiter in waiters:
                waiter.errback(
                    Failure(ClusterUnavailable(f"the server shut down while waiting for task {task_id}; ask again"))
                )

    @property
    def waiting(self) -> int:
        """How many tasks/result requests wait here for other instances' tasks."""
        return sum(len(waiters) for waiters in self._waiting.values())

    # -- commands to the runner -----------------------------------------------------------------

    def cancel(self, record: TaskRecord) -> Deferred[TaskRecord]:
        def cancelled(reply: dict[str, Any]) -> TaskRecord:
            data = reply.get("record")
            return TaskRecord.from_json(data) if isinstance(data, dict) else record

        def nobody_heard(failure: Failure) -> Deferred[TaskRecord]:
            failure.trap(InstanceGone)
            # Nobody heard: gone, or its bus connection is being made again. Ask the registry
            # (a runner of this host that was killed is known gone at once).
            return self.registry.gone(record.runner).addCallback(runner_gone)

        def runner_gone(gone: bool) -> Deferred[TaskRecord]:
            if not gone:
                raise ClusterUnavailable(
                    f"instance {record.runner}, running task {record.task_id}, did not hear the cancel"
                    " (its connection to Redis is being restored); try again shortly"
                )
            # Its instance is not running: neither is the work. Say so in the record.
            log.info(
                "Task {id}'s instance {runner} is gone; marking it cancelled", id=record.task_id, runner=record.runner
            )
            record.status = CANCELLED
            record.status_message = "The task was cancelled: the instance running it had stopped."
            record.updated = self.clock.seconds()
            # The store keeps the first terminal status: answer with what it kept.
            return self.manager.store.save(record).addCallback(
                lambda refused: refused if isinstance(refused, TaskRecord) else record
            )

        return self.bus.request(record.runner, "task-cancel", {"task": record.task_id}).addCallbacks(
            cancelled, nobody_heard
        )

    def update(self, record: TaskRecord, responses: dict[str, Any]) -> Deferred[Any]:
        return self.bus.request(record.runner, "task-update", {"task": record.task_id, "responses": responses})

    def ended(self, record: TaskRecord) -> None:
        """A task run here has ended and its record is saved: tell the instances where its
        result may be awaited."""
        self.bus.broadcast("task-ended", {"task": record.task_id}).addErrback(
            lambda f: log.warn(
                "The end of task {id} could not be announced: {e}", id=record.task_id, e=f.getErrorMessage()
            )
        )

    # -- runners that have gone -----------------------------------------------------------------

    def check(self, record: TaskRecord) -> Deferred[TaskRecord]:
        """``record`` (running on another instance) as it is: settled as failed if its runner
        has gone. A runner not gone is not asked about again for `SEEN_ALIVE` s (unless this
        instance finds it stopped meanwhile)."""
        now = self.clock.seconds()
        if self._alive.get(record.runner, 0.0) > now and not self.registry.found_stopped(record.runner):
            return succeed(record)
        settled = _orphaned(record, now)

        def judged(gone: bool) -> Any:
            if not gone:
                # Registered; or this instance is back from a Redis outage (not `sure`), and a
                # live runner may not have written its registry entry again yet. Believed for
                # a while either way: once sure, a runner without an entry is gone at most
                # SEEN_ALIVE s later.
                self._alive[record.runner] = self.clock.seconds() + self.SEEN_ALIVE
                return record
            return self.store.settle(settled, self.registry.key(record.runner)).addCallback(answered)

        def answered(outcome: int) -> Any:
            if outcome == 0:
                self._alive[record.runner] = self.clock.seconds() + self.SEEN_ALIVE
                return record
            if outcome == 1:
                self._settled(settled)
                return settled
            return self.store.get(record.task_id).addCallback(lambda kept: kept or record)

        def unknown(failure: Failure) -> TaskRecord:
            # Redis did not answer the check: the record as read (the next reader asks again).
            failure.trap(StoreUnavailable)
            return record

        # A runner of this host that was killed is known gone at once (its entry forgotten).
        return self.registry.gone(record.runner).addCallback(judged).addErrback(unknown)

    def check_many(self, records: list[TaskRecord]) -> Deferred[list[TaskRecord]]:
        """`check` for each of ``records`` (a ``tasks/list`` page), in order: those running on
        other instances are checked with one round trip per runner while it lives (its first
        task's check tells the others'), one each when it has gone."""
        checked = list(records)
        by_runner: dict[str, list[int]] = {}
        for n, record in enumerate(records):
            if not record.terminal and record.runner and record.runner != self.bus.instance:
                by_runner.setdefault(record.runner, []).append(n)

        def check(n: int) -> Deferred[None]:
            return self.check(records[n]).addCallback(lambda record: checked.__setitem__(n, record))

        def runner(first: int, rest: list[int]) -> Deferred[Any]:
            return check(first).addCallback(lambda _: gatherResults([check(n) for n in rest], consumeErrors=True))

        runners = [runner(first, rest) for first, *rest in by_runner.values()]
        d = gatherResults(runners, consumeErrors=True)
        d.addErrback(_first_failure)
        return d.addCallback(lambda _: checked)

    def _settled(self, record: TaskRecord) -> None:
        log.warn(
            "Task {id} failed: its instance {runner} stopped while running it", id=record.task_id, runner=record.runner
        )
        if record.modern:
            if self.manager.changes is not None:
                self.manager.changes.task_status(record.task_id, detailed_info(record))
        else:
            self._answer(record.task_id, record)
            self.bus.broadcast("task-ended", {"task": record.task_id}).addErrback(lambda _f: None)

    def sweep(self) -> Deferred[None]:
        """Settle other instances' tasks whose runner has gone, drop the records whose TTL has
        passed, and look again at the tasks awaited here."""
        now = self.clock.seconds()
        self._alive = {runner: until for runner, until in self._alive.items() if until > now}

        def settle(orphans: list[TaskRecord]) -> Deferred[Any]:
            for record in orphans:  # seen alive lately, but gone now
                self._alive.pop(record.runner, None)
            return gatherResults([self.check(record) for record in orphans], consumeErrors=True)

        def expired(dropped: list[TaskRecord]) -> None:
            for record in dropped:
                self.manager._dropped(record.task_id)
                self._answer(record.task_id, None)

        # Back from a Redis outage (`InstanceRegistry.sure`), live runners may not be registered
        # again yet: no orphans until they have had the time.
        d = (
            self.store.orphans(self.registry.key(""), self.bus.instance).addCallback(settle)
            if self.registry.sure()
            else succeed(None)
        )
        d.addCallback(lambda _: self.store.expire(now)).addCallback(expired)
        d.addCallback(lambda _: gatherResults([self._look(task_id) for task_id in list(self._waiting)]))
        return d.addErrback(self._sweep_failed)

    @staticmethod
    def _sweep_failed(failure: Failure) -> None:
        if failure.check(FirstError):
            failure = failure.value.subFailure
        if failure.check(StoreUnavailable, ClusterUnavailable):
            log.debug("Task sweep skipped: {e}", e=failure.getErrorMessage())
        else:
            log.failure("The task sweep failed", failure)

    # -- tasks/result for another instance's task ------------------------------------------------

    def wait(self, record: TaskRecord) -> Deferred[TaskRecord]:
        """Fires with the record once the task has ended (fails if it has expired); woken by
        the runner's "task-ended" broadcast, and checked at every sweep. Cancelling it (the
        request went away) stops the wait."""
        task_id = record.task_id

        def withdraw(waiter: Deferred[TaskRecord]) -> None:
            waiters = self._waiting.get(task_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiting.pop(task_id, None)

        waiter: Deferred[TaskRecord] = Deferred(withdraw)
        self._waiting.setdefault(task_id, []).append(waiter)
        # It may have ended since it was read.
        self._look(task_id)
        return waiter

    def _ended_elsewhere(self, message: dict[str, Any]) -> None:
        task_id = str(message.get("task"))
        if task_id in self._waiting:
            self._look(task_id)

    def _look(self, task_id: str) -> Deferred[None]:
        """Answer the requests waiting for ``task_id`` if it has ended (its runner gone: once
        it is settled)."""

        def found(record: TaskRecord | None) -> Any:
            if record is None or record.terminal:
                return record
            return self.check(record) if record.runner != self.bus.instance else record

        def answer(record: TaskRecord | None) -> None:
            if record is None or record.terminal:
                self._answer(task_id, record)

        d = self.store.get(task_id).addCallback(found).addCallback(answer)
        return d.addErrback(
            lambda f: log.debug("Task {id} could not be looked at: {e}", id=task_id, e=f.getErrorMessage())
        )

    def _answer(self, task_id: str, record: TaskRecord | None) -> None:
        for waiter in self._waiting.pop(task_id, []):
            if record is None:
                waiter.errback(Failure(InvalidParams(f"Task {task_id} has expired")))
            else:
                waiter.callback(record)

    # -- this instance's side -------------------------------------------------------------------

    def _cancel_here(self, message: dict[str, Any]) -> dict[str, Any]:
        record = self.manager.cancel_here(str(message.get("task")))
        return {"record": record.to_json() if record is not None else None}

    def _update_here(self, message: dict[str, Any]) -> dict[str, Any]:
        run = self.manager.run_of(str(message.get("task")))
        responses = message.get("responses")
        if run is not None and isinstance(responses, dict):
            self.manager.update_here(run, responses)
        return {}


def _first_failure(failure: Failure) -> Failure:
    """What failed first, out of (nested) `gatherResults`."""
    while failure.check(FirstError):
        failure = failure.value.subFailure
    return failure


# A task whose runner stopped: its error, and its status message.
ORPHANED = "The instance running this task stopped before the task finished; run the tool again."


def _orphaned(record: TaskRecord, now: float) -> TaskRecord:
    """``record`` settled as failed: its runner has gone, and its work with it."""
    settled = TaskRecord.from_json(record.to_json())
    settled.status = FAILED
    settled.status_message = ORPHANED
    settled.error = InternalError(ORPHANED).to_error()
    settled.result = None
    settled.input_requests = {}
    settled.updated = max(now, record.created)
    return settled
