# -*- test-case-name: tests.test_sqlstore -*-
"""Real backing services for tests, started on loopback ports in temporary directories.

`MariaDB` runs Debian's ``mariadbd`` (see ../shared/SERVICES.md): ``mariadb-install-db`` into a
fresh data directory, the server on a free 127.0.0.1 port with its socket in that directory, a
``mcpd`` user (password auth, over TCP) allowed every database named ``mcpd_*``. `shared_mariadb`
is one server for the whole run (each test makes its own database); a fault test starts its own
to stop and restart it. Where the server is not installed, tests skip locally and fail under
``CI=true`` (tests/install-deps.sh installs it).
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest

from tests.daemon import free_port, port_answers

USER = "mcpd"
PASSWORD = "mcpd-test-password"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
_BINARIES = ("mariadbd", "mariadb-install-db", "mariadb-admin")


def _binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )


def require_mariadb() -> None:
    """Skip the test without a MariaDB server installed, or fail under CI=true."""
    missing = [name for name in _BINARIES if _binary(name) is None]
    if missing:
        why = f"MariaDB is not installed (missing {', '.join(missing)}): run tests/install-deps.sh as root"
        if os.environ.get("CI") == "true":
            raise AssertionError(why)
        raise SkipTest(why)


class MariaDB:
    """One MariaDB server of our own: start, stop, restart (same data, same port), and databases."""

    def __init__(self, root: Path | None = None) -> None:
        require_mariadb()
        self.root = Path(root or tempfile.mkdtemp(prefix="mcpd-mariadb-")).absolute()
        self.datadir = self.root / "data"
        self.socket = self.root / "mysql.sock"
        self.tmpdir = self.root / "tmp"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._installed = False

    # -- life -----------------------------------------------------------------------------------

    def start(self) -> MariaDB:
        """Start the server (installing a fresh data directory the first time) and wait until it
        answers on its port. `RuntimeError` with what the server or the installer said, when
        either fails."""
        if not self._installed:
            self.root.mkdir(parents=True, exist_ok=True)
            self.tmpdir.mkdir(exist_ok=True)
            _run_or_explain(
                [
                    str(_binary("mariadb-install-db")),
                    "--no-defaults",
                    "--user=root",
                    f"--datadir={self.datadir}",
                    # Its own temporary directory: the installers of parallel test runs met in
                    # /tmp ("Could not remove temporary table ... Unknown table
                    # mysql.tmp_proxies_priv").
                    f"--tmpdir={self.tmpdir}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ],
                timeout=120,
            )
        with open(self.root / "err.log", "ab") as err:
            self.process = subprocess.Popen(
                [
                    str(_binary("mariadbd")),
                    "--no-defaults",
                    "--user=root",
                    f"--datadir={self.datadir}",
                    f"--socket={self.socket}",
                    f"--tmpdir={self.tmpdir}",
                    f"--port={self.port}",
                    "--bind-address=127.0.0.1",
                    f"--pid-file={self.root / 'mysqld.pid'}",
                    f"--log-error={self.root / 'err.log'}",
                    # Small and quick for tests: no binary log, a small buffer pool.
                    "--skip-log-bin",
                    "--innodb-buffer-pool-size=64M",
                    "--max-connections=500",
                ],
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        # Ready when our own socket answers (another server may hold the port) and the port too.
        while not (_socket_answers(self.socket) and port_answers(self.port)):
            code = self.process.poll()
            if code is not None or time.monotonic() > deadline:
                how = f"exited with status {code}" if code is not None else f"did not answer within {START_TIMEOUT:g}s"
                if code is None:
                    self.kill()
                raise RuntimeError(
                    f"MariaDB {how} on port {self.port} (data in {self.root}); its output and error log:\n"
                    f"{self.error_log()}"
                )
            time.sleep(0.05)
        if not self._installed:
            self._installed = True
            self.sql(
                f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'",
                f"GRANT ALL PRIVILEGES ON `mcpd\\_%`.* TO '{USER}'@'127.0.0.1'",
            )
        return self

    def stop(self) -> None:
        """Shut the server down cleanly (as an operator would) and wait for it to exit."""
        if self.process is None or self.process.poll() is not None:
            return
        subprocess.run(
            [_binary("mariadb-admin"), "--no-defaults", f"--socket={self.socket}", "-uroot", "shutdown"],
            capture_output=True,
            timeout=STOP_TIMEOUT,
        )
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL the server (a crash), for cleanup."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)

    def destroy(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def error_log(self) -> str:
        try:
            return (self.root / "err.log").read_text(errors="replace")[-4000:] or "(empty)"
        except OSError:
            return "(no error log)"

    # -- use ------------------------------------------------------------------------------------

    def connect(self, database: str | None = None, root: bool = True) -> Any:
        """A PyMySQL connection: as root over the socket, or as the mcpd user over TCP."""
        import pymysql

        if root:
            return pymysql.connect(unix_socket=str(self.socket), user="root", database=database, autocommit=True)
        return pymysql.connect(
            host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, database=database, autocommit=True
        )

    def sql(self, *statements: str, database: str | None = None) -> list[Any]:
        """Run statements as root; the rows of the last one."""
        connection = self.connect(database)
        try:
            with connection.cursor() as cursor:
                rows: list[Any] = []
                for statement in statements:
                    cursor.execute(statement)
                    rows = list(cursor.fetchall())
                return rows
        finally:
            connection.close()

    def new_database(self) -> str:
        """A fresh, empty database the mcpd user may use; its name."""
        name = f"mcpd_{uuid.uuid4().hex[:12]}"
        self.sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        return name

    def url(self, database: str, password: bool = False) -> str:
        """The --db-url of ``database`` for the mcpd user (the password given apart unless asked)."""
        secret = f":{PASSWORD}" if password else ""
        return f"mysql+pymysql://{USER}{secret}@127.0.0.1:{self.port}/{database}"


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _run_or_explain(command: list[str], timeout: float) -> None:
    """Run a set-up command; `RuntimeError` with its exit status and output when it fails or
    hangs (a bare CalledProcessError showed neither)."""
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode(errors="replace")[-4000:]
        raise RuntimeError(f"{' '.join(command)} did not finish within {timeout:g}s; its output:\n{output}") from None
    if done.returncode != 0:
        output = done.stdout.decode(errors="replace")[-4000:]
        raise RuntimeError(f"{' '.join(command)} exited with status {done.returncode}; its output:\n{output}")


_shared: MariaDB | None = None


def shared_mariadb() -> MariaDB:
    """The run's shared MariaDB server (started on first use, stopped when the run ends)."""
    global _shared
    if _shared is None or _shared.process is None or _shared.process.poll() is not None:
        server = MariaDB()
        atexit.register(server.destroy)
        _shared = server.start()
    return _shared
