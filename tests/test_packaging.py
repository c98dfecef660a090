"""Packaging: a plain (non-editable) install finds the twistd plugin, and etc/mcpd.tac serves.

The rest of the suite runs against the editable install `make setup` makes; these tests cover the
two other ways the daemon is deployed: built as a wheel (``pip install .``, as a .deb would) and
run from the ``.tac`` file (``twistd -ny etc/mcpd.tac``).
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.daemon import PYTHON, REPO_ROOT, TWISTD, DaemonTestMixin, call_server_info, free_port, port_answers
from tests.unit_sandbox import parse_unit, service_environment

MODERN = "2026-07-28"


class WheelInstallTests(DaemonTestMixin, TestCase):
    timeout = 120

    def test_plain_install_finds_the_plugin(self) -> None:
        """``pip install .`` (no -e): twistd finds ``mcpd`` and the package data is there."""
        target = self.workdir / "site"

        def install_and_probe() -> tuple[str, str, str]:
            subprocess.run(
                [PYTHON, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(REPO_ROOT)],
                check=True,
                capture_output=True,
                timeout=100,
            )
            # The target comes first on sys.path, ahead of the editable install of the test venv.
            env = {**os.environ, "PYTHONPATH": str(target)}
            listing = subprocess.run(
                [TWISTD, "--help"], cwd=self.workdir, env=env, capture_output=True, text=True, timeout=30
            ).stdout
            help_text = subprocess.run(
                [TWISTD, "-n", "mcpd", "--help"], cwd=self.workdir, env=env, capture_output=True, text=True, timeout=30
            ).stdout
            where = subprocess.run(
                [PYTHON, "-c", "import mcpd, twisted.plugins.mcpd_plugin as p; print(mcpd.__file__, p.__file__)"],
                cwd=self.workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
            return listing, help_text, where

        def check(outcome: tuple[str, str, str]) -> None:
            listing, help_text, where = outcome
            self.assertIn("mcpd", listing)
            self.assertIn("--port", help_text)
            module, plugin = where.split()
            self.assertTrue(module.startswith(str(target)), module)
            self.assertTrue(plugin.startswith(str(target)), plugin)
            self.assertTrue((target / "mcpd" / "web" / "static" / "dashboard.html").is_file())
            self.assertTrue((target / "mcpd" / "py.typed").is_file())

        return deferToThread(install_and_probe).addCallback(check)


class TacFileTests(DaemonTestMixin, TestCase):
    timeout = 60

    def test_tac_serves_with_its_config_file(self) -> None:
        """``twistd -ny etc/mcpd.tac`` reads $MCPD_CONFIG and the environment, and serves MCP."""
        port = free_port()
        trace = self.workdir / "tac.trace.jsonl"
        config = self.workdir / "mcpd.env"
        config.write_text(
            f"# as /etc/mcpd/mcpd.env would say\nPORT={port}\nTRACE_FILE={trace}\nLOG_FORMAT=json\n", encoding="utf-8"
        )
        env = {**os.environ, "MCPD_CONFIG": str(config), "TOOLSETS": "server"}
        for name in ("PORT", "HOST", "LISTEN", "TRACE_FILE", "TOOL_PACKS"):
            env.pop(name, None)
        env["PYTHONPATH"] = str(REPO_ROOT)
        tac = REPO_ROOT / "etc" / "mcpd.tac"
        with open(self.workdir / "tac.log", "wb") as log:
            process = subprocess.Popen(
                [TWISTD, "-n", "--pidfile=", "-y", str(tac)],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.addCleanup(self._stop, process)

        def serve() -> dict:
            deadline = time.monotonic() + 15
            while not port_answers(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((self.workdir / "tac.log").read_text(encoding="utf-8"))
                time.sleep(0.05)
            return call_server_info(port)

        def check(info: dict) -> None:
            self.assertEqual(info["name"], "mcpd")
            self.assertIn("streamable-http", info["transports"])
            self.assertEqual(info["toolsets"], ["server"])
            self.assertTrue(Path(trace).exists())
            # LOG_FORMAT from the config file reached twistd's log: JSON lines.
            lines = (self.workdir / "tac.log").read_text(encoding="utf-8").splitlines()
            messages = [json.loads(line)["message"] for line in lines if line.startswith("{")]
            self.assertTrue(any("Serving MCP on" in message for message in messages), lines[:5])

        return deferToThread(serve).addCallback(check)

    def _stop(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class DaemonisedLogTests(DaemonTestMixin, TestCase):
    """twistd daemonised for real (no -n): its stdout is /dev/null, so every log line, audit
    lines included, must reach twistd's --logfile, as text or as JSON lines."""

    timeout = 120

    def environment(self, config: str | None) -> dict[str, str]:
        env = {**os.environ, "TOOLSETS": "server", "AUDIT_LOG": "all", "PYTHONPATH": str(REPO_ROOT)}
        for name in ("PORT", "HOST", "LISTEN", "TRACE_FILE", "TOOL_PACKS", "LOG_FORMAT", "LOG_FILE", "MCPD_CONFIG"):
            env.pop(name, None)
        if config is not None:
            env["MCPD_CONFIG"] = config
        return env

    def daemonise(self, argv: list[str], env: dict[str, str], port: int) -> list[str]:
        """Run twistd with ``argv`` (daemonising), call server.info, stop it; its log lines."""
        pidfile, logfile = self.workdir / "mcpd.pid", self.workdir / "tw.log"
        command = [TWISTD, f"--pidfile={pidfile}", f"--logfile={logfile}", *argv]
        started = subprocess.run(command, cwd=self.workdir, env=env, capture_output=True, timeout=60)
        self.assertEqual(started.returncode, 0, started.stderr)
        self.addCleanup(self._kill, pidfile)
        deadline = time.monotonic() + 20
        while not port_answers(port):
            if time.monotonic() > deadline:
                raise AssertionError(f"port {port} did not answer")
            time.sleep(0.05)
        self.assertEqual(call_server_info(port)["name"], "mcpd")
        deadline = time.monotonic() + 10

        def logged() -> str:
            return logfile.read_text(encoding="utf-8") if logfile.exists() else ""

        while "server.info" not in logged() and time.monotonic() < deadline:
            time.sleep(0.05)
        return logged().splitlines()

    def _kill(self, pidfile: Path) -> None:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def assertLogged(self, lines: list[str], json_lines: bool) -> None:
        if json_lines:
            events = [json.loads(line) for line in lines if line.startswith("{")]
            messages = [str(event.get("message", "")) for event in events]
        else:
            messages = lines
        self.assertTrue(any("Serving MCP on" in message for message in messages), lines[:10])
        self.assertTrue(any("server.info" in line and "audit" in line for line in lines), lines[-10:])

    def test_tac_logs_to_twistds_logfile(self) -> Deferred[None]:
        port = free_port()
        config = self.workdir / "mcpd.env"
        config.write_text(f"PORT={port}\n", encoding="utf-8")
        env = self.environment(str(config))
        tac = str(REPO_ROOT / "etc" / "mcpd.tac")

        def check() -> None:
            self.assertLogged(self.daemonise(["-y", tac], env, port), json_lines=False)

        return deferToThread(check)

    def test_tac_logs_json_lines_to_twistds_logfile(self) -> Deferred[None]:
        port = free_port()
        config = self.workdir / "mcpd.env"
        config.write_text(f"PORT={port}\nLOG_FORMAT=json\n", encoding="utf-8")
        env = self.environment(str(config))
        tac = str(REPO_ROOT / "etc" / "mcpd.tac")

        def check() -> None:
            self.assertLogged(self.daemonise(["-y", tac], env, port), json_lines=True)

        return deferToThread(check)

    def test_twistd_mcpd_logs_json_lines_to_twistds_logfile(self) -> Deferred[None]:
        port = free_port()
        env = self.environment(None)

        def check() -> None:
            lines = self.daemonise(["mcpd", "--port", str(port), "--log-format", "json"], env, port)
            self.assertLogged(lines, json_lines=True)

        return deferToThread(check)

    def test_tac_refuses_a_missing_config_file(self) -> None:
        missing = self.workdir / "nowhere.env"
        tac = str(REPO_ROOT / "etc" / "mcpd.tac")
        done = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "-y", tac],
            cwd=self.workdir,
            env=self.environment(str(missing)),
            capture_output=True,
            timeout=60,
        )
        self.assertNotEqual(done.returncode, 0)
        self.assertIn(f"MCPD_CONFIG names {missing}, which does not exist", (done.stdout + done.stderr).decode())


