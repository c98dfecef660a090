# -*- test-case-name: tests.test_cluster -*-
"""The instances' messages to each other, over Redis pub/sub.

Each instance has an id (random, per process) and listens on its own channel (``i:<id>``) and on
the channel every instance hears (``all``); a reader of a stream listens on that stream's
channel for as long as it reads. Messages are JSON objects with a ``kind``; `request` sends one
to another instance and waits for its ``reply``.

Commands (PUBLISH, scripts, keys) go over a pool of reconnecting connections; the subscriptions
over one connection of their own, subscribed again after every reconnection. A login of that
connection left unanswered (Redis stalled or crashing meanwhile) stops txredisapi reconnecting it,
as for the pool: a fresh one follows after the back-off (`mcpd.stores.redis.connection`).

A subscriber only reads, so a connection that died without a word (Redis stopped, a network
path gone without a reset) would leave it waiting for good. When it has heard nothing for
`QUIET` seconds it sends PING, allowed in subscribe mode; with no answer (nor anything else)
within ``--redis-timeout`` it drops the connection, which is then made again and subscribed anew.
A SUBSCRIBE refused (Redis busy with a script) subscribed nothing: that connection is dropped too.
The subscriber matches Redis' replies to what it sent, in order (`_Subscriber.sent`), so the
answer to a PING, error or not, is never taken for another command's.
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import txredisapi
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpd.interfaces import StoreUnavailable
from mcpd.stores.redis.connection import PoolFactory, Renewal, unanswered_login

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from mcpd.stores.redis import RedisConnection

log = Logger(namespace="mcpd.cluster")

Handler = Callable[[dict[str, Any]], Any]

# Seconds the subscriber may hear nothing before it asks Redis whether it is there (PING).
QUIET = 3.0
# The stages of its timer (`ClusterBus._look`): quiet so far, PING sent, its deadline passed.
_QUIET, _PINGED, _SILENT = 0, 1, 2
_PING = b"*1\r\n$4\r\nPING\r\n"
# What Redis publishes (RESP2: ["message", channel, payload]).
_MESSAGE = ("message", b"message")
# txredisapi's reading, called directly: it runs once per bulk string (a message is three), where
# super() would cost ~4% of a message's parsing (measured).
_data_received = txredisapi.SubscriberProtocol.dataReceived


class ClusterUnavailable(StoreUnavailable):
    """What needs another instance cannot be done now: Redis or that instance cannot be
    reached."""

    def __init__(self, detail: str) -> None:
        super().__init__("cluster", detail)


class InstanceGone(ClusterUnavailable):
    """Nobody listens on the instance's channel: it is not running."""


def new_instance_id() -> str:
    """An instance id: short, random, without ``-`` or ``.`` (it prefixes stream keys and
    request ids, which are split at those)."""
    return secrets.token_hex(5)


@dataclass(slots=True)
class _Sent:
    """A command the subscriber sent: how many replies are still to come (a SUBSCRIBE is answered
    once per channel), and whether its caller waits for the first (nobody waits for a PING's)."""

    replies: int
    waited: bool


