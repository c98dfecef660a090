# -*- test-case-name: tests.test_cluster -*-
"""Change notifications and task commands between instances.

- Changes (list changed, resource updated, a modern task's status): the instance where one
  happens delivers it to its own subscribers and broadcasts it with an id; every other instance
  delivers it to its own (the ``relay`` of `mcpd.protocol.changes.ChangeFeed`). Tenant rules are the
  feed's, applied where the subscriber is.
- Tasks: records are in the shared `ITaskStore`, so any instance answers ``tasks/get`` and
  ``tasks/list``; ``tasks/cancel`` and ``tasks/update`` are sent to the instance named by the
  record's ``runner`` (`mcpd.protocol.tasks.TaskRemote`). When that instance is gone (nobody
  heard, and the registry confirms it), the work went with it: a cancel marks the record
  cancelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpd.cluster.bus import ClusterUnavailable, InstanceGone
from mcpd.interfaces import CANCELLED, TaskRecord

if TYPE_CHECKING:
    from mcpd.cluster.bus import ClusterBus
    from mcpd.cluster.instances import InstanceRegistry
    from mcpd.protocol.changes import ChangeFeed
    from mcpd.protocol.tasks import TaskManager

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
    that instance's side of them."""

    def __init__(self, bus: ClusterBus, manager: TaskManager, clock: Any, registry: InstanceRegistry) -> None:
        self.bus = bus
        self.registry = registry
        self.manager = manager
        self.clock = clock
        manager.instance = bus.instance
        manager.remote = self
        bus.on("task-cancel", self._cancel_here)
        bus.on("task-update", self._update_here)

    def cancel(self, record: TaskRecord) -> Deferred[TaskRecord]:
        def cancelled(reply: dict[str, Any]) -> TaskRecord:
            data = reply.get("record")
            return TaskRecord.from_json(data) if isinstance(data, dict) else record

        def nobody_heard(failure: Failure) -> Deferred[TaskRecord]:
            failure.trap(InstanceGone)
            # Nobody heard: gone, or its bus connection is being made again. Ask the registry.
            return self.registry.alive(record.runner).addCallback(runner_gone)

        def runner_gone(alive: bool) -> Deferred[TaskRecord]:
            if alive:
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
            d = self.manager.store.save(record).addCallback(lambda _none: self.manager.store.get(record.task_id))
            return d.addCallback(lambda kept: kept or record)

        return self.bus.request(record.runner, "task-cancel", {"task": record.task_id}).addCallbacks(
            cancelled, nobody_heard
        )

    def update(self, record: TaskRecord, responses: dict[str, Any]) -> Deferred[Any]:
        return self.bus.request(record.runner, "task-update", {"task": record.task_id, "responses": responses})

    def wait(self, record: TaskRecord) -> Deferred[TaskRecord]:
        """Polls the store every poll interval until the task has ended (or is gone)."""
        interval = max(record.poll_interval_ms, 100) / 1000

        def check(current: TaskRecord | None) -> Any:
            if current is None:
                return record
            if current.terminal:
                return current
            return deferLater(self.clock, interval, self.manager.store.get, record.task_id).addCallback(check)

        return self.manager.store.get(record.task_id).addCallback(check)

    def _cancel_here(self, message: dict[str, Any]) -> dict[str, Any]:
        record = self.manager.cancel_here(str(message.get("task")))
        return {"record": record.to_json() if record is not None else None}

    def _update_here(self, message: dict[str, Any]) -> dict[str, Any]:
        run = self.manager.run_of(str(message.get("task")))
        responses = message.get("responses")
        if run is not None and isinstance(responses, dict):
            self.manager.update_here(run, responses)
        return {}
