# -*- test-case-name: tests.test_cluster_parts -*-
"""The parts of `mcpd.cluster` one at a time, against a real ``redis-server``: the journal, the
bus and the session sharing, without the daemons and nginx of `tests.test_cluster`."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.protocols import portforward
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.test.requesthelper import DummyRequest

from mcpd.cluster.bus import QUIET, ClusterBus, ClusterUnavailable
from mcpd.cluster.instances import REFRESH, TTL, InstanceRegistry, process_state
from mcpd.cluster.journal import STANDALONE, Journal
from mcpd.cluster.relay import ORPHANED, TaskRelay
from mcpd.cluster.sessions import _DELIVERED, ClusterSessions, SSEForwarding
from mcpd.interfaces import (
    CANCELLED,
    COMPLETED,
    FAILED,
    INPUT_REQUIRED,
    WORKING,
    SessionRecord,
    StoreFull,
    StoreUnavailable,
    TaskRecord,
)
from mcpd.protocol.changes import ChangeFeed
from mcpd.protocol.engine import Engine
from mcpd.protocol.errors import InvalidParams
from mcpd.protocol.ledger import SESSION, SUBSCRIPTION
from mcpd.protocol.session import SessionStore
from mcpd.protocol.tasks import TaskManager, TaskRun, UnsavedRecords
from mcpd.stores.redis import RedisConnection, redis_config
from mcpd.stores.redis.sessions import RedisSessionStore
from mcpd.stores.redis.tasks import RedisTaskStore
from mcpd.tools import Caller, ToolRegistry
from mcpd.transport.legacy_sse import SSESession
from mcpd.transport.sse import MAX_SEQ_DIGITS, parse_event_id, start_sse
from mcpd.transport.streamable import HTTPSession
from tests import conformance_pack
from tests.daemon import DaemonTestMixin, call_server_info, start_daemon
from tests.engine_harness import Peer
from tests.redis_service import PASSWORD, RedisServer, shared_redis, unique_prefix
from tests.test_redis import _get_json, _until, answers_again, wait_for


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


class JournaledStream(Resource):
    """GET: one stream of a session carried from the journal, as the Streamable HTTP endpoint
    carries it (`ClusterSessions.read`), over a real loopback socket."""

    isLeaf = True

    def __init__(self, cluster: ClusterSessions, session: HTTPSession, key: str, after: int | None) -> None:
        super().__init__()
        self.cluster, self.session, self.key, self.after = cluster, session, key, after

    def render_GET(self, request: Any) -> Any:
        start_sse(request)
        self.cluster.read(request, self.session, self.key, self.after)
        return NOT_DONE_YET


@inlineCallbacks
def judge(case: TestCase, bus: ClusterBus) -> Any:
    """A started registry of ``bus``'s instance that takes an instance without an entry for
    gone at once (no wait for live ones to register again after an outage)."""
    registry = InstanceRegistry(bus, [], [], clock=reactor, sure_after=0.0)
    registry.start()
    case.addCleanup(registry.stop)
    yield wait_for(registry.sure)
    return registry


class RedisPartsCase(TestCase):
    """A connection and a started bus on the shared ``redis-server``, with a prefix of its own."""

    timeout = 60

    def redis_url(self) -> str:
        """The Redis server the case's connection and bus use."""
        return shared_redis().url

    @inlineCallbacks
    def setUp(self) -> Any:
        self.connection = RedisConnection(redis_config(self.redis_url(), prefix=unique_prefix()), reactor)
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

    @inlineCallbacks
    def other_instance(self) -> Any:
        """The bus of a second instance, running and registered (its registry started)."""
        bus = ClusterBus(self.connection, clock=reactor)
        yield bus.start(10.0)
        self.addCleanup(bus.stop)
        registry = InstanceRegistry(bus, [], [], clock=reactor)
        registry.start()
        self.addCleanup(registry.stop)
        return bus, registry

    def stream(self, cluster: ClusterSessions, session: HTTPSession, key: str = STANDALONE) -> Any:
        """A reader of ``session``'s stream ``key`` from its start, over a real socket."""
        port = reactor.listenTCP(0, Site(JournaledStream(cluster, session, key, 0)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        return treq.get(f"http://127.0.0.1:{port.getHost().port}/", unbuffered=True, pool=pool)

    def cluster(self, session_timeout: float = 60.0, bus: ClusterBus | None = None) -> ClusterSessions:
        """The session sharing of one instance (of ``bus``: this test's by default), its session
        records in Redis."""
        bus = bus or self.bus
        journal = Journal(bus, 16, session_timeout)
        registry = InstanceRegistry(bus, [], [], clock=reactor)
        records = RedisSessionStore(self.connection, reactor, session_timeout)
        sessions = SessionStore(reactor, session_timeout, records=records)
        cluster = ClusterSessions(bus, journal, registry, sessions, ChangeFeed())
        sessions.cluster = cluster
        return cluster


class ClusterPartsTests(RedisPartsCase):
    @inlineCallbacks
    def test_refresh_keeps_the_get_stream_numbering(self) -> Any:
        """A quiet session kept alive (its GET stream open) past the session timeout keeps its
        standalone stream's counter: the next event is numbered after the last one, not 1
        again (which a reader at position 1 would drop)."""
        cluster = self.cluster(session_timeout=1.0)
        session = HTTPSession("quiet-session")
        session.initialized = True
        first = yield cluster.journal.append(session.id, STANDALONE, b'{"n":1}')
        for _ in range(6):  # 1.8 s of quiet: longer than the TTL, refreshed as the sweep does
            cluster.refresh([session])
            yield sleep(0.3)
        second = yield cluster.journal.append(session.id, STANDALONE, b'{"n":2}')
        self.assertEqual(second, first + 1)

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
    def test_a_post_streams_events_are_journaled_in_order(self) -> Any:
        """A POST stream's events, sent one after another without waiting (as a tool's log
        messages, its result and the stream's end are), all reach the journal in order: they
        went out on any connection of the pool, and Redis refused one overtaken by the next
        ("The ID specified in XADD is equal or smaller than the target stream top item"),
        losing it to replay."""
        cluster = self.cluster()
        cluster.journal.replay_limit = 256
        self.assertGreater(self.connection.pool_size, 1)
        session = HTTPSession("journaled-in-order")
        cluster.fit(session)
        stream = session.new_stream()
        for n in range(1, 121):
            stream.send(b'{"n":%d}' % n)
        stream.close()
        appended = [cluster.journal.append(session.id, "other", b'{"m":%d}' % n, seq=n) for n in range(1, 41)]
        self.assertEqual((yield gatherResults(appended)), list(range(1, 41)))
        yield wait_for(lambda: not cluster.journal._queued)
        replayed = yield cluster.journal.read_after(session.id, stream.key, 0)
        self.assertEqual(replayed, [(n, b'{"n":%d}' % n) for n in range(1, 121)] + [(121, b"")])

    @inlineCallbacks
    def test_get_stream_events_are_numbered_in_issue_order(self) -> Any:
        """The GET stream's events, numbered by Redis, issued one after another without waiting
        (a burst of notifications), are numbered in the order they were issued, and published
        in it: they went out on any connection of the pool, and Redis numbered them in the
        order it ran them (ids g.285-g.300 carried n=266...298)."""
        journal = Journal(self.bus, 512, 60.0)
        self.assertGreater(self.connection.pool_size, 1)
        session = "get-in-issue-order"
        heard: list[str] = []
        self.bus.listen(journal.channel(session, STANDALONE), heard.append, raw=True)
        self.addCleanup(self.bus.unlisten, journal.channel(session, STANDALONE), heard.append)
        yield self.subscribers_become(journal.channel(session, STANDALONE), 1)
        count = 400
        appended = [journal.append(session, STANDALONE, b'{"n":%d}' % n) for n in range(1, count + 1)]
        numbers = yield gatherResults(appended)
        base = numbers[0] - 1
        self.assertEqual(numbers, list(range(base + 1, base + count + 1)))
        replayed = yield journal.read_after(session, STANDALONE, 0)
        self.assertEqual(replayed, [(base + n, b'{"n":%d}' % n) for n in range(1, count + 1)])
        yield wait_for(lambda: len(heard) == count)
        self.assertEqual(heard, [f'{base + n} {{"n":{n}}}' for n in range(1, count + 1)])

    @inlineCallbacks
    def test_a_change_reaches_the_get_stream_once(self) -> Any:
        """A change heard by several instances (its once-key) is added to the GET stream once,
        whether its copies come in one burst or after it was added; the others fire with 0."""
        journal, other = Journal(self.bus, 64, 60.0), Journal(self.bus, 64, 60.0)
        session = "changed-once"
        burst = [(b'{"n":1}', None), (b'{"c":1}', "c1"), (b'{"c":1}', "c1"), (b'{"n":2}', None), (b'{"c":2}', "c2")]
        numbers = yield gatherResults([journal.append(session, STANDALONE, data, once=once) for data, once in burst])
        base = numbers[0] - 1
        self.assertEqual(numbers, [base + 1, base + 2, 0, base + 3, base + 4])
        # Another instance's copies, after.
        self.assertEqual((yield other.append(session, STANDALONE, b'{"c":2}', once="c2")), 0)
        self.assertEqual((yield other.append(session, STANDALONE, b'{"c":3}', once="c3")), base + 5)
        self.assertEqual((yield journal.append(session, STANDALONE, b'{"c":1}', once="c1")), 0)
        replayed = yield journal.read_after(session, STANDALONE, 0)
        self.assertEqual([data for _, data in replayed], [b'{"n":1}', b'{"c":1}', b'{"n":2}', b'{"c":2}', b'{"c":3}'])
        self.assertEqual([seq for seq, _ in replayed], [base + n for n in range(1, 6)])

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
        # Lost, not deleted (as by a restart without persistence: no tombstone either).
        yield self.connection.execute("DEL", self.connection.key("session", "streamable", session.id))
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
        registry = yield judge(self, self.bus)
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
        first = yield journal.append("far-resume", STANDALONE, b'{"n":1}')
        parsed = parse_event_id("g." + "9" * MAX_SEQ_DIGITS)
        assert parsed is not None
        self.assertEqual((yield journal.read_after("far-resume", *parsed)), [])
        self.assertEqual((yield journal.read_after("far-resume", STANDALONE, 0)), [(first, b'{"n":1}')])
        self.assertLess(first, parsed[1])  # the journal's own numbers are taken back
        self.assertIsNone(parse_event_id("g." + "9" * (MAX_SEQ_DIGITS + 1)))

    @inlineCallbacks
    def test_another_key_adopting_a_session_claims_nothing(self) -> Any:
        """A leaked session id used with another key on an instance that has not seen the session
        is refused before anything is claimed: nothing counts against the owner's account (its
        share of sessions), and no replica is kept; the owner then adopts it as usual."""
        opener, other = self.cluster(), self.cluster()
        session = HTTPSession("leaked-id")
        session.version, session.owner = "2025-11-25", "alice"
        opener.sessions.open(session, "key:alice")
        opener.sessions.add(session)
        yield self.record_appears(opener.sessions.records, session.id)

        def replica(record: Any) -> HTTPSession:
            return HTTPSession(record.session_id)

        stolen = yield other.sessions.adopt(session.id, replica, "mallory")
        self.assertIsNone(stolen)
        self.assertEqual(other.sessions.ledger.held("key:alice", SESSION), 0)
        self.assertNotIn(session.id, other.sessions)
        adopted = yield other.sessions.adopt(session.id, replica, "alice")
        self.assertEqual((adopted.id, adopted.owner), (session.id, "alice"))
        self.assertEqual(other.sessions.ledger.held("key:alice", SESSION), 1)
        other.sessions.retire(session.id)
        opener.sessions.retire(session.id)

    @inlineCallbacks
    def test_a_session_ended_elsewhere_is_not_revived(self) -> Any:
        """A session deleted on another instance whose "ended" message this one missed: the
        refresh finds its record gone, and saving it again is refused by the tombstone, so the
        session stays ended everywhere and this instance ends its part too."""
        here, there = self.cluster(), self.cluster()
        session = HTTPSession("ended-elsewhere")
        session.version, session.owner, session.initialized = "2025-11-25", "alice", True
        here.sessions.open(session, "key:alice")
        here.sessions.add(session)
        records = here.sessions.records
        yield self.record_appears(records, session.id)
        # Ended through the other instance (DELETE landed there); its broadcast never came.
        self.assertTrue((yield there.sessions.records.delete(session.id)))
        here.refresh([session])
        yield wait_for(lambda: session.closed)
        self.assertNotIn(session.id, here.sessions)
        yield sleep(0.2)
        self.assertIsNone((yield records.load(session.id)))

    @inlineCallbacks
    def test_an_event_published_while_the_reader_subscribes_is_not_lost(self) -> Any:
        """Resuming (Last-Event-ID) subscribes to the stream's channel first and replays the
        journal only once Redis confirms: an event published after the reader began but before
        its SUBSCRIBE took effect (here the subscriber connection is made slow) is in the
        replay, and each event is written once."""
        cluster = self.cluster()
        session = HTTPSession("resumed-while-busy")
        session.version = "2025-11-25"
        first = yield cluster.journal.append(session.id, STANDALONE, b'{"n":1}')
        subscriber = self.bus._subscriber
        assert subscriber is not None
        subscribe = subscriber.subscribe
        subscriber.subscribe = lambda channels: deferLater(reactor, 0.6, subscribe, channels)  # type: ignore[method-assign]
        self.addCleanup(setattr, subscriber, "subscribe", subscribe)
        port = reactor.listenTCP(0, Site(JournaledStream(cluster, session, STANDALONE, 0)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        response = yield treq.get(f"http://127.0.0.1:{port.getHost().port}/", unbuffered=True, pool=pool)
        received: list[bytes] = []
        body = treq.collect(response, received.append)
        yield sleep(0.2)  # the reader began; its SUBSCRIBE is not through yet
        yield cluster.journal.append(session.id, STANDALONE, b'{"n":2}')
        yield wait_for(lambda: b'{"n":2}' in b"".join(received))
        yield cluster.journal.append(session.id, STANDALONE, b'{"n":3}')
        yield wait_for(lambda: b'{"n":3}' in b"".join(received))
        session.close()
        yield body
        stream = b"".join(received)
        self.assertEqual([stream.count(b"id: g.%d\n" % (first + n)) for n in (0, 1, 2)], [1, 1, 1])
        self.assertLess(stream.index(b'{"n":1}'), stream.index(b'{"n":2}'))

    @inlineCallbacks
    def test_one_get_stream_per_session_across_instances(self) -> Any:
        """A session's GET stream held by instance A: a GET landing on B is refused (the 409 of
        one instance) while A runs and reads it; once A's reader lets go, or A is gone without
        letting go (killed), B takes it."""
        bus_a, registry_a = yield self.other_instance()
        a = self.cluster(bus=bus_a)
        a.registry = yield judge(self, bus_a)  # sure: an instance without an entry is gone
        b = self.cluster()
        b.registry.start()
        self.addCleanup(lambda: b.registry.stop() if b.registry._refresh.running else None)
        yield self.registered(a.registry, b.instance)
        session_a, session_b = HTTPSession("one-get-stream"), HTTPSession("one-get-stream")
        held = yield a.hold_standalone(session_a)
        self.assertTrue(held and held.startswith(bus_a.instance))
        yield self.registered(b.registry, bus_a.instance)
        self.assertIsNone((yield b.hold_standalone(session_b)))
        a.let_go(session_a.id, held)
        while (yield self.connection.execute("EXISTS", a.journal.reader(session_a.id))):
            yield sleep(0.02)
        taken = yield b.hold_standalone(session_b)
        self.assertTrue(taken and taken.startswith(b.instance))
        self.assertIsNone((yield a.hold_standalone(session_a)))

        # B dies holding it (no let go): once the registry no longer counts B, A takes it.
        held_by_dead = yield b.hold_standalone(HTTPSession("dead-holder"))
        self.assertIsNotNone(held_by_dead)
        yield b.registry.stop()  # as if killed: its entry is gone, its claim is not
        self.assertFalse((yield b.registry.alive(b.instance)))
        again = yield a.hold_standalone(HTTPSession("dead-holder"))
        self.assertTrue(again and again.startswith(bus_a.instance))
        yield registry_a.stop()

    @inlineCallbacks
    def test_session_state_changed_through_one_instance_holds_on_the_others(self) -> Any:
        """A session opened on A, its GET stream read on B: a resources/subscribe and a
        logging/setLevel made through A hold on B (its replica, told at once) and on C (adopting
        later, from the record), so the resource's update reaches the GET stream on B even
        after A has let its part go."""
        bus_a, _registry_a = yield self.other_instance()
        bus_c, _registry_c = yield self.other_instance()
        a, b, c = self.cluster(bus=bus_a), self.cluster(), self.cluster(bus=bus_c)
        session = HTTPSession("state-across")
        session.version, session.owner, session.initialized = "2025-11-25", "alice", True
        a.sessions.open(session, "key:alice")
        a.sessions.add(session)
        yield self.record_appears(a.sessions.records, session.id)

        def replica(record: Any) -> HTTPSession:
            return HTTPSession(record.session_id)

        on_b = yield b.sessions.adopt(session.id, replica, "alice")
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        port = reactor.listenTCP(0, Site(JournaledStream(b, on_b, STANDALONE, 0)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        response = yield treq.get(f"http://127.0.0.1:{port.getHost().port}/", unbuffered=True, pool=pool)
        received: list[bytes] = []
        body = treq.collect(response, received.append)

        # Through A, as the catalog does it (resources/subscribe, logging/setLevel).
        session.subscriptions["memo://shared"] = None
        session.subscriptions_tenant = "acme"
        session.changed(subscribe="memo://shared", tenant="acme")
        session.log_level = "error"
        session.changed(log_level="error")
        yield wait_for(lambda: on_b.log_level == "error" and "memo://shared" in on_b.subscriptions)
        self.assertEqual(on_b.subscriptions_tenant, "acme")
        a.sessions.retire(session.id)  # A lets its part go (idle there)

        b.feed.resource_updated("memo://shared", tenant="acme", change="c1")
        yield wait_for(lambda: b"notifications/resources/updated" in b"".join(received))
        self.assertIn(b"memo://shared", b"".join(received))

        on_c = yield c.sessions.adopt(session.id, replica, "alice")
        self.assertEqual((sorted(on_c.subscriptions), on_c.subscriptions_tenant), (["memo://shared"], "acme"))
        self.assertEqual(on_c.log_level, "error")
        on_b.changed(unsubscribe="memo://shared")
        on_b.subscriptions.pop("memo://shared", None)
        yield wait_for(lambda: "memo://shared" not in on_c.subscriptions)
        c.sessions.retire(session.id)
        b.sessions.retire(session.id)
        yield body


class SessionChangeAnsweredOnceSharedTests(RedisPartsCase):
    """logging/setLevel and resources/unsubscribe, through an `Engine` on instance A, are
    answered once the session's record has the change and it was told to the other instances:
    a client killing A right after the answer must not lose it (tests.test_cluster saw B log at
    the old level after the instance the level was set through was killed)."""

    @inlineCallbacks
    def test_the_answer_waits_for_the_record_and_the_others(self) -> Any:
        bus_b, _registry = yield self.other_instance()
        a, b = self.cluster(), self.cluster(bus=bus_b)
        engine = Engine(ToolRegistry([conformance_pack.pack]), clock=reactor)
        peer = Peer(self, engine)
        peer.session = session = HTTPSession("answered-once-shared")
        yield peer.start(
            peer.message(
                "initialize",
                {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
            )
        )
        yield peer.start({"jsonrpc": "2.0", "method": "notifications/initialized"})
        session.owner = "alice"
        a.sessions.open(session, "key:alice")
        a.sessions.add(session)
        yield self.record_appears(a.sessions.records, session.id)
        on_b = yield b.sessions.adopt(session.id, lambda record: HTTPSession(record.session_id), "alice")
        self.assertEqual(on_b.log_level, session.log_level)
        session.subscriptions["memo://kept"] = None
        yield session.changed(subscribe="memo://kept", tenant="default")

        answers = []
        for method, params, state in (
            ("logging/setLevel", {"level": "error"}, ("error", ["memo://kept"])),
            ("resources/unsubscribe", {"uri": "memo://kept"}, ("error", [])),
        ):
            answered = peer.start(peer.message(method, params))
            self.assertNoResult(answered)  # not before the record has it
            answers.append((yield answered))
            record = yield a.sessions.records.load(session.id)
            self.assertEqual((record.log_level, list(record.subscriptions)), state, answers)
        self.assertEqual([answer["result"] for answer in answers], [{}, {}])
        yield wait_for(lambda: on_b.log_level == "error" and not on_b.subscriptions)
        a.sessions.retire(session.id)
        b.sessions.retire(session.id)


class TaskRunnerGoneTests(RedisPartsCase):
    """Tasks whose runner instance stopped (``kill -9``): settled as failed once, by a reader
    or the sweep; ``tasks/result`` waits woken by the runner's broadcast, and cancellable."""

    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.store = RedisTaskStore(self.connection)
        self.registry = yield judge(self, self.bus)
        self.manager = TaskManager(self.store, reactor)
        self.relay = TaskRelay(self.bus, self.manager, reactor, self.registry)
        self.addCleanup(self.relay.stop)
        # The runner: another instance, registered (its work would be in its process).
        self.runner_bus = ClusterBus(self.connection, clock=reactor)
        self.runner = InstanceRegistry(self.runner_bus, [], [], clock=reactor)
        self.runner.start()
        self.addCleanup(self.runner.stop)
        yield self.registered(self.registry, self.runner_bus.instance)

    def reader(self) -> TaskRelay:
        """Another instance's relay, that has not seen the runner yet."""
        return TaskRelay(
            ClusterBus(self.connection, clock=reactor), TaskManager(self.store, reactor), reactor, self.registry
        )

    @inlineCallbacks
    def running(self, task_id: str, modern: bool = False, ttl_ms: int = 60_000) -> Any:
        owner = "caller:alice" if modern else "session:s1"
        record = TaskRecord(task_id, owner, modern, reactor.seconds(), ttl_ms, 500)
        record.runner = self.runner_bus.instance
        yield self.store.add(record, reactor.seconds())
        return record

    @inlineCallbacks
    def test_a_reader_settles_the_task_of_a_gone_runner_once(self) -> Any:
        """While the runner is registered, a reader sees the task working; once its entry is
        gone, the first reader settles it as failed with a clear message, a second reader
        finds it so without settling it again, and the runner's late result does not replace
        it (the first terminal status stays)."""
        record = yield self.running("t-orphan")
        self.assertEqual((yield self.relay.check(record)).status, WORKING)
        self.assertEqual((yield self.store.get("t-orphan")).status, WORKING)

        yield self.runner.stop()  # as its registry entry expiring after kill -9
        settled = yield self.reader().check(record)
        self.assertEqual((settled.status, settled.status_message), (FAILED, ORPHANED))
        self.assertEqual(settled.error["message"], ORPHANED)
        kept = yield self.store.get("t-orphan")
        self.assertEqual((kept.status, kept.status_message), (FAILED, ORPHANED))
        # Another reader (with what it read before): the record as kept, not settled again.
        again = yield self.reader().check(record)
        self.assertEqual((again.status, again.updated), (FAILED, kept.updated))
        self.assertEqual((yield self.store.settle(settled, self.registry.key(record.runner))), -1)
        late = TaskRecord.from_json(record.to_json())
        late.status, late.result = COMPLETED, {"content": []}
        yield self.store.save(late)
        self.assertEqual((yield self.store.get("t-orphan")).status, FAILED)

    @inlineCallbacks
    def test_tasks_list_settles_the_tasks_of_a_gone_runner(self) -> Any:
        """tasks/list (legacy) shows another instance's running tasks as they are: working
        while their runner lives, failed as soon as it has gone (as tasks/get does), without
        waiting for the sweep; a live runner's task in the same page stays working."""
        yield self.running("t-list-1")
        yield self.running("t-list-2")
        other_bus = ClusterBus(self.connection, clock=reactor)
        alive = InstanceRegistry(other_bus, [], [], clock=reactor)
        alive.start()
        self.addCleanup(alive.stop)
        yield self.registered(self.registry, other_bus.instance)
        live = TaskRecord("t-list-3", "session:s1", False, reactor.seconds(), 60_000, 500, runner=other_bus.instance)
        yield self.store.add(live, reactor.seconds())

        def statuses(listed: dict[str, Any]) -> list[tuple[str, str]]:
            return [(task["taskId"], task["status"]) for task in listed["tasks"]]

        listed = yield self.reader().manager.list(legacy("tasks/list", ""), 50)
        self.assertEqual(statuses(listed), [("t-list-1", WORKING), ("t-list-2", WORKING), ("t-list-3", WORKING)])
        yield self.runner.stop()  # as its registry entry expiring after kill -9
        listed = yield self.reader().manager.list(legacy("tasks/list", ""), 50)
        self.assertEqual(statuses(listed), [("t-list-1", FAILED), ("t-list-2", FAILED), ("t-list-3", WORKING)])
        self.assertEqual(listed["tasks"][0]["statusMessage"], ORPHANED)
        self.assertEqual((yield self.store.get("t-list-2")).status, FAILED)

    @inlineCallbacks
    def test_a_check_redis_cannot_answer_gives_the_record_as_read(self) -> Any:
        """The liveness check failing (Redis gone between the read and the check) does not fail
        the read: the record comes back as it was read."""
        record = yield self.running("t-unchecked")
        offline = RedisConnection(redis_config(shared_redis().url, prefix=self.connection.key()), reactor)
        relay = TaskRelay(self.bus, TaskManager(RedisTaskStore(offline), reactor), reactor, self.registry)
        self.assertIs((yield relay.check(record)), record)

    @inlineCallbacks
    def test_the_sweep_settles_orphans_and_drops_expired_records(self) -> Any:
        """The sweep settles other instances' running tasks whose runner has gone (nobody need
        ask), leaves those of live runners, and drops records whose TTL has passed."""
        gone = yield self.running("t-gone")
        expired = yield self.running("t-expired", ttl_ms=1)
        other_bus = ClusterBus(self.connection, clock=reactor)
        alive = InstanceRegistry(other_bus, [], [], clock=reactor)
        alive.start()
        self.addCleanup(alive.stop)
        yield self.registered(self.registry, other_bus.instance)
        kept = TaskRecord("t-alive", "session:s1", False, reactor.seconds(), 60_000, 500, runner=other_bus.instance)
        yield self.store.add(kept, reactor.seconds())
        yield self.runner.stop()
        yield sleep(0.01)
        yield self.relay.sweep()
        self.assertEqual((yield self.store.get(gone.task_id)).status, FAILED)
        self.assertIsNone((yield self.store.get(expired.task_id)))
        self.assertEqual((yield self.store.get("t-alive")).status, WORKING)
        # The sweep reads the running tasks of gone runners only: a runner's set empties as its
        # tasks end, and a runner with none leaves the index at the next sweep.
        runners = self.connection.key("tasks:runners")
        self.assertEqual(
            (yield self.connection.execute("SCARD", self.connection.key("tasks:running:" + gone.runner))), 0
        )
        yield self.relay.sweep()
        members = yield self.connection.execute("SMEMBERS", runners)
        self.assertEqual(sorted(members), [other_bus.instance])

    @inlineCallbacks
    def test_tasks_result_is_woken_by_the_runners_broadcast(self) -> Any:
        """A tasks/result wait for another instance's task ends as soon as the runner
        announces the end (no sweep is running: no polling)."""
        record = yield self.running("t-ends")
        waiting = self.relay.wait(record)
        yield sleep(0.2)
        self.assertFalse(waiting.called)
        runner_manager = TaskManager(self.store, reactor)
        yield self.runner_bus.start(10.0)
        self.addCleanup(self.runner_bus.stop)
        runner_relay = TaskRelay(self.runner_bus, runner_manager, reactor, self.runner)
        # The runner's side: the task ends, its record is saved, then announced.
        done = TaskRecord.from_json(record.to_json())
        runner_manager._runs[done.task_id] = run = TaskRun(done)
        run.record.result = {"content": [{"type": "text", "text": "done"}]}
        started = reactor.seconds()
        runner_manager.set_status(run, COMPLETED)
        ended = yield waiting
        self.assertEqual(ended.status, COMPLETED)
        self.assertLess(reactor.seconds() - started, TaskRelay.SWEEP)
        self.assertEqual(self.relay.waiting, 0)
        runner_relay.stop()

    @inlineCallbacks
    def test_tasks_result_for_a_gone_runner_fails_at_the_sweep(self) -> Any:
        """A tasks/result wait whose runner dies gets the failure at the next sweep."""
        record = yield self.running("t-dies")
        waiting = self.relay.wait(record)
        yield self.runner.stop()
        yield self.relay.sweep()
        ended = yield waiting
        self.assertEqual((ended.status, ended.status_message), (FAILED, ORPHANED))

    @inlineCallbacks
    def test_a_cancelled_wait_leaves_nothing_behind(self) -> Any:
        """The request waiting went away (client gone, notifications/cancelled): the wait is
        withdrawn, and the sweep no longer looks at the task; stopping the instance fails the
        waits still there with a clear error."""
        record = yield self.running("t-abandoned")
        waiting = self.relay.wait(record)
        waiting.addErrback(lambda f: f.trap(CancelledError))
        self.assertEqual(self.relay.waiting, 1)
        waiting.cancel()
        self.assertEqual(self.relay.waiting, 0)
        other = self.relay.wait(record)
        self.relay.stop()
        failure = yield other.addErrback(lambda f: f.value)
        self.assertIsInstance(failure, ClusterUnavailable)
        self.assertIn("shut down", str(failure))
        self.assertEqual(self.relay.waiting, 0)


class UnsavedTaskRecordTests(TestCase):
    """A task status saved while Redis is down is saved again once it is back."""

    timeout = 90

    @inlineCallbacks
    def test_a_status_saved_while_redis_is_down_lands_when_it_returns(self) -> Any:
        server = RedisServer(persistent=True).start()
        self.addCleanup(server.destroy)
        connection = RedisConnection(redis_config(server.url, prefix=unique_prefix()), reactor)
        connection.startService()
        self.addCleanup(lambda: connection.stopService() if connection.running else None)
        yield answers_again(connection)
        store = RedisTaskStore(connection)
        manager = TaskManager(store, reactor)
        record = TaskRecord("t-outage", "session:s1", False, reactor.seconds(), 60_000, 500)
        yield store.add(record, reactor.seconds())
        run = manager._runs[record.task_id] = TaskRun(record)

        server.stop()
        record.input_requests["confirm"] = {"method": "elicitation/create", "params": {}}
        manager.set_status(run, INPUT_REQUIRED)
        yield wait_for(lambda: len(manager.unsaved) == 1)
        # The task's next statuses queue behind the one held (in order, the latest kept).
        record.input_requests.clear()
        record.result = {"content": [{"type": "text", "text": "done while Redis was away"}]}
        manager.set_status(run, COMPLETED)
        self.assertEqual(manager.unsaved._held[record.task_id].status, COMPLETED)
        # A stale status of the same task never replaces the end held.
        stale = TaskRecord.from_json(record.to_json())
        stale.status = WORKING
        manager.unsaved.failed(Failure(StoreUnavailable("redis", "down")), stale)
        self.assertEqual(manager.unsaved._held[record.task_id], record)
        yield sleep(1.5)  # tries while it is down back off
        self.assertGreaterEqual(manager.unsaved.retried, 1)
        self.assertEqual(len(manager.unsaved), 1)

        server.restart()
        yield wait_for(lambda: len(manager.unsaved) == 0, timeout=30.0)
        kept = yield store.get(record.task_id)
        self.assertEqual((kept.status, kept.result), (COMPLETED, record.result))
        metrics = {m.name: m.samples[0].value for m in manager.unsaved.collect()}
        self.assertEqual(metrics["mcp_task_unsaved"], 0)
        self.assertEqual(metrics["mcp_task_save_recovered"], 1)
        self.assertGreaterEqual(metrics["mcp_task_save_retries"], 2)
        manager.unsaved.stop()


class SessionRecordKeptTests(RedisPartsCase):
    """A session in use keeps its Redis record past --session-timeout (refreshed on activity,
    at most once per sweep), for both legacy HTTP transports."""

    @inlineCallbacks
    def test_an_active_streamable_session_keeps_its_record(self) -> Any:
        records = RedisSessionStore(self.connection, reactor, 1.0)
        sessions = SessionStore(reactor, 1.0, records=records)
        cluster = ClusterSessions(
            self.bus,
            Journal(self.bus, 16, 1.0),
            InstanceRegistry(self.bus, [], [], clock=reactor),
            sessions,
            ChangeFeed(),
        )
        sessions.cluster = cluster
        session = HTTPSession("busy-streamable")
        session.version = "2025-11-25"
        sessions.add(session)
        sessions.start()
        self.addCleanup(sessions.stop)
        for _ in range(12):  # 2.4 s of requests: more than twice the record's TTL
            self.assertIs(sessions.get(session.id), session)
            yield sleep(0.2)
        self.assertIsNotNone((yield records.load(session.id)))

    @inlineCallbacks
    def test_an_active_sse_session_keeps_its_record(self) -> Any:
        records = RedisSessionStore(self.connection, reactor, 1.0, kind="sse")
        sessions = SessionStore(reactor, 1.0, records=records)
        sessions.cluster = SSEForwarding(self.bus, sessions)
        stream = DummyRequest([b"sse"])
        stream._disconnected = False  # what twisted.web's Request has
        session = SSESession(stream, Caller("alice"))
        session.version = "2025-11-25"
        sessions.add(session)
        sessions.start()
        self.addCleanup(sessions.stop)
        for _ in range(12):
            self.assertIs(sessions.get(session.id), session)
            yield sleep(0.2)
        self.assertIsNotNone((yield records.load(session.id)))
        self.assertEqual((yield records.count()), 1)


class TaskResultThroughTheEngineTests(RedisPartsCase):
    """Legacy ``tasks/result`` through an `Engine` for a task another instance runs: the
    client's notifications/cancelled ends the wait (nothing left polling), and a runner that
    dies makes it answer the failure."""

    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.store = RedisTaskStore(self.connection)
        self.engine = Engine(ToolRegistry([conformance_pack.pack]), clock=reactor, task_store=self.store)
        self.registry = yield judge(self, self.bus)
        self.relay = TaskRelay(self.bus, self.engine.tasks, reactor, self.registry)
        self.addCleanup(self.relay.stop)
        runner_bus = ClusterBus(self.connection, clock=reactor)
        self.runner = InstanceRegistry(runner_bus, [], [], clock=reactor)
        self.runner.start()
        self.addCleanup(self.runner.stop)
        yield self.registered(self.registry, runner_bus.instance)
        self.peer = Peer(self, self.engine)
        yield self.peer.start(
            self.peer.message(
                "initialize",
                {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
            )
        )
        yield self.peer.start({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert self.peer.session is not None
        self.record = TaskRecord(
            "t-remote",
            f"session:{self.peer.session.id}",
            False,
            reactor.seconds(),
            60_000,
            500,
            runner=runner_bus.instance,
        )
        yield self.store.add(self.record, reactor.seconds())

    @inlineCallbacks
    def asked(self) -> Any:
        """A tasks/result request now waiting; its message and Deferred."""
        message = self.peer.message("tasks/result", {"taskId": self.record.task_id})
        answer = self.peer.start(message)
        answered: list[Any] = []
        answer.addBoth(lambda outcome: answered.append(outcome) or outcome)
        yield wait_for(lambda: self.relay.waiting == 1)
        yield sleep(0.1)
        self.assertEqual(answered, [])
        return message, answer

    @inlineCallbacks
    def test_notifications_cancelled_ends_the_wait(self) -> Any:
        message, answer = yield self.asked()
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": message["id"]}}
        yield self.peer.start(cancel)
        self.assertEqual(self.relay.waiting, 0)
        yield answer  # the request ended (a cancelled request gets no answer)

    @inlineCallbacks
    def test_the_wait_answers_the_failure_of_a_gone_runner(self) -> Any:
        _message, answer = yield self.asked()
        yield self.runner.stop()
        yield self.relay.sweep()
        response = yield answer
        self.assertEqual(response["error"]["message"], ORPHANED, response)
        self.assertEqual(self.relay.waiting, 0)


class Instance:
    """One instance's task machinery on a Redis connection: its bus, registry, task store,
    manager and relay (started; stopped by the test's cleanups)."""

    @classmethod
    @inlineCallbacks
    def start(cls, case: TestCase, connection: RedisConnection, sure_after: float = 0.0) -> Any:
        self = cls()
        self.bus = ClusterBus(connection, clock=reactor)
        yield self.bus.start(10.0)
        case.addCleanup(self.bus.stop)
        self.registry = InstanceRegistry(self.bus, [], [], clock=reactor, sure_after=sure_after)
        self.registry.start()
        case.addCleanup(self.registry.stop)
        self.store = RedisTaskStore(connection)
        self.manager = TaskManager(self.store, reactor)
        case.addCleanup(self.manager.unsaved.stop)
        self.relay = TaskRelay(self.bus, self.manager, reactor, self.registry)
        case.addCleanup(self.relay.stop)
        yield wait_for(lambda: self.registry._since is not None)
        return self

    @inlineCallbacks
    def runs(self, task_id: str) -> Any:
        """A legacy task of session s1 run here, its work going on; its run and its work."""
        record = TaskRecord(task_id, "session:s1", False, reactor.seconds(), 600_000, 500, runner=self.bus.instance)
        yield self.store.add(record, reactor.seconds())
        run = self.manager._runs[task_id] = TaskRun(record)
        work: Deferred[Any] = Deferred()
        self.manager._track(run, work)
        return run, work


def legacy(method: str, task_id: str) -> Any:
    """A legacy ``tasks/*`` request of session s1 (what `TaskManager`'s methods read)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        modern=False,
        method=method,
        version="2025-11-25",
        params={"taskId": task_id},
        exchange=SimpleNamespace(session=SimpleNamespace(id="s1")),
        meta={},
    )


@inlineCallbacks
def outcome(d: Deferred[Any]) -> Any:
    """What ``d`` fires with, or the exception it fails with."""
    try:
        return (yield d)
    except Exception as e:
        return e


class LiveRunnerAfterRedisOutageTests(TestCase):
    """A Redis outage longer than the registry's TTL expires every instance's entry: a live
    runner writes its entry again as soon as Redis answers, and no instance settles its tasks
    as orphans until it had the time to."""

    timeout = 120

    @inlineCallbacks
    def test_a_live_runner_keeps_its_task_through_a_long_outage(self) -> Any:
        server = RedisServer(persistent=True).start()
        self.addCleanup(server.destroy)
        prefix = unique_prefix()
        sides = []
        for _ in range(2):
            connection = RedisConnection(redis_config(server.url, prefix=prefix), reactor)
            connection.startService()
            self.addCleanup(lambda c=connection: c.stopService() if c.running else None)
            yield answers_again(connection)
            sides.append((yield Instance.start(self, connection, sure_after=TTL + REFRESH)))
        runner, other = sides
        run, work = yield runner.runs("t-live")

        server.stop()
        yield sleep(TTL + 1)  # every registry entry expires
        server.start()
        yield answers_again(other.store.connection)
        answered = reactor.seconds()
        # The runner's entry is back without waiting for its next refresh.
        yield self.registered(other.registry, runner.bus.instance, timeout=REFRESH)
        self.assertLess(reactor.seconds() - answered, REFRESH)
        # Back from the outage, the other instance settles nothing yet: not by its sweep, a
        # reader's check, nor a cancel nobody hears.
        self.assertFalse(other.registry.sure())
        yield runner.registry.stop()  # as a runner that has not registered again yet
        yield other.relay.sweep()
        self.assertEqual((yield other.store.get("t-live")).status, WORKING)
        self.assertEqual((yield other.manager.get(legacy("tasks/get", "t-live")))["status"], WORKING)
        unheard = TaskRecord.from_json(run.record.to_json())
        unheard.runner = "not-listening"
        refused = yield outcome(other.relay.cancel(unheard))
        self.assertIsInstance(refused, ClusterUnavailable)
        self.assertEqual((yield other.store.get("t-live")).status, WORKING)
        self.assertFalse(work.called)

        # The work ends: every instance answers its result.
        work.callback({"content": [{"type": "text", "text": "real result"}]})
        while (yield other.store.get("t-live")).status != COMPLETED:
            yield sleep(0.05)
        for side in (runner, other):
            self.assertEqual((yield side.manager.get(legacy("tasks/get", "t-live")))["status"], COMPLETED)
            result = yield side.manager.result(legacy("tasks/result", "t-live"))
            self.assertEqual(result["content"], [{"type": "text", "text": "real result"}])

    @inlineCallbacks
    def registered(self, registry: InstanceRegistry, instance: str, timeout: float) -> Any:
        deadline = reactor.seconds() + timeout
        while not (yield registry.alive(instance)):
            if reactor.seconds() > deadline:
                raise AssertionError(f"instance {instance} did not register again within {timeout}s")
            yield sleep(0.05)


class RefusedTaskSaveTests(RedisPartsCase):
    """A runner whose task another instance ended first (it took the runner for gone) adopts
    the kept record, stops the work, and every instance answers alike."""

    @inlineCallbacks
    def settled_elsewhere(self, runner: Instance, task_id: str) -> Any:
        """The task as another instance settles it when it takes the runner for gone."""
        other = yield Instance.start(self, self.connection)
        record = yield other.store.get(task_id)
        record.runner = "gone"  # its registry entry missing, as after an outage
        settled = yield other.relay.check(record)
        self.assertEqual(settled.status, FAILED)
        return other

    @inlineCallbacks
    def test_a_refused_save_is_adopted_and_the_work_cancelled(self) -> Any:
        runner = yield Instance.start(self, self.connection)
        run, work = yield runner.runs("t-refused")
        work.addErrback(lambda f: f.trap(CancelledError))
        other = yield self.settled_elsewhere(runner, "t-refused")
        # The runner's next status (input asked) is refused: it adopts the failure.
        run.record.input_requests["ask"] = {"method": "elicitation/create", "params": {}}
        runner.manager.set_status(run, INPUT_REQUIRED)
        yield wait_for(lambda: run.record.status == FAILED)
        self.assertTrue(work.called)
        self.assertEqual(run.record.status_message, ORPHANED)
        for side in (runner, other):
            got = yield side.manager.get(legacy("tasks/get", "t-refused"))
            self.assertEqual((got["status"], got["statusMessage"]), (FAILED, ORPHANED))
            failed = yield outcome(side.manager.result(legacy("tasks/result", "t-refused")))
            self.assertEqual(str(failed), ORPHANED)

    @inlineCallbacks
    def test_a_held_result_refused_when_it_lands_is_not_counted_recovered(self) -> Any:
        runner = yield Instance.start(self, self.connection)
        run, work = yield runner.runs("t-held")
        # An earlier status could not be saved (the store away): the end is held behind it.
        runner.manager.unsaved.failed(Failure(StoreUnavailable("redis", "down")), run.record)
        yield self.settled_elsewhere(runner, "t-held")
        work.callback({"content": [{"type": "text", "text": "too late"}]})
        self.assertIn("t-held", runner.manager.unsaved)
        yield wait_for(lambda: not runner.manager.unsaved)
        self.assertEqual((runner.manager.unsaved.recovered, runner.manager.unsaved.refused), (0, 1))
        self.assertEqual(run.record.status, FAILED)
        got = yield runner.manager.get(legacy("tasks/get", "t-held"))
        self.assertEqual(got["status"], FAILED)


class TaskEndAnnouncedOnceSavedTests(RedisPartsCase):
    """The "task-ended" announcement comes once the final record is in the store, also when it
    lands from the unsaved records."""

    @inlineCallbacks
    def test_a_held_end_is_announced_when_it_lands(self) -> Any:
        runner = yield Instance.start(self, self.connection)
        other = yield Instance.start(self, self.connection)
        run, work = yield runner.runs("t-announced")
        waiting = other.relay.wait(TaskRecord.from_json(run.record.to_json()))
        runner.manager.unsaved.failed(Failure(StoreUnavailable("redis", "down")), run.record)
        work.callback({"content": [{"type": "text", "text": "done"}]})
        # No sweep runs: only the runner's announcement after the held end lands wakes it.
        ended = yield waiting
        self.assertEqual(ended.status, COMPLETED)
        self.assertEqual((yield other.store.get("t-announced")).status, COMPLETED)


class RemoteLegacyCancelTests(RedisPartsCase):
    """2025-11-25 basic/utilities/tasks §Task Cancellation: a cancel of a task in a terminal
    status is -32602, also when it ended on its runner after this instance read it."""

    @inlineCallbacks
    def test_a_task_finished_on_its_runner_is_not_cancelled(self) -> Any:
        runner = yield Instance.start(self, self.connection)
        other = yield Instance.start(self, self.connection)
        run, work = yield runner.runs("t-finished")
        # It finishes on the runner; its final record is on its way to the store.
        run.record.status, run.record.result = COMPLETED, {"content": []}
        refused = yield outcome(other.manager.cancel(legacy("tasks/cancel", "t-finished")))
        self.assertIsInstance(refused, InvalidParams)
        self.assertEqual(refused.code, -32602)
        self.assertIn("already completed", str(refused))


class UnsavedCapTests(RedisPartsCase):
    """At the cap of held records, an unfinished one is dropped before any end."""

    def test_the_cap_drops_unfinished_records_first(self) -> None:
        unsaved = UnsavedRecords(RedisTaskStore(self.connection), reactor, limit=2)
        self.addCleanup(unsaved.stop)
        unsaved.hold(TaskRecord("x", "o", False, 0.0, 1000, 500, status=COMPLETED))
        unsaved.hold(TaskRecord("y", "o", False, 0.0, 1000, 500, status=WORKING))
        unsaved.hold(TaskRecord("z", "o", False, 0.0, 1000, 500, status=WORKING))
        self.assertEqual({k: r.status for k, r in unsaved._held.items()}, {"x": COMPLETED, "z": WORKING})
        self.assertEqual(unsaved.dropped, 1)
        unsaved.hold(TaskRecord("w", "o", False, 0.0, 1000, 500, status=FAILED))
        self.assertEqual(set(unsaved._held), {"x", "w"})


class GetStreamTakeoverTests(RedisPartsCase):
    """Resuming the GET stream (``Last-Event-ID: g.N``) replaces the reader that held it, on
    this instance or another, so no message goes out on two streams."""

    @inlineCallbacks
    def test_a_resumed_get_stream_ends_the_one_it_replaced(self) -> Any:
        """A GET stream read on A, resumed on B, resumed on B again: each resumption ends the
        reader it replaced (on A told over the bus, on B at once); an event goes out once."""
        bus_a = ClusterBus(self.connection, clock=reactor)
        yield bus_a.start(10.0)
        self.addCleanup(bus_a.stop)
        a, b = self.cluster(bus=bus_a), self.cluster()
        on_a, on_b = HTTPSession("taken-over"), HTTPSession("taken-over")
        on_a.version = on_b.version = "2025-11-25"
        claim = a.journal.reader(on_a.id)
        readers: list[tuple[list[bytes], Deferred[Any]]] = []
        for cluster, session in ((a, on_a), (b, on_b), (b, on_b)):
            before = yield self.connection.execute("GET", claim)
            response = yield self.stream(cluster, session)
            received: list[bytes] = []
            readers.append((received, treq.collect(response, received.append)))
            yield self.claim_changes(claim, before)
        yield b.journal.append(on_b.id, STANDALONE, b'{"n":1}')
        yield wait_for(lambda: b'{"n":1}' in b"".join(readers[-1][0]))
        yield wait_for(lambda: readers[0][1].called and readers[1][1].called)
        self.assertEqual([b'{"n":1}' in b"".join(received) for received, _ in readers], [False, False, True])
        self.assertFalse(readers[-1][1].called)
        on_b.close()
        yield readers[-1][1]

    @inlineCallbacks
    def test_the_delivered_mark_only_moves_forward(self) -> Any:
        """The GET stream's delivered mark (where a fresh GET starts) goes to Redis once per
        event over a pool of connections: marks that arrive out of order must not move it back
        (a later GET would get events again)."""
        b = self.cluster()
        session = HTTPSession("marked")
        session.version = "2025-11-25"
        response = yield self.stream(b, session)
        received: list[bytes] = []
        done = treq.collect(response, received.append)
        yield self.claim_changes(b.journal.reader(session.id), None)
        yield self.subscribers_become(b.journal.channel(session.id, STANDALONE), 1)
        count = 300
        numbers = yield gatherResults([b.journal.append(session.id, STANDALONE, b'{"n":%d}' % n) for n in range(count)])
        last = numbers[-1]
        yield wait_for(lambda: b"id: g.%d\n" % last in b"".join(received))
        mark = self.bus.key("ev", session.id, STANDALONE, "delivered")
        settled, marked = reactor.seconds() + 1.0, None
        while reactor.seconds() < settled:  # every mark sent has been applied
            marked = yield self.connection.execute("GET", mark)
            yield sleep(0.05)
        self.assertEqual(int(marked), last)
        # An older mark arriving last changes nothing.
        yield self.connection.eval(_DELIVERED, [mark], [last - 5, 60_000])
        self.assertEqual(int((yield self.connection.execute("GET", mark))), last)
        # The reader's own marks move it forward only: ahead of the events it delivers next, it
        # stays (the first half passes with a plain SET whenever the pool keeps the order).
        yield self.connection.execute("SET", mark, last + 1000)
        more = yield gatherResults([b.journal.append(session.id, STANDALONE, b'{"m":%d}' % n) for n in range(5)])
        yield wait_for(lambda: b"id: g.%d\n" % more[-1] in b"".join(received))
        yield sleep(0.3)  # the marks of those events have reached Redis
        self.assertEqual(int((yield self.connection.execute("GET", mark))), last + 1000)
        session.close()
        yield done

    @inlineCallbacks
    def claim_changes(self, claim: str, before: Any, timeout: float = 10.0) -> Any:
        """Wait until the GET stream's claim is held by another reader than ``before``."""
        deadline = reactor.seconds() + timeout
        while (holder := (yield self.connection.execute("GET", claim))) is None or holder == before:
            if reactor.seconds() > deadline:
                raise AssertionError(f"the claim stayed {before!r}")
            yield sleep(0.02)

    @inlineCallbacks
    def test_a_gone_holder_is_judged_only_once_the_registry_is_sure(self) -> Any:
        """After a Redis outage a live holder may not have written its registry entry again:
        its claim is not taken over until this instance's registry is `sure`."""
        b = self.cluster()
        session = HTTPSession("holder-unregistered")
        yield self.connection.execute("SET", b.journal.reader(session.id), "elsewhere-0123", "PX", 60_000)
        self.assertFalse(b.registry.sure())
        self.assertIsNone((yield b.hold_standalone(session)))
        b.registry = yield judge(self, self.bus)
        taken = yield b.hold_standalone(session)
        self.assertTrue(taken and taken.startswith(b.instance))

    @inlineCallbacks
    def test_a_killed_holder_of_this_host_is_gone_at_once(self) -> Any:
        """A holder whose registry entry names a process of this host that is no longer
        running (killed, not yet reaped) is gone at once, even before the registry is `sure`:
        its entry is forgotten and its claims taken over. One of another host (or another boot)
        is not judged by its process."""
        b = self.cluster()
        session = HTTPSession("holder-killed")
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        self.addCleanup(lambda: (child.kill(), child.wait()))
        state = process_state(child.pid)
        assert state is not None
        holder, entry = "killed0123", {**b.registry.entry, "id": "killed0123", "pid": child.pid}
        entry["start_ticks"] = state[1]
        elsewhere = {**entry, "id": "elsewhere0", "boot": "another-boot"}
        for instance in (entry, elsewhere):
            key = b.registry.key(instance["id"])
            yield self.connection.execute("SET", key, json.dumps(instance), "PX", 60_000)
            yield self.connection.execute("SADD", self.connection.key("instances"), instance["id"])
        yield self.connection.execute("SET", b.journal.reader(session.id), f"{holder}-0123", "PX", 60_000)
        self.assertFalse(b.registry.sure())
        self.assertFalse((yield b.registry.gone(holder)))
        self.assertIsNone((yield b.hold_standalone(session)))

        child.kill()  # a zombie until reaped: not running
        yield wait_for(lambda: (process_state(child.pid) or ("Z",))[0] == "Z")
        taken = yield b.hold_standalone(session)
        self.assertTrue(taken and taken.startswith(b.instance))
        self.assertFalse((yield b.registry.alive(holder)))
        # Its other claims too, though its entry is forgotten and the registry not `sure`.
        other = HTTPSession("holder-killed-2")
        yield self.connection.execute("SET", b.journal.reader(other.id), f"{holder}-0456", "PX", 60_000)
        taken = yield b.hold_standalone(other)
        self.assertTrue(taken and taken.startswith(b.instance))
        self.assertEqual((yield self.connection.execute("SMEMBERS", self.connection.key("instances"))), ["elsewhere0"])
        child.wait()
        elsewhere["pid"] = child.pid
        yield self.connection.execute("SET", b.registry.key("elsewhere0"), json.dumps(elsewhere), "PX", 60_000)
        self.assertFalse((yield b.registry.gone("elsewhere0")))


RECORD = {"version": "2025-11-25", "owner": "alice"}


class RestartedRedisTests(RedisPartsCase):
    """A Redis server of the test's own, restarted without persistence: it comes back empty."""

    def redis_url(self) -> str:
        self.server = RedisServer(self.mktemp()).start()
        self.addCleanup(self.server.destroy)
        return self.server.url

    @inlineCallbacks
    def test_the_get_stream_numbering_only_moves_forward_across_a_restart(self) -> Any:
        """The GET stream's counter lost with the rest, its next events are still numbered
        above the ones before: the reader open across the restart (at its position) gets them
        all, and so does a client resuming from the last id it got."""
        cluster = self.cluster()
        session = HTTPSession("across-a-restart")
        session.version = "2025-11-25"
        before = []
        for n in range(1, 6):
            before.append((yield cluster.journal.append(session.id, STANDALONE, b'{"n":%d}' % n)))
        received: list[bytes] = []
        done = treq.collect((yield self.stream(cluster, session)), received.append)
        self.addCleanup(lambda: done)
        self.addCleanup(session.close)
        yield wait_for(lambda: b'{"n":5}' in b"".join(received))
        self.server.restart()
        yield answers_again(self.connection)
        yield self.subscribers_become(cluster.journal.channel(session.id, STANDALONE), 1, timeout=15)
        after = []
        for n in range(6, 12):
            after.append((yield cluster.journal.append(session.id, STANDALONE, b'{"n":%d}' % n)))
        yield wait_for(lambda: b'{"n":11}' in b"".join(received))
        got = b"".join(received)
        self.assertEqual([got.count(b'{"n":%d}' % n) for n in range(1, 12)], [1] * 11)
        self.assertGreater(after[0], before[-1])
        self.assertEqual(after, list(range(after[0], after[0] + 6)))
        self.assertLess(abs(after[0] - time.time() * 1000), 60_000)  # from Redis' clock, in ms
        for seq in before + after:
            self.assertEqual(got.count(b"id: g.%d\n" % seq), 1)
        resumed = yield cluster.journal.read_after(session.id, STANDALONE, before[-1])
        self.assertEqual([seq for seq, _ in resumed], after)
        session.close()
        yield done


class BusOutageCase(TestCase):
    """A started bus on a server of the test's own, with a password (the subscriber logs in on
    every connection) and a --redis-timeout of `redis_timeout` seconds."""

    timeout = 90
    redis_timeout = 1.0

    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = RedisServer(self.mktemp(), password=PASSWORD).start()
        self.addCleanup(self.server.destroy)
        self.logged: list[str] = []

        def observe(event: Any) -> None:
            self.logged.append(formatEvent(event) or "")

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        config = redis_config(self.server.url, password=PASSWORD, prefix=unique_prefix(), timeout=self.redis_timeout)
        self.connection = RedisConnection(config, reactor)
        self.connection.startService()
        self.addCleanup(lambda: self.connection.stopService() if self.connection.running else None)
        self.bus = ClusterBus(self.connection, clock=reactor)
        yield self.bus.start(10.0)
        self.addCleanup(self.bus.stop)
        self.heard: list[dict[str, Any]] = []
        self.bus.on("probe", self.heard.append)
        yield self.hears_another_client(0)

    @inlineCallbacks
    def hears_another_client(self, n: int) -> Any:
        """Once Redis counts the bus among the listeners of every instance's channel, a
        PUBLISH there from another client (redis-cli) reaches it."""
        channel = self.bus.key("all")
        yield wait_for(lambda: self.server.cli("PUBSUB", "NUMSUB", channel).split()[-1] == "1", timeout=20)
        message = json.dumps({"kind": "probe", "from": "elsewhere", "to": "all", "n": n})
        self.assertEqual(self.server.cli("PUBLISH", channel, message), "1")
        yield wait_for(lambda: any(m.get("n") == n for m in self.heard))


class BusLoginCrashTests(BusOutageCase):
    """Redis crashing while the subscriber's AUTH waits for its answer (the login's reply
    timeout longer than the stall, so that the crash meets it pending)."""

    redis_timeout = 5.0

    @inlineCallbacks
    def test_a_crash_during_the_subscribers_login(self) -> Any:
        """Redis crashing while the subscriber's AUTH waits for its answer: txredisapi stops
        reconnecting it, so a fresh subscriber follows (it was taken as listening on the dead
        connection: `connected` stayed True and the bus deaf until mcpd restarted)."""
        self.server.stop()
        yield wait_for(lambda: not self.bus.connected)
        yield sleep(2.5)  # reconnecting, backed off to 2 s
        self.server.start()
        self.server.freeze()  # the connection accepted, its AUTH never answered
        yield sleep(3.5)  # the subscriber retried: its login waits
        self.assertFalse(self.bus.connected)
        self.server.kill()
        yield sleep(0.5)
        self.assertFalse(self.bus.connected)
        # The crash did cut the login short (else this test would prove nothing):
        yield wait_for(
            lambda: any("subscriber's login (could not auth: Lost connection)" in line for line in self.logged)
        )
        self.server.start()
        yield wait_for(lambda: self.bus.connected, timeout=20)
        yield self.hears_another_client(1)


class BusThroughOutagesTests(BusOutageCase):
    """The bus's subscriber through Redis crashing, stalling and restarting: afterwards it
    listens again, and `ClusterBus.connected` says whether it listens meanwhile."""

    @inlineCallbacks
    def test_a_refused_login_fails_the_start_at_once(self) -> Any:
        """A wrong password: starting fails at once, saying so (the subscriber was taken as
        listening on the connection closed after the refusal: the start went on, deaf)."""
        config = redis_config(self.server.url, password="not-the-password-4711", prefix=unique_prefix())
        bus = ClusterBus(RedisConnection(config, reactor), clock=reactor)
        self.addCleanup(bus.stop)
        started = time.monotonic()
        refused = yield self.assertFailure(bus.start(10.0), ClusterUnavailable)
        self.assertIn("refused the cluster bus' login", refused.detail)
        self.assertIn("fix REDIS_PASSWORD", refused.detail)
        self.assertNotIn("4711", refused.detail)  # never the password
        self.assertLess(time.monotonic() - started, 5.0)
        self.assertFalse(bus.connected)

    @inlineCallbacks
    def test_a_stall_during_the_subscribers_login(self) -> Any:
        """Redis stalled past --redis-timeout while the subscriber's AUTH waits, then going
        on: the subscriber listens again."""
        self.server.stop()
        yield wait_for(lambda: not self.bus.connected)
        yield sleep(2.5)
        self.server.start()
        self.server.freeze()
        yield sleep(3.5)
        self.assertFalse(self.bus.connected)
        self.server.thaw()
        yield wait_for(lambda: self.bus.connected, timeout=20)
        yield self.hears_another_client(1)

    @inlineCallbacks
    def test_a_stall_past_the_timeout_and_a_restart(self) -> Any:
        """Redis stalled past --redis-timeout then going on, and later restarted: the
        subscriber hears what is published after each."""
        self.server.freeze()
        yield sleep(2.5)
        self.server.thaw()
        yield self.hears_another_client(1)
        self.server.restart()
        yield wait_for(lambda: self.bus.connected, timeout=20)
        yield self.hears_another_client(2)


class SilentProxyServer(portforward.ProxyServer):
    """One connection through `SilentProxy`: once cut off, what either side sends is dropped and
    neither is closed, for good (a network path gone without a reset)."""

    factory: SilentProxy
    dead = False

    def connectionMade(self) -> None:
        self.dead = not self.factory.forwarding
        self.factory.open.append(self)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if not self.dead:
            super().dataReceived(data)

    def connectionLost(self, reason: Any) -> None:
        self.factory.open.remove(self)
        if not self.dead:
            super().connectionLost(reason)


class SilentProxyClient(portforward.ProxyClient):
    """The Redis side of a `SilentProxyServer`."""

    def dataReceived(self, data: bytes) -> None:
        if not self.peer.dead:
            super().dataReceived(data)

    def connectionLost(self, reason: Any) -> None:
        if not self.peer.dead:
            super().connectionLost(reason)


class SilentProxyClientFactory(portforward.ProxyClientFactory):
    protocol = SilentProxyClient


SilentProxyServer.clientProtocolFactory = SilentProxyClientFactory


class SilentProxy(portforward.ProxyFactory):
    """A TCP proxy on a loopback port (``address``) to the local port ``port``: `silence` cuts
    off every connection open, or opened before `forward`; those opened after pass again."""

    protocol = SilentProxyServer

    def __init__(self, port: int) -> None:
        super().__init__("127.0.0.1", port)
        self.forwarding = True
        self.open: list[SilentProxyServer] = []
        self.listening = reactor.listenTCP(0, self, interface="127.0.0.1")
        self.address = self.listening.getHost().port

    def silence(self) -> None:
        self.forwarding = False
        for connection in self.open:
            connection.dead = True

    def forward(self) -> None:
        self.forwarding = True

    def close(self) -> Deferred[None]:
        for connection in list(self.open):
            connection.transport.abortConnection()
            if connection.peer is not None:
                connection.peer.transport.abortConnection()
        return self.listening.stopListening()


class WatchingProxy(portforward.ProxyFactory):
    """A TCP proxy on a loopback port (``address``) to the local port ``port`` that tells when a
    client sends PING (`pinged`), can hold back what Redis sends (`hold`, `release`), and can
    send Redis a command of its own on every connection (`inject`)."""

    def __init__(self, port: int) -> None:
        super().__init__("127.0.0.1", port)
        self.open: list[WatchedServer] = []
        self.pings: list[Deferred[None]] = []
        self.held: list[tuple[WatchedServer, bytes]] | None = None
        self.listening = reactor.listenTCP(0, self, interface="127.0.0.1")
        self.address = self.listening.getHost().port

    def pinged(self) -> Deferred[None]:
        """Fires when a client next sends PING."""
        d: Deferred[None] = Deferred()
        self.pings.append(d)
        return d

    def hold(self) -> None:
        self.held = []

    def release(self) -> None:
        held, self.held = self.held or [], None
        for connection, data in held:
            connection.transport.write(data)

    def inject(self, command: bytes) -> None:
        """Send ``command`` to Redis on every connection that has subscribed."""
        for connection in self.open:
            if connection.subscriber:
                connection.peer.transport.write(command)

    def close(self) -> Deferred[None]:
        for connection in list(self.open):
            connection.transport.abortConnection()
        return self.listening.stopListening()


class WatchedServer(portforward.ProxyServer):
    """The client side of one connection through `WatchingProxy`."""

    factory: WatchingProxy
    subscriber = False

    def connectionMade(self) -> None:
        self.factory.open.append(self)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.subscriber = self.subscriber or b"SUBSCRIBE" in data
        if b"PING" in data:
            pings, self.factory.pings = self.factory.pings, []
            for d in pings:
                d.callback(None)

    def connectionLost(self, reason: Any) -> None:
        self.factory.open.remove(self)
        super().connectionLost(reason)


class WatchedClient(portforward.ProxyClient):
    """The Redis side of a `WatchedServer`."""

    def dataReceived(self, data: bytes) -> None:
        held = self.peer.factory.held
        if held is not None:
            held.append((self.peer, data))
        else:
            super().dataReceived(data)


class WatchedClientFactory(portforward.ProxyClientFactory):
    protocol = WatchedClient


WatchedServer.clientProtocolFactory = WatchedClientFactory
WatchingProxy.protocol = WatchedServer


def slow_script(server: RedisServer, seconds: float) -> subprocess.Popen[bytes]:
    """A Lua script keeping ``server`` busy for ``seconds`` (redis-cli, in the background)."""
    script = (
        "local function now() local t = redis.call('TIME') return tonumber(t[1]) + tonumber(t[2]) / 1e6 end "
        f"local stop = now() + {seconds} while now() < stop do end"
    )
    return subprocess.Popen(
        [shutil.which("redis-cli") or "redis-cli", "-p", str(server.port), "EVAL", script, "0"],
        stdout=subprocess.DEVNULL,
    )


class BusLivenessTests(TestCase):
    """A bus that hears nothing for `ClusterBus.quiet` seconds sends PING, and drops its
    subscriber when nothing comes within --redis-timeout; made again, it listens again. (It
    used to wait for good: `connected` stayed True and the bus heard nothing more from the
    other instances until mcpd restarted.)"""

    timeout = 90
    QUIET, TIMEOUT = 0.5, 1.0

    def setUp(self) -> None:
        self.warned: list[str] = []
        self.listening: list[str] = []
        self.refused: list[str] = []
        self.retries: list[str] = []

        def observe(event: Any) -> None:
            text = formatEvent(event) or ""
            if text.startswith("Scheduling retry"):  # txredisapi's (Twisted's ClientService) reconnecting
                self.retries.append(text)
            if event.get("log_namespace") != "mcpd.cluster":
                return
            if "refused the cluster bus' SUBSCRIBE" in text:
                self.refused.append(text)
            if event["log_level"] >= LogLevel.warn:
                self.warned.append(text)
            elif text.startswith("Cluster bus listening"):
                self.listening.append(text)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    @inlineCallbacks
    def bus_on(
        self, url: str, password: str | None = None, timeout: float | None = None, ca_file: str | None = None
    ) -> Any:
        """A started bus (PING after `QUIET` s, --redis-timeout ``timeout`` or `TIMEOUT` s) on
        ``url``."""
        config = redis_config(
            url, password=password, ca_file=ca_file, prefix=unique_prefix(), timeout=timeout or self.TIMEOUT
        )
        connection = RedisConnection(config, reactor)
        connection.startService()
        self.addCleanup(lambda: connection.stopService() if connection.running else None)
        bus = ClusterBus(connection, clock=reactor)
        bus.quiet = self.QUIET
        self.heard: list[dict[str, Any]] = []
        bus.on("probe", self.heard.append)
        yield bus.start(10.0)
        self.addCleanup(bus.stop)
        return bus

    @inlineCallbacks
    def hears(self, bus: ClusterBus, server: RedisServer, n: int) -> Any:
        """A PUBLISH to every instance by another client (redis-cli) reaches the bus."""
        message = json.dumps({"kind": "probe", "from": "elsewhere", "to": "all", "n": n})
        server.cli("PUBLISH", bus.key("all"), message)
        yield wait_for(lambda: any(m.get("n") == n for m in self.heard))

    @inlineCallbacks
    def outage(self, bus: ClusterBus, *, begin: Callable[[], Any], end: Callable[[], Any]) -> Any:
        """``begin`` an outage: the bus stops listening within --redis-timeout + 2 x quiet (and
        a margin for a loaded machine), and stays so through several attempts; ``end`` it: the
        bus listens again, having said so once, and the outage once."""
        begin()
        started = time.monotonic()
        yield wait_for(lambda: not bus.connected, timeout=self.TIMEOUT + 2 * self.QUIET + 4.0)
        self.assertGreaterEqual(time.monotonic() - started, self.TIMEOUT * 0.9)  # PING unanswered so long
        yield sleep(3 * (self.QUIET + self.TIMEOUT))  # attempts to listen again, unanswered
        self.assertFalse(bus.connected)
        end()
        yield wait_for(lambda: bus.connected, timeout=20)
        self.assertEqual(len(self.warned), 1, self.warned)
        self.assertIn("did not answer the cluster bus' PING within 1s (--redis-timeout)", self.warned[0])
        self.assertEqual(len(self.listening), 2, self.listening)  # at the start, and once back
        # Each attempt a fresh connection after the bus' back-off, not txredisapi's reconnecting
        # (an info line each time).
        self.assertEqual(self.retries, [])

    @inlineCallbacks
    def test_a_stalled_redis(self) -> Any:
        """Redis stopped (SIGSTOP): the kernel still accepts connections, nothing answers."""
        server = RedisServer(self.mktemp()).start()
        self.addCleanup(server.destroy)
        bus = yield self.bus_on(server.url)
        yield self.hears(bus, server, 0)
        self.addCleanup(server.thaw)
        yield self.outage(bus, begin=server.freeze, end=server.thaw)
        yield self.hears(bus, server, 1)

    @inlineCallbacks
    def test_a_connection_dead_without_a_word(self) -> Any:
        """The path to Redis gone without a reset (a proxy that stops forwarding), Redis itself
        well: the logins of the attempts meanwhile go unanswered too. Once the proxy forwards
        again, the bus listens through it."""
        server = RedisServer(self.mktemp(), password=PASSWORD).start()
        self.addCleanup(server.destroy)
        proxy = SilentProxy(server.port)
        self.addCleanup(proxy.close)
        bus = yield self.bus_on(f"redis://127.0.0.1:{proxy.address}/0", password=PASSWORD)
        yield self.hears(bus, server, 0)
        yield self.outage(bus, begin=proxy.silence, end=proxy.forward)
        yield self.hears(bus, server, 1)

    @inlineCallbacks
    def test_a_busy_redis(self) -> Any:
        """Redis busy with a slow script answers PING with an error (BUSY): it is there, so the
        bus stays; and that answer, which nobody waits for, is not taken for the answer to the
        bus's next command (a SUBSCRIBE)."""
        server = RedisServer(self.mktemp()).start()
        self.addCleanup(server.destroy)
        server.cli("CONFIG", "SET", "busy-reply-threshold", "100")
        bus = yield self.bus_on(server.url)
        yield self.hears(bus, server, 0)
        script = "local t = redis.call('TIME')[1] + 5 while tonumber(redis.call('TIME')[1]) < t do end"
        slow = subprocess.Popen([shutil.which("redis-cli") or "redis-cli", "-p", str(server.port), "EVAL", script, "0"])
        self.addCleanup(slow.wait)
        yield sleep(2.5)
        self.assertIsNone(slow.poll())  # still running, the bus answered BUSY meanwhile
        self.assertTrue(bus.connected)
        yield wait_for(lambda: slow.poll() is not None, timeout=10)
        heard: list[Any] = []
        yield bus.listen(bus.key("after"), heard.append).addTimeout(5, reactor)
        server.cli("PUBLISH", bus.key("after"), '{"n": 1}')
        yield wait_for(lambda: heard == [{"n": 1}])
        self.assertEqual(self.warned, [])

    @inlineCallbacks
    def test_tls_and_tcp_keepalive(self) -> Any:
        """Over TLS (rediss://) too, the subscriber's socket has TCP keepalive on (a backstop
        to the PING), and the bus hears what is published."""
        server = RedisServer(self.mktemp(), tls=True).start()
        self.addCleanup(server.destroy)
        bus = yield self.bus_on(server.url, ca_file=str(server.tls_files.ca))
        yield self.hears(bus, server, 0)
        sock = bus._subscriber.transport.transport.getHandle()  # under TLS, the TCP connection
        self.assertTrue(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

    @inlineCallbacks
    def test_a_subscribe_refused_while_redis_is_busy(self) -> Any:
        """A script running past --redis-timeout + `QUIET`: the PING goes unanswered, the bus
        drops its connection, and the SUBSCRIBE of the next one is refused (BUSY) once Redis
        answers again. No subscription: the bus does not listen, a `listen` fails with
        `ClusterUnavailable`, and once the script is over the bus subscribes again. (A refused
        SUBSCRIBE was taken as confirmed, for good, and a `listen` meanwhile never fired.)"""
        server = RedisServer(self.mktemp()).start()
        self.addCleanup(server.destroy)
        server.cli("CONFIG", "SET", "busy-reply-threshold", "4000")  # ms: BUSY answers after 4 s
        bus = yield self.bus_on(server.url)
        yield self.hears(bus, server, 0)
        slow = slow_script(server, 8.0)
        self.addCleanup(slow.wait)
        started = time.monotonic()
        yield wait_for(lambda: not bus.connected, timeout=5)  # the PING unanswered
        yield sleep(5.5 - (time.monotonic() - started))  # Redis answers BUSY meanwhile
        self.assertIsNone(slow.poll())
        self.assertFalse(bus.connected)
        failure = yield self.assertFailure(
            bus.listen(bus.key("during"), lambda _m: None).addTimeout(2.4, reactor), ClusterUnavailable
        )
        self.assertIn("refused the cluster bus' SUBSCRIBE (BUSY", str(failure))
        self.assertIsNone(slow.poll())
        bus.unlisten(bus.key("during"))
        yield wait_for(lambda: slow.poll() is not None, timeout=10)
        yield wait_for(lambda: bus.connected, timeout=10)
        yield self.hears(bus, server, 1)
        self.assertEqual(len(self.warned), 1, self.warned)  # the PING's, not each refusal
        self.assertIn("did not answer the cluster bus' PING", self.warned[0])
        # Each refusal's connection followed by a fresh one after a growing back-off (0.2 s,
        # 0.5 s, 1.5 s, then 2 s), not at once: 4 s of BUSY, not 20 connections refused.
        self.assertLessEqual(len(self.refused), 6, self.refused)

    @inlineCallbacks
    def test_a_reactor_held_up_past_the_pings_deadline(self) -> Any:
        """The reactor held up (a long turn elsewhere in mcpd) from before Redis answered the PING
        until past its deadline: timers run before reads, so the answer, and a message, are in
        the socket unread when the deadline comes. The bus reads them before judging: it stays,
        and hears the message. (It dropped the connection and the message.)"""
        server = RedisServer(self.mktemp()).start()
        self.addCleanup(server.destroy)
        bus = yield self.bus_on(server.url, timeout=2.0)
        bus.quiet = 0.2
        yield self.hears(bus, server, 0)
        server.freeze()
        self.addCleanup(server.thaw)
        yield sleep(0.8)  # PING sent within 2 x quiet, unanswered; its deadline 2 s after it
        # The reactor held up, in a turn that is no timer's (a thread's result, like a store's),
        # from before Redis answers until past the deadline: the timers due run next, before
        # anything is read.
        yield deferToThread(lambda: None)
        server.thaw()
        message = json.dumps({"kind": "probe", "from": "elsewhere", "to": "all", "n": 1})
        self.assertEqual(server.cli("PUBLISH", bus.key("all"), message), "1")
        time.sleep(2.5)
        yield wait_for(lambda: any(m.get("n") == 1 for m in self.heard), timeout=5)
        yield sleep(3 * self.QUIET)
        self.assertTrue(bus.connected)
        self.assertEqual(self.warned, [], self.warned)
        self.assertEqual(len(self.listening), 1, self.listening)  # never subscribed anew

    @inlineCallbacks
    def test_an_unlisten_while_redis_stalls_briefly(self) -> Any:
        """Redis stalled for less than the PING allows, right after a `unlisten`: the bus stays.
        (The UNSUBSCRIBE had a reply timeout of its own, --redis-timeout, and dropped the
        connection when it passed.)"""
        server = RedisServer(self.mktemp()).start()
        self.addCleanup(server.destroy)
        bus = yield self.bus_on(server.url)
        yield bus.listen(bus.key("left"), lambda _m: None)
        yield self.hears(bus, server, 0)
        server.freeze()
        self.addCleanup(server.thaw)
        bus.unlisten(bus.key("left"))
        # Heard just now: PING after quiet at the earliest, unanswered for --redis-timeout after it.
        yield sleep(self.TIMEOUT + self.QUIET / 2)
        server.thaw()
        yield sleep(2 * self.QUIET + self.TIMEOUT)
        yield self.hears(bus, server, 1)
        self.assertTrue(bus.connected)
        self.assertEqual(self.warned, [], self.warned)
        self.assertEqual(len(self.listening), 1, self.listening)

    @inlineCallbacks
    def test_an_unlisten_in_an_outage_says_nothing(self) -> Any:
        """Channels listened to and left while Redis is stalled: no log line for them, only the
        outage's. (The UNSUBSCRIBE's reply timeout failed the SUBSCRIBE waiting on the same
        connection, which the bus took as confirmed: "listening", then "lost", each time.)"""
        server = RedisServer(self.mktemp()).start()
        self.addCleanup(server.destroy)
        bus = yield self.bus_on(server.url)
        yield self.hears(bus, server, 0)
        server.freeze()
        self.addCleanup(server.thaw)
        yield wait_for(lambda: not bus.connected, timeout=self.TIMEOUT + 2 * self.QUIET + 4.0)
        for n in range(3):
            channel = bus.key("left", str(n))
            listened = bus.listen(channel, lambda _m: None)
            yield sleep(0.2)
            bus.unlisten(channel)
            yield listened  # nobody listens any more: nothing to wait for
            yield sleep(self.TIMEOUT + 0.5)
        server.thaw()
        yield wait_for(lambda: bus.connected, timeout=20)
        yield self.hears(bus, server, 1)
        self.assertEqual(len(self.warned), 1, self.warned)
        self.assertIn("did not answer the cluster bus' PING", self.warned[0])

    @inlineCallbacks
    def test_a_pings_error_answer_is_not_the_next_commands(self) -> Any:
        """Redis busy answers the bus's PING with BUSY; the bus sends SUBSCRIBE (a `listen`)
        before it has read that answer, and Redis, done with the script, subscribes it. The
        error is the PING's, the SUBSCRIBE's answer its own: the `listen` fires. (The error went
        to the SUBSCRIBE, whose own answer then went to nobody.)"""
        server = RedisServer(self.mktemp()).start()
        self.addCleanup(server.destroy)
        server.cli("CONFIG", "SET", "busy-reply-threshold", "100")
        proxy = WatchingProxy(server.port)
        self.addCleanup(proxy.close)
        bus = yield self.bus_on(f"redis://127.0.0.1:{proxy.address}/0", timeout=5.0)
        yield self.hears(bus, server, 0)
        slow = slow_script(server, 1.5)
        self.addCleanup(slow.wait)
        yield sleep(0.3)
        proxy.hold()  # what Redis sends from now on, the answer to PING (BUSY) first
        yield proxy.pinged().addTimeout(3, reactor)
        yield wait_for(lambda: slow.poll() is not None, timeout=5)
        heard: list[Any] = []
        listened = bus.listen(bus.key("after"), heard.append)
        yield sleep(0.3)  # Redis has subscribed the bus; the answer is held
        proxy.release()
        yield listened.addTimeout(3, reactor)
        server.cli("PUBLISH", bus.key("after"), '{"n": 1}')
        yield wait_for(lambda: heard == [{"n": 1}])
        self.assertTrue(bus.connected)
        self.assertEqual(self.warned, [])

    @inlineCallbacks
    def test_a_subscriber_unsubscribed_behind_its_back(self) -> Any:
        """A subscriber connection on which Redis no longer subscribes to anything answers PING
        with a plain PONG: the bus takes its subscriptions as lost and subscribes anew. (It took
        the PONG for an answer, and heard nothing more.)"""
        server = RedisServer(self.mktemp()).start()
        self.addCleanup(server.destroy)
        proxy = WatchingProxy(server.port)
        self.addCleanup(proxy.close)
        bus = yield self.bus_on(f"redis://127.0.0.1:{proxy.address}/0")
        yield self.hears(bus, server, 0)
        proxy.inject(b"UNSUBSCRIBE\r\n")
        yield wait_for(lambda: not bus.connected, timeout=2 * self.QUIET + 4.0)
        yield wait_for(lambda: bus.connected, timeout=10)
        yield self.hears(bus, server, 1)
        self.assertEqual(len(self.warned), 1, self.warned)
        self.assertIn("as if it subscribed to nothing", self.warned[0])


class BusHealthTests(DaemonTestMixin, TestCase):
    """A real daemon's /health has a required ``cluster_bus`` check: down while the bus does
    not listen (Redis stalled: SIGSTOP), ok again once it does, without a restart."""

    timeout = 120

    def test_health_says_the_bus_is_deaf_while_redis_stalls(self) -> None:
        redis = RedisServer(self.workdir / "redis").start()
        self.addCleanup(redis.destroy)
        args = ["--redis-url", redis.url, "--redis-timeout", "1", "--toolsets", "server"]
        daemon = start_daemon(self.workdir, args, timeout=60.0)
        self.addCleanup(daemon.stop)
        port = daemon.port
        assert port is not None

        def bus() -> Any:
            return _get_json(port, "/health")[1]["checks"]["cluster_bus"]

        status, health = _get_json(port, "/health")
        self.assertEqual((status, health["checks"]["cluster_bus"]["status"]), (200, "ok"), health)
        self.assertIn("redis", {store["name"] for store in call_server_info(port)["stores"]})
        _until(lambda: redis.cli("SCARD", "mcpd:instances") == "1")  # the cluster has started
        redis.freeze()
        self.addCleanup(redis.thaw)
        started = time.monotonic()
        _until(lambda: bus()["status"] == "down", timeout=20)
        self.assertLess(time.monotonic() - started, 2 * QUIET + 1 + 5)  # PING after QUIET, 1 s for its answer
        status, health = _get_json(port, "/health")
        self.assertEqual((status, health["status"]), (503, "unhealthy"))
        self.assertIn("did not answer the cluster bus' PING within 1s", health["checks"]["cluster_bus"]["detail"])
        self.assertIn("does not hear the others", health["checks"]["cluster_bus"]["detail"])
        time.sleep(2 * (QUIET + 1))  # attempts to listen again meanwhile, unanswered
        redis.thaw()
        _until(lambda: _get_json(port, "/health")[0] == 200, timeout=20)
        self.assertEqual(bus()["status"], "ok")
        # Said once, not at every attempt (those at debug level; txredisapi's own line for each
        # unanswered login too).
        logged = daemon.log("stdout") + daemon.log()
        self.assertEqual(logged.count("#warn] Redis at redis://127.0.0.1:"), 1, logged)
        self.assertEqual(logged.count("did not answer the cluster bus' PING"), logged.count("#debug] Redis at") + 1)
        # The pool, once too (a call before its first connection says "cannot connect" besides).
        self.assertEqual(logged.count("is unavailable: Redis at "), 1, logged)
        self.assertNotIn("Redis error: could not", logged)


class SessionIndexTests(RedisPartsCase):
    @inlineCallbacks
    def test_saves_and_touches_prune_expired_members_of_the_index(self) -> Any:
        """The index of live sessions (a sorted set without a TTL) loses the records that
        expired whenever a record is saved or touched, not only when counted."""
        records = RedisSessionStore(self.connection, reactor, 0.2)
        index = self.connection.key("sessions", "streamable")
        for n in range(3):
            self.assertTrue((yield records.save(SessionRecord(session_id=f"gone-{n}", **RECORD))))
        self.assertEqual((yield self.connection.execute("ZCARD", index)), 3)
        yield sleep(0.4)
        yield records.save(SessionRecord(session_id="live", **RECORD))
        self.assertEqual((yield self.connection.execute("ZRANGE", index, 0, -1)), [records._prefix + "live"])
        yield self.connection.execute("ZADD", index, 1, "long-gone")
        yield records.touch("live")
        self.assertEqual((yield self.connection.execute("ZCARD", index)), 1)

    @inlineCallbacks
    def test_a_record_follows_at_most_the_share_of_uris(self) -> Any:
        """`update`'s ``cap`` bounds the URIs a record follows, whatever instance subscribes."""
        records = RedisSessionStore(self.connection, reactor, 60.0)
        yield records.save(SessionRecord(session_id="capped", subscriptions=["memo://0"], **RECORD))
        self.assertTrue((yield records.update("capped", subscribe="memo://1", cap=2)))
        self.assertTrue((yield records.update("capped", subscribe="memo://1", cap=2)))  # again: no new URI
        yield self.assertFailure(records.update("capped", subscribe="memo://2", tenant="t", cap=2), StoreFull)
        record = yield records.load("capped")
        self.assertEqual((record.subscriptions, record.subscriptions_tenant), (["memo://0", "memo://1"], None))
        self.assertTrue((yield records.update("capped", unsubscribe="memo://0", cap=2)))
        self.assertTrue((yield records.update("capped", subscribe="memo://2", cap=2)))
        self.assertEqual((yield records.load("capped")).subscriptions, ["memo://1", "memo://2"])

    @inlineCallbacks
    def test_an_adopted_session_holds_its_subscriptions_in_the_ledger(self) -> Any:
        """Adopting a session counts the URIs its record follows against the account's share
        here, and ending this instance's part gives them back."""
        cluster = self.cluster()
        ledger = cluster.sessions.ledger
        record = SessionRecord(
            session_id="adopted-subs", account="key:alice", subscriptions=["a://1", "a://2"], **RECORD
        )
        yield cluster.sessions.records.save(record)
        session = yield cluster.sessions.adopt(record.session_id, lambda r: HTTPSession(r.session_id), "alice")
        self.assertEqual(sorted(session.subscriptions), ["a://1", "a://2"])
        self.assertEqual(ledger.held("key:alice", SUBSCRIPTION), 2)
        cluster.sessions.retire(record.session_id)
        self.assertEqual(ledger.held("key:alice", SUBSCRIPTION), 0)


CLUSTER_KEY = "cluster-parts-key-0123456789abcdef"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {"elicitation": {}},
        "clientInfo": {"name": "parts", "version": "1"},
    },
}


def drain(sock: socket.socket) -> bytes:
    """What arrives on ``sock`` until it closes or is quiet for its timeout."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        pass
    return received


class TwoDaemonsTests(DaemonTestMixin, TestCase):
    """Two real daemons sharing a real ``redis-server``, their requests sent to either."""

    timeout = 120

    def setUp(self) -> None:
        redis = RedisServer(self.workdir / "redis").start()
        self.addCleanup(redis.destroy)
        keys = self.workdir / "keys.txt"
        keys.write_text(f"alice:{CLUSTER_KEY}\n", encoding="utf-8")
        args = ["--tool-pack", "tests.cluster_pack", "--redis-url", redis.url, "--api-key-file", str(keys)]
        args += ["--state-key", "cluster-parts-state-key-0123456789abcdef", "--share-per-key", "1"]
        args += ["--rate-limit", "100000"]
        self.ports: list[int] = []
        self.daemons = []
        for name in ("a", "b"):
            daemon = start_daemon(self.workdir, args, name=name, timeout=60.0)
            self.addCleanup(daemon.stop)
            assert daemon.port is not None
            self.ports.append(daemon.port)
            self.daemons.append(daemon)
        status, self.session_id, _ = self.post(self.ports[0], INITIALIZE)
        self.assertEqual(status, 200)
        self.post(self.ports[0], {"jsonrpc": "2.0", "method": "notifications/initialized"})
        self.post(self.ports[1], {"jsonrpc": "2.0", "id": 2, "method": "ping"})  # B's trace has an answer

    def post(self, port: int, body: dict[str, Any]) -> tuple[int, str, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        headers["authorization"] = f"Bearer {CLUSTER_KEY}"
        if getattr(self, "session_id", None):
            headers["mcp-session-id"] = self.session_id
        connection.request("POST", "/mcp", json.dumps(body), headers)
        try:
            response = connection.getresponse()
            return response.status, response.getheader("mcp-session-id") or "", response.read()
        finally:
            connection.close()  # one connection at a time: the key's share of connections is small

    def request(self, port: int, method: str, headers: str = "", body: bytes = b"") -> socket.socket:
        """A request of the session on a raw socket (its stream stays open)."""
        sock = socket.create_connection(("127.0.0.1", port))
        sock.settimeout(1.5)
        self.addCleanup(sock.close)
        head = f"{method} /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json, text/event-stream\r\n"
        head += f"Authorization: Bearer {CLUSTER_KEY}\r\nMcp-Session-Id: {self.session_id}\r\n{headers}\r\n"
        sock.sendall(head.encode() + body)
        return sock

    def get(self, port: int, last_event_id: str | None = None) -> socket.socket:
        return self.request(port, "GET", "" if last_event_id is None else f"Last-Event-ID: {last_event_id}\r\n")

    def test_a_get_is_not_refused_for_a_post_stream_resumed_on_its_instance(self) -> None:
        """A POST's stream resumed (from the journal) on B is no GET stream: a GET on B opens
        (and is then the session's one GET stream, refused on A)."""
        a, b = self.ports
        ask = {"jsonrpc": "2.0", "id": 7, "method": "tools/call"}
        ask["params"] = {"name": "cluster.ask", "arguments": {"question": "q"}}
        body = json.dumps(ask).encode()
        sock = self.request(a, "POST", f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n", body)
        ids = re.findall(rb"id: (\S+)", drain(sock))  # its stream: the elicitation, then it waits
        self.assertTrue(ids)
        sock.close()
        self.assertTrue(drain(self.get(b, ids[0].decode())).startswith(b"HTTP/1.1 200"))
        self.assertTrue(drain(self.get(b)).startswith(b"HTTP/1.1 200"))
        self.assertTrue(drain(self.get(a)).startswith(b"HTTP/1.1 409"))

    def test_a_fresh_get_takes_the_stream_of_a_killed_holder_at_once(self) -> None:
        """The instance holding the session's GET stream is killed (``kill -9``): a fresh GET
        (no Last-Event-ID) on the other one opens at once, not 409 until the killed one's
        registry entry has expired."""
        a, b = self.ports
        held = self.get(a)
        self.assertTrue(held.recv(65536).startswith(b"HTTP/1.1 200"))
        self.assertTrue(drain(self.get(b)).startswith(b"HTTP/1.1 409"))
        self.daemons[0].process.kill()
        self.daemons[0].process.wait(10)
        self.assertTrue(drain(self.get(b)).startswith(b"HTTP/1.1 200"))

    def test_a_post_stream_resumed_after_its_instance_was_killed_ends_at_once(self) -> None:
        """A's POST stream (a tool waiting for the client's answer) resumed on B after A was
        killed (``kill -9``): B replays it and ends it at once (nothing more will come), not
        holds it open while A's registry entry lives."""
        a, b = self.ports
        ask = {"jsonrpc": "2.0", "id": 7, "method": "tools/call"}
        ask["params"] = {"name": "cluster.ask", "arguments": {"question": "q"}}
        body = json.dumps(ask).encode()
        sock = self.request(a, "POST", f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n", body)
        ids = re.findall(rb"id: (\S+)", drain(sock))
        self.assertTrue(ids)
        sock.close()
        self.daemons[0].process.kill()
        self.daemons[0].process.wait(10)
        resumed = drain(self.get(b, ids[0].decode()))
        self.assertTrue(resumed.startswith(b"HTTP/1.1 200"), resumed)
        self.assertIn(b"elicitation/create", resumed)
        self.assertTrue(resumed.endswith(b"\r\n0\r\n\r\n"), resumed)  # the stream's end

    def test_a_cancel_right_after_the_runner_was_killed_is_answered(self) -> None:
        """A legacy task running on A, polled through B; A killed (``kill -9``); a cancel
        through B at once is answered (the task cancelled, or failed as its runner stopped),
        never "try again" while A's registry entry lives."""
        a, b = self.ports
        call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call"}
        call["params"] = {"name": "cluster.wait", "arguments": {"label": "killed"}, "task": {"ttl": 600_000}}
        _, _, made = self.post(a, call)
        task_id = json.loads(made)["result"]["task"]["taskId"]
        _, _, polled = self.post(b, {"jsonrpc": "2.0", "id": 4, "method": "tasks/get", "params": {"taskId": task_id}})
        self.assertEqual(json.loads(polled)["result"]["status"], "working", polled)
        self.daemons[0].process.kill()
        self.daemons[0].process.wait(10)
        cancel = {"jsonrpc": "2.0", "id": 5, "method": "tasks/cancel", "params": {"taskId": task_id}}
        answer = json.loads(self.post(b, cancel)[2])
        if "error" in answer:  # not within SEEN_ALIVE of the poll: found failed first
            self.assertIn("is already failed", answer["error"]["message"], answer)
        else:
            self.assertEqual(answer["result"]["status"], "cancelled", answer)
        _, _, polled = self.post(b, {"jsonrpc": "2.0", "id": 6, "method": "tasks/get", "params": {"taskId": task_id}})
        self.assertIn(json.loads(polled)["result"]["status"], ("cancelled", "failed"), polled)

    def test_subscriptions_through_both_instances_stop_at_the_share(self) -> None:
        """The session's record follows at most its account's share of URIs, subscribed
        through whichever instance: every subscribe past it is refused, and Redis keeps no more."""
        accepted, refused = 0, []
        for n in range(300):
            subscribe = {"jsonrpc": "2.0", "id": n, "method": "resources/subscribe"}
            subscribe["params"] = {"uri": f"memo://x/{n}"}
            _, _, body = self.post(self.ports[n % 2], subscribe)
            answer = json.loads(body)
            if "error" in answer:
                refused.append(answer["error"])
            else:
                accepted += 1
        self.assertTrue(refused)
        self.assertEqual(accepted, refused[0]["data"]["max"], refused[0])
        self.assertIn("Too many subscriptions", refused[-1]["message"])


class RecordKeepingTests(RedisPartsCase):
    """The sweep's keeping of session records, for both legacy transports alike."""

    @inlineCallbacks
    def test_an_sse_session_ended_elsewhere_ends_here(self) -> Any:
        """An HTTP+SSE session whose record was deleted (its tombstone left) is not saved again
        by the sweep and ends here as a Streamable HTTP one does: its stream closes, its place
        is given back and its channel is left."""
        records = RedisSessionStore(self.connection, reactor, 60.0, kind="sse")
        sessions = SessionStore(reactor, 60.0, records=records)
        forwarding = sessions.cluster = SSEForwarding(self.bus, sessions)
        stream = DummyRequest([b"sse"])
        stream._disconnected = False
        session = SSESession(stream, Caller("alice"))
        session.version = "2025-11-25"
        sessions.open(session, "key:alice")
        sessions.add(session)
        yield self.record_appears(records, session.id)
        yield self.subscribers_become(forwarding.channel(session.id), 1)
        other = RedisSessionStore(self.connection, reactor, 60.0, kind="sse")
        self.assertTrue((yield other.delete(session.id)))

        forwarding.refresh([session])
        yield wait_for(lambda: session.closed, timeout=5.0)
        self.assertNotIn(session.id, sessions)
        self.assertEqual(stream.finished, 1)
        self.assertEqual(sessions.ledger.held("key:alice", SESSION), 0)
        self.assertIsNone((yield records.load(session.id)))
        yield self.subscribers_become(forwarding.channel(session.id), 0)

    @inlineCallbacks
    def test_a_sweep_keeps_many_sessions_in_a_few_scripts(self) -> Any:
        """A sweep over 600 sessions touches their records and renews their GET streams in a
        handful of scripts, not a command (or four) per session, and each record and stream
        is kept as by one touch each."""
        cluster = self.cluster(session_timeout=5.0)
        live = []
        for n in range(600):
            session = HTTPSession(f"swept-{n}")
            session.version = "2025-11-25"
            cluster.sessions.add(session)
            live.append(session)
        yield cluster.journal.append(live[-1].id, STANDALONE, b'{"n":1}')
        while (yield cluster.sessions.records.count()) < len(live):
            yield sleep(0.05)
        # One record lost: saved again in the same sweep.
        yield self.connection.execute("DEL", self.connection.key("session", "streamable", live[7].id))
        stream = cluster.journal.stream(live[-1].id, STANDALONE)
        yield self.connection.execute("PEXPIRE", stream, 1000)

        before = yield self.command_counts()
        cluster.refresh(live)
        yield self.record_appears(cluster.sessions.records, live[7].id)
        deadline = reactor.seconds() + 10.0
        while (yield self.connection.execute("PTTL", stream)) < 4000:
            self.assertLess(reactor.seconds(), deadline, "the GET stream was not kept")
            yield sleep(0.02)
        after = yield self.command_counts()
        sent = {name: after.get(name, 0) - before.get(name, 0) for name in after}
        # 2 batches of touches, 3 of streams, the lost record's save (the commands the
        # scripts run are counted too: not a measure of what was sent).
        self.assertLessEqual(sent.get("evalsha", 0) + sent.get("eval", 0), 6, sent)
        self.assertGreater((yield self.connection.execute("PTTL", stream + ":n")), 4000)

    @inlineCallbacks
    def command_counts(self) -> Any:
        """How many times Redis ran each command (INFO commandstats)."""
        info = yield self.connection.execute("INFO", "commandstats")
        return {name: int(calls) for name, calls in re.findall(r"cmdstat_([a-z|]+):calls=(\d+)", info)}


class SessionRestoreTests(RedisPartsCase):
    """`SessionStore.adopt` makes the session `Session.record` recorded, field by field
    (`Session.restore` takes all but what the ledger holds, which adopt claims), so adoption
    cannot miss one the record carries."""

    @inlineCallbacks
    def test_an_adopted_session_is_the_one_recorded(self) -> Any:
        import attrs

        a, b = self.cluster(), self.cluster()
        original = HTTPSession("restored")
        original.version, original.owner = "2025-11-25", "alice"
        original.client_info = {"name": "c", "version": "1"}
        original.client_capabilities = {"elicitation": {}}
        original.log_level = "debug"
        original.subscriptions = {"memo://a": None, "memo://b": None}
        original.subscriptions_tenant = "acme"
        a.sessions.open(original, "key:alice")
        a.sessions.add(original)
        yield self.record_appears(a.sessions.records, original.id)
        record = yield a.sessions.records.load(original.id)
        self.assertEqual(record, original.record())
        # Every field of the record is set to something other than its default.
        defaults = SessionRecord("restored")
        for field in attrs.fields(SessionRecord):
            if field.name != "session_id":
                self.assertNotEqual(getattr(record, field.name), getattr(defaults, field.name), field.name)
        copy = yield b.sessions.adopt(original.id, lambda record: HTTPSession(record.session_id), "alice")
        self.assertEqual(copy.record(), record)
        self.assertTrue(copy.initialized)
        # Counted against the account's share on this instance too.
        self.assertEqual(sorted(copy.subscriptions), ["memo://a", "memo://b"])
        self.assertNotIn(None, copy.subscriptions.values())
        self.assertEqual(b.sessions.ledger.held("key:alice", SUBSCRIPTION), 2)
        self.assertEqual(b.sessions.ledger.held("key:alice", SESSION), 1)
        b.sessions.retire(original.id)
        a.sessions.retire(original.id)
        self.assertEqual(b.sessions.ledger.held("key:alice", SUBSCRIPTION), 0)


class UnsavedBatchTests(RedisPartsCase):
    """Held task records go back to a store that answers again `UnsavedRecords.BATCH` at a
    time, oldest first, each batch once the one before was answered."""

    @inlineCallbacks
    def test_held_records_are_saved_in_ordered_batches(self) -> Any:
        sent: list[str] = []
        in_flight = [0, 0]  # now, most

        class CountingStore(RedisTaskStore):
            def save(self, record: TaskRecord) -> Any:
                sent.append(record.task_id)
                in_flight[0] += 1
                in_flight[1] = max(in_flight)

                def answered(result: Any) -> Any:
                    in_flight[0] -= 1
                    return result

                return super().save(record).addBoth(answered)

        store = CountingStore(self.connection)
        unsaved = UnsavedRecords(store, reactor)
        self.addCleanup(unsaved.stop)
        held = 2 * UnsavedRecords.BATCH + 30
        records = []
        for n in range(held):
            record = TaskRecord(f"t-{n:04d}", "session:s1", False, reactor.seconds(), 60_000, 500)
            yield store.add(record, reactor.seconds())
            records.append(record)
        for record in records:  # held while Redis was away; a later status of one goes last
            unsaved.failed(Failure(StoreUnavailable("redis", "down")), record)
        records[5].status = COMPLETED
        unsaved.failed(Failure(StoreUnavailable("redis", "down")), records[5])
        yield wait_for(lambda: len(unsaved) == 0, timeout=20.0)
        self.assertLessEqual(in_flight[1], UnsavedRecords.BATCH)
        self.assertEqual(sent, [r.task_id for r in records if r is not records[5]] + [records[5].task_id])
        self.assertEqual((unsaved.recovered, unsaved.retried), (held, held))
        self.assertEqual((yield store.get(records[5].task_id)).status, COMPLETED)


class KilledRunnerOfThisHostTests(RedisPartsCase):
    """A task whose runner was killed on this host is settled by its next reader at once, not
    once the runner's registry entry has lapsed."""

    def sleeper(self, argv: list[Any] | None = None) -> subprocess.Popen[bytes]:
        """A live process (killed and reaped at cleanup)."""
        child = subprocess.Popen(argv or [sys.executable, "-c", "import time; time.sleep(60)"])
        self.addCleanup(lambda: (child.kill(), child.wait()))
        return child

    @inlineCallbacks
    def entry(self, registry: InstanceRegistry, instance: str, pid: int, **changes: Any) -> Any:
        """Write a registry entry of ``instance``: the process ``pid`` of this host (as it is now)."""
        state = process_state(pid)
        assert state is not None
        entry = {**registry.entry, "id": instance, "pid": pid, "start_ticks": state[1], **changes}
        yield self.connection.execute("SET", registry.key(instance), json.dumps(entry), "PX", 60_000)
        yield self.connection.execute("SADD", self.connection.key("instances"), instance)

    @inlineCallbacks
    def killed(self, child: subprocess.Popen[bytes]) -> Any:
        """Kill ``child``: a zombie until reaped, not running."""
        child.kill()
        yield wait_for(lambda: (process_state(child.pid) or ("Z",))[0] == "Z")

    def relay(self, clock: Any = reactor) -> TaskRelay:
        """This test's instance's task relay (on ``clock``), its registry not `sure` (just
        started); stopped at cleanup."""
        registry = InstanceRegistry(self.bus, [], [], clock=reactor)
        relay = TaskRelay(self.bus, TaskManager(RedisTaskStore(self.connection), reactor), clock, registry)
        self.addCleanup(relay.stop)
        return relay

    @inlineCallbacks
    def test_a_reader_settles_the_task_of_a_killed_runner_at_once(self) -> Any:
        relay = self.relay()
        registry, store = relay.registry, relay.store
        child = self.sleeper()
        yield self.entry(registry, "runner0123", child.pid)
        record = TaskRecord("t-killed", "session:s1", False, reactor.seconds(), 60_000, 500, runner="runner0123")
        yield store.add(record, reactor.seconds())
        self.assertEqual((yield relay.check(record)).status, WORKING)

        yield self.killed(child)
        relay._alive.clear()  # past SEEN_ALIVE
        settled = yield relay.check(record)
        self.assertEqual((settled.status, settled.status_message), (FAILED, ORPHANED))
        self.assertEqual((yield store.get("t-killed")).status, FAILED)

    @inlineCallbacks
    def test_every_task_of_a_killed_runner_fails(self) -> Any:
        """The first check of a killed runner forgets its entry; the checks of its other tasks
        still find it gone, though this instance's registry is not `sure` yet (just started,
        or back from a Redis outage): tasks/list settles all of a page, tasks/get each one."""
        relay = self.relay()
        registry, store, manager = relay.registry, relay.store, relay.manager
        tasks: dict[str, list[str]] = {"listed0123": [], "gotten0123": []}
        children = {}
        for runner, ids in tasks.items():
            children[runner] = self.sleeper()
            yield self.entry(registry, runner, children[runner].pid)
            for n in range(3):
                ids.append(f"t-{runner}-{n}")
                record = TaskRecord(ids[-1], "session:s1", False, reactor.seconds(), 60_000, 500, runner=runner)
                yield store.add(record, reactor.seconds())
        for child in children.values():
            yield self.killed(child)
        self.assertFalse(registry.sure())

        listed = yield manager.list(legacy("tasks/list", ""), 50)
        page = {task["taskId"]: task["status"] for task in listed["tasks"]}
        self.assertEqual([page[task_id] for task_id in tasks["listed0123"]], [FAILED] * 3)
        for task_id in tasks["listed0123"] + tasks["gotten0123"]:
            got = yield manager.get(legacy("tasks/get", task_id))
            self.assertEqual((got["status"], got["statusMessage"]), (FAILED, ORPHANED))
            self.assertEqual((yield store.get(task_id)).status, FAILED)
        self.assertFalse((yield registry.alive("gotten0123")))

    @inlineCallbacks
    def test_a_cancel_of_a_killed_runners_task_is_answered_at_once(self) -> Any:
        """Cancelling a task whose runner was killed on this host marks it cancelled at once
        (nobody hears the cancel, and its process is not running), though this instance's
        registry is not `sure`: not "try again" until the runner's entry lapses."""
        relay = self.relay()
        registry, store = relay.registry, relay.store
        child = self.sleeper()
        yield self.entry(registry, "runner0123", child.pid)
        record = TaskRecord("t-cancel-killed", "caller:alice", True, reactor.seconds(), 60_000, 500)
        record.runner = "runner0123"
        yield store.add(record, reactor.seconds())
        refused = yield relay.cancel(record).addErrback(lambda f: f.value)  # alive, not listening
        self.assertIsInstance(refused, ClusterUnavailable)
        self.assertIn("try again", str(refused))

        yield self.killed(child)
        self.assertFalse(registry.sure())
        cancelled = yield relay.cancel(record)
        self.assertEqual(cancelled.status, CANCELLED)
        self.assertEqual((yield store.get(record.task_id)).status, CANCELLED)

    @inlineCallbacks
    def test_a_post_stream_of_a_killed_writer_ends_at_once(self) -> Any:
        """A POST's stream read from the journal (resumed on another instance) stays open while
        the instance writing it runs; once that instance is killed on this host, a reader
        replays what was written and ends at once, though the registry is not `sure`: not
        open until the writer's entry lapses. One whose writer has no entry ends too."""
        cluster = self.cluster()
        child = self.sleeper()
        yield self.entry(cluster.registry, "writer0123", child.pid)
        session = HTTPSession("written-by-killed")
        session.version = "2025-11-25"
        key = "writer0123-0123abcd-1"
        yield cluster.journal.append(session.id, key, b'{"n":1}', seq=1)
        received: list[bytes] = []
        live = treq.collect((yield self.stream(cluster, session, key)), received.append)
        yield wait_for(lambda: b'{"n":1}' in b"".join(received))
        yield cluster.journal.append(session.id, key, b'{"n":2}', seq=2)
        yield wait_for(lambda: b'{"n":2}' in b"".join(received))
        self.assertFalse(live.called)
        for finish in list(session.readers.values()):
            finish()
        yield live

        yield self.killed(child)
        self.assertFalse(cluster.registry.sure())
        for writer in ("writer0123", "lapsed0123"):
            replayed: list[bytes] = []
            if writer != "writer0123":
                key = f"{writer}-0123abcd-1"
                yield cluster.journal.append(session.id, key, b'{"n":1}', seq=1)
            done = treq.collect((yield self.stream(cluster, session, key)), replayed.append)
            self.addCleanup(lambda: [finish() for finish in list(session.readers.values())])
            yield wait_for(lambda done=done: done.called, timeout=5.0)
            self.assertIn(b"id: %s.1\n" % key.encode(), b"".join(replayed))

    @inlineCallbacks
    def test_a_resumed_post_stream_ends_at_the_sweep_after_its_writer_is_killed(self) -> Any:
        """A POST's stream resumed here while its writer runs, the writer killed after the
        replay: nothing more will come (not even its end), so the next sweep (`refresh`) finds
        the writer gone and ends the stream, and its session can go idle and expire. A stream
        whose writer still runs stays open."""
        cluster = self.cluster()
        session = HTTPSession("killed-after-resume")
        session.version = "2025-11-25"
        session.initialized = True
        children, streams = {}, {}
        for writer in ("killed0123", "alive00123"):
            children[writer] = self.sleeper()
            yield self.entry(cluster.registry, writer, children[writer].pid)
            key = f"{writer}-0123abcd-1"
            yield cluster.journal.append(session.id, key, b'{"n":1}', seq=1)
            received: list[bytes] = []
            streams[writer] = (treq.collect((yield self.stream(cluster, session, key)), received.append), received)
            yield wait_for(lambda received=received: b'{"n":1}' in b"".join(received))
        self.addCleanup(lambda: [finish() for finish in list(session.readers.values())])
        yield sleep(0.5)  # the replays' own look at their writers: running
        killed, alive = streams["killed0123"][0], streams["alive00123"][0]
        self.assertFalse(killed.called or alive.called)

        yield self.killed(children["killed0123"])
        yield sleep(1.0)
        self.assertFalse(killed.called)  # nothing but a sweep looks again
        self.assertFalse(session.idle)
        yield cluster.refresh([session])
        yield wait_for(lambda: killed.called, timeout=5.0)
        self.assertIn(b"id: killed0123-0123abcd-1.1\n", b"".join(streams["killed0123"][1]))
        yield sleep(0.2)
        self.assertFalse(alive.called)
        self.assertEqual([reader.key for reader in session.readers], ["alive00123-0123abcd-1"])

    @inlineCallbacks
    def test_a_runner_not_known_gone_is_believed_for_a_while(self) -> Any:
        """While this instance's registry is not `sure`, a runner not known gone is not asked
        about again for `SEEN_ALIVE` seconds (every check of its tasks cost a round trip to
        Redis). A task of one that dies meanwhile is settled by the first check after that,
        and at once when this instance has found the runner gone some other way (a cancel
        nobody heard, a claim on a GET stream)."""
        clock = Clock()
        relay = self.relay(clock)
        registry, store = relay.registry, relay.store
        finder = InstanceRegistry(self.bus, [], [], clock=reactor)  # another instance's
        records, children = [], []
        for runner in ("seen0123", "found0123"):
            children.append(self.sleeper())
            yield self.entry(registry, runner, children[-1].pid)
            records.append(TaskRecord(f"t-{runner}", "session:s1", False, reactor.seconds(), 60_000, 500))
            records[-1].runner = runner
            yield store.add(records[-1], reactor.seconds())
            self.assertEqual((yield relay.check(records[-1])).status, WORKING)
        for child in children:
            yield self.killed(child)
        self.assertFalse(registry.sure())

        # Found stopped here: settled at once.
        self.assertTrue((yield registry.gone("found0123")))
        settled = yield relay.check(records[1])
        self.assertEqual((settled.status, settled.status_message), (FAILED, ORPHANED))
        # Found stopped by another instance (its entry forgotten, marked stopped): believed
        # alive here until SEEN_ALIVE has passed, then settled.
        self.assertTrue((yield finder.gone("seen0123")))
        self.assertEqual((yield relay.check(records[0])).status, WORKING)
        clock.advance(TaskRelay.SEEN_ALIVE)
        settled = yield relay.check(records[0])
        self.assertEqual((settled.status, settled.status_message), (FAILED, ORPHANED))
        for record in records:
            self.assertEqual((yield store.get(record.task_id)).status, FAILED)

    @inlineCallbacks
    def test_a_runner_found_killed_is_gone_for_every_instance(self) -> Any:
        """Once one instance has found a runner killed (and forgotten its entry), another that
        is not `sure` yet (just started) finds it gone too, and settles its tasks: without the
        mark it took the missing entry for nothing known and answered the task working (B
        failed, C working, until C's registry was sure 20 s later)."""
        finder = InstanceRegistry(self.bus, [], [], clock=reactor)
        bus_c, _registry = yield self.other_instance()
        young = InstanceRegistry(bus_c, [], [], clock=reactor, sure_after=3600.0)
        store = RedisTaskStore(self.connection)
        relay = TaskRelay(bus_c, TaskManager(store, reactor), reactor, young)
        self.addCleanup(relay.stop)
        child = self.sleeper()
        yield self.entry(finder, "killed0123", child.pid)
        record = TaskRecord("t-seen", "session:s1", False, reactor.seconds(), 60_000, 500, runner="killed0123")
        yield store.add(record, reactor.seconds())
        yield self.killed(child)
        self.assertTrue((yield finder.gone("killed0123")))
        self.assertFalse((yield young.alive("killed0123")))
        self.assertFalse(young.sure())

        self.assertTrue((yield young.gone("killed0123")))
        settled = yield relay.check(record)
        self.assertEqual((settled.status, settled.status_message), (FAILED, ORPHANED))
        # An entry that lapsed, unmarked, is still gone only once the registry is sure.
        self.assertFalse((yield young.gone("lapsed0123")))

    @inlineCallbacks
    def test_a_live_process_is_not_gone(self) -> Any:
        """An entry naming a live process of this host is not gone: one whose command name is
        not ASCII (and holds ')' and spaces); one whose /proc files cannot be read, as another
        instance's under debian/mcpd.service (``ProtectProc=invisible``, ``PrivateUsers=yes``),
        gone only once the kernel has no process with its pid."""
        sleep_command = shutil.which("sleep")
        assert sleep_command is not None
        directory = os.fsencode(self.mktemp())
        os.mkdir(directory)
        odd = os.path.join(directory, b"\xffm) c p d")
        os.symlink(sleep_command, odd)
        registry = InstanceRegistry(self.bus, [], [], clock=reactor)
        named = self.sleeper([odd, "60"])
        with open(f"/proc/{named.pid}/stat", "rb") as stat:
            self.assertIn(b"(\xffm) c p d)", stat.read())
        state = process_state(named.pid)
        assert state is not None
        self.assertIn(state[0], "RS")
        yield self.entry(registry, "named0123", named.pid)
        self.assertFalse((yield registry.gone("named0123")))
        yield self.killed(named)
        self.assertTrue((yield registry.gone("named0123")))

        hidden = self.sleeper()
        yield self.entry(registry, "hidden0123", hidden.pid)
        proc = self.mktemp()
        os.mkdir(proc)  # a /proc that shows no process
        blind = InstanceRegistry(self.bus, [], [], clock=reactor, proc=proc)
        self.assertIsNone(process_state(hidden.pid, proc))
        self.assertFalse((yield blind.gone("hidden0123")))
        self.assertTrue((yield blind.alive("hidden0123")))
        hidden.kill()
        hidden.wait()  # reaped: no process has its pid
        self.assertTrue((yield blind.gone("hidden0123")))
        self.assertFalse((yield blind.alive("hidden0123")))

    @inlineCallbacks
    def test_the_process_is_told_by_its_pid_start_time_and_namespace(self) -> Any:
        """A live process with the entry's pid but another start time took the pid of the one
        that stopped: gone. An entry of another host, boot or pid namespace is not judged by
        the process its pid names here (none, now): not gone until its entry lapses."""
        registry = InstanceRegistry(self.bus, [], [], clock=reactor)
        child = self.sleeper()
        state = process_state(child.pid)
        assert state is not None
        yield self.entry(registry, "reused0123", child.pid, start_ticks=str(int(state[1]) - 1))
        self.assertTrue((yield registry.gone("reused0123")))
        dead = self.sleeper()
        dead.kill()
        dead.wait()
        for name, value in (("host", "another.host"), ("boot", "another-boot"), ("pidns", "pid:[0]")):
            entry = {**registry.entry, "id": f"{name}0123", "pid": dead.pid, "start_ticks": state[1], name: value}
            yield self.connection.execute("SET", registry.key(entry["id"]), json.dumps(entry), "PX", 60_000)
            self.assertFalse((yield registry.gone(entry["id"])), name)
            self.assertTrue((yield registry.alive(entry["id"])), name)
