# -*- test-case-name: tests.test_testing,tests.test_stores -*-
"""What tests and pack authors need (cf. ``treq.testing``, ``twisted.internet.testing``).

- `PackHarness`: call a pack's tools as a client would, in memory, with a caller of your choice,
  and check each result against the tool's output schema;
- `SynchronousThreadPool`: runs "blocking" handlers at once in the calling thread, so a test needs
  neither threads nor a running reactor;
- `memory_stores`: the in-process stores, by interface;
- the shared store suites (`BucketStoreTests`, `TaskStoreTests`, `SessionStoreTests`,
  `CacheTests`): mix one
  into a `SynchronousTestCase` with a ``make_store`` method (``class T(TaskStoreTests,
  SynchronousTestCase)``), and every implementation of an
  interface (in memory, Redis, SQL) proves the same behaviour.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

if TYPE_CHECKING:
    from twisted.trial.unittest import SynchronousTestCase

from mcpd.interfaces import (
    CANCELLED,
    COMPLETED,
    FAILED,
    INPUT_REQUIRED,
    WORKING,
    IBucketStore,
    ICache,
    ISessionStore,
    ITaskStore,
    NotAnInteger,
    SessionRecord,
    StoreFull,
    TaskRecord,
)
from mcpd.protocol.engine import Engine
from mcpd.protocol.versions import META_CLIENT_CAPABILITIES, META_PROTOCOL_VERSION, MODERN_VERSIONS
from mcpd.protocol.vocabulary import Exchange
from mcpd.security.scopes import ADMIN
from mcpd.stores.memory import MemoryBucketStore, MemoryCache, MemorySessionStore, MemoryTaskStore
from mcpd.tools import Caller, ToolPack, ToolRegistry


class SynchronousThreadPool:
    """A thread pool that runs each piece of work at once, in the thread that hands it over
    (the methods of `twisted.python.threadpool.ThreadPool` mcpd uses)."""

    def __init__(self) -> None:
        self.started = False
        self.joined = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.joined = True

    def callInThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:  # noqa: N802 (Twisted's name)
        self.callInThreadWithCallback(None, f, *args, **kwargs)

    def callInThreadWithCallback(  # noqa: N802 (Twisted's name)
        self, on_result: Callable[[bool, Any], None] | None, f: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        try:
            result = f(*args, **kwargs)
            success = True
        except BaseException:
            result, success = Failure(), False
        if on_result is not None:
            on_result(success, result)


def memory_stores(clock: Any = None) -> dict[Any, Any]:
    """The in-process stores, by interface (what the daemon uses without store knobs)."""
    return {
        IBucketStore: MemoryBucketStore(clock if clock is not None else Clock()),
        ITaskStore: MemoryTaskStore(),
        ISessionStore: MemorySessionStore(),
        ICache: MemoryCache(clock if clock is not None else Clock()),
    }


class PackHarness:
    """Serves ``packs`` from an in-memory engine: call a tool with any caller and get the
    ``CallToolResult`` the client would get (protocol 2026-07-28, no transport).

    ``stores`` are what handlers reach with ``ctx.store(IThing)``; blocking handlers run in a
    `SynchronousThreadPool` unless another pool is given.
    """

    def __init__(
        self,
        *packs: ToolPack,
        stores: Mapping[Any, Any] | None = None,
        caller: Caller | None = None,
        clock: Any = None,
        thread_pool: Any = None,
    ) -> None:
        self.registry = ToolRegistry(packs)
        self.clock = clock if clock is not None else Clock()
        self.caller = caller if caller is not None else Caller(name="tester", scopes=frozenset({ADMIN}))
        pool: Any = thread_pool if thread_pool is not None else SynchronousThreadPool()
        self.engine = Engine(self.registry, stores=dict(stores or {}), clock=self.clock, thread_pool=pool)
        self._ids = itertools.count(1)

    def call(self, name: str, arguments: Mapping[str, Any] | None = None, *, caller: Caller | None = None) -> Any:
        """Call tool ``name``; a Deferred firing with its result (``isError`` for a tool error),
        failing with `HarnessError` for a protocol error (unknown tool, say)."""
        message = {
            "jsonrpc": "2.0",
            "id": next(self._ids),
            "method": "tools/call",
            "params": {
                "name": name,
                "arguments": dict(arguments or {}),
                "_meta": {META_PROTOCOL_VERSION: MODERN_VERSIONS[-1], META_CLIENT_CAPABILITIES: {}},
            },
        }
        exchange = Exchange(peer="harness", caller=caller if caller is not None else self.caller)
        return self.engine.handle(message, exchange).addCallback(self._result)

    @staticmethod
    def _result(response: dict[str, Any]) -> dict[str, Any]:
        if "error" in response:
            raise HarnessError(response["error"])
        result: dict[str, Any] = response["result"]
        return result

    def output_problems(self, name: str, result: Mapping[str, Any]) -> list[str]:
        """What is wrong with a result of tool ``name`` against its output schema (nothing for
        a tool without one, or an error result)."""
        tool = self.registry.get(name)
        if tool is None:
            return [f"no tool {name}"]
        if tool.output_schema is None or result.get("isError"):
            return []
        if "structuredContent" not in result:
            return ["the result has no structuredContent, and the tool declares an output schema"]
        return tool.output_problems(result["structuredContent"])


class HarnessError(Exception):
    """A JSON-RPC error answered a harness call; ``error`` is its error object."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.error = error


