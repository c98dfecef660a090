"""The Debian package, end to end, on this machine: built, checked, installed, run, upgraded,
removed and purged.

`tests.debian_build` builds the ``.deb`` from this tree (reused while the tree is unchanged);
lintian checks it with the package's own overrides. The lifecycle test installs it with apt,
checks what it put where (user, secrets, conffile, plugin cache), verifies the unit with
``systemd-analyze verify`` and records ``systemd-analyze security``, then runs the unit's
ExecStart as the ``mcpd`` user under the unit's own sandbox (`tests.unit_sandbox`: there is no
systemd here) with a real ``$NOTIFY_SOCKET``, calls a tool with the generated key, is refused
without it from a network namespace (a genuinely non-loopback client, `tests.netns`), reloads,
stops; runs it again under contrib's stricter drop-in; upgrades to a newer version of the same
package; removes it (data and settings stay) and purges it (nothing of it stays but the user).

It needs root and the Debian tools ``tests/install-deps.sh`` installs: elsewhere it skips, and
under ``CI=true`` a missing piece fails it. It takes the machine's package database for itself
(one run at a time, by a lock) and refuses to run where mcpd is installed by someone else.
"""

from __future__ import annotations

import fcntl
import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from mcpd._version import __version__
from mcpd.config import KNOBS
from tests.daemon import REPO_ROOT, audit_records, free_port
from tests.debian_build import PLAIN_PATH, build_deb
from tests.netns import ClientNetwork
from tests.tls_certs import TLSFiles, make_tls_files
from tests.unit_sandbox import SYSTEM_PYTHON, parse_unit, sandbox_command

UNIT = Path("/lib/systemd/system/mcpd.service")
DROP_IN = REPO_ROOT / "contrib" / "systemd" / "mcpd-hardening.conf"
VENV = Path("/opt/venvs/mcpd")
ETC = Path("/etc/mcpd")
STATE = Path("/var/lib/mcpd")
MODERN = "2026-07-28"
LOCK = "/run/lock/mcpd-package-test.lock"
# Left by the package test in the state directory while the package it installed is there.
OURS = STATE / ".installed-by-mcpd-tests"
READY_TIMEOUT = 30.0
REPORT = REPO_ROOT / ".ci-artifacts" / "debian.txt"
# The tools, and the Debian packages that bring them (tests/install-deps.sh).
TOOLS = {
    "dpkg-buildpackage": "dpkg-dev",
    "dh_virtualenv": "dh-virtualenv",
    "dh": "debhelper",
    "fakeroot": "fakeroot",
    "lintian": "lintian",
    "systemd-analyze": "systemd",
    "unshare": "util-linux",
    "setpriv": "util-linux",
    "ip": "iproute2",
    "apt-get": "apt",
}


def missing() -> list[str]:
    """What this test needs that the machine lacks (as Debian package names)."""
    lacking = sorted({package for tool, package in TOOLS.items() if shutil.which(tool, path=PLAIN_PATH) is None})
    if subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True).returncode != 0:
        lacking.append("python3-seccomp")
    return lacking


def require_machine() -> None:
    """Skip (fail under CI=true) unless this runs as root with every tool."""
    why = None
    if os.geteuid() != 0:
        why = "the package test installs a .deb: it needs root"
    elif lacking := missing():
        why = f"the package test needs {' '.join(lacking)} (tests/install-deps.sh installs them)"
    if why is None:
        return
    if os.environ.get("CI") == "true":
        raise AssertionError(f"CI=true but {why}")
    raise SkipTest(why)


def run(*argv: str, check: bool = True, timeout: float = 300.0, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """A command with a plain PATH and no prompts; a failure carries its output."""
    env = {**os.environ, "PATH": PLAIN_PATH, "DEBIAN_FRONTEND": "noninteractive", **kwargs.pop("env", {})}
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env, **kwargs)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return done


def apt(*args: str) -> subprocess.CompletedProcess[str]:
    # The maintainer scripts inherit apt's environment. Run them with a PYTHONPATH naming this
    # checkout's packages (as `trial -j` gives its workers): postinst's Python must ignore it.
    env = {"PYTHONPATH": os.pathsep.join(sys.path)}
    return run("apt-get", "-o", "DPkg::Lock::Timeout=300", "-y", "-q", *args, env=env)


