# -*- test-case-name: tests.test_redis -*-
"""A real ``redis-server`` for tests, on a loopback port in a temporary directory.

`RedisServer` runs Debian's ``redis-server`` in the foreground as a child process (see
../shared/SERVICES.md), with no persistence unless asked (an fsynced append-only file), optionally
with a password (``requirepass``) and TLS (``rediss://``, certificates from `tests.tls_certs`). It can be stopped, restarted on the
same port, killed, and frozen (SIGSTOP: a server that accepts connections but never answers).
`shared_redis` is one server for the whole run (tests keep apart by key prefix or database
number); fault tests start their own.

Where ``redis-server`` is not installed, tests skip locally and fail under ``CI=true``
(tests/install-deps.sh installs it).

From a plain script::

    server = RedisServer().start()      # or: python -m tests.redis_service
    print(server.url)
    server.destroy()
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest

from tests.daemon import free_port

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
PASSWORD = "mcpd-redis-test-password"


def _binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/bin") / name, Path("/usr/sbin") / name) if p.exists()), None
    )


def require_redis() -> None:
    """Skip the test without ``redis-server`` installed, or fail under CI=true."""
    if _binary("redis-server") is None:
        why = "redis-server is not installed: run tests/install-deps.sh as root (Debian's redis-server)"
        if os.environ.get("CI") == "true":
            raise AssertionError(why)
        raise SkipTest(why)


def unique_prefix() -> str:
    """A key prefix of its own for one test, so tests sharing a server never meet."""
    return f"t{uuid.uuid4().hex[:12]}:"


def _die_with_parent() -> list[str]:
    """The server gets SIGTERM if the test process dies without stopping it (util-linux's
    setpriv sets that at exec)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


class RedisServer:
    """One ``redis-server`` of our own: start, stop, restart (same port), kill, freeze."""

    def __init__(
        self, root: str | Path | None = None, password: str | None = None, tls: bool = False, persistent: bool = False
    ) -> None:
        require_redis()
        # persistent: an append-only file synced at every write, so that what Redis acknowledged
        # survives a restart (or a kill); otherwise a restart starts empty.
        self.persistent = persistent
        self.root = Path(root or tempfile.mkdtemp(prefix="mcpd-redis-")).absolute()
        self.password = password
        self.port = free_port()
        self.tls_files: Any = None
        if tls:
            from tests.tls_certs import make_tls_files

            self.root.mkdir(parents=True, exist_ok=True)
            self.tls_files = make_tls_files(self.root / "tls")
            # Redis serves one file: the server's certificate, then the intermediate's.
            self.tls_fullchain = self.root / "tls" / "fullchain.pem"
            self.tls_fullchain.write_bytes(self.tls_files.cert.read_bytes() + self.tls_files.chain.read_bytes())
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "redis.log"

    # -- where ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The ``--redis-url`` of database 0 (the password, if any, given apart: `password`)."""
        return self.url_of(0)

    def url_of(self, db: int, password: bool = False) -> str:
        """The URL of database ``db``; with the password in it when asked."""
        scheme = "rediss" if self.tls_files is not None else "redis"
        secret = f":{self.password}@" if password and self.password else ""
        return f"{scheme}://{secret}127.0.0.1:{self.port}/{db}"

    # -- life -----------------------------------------------------------------------------------

    def start(self) -> RedisServer:
        """Start the server (on the same port as before, after a `stop`) and wait until it
        answers PING."""
        self.root.mkdir(parents=True, exist_ok=True)
        command = [*_die_with_parent(), str(_binary("redis-server"))]
        command += ["--bind", "127.0.0.1", "--dir", str(self.root), "--logfile", str(self.log_path)]
        command += ["--daemonize", "no", "--save", "", "--protected-mode", "no"]
        command += ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        if self.tls_files is not None:
            files = self.tls_files
            command += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            command += ["--tls-cert-file", str(self.tls_fullchain), "--tls-key-file", str(files.key)]
            command += ["--tls-ca-cert-file", str(files.ca)]
        else:
            command += ["--port", str(self.port)]
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"redis-server did not start on port {self.port}:\n{self.log_tail()}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop the server as an operator would (SHUTDOWN NOSAVE) and wait for it to exit."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        self.thaw()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            self.cli("shutdown", "nosave")
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def restart(self) -> RedisServer:
        """Stop and start again, on the same port (empty unless ``persistent``)."""
        self.stop()
        return self.start()

    def kill(self) -> None:
        """SIGKILL the server (a crash)."""
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def freeze(self) -> None:
        """SIGSTOP the server: connections are accepted by the kernel but nothing is answered."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen server."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def destroy(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- use ------------------------------------------------------------------------------------

    def cli(self, *args: str) -> str:
        """Run one command with ``redis-cli``; its output (raises on a failed run)."""
        command = [str(_binary("redis-cli")), "-h", "127.0.0.1", "-p", str(self.port)]
        if self.tls_files is not None:
            command += ["--tls", "--cacert", str(self.tls_files.ca)]
        env = dict(os.environ)
        if self.password:
            env["REDISCLI_AUTH"] = self.password
        result = subprocess.run([*command, *args], capture_output=True, timeout=STOP_TIMEOUT, check=True, env=env)
        return result.stdout.decode("utf-8", "replace").strip()

    def _answers(self) -> bool:
        """Whether the server answers PING."""
        if self.tls_files is not None:
            try:
                return self.cli("ping") == "PONG"
            except (OSError, subprocess.SubprocessError):
                return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                auth = f"AUTH {self.password}\r\n" if self.password else ""
                s.sendall(f"{auth}PING\r\n".encode())
                return b"PONG" in s.recv(256)
        except OSError:
            return False


_shared: RedisServer | None = None


def shared_redis() -> RedisServer:
    """The run's shared Redis server (started on first use, stopped when the run ends)."""
    global _shared
    if _shared is None or not _shared.running:
        server = RedisServer()
        atexit.register(server.destroy)
        _shared = server.start()
    return _shared


if __name__ == "__main__":  # pragma: no cover - a helper for people and scripts
    import sys

    server = RedisServer(password=os.environ.get("REDIS_PASSWORD")).start()
    print(server.url, flush=True)
    try:
        sys.stdin.read()  # until stdin closes
    finally:
        server.destroy()