# -- the shared store suites --------------------------------------------------------------------


if TYPE_CHECKING:
    _TestCase = SynchronousTestCase
else:
    _TestCase = object


class _StoreSuite(_TestCase):
    """A suite to mix into a `SynchronousTestCase` (it is none itself, so test runners do not
    collect it on its own)."""

    def settled(self, d: Deferred[Any]) -> Any:
        """What a store call fired with (a store that asks the network: run the reactor of
        its own test instead, with the same assertions)."""
        return self.successResultOf(d)

    def refused(self, d: Deferred[Any], *errors: type[BaseException]) -> Failure:
        """The failure a store call fired with (one of ``errors``)."""
        return self.failureResultOf(d, *errors)


class BucketStoreTests(_StoreSuite):
    """Every `IBucketStore`; ``make_store(clock)`` builds a fresh one whose time is ``clock``."""

    def make_store(self, clock: Clock) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = self.make_store(self.clock)

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IBucketStore, self.store))

    def test_a_bucket_starts_full_and_empties(self) -> None:
        waits = [self.settled(self.store.take("key:a", 3.0, 1.0)) for _ in range(4)]
        self.assertEqual(waits[:3], [0.0, 0.0, 0.0])
        self.assertAlmostEqual(waits[3], 1.0)

    def test_tokens_come_back_at_the_rate(self) -> None:
        for _ in range(2):
            self.settled(self.store.take("key:a", 2.0, 0.5))
        self.clock.advance(2.0)
        self.assertEqual(self.settled(self.store.take("key:a", 2.0, 0.5)), 0.0)
        self.assertGreater(self.settled(self.store.take("key:a", 2.0, 0.5)), 0.0)

    def test_buckets_are_separate(self) -> None:
        self.settled(self.store.take("key:a", 1.0, 1.0))
        self.assertEqual(self.settled(self.store.take("key:b", 1.0, 1.0)), 0.0)


def _task(task_id: str, *, status: str = "working", ttl_ms: int | None = 1000, owner: str = "o") -> TaskRecord:
    return TaskRecord(
        task_id=task_id,
        owner=owner,
        modern=True,
        created=float(ord(task_id[0])),
        ttl_ms=ttl_ms,
        poll_interval_ms=500,
        status=status,
    )


