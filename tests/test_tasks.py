"""Tests for tasks (mcpd.protocol.tasks): the io.modelcontextprotocol/tasks extension of
2026-07-28 and the experimental tasks of 2025-11-25, in memory with a Clock, every message checked
against the schema of the version in force; then the real daemon driven over HTTP (the official
Python SDK 2.3 client has no tasks support).
"""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python import threadable
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mcpd.interfaces import TaskRecord
from mcpd.protocol import errors
from mcpd.protocol.engine import Engine
from mcpd.protocol.ledger import CALL, SUBSCRIPTION, TASK, Ledger, Limit
from mcpd.protocol.tasks import TASKS_EXTENSION, iso8601
from mcpd.protocol.versions import LATEST_LEGACY, META_CLIENT_CAPABILITIES, META_PROTOCOL_VERSION
from mcpd.stores.memory import MemoryTaskStore
from mcpd.stores.threads import ToolThreads
from mcpd.tools import ToolRegistry
from mcpd.tools.api import Caller, Tool, ToolResult
from mcpd.tools.pack import ToolPack
from tests import conformance_pack
from tests.daemon import DaemonTestMixin
from tests.engine_harness import MODERN, Peer, assert_valid, error_code, legacy_peer

WITH_TASKS = {META_CLIENT_CAPABILITIES: {"elicitation": {}, "extensions": {TASKS_EXTENSION: {}}}}
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")
TERMINAL = ("completed", "failed", "cancelled")


