"""Packaging: a plain (non-editable) install finds the twistd plugin, and etc/mcpd.tac serves.

The rest of the suite runs against the editable install `make setup` makes; these tests cover the
two other ways the daemon is deployed: built as a wheel (``pip install .``, as a .deb would) and
run from the ``.tac`` file (``twistd -ny etc/mcpd.tac``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.daemon import PYTHON, REPO_ROOT, TWISTD, DaemonTestMixin, call_server_info, free_port, port_answers

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