class _Subscriber(txredisapi.SubscriberProtocol):
    bus: ClusterBus
    # Whether anything arrived since the bus last looked (`ClusterBus._look`), and its timer.
    heard = False
    look: IDelayedCall | None = None
    # Why the bus dropped the connection (None: it did not).
    dropped: str | None = None

    def connectionMade(self) -> Any:
        self.bus = self.factory.bus
        # What was sent since the login and is not fully answered, first sent first.
        self.sent: deque[_Sent] = deque()
        # A backstop only: the kernel's first probe comes after 2 hours idle (tcp_keepalive_time).
        self.transport.setTcpKeepAlive(True)
        # Fires once logged in; never when txredisapi gives up on the login (refused, or cut short).
        self.whenConnected().addCallback(self.bus._subscriber_ready)
        return super().connectionMade()

    def dataReceived(self, data: bytes, unpause: bool = False) -> Any:
        # Here, not per reply: txredisapi parses a reply over several reactor turns, and the
        # PING's deadline is judged one turn after a read (`ClusterBus._look`).
        self.heard = True
        return _data_received(self, data, unpause)

    def replyReceived(self, reply: Any) -> None:
        if type(reply) is list and len(reply) == 3 and reply[0] in _MESSAGE:
            self.bus._received(reply[1], reply[2])  # what txredisapi would find, one call sooner
            return
        if not self._ready:
            super().replyReceived(reply)  # the login's
            return
        if not self.sent:
            return  # nothing asked for it
        sent = self.sent[0]
        if sent.waited:
            sent.waited = False
            self.replyQueue.put(reply)
        elif reply == "PONG":
            # The answer to PING outside subscribe mode: Redis has no subscription of this connection.
            self.bus._drop(self, "Redis answered the cluster bus' PING as if it subscribed to nothing")
        sent.replies -= 1
        if sent.replies == 0 or isinstance(reply, Exception):  # an error answers the whole command
            self.sent.popleft()

    def subscribe(self, channels: list[str]) -> Deferred[Any]:
        return self._command("SUBSCRIBE", channels)

    def unsubscribe(self, channels: list[str]) -> Deferred[Any]:
        return self._command("UNSUBSCRIBE", channels)

    def _command(self, name: str, channels: list[str]) -> Deferred[Any]:
        # No reply timeout: while Redis does not answer, the PING finds it out (`ClusterBus._look`).
        d: Deferred[Any] = self.execute_command(name, *channels, apply_timeout=False)
        self.sent.append(_Sent(len(channels), True))
        return d

    def ping(self) -> None:
        self.transport.write(_PING)
        self.sent.append(_Sent(1, False))

    def connectionLost(self, why: Any) -> None:
        if self.look is not None and self.look.active():
            self.look.cancel()
        self.bus._subscriber_lost(self)
        super().connectionLost(why)