class ClockedTestCase(SynchronousTestCase):
    """The conformance fixtures sleep on this test's Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        conformance_pack.sleep_clock = self.clock
        self.addCleanup(setattr, conformance_pack, "sleep_clock", None)

    def engine(self, **kwargs: Any) -> Engine:
        return Engine(ToolRegistry([conformance_pack.pack]), clock=self.clock, client_timeout=5, **kwargs)


class ModernTaskTests(ClockedTestCase):
    """SEP-2663 over the stateless era."""

    def setUp(self) -> None:
        super().setUp()
        self.e = self.engine()
        self.peer = Peer(self, self.e, session=False, modern=True)

    def call(self, name: str, arguments: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
        return self.peer.result("tools/call", {"name": name, "arguments": arguments or {}, **params}, meta=WITH_TASKS)

    def get(self, task_id: str) -> dict[str, Any]:
        return self.peer.result("tasks/get", {"taskId": task_id}, meta=WITH_TASKS)

    def test_discover_advertises_the_extension(self) -> None:
        capabilities = self.peer.result("server/discover")["capabilities"]
        self.assertEqual(capabilities["extensions"], {TASKS_EXTENSION: {}})
        self.assertNotIn("tasks", capabilities)

    def test_lifecycle_of_a_task(self) -> None:
        created = self.call("slow_compute", {"seconds": 5, "label": "x"})
        self.assertEqual(created["resultType"], "task")
        for absent in ("task", "result", "error", "inputRequests", "requestState", "ttl", "pollInterval"):
            self.assertNotIn(absent, created)
        self.assertEqual(created["status"], "working")
        self.assertTrue(ISO.match(created["createdAt"]) and ISO.match(created["lastUpdatedAt"]))
        self.assertIsInstance(created["ttlMs"], int)
        self.assertIsInstance(created["pollIntervalMs"], int)
        working = self.get(created["taskId"])
        self.assertEqual((working["status"], working["resultType"]), ("working", "complete"))
        self.assertNotIn("result", working)
        self.clock.advance(5)
        done = self.get(created["taskId"])
        self.assertEqual(done["status"], "completed")
        self.assertEqual(done["result"]["content"][0]["text"], "Computed x after 5s")
        self.assertNotIn("_meta", done["result"])

    def test_plain_calls_keep_off_the_store(self) -> None:
        result = self.call("greet", {"name": "W"}, task={"ttl": 1000})
        self.assertEqual((result["resultType"], result["content"][0]["text"]), ("complete", "Hello, W!"))
        self.assertEqual(self.successResultOf(self.e.tasks.store.count()), 0)

    def test_without_the_extension(self) -> None:
        # An optional tool runs as a plain call; a required one is -32021; tasks/* too.
        d = self.peer.start(self.peer.message("tools/call", {"name": "slow_compute", "arguments": {"seconds": 1}}))
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(d)["result"]["resultType"], "complete")
        refused = self.peer.request("tools/call", {"name": "failing_job", "arguments": {}})
        self.assertEqual(error_code(refused), errors.MISSING_REQUIRED_CLIENT_CAPABILITY)
        self.assertEqual(refused["error"]["data"]["requiredCapabilities"], {"extensions": {TASKS_EXTENSION: {}}})
        for method, params in (("tasks/get", {}), ("tasks/update", {"inputResponses": {}}), ("tasks/cancel", {})):
            response = self.peer.request(method, {"taskId": "gate", **params})
            self.assertEqual(error_code(response), errors.MISSING_REQUIRED_CLIENT_CAPABILITY)

    def test_tool_error_completes_and_protocol_error_fails(self) -> None:
        failing = self.call("failing_job")["taskId"]
        broken = self.call("protocol_error_job")["taskId"]
        self.clock.advance(1)
        completed = self.get(failing)
        self.assertEqual(completed["status"], "completed")
        self.assertIs(completed["result"]["isError"], True)
        failed = self.get(broken)
        self.assertEqual(failed["status"], "failed")
        self.assertEqual(failed["error"]["code"], errors.INTERNAL_ERROR)
        self.assertNotIn("result", failed)

    def test_cancel(self) -> None:
        task_id = self.call("slow_compute", {"seconds": 60})["taskId"]
        ack = self.peer.result("tasks/cancel", {"taskId": task_id}, meta=WITH_TASKS)
        self.assertEqual(ack, {"resultType": "complete"})
        self.assertEqual(self.get(task_id)["status"], "cancelled")
        # The sleep was cancelled too; what is left is the task's own TTL timer.
        expiry = self.e.tasks.run_of(task_id).expiry  # type: ignore[union-attr]
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c is not expiry], [])
        # Idempotent on a finished task; an unknown task is -32602.
        self.assertEqual(self.peer.result("tasks/cancel", {"taskId": task_id}, meta=WITH_TASKS), ack)
        unknown = self.peer.request("tasks/cancel", {"taskId": "nope"}, meta=WITH_TASKS)
        self.assertEqual(error_code(unknown), errors.INVALID_PARAMS)

    def test_unknown_task_and_removed_methods(self) -> None:
        self.assertEqual(error_code(self.peer.request("tasks/get", {"taskId": "x"}, meta=WITH_TASKS)), -32602)
        self.assertEqual(error_code(self.peer.request("tasks/get", {"taskId": 7}, meta=WITH_TASKS)), -32602)
        for method in ("tasks/result", "tasks/list"):
            self.assertEqual(error_code(self.peer.request(method, {"taskId": "x"}, meta=WITH_TASKS)), -32601)

    def test_tasks_belong_to_their_caller(self) -> None:
        task_id = self.call("slow_compute", {"seconds": 1})["taskId"]
        other = Peer(self, self.e, session=False, modern=True)
        exchange = other.exchange()
        exchange.caller = attrs_evolve(exchange.caller, name="someone-else")
        message = other.message("tasks/get", {"taskId": task_id}, meta=WITH_TASKS)
        response = self.successResultOf(self.e.handle(message, exchange))
        self.assertEqual(error_code(response), errors.INVALID_PARAMS)

    def test_input_required_and_update(self) -> None:
        task_id = self.call("confirm_delete", {"filename": "a.txt"})["taskId"]
        waiting = self.get(task_id)
        self.assertEqual(waiting["status"], "input_required")
        self.assertEqual(waiting["inputRequests"]["confirm"]["method"], "elicitation/create")
        # Unknown keys are ignored; the ack carries no task fields.
        ack = self.peer.result("tasks/update", {"taskId": task_id, "inputResponses": {"other": {}}}, meta=WITH_TASKS)
        self.assertEqual(ack, {"resultType": "complete"})
        self.assertEqual(self.get(task_id)["status"], "input_required")
        answer = {"confirm": {"action": "accept", "content": {"confirm": True}}}
        self.peer.result("tasks/update", {"taskId": task_id, "inputResponses": answer}, meta=WITH_TASKS)
        done = self.get(task_id)
        self.assertEqual(done["result"]["content"][0]["text"], "Deleted a.txt")
        bad = self.peer.request("tasks/update", {"taskId": task_id, "inputResponses": []}, meta=WITH_TASKS)
        self.assertEqual(error_code(bad), errors.INVALID_PARAMS)

    def test_partial_fulfillment(self) -> None:
        task_id = self.call("multi_input")["taskId"]
        keys = list(self.get(task_id)["inputRequests"])
        self.assertEqual(sorted(keys), ["confirm", "name"])
        first = {"name": {"action": "accept", "content": {"name": "Ada"}}}
        self.peer.result("tasks/update", {"taskId": task_id, "inputResponses": first}, meta=WITH_TASKS)
        after = self.get(task_id)
        self.assertEqual((after["status"], list(after["inputRequests"])), ("input_required", ["confirm"]))
        second = {"confirm": {"action": "accept", "content": {"confirm": True}}}
        self.peer.result("tasks/update", {"taskId": task_id, "inputResponses": second}, meta=WITH_TASKS)
        self.assertEqual(self.get(task_id)["result"]["content"][0]["text"], "Hello, Ada (confirmed: True)")

    def test_multi_round_trip_then_task(self) -> None:
        first = self.call("test_tool_with_task")
        self.assertEqual(first["resultType"], "input_required")
        self.assertNotIn("taskId", first)
        answer = {"user_name": {"action": "accept", "content": {"name": "Alice"}}}
        second = self.call("test_tool_with_task", inputResponses=answer)
        self.assertEqual(second["resultType"], "task")
        self.assertNotIn("requestState", second)
        self.clock.advance(1)
        self.assertIn("Alice", self.get(second["taskId"])["result"]["content"][0]["text"])

    def test_ttl_expiry_stops_the_work(self) -> None:
        self.e.tasks.ttl_ms = 2000
        task_id = self.call("slow_compute", {"seconds": 60})["taskId"]
        self.clock.advance(1)
        self.assertEqual(self.get(task_id)["ttlMs"], 2000)
        self.clock.advance(1)
        self.assertEqual(error_code(self.peer.request("tasks/get", {"taskId": task_id}, meta=WITH_TASKS)), -32602)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ttl_ends_a_task_nobody_asks_about(self) -> None:
        self.e.tasks.ttl_ms = 2000
        task_id = self.call("slow_compute", {"seconds": 60})["taskId"]
        run = self.e.tasks.run_of(task_id)
        assert run is not None
        self.clock.advance(2)
        # No request came in: the timer alone stopped the work and dropped the task.
        self.assertEqual(run.record.status, "cancelled")
        self.assertIsNone(self.successResultOf(self.e.tasks.store.get(task_id)))
        self.assertIsNone(self.e.tasks.run_of(task_id))
        self.assertEqual(self.e.tasks.running, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_status_notifications_on_a_listen_stream(self) -> None:
        task_id = self.call("slow_compute", {"seconds": 1})["taskId"]
        listen = self.peer.message("subscriptions/listen", {"notifications": {"taskIds": [task_id]}}, meta=WITH_TASKS)
        d = self.peer.start(listen)
        ack = self.peer.notes.pop(0)
        self.assertEqual(ack["params"]["notifications"], {"taskIds": [task_id]})
        self.clock.advance(1)
        note = self.peer.notes.pop(0)
        assert_valid(self, MODERN, note)
        self.assertEqual((note["method"], note["params"]["status"]), ("notifications/tasks", "completed"))
        self.assertEqual(note["params"]["result"]["content"][0]["text"], "Computed result after 1s")
        d.cancel()
        # Without the extension, asking for task notifications is -32021.
        refused = self.peer.request("subscriptions/listen", {"notifications": {"taskIds": [task_id]}})
        self.assertEqual(error_code(refused), errors.MISSING_REQUIRED_CLIENT_CAPABILITY)

    def test_shutdown_cancels_running_tasks(self) -> None:
        running = self.call("slow_compute", {"seconds": 60})["taskId"]
        self.assertEqual(self.e.tasks.running, 1)
        self.e.cancel_all()
        self.assertEqual(self.e.tasks.running, 0)
        self.assertEqual(self.get(running)["status"], "cancelled")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_mcp_name_must_mirror_the_task_id(self) -> None:
        task_id = self.call("slow_compute", {"seconds": 1})["taskId"]
        message = self.peer.message("tasks/get", {"taskId": task_id}, meta=WITH_TASKS)
        headers = {"mcp-protocol-version": MODERN, "mcp-method": "tasks/get", "mcp-name": task_id}
        self.assertEqual(self.peer.send(message, headers)["result"]["taskId"], task_id)
        wrong = {**headers, "mcp-name": "another"}
        message = self.peer.message("tasks/get", {"taskId": task_id}, meta=WITH_TASKS)
        self.assertEqual(error_code(self.peer.send(message, wrong)), errors.HEADER_MISMATCH)


def attrs_evolve(value: Any, **changes: Any) -> Any:
    import attrs

    return attrs.evolve(value, **changes)


class SlowSaves(MemoryTaskStore):
    """A shared store over a network: a change is kept only once its answer comes back."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[defer.Deferred[None], Any]] = []

    def save(self, record: TaskRecord) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.pending.append((d, record.to_json()))
        return d

    def answer(self) -> None:
        pending, self.pending = self.pending, []
        for d, data in pending:
            super().save(TaskRecord.from_json(data))
            d.callback(None)