def package_status() -> str:
    """dpkg's status of mcpd ('' when it does not know it)."""
    return run("dpkg-query", "-W", "-f=${Status}", "mcpd", check=False).stdout.strip()


def digests(directory: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.iterdir())}


def plugin_cache() -> Path:
    """The packaged venv's Twisted plugin cache, which postinst writes as root.

    A clear failure (what the plugins directory holds) instead of a bare StopIteration, which
    trial reports as "generator raised StopIteration" with no hint of the cause.
    """
    plugins = sorted(VENV.glob("lib/python3*/site-packages/twisted/plugins"))
    if not plugins:
        raise AssertionError(f"{VENV} has no twisted/plugins directory")
    cache = plugins[0] / "dropin.cache"
    if not cache.exists():
        raise AssertionError(
            f"postinst wrote no plugin cache: {plugins[0]} holds {sorted(p.name for p in plugins[0].iterdir())}"
        )
    return cache


def owner(path: Path) -> tuple[str, str, int]:
    info = path.stat()
    return pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name, stat.S_IMODE(info.st_mode)


def call_tool(
    base: str,
    key: str | None,
    name: str = "server.info",
    context: ssl.SSLContext | None = None,
    arguments: dict[str, Any] | None = None,
) -> tuple[int, Any]:
    """A 2026-07-28 tools/call over HTTP; the status and the decoded body."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": name,
            "arguments": arguments or {},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": name,
    }
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(f"{base}/mcp", data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


# The same call, made by the system Python inside the client's network namespace.
_REMOTE_CALL = r"""
import json, sys, urllib.error, urllib.request
base, key = sys.argv[1], sys.argv[2]
body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "server.info", "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}}}
headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
           "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "server.info"}
if key:
    headers["Authorization"] = "Bearer " + key
