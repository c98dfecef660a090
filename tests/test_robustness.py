"""Bad input over real sockets: a seeded barrage of malformed HTTP requests (the seeds of
`tests.fuzzing`, which `tests.test_fuzz` builds on) never makes the daemon fail a request with a
500 or log a traceback, and it keeps serving afterwards."""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.daemon import DaemonTestMixin
from tests.fuzzing import BODIES, HEADER_SETS, METHODS, PATHS
from tests.wire import raw_request


def barrage(port: int, count: int, seed: int) -> dict[str, int]:
    """Send ``count`` malformed requests, one connection each; count the statuses."""
    rng = random.Random(seed)
    statuses: dict[str, int] = {}
    for _ in range(count):
        method, path, body = rng.choice(METHODS), rng.choice(PATHS), rng.choice(BODIES)
        headers = {"Host": f"127.0.0.1:{port}", **rng.choice(HEADER_SETS), **rng.choice(HEADER_SETS)}
        request = raw_request(method, path, list(headers.items()), body, length="Transfer-Encoding" not in headers)
        status = "none"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
                sock.sendall(request)
                sock.settimeout(0.2)
                data = sock.recv(64)
                if data.startswith(b"HTTP/1.1 "):
                    status = data[9:12].decode()
                elif data:
                    status = "garbage"
        except TimeoutError:
            pass  # a request whose body never came: answered only by the read timeout
        except (ConnectionResetError, BrokenPipeError):
            status = "reset"
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


class BadInputTests(DaemonTestMixin, TestCase):
    timeout = 120

    def test_malformed_requests_never_break_the_daemon(self) -> Deferred[None]:
        daemon = self.start_daemon(fixture_pack=False)
        assert daemon.port is not None
        port = daemon.port

        def attack() -> tuple[dict[str, int], Any]:
            statuses: dict[str, int] = {}
            for seed in (1, 2, 3):
                for status, count in barrage(port, 150, seed).items():
                    statuses[status] = statuses.get(status, 0) + count
            from tests.daemon import call_server_info

            return statuses, call_server_info(port)

        def check(outcome: tuple[dict[str, int], Any]) -> None:
            statuses, info = outcome
            server_errors = {status: n for status, n in statuses.items() if status.startswith("5") and status != "501"}
            self.assertEqual(server_errors, {}, statuses)
            self.assertEqual(statuses.get("garbage", 0), 0, statuses)
            self.assertGreater(sum(n for status, n in statuses.items() if status.startswith("4")), 100, statuses)
            # Still serving, and nothing blew up inside.
            self.assertEqual(info["name"], "mcpd")
            log = daemon.log("stdout") + daemon.log("stderr")
            self.assertNotIn("Traceback", log)
            self.assertNotIn("#critical", log)

        return deferToThread(attack).addCallback(check)


def memory(pid: int) -> tuple[int, int]:
    """A process's resident set now and at its peak, in bytes (Linux /proc)."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Vm")
    )
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


class ReadyProbe:
    """Times ``GET /ready`` over and over in a thread, as a load balancer would, until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                connection.request("GET", "/ready")
                status = connection.getresponse().status
                connection.close()
            except OSError as e:
                status, self.error = 0, e
            self.latencies.append(time.monotonic() - started if status == 200 else float("inf"))
            time.sleep(0.02)

    error: OSError | None = None

    def stop(self) -> float:
        """Stop; the slowest answer, in seconds (infinite if one failed)."""
        self._stop.set()
        self._thread.join(60)
        return max(self.latencies)


def legacy_session(port: int) -> dict[str, str]:
    """Open a 2025-03-26 session (the version with batches); its headers."""
    initialize = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-03-26",
            "capabilities": {},
            "clientInfo": {"name": "batch", "version": "1"},
        },
    }
    status, head, _ = post_json(port, json.dumps(initialize).encode(), {})
    assert status == 200, status
    headers = {"Mcp-Session-Id": head["mcp-session-id"], "MCP-Protocol-Version": "2025-03-26"}
    post_json(port, b'{"jsonrpc":"2.0","method":"notifications/initialized"}', headers)
    return headers


def post_json(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"Content-Type": "application/json", "Accept": "application/json", **headers}
        connection.request("POST", "/mcp", body, headers)
        response = connection.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(data) if data else None
    finally:
        connection.close()


def tools_lists(count: int) -> bytes:
    return json.dumps([{"jsonrpc": "2.0", "id": n, "method": "tools/list"} for n in range(count)]).encode()


class HostileBatchTests(DaemonTestMixin, TestCase):
    """Batches cannot make a small request buy a huge answer, grow memory, or stall /ready.

    Before the bounds, one 3 MB batch of 60,000 tools/list produced ~214 MB of answers; three at
    once peaked at 976 MB of RSS and held /ready for 4 s.
    """

    timeout = 120

    def test_three_huge_batches_at_once(self) -> Deferred[None]:
        daemon = self.start_daemon()
        assert daemon.port is not None
        port = daemon.port

        def attack() -> None:
            headers = legacy_session(port)
            batch = tools_lists(60_000)
            self.assertLess(len(batch), 4 * 1024 * 1024)
            _rss, peak_before = memory(daemon.process.pid)
            probe = ReadyProbe(port)
            answers: list[Any] = []
            senders = [
                threading.Thread(target=lambda: answers.append(post_json(port, batch, headers))) for _ in range(3)
            ]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join(60)
            slowest = probe.stop()
            _rss, peak_after = memory(daemon.process.pid)
            self.assertEqual(len(answers), 3)
            for status, _head, body in answers:
                self.assertEqual(status, 200)
                self.assertEqual(body["error"]["code"], -32600)
                self.assertIn("at most 100 messages, this one has 60000", body["error"]["message"])
            self.assertLess(peak_after - peak_before, 150 * 1024 * 1024, "peak RSS grew too much")
            # Decoding three 3.4 MB bodies is what remains (~0.1 s each); it was 4 s.
            self.assertLess(slowest, 2.0, f"/ready took {slowest:.2f} s")

        return deferToThread(attack).addErrback(self.explain)

    def test_a_full_batch_is_bounded_in_bytes_and_sliced(self) -> Deferred[None]:
        limit = 65_536
        daemon = self.start_daemon("--max-message-size", str(limit))
        assert daemon.port is not None
        port = daemon.port

        def attack() -> None:
            headers = legacy_session(port)
            probe = ReadyProbe(port)
            answers = [post_json(port, tools_lists(100), headers)[2] for _ in range(5)]
            slowest = probe.stop()
            for answer in answers:
                served = [item for item in answer if "result" in item]
                refused = [item for item in answer if "error" in item]
                self.assertEqual(len(served) + len(refused), 100)
                self.assertGreater(len(served), 0)
                self.assertGreater(len(refused), 0)
                self.assertLessEqual(sum(len(json.dumps(item, separators=(",", ":"))) for item in served), limit)
                self.assertEqual({item["error"]["code"] for item in refused}, {-32011})
                self.assertIn("send this request on its own", refused[0]["error"]["message"])
            self.assertLess(slowest, 0.5, f"/ready took {slowest:.2f} s")

        return deferToThread(attack).addErrback(self.explain)