class SharedStoreTaskTests(ClockedTestCase):
    def test_a_poll_to_the_instance_running_the_task_sees_its_latest_status(self) -> None:
        # Regression: tasks/get read the store, where the completion was still being saved.
        store = SlowSaves()
        peer = Peer(self, self.engine(task_store=store), session=False, modern=True)
        params = {"name": "slow_compute", "arguments": {"seconds": 5, "label": "x"}}
        task_id = peer.result("tools/call", params, meta=WITH_TASKS)["taskId"]
        self.clock.advance(5)
        self.assertTrue(store.pending)  # the completion is on its way to the store
        done = peer.result("tasks/get", {"taskId": task_id}, meta=WITH_TASKS)
        self.assertEqual(done["status"], "completed")
        store.answer()
        self.assertEqual(self.successResultOf(store.get(task_id)).status, "completed")


class LegacyTaskTests(ClockedTestCase):
    """2025-11-25 basic/utilities/tasks over a session."""

    def setUp(self) -> None:
        super().setUp()
        self.e = self.engine()
        self.peer = legacy_peer(self, {"elicitation": {}}, e=self.e)
        self.pushed: list[dict[str, Any]] = []
        assert self.peer.session is not None
        self.peer.session.sink = self.pushed.append

    def test_capabilities_and_tool_execution(self) -> None:
        other = Peer(self, self.e)
        self.assertEqual(other.initialize()["capabilities"]["tasks"]["requests"], {"tools": {"call": {}}})
        old = Peer(self, self.e)
        self.assertNotIn("tasks", old.initialize("2025-06-18")["capabilities"])
        tools = {tool["name"]: tool for tool in self.peer.result("tools/list")["tools"]}
        self.assertEqual(tools["slow_compute"]["execution"], {"taskSupport": "optional"})
        self.assertNotIn("execution", tools["greet"])

    def test_task_augmented_call(self) -> None:
        created = self.peer.result(
            "tools/call", {"name": "slow_compute", "arguments": {"seconds": 2}, "task": {"ttl": 60_000}}
        )
        task = created["task"]
        self.assertEqual((task["status"], task["ttl"]), ("working", 60_000))
        self.assertNotIn("ttlMs", task)
        task_id = task["taskId"]
        self.assertEqual(self.peer.result("tasks/get", {"taskId": task_id})["status"], "working")
        listed = self.peer.result("tasks/list")["tasks"]
        self.assertEqual([t["taskId"] for t in listed], [task_id])
        pending = self.peer.start(self.peer.message("tasks/result", {"taskId": task_id}))
        self.assertNoResult(pending)
        self.clock.advance(2)
        response = self.successResultOf(pending)
        assert_valid(self, LATEST_LEGACY, response, "tasks/result")
        self.assertEqual(response["result"]["content"][0]["text"], "Computed result after 2s")
        self.assertEqual(response["result"]["_meta"]["io.modelcontextprotocol/related-task"], {"taskId": task_id})
        statuses = [note["params"]["status"] for note in self.pushed]
        self.assertEqual(statuses, ["completed"])
        for note in self.pushed:
            assert_valid(self, LATEST_LEGACY, note)

    def test_cancel(self) -> None:
        task_id = self.peer.result("tools/call", {"name": "slow_compute", "arguments": {"seconds": 9}, "task": {}})[
            "task"
        ]["taskId"]
        cancelled = self.peer.result("tasks/cancel", {"taskId": task_id})
        self.assertEqual(cancelled["status"], "cancelled")
        # 2025-11-25: a finished task cannot be cancelled (-32602); its result is an error.
        self.assertEqual(error_code(self.peer.request("tasks/cancel", {"taskId": task_id})), -32602)
        self.assertIn("error", self.peer.request("tasks/result", {"taskId": task_id}))

    def test_failed_task_replays_its_error(self) -> None:
        task_id = self.peer.result("tools/call", {"name": "protocol_error_job", "task": {}})["task"]["taskId"]
        self.clock.advance(1)
        self.assertEqual(error_code(self.peer.request("tasks/result", {"taskId": task_id})), errors.INTERNAL_ERROR)

    def test_task_support_is_enforced(self) -> None:
        forbidden = self.peer.request("tools/call", {"name": "greet", "arguments": {"name": "x"}, "task": {}})
        self.assertEqual(error_code(forbidden), errors.METHOD_NOT_FOUND)
        required = self.peer.request("tools/call", {"name": "failing_job"})
        self.assertEqual(error_code(required), errors.METHOD_NOT_FOUND)
        bad_ttl = self.peer.request(
            "tools/call", {"name": "slow_compute", "arguments": {"seconds": 1}, "task": {"ttl": -1}}
        )
        self.assertEqual(error_code(bad_ttl), errors.INVALID_PARAMS)

    def test_elicitation_inside_a_task(self) -> None:
        created = self.peer.result("tools/call", {"name": "confirm_delete", "arguments": {"filename": "b"}, "task": {}})
        task_id = created["task"]["taskId"]
        request = next(m for m in self.pushed if m.get("method") == "elicitation/create")
        assert_valid(self, LATEST_LEGACY, request)
        self.assertEqual(request["params"]["_meta"]["io.modelcontextprotocol/related-task"], {"taskId": task_id})
        self.assertEqual(self.peer.result("tasks/get", {"taskId": task_id})["status"], "input_required")
        answer = {"action": "accept", "content": {"confirm": True}}
        self.assertIsNone(self.peer.send({"jsonrpc": "2.0", "id": request["id"], "result": answer}))
        result = self.peer.result("tasks/result", {"taskId": task_id})
        self.assertEqual(result["content"][0]["text"], "Deleted b")

    def test_other_sessions_and_older_versions(self) -> None:
        task_id = self.peer.result("tools/call", {"name": "slow_compute", "arguments": {"seconds": 1}, "task": {}})[
            "task"
        ]["taskId"]
        stranger = legacy_peer(self, e=self.e)
        self.assertEqual(error_code(stranger.request("tasks/get", {"taskId": task_id})), errors.INVALID_PARAMS)
        self.assertEqual(stranger.result("tasks/list"), {"tasks": []})
        old = Peer(self, self.e)
        old.initialize("2025-06-18")
        self.assertEqual(error_code(old.request("tasks/get", {"taskId": task_id})), errors.METHOD_NOT_FOUND)
        # Before 2025-11-25 the task param means nothing: the call runs as usual.
        d = old.start(old.message("tools/call", {"name": "slow_compute", "arguments": {"seconds": 1}, "task": {}}))
        self.clock.advance(1)
        self.assertIn("content", self.successResultOf(d)["result"])