class CIRunTests(TestCase):
    """``.ci/run`` gives a fresh machine what ``make`` needs: on Debian without python3-venv,
    ``python3 -m venv --help`` works but making a virtualenv fails, as ensurepip is missing."""

    def missing(self, env: dict[str, str]) -> list[str]:
        done = subprocess.run(
            [str(REPO_ROOT / ".ci" / "run"), "--missing"], env=env, capture_output=True, text=True, timeout=60
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout.split()

    def test_a_python_without_ensurepip_gets_python3_venv(self) -> None:
        # A Python whose ensurepip cannot be imported, as Debian's without python3.11-venv.
        shadow = Path(self.mktemp()).absolute() / "ensurepip"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text('raise ImportError("ensurepip is not available")\n', encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
        # `venv --help` still works there, as on Debian: the old check's blind spot.
        helped = subprocess.run(["python3", "-m", "venv", "--help"], env=env, capture_output=True)
        self.assertEqual(helped.returncode, 0)
        self.assertIn("python3-venv", self.missing(env))

    def test_a_python_with_ensurepip_needs_nothing_more(self) -> None:
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        self.assertNotIn("python3-venv", self.missing(env))


class UnitEnvironmentTests(TestCase):
    """What debian/mcpd.service gives mcpd, as systemd reads it (`tests.unit_sandbox`): a
    setting in /etc/mcpd/mcpd.env wins over the package's, STATE_KEY from secrets.env too."""

    def environment(self, mcpd_env: str, secrets_env: str) -> dict[str, str]:
        etc = Path(self.mktemp()).absolute()
        etc.mkdir()
        (etc / "mcpd.env").write_text(mcpd_env, encoding="utf-8")
        (etc / "secrets.env").write_text(secrets_env, encoding="utf-8")
        directives = parse_unit(REPO_ROOT / "debian" / "mcpd.service")
        directives["User"] = [pwd.getpwuid(os.getuid()).pw_name]  # no mcpd user here
        directives["EnvironmentFile"] = [
            name.replace("/etc/mcpd/", f"{etc}/") for name in directives.get("EnvironmentFile", [])
        ]
        self.assertEqual(len(directives["EnvironmentFile"]), 2)
        return service_environment(directives, None)

    def test_the_operators_state_key_wins(self) -> None:
        env = self.environment(f"STATE_KEY={'b' * 64}\n", f"STATE_KEY={'a' * 64}\n")
        self.assertEqual(env["STATE_KEY"], "b" * 64)

    def test_the_generated_state_key_serves_by_default(self) -> None:
        env = self.environment("#STATE_KEY=\n", f"STATE_KEY={'a' * 64}\n")
        self.assertEqual(env["STATE_KEY"], "a" * 64)
        self.assertEqual(env["DATA_DIR"], "/var/lib/mcpd")

    def test_the_operators_data_dir_wins(self) -> None:
        env = self.environment("DATA_DIR=/srv/mcpd\n", "")
        self.assertEqual(env["DATA_DIR"], "/srv/mcpd")