class TaskStoreTests(_StoreSuite):
    """Every `ITaskStore`; ``make_store(capacity)`` builds a fresh, empty one."""

    def make_store(self, capacity: int) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        self.store = self.make_store(2)

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(ITaskStore, self.store))

    def test_a_record_comes_back_as_it_was_saved(self) -> None:
        record = _task("a")
        self.assertEqual(self.settled(self.store.add(record, 0.0)), [])
        record.input_requests["k"] = {"method": "elicitation/create", "params": {}}
        self.assertEqual(self.settled(self.store.get("a")).input_requests, {})  # not saved yet
        record.status, record.result = COMPLETED, {"content": [{"type": "text", "text": "done"}]}
        self.settled(self.store.save(record))
        self.assertEqual(self.settled(self.store.get("a")), record)
        self.assertEqual(TaskRecord.from_json(record.to_json()), record)

    def test_the_first_terminal_status_stays(self) -> None:
        """Once a record has ended, a save with another status (a late cancel, a result after
        the task was settled as failed, a stale "working") leaves it as it is; a save with the
        same terminal status still replaces it."""
        self.settled(self.store.add(_task("a"), 0.0))
        cancelled = _task("a", status=CANCELLED)
        cancelled.status_message = "cancelled"
        self.settled(self.store.save(cancelled))
        for late in (COMPLETED, FAILED, WORKING, INPUT_REQUIRED):
            record = _task("a", status=late)
            record.result = {"content": []}
            refused = self.settled(self.store.save(record))
            self.assertEqual(refused, self.settled(self.store.get("a")))
            kept = self.settled(self.store.get("a"))
            self.assertEqual((kept.status, kept.status_message, kept.result), (CANCELLED, "cancelled", None))
        cancelled.status_message = "cancelled, said again"
        self.assertIsNone(self.settled(self.store.save(cancelled)))
        self.assertEqual(self.settled(self.store.get("a")).status_message, "cancelled, said again")

    def test_unknown_ids(self) -> None:
        self.assertIsNone(self.settled(self.store.get("nope")))
        self.assertIsNone(self.settled(self.store.remove("nope")))
        self.assertIsNone(self.settled(self.store.save(_task("nope"))))
        self.assertIsNone(self.settled(self.store.get("nope")))  # saving does not add

    def test_bounded_and_finished_records_make_room(self) -> None:
        self.settled(self.store.add(_task("a", status=COMPLETED), 0.0))
        self.settled(self.store.add(_task("b"), 0.0))
        dropped = self.settled(self.store.add(_task("c"), 0.0))
        self.assertEqual([record.task_id for record in dropped], ["a"])
        full = self.refused(self.store.add(_task("d"), 0.0), StoreFull)
        self.assertEqual(full.value.capacity, 2)
        self.assertEqual(self.settled(self.store.count()), 2)

    def test_expiry(self) -> None:
        self.settled(self.store.add(_task("a"), 0.0))
        self.settled(self.store.add(_task("f", ttl_ms=None), 0.0))
        expired = self.settled(self.store.expire(ord("a") + 1.0))
        self.assertEqual([record.task_id for record in expired], ["a"])
        self.assertEqual(self.settled(self.store.count()), 1)

    def test_owned_by_oldest_first(self) -> None:
        self.settled(self.store.add(_task("b", owner="me"), 0.0))
        self.settled(self.store.add(_task("a", owner="me"), 0.0))
        mine = self.settled(self.store.owned_by("me"))
        self.assertEqual([record.task_id for record in mine], ["a", "b"])
        self.assertEqual(self.settled(self.store.owned_by("you")), [])

    def test_remove(self) -> None:
        self.settled(self.store.add(_task("a"), 0.0))
        self.assertEqual(self.settled(self.store.remove("a")).task_id, "a")
        self.assertEqual(self.settled(self.store.count()), 0)