class TaskShareTests(ClockedTestCase):
    """One key cannot fill the task store for every other key (its share, then a clear error)."""

    def setUp(self) -> None:
        super().setUp()
        self.ledger = Ledger({TASK: Limit(per_account=2)})
        self.e = self.engine(ledger=self.ledger)
        self.alice = self.peer("alice")
        self.bob = self.peer("bob")

    def peer(self, name: str) -> Peer:
        caller = Caller(name=name, scopes=frozenset({"admin"}), account=f"key:{name}")
        return Peer(self, self.e, session=False, modern=True, caller=caller)

    def start(self, peer: Peer, seconds: int = 60) -> dict[str, Any]:
        params = {"name": "slow_compute", "arguments": {"seconds": seconds}}
        return peer.request("tools/call", params, meta=WITH_TASKS)

    def test_a_key_at_its_share_gets_429_and_others_do_not(self) -> None:
        first = self.start(self.alice, seconds=5)["result"]["taskId"]
        self.start(self.alice)
        refused = self.start(self.alice)
        self.assertEqual(error_code(refused), errors.LIMIT_EXCEEDED)
        self.assertEqual(refused["error"]["data"], {"limit": TASK, "max": 2, "scope": "caller", "retryAfter": 5})
        self.assertIn("this API key holds 2 of at most 2", refused["error"]["message"])
        self.assertIn("tasks/cancel", refused["error"]["message"])
        self.assertEqual(self.start(self.bob)["result"]["resultType"], "task")
        # Once one of alice's tasks has finished, it makes room for her next one.
        self.clock.advance(5)
        self.assertEqual(self.start(self.alice)["result"]["resultType"], "task")
        self.assertIsNone(self.successResultOf(self.e.tasks.store.get(first)))
        self.assertEqual(self.ledger.held("key:alice", TASK), 2)

    def test_a_full_store_is_503_not_an_internal_error(self) -> None:
        self.e = self.engine(task_store=MemoryTaskStore(capacity=1))
        self.start(self.peer("alice"))
        refused = self.start(self.peer("bob"))
        self.assertEqual(error_code(refused), errors.LIMIT_EXCEEDED)
        self.assertEqual(refused["error"]["data"]["scope"], "server")
        self.assertIn("running 1 tasks, its limit", refused["error"]["message"])

    def test_a_revoked_key_loses_its_tasks(self) -> None:
        mine = self.start(self.alice)["result"]["taskId"]
        theirs = self.start(self.bob)["result"]["taskId"]
        self.assertEqual(self.ledger.end_accounts(["key:alice"], "the API key was revoked"), 1)
        self.assertIsNone(self.successResultOf(self.e.tasks.store.get(mine)))
        self.assertEqual(self.ledger.held("key:alice", TASK), 0)
        self.assertEqual(self.successResultOf(self.e.tasks.store.get(theirs)).status, "working")
        # Its work was cancelled: nothing is left on the clock but bob's sleep and timer.
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)

    def test_a_key_that_lost_a_scope_loses_its_running_tasks(self) -> None:
        task_id = self.start(self.alice)["result"]["taskId"]
        self.ledger.rescope("key:alice", frozenset({"admin", "extra"}), False)
        self.assertEqual(self.successResultOf(self.e.tasks.store.get(task_id)).status, "working")
        self.ledger.rescope("key:alice", frozenset({"read"}), True)
        task = self.successResultOf(self.e.tasks.store.get(task_id))
        assert task is not None
        self.assertEqual(task.status, "cancelled")
        self.assertIn("lost a scope", task.status_message or "")

    def test_a_listen_hears_only_its_callers_tasks(self) -> None:
        mine = self.start(self.alice, seconds=1)["result"]["taskId"]
        theirs = self.start(self.bob, seconds=1)["result"]["taskId"]
        params = {"notifications": {"taskIds": [mine, theirs, "unknown", mine]}}
        listening = self.alice.start(self.alice.message("subscriptions/listen", params, meta=WITH_TASKS))
        ack = self.alice.notes.pop(0)
        self.assertEqual(ack["params"]["notifications"], {"taskIds": [mine]})
        self.assertEqual(self.ledger.held("key:alice", SUBSCRIPTION), 1)
        self.clock.advance(1)
        self.assertEqual([note["params"]["taskId"] for note in self.alice.notes], [mine])
        listening.cancel()
        self.assertEqual(self.ledger.held("key:alice", SUBSCRIPTION), 0)


