"""Bad input over real sockets: a seeded barrage of malformed HTTP requests (the seeds of
`tests.fuzzing`, which `tests.test_fuzz` builds on) never makes the daemon fail a request with a
500 or log a traceback, and it keeps serving afterwards."""

from __future__ import annotations

import random
import socket
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
            from tests.test_packaging import call_server_info

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
