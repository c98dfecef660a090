# -*- test-case-name: tests.test_redis -*-
"""The daemon's connection to Redis: a small txredisapi pool that reconnects by itself, owned by a
service of the daemon's tree, and the health of Redis as the latest call or probe saw it.

Every command goes through `RedisConnection.execute` (or `RedisConnection.eval` for a script),
which never waits for a connection that is not there: with none open it fails at once with
`StoreUnavailable`, and a command that gets no answer within ``--redis-timeout`` fails the same
way (txredisapi then drops the connection and opens a new one). A refused password or database
number stops the reconnecting; `status` says why, in words a person can act on. A login that
gets no answer in time, or a "not now" answer (Redis stalled, loading, busy), is no refusal:
txredisapi gives up on the pool then too, so a fresh pool takes its place after a back-off.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import txredisapi
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mcpd.interfaces import DOWN, UP, IStore, StoreError, StoreStatus, StoreUnavailable
from mcpd.stores.redis.config import RedisConfig

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint

log = Logger(namespace="mcpd.stores.redis")

STORE = "redis"
# Connections kept open; commands are pipelined on them, so a few serve any load.
POOL_SIZE = 2
# Reconnecting: the first retry after this many seconds, backing off to at most RETRY_MAX.
RETRY_FIRST, RETRY_MAX = 0.1, 2.0
STARTING, OK, DOWN_STATE, REFUSED, STOPPED = "starting", "ok", "down", "refused", "stopped"
# While stopping: how often to look whether the commands in flight are answered (seconds).
SETTLE_INTERVAL = 0.01
_DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Redis answers meaning "not now" rather than "wrong command": temporary, like a lost connection.
_TEMPORARY = ("LOADING", "BUSY", "MASTERDOWN", "READONLY", "OOM", "TRYAGAIN", "CLUSTERDOWN", "NOAUTH")
# Why txredisapi gave up on a login (its AUTH or SELECT failed): the reason after the prefix.
_LOGIN_FAILED = re.compile(r"Redis error: could not (?:auth|set dbid=\S*): (.*)", re.DOTALL)
# A login failing so is no refusal: no answer within --redis-timeout, the connection lost on
# the way, or a "not now" answer (NOAUTH is no such answer to a login: Redis wants a password).
_LOGIN_UNANSWERED = ("Not received Redis response", "Lost connection", "Not connected") + tuple(
    code + " " for code in _TEMPORARY if code != "NOAUTH"
)


def unanswered_login(why: str) -> bool:
    """Whether txredisapi's reason for giving up (``why``) is a login that went unanswered or
    was answered "not now", rather than refused."""
    match = _LOGIN_FAILED.match(why)
    return match is not None and match.group(1).startswith(_LOGIN_UNANSWERED)


class PoolFactory(txredisapi.RedisFactory):  # type: ignore[misc]
    """txredisapi's pool factory, retrying sooner, and telling its owner why it gave up (its
    login refused, or unanswered): the pool's, and the cluster bus's subscriber's."""

    initialDelay = RETRY_FIRST
    maxDelay = RETRY_MAX

    def __init__(
        self,
        gave_up: Callable[[PoolFactory, str], None],
        up: Callable[[], None] | None = None,
        lost: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        # Not lazy: txredisapi would log each unanswered login too, where the owner says it once.
        super().__init__(None, isLazy=False, **kwargs)
        self._up, self._lost, self._gave_up = up, lost, gave_up
        self.deferred.addErrback(lambda _failure: None)  # reported through `gave_up`

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if self.size and not self.disconnectCalled and self._up is not None:
            self._up()

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        if not self.size and not self.disconnectCalled and self._lost is not None:
            self._lost()

    def connectionError(self, why: str) -> None:
        if not self.disconnectCalled:  # a login cut short by closing the pool is nobody's news
            self._gave_up(self, why)
        super().connectionError(why)


class Renewal:
    """A fresh `PoolFactory` in place of one txredisapi stopped reconnecting after an unanswered
    login, after the factory's back-off (longer with each such login in a row, until one is
    answered: `answered`). ``current`` is the factory in use (None once stopping), ``connect``
    starts a fresh one; ``what`` names it in the log."""

    def __init__(
        self,
        clock: IReactorTime,
        current: Callable[[], PoolFactory | None],
        connect: Callable[[], None],
        what: str,
    ) -> None:
        self.clock = clock
        self.current = current
        self.connect = connect
        self.what = what
        self.unanswered = 0
        self._call: IDelayedCall | None = None

    def after(self, stopped: PoolFactory) -> None:
        """``stopped``'s login went unanswered: a fresh one after the back-off (one at a time)."""
        if self._call is not None and self._call.active():
            return
        self.unanswered += 1
        self._call = self.clock.callLater(stopped.retryDelay(self.unanswered), self._renew, stopped)

    def answered(self) -> None:
        self.unanswered = 0

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()

    def _renew(self, stopped: PoolFactory) -> None:
        if stopped is not self.current():
            return
        self.connect()
        stopped.disconnect().addErrback(lambda f: log.failure("Closing a stopped {what} failed", f, what=self.what))


class RedisMetrics:
    """Redis' Prometheus series: command latency and errors, counted as answers arrive; whether
    Redis is up and how many connections are open, read at scrape time."""

    def __init__(self, connection: RedisConnection) -> None:
        self.connection = connection
        self.duration = Histogram(
            "mcp_redis_command_duration_seconds",
            "Time from sending a Redis command (or script) to its answer, by command.",
            ["command"],
            buckets=_DURATION_BUCKETS,
            registry=None,
        )
        self.errors = Counter(
            "mcp_redis_errors",
            "Redis commands that failed: unavailable (no connection, lost, or Redis busy), timeout "
            "(no answer within --redis-timeout), error (refused by Redis).",
            ["command", "kind"],
            registry=None,
        )

    def collectors(self) -> list[Any]:
        return [self.duration, self.errors, self]

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        connection = self.connection
        yield GaugeMetricFamily(
            "mcp_redis_up", "1 while mcpd's last command or check reached Redis.", value=float(connection.state == OK)
        )
        yield GaugeMetricFamily(
            "mcp_redis_connections", "Connections to Redis open right now.", value=float(connection.open_connections)
        )
        latency = connection.last_check.latency if connection.last_check is not None else None
        if latency is not None:
            yield GaugeMetricFamily(
                "mcp_redis_ping_seconds", "How long the latest health check's PING took.", value=latency
            )


@implementer(IStore)
class RedisConnection(Service):
    """One Redis server (`RedisConfig`): started and stopped with the daemon's tree.

    Redis down at start-up does not stop the daemon: calls fail with `StoreUnavailable` until it
    answers, and the pool keeps trying to connect.
    """

    def __init__(self, config: RedisConfig, reactor: Any, pool_size: int = POOL_SIZE) -> None:
        self.config = config
        self.reactor = reactor
        self.pool_size = pool_size
        self.state = STARTING
        self.last_error: str | None = None
        self.last_check: StoreStatus | None = None
        self.server_version: str | None = None
        self.metrics = RedisMetrics(self)
        self._factory: PoolFactory | None = None
        # A fresh pool after unanswered logins (`_gave_up`).
        self._renewal = Renewal(reactor, lambda: self._factory if self.running else None, self._connect, "Redis pool")
        self._waiting: list[Deferred[bool]] = []
        # Commands sent and not yet answered (stopping waits for them).
        self._outstanding = 0

    # -- the service ----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.state = STARTING
        self._connect()
        log.info("Connecting to Redis at {url}", url=self.config.shown_url)

    def _connect(self) -> None:
        """Start a pool of connections (another one after unanswered logins: `_gave_up`)."""
        self._factory = PoolFactory(
            self._gave_up,
            self._up,
            self._lost,
            dbid=self.config.db,
            poolsize=self.pool_size,
            charset="utf-8",
            password=self.config.password,
            username=self.config.username,
            replyTimeout=self.config.timeout,
            convertNumbers=False,
        )
        self._factory.startConnecting(self.endpoint())

    def stopService(self) -> Deferred[Any]:
        """Close the connections once the commands sent so far are answered, and those the
        services stopped before this one sent in their last turns (a cancelled task's final
        status), within ``--redis-timeout``."""
        super().stopService()
        self._renewal.cancel()
        done: Deferred[Any] = Deferred()
        deadline = time.monotonic() + self.config.timeout

        def close() -> None:
            if self._outstanding and time.monotonic() < deadline:
                self.reactor.callLater(SETTLE_INTERVAL, close)
                return
            self.state = STOPPED
            factory, self._factory = self._factory, None
            if factory is None:
                done.callback(None)
                return
            d: Deferred[Any] = factory.disconnect()
            d.addErrback(lambda failure: log.failure("Closing the Redis connections failed", failure))
            d.chainDeferred(done)

        self.reactor.callLater(0, close)
        return done

    def endpoint(self) -> IStreamClientEndpoint:
        """A client endpoint to Redis (TLS for rediss://): for this pool, and for connections
        of other kinds (a subscriber)."""
        host, port, timeout = self.config.host, self.config.port, self.config.timeout
        endpoint: IStreamClientEndpoint
        if isIPAddress(host):  # no name to resolve (in the reactor's threads)
            endpoint = TCP4ClientEndpoint(self.reactor, host, port, timeout=timeout)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self.reactor, host, port, timeout=timeout)
        else:
            endpoint = HostnameEndpoint(self.reactor, host, port, timeout=timeout)
        if self.config.tls:
            from twisted.internet import ssl

            trust: Any = None
            if self.config.ca_file is not None:
                with open(self.config.ca_file, "rb") as f:
                    pem = f.read()
                blocks = [
                    b"-----BEGIN CERTIFICATE-----" + part for part in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]
                ]
                trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(block) for block in blocks])
            endpoint = wrapClientTLS(ssl.optionsForClientTLS(self.config.host, trustRoot=trust), endpoint)
        return endpoint

    def connected(self) -> Deferred[bool]:
        """Fires with True once a connection is open, or with False after ``--redis-timeout``
        without one (never fails): what readiness waits for at start-up."""
        if self.open_connections:
            return succeed(True)
        d: Deferred[bool] = Deferred()
        self._waiting.append(d)
        timer = self.reactor.callLater(self.config.timeout, _fire, d, False)

        def stop_timer(connected: bool) -> bool:
            if timer.active():
                timer.cancel()
            return connected

        return d.addCallback(stop_timer)

    @property
    def open_connections(self) -> int:
        factory = self._factory
        return factory.size if factory is not None else 0

    def key(self, *parts: str) -> str:
        """A key (or channel) name of mcpd's: the prefix, then ``parts`` joined by colons."""
        return self.config.prefix + ":".join(parts)

    # -- commands -------------------------------------------------------------------------------

    def execute(self, *args: Any) -> Deferred[Any]:
        """Run one command; fires with Redis' answer (text decoded as UTF-8, numbers as Redis
        gave them). Fails with `StoreUnavailable` (no connection, no answer in time, Redis busy)
        or `StoreError` (the command was refused)."""
        return self._call(str(args[0]).upper(), lambda handler: handler.execute_command(*args))

    def eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Deferred[Any]:
        """Run a Lua script (EVALSHA, loading it on first use on each connection)."""
        return self._call("EVAL", lambda handler: handler.eval(script, list(keys), list(args)))

    def _call(self, name: str, send: Callable[[Any], Deferred[Any]]) -> Deferred[Any]:
        factory = self._factory
        if factory is None:
            return fail(StoreUnavailable(STORE, "mcpd's Redis connection is not running"))
        if factory.size == 0:
            self.metrics.errors.labels(name, "unavailable").inc()
            if self.state == STARTING:
                self._down(f"cannot connect to Redis at {self.config.shown_url}")
            return fail(StoreUnavailable(STORE, self._why_down()))
        started = time.monotonic()
        try:
            d = send(factory.handler)
        except txredisapi.ConnectionError:  # the connection died between the check and now
            self.metrics.errors.labels(name, "unavailable").inc()
            return fail(StoreUnavailable(STORE, self._why_down()))
        self._outstanding += 1
        d.addTimeout(self.config.timeout, self.reactor)

        def answered(value: Any) -> Any:
            self._outstanding -= 1
            self.metrics.duration.labels(name).observe(time.monotonic() - started)
            if self.state == DOWN_STATE:  # a timeout had said so; this connection answers
                self._up()
            return value

        def failed(failure: Failure) -> Failure:
            self._outstanding -= 1
            self.metrics.duration.labels(name).observe(time.monotonic() - started)
            return Failure(self._error(name, failure))

        return d.addCallbacks(answered, failed)

    def _error(self, name: str, failure: Failure) -> Exception:
        """The store error a failed command becomes (and the state it tells of)."""
        if failure.check(defer.TimeoutError, txredisapi.TimeoutError):
            self.metrics.errors.labels(name, "timeout").inc()
            why = f"Redis at {self.config.shown_url} did not answer within {self.config.timeout:g}s (--redis-timeout)"
            self._down(why)
            return StoreUnavailable(STORE, why)
        if failure.check(txredisapi.ConnectionError):
            self.metrics.errors.labels(name, "unavailable").inc()
            self._down(f"the connection to Redis at {self.config.shown_url} was lost; reconnecting")
            return StoreUnavailable(STORE, self._why_down())
        if failure.check(txredisapi.ResponseError):
            message = str(failure.value)
            if message.startswith(_TEMPORARY):
                self.metrics.errors.labels(name, "unavailable").inc()
                return StoreUnavailable(STORE, f"Redis answered {message!r}")
            self.metrics.errors.labels(name, "error").inc()
            log.error("Redis refused {command}: {message}", command=name, message=message)
            return StoreError(f"Redis refused the command ({message}); this is a bug in mcpd, please report it")
        self.metrics.errors.labels(name, "error").inc()
        log.failure("Redis command {command} failed", failure, command=name)
        return StoreError("the Redis command failed unexpectedly (see the server log)")

    # -- state ----------------------------------------------------------------------------------

    def _why_down(self) -> str:
        if self.state == REFUSED:
            return self.last_error or "Redis refused mcpd's login"
        if self.state == STOPPED:
            return "mcpd's Redis connection is stopped"
        why = self.last_error or f"no connection to Redis at {self.config.shown_url} yet"
        return f"{why}; mcpd reconnects by itself, try again in a few seconds (is redis-server running?)"

    def _up(self) -> None:
        self._renewal.answered()
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            _fire(d, True)
        if self.state in (OK, STOPPED):
            return
        log.info("Redis at {url} is reachable", url=self.config.shown_url)
        self.state = OK
        self.last_error = None

    def _down(self, why: str) -> None:
        if self.state in (REFUSED, STOPPED):
            return
        if self.state != DOWN_STATE:
            log.error("Redis at {url} is unavailable: {why}", url=self.config.shown_url, why=why)
        self.state = DOWN_STATE
        self.last_error = why

    def _lost(self) -> None:
        self._down(f"the connection to Redis at {self.config.shown_url} was lost")

    def _gave_up(self, factory: PoolFactory, why: str) -> None:
        """txredisapi stopped reconnecting ``factory``'s pool: its login was refused, or went
        unanswered (then a fresh pool follows, after the usual back-off)."""
        if factory is not self._factory or not self.running:
            return
        if not unanswered_login(why):
            self._refused(why)
            return
        self._down(
            f"Redis at {self.config.shown_url} did not complete mcpd's login ({why.removeprefix('Redis error: ')})"
        )
        self._renewal.after(factory)

    def _refused(self, why: str) -> None:
        """txredisapi gave up: the password or the database number was refused."""
        self.state = REFUSED
        self.last_error = (
            f"Redis at {self.config.shown_url} refused mcpd's login or database ({why.removeprefix('Redis error: ')}); "
            "fix REDIS_PASSWORD or --redis-url and restart mcpd"
        )
        log.critical("{why}", why=self.last_error)

    # -- IStore ---------------------------------------------------------------------------------

    def status(self) -> StoreStatus:
        """The state the latest call or check saw (no I/O)."""
        latency = self.last_check.latency if self.last_check is not None else None
        if self.state == OK:
            return StoreStatus(STORE, UP, f"Redis {self.server_version or ''}".strip(), latency)
        if self.state == STARTING:
            return StoreStatus(STORE, DOWN, f"connecting to Redis at {self.config.shown_url}", latency)
        return StoreStatus(STORE, DOWN, self._why_down(), latency)

    def check(self) -> Deferred[StoreStatus]:
        """PING, within ``--redis-timeout`` (and the server's version, once); never fails."""
        started = time.monotonic()
        d = self.execute("PING")
        if self.server_version is None:
            d.addCallback(lambda _: self.execute("INFO", "server")).addCallback(self._keep_version)

        def done(_value: Any) -> StoreStatus:
            return StoreStatus(STORE, UP, f"Redis {self.server_version or ''}".strip(), time.monotonic() - started)

        def failed(failure: Failure) -> StoreStatus:
            why = str(failure.value.detail) if failure.check(StoreUnavailable) else failure.getErrorMessage()
            return StoreStatus(STORE, DOWN, why, time.monotonic() - started)

        def keep(status: StoreStatus) -> StoreStatus:
            self.last_check = status
            return status

        return d.addCallbacks(done, failed).addCallback(keep)

    def _keep_version(self, info: str) -> None:
        for line in str(info).splitlines():
            if line.startswith("redis_version:"):
                self.server_version = line.partition(":")[2].strip()

    def collectors(self) -> list[Any]:
        return self.metrics.collectors()

    def describe(self) -> dict[str, Any]:
        """Redis' state for server.info: never its password."""
        described: dict[str, Any] = {
            "name": STORE,
            "backend": "redis",
            "url": self.config.shown_url,
            "state": self.state,
            "server_version": self.server_version,
            "connections": {"open": self.open_connections, "max": self.pool_size},
        }
        if self.state != OK and self.state != STARTING:
            described["error"] = self._why_down()
        if self.last_check is not None and self.last_check.latency is not None:
            described["latency_ms"] = round(self.last_check.latency * 1000, 3)
        return described


def _fire(d: Deferred[bool], value: bool) -> None:
    if not d.called:
        d.callback(value)
