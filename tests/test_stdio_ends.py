"""How a real ``mcpd --stdio`` process ends when its client goes, on pipes and on socketpairs (what
Node/libuv clients spawn servers with): it exits once stdin ends, whatever became of stdout, and a
last message left unterminated at the end of stdin is answered."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.daemon import FIXTURE_PACK, MCPD, START_TIMEOUT, daemon_env
from tests.http_harness import LATEST_LEGACY

# How long a server whose client has gone may take to exit.
EXIT_TIMEOUT = 10.0


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def blob_calls(first: int, count: int, size: int) -> bytes:
    """``count`` tools/call lines of the fixture pack's ``tests.blob``, each answered by ``size`` x's."""
    return b"".join(
        line(
            {
                "jsonrpc": "2.0",
                "id": first + n,
                "method": "tools/call",
                "params": {"name": "tests.blob", "arguments": {"size": size}},
            }
        )
        for n in range(count)
    )


INITIALIZE = line(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": LATEST_LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
)
INITIALIZED = line({"jsonrpc": "2.0", "method": "notifications/initialized"})
# Answered at once (on reading them), each by a ~7 KB line.
TOOL_LISTS = b"".join(line({"jsonrpc": "2.0", "id": 100 + n, "method": "tools/list"}) for n in range(50))


class Client:
    """The client's side of a ``mcpd --stdio`` process: raw descriptors for its stdin and stdout,
    pipes or (``sockets``) one socketpair each, closed by the client when it chooses."""

    def __init__(self, workdir: Path, argv: list[str], sockets: bool) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = workdir / "stdio.stderr.log"
        self._close: dict[str, Callable[[], None]] = {}
        if sockets:
            ours_in, theirs_in = socket.socketpair()
            ours_out, theirs_out = socket.socketpair()
            self.stdin, self.stdout = ours_in.fileno(), ours_out.fileno()
            child = [theirs_in, theirs_out]
            self._close = {"stdin": ours_in.close, "stdout": ours_out.close}
            child_in, child_out = theirs_in.fileno(), theirs_out.fileno()
        else:
            child_in, self.stdin = os.pipe()
            self.stdout, child_out = os.pipe()
            child = []
            self._close = {"stdin": lambda: os.close(self.stdin), "stdout": lambda: os.close(self.stdout)}
        with open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                argv, cwd=workdir, env=daemon_env(workdir), stdin=child_in, stdout=child_out, stderr=err
            )
        for sock in child:
            sock.close()
        if not sockets:
            os.close(child_in)
            os.close(child_out)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.stdin, view) :]

    def receive(self, timeout: float = START_TIMEOUT) -> Any:
        """The next line on stdout, as JSON."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.stdout], [], [], remaining)[0]:
                raise TimeoutError(f"no line on stdout within {timeout}s")
            chunk = os.read(self.stdout, 65536)
            if not chunk:
                raise EOFError("stdout closed")
            self._buffer += chunk
        answer, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(answer)

    def quick_close_of_stdout(self, data: bytes) -> None:
        """Send ``data`` and close stdout while the server is busy (stopped), so that it reads
        the data before it notices stdout closed (a pipe's closing is seen at once otherwise)."""
        self.process.send_signal(signal.SIGSTOP)
        try:
            self.send(data)
            self.close("stdout")
        finally:
            self.process.send_signal(signal.SIGCONT)

    def close(self, which: str) -> None:
        self._close.pop(which, lambda: None)()

    def end(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for which in list(self._close):
            self.close(which)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


class ClientGoneTests(SynchronousTestCase):
    """The server exits once stdin ends, whether or not the client still reads stdout."""

    sockets = False

    def client(self, *args: str) -> Client:
        argv = [MCPD, "--stdio", "--toolsets", "server", "--tool-pack", FIXTURE_PACK, *args]
        client = Client(Path(self.mktemp()), argv, self.sockets)
        self.addCleanup(client.end)
        client.send(INITIALIZE)
        self.assertEqual(client.receive()["id"], 1)
        client.send(INITIALIZED)
        return client

    def exit_status(self, client: Client) -> int:
        """The server's exit status, once it exits; fails if it runs on `EXIT_TIMEOUT` s."""
        try:
            return client.process.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail(f"mcpd still running {EXIT_TIMEOUT}s after its client went: {client.stderr[-2000:]}")

    def test_stdout_closed_then_requests_then_stdin_closed(self) -> None:
        # The answers to requests sent after the client closed its end of stdout cannot be
        # written (EPIPE); buffered, they used to pass the transport's limit, reading stdin
        # stopped, and the failed write never turned it back on: stdin's end was never seen.
        client = self.client()
        client.quick_close_of_stdout(TOOL_LISTS)
        time.sleep(0.5)
        client.close("stdin")
        self.assertEqual(self.exit_status(client), 0)

    def test_a_closed_stdout_is_not_taken_for_a_slow_reader(self) -> None:
        # Those answers are dropped, not counted as output left unread (--max-write-buffer).
        client = self.client("--max-write-buffer", "65536")
        client.quick_close_of_stdout(TOOL_LISTS)
        time.sleep(0.5)
        client.close("stdin")
        self.assertEqual(self.exit_status(client), 0)
        self.assertNotIn("over --max-write-buffer", client.stderr)

    def test_client_stops_reading_then_closes_both(self) -> None:
        # The answers fill stdout and then the server's buffer, so it stops reading stdin; the
        # client then goes. The failed write must turn reading back on, or stdin's end is never
        # seen.
        client = self.client()
        client.send(blob_calls(100, 50, 20000))
        time.sleep(1)
        client.close("stdout")
        client.close("stdin")
        self.assertEqual(self.exit_status(client), 0)

    def test_an_unterminated_last_message_is_answered(self) -> None:
        # basic/transports §stdio delimits messages by newlines; the end of stdin ends the last.
        client = self.client()
        client.send(line({"jsonrpc": "2.0", "id": 2, "method": "ping"}).rstrip(b"\n"))
        time.sleep(0.3)  # read by the server before stdin ends: left in its buffer
        client.close("stdin")
        self.assertEqual(client.receive(), {"jsonrpc": "2.0", "id": 2, "result": {}})
        self.assertEqual(self.exit_status(client), 0)


class SocketpairClientGoneTests(ClientGoneTests):
    """The same over socketpairs, as Node (libuv) spawns stdio servers."""

    sockets = True
