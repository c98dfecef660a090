"""Three mcpd instances behind nginx, sharing Redis and MariaDB, acting as one server.

Debian's nginx-light runs the shipped contrib/nginx/mcpd.conf with its one upstream server
replaced by the three instances (round-robin, no affinity) and an access log naming the
instance that served each request. Every tool of `tests.cluster_pack` answers with the pid of
the process that served it, so the tests see their requests spread over the instances:

- official SDK clients in legacy sessions (Streamable HTTP with its GET stream, HTTP+SSE) list
  and call tools, get progress, answer an elicitation and hear a list change made elsewhere;
- a task made through one instance is polled and cancelled through the others;
- an instance killed with ``kill -9`` mid-session: the client's next requests, and its GET
  stream (resumed with ``Last-Event-ID``), are served by the others;
- Redis restarted: clear errors while it is gone, full service after, no acknowledged task lost;
- an instance whose embedded stores cannot be shared refuses to start, naming the reason.

Needs nginx-light, redis-server and MariaDB (tests/install-deps.sh): locally the test skips
without them, under ``CI=true`` it fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client, types
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from mcpd.cluster.instances import TTL as INSTANCE_TTL
from mcpd.cluster.relay import ORPHANED, TaskRelay
from mcpd.protocol.tasks import TASKS_EXTENSION
from mcpd.protocol.versions import META_CLIENT_CAPABILITIES, META_PROTOCOL_VERSION
from tests.daemon import (
    Daemon,
    DaemonStartError,
    DaemonTestMixin,
    free_port,
    port_answers,
    read_events,
    run_anyio,
    start_daemon,
)
from tests.redis_service import RedisServer, require_redis
from tests.services import require_mariadb, shared_mariadb
from tests.test_nginx import MAIN_CONF, NGINX, proxy_conf
from tests.tls_certs import make_tls_files

KEY = "cluster-test-key-0123456789abcdef"
OTHER_KEY = "cluster-other-key-0123456789abcdef"
MODERN = "2026-07-28"
WITH_TASKS = {META_CLIENT_CAPABILITIES: {"elicitation": {}, "extensions": {TASKS_EXTENSION: {}}}}
# Requests per key per hour: refill is negligible while a test runs.
RATE_LIMIT = 120
CLIENT_TIMEOUT = 60.0
# nginx's access log: which instance (upstream) served each request of which session.
LOG_FORMAT = "log_format cluster '$request_method $uri $status $upstream_addr sid=$http_mcp_session_id';\n"


def require_machine() -> None:
    require_redis()
    require_mariadb()
    if not os.path.exists(NGINX):
        why = "no nginx: apt-get install nginx-light (tests/install-deps.sh)"
        if os.environ.get("CI") == "true":
            raise AssertionError(f"CI=true but {why}")
        raise SkipTest(why)


def cluster_conf(upstreams: list[int], http_port: int, https_port: int, cert: Path, key: Path) -> str:
    """The shipped nginx file, its one upstream server replaced by ``upstreams``."""
    text = proxy_conf(upstreams[0], http_port, https_port, cert, key)
    servers = "".join(f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=30s;\n" for port in upstreams)
    return text.replace(f"    server 127.0.0.1:{upstreams[0]};\n", servers, 1)


async def on_elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"answer": "forty-two"})


class ClusterTests(DaemonTestMixin, TestCase):
    timeout = 300

    def setUp(self) -> None:
        require_machine()
        self.redis = RedisServer(self.workdir / "redis").start()
        self.addCleanup(self.redis.destroy)
        mariadb = shared_mariadb()
        self.db_url = mariadb.url(mariadb.new_database(), password=True)
        keys = self.workdir / "keys.txt"
        keys.write_text(f"alice:{KEY}\nbob:{OTHER_KEY}\n", encoding="utf-8")
        self.keys = keys
        self.instances: dict[str, Daemon] = {}
        for name in ("a", "b", "c"):
            self.instances[name] = self.start_instance(name)
        self.https_port, self.ca = self.start_nginx([d.port for d in self.instances.values() if d.port])
        self.url = f"https://127.0.0.1:{self.https_port}"
        for daemon in self.instances.values():
            # Each instance answers on its own (and its trace has something to validate).
            assert daemon.port is not None
            status, answer = self.post_modern(
                daemon.port, "tools/call", {"name": "cluster.where", "arguments": {}}, "cluster.where"
            )
            self.assertEqual(answer["result"]["structuredContent"]["pid"], daemon.process.pid, answer)

    # -- the cluster ----------------------------------------------------------------------------

    def instance_args(self) -> list[str]:
        return [
            "--tool-pack",
            "tests.cluster_pack",
            "--redis-url",
            self.redis.url,
            "--db-url",
            self.db_url,
            "--api-key-file",
            str(self.keys),
            "--trusted-proxy",
            "127.0.0.1",
            "--state-key",
            "cluster-test-state-key-0123456789abcdef",
            "--rate-limit",
            str(RATE_LIMIT),
            "--rate-window",
            "3600",
            "--session-timeout",
            "120",
            "--sse-keepalive",
            "1",
        ]

    def start_instance(self, name: str, port: int | None = None) -> Daemon:
        daemon = self.start_daemon(*self.instance_args(), name=name, timeout=30.0, port=port)
        return daemon

    def start_nginx(self, upstreams: list[int]) -> tuple[int, Path]:
        tls = make_tls_files(self.workdir / "certs", addresses=("127.0.0.1",))
        fullchain = self.workdir / "certs" / "fullchain.pem"
        fullchain.write_bytes(tls.cert.read_bytes() + tls.chain.read_bytes())
        http_port, https_port = free_port(), free_port()
        conf = cluster_conf(upstreams, http_port, https_port, fullchain, tls.key)
        (self.workdir / "mcpd.conf").write_text(conf, encoding="utf-8")
        main = MAIN_CONF.format(dir=self.workdir).replace(
            f"access_log {self.workdir}/nginx-access.log;",
            LOG_FORMAT + f"    access_log {self.workdir}/nginx-access.log cluster;",
        )
        if os.geteuid() != 0:
            main = main.replace("user nobody nogroup;\n", "")
        (self.workdir / "nginx.conf").write_text(main, encoding="utf-8")
        for name in ("body", "proxy"):
            (self.workdir / name).mkdir(exist_ok=True)
        argv = [NGINX, "-p", str(self.workdir), "-c", str(self.workdir / "nginx.conf")]
        checked = subprocess.run([*argv, "-t"], capture_output=True, text=True)
        self.assertEqual(checked.returncode, 0, checked.stderr)
        log = open(self.workdir / "nginx.stderr.log", "wb")  # noqa: SIM115
        self.addCleanup(log.close)
        process = subprocess.Popen(argv, stdout=log, stderr=log)

        def stop() -> None:
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

        self.addCleanup(stop)
        deadline = time.monotonic() + 10
        while not port_answers(https_port) and time.monotonic() < deadline:
            self.assertIsNone(process.poll(), (self.workdir / "nginx-error.log").read_text())
            time.sleep(0.05)
        return https_port, tls.ca

    def served_by(self, session_id: str) -> list[str]:
        """The upstream (instance address) of each request of a session, in order."""
        lines = (self.workdir / "nginx-access.log").read_text(encoding="utf-8").splitlines()
        return [line.split()[3] for line in lines if line.endswith(f"sid={session_id}")]

    def pids(self) -> dict[int, str]:
        return {daemon.process.pid: name for name, daemon in self.instances.items()}

    def in_thread(self, check: Any) -> Deferred[Any]:
        return deferToThread(check)

    def http_factory(self) -> Any:
        context = ssl.create_default_context(cafile=str(self.ca))

        def factory(headers: Any = None, timeout: Any = None, auth: Any = None) -> httpx2.AsyncClient:
            return httpx2.AsyncClient(
                headers={**(headers or {}), "Authorization": f"Bearer {KEY}"},
                timeout=timeout,
                auth=auth,
                verify=context,
            )

        return factory

    # -- raw requests -------------------------------------------------------------------------

    def post_modern(
        self, port: int, method: str, params: dict[str, Any], name: str | None = None, key: str = KEY
    ) -> tuple[int, Any]:
        """One 2026-07-28 request straight to an instance; its status and message."""
        params = {**params, "_meta": {META_PROTOCOL_VERSION: MODERN, **WITH_TASKS}}
        headers = {
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": MODERN,
            "mcp-method": method,
            "authorization": f"Bearer {key}",
        }
        if name is not None:
            headers["mcp-name"] = name
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/mcp", data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                status, kind, text = response.status, response.headers.get("content-type", ""), response.read().decode()
        except urllib.error.HTTPError as e:
            status, kind, text = e.code, e.headers.get("content-type", ""), e.read().decode()
        if kind.startswith("text/event-stream"):
            text = [line[5:] for line in text.splitlines() if line.startswith("data:") and line[5:].strip()][-1]
        return status, json.loads(text)

    # -- tests ----------------------------------------------------------------------------------

    def test_streamable_session_across_instances(self) -> Deferred[None]:
        """A Streamable HTTP session (with its GET stream) whose requests land on every instance:
        tools, progress, an elicitation whose answer lands elsewhere, a change made elsewhere."""
        outcome: dict[str, Any] = {}

        async def main() -> None:
            progress: list[float] = []
            changed = anyio.Event()

            async def on_progress(done: float, total: float | None, message: str | None) -> None:
                progress.append(done)

            async def on_message(message: Any) -> None:
                if (
                    isinstance(message, types.ServerNotification)
                    and isinstance(
                        message.root if hasattr(message, "root") else message, types.ToolListChangedNotification
                    )
                    or isinstance(message, types.ToolListChangedNotification)
                ):
                    changed.set()

            factory = self.http_factory()
            with anyio.fail_after(CLIENT_TIMEOUT):
                async with factory() as http:
                    target = streamable_http_client(f"{self.url}/mcp", http_client=http)
                    async with Client(
                        target, mode="legacy", elicitation_callback=on_elicit, message_handler=on_message
                    ) as client:
                        outcome["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
                        outcome["pids"] = [
                            (await client.call_tool("cluster.where", {})).structured_content["pid"]  # type: ignore[index]
                            for _ in range(6)
                        ]
                        slow = await client.call_tool(
                            "tests.progress", {"steps": 3, "delay": 0.05}, progress_callback=on_progress
                        )
                        outcome["progress"] = (slow.is_error, progress)
                        asked = await client.call_tool("cluster.ask", {"question": "the answer?"})
                        outcome["asked"] = asked.structured_content
                        # Let the GET stream open (the SDK opens it in the background).
                        await anyio.sleep(1.0)
                        announced = await client.call_tool("cluster.announce", {})
                        outcome["announced"] = announced.structured_content
                        with anyio.fail_after(10):
                            await changed.wait()
                        outcome["session"] = client.session_id if hasattr(client, "session_id") else None

        def check(_: object) -> None:
            pids = self.pids()
            self.assertIn("cluster.where", outcome["tools"])
            served = {pids[pid] for pid in outcome["pids"]}
            self.assertEqual(served, {"a", "b", "c"}, f"six calls, round-robin: {outcome['pids']}")
            self.assertEqual(outcome["progress"], (False, [1, 2, 3]))
            self.assertEqual(outcome["asked"]["content"], {"answer": "forty-two"})
            self.assertEqual(outcome["asked"]["action"], "accept")
            log = (self.workdir / "nginx-access.log").read_text(encoding="utf-8")
            sessions = set(re.findall(r"sid=([A-Za-z0-9_-]{20,})", log))
            self.assertEqual(len(sessions), 1, log)
            upstreams = self.served_by(sessions.pop())
            self.assertEqual(len(set(upstreams)), 3, upstreams)

        return deferToThread(run_anyio, main).addCallback(check).addErrback(self._explain)

    def test_sse_session_across_instances(self) -> Deferred[None]:
        """An HTTP+SSE session: its stream on one instance, its POSTs forwarded from the others."""
        outcome: dict[str, Any] = {}

        async def main() -> None:
            progress: list[float] = []

            async def on_progress(done: float, total: float | None, message: str | None) -> None:
                progress.append(done)

            with anyio.fail_after(CLIENT_TIMEOUT):
                target = sse_client(f"{self.url}/sse", httpx_client_factory=self.http_factory())
                async with Client(target, mode="legacy", elicitation_callback=on_elicit) as client:
                    outcome["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
                    outcome["pids"] = [
                        (await client.call_tool("cluster.where", {})).structured_content["pid"]  # type: ignore[index]
                        for _ in range(4)
                    ]
                    slow = await client.call_tool(
                        "tests.progress", {"steps": 3, "delay": 0.05}, progress_callback=on_progress
                    )
                    outcome["progress"] = (slow.is_error, progress)
                    asked = await client.call_tool("cluster.ask", {"question": "the answer?"})
                    outcome["asked"] = asked.structured_content

        def check(_: object) -> None:
            self.assertIn("cluster.ask", outcome["tools"])
            # The session's work runs where its stream is: one instance.
            self.assertEqual(len(set(outcome["pids"])), 1, outcome["pids"])
            self.assertEqual(outcome["progress"], (False, [1, 2, 3]))
            self.assertEqual(outcome["asked"]["content"], {"answer": "forty-two"})
            log = (self.workdir / "nginx-access.log").read_text(encoding="utf-8").splitlines()
            posts = {line.split()[3] for line in log if line.startswith("POST /messages/")}
            self.assertEqual(len(posts), 3, f"the POSTs landed on every instance: {log}")

        return deferToThread(run_anyio, main).addCallback(check).addErrback(self._explain)

    @inlineCallbacks
    def test_task_across_instances(self) -> Any:
        """A task made through one instance, polled and cancelled through the others."""
        a, b, c = (self.instances[name].port for name in "abc")
        assert a and b and c
        status, created = yield self.in_thread(
            lambda: self.post_modern(
                a, "tools/call", {"name": "cluster.wait", "arguments": {"label": "t1"}}, "cluster.wait"
            )
        )
        self.assertEqual(status, 200, created)
        task_id = created["result"]["taskId"]
        status, polled = yield self.in_thread(lambda: self.post_modern(b, "tasks/get", {"taskId": task_id}, task_id))
        self.assertEqual((status, polled["result"]["status"]), (200, "working"), polled)
        status, cancelled = yield self.in_thread(
            lambda: self.post_modern(c, "tasks/cancel", {"taskId": task_id}, task_id)
        )
        self.assertEqual(status, 200, cancelled)
        self.assertNotIn("error", cancelled)
        for port in (a, b, c):
            status, polled = yield self.in_thread(
                lambda port=port: self.post_modern(port, "tasks/get", {"taskId": task_id}, task_id)
            )
            self.assertEqual(polled["result"]["status"], "cancelled", polled)
        pid_a = self.instances["a"].process.pid
        events = read_events(self.events)
        # The work ran on A and was cancelled there, though the cancel landed on C.
        self.assertIn(f"started cluster.wait@{pid_a} t1", events)
        self.assertIn(f"cancelled cluster.wait@{pid_a} t1", events)

    @inlineCallbacks
    def test_task_of_a_killed_instance(self) -> Any:
        """The instance running tasks is killed (``kill -9``): once its registry entry has
        expired, its tasks are failed ("the instance running this task stopped") on every
        instance, without anyone cancelling them, and a legacy tasks/result blocked on another
        instance gets that error instead of waiting for the TTL."""
        a, b, c = (self.instances[name].port for name in "abc")
        assert a and b and c
        call = {"name": "cluster.wait", "arguments": {"label": "k1"}}
        status, created = yield self.in_thread(lambda: self.post_modern(a, "tools/call", call, "cluster.wait"))
        task_id = created["result"]["taskId"]
        session = yield self.in_thread(lambda: self.open_session(a))
        legacy = {"name": "cluster.wait", "arguments": {"label": "k2"}, "task": {"ttl": 600_000}}
        status, made = yield self.in_thread(lambda: self.legacy_call(a, session, "tools/call", legacy))
        legacy_id = made["result"]["task"]["taskId"]
        status, polled = yield self.in_thread(lambda: self.post_modern(b, "tasks/get", {"taskId": task_id}, task_id))
        self.assertEqual(polled["result"]["status"], "working", polled)
        limit = INSTANCE_TTL + 2 * TaskRelay.SWEEP + 10
        awaited = self.in_thread(
            lambda: self.legacy_request(b, session, "tasks/result", {"taskId": legacy_id}, timeout=limit + 10)
        )
        self.instances["a"].process.send_signal(signal.SIGKILL)
        yield self.in_thread(lambda: self.instances["a"].process.wait(10))
        killed = time.monotonic()
        status, result, _headers = yield awaited
        self.assertEqual(result["error"]["message"], ORPHANED, result)
        self.assertLess(time.monotonic() - killed, limit)
        for port in (b, c):
            polled = yield self.in_thread(lambda port=port: self.wait_status(port, task_id, "failed", timeout=limit))
            self.assertEqual(polled["statusMessage"], ORPHANED, polled)
            self.assertEqual(polled["error"]["message"], ORPHANED, polled)
        # A cancel now: the task has ended (an ack, idempotent).
        status, cancelled = yield self.in_thread(
            lambda: self.post_modern(c, "tasks/cancel", {"taskId": task_id}, task_id)
        )
        self.assertNotIn("error", cancelled, cancelled)

    @inlineCallbacks
    def test_task_input_across_instances(self) -> Any:
        """A task asking for input on one instance, seen waiting on another, answered
        (tasks/update) through a third."""
        a, b, c = (self.instances[name].port for name in "abc")
        assert a and b and c
        call = {"name": "cluster.confirm", "arguments": {}}
        status, created = yield self.in_thread(lambda: self.post_modern(a, "tools/call", call, "cluster.confirm"))
        task_id = created["result"]["taskId"]
        waiting = yield self.in_thread(lambda: self.wait_status(b, task_id, "input_required"))
        self.assertIn("confirm", waiting["inputRequests"], waiting)
        answer = {"confirm": {"action": "accept", "content": {"confirm": True}}}
        status, updated = yield self.in_thread(
            lambda: self.post_modern(c, "tasks/update", {"taskId": task_id, "inputResponses": answer}, task_id)
        )
        self.assertNotIn("error", updated, updated)
        done = yield self.in_thread(lambda: self.wait_status(b, task_id, "completed"))
        result = done["result"]["structuredContent"]
        self.assertEqual(result["pid"], self.instances["a"].process.pid)
        self.assertEqual((result["action"], result["content"]), ("accept", {"confirm": True}))

    @inlineCallbacks
    def test_legacy_task_result_across_instances(self) -> Any:
        """2025-11-25: a task made in a session on one instance; tasks/result asked on another
        waits for it and answers its result, tasks/list on a third lists it."""
        a, b, c = (self.instances[name].port for name in "abc")
        assert a and b and c
        session = yield self.in_thread(lambda: self.open_session(a))
        call = {"name": "cluster.sleep", "arguments": {"seconds": 1.5}, "task": {"ttl": 60000}}
        status, created = yield self.in_thread(lambda: self.legacy_call(a, session, "tools/call", call))
        self.assertEqual(status, 200, created)
        task_id = created["result"]["task"]["taskId"]
        status, result = yield self.in_thread(lambda: self.legacy_call(b, session, "tasks/result", {"taskId": task_id}))
        self.assertEqual(result["result"]["structuredContent"]["pid"], self.instances["a"].process.pid, result)
        status, listed = yield self.in_thread(lambda: self.legacy_call(c, session, "tasks/list", {}))
        self.assertEqual([t["taskId"] for t in listed["result"]["tasks"]], [task_id], listed)
        self.assertEqual(listed["result"]["tasks"][0]["status"], "completed")

    def open_session(self, port: int) -> str:
        """A legacy (2025-11-25) session opened on ``port``; its id."""
        params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
        status, _answer, headers = self.legacy_request(port, None, "initialize", params)
        session = headers["mcp-session-id"]
        self.legacy_request(port, session, "notifications/initialized", None)
        return session

    def legacy_call(self, port: int, session: str, method: str, params: dict[str, Any]) -> tuple[int, Any]:
        status, answer, _headers = self.legacy_request(port, session, method, params)
        return status, answer

    def legacy_request(
        self, port: int, session: str | None, method: str, params: Any, timeout: float = 20.0
    ) -> tuple[int, Any, Any]:
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            body.update(id=1, params=params)
        headers = {
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "authorization": f"Bearer {KEY}",
        }
        if session is not None:
            headers["mcp-session-id"] = session
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/mcp", data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
            kind = response.headers.get("content-type", "")
            if kind.startswith("text/event-stream"):
                text = [line[5:] for line in text.splitlines() if line.startswith("data:") and line[5:].strip()][-1]
            return response.status, json.loads(text) if text else None, response.headers

    def wait_status(self, port: int, task_id: str, status: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            polled = self.wait_task(port, task_id)
            if polled.get("status") == status or time.monotonic() > deadline:
                self.assertEqual(polled.get("status"), status, polled)
                return polled
            time.sleep(0.1)

    def test_listen_across_instances(self) -> Deferred[None]:
        """A 2026-07-28 subscriptions/listen stream on one instance hears a list change made
        on another."""
        a, b = self.instances["a"].port, self.instances["b"].port
        assert a and b

        def listen() -> list[str]:
            import http.client

            body = {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "subscriptions/listen",
                "params": {
                    "notifications": {"toolsListChanged": True},
                    "_meta": {META_PROTOCOL_VERSION: MODERN, **WITH_TASKS},
                },
            }
            headers = {
                "content-type": "application/json",
                "accept": "application/json, text/event-stream",
                "mcp-protocol-version": MODERN,
                "mcp-method": "subscriptions/listen",
                "authorization": f"Bearer {KEY}",
            }
            connection = http.client.HTTPConnection("127.0.0.1", a, timeout=15)
            connection.request("POST", "/mcp", json.dumps(body), headers)
            response = connection.getresponse()
            seen: list[str] = []
            try:
                while True:
                    line = response.fp.readline().decode()
                    if not line:
                        return seen
                    if line.startswith("data:") and "method" in line:
                        method = json.loads(line[5:])["method"]
                        seen.append(method)
                        if method == "notifications/subscriptions/acknowledged":
                            status, _ = self.post_modern(
                                b, "tools/call", {"name": "cluster.announce", "arguments": {}}, "cluster.announce"
                            )
                            assert status == 200
                        if method == "notifications/tools/list_changed":
                            return seen
            finally:
                connection.close()

        def check(seen: list[str]) -> None:
            self.assertEqual(seen, ["notifications/subscriptions/acknowledged", "notifications/tools/list_changed"])

        return self.in_thread(listen).addCallback(check)

    @inlineCallbacks
    def test_session_state_across_instances(self) -> Any:
        """A session opened on A with its GET stream on B. resources/subscribe and
        logging/setLevel sent through C hold after C is killed: B filters a tool's log messages at
        C's level, and an update made on A reaches the GET stream on B. A second GET, on A, is
        refused as on one instance (409). (The three outcomes are compared at once, so a failure
        shows each.)"""
        a, b, c = (self.instances[name].port for name in "abc")
        assert a and b and c
        session = yield self.in_thread(lambda: self.open_session(a))
        stream = yield self.in_thread(lambda: self.open_get(b, session))
        self.addCleanup(stream[0].close)
        self.assertEqual(stream[1].status, 200)
        for method, params in (
            ("resources/subscribe", {"uri": "memo://shared"}),
            ("logging/setLevel", {"level": "error"}),
        ):
            status, answer = yield self.in_thread(lambda m=method, p=params: self.legacy_call(c, session, m, p))
            self.assertEqual((status, answer.get("result")), (200, {}), answer)
        self.instances["c"].process.send_signal(signal.SIGKILL)
        yield self.in_thread(lambda: self.instances["c"].process.wait(10))

        said = yield self.in_thread(
            lambda: self.raw_post(b, session, "tools/call", {"name": "cluster.say", "arguments": {}})
        )
        logged = [m["params"]["data"] for m in said if m.get("method") == "notifications/message"]
        status, _touched = yield self.in_thread(
            lambda: self.legacy_call(
                a, session, "tools/call", {"name": "cluster.touch", "arguments": {"uri": "memo://shared"}}
            )
        )
        self.assertEqual(status, 200)

        def updated() -> Any:
            try:
                return self.read_until(stream[1], "notifications/resources/updated")[-1]["params"]["uri"]
            except AssertionError:
                return None

        uri = yield self.in_thread(updated)
        second = yield self.in_thread(lambda: self.open_get(a, session))
        self.addCleanup(second[0].close)  # (a stream when it is not refused: never read its body)
        self.assertEqual((logged, uri, second[1].status), (["loud"], "memo://shared", 409), said)

    @inlineCallbacks
    def test_listen_for_a_task_on_another_instance(self) -> Any:
        """A 2026-07-28 subscriptions/listen on B naming the caller's task running on A follows
        it: the acknowledgement honours the task id, and its cancellation (through C) is heard."""
        a, b, c = (self.instances[name].port for name in "abc")
        assert a and b and c
        call = {"name": "cluster.wait", "arguments": {"label": "listened"}}
        status, created = yield self.in_thread(lambda: self.post_modern(a, "tools/call", call, "cluster.wait"))
        task_id = created["result"]["taskId"]

        def listen() -> list[dict[str, Any]]:
            import http.client

            body = {
                "jsonrpc": "2.0",
                "id": 9,
                "method": "subscriptions/listen",
                "params": {
                    "notifications": {"taskIds": [task_id]},
                    "_meta": {META_PROTOCOL_VERSION: MODERN, **WITH_TASKS},
                },
            }
            headers = {
                "content-type": "application/json",
                "accept": "application/json, text/event-stream",
                "mcp-protocol-version": MODERN,
                "mcp-method": "subscriptions/listen",
                "authorization": f"Bearer {KEY}",
            }
            connection = http.client.HTTPConnection("127.0.0.1", b, timeout=20)
            connection.request("POST", "/mcp", json.dumps(body), headers)
            response = connection.getresponse()
            seen: list[dict[str, Any]] = []
            deadline = time.monotonic() + 20
            try:
                while time.monotonic() < deadline:
                    line = response.fp.readline().decode()
                    if not line:
                        return seen
                    if line.startswith("data:") and "method" in line:
                        message = json.loads(line[5:])
                        seen.append(message)
                        if message["method"] == "notifications/subscriptions/acknowledged":
                            self.post_modern(c, "tasks/cancel", {"taskId": task_id}, task_id)
                        if message["method"] == "notifications/tasks":
                            return seen
                return seen
            finally:
                connection.close()

        seen = yield self.in_thread(listen)
        self.assertEqual(seen[0]["params"]["notifications"].get("taskIds"), [task_id], seen)
        self.assertEqual(seen[-1]["method"], "notifications/tasks", seen)
        self.assertEqual((seen[-1]["params"]["taskId"], seen[-1]["params"]["status"]), (task_id, "cancelled"), seen)

    def open_get(self, port: int, session: str) -> tuple[Any, Any]:
        """A session's GET stream opened on ``port``: the connection and its response (headers read)."""
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        headers = {
            "accept": "text/event-stream",
            "mcp-session-id": session,
            "mcp-protocol-version": "2025-11-25",
            "authorization": f"Bearer {KEY}",
        }
        connection.request("GET", "/mcp", headers=headers)
        return connection, connection.getresponse()

    def read_until(self, response: Any, method: str) -> list[dict[str, Any]]:
        """The messages of an SSE response up to the first of ``method``."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20  # keep-alive comments come every second
        while True:
            line = response.fp.readline().decode()
            if not line or time.monotonic() > deadline:
                raise AssertionError(f"no {method} on the stream: {seen}")
            if line.startswith("data:") and line[5:].strip():
                seen.append(json.loads(line[5:]))
                if seen[-1].get("method") == method:
                    return seen

    def raw_post(self, port: int, session: str, method: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Every message of a legacy request's answer (its SSE stream's, or the one JSON)."""
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        headers = {
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "authorization": f"Bearer {KEY}",
            "mcp-session-id": session,
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/mcp", data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=20) as response:
            text = response.read().decode()
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            return [json.loads(text)]
        return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and line[5:].strip()]

    @inlineCallbacks
    def test_rate_limit_across_instances(self) -> Any:
        """Twice the rate limit, sent at once to all three instances: exactly the limit passes."""
        ports = [daemon.port for daemon in self.instances.values()]

        def burst() -> list[int]:
            from concurrent.futures import ThreadPoolExecutor

            def one(n: int) -> int:
                port = ports[n % len(ports)]
                assert port is not None
                params = {"name": "cluster.where", "arguments": {}}
                return self.post_modern(port, "tools/call", params, "cluster.where", key=OTHER_KEY)[0]

            with ThreadPoolExecutor(12) as pool:
                return list(pool.map(one, range(2 * RATE_LIMIT)))

        statuses = yield self.in_thread(burst)
        self.assertEqual((statuses.count(200), statuses.count(429)), (RATE_LIMIT, RATE_LIMIT), statuses)

    @inlineCallbacks
    def test_instance_killed_mid_session(self) -> Any:
        """kill -9 of the instance holding a session's GET stream: the client's next requests
        and its resumed stream are served by the others."""
        state: dict[str, Any] = {}

        async def main() -> None:
            changes: list[Any] = []
            heard = anyio.Event()

            async def on_message(message: Any) -> None:
                if isinstance(message, types.ToolListChangedNotification) or "list_changed" in repr(message):
                    changes.append(message)
                    heard.set()

            factory = self.http_factory()
            with anyio.fail_after(CLIENT_TIMEOUT):
                async with factory() as http:
                    target = streamable_http_client(f"{self.url}/mcp", http_client=http)
                    async with Client(target, mode="legacy", message_handler=on_message) as client:
                        for _ in range(3):
                            await client.call_tool("cluster.where", {})
                        await anyio.sleep(1.0)  # the GET stream opens meanwhile
                        holder = await anyio.to_thread.run_sync(self.stream_holder)
                        state["killed"] = holder
                        self.instances[holder].process.send_signal(signal.SIGKILL)
                        await anyio.to_thread.run_sync(self.instances[holder].process.wait)
                        state["after"] = [
                            (await client.call_tool("cluster.where", {})).structured_content["pid"]  # type: ignore[index]
                            for _ in range(4)
                        ]
                        # Give the SDK the time to resume its GET stream (1 s), then change.
                        await anyio.sleep(2.5)
                        await client.call_tool("cluster.announce", {})
                        with anyio.fail_after(10):
                            await heard.wait()
                        state["changes"] = len(changes)

        yield deferToThread(run_anyio, main).addErrback(self._explain)
        pids = self.pids()
        served = {pids[pid] for pid in state["after"]}
        self.assertNotIn(state["killed"], served)
        self.assertEqual(len(served), 2, state)
        self.assertGreaterEqual(state["changes"], 1)

    @inlineCallbacks
    def test_resumed_post_stream_of_an_instance_killed_later(self) -> Any:
        """A POST's stream resumed on another instance while the instance writing it runs, and
        that instance killed (``kill -9``) after the replay: the resumed stream ends within a
        sweep of the reading instance (nothing more will come; the client may resume or retry),
        not open for good. Two instances of their own, their sweep every second."""
        short = [*self.instance_args(), "--session-timeout", "4"]  # the last one counts
        writer = self.start_daemon(*short, name="writer", timeout=30.0)
        reader = self.start_daemon(*short, name="reader", timeout=30.0)
        assert writer.port and reader.port

        def resume() -> float:
            import http.client

            session = self.open_session(writer.port)
            post = http.client.HTTPConnection("127.0.0.1", writer.port, timeout=20)
            call = {"name": "tests.progress", "arguments": {"steps": 100, "delay": 0.5}, "_meta": {"progressToken": 1}}
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call}
            headers = {
                "content-type": "application/json",
                "accept": "application/json, text/event-stream",
                "authorization": f"Bearer {KEY}",
                "mcp-session-id": session,
            }
            post.request("POST", "/mcp", body=json.dumps(body), headers=headers)
            answer = post.getresponse()
            last = ""
            while "progress" not in last:
                line = answer.readline().decode()
                self.assertTrue(line, "the POST stream ended")
                last = line[3:].strip() if line.startswith("id:") else last
                last = f"progress {last}" if line.startswith("data:") and "notifications/progress" in line else last
            post.close()  # a disconnect, not a cancellation: the tool goes on writing
            event_id = last.split()[-1]

            get = http.client.HTTPConnection("127.0.0.1", reader.port, timeout=30)
            headers = {
                "accept": "text/event-stream",
                "mcp-session-id": session,
                "mcp-protocol-version": "2025-11-25",
                "authorization": f"Bearer {KEY}",
                "last-event-id": event_id,
                "connection": "close",
            }
            get.request("GET", "/mcp", headers=headers)
            resumed = get.getresponse()
            self.assertEqual(resumed.status, 200)
            self.read_until(resumed, "notifications/progress")  # live, from the writer
            status, served = self.legacy_call(
                reader.port, session, "tools/call", {"name": "cluster.where", "arguments": {}}
            )
            self.assertEqual(served["result"]["structuredContent"]["pid"], reader.process.pid, served)
            self.read_until(resumed, "notifications/progress")
            writer.process.send_signal(signal.SIGKILL)
            writer.process.wait(10)
            killed = time.monotonic()
            # To its end (read raw, as read_until does); keep-alive comments come every second.
            while resumed.fp.readline() and time.monotonic() - killed < 15:
                pass
            get.close()
            return time.monotonic() - killed

        took = yield self.in_thread(resume)
        self.assertLess(took, 10.0)

    def stream_holder(self) -> str:
        """The instance with an SSE stream open (the session's GET stream), by its metrics."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for name, daemon in self.instances.items():
                request = urllib.request.Request(
                    f"http://127.0.0.1:{daemon.port}/metrics", headers={"authorization": f"Bearer {KEY}"}
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    text = response.read().decode()
                if re.search(r"^mcp_sse_streams_open 1(\.0)?$", text, re.MULTILINE):
                    return name
            time.sleep(0.1)
        raise AssertionError("no instance holds the session's GET stream")

    @inlineCallbacks
    def test_redis_restarted(self) -> Any:
        """Redis restarted: clear errors while it is gone, full service after, and every task
        record that was acknowledged is still there."""
        a, b, c = (self.instances[name].port for name in "abc")
        assert a and b and c
        tasks = []
        for port, label in ((a, "r1"), (b, "r2"), (c, "r3")):
            params = {"name": "cluster.wait", "arguments": {"label": label}}
            status, created = yield self.in_thread(
                lambda port=port, params=params: self.post_modern(port, "tools/call", params, "cluster.wait")
            )
            self.assertEqual(status, 200, created)
            tasks.append(created["result"]["taskId"])
        # An operator's restart: the data is saved on the way down (persistence: see README).
        yield self.in_thread(lambda: self.redis.cli("shutdown", "save"))
        yield self.in_thread(lambda: self.redis.process.wait(10))  # type: ignore[union-attr]
        # While it is gone: every request says so (the rate limit's buckets are in Redis too).
        status, gone = yield self.in_thread(lambda: self.post_modern(b, "tasks/get", {"taskId": tasks[0]}, tasks[0]))
        self.assertEqual(status, 503, gone)
        self.assertIn("redis is unavailable (temporary)", gone["error"], gone)
        status, refused = yield self.in_thread(self.new_legacy_session_while_down)
        self.assertEqual(status, 503, refused)
        self.assertIn("redis is unavailable (temporary)", refused)
        yield self.in_thread(self.redis.start)
        # Back by itself: every record, from every instance, and the bus carries commands again.
        for port in (a, b, c):
            for task_id in tasks:
                polled = yield self.in_thread(lambda port=port, task_id=task_id: self.wait_task(port, task_id))
                self.assertEqual(polled["status"], "working", polled)
        status, cancelled = yield self.in_thread(
            lambda: self.post_modern(c, "tasks/cancel", {"taskId": tasks[0]}, tasks[0])
        )
        self.assertNotIn("error", cancelled, cancelled)
        polled = yield self.in_thread(lambda: self.wait_task(b, tasks[0]))
        self.assertEqual(polled["status"], "cancelled", polled)
        pid_a = self.instances["a"].process.pid
        self.assertIn(f"cancelled cluster.wait@{pid_a} r1", read_events(self.events))
        yield self.test_streamable_session_across_instances()

    def new_legacy_session_while_down(self) -> tuple[int, str]:
        """A message for a session another instance opened, while Redis is down."""
        a, b = self.instances["a"].port, self.instances["b"].port
        assert a and b
        return self.legacy_post(b, "made-up-session-id-0123456789")

    def legacy_post(self, port: int, session_id: str) -> tuple[int, str]:
        body = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        headers = {
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "authorization": f"Bearer {KEY}",
            "mcp-session-id": session_id,
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/mcp", data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_task(self, port: int, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """tasks/get until it answers (Redis may still be coming back)."""
        deadline = time.monotonic() + timeout
        while True:
            _status, polled = self.post_modern(port, "tasks/get", {"taskId": task_id}, task_id)
            if "result" in polled or time.monotonic() > deadline:
                return polled.get("result", polled)  # type: ignore[no-any-return]
            time.sleep(0.2)

    def test_unshareable_stores_refused(self) -> None:
        """An instance on SQLite beside instances on MariaDB would answer from data of its own:
        it refuses to start, saying why."""
        argv = [arg for arg in self.instance_args()]
        at = argv.index("--db-url")
        del argv[at : at + 2]
        argv += ["--data-dir", str(self.workdir / "own-data")]
        try:
            daemon = start_daemon(self.workdir, ["--tool-pack", "tests.fixture_pack", *argv], name="d", timeout=30.0)
        except DaemonStartError:
            pass  # refused before its port answered
        else:
            self.addCleanup(daemon.stop)
            # The check runs once the reactor runs: the daemon exits right after.
            self.assertEqual(daemon.process.wait(30), 1)
        log = (self.workdir / "d.stderr.log").read_text(encoding="utf-8")
        self.assertIn("mcpd: cannot start cluster: this instance's sql store is sqlite", log)
        self.assertIn("but another instance uses mysql at mysql+pymysql://mcpd:***@127.0.0.1", log)
        # It served nothing: its trace has nothing to validate.
        (self.workdir / "d.trace.jsonl").unlink(missing_ok=True)

    def _explain(self, failure: Any) -> Any:
        from tests.daemon import log_tails

        raise AssertionError(f"{failure.getTraceback()}\n{log_tails(self.workdir)}")