class ClusterBus:
    """Pub/sub over one Redis server for the instances of one deployment; commands go through
    the daemon's `RedisConnection` (``redis``)."""

    def __init__(self, redis: RedisConnection, *, instance: str | None = None, clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.redis = redis
        self.prefix = redis.config.prefix
        self.timeout = redis.config.timeout
        self.quiet = QUIET
        self.instance = instance or new_instance_id()
        # The subscriber logged in (SUBSCRIBE goes there), and the one whose subscriptions Redis
        # confirmed (it listens: `connected`).
        self._subscriber: _Subscriber | None = None
        self._listening: _Subscriber | None = None
        # Since the bus stopped listening, or a login went unanswered, until it listens again:
        # said once in the log, not at every attempt; `last_error` says why.
        self._outage = False
        self.last_error: str | None = None
        self._factory: PoolFactory | None = None
        # A fresh subscriber after unanswered logins (`_gave_up`) or a connection the bus dropped
        # (`_drop`), the back-off growing until one listens.
        self._renewal = Renewal(self.clock, lambda: self._factory, self._connect, "subscriber")
        # Handlers by channel (full name); the kinds of the instance channel by kind.
        # Several readers of one stream in this process each listen on its channel.
        self._channels: dict[str, list[Callable[[Any], Any]]] = {}
        # Channels whose messages are handed over as text, not JSON (the journal's).
        self._raw: set[str] = set()
        self._kinds: dict[str, Handler] = {}
        self._replies: dict[str, Deferred[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._ready: list[Deferred[None]] = []
        # Channels whose SUBSCRIBE Redis has not confirmed yet, with who waits for it.
        self._subscribing: dict[str, list[Deferred[None]]] = {}

    # -- names ----------------------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        """A Redis key (or channel) of this deployment."""
        return self.redis.key(*parts)

    def instance_channel(self, instance: str) -> str:
        return self.key("i", instance)

    # -- life -----------------------------------------------------------------------------------

    def start(self, wait: float) -> Deferred[None]:
        """Connect the subscriber; fires once it listens (fails with `ClusterUnavailable`
        after ``wait`` seconds)."""
        self._connect()
        self._channels[self.instance_channel(self.instance)] = [self._instance_message]
        self._channels[self.key("all")] = [self._instance_message]
        if self.connected:
            return succeed(None)
        ready: Deferred[None] = Deferred()
        self._ready.append(ready)
        call = self.clock.callLater(wait, self._start_timed_out, ready, wait)

        def done(result: Any) -> Any:
            if call.active():
                call.cancel()
            return result

        return ready.addBoth(done)

    def _connect(self) -> None:
        """Start the subscriber's connection (another one after an unanswered login)."""
        config = self.redis.config
        # Its connection coming and going is told by `_Subscriber` itself.
        factory = PoolFactory(
            self._gave_up,
            dbid=None,
            poolsize=1,
            password=config.password,
            username=config.username,
            # A login unanswered so long is given up (then `_gave_up`), like the pool's.
            replyTimeout=config.timeout,
        )
        factory.protocol = _Subscriber
        factory.bus = self
        factory.maxDelay = 2
        factory.initialDelay = 0.2
        factory.startConnecting(self.redis.endpoint())
        self._factory = factory

    def _gave_up(self, factory: PoolFactory, why: str) -> None:
        """txredisapi stopped reconnecting the subscriber: its login was refused (the pool says
        so too, `RedisConnection.status`), or went unanswered (a fresh one after the back-off)."""
        if factory is not self._factory:
            return
        if not unanswered_login(why):
            refused = ClusterUnavailable(
                f"Redis at {self.redis.config.shown_url} refused the cluster bus' login "
                f"({why.removeprefix('Redis error: ')}); fix REDIS_PASSWORD or --redis-url and restart mcpd"
            )
            log.error("{why}", why=refused.detail)
            waiting, self._ready = self._ready, []
            for d in waiting:
                d.errback(refused)
            return
        self._tell_outage(
            f"Redis did not complete the cluster bus subscriber's login ({why.removeprefix('Redis error: ')})"
        )
        self._renewal.after(factory)

    def _start_timed_out(self, ready: Deferred[None], wait: float) -> None:
        if not ready.called:
            if ready in self._ready:
                self._ready.remove(ready)
            ready.errback(
                ClusterUnavailable(
                    f"Redis at {self.redis.config.shown_url} did not answer within {wait:g}s: instances sharing "
                    "state through Redis need it to start (is redis-server running?)"
                )
            )

    def stop(self) -> Deferred[Any]:
        """Disconnect the subscriber."""
        self._renewal.cancel()
        factory, self._factory = self._factory, None
        if factory is not None:
            factory.stopTrying()
            d: Deferred[Any] = factory.disconnect()
            return d.addErrback(lambda _f: None)
        return succeed(None)

    @property
    def connected(self) -> bool:
        """Whether the bus listens: Redis confirmed its subscriptions on a connection that has
        not been lost, nor found silent since (`_look`)."""
        return self._listening is not None

    def _subscriber_ready(self, protocol: _Subscriber) -> None:
        self._subscriber = protocol
        protocol.look = self.clock.callLater(self.quiet, self._look, protocol, _QUIET)
        channels = list(self._channels)
        self._subscribe(protocol, channels, lambda: self._subscribed(protocol, len(channels)))

    def _subscribed(self, protocol: _Subscriber, channels: int) -> None:
        if protocol is not self._subscriber:
            return  # lost meanwhile
        self._listening = protocol
        self._renewal.answered()
        self._outage = False
        self.last_error = None
        log.info("Cluster bus listening on Redis (instance {id}, {n} channels)", id=self.instance, n=channels)
        ready, self._ready = self._ready, []
        for d in ready:
            d.callback(None)

    def _look(self, protocol: _Subscriber, stage: int) -> None:
        """The subscriber's timer: every `quiet` seconds while it hears something; else a PING,
        and the connection dropped when nothing came within ``--redis-timeout`` after it."""
        if protocol.heard:
            protocol.heard = False
            protocol.look = self.clock.callLater(self.quiet, self._look, protocol, _QUIET)
        elif stage == _QUIET:
            protocol.ping()
            protocol.look = self.clock.callLater(self.timeout, self._look, protocol, _PINGED)
        elif stage == _PINGED:
            # Timers run before reads: after the reactor was held up past the deadline, what Redis
            # sent meanwhile is still unread. The next turn reads it first.
            protocol.look = self.clock.callLater(0, self._look, protocol, _SILENT)
        else:
            protocol.look = None
            self._drop(
                protocol,
                f"Redis at {self.redis.config.shown_url} did not answer the cluster bus' PING within "
                f"{self.timeout:g}s (--redis-timeout)",
            )

    def _drop(self, protocol: _Subscriber, why: str) -> None:
        """Close the subscriber's connection; ``why`` is told once an outage (`_subscriber_lost`,
        or here when it did not listen yet). A fresh one follows after the back-off, growing
        until one listens (`Renewal`), rather than txredisapi's at once (and its log line): Redis
        still busy or silent would meet it the same way."""
        protocol.dropped = why
        if self._listening is not protocol:
            self._tell_outage(why)
        factory = self._factory
        if factory is not None and protocol.factory is factory:
            factory.stopTrying()
            self._renewal.after(factory)
        protocol.transport.abortConnection()

    def _tell_outage(self, why: str) -> None:
        """Say ``why`` the bus does not listen: once an outage, then at debug level."""
        emit = log.debug if self._outage else log.warn
        if not self._outage:
            self._outage = True
            self.last_error = why
        emit("{why}; reconnecting", why=why)

    def _subscriber_lost(self, protocol: _Subscriber) -> None:
        if self._subscriber is protocol:
            self._subscriber = None
        if self._listening is not protocol:
            return  # never listened: the outage (or the start) is told already
        self._listening = None
        if self._factory is None:
            return  # stopping
        self._tell_outage(protocol.dropped or "the cluster bus lost its Redis connection")

    # -- listening ------------------------------------------------------------------------------

    def on(self, kind: str, handler: Handler) -> None:
        """Handle messages of ``kind`` sent to this instance (or to every instance)."""
        self._kinds[kind] = handler

    def listen(self, channel: str, handler: Callable[[Any], Any], raw: bool = False) -> Deferred[None]:
        """Hear the messages of ``channel`` (a full name, `key`) until `unlisten`; ``raw``:
        as text, not JSON. Fires once Redis has subscribed this instance to it (at once when it
        already is), so that whatever is published from then on is heard: read what came
        before only then, or an event published in between is in neither."""
        handlers = self._channels.setdefault(channel, [])
        handlers.append(handler)
        if raw:
            self._raw.add(channel)
        waiting = self._subscribing.get(channel)
        if waiting is None and len(handlers) > 1 and self.connected:
            return succeed(None)
        subscribed: Deferred[None] = Deferred()
        if waiting is not None:
            waiting.append(subscribed)
            return subscribed
        self._subscribing[channel] = [subscribed]
        if self._subscriber is not None:
            self._subscribe(self._subscriber, [channel])
        return subscribed

    def _subscribe(self, protocol: _Subscriber, channels: list[str], then: Callable[[], None] | None = None) -> None:
        """SUBSCRIBE, then tell who waits for these channels (Redis answers a SUBSCRIBE once it
        listens to every channel named) and call ``then``. A connection lost first is told by
        `_subscriber_lost`, and the channels subscribed on the next one; a SUBSCRIBE refused
        (Redis busy with a script, say) subscribed none: the connection is dropped, and who
        waits fails with `ClusterUnavailable`."""

        def done(_reply: Any) -> None:
            for channel in channels:
                for waiting in self._subscribing.pop(channel, ()):
                    waiting.callback(None)
            if then is not None:
                then()

        def failed(failure: Failure) -> None:
            if failure.check(txredisapi.ConnectionError):
                return
            why = f"Redis at {self.redis.config.shown_url} refused the cluster bus' SUBSCRIBE ({failure.getErrorMessage()})"
            self._drop(protocol, why)
            refused = ClusterUnavailable(f"{why}; try again in a few seconds")
            for channel in channels:
                for waiting in self._subscribing.pop(channel, ()):
                    waiting.errback(refused)

        try:
            d = protocol.subscribe(channels)
        except txredisapi.ConnectionError:
            return  # lost just now
        d.addCallbacks(done, failed)

    def unlisten(self, channel: str, handler: Callable[[Any], Any] | None = None) -> None:
        """Stop ``handler`` hearing ``channel`` (every handler when None); the channel is
        unsubscribed once nobody here listens."""
        handlers = self._channels.get(channel)
        if handlers is None:
            return
        if handler is not None and handler in handlers:
            handlers.remove(handler)
        elif handler is None:
            handlers.clear()
        if handlers:
            return
        del self._channels[channel]
        self._raw.discard(channel)
        for waiting in self._subscribing.pop(channel, ()):
            waiting.callback(None)  # nobody listens any more: nothing to wait for
        if self._subscriber is not None:
            self._subscriber.unsubscribe([channel]).addErrback(lambda _f: None)

    def _received(self, channel: Any, raw: Any) -> None:
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        for handler in list(self._channels.get(name, ())):
            try:
                if name in self._raw:
                    handler(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
                else:
                    handler(json.loads(raw))
            except Exception:
                log.failure("A cluster message on {channel} could not be handled", channel=name)

    def _instance_message(self, message: dict[str, Any]) -> None:
        kind = message.get("kind")
        if kind == "reply":
            waiting = self._replies.pop(str(message.get("re")), None)
            if waiting is not None:
                waiting.callback(message.get("body") or {})
            return
        if message.get("from") == self.instance and message.get("to") == "all":
            return  # our own broadcast: already done here
        handler = self._kinds.get(str(kind))
        if handler is None:
            log.info("Ignoring a cluster message of unknown kind {kind!r}", kind=kind)
            return
        outcome = handler(message)
        if "ask" in message:
            d = outcome if isinstance(outcome, Deferred) else succeed(outcome)
            d.addCallback(self._reply, message).addErrback(
                lambda f: log.failure("Answering a {kind} message failed", f, kind=kind)
            )

    def _reply(self, body: Any, message: dict[str, Any]) -> Deferred[int]:
        return self.send(str(message["from"]), "reply", {"re": message["ask"], "body": body or {}})

    # -- sending --------------------------------------------------------------------------------

    def publish(self, channel: str, message: dict[str, Any]) -> Deferred[int]:
        """Send ``message`` on ``channel``; fires with how many listened (0: nobody)."""
        return self.redis.execute("PUBLISH", channel, json.dumps(message, separators=(",", ":"))).addCallback(int)

    def send(self, instance: str, kind: str, body: dict[str, Any]) -> Deferred[int]:
        """One message to one instance; fires with 1 if it is there to hear it, else 0."""
        return self.publish(self.instance_channel(instance), {**body, "kind": kind, "from": self.instance})

    def broadcast(self, kind: str, body: dict[str, Any]) -> Deferred[int]:
        """One message to every other instance (this one has done it already)."""
        return self.publish(self.key("all"), {**body, "kind": kind, "from": self.instance, "to": "all"})

    def request(
        self, instance: str, kind: str, body: dict[str, Any], timeout: float | None = None
    ) -> Deferred[dict[str, Any]]:
        """Ask ``instance`` and wait for its answer; fails with `ClusterUnavailable` when it is
        not there (nobody heard) or does not answer within ``timeout`` seconds."""
        return self.ask(self.instance_channel(instance), kind, body, timeout, name=f"instance {instance}")

    def ask(
        self, channel: str, kind: str, body: dict[str, Any], timeout: float | None = None, name: str | None = None
    ) -> Deferred[dict[str, Any]]:
        """Send a question on ``channel`` and wait for the answer of whoever listens there; an
        empty answer (``{}``) when nobody listens."""
        instance = name or channel
        ask = f"{self.instance}.{next(self._ids)}"
        waiting: Deferred[dict[str, Any]] = Deferred()
        self._replies[ask] = waiting
        limit = timeout if timeout is not None else self.timeout * 2

        def expire() -> None:
            if self._replies.pop(ask, None) is not None:
                waiting.errback(ClusterUnavailable(f"{instance} did not answer within {limit:g}s"))

        call = self.clock.callLater(limit, expire)

        def sent(heard: int) -> None:
            if not heard and self._replies.pop(ask, None) is not None:
                call.cancel()
                if name is None:
                    waiting.callback({})
                else:
                    waiting.errback(InstanceGone(f"{instance} is not running"))

        def not_sent(failure: Failure) -> None:
            if self._replies.pop(ask, None) is not None:
                call.cancel()
                waiting.errback(failure)

        def settled(result: Any) -> Any:
            if call.active():
                call.cancel()
            return result

        message = {**body, "kind": kind, "from": self.instance, "ask": ask}
        self.publish(channel, message).addCallbacks(sent, not_sent)
        return waiting.addBoth(settled)