request = urllib.request.Request(base + "/mcp", data=json.dumps(body).encode(), headers=headers)
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        print(json.dumps([response.status, json.loads(response.read())]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, json.loads(e.read() or b"null")]))
"""


class NotifySocket:
    """systemd's side of ``$NOTIFY_SOCKET``, reachable by the service user through its sandbox
    (under /run: its /tmp is private)."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="mcpd-notify-", dir="/run")
        os.chmod(self.directory, 0o755)
        self.path = os.path.join(self.directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)

    def wait_for(
        self, name: str, timeout: float = READY_TIMEOUT, process: subprocess.Popen[bytes] | None = None
    ) -> dict[str, str]:
        """The next notification that sets ``name``; `AssertionError` if none comes in time (or
        ``process`` exits first)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if process is not None and process.poll() is not None:
                raise AssertionError(f"exited with {process.returncode} before {name}=")
            self.sock.settimeout(min(left, 0.2))
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            if name in fields:
                return fields
        raise AssertionError(f"no {name}= notification within {timeout}s")

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class Service:
    """The unit's ExecStart running under its sandbox, as systemd would run it."""

    def __init__(self, workdir: Path, name: str, drop_ins: tuple[Path, ...] = ()) -> None:
        self.notify = NotifySocket()
        self.terminated = False
        command, env = sandbox_command(UNIT, drop_ins, notify_socket=self.notify.path)
        self.log_path = workdir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            self.notify.wait_for("READY", process=self.process)
        except AssertionError as e:
            self.stop()
            raise AssertionError(f"{e}\n{self.log()[-6000:]}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, str]:
        """The running process' /proc status lines."""
        lines = Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
        return {name: value.strip() for name, _, value in (line.partition(":") for line in lines)}

    def terminate(self) -> None:
        """SIGTERM, once, as systemctl stop sends it."""
        if not self.terminated and self.process.poll() is None:
            self.terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        """`terminate`, then wait for the exit; the exit code."""
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.notify.close()
        return self.process.returncode


class DebianPackageTests(TestCase):
    timeout = 1800

    tls: TLSFiles
    tls_port: int

    def setUp(self) -> None:
        require_machine()
        self.workdir = Path(self.mktemp()).resolve()
        self.workdir.mkdir(parents=True)

    def report(self, line: str) -> None:
        """Figures for the closing note (.ci-artifacts/debian.txt) and the test's log."""
        REPORT.parent.mkdir(exist_ok=True)
        with open(REPORT, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        print(f"debian: {line}")

    def test_lintian(self) -> Deferred[None]:
        """lintian finds no error or warning that debian/mcpd.lintian-overrides does not justify."""

        def check() -> None:
            deb, seconds = build_deb()
            if seconds:
                self.report(f"built {deb.name} in {seconds:.0f}s")
            # Minutes, not seconds: the package carries ~600 MB of wheels (Milvus Lite, pyarrow, numpy).
            done = run(
                "lintian", "--fail-on", "error,warning", "--tag-display-limit", "0", str(deb), check=False, timeout=1500
            )
            self.assertEqual(done.returncode, 0, f"lintian:\n{done.stdout}\n{done.stderr}")
            overrides = (REPO_ROOT / "debian" / "mcpd.lintian-overrides").read_text().splitlines()
            for number, line in enumerate(overrides):
                if line.startswith("mcpd:"):
                    self.assertTrue(overrides[number - 1].startswith("#"), f"override without a reason: {line}")

        return deferToThread(check)

    def test_lifecycle(self) -> Deferred[None]:
        return deferToThread(self.lifecycle)

    def lifecycle(self) -> None:
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            status = package_status()
            if "installed" in status and "config-files" not in status and not OURS.exists():
                self.fail("mcpd is installed on this machine, not by this test; it would be purged: purge it first")
            if status:
                apt("purge", "mcpd")
            try:
                self.install_and_run()
            finally:
                # Under the lock: another run of this test (a second checkout on the same machine)
                # must not find, or purge, this run's package.
                if package_status():
                    apt("purge", "mcpd")

    def install_and_run(self) -> None:
        started = time.monotonic()
        deb, seconds = build_deb()
        self.report(f"{deb.name}: " + (f"built in {seconds:.0f}s" if seconds else "reused (sources unchanged)"))
        installing = time.monotonic()
        apt("install", str(deb))
        self.report(f"apt-get install took {time.monotonic() - installing:.1f}s")
        OURS.touch()
        self.check_installed()
        self.check_unit()
        self.check_postinst_is_idempotent()
        port = self.configure_as_operator()
        self.check_service(port)
        self.check_service_under_drop_in(port)
        self.check_upgrade(deb, port)
        self.check_remove()
        self.check_purge()
        self.report(f"package test took {time.monotonic() - started:.0f}s in all")

    # -- install ----------------------------------------------------------------------------------

    def check_installed(self) -> None:
        self.assertEqual(package_status(), "install ok installed")
        self.assertEqual(os.readlink("/usr/bin/mcpd"), str(VENV / "bin" / "mcpd"))
        self.assertEqual(run("mcpd", "--version").stdout.strip(), f"mcpd {__version__}")
        depends = run("dpkg-query", "-W", "-f=${Depends}", "mcpd").stdout
        python = Path("/usr/bin/python3").resolve().name
        self.assertRegex(depends, rf"\b{re.escape(python)} \(>= [0-9.]+\)")

        user = pwd.getpwnam("mcpd")
        self.assertEqual(user.pw_dir, str(STATE))
        self.assertIn(user.pw_shell, ("/usr/sbin/nologin", "/bin/false"))
        self.assertEqual(grp.getgrgid(user.pw_gid).gr_name, "mcpd")
        self.assertEqual(owner(STATE), ("mcpd", "mcpd", 0o750))

        keys = ETC / "keys"
        secrets = ETC / "secrets.env"
        for secret in (keys, secrets):
            self.assertEqual(owner(secret), ("root", "mcpd", 0o640), secret)
        key_lines = [line for line in keys.read_text().splitlines() if line and not line.startswith("#")]
        self.assertEqual(len(key_lines), 1, key_lines)
        name, key = key_lines[0].split(":")
        self.assertEqual(name, "admin")
        self.assertRegex(key, r"^[0-9a-f]{64}$")
        self.assertRegex(secrets.read_text(), r"(?m)^STATE_KEY=[0-9a-f]{64}$")

        conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "mcpd").stdout
        self.assertIn("/etc/mcpd/mcpd.env", conffiles)
        self.assertNotIn("/etc/mcpd/keys", conffiles)
        settings = (ETC / "mcpd.env").read_text()
        installed = run(
            str(VENV / "bin" / "python"), "-c", "from mcpd.config import KNOBS; print(*(k.env for k in KNOBS))"
        )
        names = installed.stdout.split()
        self.assertEqual(names, [knob.env for knob in KNOBS])
        for name in names:
            self.assertRegex(settings, rf"(?m)^#{name}=", f"/etc/mcpd/mcpd.env does not document {name}")
        self.assertFalse(re.search(r"(?m)^[A-Z_]+=", settings), "every setting is commented out")
        # What the unit sets is what the file shows as in force.
        for line in parse_unit(UNIT)["Environment"]:
            name, _, value = line.partition("=")
            if name in names:
                self.assertIn(f"\n#{name}={value}\n", settings)

        cache = plugin_cache()
        self.assertEqual(owner(cache)[0], "root")
        # twistd looks plugins up: as the service user it finds mcpd's without writing the cache.
        twistd = run(
            "setpriv", "--reuid=mcpd", "--regid=mcpd", "--init-groups", str(VENV / "bin" / "twistd"), "--help", cwd="/"
        )
        self.assertIn("mcpd", twistd.stdout)
        self.assertNotIn("plugin cache", twistd.stdout + twistd.stderr)
        self.assertTrue(Path("/etc/systemd/system/multi-user.target.wants/mcpd.service").is_symlink())

    def check_unit(self) -> None:
        verify = run("systemd-analyze", "verify", str(UNIT), check=False, cwd="/")
        self.assertEqual((verify.returncode, verify.stdout + verify.stderr), (0, ""))
        self.report(f"systemd-analyze security, the package's unit: {self.exposure(UNIT)}")
        merged = self.workdir / "mcpd.service"
        merged.write_text(UNIT.read_text() + "\n" + DROP_IN.read_text())
        self.report(f"systemd-analyze security, with contrib/systemd/mcpd-hardening.conf: {self.exposure(merged)}")
        postinst = Path("/var/lib/dpkg/info/mcpd.postinst").read_text()
        self.assertIn("restart", postinst, "the service is restarted on upgrade (dh_installsystemd)")

    def exposure(self, unit: Path) -> str:
        done = run("systemd-analyze", "security", "--no-pager", "--offline=true", str(unit), cwd="/")
        found = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", done.stdout)
        assert found is not None, done.stdout
        self.assertLessEqual(float(found.group(1)), 2.0, done.stdout)
        return f"{found.group(1)} {found.group(2)}"

    def check_postinst_is_idempotent(self) -> None:
        before = digests(ETC)
        again = run("/var/lib/dpkg/info/mcpd.postinst", "configure", __version__)
        self.assertNotIn("generated", again.stdout + again.stderr)
        self.assertEqual(digests(ETC), before)
        run("/var/lib/dpkg/info/mcpd.prerm", "upgrade", __version__)
        run("/var/lib/dpkg/info/mcpd.prerm", "upgrade", __version__)
        run("/var/lib/dpkg/info/mcpd.postinst", "configure", __version__)
        self.assertEqual(digests(ETC), before)

    def configure_as_operator(self) -> int:
        """Serve the LAN on a free port, as an operator would, in the settings file."""
        port = free_port()
        # And HTTPS of mcpd's own, from files only the mcpd group reads (TLS runs pyOpenSSL's
        # callbacks, the code MemoryDenyWriteExecute could break).
        tls_dir = STATE / "tls"
        self.tls = make_tls_files(tls_dir)
        run("chown", "-R", "root:mcpd", str(tls_dir))
        run("chmod", "-R", "u=rwX,g=rX,o=", str(tls_dir))
        self.tls_port = free_port()
        with open(ETC / "mcpd.env", "a", encoding="utf-8") as f:
            f.write(
                f"\n# Set by tests.test_debian\nHOST=0.0.0.0\nPORT={port}\nLISTEN={self.tls.endpoint(self.tls_port)}\n"
            )
        run("install", "-o", "mcpd", "-g", "mcpd", "-m", "0640", "/dev/null", str(STATE / "data.txt"))
        (STATE / "data.txt").write_text("kept\n")
        return port

    # -- run ----------------------------------------------------------------------------------------

    def admin_key(self) -> str:
        lines = (ETC / "keys").read_text().splitlines()
        for line in lines:
            if line.startswith("admin:"):
                return line.split(":", 1)[1]
        names = [line.split(":", 1)[0] for line in lines if line and not line.startswith("#")]
        raise AssertionError(f"/etc/mcpd/keys has no admin key (keys named: {names})")

    def check_service(self, port: int) -> None:
        service = Service(self.workdir, "service")
        self.addCleanup(service.stop)
        status = service.status()
        mcpd = pwd.getpwnam("mcpd")
        self.assertEqual(status["Uid"].split(), [str(mcpd.pw_uid)] * 4)
        self.assertEqual(status["Gid"].split(), [str(mcpd.pw_gid)] * 4)
        self.assertEqual(status["NoNewPrivs"], "1")
        self.assertEqual(status["Seccomp"], "2")
        self.assertEqual(int(status["CapBnd"], 16), 0)
        self.assertEqual(int(status["CapEff"], 16), 0)
        self.assertNotEqual(os.readlink(f"/proc/{service.process.pid}/ns/mnt"), os.readlink("/proc/self/ns/mnt"))

        key = self.admin_key()
        code, body = call_tool(f"http://127.0.0.1:{port}", key)
        self.assertEqual(code, 200, body)
        self.assertEqual(body["result"]["structuredContent"]["name"], "mcpd")
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        code, body = call_tool(f"https://localhost:{self.tls_port}", key, context=context)
        self.assertEqual(code, 200, body)
        self.check_data_packs(f"http://127.0.0.1:{port}", key, "service")

        network = ClientNetwork()
        self.addCleanup(network.close)
        remote = f"http://{network.host_address}:{port}"
        refused = json.loads(run(*network.command([SYSTEM_PYTHON, "-c", _REMOTE_CALL, remote, ""])).stdout)
        self.assertEqual(refused[0], 401, refused)
        allowed = json.loads(run(*network.command([SYSTEM_PYTHON, "-c", _REMOTE_CALL, remote, key])).stdout)
        self.assertEqual(allowed[0], 200, allowed)
        remote_outcomes = [
            record["outcome"] for record in audit_records(service.log()) if record["peer"] == network.client_address
        ]
        # The SQL trail keeps every call (server.audit): the log has the refusal only.
        self.assertEqual(remote_outcomes, ["auth_failure"])

        service.process.send_signal(signal.SIGHUP)  # ExecReload
        service.notify.wait_for("RELOADING")
        service.notify.wait_for("READY")
        self.assertIn("Reloaded 1 API key(s)", service.log())

        service.terminate()
        service.notify.wait_for("STOPPING")
        self.assertEqual(service.stop(), 0, service.log())
        self.assertNotIn("Traceback", service.log())
        self.assertNotIn("plugin cache", service.log())

    def check_data_packs(self, base: str, key: str, run_name: str) -> None:
        """The packs on the embedded stores work under the unit's sandbox: the SQLite file in
        /var/lib/mcpd (tasks, notes)."""

        def call(tool: str, **arguments: Any) -> Any:
            code, body = call_tool(base, key, tool, arguments=arguments)
            self.assertEqual(code, 200, body)
            result = body["result"]
            self.assertFalse(result.get("isError"), result)
            return result["structuredContent"]

        info = call("server.info")
        states = {store["name"]: store["state"] for store in info["stores"]}
        self.assertEqual(states.get("database"), "ok", info["stores"])
        project = f"packaged-{run_name}"
        call("project.create", name=project)
        task = call("task.create", project=project, title="Ship the package")["task"]
        self.assertEqual(call("task.get", id=task["id"])["task"]["title"], "Ship the package")
        call("note.save", title=f"Release {run_name}", body="The package carries the data packs.")
        found = call("note.search", query="package data packs")["notes"]
        self.assertIn(f"Release {run_name}", [note["title"] for note in found])
        self.assertTrue((STATE / "mcpd.sqlite3").is_file(), sorted(path.name for path in STATE.iterdir()))

    def check_service_under_drop_in(self, port: int) -> None:
        """contrib's stricter drop-in: mcpd serves under it with TLS terminated in front of it;
        its own TLS listener cannot start there (MemoryDenyWriteExecute), as the drop-in says."""
        with self.assertRaisesRegex(AssertionError, "Cannot allocate write\\+execute memory"):
            Service(self.workdir, "hardened-tls", (DROP_IN,))
        settings = (ETC / "mcpd.env").read_text()
        without_tls = "".join(line for line in settings.splitlines(keepends=True) if not line.startswith("LISTEN="))
        (ETC / "mcpd.env").write_text(without_tls)
        try:
            service = Service(self.workdir, "hardened", (DROP_IN,))
            self.addCleanup(service.stop)
            code, body = call_tool(f"http://127.0.0.1:{port}", self.admin_key())
            self.assertEqual(code, 200, body)
            self.check_data_packs(f"http://127.0.0.1:{port}", self.admin_key(), "hardened")
            self.assertEqual(service.stop(), 0, service.log())
            self.assertNotIn("Traceback", service.log())
        finally:
            (ETC / "mcpd.env").write_text(settings)

    # -- upgrade, remove, purge -------------------------------------------------------------------

    def check_upgrade(self, deb: Path, port: int) -> None:
        """A newer version of the same package: settings, secrets and data kept, and it serves."""
        unpacked = self.workdir / "newer"
        run("dpkg-deb", "-R", str(deb), str(unpacked))
        control = unpacked / "DEBIAN" / "control"
        control.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {__version__}+test1", control.read_text()))
        newer = self.workdir / f"mcpd_{__version__}+test1_amd64.deb"
        run("dpkg-deb", "-Zgzip", "-z1", "--root-owner-group", "-b", str(unpacked), str(newer))
        before = digests(ETC)
        apt("install", str(newer))
        self.assertEqual(package_status(), "install ok installed")
        self.assertEqual(run("dpkg-query", "-W", "-f=${Version}", "mcpd").stdout, f"{__version__}+test1")
        self.assertEqual(digests(ETC), before)
        self.assertEqual((STATE / "data.txt").read_text(), "kept\n")
        self.assertTrue(plugin_cache().exists())
        service = Service(self.workdir, "upgraded")
        self.addCleanup(service.stop)
        self.assertEqual(call_tool(f"http://127.0.0.1:{port}", self.admin_key())[0], 200)
        self.assertEqual(service.stop(), 0, service.log())

    def check_remove(self) -> None:
        apt("remove", "mcpd")
        self.assertEqual(package_status(), "deinstall ok config-files")
        for gone in (VENV, Path("/usr/bin/mcpd"), UNIT):
            self.assertFalse(gone.exists() or gone.is_symlink(), f"{gone} is left after remove")
        for kept in (ETC / "mcpd.env", ETC / "keys", ETC / "secrets.env", STATE / "data.txt"):
            self.assertTrue(kept.exists(), f"{kept} is gone after remove")
        pwd.getpwnam("mcpd")

    def check_purge(self) -> None:
        postrm = self.workdir / "postrm"
        shutil.copy2("/var/lib/dpkg/info/mcpd.postrm", postrm)
        apt("purge", "mcpd")
        self.assertEqual(package_status(), "")
        for gone in (
            ETC,
            STATE,
            Path("/var/log/mcpd"),
            VENV,
            Path("/etc/systemd/system/multi-user.target.wants/mcpd.service"),
        ):
            self.assertFalse(gone.exists() or gone.is_symlink(), f"{gone} is left after purge")
        self.assertFalse(list(Path("/var/lib/dpkg/info").glob("mcpd.*")))
        run(str(postrm), "purge")  # idempotent: a second purge finds nothing and succeeds
        pwd.getpwnam("mcpd")  # the user stays (files it owned may remain elsewhere)
