"""Processes the benchmark starts: free ports, CPU pinning, and servers that always get stopped."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import IO

LOOPBACK = "127.0.0.1"
STOP_GRACE_SECONDS = 5.0

_started: list[ServerProcess] = []


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def pinning_problem(cpus: Sequence[int]) -> str | None:
    """Why processes cannot be pinned to ``cpus`` here, or None when they can."""
    if shutil.which("taskset") is None:
        return "taskset is missing (apt-get install -y util-linux)"
    available = os.sched_getaffinity(0)
    missing = [cpu for cpu in cpus if cpu not in available]
    if missing:
        return f"CPU(s) {missing} not available to this process (have {sorted(available)})"
    return None


def pinned(command: Sequence[str], cpu: int | None) -> list[str]:
    """``command`` run on ``cpu`` only (through taskset), or unchanged when ``cpu`` is None."""
    return ["taskset", "-c", str(cpu), *command] if cpu is not None else list(command)


@contextmanager
def thread_pinned(cpu: int | None) -> Iterator[None]:
    """Run the calling thread on ``cpu`` only for the duration of the block."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class ServerProcess:
    """A server under test in its own process group, stopped on exit from the ``with`` block.

    Stopping sends SIGTERM to the group, then SIGKILL after a grace period, so a server that
    ignores SIGTERM (or children it started) cannot outlive the benchmark. Output goes to a log
    file (a full pipe would stall the server); in stdio mode stdin and stdout are pipes instead.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        log_path: Path,
        cwd: Path,
        env: Mapping[str, str],
        stdio: bool = False,
    ) -> None:
        self.command = list(command)
        self.log_path = log_path
        self._cwd = cwd
        self._env = dict(env)
        self._stdio = stdio
        self._log: IO[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        self._log = self.log_path.open("wb")
        pipe_or_null = subprocess.PIPE if self._stdio else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                self.command,
                stdin=pipe_or_null,
                stdout=subprocess.PIPE if self._stdio else self._log,
                stderr=self._log,
                cwd=self._cwd,
                env=self._env,
                start_new_session=True,
            )
        except BaseException:
            self._log.close()
            raise
        _started.append(self)
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _value: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()

    def exited(self) -> int | None:
        """The exit status if the server has already exited, else None."""
        return self.process.poll() if self.process is not None else None

    def stop(self) -> None:
        """Stop the server's process group: SIGTERM, then SIGKILL after the grace period."""
        process = self.process
        if process is not None:
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()
            if process.poll() is None:
                self._signal_group(signal.SIGTERM)
                with suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=STOP_GRACE_SECONDS)
            # Also reaps anything the server started that is still in its group.
            self._signal_group(signal.SIGKILL)
            process.wait(timeout=STOP_GRACE_SECONDS)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self in _started:
            _started.remove(self)

    def _signal_group(self, signum: signal.Signals) -> None:
        assert self.process is not None
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def cpu_seconds(self) -> float | None:
        """CPU time the server has used so far (user + system), None where unknown."""
        if self.process is None:
            return None
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
            # Fields after the parenthesised command name; utime and stime are the 14th and 15th.
            fields = stat.rpartition(")")[2].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the server wrote to its log, for an error message."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def busy_cpu_fraction(window: float = 1.0) -> float | None:
    """How busy the machine's CPUs were over ``window`` seconds (0..1), None where unknown.

    Other work on the machine skews every figure; this lets the report say so.
    """

    def sample() -> tuple[int, int]:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    try:
        total_before, idle_before = sample()
        time.sleep(window)
        total_after, idle_after = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total_after - total_before
    return 1 - (idle_after - idle_before) / total if total > 0 else None


def stop_all() -> None:
    """Stop every server still running: the safety net for a stop that an interruption cut short."""
    for server in list(_started):
        server.stop()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate()`` until it returns true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
