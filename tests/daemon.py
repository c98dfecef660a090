# -*- test-case-name: tests.test_integration -*-
"""Fixtures for integration tests that run the real daemon in a subprocess.

`start_daemon` launches ``twistd -n --pidfile= mcpd …`` (or the ``mcpd`` script) from the venv the
tests run in, with its working directory, logs, protocol trace and tool events in a test's temp
dir, and waits (bounded) until its port answers. `stdio_parameters` describes ``mcpd --stdio`` for
the MCP SDK's stdio client. `DaemonTestMixin` ties both to a trial test: daemons are stopped when
the test ends, every trace is validated against the official schemas, and a failure shows the
daemon's logs.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import anyio
import attrs
from mcp import Client
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from mcpd.config import KNOBS
from tests.fixture_pack import EVENTS_ENV
from tests.schema_check import assert_trace_valid

if TYPE_CHECKING:
    from mcp.client.stdio import StdioServerParameters
    from twisted.python.failure import Failure

VENV_BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parent.parent
TWISTD = str(VENV_BIN / "twistd")
MCPD = str(VENV_BIN / "mcpd")
PYTHON = sys.executable

FIXTURE_PACK = "tests.fixture_pack"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
_LOG_TAIL = 60


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (it may be taken again later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP connection to ``host:port`` is accepted."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_ready(port: int, deadline: float) -> None:
    """Wait (until ``deadline``) for ``GET /ready`` to say the daemon serves: its port is bound
    before the rest of its tree has started (the SQL store migrates then), and a test that counts
    connections or requests must not race that. Any answer but "starting" ends the wait."""
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=max(0.1, deadline - time.monotonic()))
        try:
            connection.request("GET", "/ready")
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            return
        finally:
            connection.close()
        if response.status != 503 or b'"starting"' not in body:
            return
        time.sleep(0.05)


def daemon_env(workdir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a daemon under test.

    The runner's own mcpd settings (PORT, TRACE_FILE, …) and service manager socket
    (NOTIFY_SOCKET) are dropped so they cannot leak in; the repo root is put on PYTHONPATH (for
    ``tests.fixture_pack``) and `EVENTS_ENV` points into ``workdir``.
    """
    dropped = {knob.env for knob in KNOBS} | {"NOTIFY_SOCKET"}
    env = {name: value for name, value in os.environ.items() if name not in dropped}
    env.update(required_env(workdir))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def required_env(workdir: Path) -> dict[str, str]:
    """The variables every daemon under test needs, and nothing else (for the SDK's stdio client,
    which passes only these over a small safe environment)."""
    path = [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(path), EVENTS_ENV: str(workdir / "events.txt")}


def log_tails(workdir: Path, tail: int = _LOG_TAIL) -> str:
    """The last lines of every log and of the events file in ``workdir``, for a failure message."""
    parts = []
    for path in sorted(workdir.glob("*.log")) + sorted(workdir.glob("events.txt")):
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as e:
            lines = [f"(cannot read: {e})"]
        shown = lines[-tail:]
        skipped = f" (last {tail} of {len(lines)} lines)" if len(lines) > tail else ""
        parts.append(f"--- {path}{skipped} ---\n" + "\n".join(shown))
    return "\n".join(parts) or f"(no logs in {workdir})"


@attrs.define
class Daemon:
    """One daemon process under test."""

    process: subprocess.Popen[bytes]
    workdir: Path
    name: str
    port: int | None
    trace: Path

    @property
    def url(self) -> str:
        """The Streamable HTTP endpoint."""
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def events(self) -> Path:
        return self.workdir / "events.txt"

    def log(self, stream: str = "stderr") -> str:
        """What the daemon wrote to ``stream`` so far."""
        return (self.workdir / f"{self.name}.{stream}.log").read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode


class DaemonStartError(Exception):
    """The daemon exited, or its port did not answer in time; the message carries its logs."""