class CallShareTests(ClockedTestCase):
    """Calls in flight are counted per caller, whatever carries them (here one session, as a
    WebSocket or an /sse session carries many at once)."""

    def test_calls_in_flight_over_the_share(self) -> None:
        ledger = Ledger({CALL: Limit(per_account=2)})
        e = self.engine(ledger=ledger)
        peer = legacy_peer(self, e=e)
        running = [peer.start(peer.message("tools/call", {"name": "slow_compute", "arguments": {"seconds": 5}}))]
        running.append(peer.start(peer.message("tools/call", {"name": "slow_compute", "arguments": {"seconds": 5}})))
        self.assertEqual(ledger.held("tester", CALL), 2)
        refused = peer.request("tools/call", {"name": "slow_compute", "arguments": {"seconds": 5}})
        self.assertEqual(error_code(refused), errors.LIMIT_EXCEEDED)
        self.assertIn("wait for calls in flight to finish", refused["error"]["message"])
        # Requests that answer at once are still served (a caller can list, ping, cancel).
        self.assertEqual(peer.result("ping"), {})
        self.assertIn("tasks", peer.result("tasks/list"))
        self.clock.advance(5)
        for d in running:
            self.assertIn("result", self.successResultOf(d))
        self.assertEqual(ledger.held("tester", CALL), 0)