class SessionStoreTests(_StoreSuite):
    """Every `ISessionStore`; ``make_store()`` builds a fresh, empty one."""

    def make_store(self) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        self.store = self.make_store()

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(ISessionStore, self.store))

    def test_save_load_delete(self) -> None:
        record = SessionRecord("s1", version="2025-11-25", owner="alice", account="key:alice")
        self.settled(self.store.save(record))
        record.log_level = "debug"
        self.assertIsNone(self.settled(self.store.load("s1")).log_level)  # not saved yet
        self.settled(self.store.save(record))
        self.assertEqual(self.settled(self.store.load("s1")), record)
        self.assertEqual(SessionRecord.from_json(record.to_json()), record)
        self.assertEqual(self.settled(self.store.count()), 1)
        self.assertTrue(self.settled(self.store.touch("s1")))
        self.assertEqual(self.settled(self.store.touch_many(["s0", "s1", "s2"])), [False, True, False])
        self.assertEqual(self.settled(self.store.touch_many([])), [])
        self.assertTrue(self.settled(self.store.delete("s1")))
        self.assertFalse(self.settled(self.store.touch("s1")))
        self.assertEqual(self.settled(self.store.touch_many(["s1"])), [False])
        self.assertFalse(self.settled(self.store.delete("s1")))
        self.assertIsNone(self.settled(self.store.load("s1")))

    def test_state_changes_in_place(self) -> None:
        """`update` changes one part of a kept record's state (a level, a subscription) without
        undoing another's, and never makes a record that is not kept."""
        record = SessionRecord("s1", version="2025-11-25", owner="alice", subscriptions=["memo://a"])
        self.settled(self.store.save(record))
        self.assertTrue(self.settled(self.store.update("s1", subscribe="memo://b", tenant="acme")))
        self.assertTrue(self.settled(self.store.update("s1", log_level="error")))
        self.assertTrue(self.settled(self.store.update("s1", subscribe="memo://b")))
        self.assertTrue(self.settled(self.store.update("s1", unsubscribe="memo://a")))
        self.assertTrue(self.settled(self.store.update("s1", unsubscribe="memo://never")))
        kept = self.settled(self.store.load("s1"))
        self.assertEqual(
            (kept.subscriptions, kept.subscriptions_tenant, kept.log_level, kept.owner),
            (["memo://b"], "acme", "error", "alice"),
        )
        self.assertFalse(self.settled(self.store.update("s2", log_level="debug")))
        self.assertIsNone(self.settled(self.store.load("s2")))
        # Saved again (a lost record, from the live session): its state is the saved one.
        record.subscriptions, record.log_level = [], "info"
        self.settled(self.store.save(record))
        kept = self.settled(self.store.load("s1"))
        self.assertEqual((kept.subscriptions, kept.log_level), ([], "info"))

    def test_a_deleted_session_is_not_saved_again(self) -> None:
        """An instance that missed a session's end saves its record again in vain (the store
        refuses: it answers False); other sessions are saved as usual."""
        record = SessionRecord("s1", version="2025-11-25", owner="alice", account="key:alice")
        self.assertTrue(self.settled(self.store.save(record)))
        self.assertTrue(self.settled(self.store.delete("s1")))
        self.assertFalse(self.settled(self.store.save(record)))
        self.assertIsNone(self.settled(self.store.load("s1")))
        self.assertTrue(self.settled(self.store.save(SessionRecord("s2", owner="alice"))))


