# -*- test-case-name: tests.test_redis_stores -*-
"""The Redis stores (mcpd.stores.redis) run the same interface suites as the in-process ones
(`mcpd.testing`), on a real ``redis-server``; then what only a shared store must do: hold a rate
limit across instances, answer for records another instance wrote, keep a TTL on every key."""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mcpd.interfaces import CANCELLED, COMPLETED, SessionRecord, TaskRecord
from mcpd.stores.redis import RedisConnection, redis_config
from mcpd.stores.redis.buckets import RedisBucketStore
from mcpd.stores.redis.sessions import RedisSessionStore
from mcpd.stores.redis.tasks import RedisTaskStore
from mcpd.testing import BucketStoreTests, SessionStoreTests, TaskStoreTests
from tests import test_tasks
from tests.redis_service import shared_redis, unique_prefix
from tests.test_redis import wait_for

SPIN_TIMEOUT = 10.0


def spin(d: Deferred[Any], timeout: float = SPIN_TIMEOUT) -> Deferred[Any]:
    """Turn the (not running) reactor until ``d`` has fired: a store call that asks Redis, made
    from a synchronous test."""
    deadline = time.monotonic() + timeout
    fired: list[bool] = []

    def mark(result: Any) -> Any:
        fired.append(True)
        return result

    d.addBoth(mark)
    while not fired:
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer from Redis within {timeout}s")
        reactor.iterate(0.005)  # type: ignore[attr-defined]
    return d


def started_connection(test: Any, prefix: str | None = None, spin_until: Any = spin) -> RedisConnection:
    """A connection to the shared server with a key prefix of its own (stopped after the test)."""
    config = redis_config(shared_redis().url, prefix=prefix or unique_prefix())
    connection = RedisConnection(config, reactor)
    connection.startService()
    test.addCleanup(lambda: spin_until(connection.stopService()))
    return connection


class RedisSuite:
    """Runs a `mcpd.testing` store suite against Redis from a synchronous test case."""

    def connection(self) -> RedisConnection:
        connection = started_connection(self)
        spin(wait_for(lambda: connection.open_connections > 0))
        return connection

    def settled(self, d: Deferred[Any]) -> Any:
        return self.successResultOf(spin(d))  # type: ignore[attr-defined]

    def refused(self, d: Deferred[Any], *errors: type[BaseException]) -> Failure:
        return self.failureResultOf(spin(d), *errors)  # type: ignore[attr-defined]


class RedisBucketStoreTests(RedisSuite, BucketStoreTests, SynchronousTestCase):
    def make_store(self, clock: Clock) -> Any:
        return RedisBucketStore(self.connection())  # its time is Redis' TIME, not ``clock``

    def test_a_bucket_starts_full_and_empties(self) -> None:
        """As the suite's, in Redis' time (which moves on between the takes)."""
        waits = [self.settled(self.store.take("key:a", 3.0, 1.0)) for _ in range(4)]
        self.assertEqual(waits[:3], [0.0, 0.0, 0.0])
        self.assertTrue(0.9 < waits[3] <= 1.0, waits[3])

    def test_tokens_come_back_at_the_rate(self) -> None:
        """As the suite's, in Redis' time: 0.3 s at 10 tokens a second brings back 2."""
        for _ in range(2):
            self.settled(self.store.take("key:a", 2.0, 10.0))
        self.assertGreater(self.settled(self.store.take("key:a", 2.0, 10.0)), 0.0)
        time.sleep(0.3)
        self.assertEqual(self.settled(self.store.take("key:a", 2.0, 10.0)), 0.0)
        self.assertEqual(self.settled(self.store.take("key:a", 2.0, 10.0)), 0.0)
        self.assertGreater(self.settled(self.store.take("key:a", 2.0, 10.0)), 0.0)


class RedisTaskStoreTests(RedisSuite, TaskStoreTests, SynchronousTestCase):
    def make_store(self, capacity: int) -> Any:
        return RedisTaskStore(self.connection(), capacity=capacity)


class RedisSessionStoreTests(RedisSuite, SessionStoreTests, SynchronousTestCase):
    def make_store(self) -> Any:
        return RedisSessionStore(self.connection(), Clock(), ttl=60.0)


def _task(task_id: str, owner: str = "caller:alice", ttl_ms: int | None = 60_000) -> TaskRecord:
    return TaskRecord(task_id, owner, True, time.time(), ttl_ms, 500)