class TimestampTests(SynchronousTestCase):
    def test_timestamps(self) -> None:
        self.assertEqual(iso8601(0), "1970-01-01T00:00:00.000Z")


class ThreadToolTests(TestCase):
    """A blocking tool's ctx.elicit hops to the reactor thread and waits there for the answer."""

    @defer.inlineCallbacks
    def test_blocking_tool_elicits(self) -> None:
        # The reactor thread is the I/O thread, as in a daemon; trial's is not registered as
        # one, and without it ctx.elicit asked from the tool's thread (no hop), its failed
        # Deferred left unhandled.
        self.patch(threadable, "ioThread", threadable.getThreadID())
        pack = ToolPack("threads", "test")
        seen: list[str] = []

        def ask(ctx: Any, arguments: dict[str, Any]) -> ToolResult:
            seen.append(threading.current_thread().name)
            answer = ctx.elicit("Name?", {"type": "object", "properties": {"n": {"type": "string"}}}, key="n")
            return ToolResult.text(f"hi {answer['content']['n']}")

        pack.add(Tool(name="ask", description="asks", handler=ask, blocking=True))
        pool = ToolThreads(2, "test-tools")
        pool.start()
        self.addCleanup(pool.stop)
        engine = Engine(ToolRegistry([pack]), thread_pool=pool)
        peer = Peer(self, engine, session=False, modern=True)  # type: ignore[arg-type]
        caps = {META_CLIENT_CAPABILITIES: {"elicitation": {}}}
        first = yield peer.start(peer.message("tools/call", {"name": "ask", "arguments": {}}, meta=caps))
        self.assertEqual(first["result"]["resultType"], "input_required")
        answer = {"n": {"action": "accept", "content": {"n": "Ada"}}}
        params = {"name": "ask", "arguments": {}, "inputResponses": answer}
        second = yield peer.start(peer.message("tools/call", params, meta=caps))
        self.assertEqual(second["result"]["content"][0]["text"], "hi Ada")
        self.assertNotEqual(seen[0], threading.current_thread().name)