class CacheTests(_StoreSuite):
    """Every `ICache`; ``make_cache(clock)`` builds a fresh, empty one (default TTL 3600 s) whose
    time is ``clock``; ``pass_time(seconds)`` lets that much time go by for it."""

    def make_cache(self, clock: Clock) -> Any:
        raise NotImplementedError

    def pass_time(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.cache = self.make_cache(self.clock)

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(ICache, self.cache))

    def test_set_and_get(self) -> None:
        self.assertEqual(self.settled(self.cache.get("t", "k")), (None, None))
        self.settled(self.cache.set("t", "k", '{"a":[1,2.5,"x",null,true]}', 60))
        value, ttl = self.settled(self.cache.get("t", "k"))
        self.assertEqual(value, '{"a":[1,2.5,"x",null,true]}')
        self.assertTrue(55 <= ttl <= 60, ttl)
        self.settled(self.cache.set("t", "k", '"replaced"', 30))
        self.assertEqual(self.settled(self.cache.get("t", "k"))[0], '"replaced"')

    def test_delete(self) -> None:
        self.settled(self.cache.set("t", "k", "1", 60))
        self.assertTrue(self.settled(self.cache.delete("t", "k")))
        self.assertFalse(self.settled(self.cache.delete("t", "k")))
        self.assertEqual(self.settled(self.cache.get("t", "k")), (None, None))

    def test_a_key_goes_when_its_ttl_has_passed(self) -> None:
        self.settled(self.cache.set("t", "short", "1", 1))
        self.settled(self.cache.set("t", "long", "1", 60))
        self.pass_time(1.5)
        self.assertEqual(self.settled(self.cache.get("t", "short")), (None, None))
        self.assertEqual(self.settled(self.cache.scan("t", "*", 10, None)), (["long"], None))

    def test_tenants_never_meet(self) -> None:
        self.settled(self.cache.set("alpha", "k", '"alpha\'s"', 60))
        self.settled(self.cache.set("beta", "k", '"beta\'s"', 60))
        self.assertEqual(self.settled(self.cache.get("alpha", "k"))[0], '"alpha\'s"')
        self.assertTrue(self.settled(self.cache.delete("beta", "k")))
        self.assertEqual(self.settled(self.cache.get("alpha", "k"))[0], '"alpha\'s"')
        self.assertEqual(self.settled(self.cache.scan("beta", "*", 10, None)), ([], None))

    def test_glob_tricks_stay_inside_the_tenant(self) -> None:
        # Tenant names that look like a prefix or a pattern of another's key names.
        self.settled(self.cache.set("a", "b:x", "1", 60))
        self.settled(self.cache.set("a:b", "x", "2", 60))
        self.settled(self.cache.set("*", "y", "3", 60))
        self.settled(self.cache.set("a?", "z", "4", 60))
        self.assertEqual(self.settled(self.cache.scan("a", "*", 10, None)), (["b:x"], None))
        self.assertEqual(self.settled(self.cache.scan("a", "b:*", 10, None)), (["b:x"], None))
        self.assertEqual(self.settled(self.cache.scan("a:b", "*", 10, None)), (["x"], None))
        self.assertEqual(self.settled(self.cache.scan("*", "*", 10, None)), (["y"], None))
        self.assertEqual(self.settled(self.cache.scan("a?", "*", 10, None)), (["z"], None))
        for pattern in ("*:*", "\\*", "[a-z]*", "*x*", "..*"):
            keys, _ = self.settled(self.cache.scan("*", pattern, 10, None))
            self.assertEqual(set(keys) - {"y"}, set(), pattern)
        self.assertEqual(self.settled(self.cache.get("a", "*")), (None, None))

    def test_glob_patterns(self) -> None:
        for key in ("user:1", "user:2", "user:10", "session:1", "a*b", "a?b"):
            self.settled(self.cache.set("t", key, "1", 60))
        for pattern, expected in (
            ("user:*", {"user:1", "user:2", "user:10"}),
            ("user:?", {"user:1", "user:2"}),
            ("user:[12]", {"user:1", "user:2"}),
            ("user:[^1]", {"user:2"}),
            ("*:1", {"user:1", "session:1"}),
            ("a\\*b", {"a*b"}),
            ("a?b", {"a*b", "a?b"}),
        ):
            keys, after = self.settled(self.cache.scan("t", pattern, 100, None))
            self.assertEqual((set(keys), after), (expected, None), pattern)

    def test_scan_pages_with_cursors(self) -> None:
        names = {f"item:{i:02d}" for i in range(25)}
        for name in names:
            self.settled(self.cache.set("t", name, "1", 60))
        self.settled(self.cache.set("t", "other", "1", 60))
        seen: list[str] = []
        position = None
        for _page in range(100):
            keys, position = self.settled(self.cache.scan("t", "item:*", 10, position))
            self.assertLessEqual(len(keys), 10)
            seen.extend(keys)
            if position is None:
                break
        self.assertIsNone(position)
        self.assertEqual(set(seen), names)  # every key kept throughout: listed at least once

    def test_incr(self) -> None:
        self.assertEqual(self.settled(self.cache.incr("t", "n", 1, None)), 1)
        self.assertEqual(self.settled(self.cache.incr("t", "n", 41, None)), 42)
        self.assertEqual(self.settled(self.cache.incr("t", "n", -50, None)), -8)
        value, ttl = self.settled(self.cache.get("t", "n"))
        self.assertEqual(value, "-8")
        self.assertTrue(3590 <= ttl <= 3600, ttl)  # a new key gets the default TTL
        self.settled(self.cache.incr("t", "n", 1, 10))
        self.assertTrue(5 <= self.settled(self.cache.get("t", "n"))[1] <= 10)
        self.settled(self.cache.incr("t", "n", 1, None))
        self.assertLessEqual(self.settled(self.cache.get("t", "n"))[1], 10)  # kept, not reset
        self.settled(self.cache.set("t", "json", "5", 60))
        self.assertEqual(self.settled(self.cache.incr("t", "json", 2, None)), 7)
        self.assertEqual(self.settled(self.cache.incr("other", "n", 1, None)), 1)

    def test_incr_refuses_what_is_no_integer(self) -> None:
        for value in ('"5"', "5.0", '{"n":1}', "[1]", "true"):
            self.settled(self.cache.set("t", "k", value, 60))
            self.refused(self.cache.incr("t", "k", 1, None), NotAnInteger)
            self.assertEqual(self.settled(self.cache.get("t", "k"))[0], value)  # unchanged
        self.settled(self.cache.set("t", "big", str(2**63 - 1), 60))
        failure = self.refused(self.cache.incr("t", "big", 1, None), NotAnInteger)
        self.assertIn("64-bit", str(failure.value))

    def test_incr_keeps_every_digit_to_the_64_bit_edges(self) -> None:
        """Large counts come back exact (not rounded like a double, nor as ``1e+14``), up to the
        64-bit edges; one step beyond is refused and the count is left as it was."""
        for start, by, expected in (
            (10**14 - 1, 1, 10**14),
            (10**14, 1, 10**14 + 1),
            (2**53, 1, 2**53 + 1),
            (2**63 - 2, 1, 2**63 - 1),
            (-(2**63) + 1, -1, -(2**63)),
            (0, -(2**63), -(2**63)),
            (0, 2**63 - 1, 2**63 - 1),
            (2**63 - 1, -(2**63), -1),
        ):
            self.settled(self.cache.set("t", "n", str(start), 60))
            self.assertEqual(self.settled(self.cache.incr("t", "n", by, None)), expected, (start, by))
            self.assertEqual(self.settled(self.cache.get("t", "n"))[0], str(expected), (start, by))
        self.assertEqual(self.settled(self.cache.incr("t", "fresh", -(2**63), None)), -(2**63))
        for start, by in ((2**63 - 1, 1), (-(2**63), -1), (-1, -(2**63)), (1, 2**63 - 1)):
            self.settled(self.cache.set("t", "edge", str(start), 60))
            failure = self.refused(self.cache.incr("t", "edge", by, None), NotAnInteger)
            self.assertIn("64-bit integer range", str(failure.value), (start, by))
            self.assertEqual(self.settled(self.cache.get("t", "edge"))[0], str(start), (start, by))
