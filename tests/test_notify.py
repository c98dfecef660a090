"""sd_notify: a real AF_UNIX datagram socket stands in for systemd and hears what mcpd says.

The unit tests send through `mcpd.notify` itself; the daemon tests start ``twistd -n mcpd`` with
``NOTIFY_SOCKET`` pointing at the socket and check READY=1 once its port answers, RELOADING=1
(with a current MONOTONIC_USEC) then READY=1 around SIGHUP, and STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mcpd import notify
from tests.daemon import MCPD, DaemonTestMixin, call_server_info, port_answers

WAIT = 10.0


class ServiceManager:
    """The receiving end of ``$NOTIFY_SOCKET``: a bound datagram socket and what it was sent."""

    def __init__(self, abstract: bool = False) -> None:
        # AF_UNIX paths are short (108 bytes): a directory of its own under the system temp dir.
        self.directory = tempfile.mkdtemp(prefix="mcpd-notify-")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"mcpd-notify-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = os.path.join(self.directory, "notify")
            self.sock.bind(self.address)

    def receive(self, timeout: float = WAIT) -> dict[str, str]:
        """The next datagram as its assignments; `TimeoutError` if none arrives in time."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            raise TimeoutError(f"no notification within {timeout}s") from None
        return dict(line.split("=", 1) for line in data.decode().splitlines())

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class NotifyTests(SynchronousTestCase):
    def manager(self, abstract: bool = False) -> ServiceManager:
        manager = ServiceManager(abstract)
        self.addCleanup(manager.close)
        return manager

    def test_without_a_socket_nothing_is_sent(self) -> None:
        self.assertFalse(notify.notify("READY=1", environ={}))
        self.assertFalse(notify.notify("READY=1", environ={"NOTIFY_SOCKET": ""}))

    def test_path_socket(self) -> None:
        manager = self.manager()
        self.assertTrue(notify.notify("READY=1", "STATUS=Serving", environ={"NOTIFY_SOCKET": manager.address}))
        self.assertEqual(manager.receive(), {"READY": "1", "STATUS": "Serving"})

    def test_abstract_socket(self) -> None:
        """``@name`` is an abstract socket address, as sd_notify(3) says."""
        manager = self.manager(abstract=True)
        self.assertTrue(notify.notify("STOPPING=1", environ={"NOTIFY_SOCKET": manager.address}))
        self.assertEqual(manager.receive(), {"STOPPING": "1"})

    def test_nobody_listening_is_logged_not_raised(self) -> None:
        manager = self.manager()
        gone = manager.address
        manager.close()
        with capturedLogs() as events:
            self.assertFalse(notify.notify("READY=1", environ={"NOTIFY_SOCKET": gone}))
            self.assertFalse(notify.notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:9"}))
        said = [formatEvent(event) for event in events]
        self.assertEqual(len(said), 2, said)
        self.assertIn(f"Cannot notify the service manager at {gone}", said[0])
        self.assertIn("only AF_UNIX socket paths are supported", said[1])

    def test_reloading_brackets_the_reload(self) -> None:
        manager = self.manager()
        os.environ["NOTIFY_SOCKET"] = manager.address
        self.addCleanup(os.environ.pop, "NOTIFY_SOCKET", None)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        with self.assertRaises(RuntimeError), notify.reloading():
            raise RuntimeError("the reload failed")
        reloading = manager.receive()
        self.assertEqual(reloading["RELOADING"], "1")
        self.assertGreaterEqual(int(reloading["MONOTONIC_USEC"]), before)
        self.assertEqual(manager.receive()["READY"], "1")


class DaemonNotifyTests(DaemonTestMixin, TestCase):
    """A real daemon tells a real socket about its life."""

    timeout = 60

    def test_ready_reload_stopping(self) -> Deferred[None]:
        manager = ServiceManager()
        self.addCleanup(manager.close)
        daemon = self.start_daemon(env={"NOTIFY_SOCKET": manager.address})

        def check() -> None:
            ready = manager.receive()
            self.assertEqual(ready.get("READY"), "1", ready)
            assert daemon.port is not None
            self.assertTrue(port_answers(daemon.port), "READY=1 before the listener answers")
            self.assertEqual(call_server_info(daemon.port)["name"], "mcpd")

            sent_at = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            daemon.process.send_signal(signal.SIGHUP)
            reloading = manager.receive()
            self.assertEqual(reloading.get("RELOADING"), "1", reloading)
            self.assertGreaterEqual(int(reloading["MONOTONIC_USEC"]), sent_at)
            self.assertLess(int(reloading["MONOTONIC_USEC"]) - sent_at, WAIT * 1_000_000)
            self.assertEqual(manager.receive().get("READY"), "1")

            daemon.process.send_signal(signal.SIGTERM)
            stopping = manager.receive()
            self.assertEqual(stopping.get("STOPPING"), "1", stopping)
            self.assertEqual(daemon.process.wait(WAIT), 0)
            self.assertIn("Drained", daemon.log() + daemon.log("stdout"))

        return deferToThread(check).addErrback(self.explain)

    def test_stdio_mode_with_a_socket_is_harmless(self) -> None:
        """``mcpd --stdio`` under a service manager says READY=1 too and serves its client."""
        manager = ServiceManager()
        self.addCleanup(manager.close)
        process = self.spawn_stdio(MCPD, "--stdio", env={"NOTIFY_SOCKET": manager.address})
        process.send(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"},
                },
            }
        )
        self.assertEqual(process.receive()["id"], 1)
        self.assertEqual(manager.receive().get("READY"), "1")
        process.close_stdin()
        self.assertEqual(process.wait(), 0)
        self.assertTrue(Path(process.stderr_path).exists())