class DaemonTaskTests(DaemonTestMixin, SynchronousTestCase):
    """The real daemon over Streamable HTTP, driven with raw requests."""

    def post(self, url: str, method: str, params: dict[str, Any], **headers: str) -> dict[str, Any]:
        params = {**params, "_meta": {META_PROTOCOL_VERSION: MODERN, **WITH_TASKS}}
        wire = {
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": MODERN,
            "mcp-method": method,
            **headers,
        }
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=wire, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                kind, text = response.headers.get("content-type", ""), response.read().decode()
        except urllib.error.HTTPError as e:
            kind, text = e.headers.get("content-type", ""), e.read().decode()
        if kind.startswith("text/event-stream"):
            text = [line[5:] for line in text.splitlines() if line.startswith("data:") and line[5:].strip()][-1]
        message = json.loads(text)
        assert_valid(self, MODERN, message, method)
        return message  # type: ignore[no-any-return]

    def test_task_over_http(self) -> None:
        daemon = self.start_daemon("--tool-pack", conformance_pack.__name__, fixture_pack=False)
        url = daemon.url
        created = self.post(
            url,
            "tools/call",
            {"name": "confirm_delete", "arguments": {"filename": "f"}},
            **{"mcp-name": "confirm_delete"},
        )["result"]
        task_id = created["taskId"]
        by_id = {"mcp-name": task_id}
        waiting = self.post(url, "tasks/get", {"taskId": task_id}, **by_id)["result"]
        self.assertEqual(waiting["status"], "input_required")
        answer = {"confirm": {"action": "accept", "content": {"confirm": True}}}
        self.post(url, "tasks/update", {"taskId": task_id, "inputResponses": answer}, **by_id)
        done = self.post(url, "tasks/get", {"taskId": task_id}, **by_id)["result"]
        self.assertEqual(done["result"]["content"][0]["text"], "Deleted f")
        long = self.post(
            url, "tools/call", {"name": "slow_compute", "arguments": {"seconds": 60}}, **{"mcp-name": "slow_compute"}
        )["result"]["taskId"]
        self.assertEqual(
            self.post(url, "tasks/cancel", {"taskId": long}, **{"mcp-name": long})["result"], {"resultType": "complete"}
        )
        mismatch = self.post(url, "tasks/get", {"taskId": long}, **{"mcp-name": "other"})
        self.assertEqual(error_code(mismatch), errors.HEADER_MISMATCH)


class ShutdownTests(ClockedTestCase):
    def test_engine_service_ends_subscriptions_then_tasks(self) -> None:
        from mcpd.services import EngineService

        e = self.engine()
        peer = Peer(self, e, session=False, modern=True)
        params = {"name": "slow_compute", "arguments": {"seconds": 60}}
        task_id = peer.result("tools/call", params, meta=WITH_TASKS)["taskId"]
        listening = peer.start(peer.message("subscriptions/listen", {"notifications": {"toolsListChanged": True}}))
        service = EngineService(e)
        service.startService()
        service.stopService()
        self.assertEqual(peer.notes[-1]["method"], "notifications/cancelled")
        self.assertIsNone(self.successResultOf(listening))
        self.assertEqual(e.tasks.running, 0)
        self.assertEqual(self.successResultOf(e.tasks.store.get(task_id)).status, "cancelled")
        self.assertEqual(self.clock.getDelayedCalls(), [])
