# -*- test-case-name: tests.test_redis -*-
"""The Redis connection (mcpd.stores.redis) against a real ``redis-server``: its settings, the
password and database, TLS, health, and what happens while Redis is down, frozen or restarted."""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mcpd.config import ConfigError, resolve
from mcpd.daemon import read_secrets, redis_settings
from mcpd.interfaces import DOWN, UP, IStore, StoreUnavailable
from mcpd.stores.redis import RedisConfigError, RedisConnection, redis_config
from tests.clients import fetch
from tests.daemon import DaemonTestCase, call_server_info, modern_request, post
from tests.redis_service import PASSWORD, RedisServer, shared_redis, unique_prefix
from tests.test_tasks import WITH_TASKS


def settings(flags: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Any:
    return resolve(flags or {}, environ or {}, {})


class RedisConfigTests(SynchronousTestCase):
    """--redis-url and its companions: parsed, checked at start-up, the password never shown."""

    def test_url_parts(self) -> None:
        config = redis_config("redis://cache.internal:6380/3")
        self.assertEqual((config.host, config.port, config.db, config.tls), ("cache.internal", 6380, 3, False))
        self.assertEqual(redis_config("rediss://h").port, 6379)
        self.assertTrue(redis_config("rediss://h").tls)
        self.assertEqual(redis_config("redis://h?db=5").db, 5)
        self.assertEqual(redis_config("redis://[::1]:7000/0").shown_url, "redis://[::1]:7000/0")

    def test_password_from_the_environment_wins_and_is_never_shown(self) -> None:
        config = redis_config("redis://app:inurl@h/0", password="fromenv")
        self.assertEqual((config.username, config.password), ("app", "fromenv"))
        self.assertEqual(redis_config("redis://:inurl@h/0").password, "inurl")
        for shown in (config.shown_url, repr(config)):
            self.assertNotIn("fromenv", shown)
            self.assertNotIn("inurl", shown)
        self.assertNotIn("inurl", repr(settings({}, {"REDIS_URL": "redis://:inurl@h/0", "REDIS_PASSWORD": "pw"})))
        self.assertNotIn("'pw'", repr(settings({}, {"REDIS_URL": "redis://h/0", "REDIS_PASSWORD": "pw"})))

    def test_bad_urls_are_refused_with_the_setting_named(self) -> None:
        for url, words in (
            ("http://h", "redis:// or rediss://"),
            ("redis://", "name the host"),
            ("redis://h/zero", "database must be a number"),
            ("redis://h:notaport/0", "--redis-url"),
        ):
            with self.assertRaises((ConfigError, RedisConfigError)) as caught:
                redis_settings(settings({}, {"REDIS_URL": url}))
            self.assertIn(words, str(caught.exception))

    def test_password_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("from-the-file\n")
        config = redis_settings(read_secrets(settings({}, {"REDIS_URL": "redis://h/1", "REDIS_PASSWORD_FILE": path})))
        assert config is not None
        self.assertEqual(config.password, "from-the-file")
        with self.assertRaises(ConfigError) as caught:
            read_secrets(settings({}, {"REDIS_URL": "redis://h/1", "REDIS_PASSWORD_FILE": path + ".missing"}))
        self.assertIn("--redis-password-file", str(caught.exception))

    def test_prefix_refuses_glob_characters(self) -> None:
        with self.assertRaises(ConfigError):
            settings({}, {"REDIS_PREFIX": "app*"})

    def test_without_a_url_there_is_no_redis(self) -> None:
        self.assertIsNone(redis_settings(settings()))


def wait_for(condition: Any, timeout: float = 10.0) -> Deferred[None]:
    """Poll ``condition`` on the reactor until it holds (or fail after ``timeout``)."""
    deadline = time.monotonic() + timeout

    @inlineCallbacks
    def poll() -> Any:
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for a condition")
            yield deferLater(reactor, 0.02, lambda: None)

    return poll()


@inlineCallbacks
def answers_again(connection: RedisConnection, timeout: float = 10.0) -> Any:
    """Wait until Redis answers PING through ``connection`` (a call right after an outage may
    still meet a connection being dropped: it fails fast, the next one reconnects)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return (yield connection.execute("PING"))
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            yield deferLater(reactor, 0.05, lambda: None)


class RedisConnectionTests(TestCase):
    """The connection service against a real redis-server."""

    timeout = 60

    def connect(self, server: RedisServer, **config: Any) -> RedisConnection:
        connection = RedisConnection(redis_config(server.url_of(config.pop("db", 0)), **config), reactor)
        connection.startService()
        self.addCleanup(lambda: connection.stopService() if connection.running else None)
        return connection

    def own_server(self, **kwargs: Any) -> RedisServer:
        server = RedisServer(self.mktemp(), **kwargs).start()
        self.addCleanup(server.destroy)
        return server

    @inlineCallbacks
    def test_commands_health_and_description(self) -> Any:
        connection = self.connect(shared_redis(), db=2)
        self.assertTrue(IStore.providedBy(connection))
        yield wait_for(lambda: connection.open_connections > 0)
        key = connection.key("test", "hello")
        yield connection.execute("SET", key, "42")
        self.assertEqual((yield connection.execute("GET", key)), "42")  # text stays text
        self.assertEqual(shared_redis().cli("-n", "2", "GET", key), "42")
        status = yield connection.check()
        self.assertEqual(status.state, UP)
        self.assertGreater(status.latency, 0)
        self.assertIn("Redis 7", status.detail)
        described = connection.describe()
        self.assertEqual(described["url"], shared_redis().url_of(2))
        self.assertEqual(described["state"], "ok")
        names = {metric.name for collector in connection.collectors() for metric in collector.collect()}
        self.assertLessEqual({"mcp_redis_up", "mcp_redis_connections", "mcp_redis_command_duration_seconds"}, names)
        yield connection.execute("DEL", key)

    @inlineCallbacks
    def test_password(self) -> Any:
        server = self.own_server(password=PASSWORD)
        connection = self.connect(server, password=PASSWORD)
        yield wait_for(lambda: connection.open_connections > 0)
        self.assertEqual((yield connection.execute("PING")), "PONG")

    @inlineCallbacks
    def test_a_wrong_password_is_reported_not_retried_forever(self) -> Any:
        server = self.own_server(password=PASSWORD)
        connection = self.connect(server, password="wrong")
        yield wait_for(lambda: connection.state == "refused")
        status = yield connection.check()
        self.assertEqual(status.state, DOWN)
        self.assertIn("REDIS_PASSWORD", status.detail)
        self.assertNotIn("wrong", status.detail)
        failure = yield self.assertFailure(connection.execute("PING"), StoreUnavailable)
        self.assertIn("refused mcpd's login or database", str(failure))
        self.assertIn("restart mcpd", str(failure))

    @inlineCallbacks
    def test_tls(self) -> Any:
        server = self.own_server(tls=True)
        connection = self.connect(server, ca_file=str(server.tls_files.ca))
        yield wait_for(lambda: connection.open_connections > 0)
        self.assertEqual((yield connection.execute("PING")), "PONG")
        self.assertTrue(connection.describe()["url"].startswith("rediss://"))

    @inlineCallbacks
    def test_down_fails_at_once_and_reconnects_by_itself(self) -> Any:
        server = self.own_server()
        connection = self.connect(server)
        yield wait_for(lambda: connection.open_connections > 0)
        server.stop()
        yield wait_for(lambda: connection.open_connections == 0)
        started = time.monotonic()
        failure = yield self.assertFailure(connection.execute("PING"), StoreUnavailable)
        self.assertLess(time.monotonic() - started, 0.5)
        self.assertIn("reconnects by itself", str(failure))
        self.assertEqual((yield connection.check()).state, DOWN)
        server.start()
        yield wait_for(lambda: connection.open_connections > 0, timeout=10)
        self.assertEqual((yield connection.execute("PING")), "PONG")
        self.assertEqual((yield connection.check()).state, UP)

    @inlineCallbacks
    def test_a_frozen_server_times_out_instead_of_hanging(self) -> Any:
        server = self.own_server()
        connection = self.connect(server, timeout=0.3)
        yield wait_for(lambda: connection.open_connections > 0)
        server.freeze()
        try:
            started = time.monotonic()
            failure = yield self.assertFailure(connection.execute("PING"), StoreUnavailable)
            self.assertLess(time.monotonic() - started, 2.0)
            self.assertIn("did not answer within 0.3s", str(failure))
        finally:
            server.thaw()
        self.assertEqual((yield answers_again(connection)), "PONG")

    @inlineCallbacks
    def stall_past_the_timeout(self, server: RedisServer, connection: RedisConnection) -> Any:
        """Freeze ``server`` until ``connection``'s pool, reconnecting, gets no answer to its login
        (AUTH or SELECT) within the timeout; then thaw it."""
        yield wait_for(lambda: connection.open_connections > 0)
        server.freeze()
        try:
            deadline = time.monotonic() + 15
            while "mcpd's login" not in str(connection.last_error):
                self.assertLess(time.monotonic(), deadline, f"no login went unanswered: {connection.last_error}")
                connection.execute("PING").addErrback(lambda _failure: None)
                yield deferLater(reactor, 0.1, lambda: None)
            self.assertEqual(connection.state, "down", connection.last_error)
            self.assertIn("did not complete mcpd's login", connection.status().detail)
        finally:
            server.thaw()

    @inlineCallbacks
    def test_a_stall_through_the_login_is_no_refusal(self) -> Any:
        """A stall past --redis-timeout meets the pool's reconnecting: its SELECT (or AUTH) goes
        unanswered, and txredisapi stops that pool; a fresh one serves once Redis answers again."""
        for password in (None, PASSWORD):
            server = self.own_server(password=password)
            connection = self.connect(server, db=3, timeout=0.3, password=password)
            yield self.stall_past_the_timeout(server, connection)
            self.assertEqual((yield answers_again(connection)), "PONG")
            self.assertEqual(connection.state, "ok")
            key = connection.key("after", "stall")
            yield connection.execute("SET", key, "1")
            self.assertEqual(server.cli("-n", "3", "GET", key), "1")  # the fresh pool's database
            yield connection.stopService()

    @inlineCallbacks
    def test_a_login_cut_by_a_crash_is_no_refusal(self) -> Any:
        """Redis crashing while the pool's login waits for its answer (the connection lost
        before AUTH is answered) is no refusal either: the pool serves once Redis is back."""
        server = self.own_server(password=PASSWORD)
        connection = self.connect(server, password=PASSWORD, timeout=5.0)
        yield wait_for(lambda: connection.open_connections > 0)
        server.stop()
        yield wait_for(lambda: connection.open_connections == 0)
        yield deferLater(reactor, 2.5, lambda: None)  # reconnecting, backed off to 2 s
        server.start()
        server.freeze()  # connections accepted, their AUTH never answered
        yield deferLater(reactor, 3.5, lambda: None)  # every slot retried: its login waits
        server.kill()
        yield wait_for(lambda: "mcpd's login" in str(connection.last_error))
        self.assertEqual(connection.state, "down", connection.last_error)
        self.assertIn("Lost connection", connection.last_error)
        server.start()
        self.assertEqual((yield answers_again(connection)), "PONG")
        self.assertEqual(connection.state, "ok")

    @inlineCallbacks
    def test_a_missing_database_or_password_is_reported_not_retried_forever(self) -> Any:
        server = self.own_server(password=PASSWORD)
        for config in ({"db": 99, "password": PASSWORD}, {"db": 0}):  # ERR DB index..., NOAUTH
            connection = self.connect(server, **config)
            yield wait_for(lambda connection=connection: connection.state == "refused")
            status = yield connection.check()
            self.assertIn("refused mcpd's login or database", status.detail)
            self.assertIn("restart mcpd", status.detail)
            yield connection.stopService()

    @inlineCallbacks
    def test_down_at_start_up(self) -> Any:
        server = self.own_server()
        server.stop()
        connection = self.connect(server, timeout=0.3)
        self.assertFalse((yield connection.connected()))  # readiness waits no longer than this
        status = yield connection.check()
        self.assertEqual(status.state, DOWN)
        self.assertIn("Redis at redis://127.0.0.1", status.detail)
        server.start()
        yield wait_for(lambda: connection.open_connections > 0)
        self.assertTrue((yield connection.connected()))
        self.assertEqual((yield connection.check()).state, UP)


# -- the daemon with --redis-url ----------------------------------------------------------------


def _get_json(port: int, path: str) -> tuple[int, Any]:
    status, _headers, body = fetch(port, "GET", path)
    return status, json.loads(body) if body.startswith(b"{") else body.decode()


def _cache_get(port: int, key: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    body, routing = modern_request(1, "tools/call", {"name": "cache.get", "arguments": {"key": key}})
    status, _head, answer = post(port, body, {**routing, **(headers or {})})
    return status, json.loads(answer) if answer.startswith(b"{") else answer.decode()


def _until(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for a condition")
        time.sleep(0.1)


class RedisDaemonTests(DaemonTestCase):
    """Real daemons with --redis-url: /health, /metrics and server.info show Redis; a rate limit
    holds across two instances; Redis gone means clear errors, and its return full service."""

    timeout = 120

    def test_health_metrics_server_info_and_an_outage(self) -> Deferred[None]:
        server = RedisServer(self.workdir / "redis", password=PASSWORD).start()
        self.addCleanup(server.destroy)
        daemon = self.start_daemon(
            "--redis-url",
            server.url,
            "--toolsets",
            "server,cache",
            env={"REDIS_PASSWORD": PASSWORD},
            fixture_pack=False,
        )
        port = daemon.port
        assert port is not None

        def check() -> None:
            status, health = _get_json(port, "/health")
            self.assertEqual((status, health["checks"]["redis"]["status"]), (200, "ok"), health)
            self.assertIn("Redis 7", health["checks"]["redis"]["detail"])
            _status, metrics = _get_json(port, "/metrics")
            self.assertIn("mcp_redis_up 1.0", metrics)
            self.assertIn("mcp_redis_command_duration_seconds_bucket", metrics)
            stores = {store["name"]: store for store in call_server_info(port)["stores"]}
            self.assertEqual(stores["redis"]["url"], server.url)
            self.assertEqual(stores["redis"]["state"], "ok")
            status, answer = _cache_get(port, "k")
            self.assertEqual(answer["result"]["structuredContent"]["found"], False)

            server.stop()
            # Clear errors while it is gone, and no hang: /health says which store and why ...
            started = time.monotonic()
            status, health = _get_json(port, "/health")
            self.assertEqual((status, health["status"]), (503, "unhealthy"))
            self.assertEqual(health["checks"]["redis"]["status"], "down")
            self.assertIn("reconnects by itself", health["checks"]["redis"]["detail"])
            # ... a tool says the store is unavailable for now ...
            status, answer = _cache_get(port, "k")
            result = answer["result"]
            self.assertTrue(result["isError"])
            self.assertIn("redis is unavailable (temporary)", result["content"][0]["text"])
            # ... and a task request too, as a JSON-RPC error with the same words.
            body, routing = modern_request(2, "tasks/get", {"taskId": "t1"})
            body["params"]["_meta"].update(WITH_TASKS)
            _status, _head, answer = post(port, body, {**routing, "mcp-name": "t1"})
            self.assertIn("redis is unavailable (temporary)", json.loads(answer)["error"]["message"])
            self.assertLess(time.monotonic() - started, 5.0)
            _status, metrics = _get_json(port, "/metrics")
            self.assertIn("mcp_redis_up 0.0", metrics)
            self.assertIn('mcp_redis_errors_total{command="EVAL",kind="unavailable"}', metrics)

            # ... and once it is back, full service without a restart.
            server.start()
            _until(lambda: _get_json(port, "/health")[0] == 200)
            _until(
                lambda: "result" in _cache_get(port, "k")[1] and not _cache_get(port, "k")[1]["result"].get("isError")
            )
            for text in (daemon.log(), daemon.log("stdout")):
                self.assertNotIn(PASSWORD, text)

        return self.in_thread(check)

    def test_a_rate_limit_holds_across_two_instances(self) -> Deferred[None]:
        keys = self.workdir / "keys"
        keys.write_text("alice:alice-key\n")
        prefix = unique_prefix()
        args = ("--api-key-file", str(keys), "--rate-limit", "10", "--rate-window", "600", "--toolsets", "server")
        redis = ("--redis-url", shared_redis().url, "--redis-prefix", prefix)
        ports = [self.start_daemon(*args, *redis, name=name, fixture_pack=False).port for name in ("one", "two")]
        headers = {"Authorization": "Bearer alice-key"}

        def check() -> None:
            served = limited = 0
            for i in range(20):  # twice the limit, alternating between the instances
                body, routing = modern_request(i, "tools/list", {})
                status, _head, answer = post(ports[i % 2], body, {**routing, **headers})  # type: ignore[arg-type]
                served += status == 200 and "result" in json.loads(answer)
                limited += status == 429
            self.assertEqual((served, limited), (10, 10))

        return self.in_thread(check)


class RedisServerFixtureTests(SynchronousTestCase):
    """The fixture itself: a persistent server keeps what it acknowledged across a kill."""

    def test_persistent_survives_a_kill_and_restart(self) -> None:
        server = RedisServer(self.mktemp(), persistent=True).start()
        self.addCleanup(server.destroy)
        server.cli("SET", "acknowledged", "yes")
        server.kill()
        server.start()
        self.assertEqual(server.cli("GET", "acknowledged"), "yes")
        plain = RedisServer(self.mktemp()).start()
        self.addCleanup(plain.destroy)
        plain.cli("SET", "k", "v")
        plain.restart()
        self.assertEqual(plain.cli("GET", "k"), "")
