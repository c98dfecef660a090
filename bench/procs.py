"""Processes the benchmark starts: free ports, CPU pinning, and servers that always get stopped."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO

LOOPBACK = "127.0.0.1"
STOP_GRACE_SECONDS = 5.0


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
                try:
                    process.wait(timeout=STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
            # Also reaps anything the server started that is still in its group.
            self._signal_group(signal.SIGKILL)
            process.wait(timeout=STOP_GRACE_SECONDS)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _signal_group(self, signum: signal.Signals) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the server wrote to its log, for an error message."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate()`` until it returns true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