def start_daemon(
    workdir: Path,
    args: Sequence[str],
    *,
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    pick_port: bool = True,
    timeout: float = START_TIMEOUT,
    name: str = "daemon",
) -> Daemon:
    """Start a daemon in ``workdir`` and wait until its port answers.

    ``command`` defaults to ``twistd -n --pidfile= mcpd``. With ``pick_port`` (and no ``port``)
    a free port is chosen and passed as ``--port``, retried if another process takes it first;
    pass ``port`` (and ``pick_port=False``) when the arguments, the environment or a config file
    name the port themselves. Every daemon writes its protocol trace to ``workdir/<name>.trace.jsonl``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    base = list(command) if command is not None else [TWISTD, "-n", "--pidfile=", "mcpd"]
    trace = workdir / f"{name}.trace.jsonl"
    for _attempt in range(3):
        chosen = port if port is not None else (free_port() if pick_port else None)
        port_args = ["--port", str(chosen)] if pick_port and port is None else []
        argv = [*base, *port_args, "--trace-file", str(trace), *args]
        with open(workdir / f"{name}.stdout.log", "wb") as out, open(workdir / f"{name}.stderr.log", "wb") as err:
            (workdir / f"{name}.argv.log").write_text(" ".join(argv) + "\n", encoding="utf-8")
            process = subprocess.Popen(
                argv, cwd=workdir, env=daemon_env(workdir, env), stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        daemon = Daemon(process, workdir, name, chosen, trace)
        if chosen is None:
            return daemon
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if port_answers(chosen):
                wait_ready(chosen, deadline)
                return daemon
            time.sleep(0.05)
        exited = process.poll()
        daemon.stop()
        in_use = "Address already in use" in daemon.log() + daemon.log("stdout")
        if not (in_use and pick_port and port is None):
            why = f"exited with {exited}" if exited is not None else f"did not answer within {timeout}s"
            raise DaemonStartError(f"{' '.join(argv)}: {why} (port {chosen})\n{log_tails(workdir)}")
    raise DaemonStartError(f"no free port found for {' '.join(argv)}\n{log_tails(workdir)}")


class StdioProcess:
    """A stdio server driven by hand: raw lines in, bounded reads of raw lines out.

    stdout is a pipe the test reads; stderr goes to ``<name>.stderr.log`` in the work dir.
    """

    def __init__(
        self, argv: Sequence[str], workdir: Path, name: str = "stdio", env: Mapping[str, str] | None = None
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / f"{name}.argv.log").write_text(" ".join(argv) + "\n", encoding="utf-8")
        self.stderr_path = workdir / f"{name}.stderr.log"
        with open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                argv,
                cwd=workdir,
                env=daemon_env(workdir, env),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self._buffer = b""
        self.stdout_lines: list[bytes] = []

    def send(self, message: Any) -> None:
        """Write one message (or raw bytes, sent as they are) to the server's stdin."""
        assert self.process.stdin is not None
        data = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n"
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def receive(self, timeout: float = 5.0) -> Any:
        """The next stdout line as JSON; `TimeoutError` if none arrives in time, `EOFError` at EOF."""
        return json.loads(self.readline(timeout))

    def readline(self, timeout: float = 5.0) -> bytes:
        """The next raw stdout line, without its newline."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        if not self.stdout_lines:
            # The first answer waits for start-up too (imports, schemas, the SQL store's
            # migrations), as an HTTP daemon's port is waited for: START_TIMEOUT at least.
            timeout = max(timeout, START_TIMEOUT)
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line on stdout within {timeout}s (so far: {self._buffer[:200]!r})")
            if select.select([fd], [], [], remaining)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise EOFError(f"stdout closed (unterminated: {self._buffer[:200]!r})")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        self.stdout_lines.append(line)
        return line

    def close_stdin(self) -> None:
        """End the client's side: the server must exit."""
        assert self.process.stdin is not None
        self.process.stdin.close()

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Read stdout to its end and wait for the exit; `TimeoutError` if either takes too long."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.readline(max(0.0, deadline - time.monotonic()))
        except EOFError:
            if self._buffer:
                self.stdout_lines.append(self._buffer)
                self._buffer = b""
        try:
            return self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"still running {timeout}s after stdout closed") from None

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """Make sure the process is gone and its pipes closed (a cleanup)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None and not stream.closed:
                stream.close()


def stdio_parameters(workdir: Path, args: Sequence[str] = (), name: str = "stdio") -> StdioServerParameters:
    """How the SDK's stdio client launches ``mcpd --stdio`` with the fixture pack and a trace."""
    from mcp.client.stdio import StdioServerParameters

    workdir.mkdir(parents=True, exist_ok=True)
    argv = ["--stdio", "--tool-pack", FIXTURE_PACK, "--trace-file", str(workdir / f"{name}.trace.jsonl"), *args]
    (workdir / f"{name}.argv.log").write_text(" ".join([MCPD, *argv]) + "\n", encoding="utf-8")
    return StdioServerParameters(command=MCPD, args=argv, env=required_env(workdir), cwd=str(workdir))