class SharedStateTests(TestCase):
    """Two "instances" (two connections, one prefix) see one state."""

    timeout = 60

    @inlineCallbacks
    def instances(self) -> Any:
        prefix = unique_prefix()
        one = started_connection(self, prefix, spin_until=lambda d: d)
        two = started_connection(self, prefix, spin_until=lambda d: d)
        yield wait_for(lambda: one.open_connections > 0 and two.open_connections > 0)
        return one, two

    @inlineCallbacks
    def test_a_limit_holds_across_instances(self) -> Any:
        one, two = yield self.instances()
        buckets = [RedisBucketStore(one), RedisBucketStore(two)]
        capacity = 20
        # Twice the limit, all at once, alternating between the instances: exactly the limit passes.
        waits = yield gatherResults(
            [buckets[i % 2].take("key:alice", float(capacity), 0.001) for i in range(2 * capacity)]
        )
        self.assertEqual(sum(1 for wait in waits if wait == 0.0), capacity)
        self.assertTrue(all(wait > 100 for wait in waits if wait != 0.0))  # refilling at 1 token in 1000 s
        ttl = int(shared_redis().cli("PTTL", one.key("bucket", "key:alice")))
        self.assertGreater(ttl, 0)  # an idle bucket goes away by itself

    @inlineCallbacks
    def test_a_bucket_counts_redis_time_not_an_instance_clock(self) -> Any:
        """Instances whose clocks disagree grant no extra tokens: a bucket's time is Redis'
        TIME, read in the script (the daemon's clock once went in, and one running an hour ahead
        refilled every bucket it touched)."""
        one, two = yield self.instances()
        buckets = [RedisBucketStore(one), RedisBucketStore(two)]
        waits = yield gatherResults([buckets[i % 2].take("key:skew", 4.0, 0.001) for i in range(8)])
        self.assertEqual(sum(1 for wait in waits if wait == 0.0), 4)
        seconds, micros = shared_redis().cli("TIME").split()
        counted = float(shared_redis().cli("HGET", one.key("bucket", "key:skew"), "ts"))
        self.assertLess(abs(counted - (int(seconds) + int(micros) / 1e6)), 2.0)

    @inlineCallbacks
    def test_tasks_written_by_one_instance_are_read_by_another(self) -> Any:
        one, two = yield self.instances()
        writer, reader = RedisTaskStore(one), RedisTaskStore(two)
        record = _task("t1")
        yield writer.add(record, time.time())
        self.assertEqual((yield reader.get("t1")), record)
        record.status, record.result = COMPLETED, {"content": []}
        yield writer.save(record)
        self.assertEqual((yield reader.get("t1")).status, COMPLETED)
        self.assertEqual([r.task_id for r in (yield reader.owned_by("caller:alice"))], ["t1"])
        self.assertEqual((yield reader.count()), 1)
        # The record's key has a TTL: its own and a margin.
        ttl = int(shared_redis().cli("PTTL", one.key("task", "t1")))
        self.assertGreater(ttl, 60_000)
        self.assertLessEqual(ttl, 60_000 + 300_000)
        yield reader.remove("t1")
        self.assertIsNone((yield writer.get("t1")))
        self.assertEqual((yield writer.owned_by("caller:alice")), [])

    @inlineCallbacks
    def test_the_first_terminal_status_stays(self) -> Any:
        """An instance that wrongly marked a task cancelled (its runner seemed gone) does not
        lose the result the runner saves later, nor does a late cancel overwrite a result: the
        first terminal status is kept; saving the same status again still replaces the record."""
        one, two = yield self.instances()
        runner, other = RedisTaskStore(one), RedisTaskStore(two)
        yield runner.add(_task("first-wins"), time.time())
        cancelled = _task("first-wins")
        cancelled.status, cancelled.status_message = CANCELLED, "cancelled"
        yield other.save(cancelled)
        completed = _task("first-wins")
        completed.status, completed.result = COMPLETED, {"content": []}
        yield runner.save(completed)
        kept = yield other.get("first-wins")
        self.assertEqual((kept.status, kept.result), (CANCELLED, None))
        cancelled.status_message = "cancelled, said again"
        yield other.save(cancelled)
        self.assertEqual((yield runner.get("first-wins")).status_message, "cancelled, said again")

    @inlineCallbacks
    def test_a_record_redis_expired_leaves_no_trace_in_the_owner_index(self) -> Any:
        one, _two = yield self.instances()
        store = RedisTaskStore(one)
        yield store.add(_task("gone"), time.time())
        yield one.execute("DEL", one.key("task", "gone"))  # as Redis' TTL would
        self.assertEqual((yield store.owned_by("caller:alice")), [])
        self.assertEqual((yield store.count()), 0)

    @inlineCallbacks
    def test_sessions_are_shared_and_expire(self) -> Any:
        one, two = yield self.instances()
        clock = Clock()
        here, there = RedisSessionStore(one, clock, ttl=2.0), RedisSessionStore(two, clock, ttl=2.0)
        yield here.save(SessionRecord("s1", version="2025-06-18", owner="alice"))
        self.assertEqual((yield there.load("s1")).owner, "alice")
        self.assertEqual((yield there.count()), 1)
        ttl = int(shared_redis().cli("PTTL", one.key("session", "streamable", "s1")))
        self.assertTrue(0 < ttl <= 2000)
        # Another transport's sessions are apart.
        self.assertIsNone((yield RedisSessionStore(two, clock, ttl=2.0, kind="sse").load("s1")))
        yield wait_for(lambda: shared_redis().cli("EXISTS", one.key("session", "streamable", "s1")) == "0")
        self.assertIsNone((yield there.load("s1")))
        clock.advance(3.0)
        self.assertEqual((yield there.count()), 0)


class RedisTaskOverHTTPTests(test_tasks.DaemonTaskTests):
    """The daemon's task records in Redis (--redis-url): the same task scenario over HTTP, and
    the records are found in Redis, with their TTL."""

    prefix = ""

    def start_daemon(self, *args: str, **kwargs: Any) -> Any:
        self.prefix = unique_prefix()
        redis = ("--redis-url", shared_redis().url, "--redis-prefix", self.prefix)
        self.daemon = super().start_daemon(*args, *redis, **kwargs)
        return self.daemon

    def test_task_over_http(self) -> None:
        super().test_task_over_http()
        # A task still running at shutdown is cancelled, and that status reaches Redis before
        # the connection closes.
        self.daemon.stop()
        self.assertNotIn("could not save", self.daemon.log("stdout"))
        names = shared_redis().cli("--scan", "--pattern", f"{self.prefix}task:*").split()
        self.assertEqual(len(names), 2)  # the confirmed task and the cancelled one
        for name in names:
            record = json.loads(shared_redis().cli("GET", name))
            self.assertIn(record["status"], ("completed", "cancelled"))
            self.assertGreater(int(shared_redis().cli("PTTL", name)), 0)
