# -*- test-case-name: tests.test_milvus -*-
"""Milvus for the tests: Milvus Lite embedded (a ``.db`` path in a temp dir) and ``milvus-lite
server`` on a loopback port, the same gRPC API as a Milvus server.

`shared_server` is one server for the whole test run (tests keep apart by index prefix), started
on first use and stopped when the test process exits; fault tests start their own `MilvusLiteServer`
and stop and restart it at will. Without pymilvus and milvus-lite (the ``vector`` extra) the tests
skip locally and fail under ``CI=true``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from twisted.trial.unittest import SkipTest

from tests.daemon import free_port, port_answers

START_TIMEOUT = 60.0


def require_milvus() -> None:
    """Skip without pymilvus and milvus-lite; under CI that is a failure."""
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError as e:
        if os.environ.get("CI") == "true":
            raise AssertionError(
                f"CI=true but {e.name} is missing: install mcpd[tests] (it has the vector extra)"
            ) from e
        raise SkipTest(f"{e.name} is not installed (pip install -e '.[tests]')") from e


def unique_prefix() -> str:
    """An index prefix of its own for one test, so tests sharing a server never meet."""
    return f"t{uuid.uuid4().hex[:12]}_"


def _die_with_parent() -> list[str]:
    """The server gets SIGTERM if the test process dies without stopping it: util-linux's setpriv
    sets that at exec (a Popen preexec_fn would run Python in a child forked from a process full of
    gRPC threads, which can hang before exec)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


class MilvusLiteServer:
    """``milvus-lite server`` in a subprocess, on 127.0.0.1, with its data in ``directory``."""

    def __init__(self, directory: str | Path, port: int | None = None) -> None:
        self.directory = Path(directory)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.directory / "milvus-lite.log"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MilvusLiteServer:
        """Start the server (on the same port and data as before, after a `stop`)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [*_die_with_parent(), sys.executable, "-m", "milvus_lite", "server"]
        command += ["--data-dir", str(self.directory / "data")]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not port_answers(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"milvus-lite server did not start on port {self.port}:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


_shared: MilvusLiteServer | None = None


def shared_server() -> MilvusLiteServer:
    """The test run's one ``milvus-lite server``, started on first use."""
    global _shared
    require_milvus()
    if _shared is None or _shared.process is None or _shared.process.poll() is not None:
        _shared = MilvusLiteServer(tempfile.mkdtemp(prefix="mcpd-milvus-")).start()
        atexit.register(_shared.stop)
    return _shared
