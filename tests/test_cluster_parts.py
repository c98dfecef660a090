# -*- test-case-name: tests.test_cluster_parts -*-
"""The parts of `mcpd.cluster` one at a time, against a real ``redis-server``: the journal, the
bus and the session sharing, without the daemons and nginx of `tests.test_cluster`."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from mcpd.cluster.bus import ClusterBus, ClusterUnavailable
from mcpd.cluster.instances import InstanceRegistry
from mcpd.cluster.journal import STANDALONE, Journal
from mcpd.cluster.relay import TaskRelay
from mcpd.cluster.sessions import ClusterSessions
from mcpd.interfaces import CANCELLED, TaskRecord
from mcpd.protocol.changes import ChangeFeed
from mcpd.protocol.session import SessionStore
from mcpd.protocol.tasks import TaskManager
from mcpd.stores.redis import RedisConnection, redis_config
from mcpd.stores.redis.sessions import RedisSessionStore
from mcpd.stores.redis.tasks import RedisTaskStore
from mcpd.transport.sse import MAX_SEQ_DIGITS, parse_event_id
from mcpd.transport.streamable import HTTPSession
from tests.redis_service import shared_redis, unique_prefix
from tests.test_redis import answers_again, wait_for


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


class ClusterPartsTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        self.connection = RedisConnection(redis_config(shared_redis().url, prefix=unique_prefix()), reactor)
        self.connection.startService()
        self.addCleanup(lambda: self.connection.stopService() if self.connection.running else None)
        self.bus = ClusterBus(self.connection, clock=reactor)
        yield self.bus.start(10.0)
        self.addCleanup(self.bus.stop)
        yield answers_again(self.connection)

    @inlineCallbacks
    def subscribers_become(self, channel: str, count: int, timeout: float = 10.0) -> Any:
        """Wait until Redis counts ``count`` subscribers of ``channel`` (PUBSUB NUMSUB)."""
        deadline = reactor.seconds() + timeout
        while True:
            reply = yield self.connection.execute("PUBSUB", "NUMSUB", channel)
            if int(reply[1]) == count:
                return
            if reactor.seconds() > deadline:
                raise AssertionError(f"{channel} has {reply[1]} subscribers, not {count}")
            yield sleep(0.02)

    @inlineCallbacks
    def record_appears(self, records: RedisSessionStore, session_id: str, timeout: float = 10.0) -> Any:
        """Wait until the session's record can be loaded."""
        deadline = reactor.seconds() + timeout
        while (yield records.load(session_id)) is None:
            if reactor.seconds() > deadline:
                raise AssertionError(f"no record of session {session_id}")
            yield sleep(0.02)

    @inlineCallbacks
    def registered(self, registry: InstanceRegistry, instance: str, timeout: float = 10.0) -> Any:
        """Wait until the registry counts ``instance`` alive."""
        deadline = reactor.seconds() + timeout
        while not (yield registry.alive(instance)):
            if reactor.seconds() > deadline:
                raise AssertionError(f"instance {instance} never registered")
            yield sleep(0.02)

    def cluster(self, session_timeout: float = 60.0) -> ClusterSessions:
        """The session sharing of one instance, its session records in Redis."""
        journal = Journal(self.bus, 16, session_timeout)
        registry = InstanceRegistry(self.bus, [], [], clock=reactor)
        records = RedisSessionStore(self.connection, reactor, session_timeout)
        sessions = SessionStore(reactor, session_timeout, records=records)
        cluster = ClusterSessions(self.bus, journal, registry, sessions, ChangeFeed())
        sessions.cluster = cluster
        return cluster

    @inlineCallbacks
    def test_refresh_keeps_the_get_stream_numbering(self) -> Any:
        """A quiet session kept alive (its GET stream open) past the session timeout keeps its
        standalone stream's counter: the next event is numbered after the last one, not 1
        again (which a reader at position 1 would drop)."""
        cluster = self.cluster(session_timeout=1.0)
        session = HTTPSession("quiet-session")
        session.initialized = True
        first = yield cluster.journal.append(session.id, STANDALONE, b'{"n":1}')
        self.assertEqual(first, 1)
        for _ in range(6):  # 1.8 s of quiet: longer than the TTL, refreshed as the sweep does
            cluster.refresh([session])
            yield sleep(0.3)
        second = yield cluster.journal.append(session.id, STANDALONE, b'{"n":2}')
        self.assertEqual(second, 2)

    @inlineCallbacks
    def test_readopted_session_numbers_streams_and_requests_afresh(self) -> Any:
        """A session adopted again on the same instance (a fresh replica whose counters restart
        at 1) names its streams and its requests apart from the last replica's: journaling its
        first stream does not clash with the old one's events, and an old request id cannot
        resolve a new request."""
        cluster = self.cluster()
        old, new = HTTPSession("adopted-twice"), HTTPSession("adopted-twice")
        cluster.fit(old)
        cluster.fit(new)
        old_stream, new_stream = old.new_stream(), new.new_stream()
        self.assertNotEqual(old_stream.key, new_stream.key)
        self.assertEqual(old_stream.key.split("-")[0], cluster.instance)  # the origin still reads
        yield cluster.journal.append(old.id, old_stream.key, b'{"old":1}', seq=1)
        yield cluster.journal.append(old.id, old_stream.key, b'{"old":2}', seq=2)
        yield cluster.journal.append(new.id, new_stream.key, b'{"new":1}', seq=1)
        replayed = yield cluster.journal.read_after(new.id, new_stream.key, 0)
        self.assertEqual(replayed, [(1, b'{"new":1}')])

        sent: list[dict[str, Any]] = []
        old.outbound.request(sent.append, "ping", {}, None, reactor).addErrback(lambda _f: None)
        asked = new.outbound.request(sent.append, "ping", {}, None, reactor)
        self.assertNotEqual(sent[0]["id"], sent[1]["id"])
        self.assertEqual(sent[1]["id"].split("-")[1], cluster.instance)
        self.assertFalse(new.outbound.resolve({"jsonrpc": "2.0", "id": sent[0]["id"], "result": {}}))
        self.assertFalse(asked.called)
        new.outbound.resolve({"jsonrpc": "2.0", "id": sent[1]["id"], "result": {}})
        self.assertTrue(asked.called)
        old.outbound.close()

    @inlineCallbacks
    def test_two_listeners_of_one_channel(self) -> Any:
        """Two readers of one stream in this process (a stale GET and its replacement) both
        hear its channel; the first one ending leaves the other listening, and the channel is
        unsubscribed only when the last one ends."""
        channel = self.bus.key("ev", "two-readers", STANDALONE, "live")
        stale: list[str] = []
        live: list[str] = []
        self.bus.listen(channel, stale.append, raw=True)
        self.bus.listen(channel, live.append, raw=True)
        yield self.subscribers_become(channel, 1)
        yield self.connection.execute("PUBLISH", channel, "1 first")
        yield wait_for(lambda: stale and live)
        self.assertEqual((stale, live), (["1 first"], ["1 first"]))

        self.bus.unlisten(channel, stale.append)
        yield self.connection.execute("PUBLISH", channel, "2 second")
        yield wait_for(lambda: len(live) == 2)
        self.assertEqual((stale, live), (["1 first"], ["1 first", "2 second"]))

        self.bus.unlisten(channel, live.append)
        yield self.subscribers_become(channel, 0)

    @inlineCallbacks
    def test_refresh_saves_a_lost_record_again(self) -> Any:
        """A live session whose record is gone from Redis (a restart without persistence, a
        blip while it was saved) gets it back at the next refresh, so other instances can
        adopt it again instead of answering 404."""
        cluster = self.cluster()
        session = HTTPSession("record-lost")
        session.version = "2025-11-25"
        cluster.sessions.add(session)
        records = cluster.sessions.records
        yield self.record_appears(records, session.id)
        yield records.delete(session.id)
        self.assertIsNone((yield records.load(session.id)))
        cluster.refresh([session])
        yield self.record_appears(records, session.id)
        record = yield records.load(session.id)
        self.assertEqual((record.session_id, record.version), ("record-lost", "2025-11-25"))

    @inlineCallbacks
    def test_a_cancel_nobody_hears_marks_the_task_cancelled_only_if_its_runner_is_gone(self) -> Any:
        """A cancel that reaches no listener (the runner's bus reconnecting) while the runner is
        still registered is a clear, transient error, not a cancelled record; once the registry
        says the runner is gone, the record is marked cancelled."""
        store = RedisTaskStore(self.connection)
        registry = InstanceRegistry(self.bus, [], [], clock=reactor)
        relay = TaskRelay(self.bus, TaskManager(store, reactor), reactor, registry)
        # The runner: registered, its bus not listening (as while it reconnects).
        runner_bus = ClusterBus(self.connection, clock=reactor)
        runner = InstanceRegistry(runner_bus, [], [], clock=reactor)
        runner.start()
        self.addCleanup(runner.stop)
        yield self.registered(registry, runner_bus.instance)
        record = TaskRecord("t-unheard", "caller:alice", True, reactor.seconds(), 60_000, 500)
        record.runner = runner_bus.instance
        yield store.add(record, reactor.seconds())

        refused = yield relay.cancel(record).addErrback(lambda f: f.value)
        self.assertIsInstance(refused, ClusterUnavailable)
        self.assertIn("try again", str(refused))
        self.assertEqual((yield store.get("t-unheard")).status, record.status)

        yield runner.stop()
        cancelled = yield relay.cancel(record)
        self.assertEqual(cancelled.status, CANCELLED)
        self.assertEqual((yield store.get("t-unheard")).status, CANCELLED)

    @inlineCallbacks
    def test_the_largest_event_id_taken_reads_the_journal(self) -> Any:
        """The largest sequence number a Last-Event-ID may carry (`MAX_SEQ_DIGITS`) is one the
        journal's Redis streams take: resuming after it finds nothing, without an error."""
        journal = Journal(self.bus, 16, 60.0)
        yield journal.append("far-resume", STANDALONE, b'{"n":1}')
        parsed = parse_event_id("g." + "9" * MAX_SEQ_DIGITS)
        assert parsed is not None
        self.assertEqual((yield journal.read_after("far-resume", *parsed)), [])
        self.assertEqual((yield journal.read_after("far-resume", STANDALONE, 0)), [(1, b'{"n":1}')])
        self.assertIsNone(parse_event_id("g." + "9" * (MAX_SEQ_DIGITS + 1)))