class DaemonTestMixin:
    """For `twisted.trial.unittest.TestCase`: daemons and stdio servers that clean up after themselves.

    Every trace file a test's daemons wrote is validated with `assert_trace_valid` once the test
    is over (after its daemons stopped).
    """

    mktemp: Callable[[], str]
    addCleanup: Callable[..., None]
    failureException: type[AssertionError]

    _workdir: Path | None = None

    @property
    def workdir(self) -> Path:
        """This test's own directory: cwd, logs, traces and events of its daemons."""
        if self._workdir is None:
            self._workdir = Path(self.mktemp()).resolve()
            self._workdir.mkdir(parents=True)
            self.addCleanup(self._validate_traces)
        return self._workdir

    @property
    def events(self) -> Path:
        """The file the fixture pack's handlers record their events in."""
        return self.workdir / "events.txt"

    def start_daemon(self, *args: str, fixture_pack: bool = True, **kwargs: Any) -> Daemon:
        """`start_daemon` in this test's dir (with the fixture pack); stopped when the test ends."""
        packs = ["--tool-pack", FIXTURE_PACK] if fixture_pack else []
        daemon = start_daemon(self.workdir, [*packs, *args], **kwargs)
        self.addCleanup(daemon.stop)
        return daemon

    def spawn_stdio(self, *argv: str, name: str = "stdio", env: Mapping[str, str] | None = None) -> StdioProcess:
        """A `StdioProcess` for ``argv`` plus a trace file; killed when the test ends."""
        trace = self.workdir / f"{name}.trace.jsonl"
        process = StdioProcess([*argv, "--trace-file", str(trace)], self.workdir, name, env)
        self.addCleanup(process.kill)
        return process

    def stdio_parameters(self, *args: str, name: str = "stdio") -> StdioServerParameters:
        """`stdio_parameters` in this test's dir."""
        return stdio_parameters(self.workdir, args, name)

    def errlog(self, name: str = "stdio") -> IO[str]:
        """A file in this test's dir for a stdio server's stderr (closed when the test ends)."""
        f = open(self.workdir / f"{name}.stderr.log", "w", encoding="utf-8")  # noqa: SIM115
        self.addCleanup(f.close)
        return f

    def explain(self, failure: Failure) -> None:
        """An errback: fail again with the daemons' logs appended to the original failure."""
        raise self.failureException(f"{failure.getTraceback()}\n{log_tails(self.workdir)}")

    def _validate_traces(self) -> None:
        assert self._workdir is not None
        for trace in sorted(self._workdir.glob("*.trace.jsonl")):
            assert_trace_valid(self, str(trace))  # type: ignore[arg-type]


Scenario = Callable[[Client], Awaitable[None]]


def call_server_info(port: int) -> dict:
    """A 2026-07-28 tools/call of server.info; the structured result."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "server.info",
            "arguments": {},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/mcp",
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "tools/call",
            "Mcp-Name": "server.info",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["result"]["structuredContent"]


LEGACY = "legacy"


MODERN = "2026-07-28"


SCENARIO_TIMEOUT = 20.0


EVENT_TIMEOUT = 5.0


FIXTURE_TOOLS = {
    "tests.progress",
    "tests.wait_for_cancel",
    "tests.blocking_wait",
    "tests.ping_client",
    "tests.blob",
    "tests.progress_then_wait",
}


SERVER_TOOLS = {"server.audit", "server.info", "server.tools"}
# The read-only tools of the packs served by default besides server: tasks, notes (SQL), cache,
# kb and memory (SQL and the search index).
READ_ONLY_DATA_TOOLS = {
    *("project.list", "task.list", "task.get", "task.next", "note.search", "note.get"),
    *("cache.get", "cache.scan"),
    *("kb.collections", "kb.search", "kb.get", "memory.recall", "memory.list"),
}


INVALID_PARAMS = -32602


SHUTDOWN_LIMIT = 5.0


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}


def run_anyio(main: Callable[[], Awaitable[None]]) -> None:
    """``anyio.run(main)``, raising the one real error rather than the task groups around it."""
    try:
        anyio.run(main)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from group
        raise


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def read_events(path: Path) -> list[str]:
    """The lines the fixture pack recorded so far."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def wait_for_event_blocking(path: Path, line: str, timeout: float = EVENT_TIMEOUT) -> None:
    """`wait_for_event` for a plain thread."""
    deadline = time.monotonic() + timeout
    while line not in read_events(path):
        if time.monotonic() > deadline:
            raise AssertionError(f"{line!r} not recorded within {timeout}s; events: {read_events(path)}")
        time.sleep(0.05)


def read_trace(path: Path) -> list[dict[str, Any]]:
    """The entries of a daemon's protocol trace."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class DaemonTestCase(DaemonTestMixin, TestCase):
    """A trial test using real daemons; each test must end well within 30 seconds."""

    timeout = 30

    def with_client(self, server: Any, mode: str, scenario: Scenario) -> Deferred[None]:
        """Run ``scenario(client)`` with an SDK client for ``server`` in a worker thread."""

        async def main() -> None:
            with anyio.fail_after(SCENARIO_TIMEOUT):
                async with Client(server, mode=mode) as client:
                    await scenario(client)

        return deferToThread(run_anyio, main).addErrback(self.explain)

    def in_thread(self, check: Callable[[], None]) -> Deferred[None]:
        """Run a blocking check off the reactor thread; a failure shows the daemons' logs."""
        return deferToThread(check).addErrback(self.explain)


def post(port: int, body: dict[str, Any], headers: dict[str, str], timeout: float = 10.0) -> tuple[int, Any, bytes]:
    """POST one JSON-RPC message to ``/mcp``; status, headers and body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        base = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        connection.request("POST", "/mcp", json.dumps(body), {**base, **headers})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def modern_request(request_id: int, method: str, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A 2026-07-28 request and its routing headers."""
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    headers = {"mcp-protocol-version": MODERN, "mcp-method": method}
    if "name" in params:
        headers["mcp-name"] = params["name"]
    body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": meta}}
    return body, headers


def audit_records(log: str) -> list[dict[str, Any]]:
    """The audit records in a daemon's log (``audit {json}`` lines)."""
    return [json.loads(line.split(" audit ", 1)[1]) for line in log.splitlines() if " audit {" in line]
