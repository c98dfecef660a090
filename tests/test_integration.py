"""Integration tests: the real daemon in a subprocess, driven by the official MCP SDK and by hand.

Every SDK scenario runs for each transport (stdio: ``mcpd --stdio``; Streamable HTTP:
``twistd -n mcpd`` on a free port) and each protocol era (``legacy``: the initialize handshake;
``2026-07-28``: stateless). The SDK is anyio-based, so a scenario runs with ``anyio.run`` in a
worker thread and the test waits for it on its Deferred. Every daemon writes a protocol trace,
validated against the official schemas after each test (`tests.daemon.DaemonTestMixin`).

How the SDK 2.3 client cancels a call whose anyio scope is cancelled: its dispatcher sends a
courtesy ``notifications/cancelled`` (shielded). The stdio transport writes it to the server's
stdin in both eras, and the legacy Streamable HTTP transport POSTs it into the session; at
2026-07-28 over HTTP the transport swallows it and aborts the request's POST instead, so the
server sees its response stream close.

`CommandLineTests` check the commands by hand (options, one-line errors, raw stdio framing, where
settings come from); `ShutdownTests` stop a daemon with SIGTERM while a blocking call runs.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError
from twisted.internet.defer import Deferred

from mcpd._version import __version__
from tests.daemon import (
    EVENT_TIMEOUT,
    FIXTURE_TOOLS,
    INITIALIZE,
    INVALID_PARAMS,
    LEGACY,
    MCPD,
    MODERN,
    PYTHON,
    READ_ONLY_DATA_TOOLS,
    SERVER_TOOLS,
    SHUTDOWN_LIMIT,
    TWISTD,
    DaemonTestCase,
    Scenario,
    daemon_env,
    free_port,
    modern_request,
    post,
    read_events,
    read_trace,
    wait_for_event_blocking,
)


async def wait_for_event(path: Path, line: str, timeout: float = EVENT_TIMEOUT) -> None:
    """Poll the events file until ``line`` is in it; fail after ``timeout`` seconds."""
    with anyio.move_on_after(timeout):
        while line not in read_events(path):
            await anyio.sleep(0.05)
        return
    raise AssertionError(f"{line!r} not recorded within {timeout}s; events: {read_events(path)}")


class _ClientScenarios:
    """The SDK scenarios; subclasses pick the transport and the mode."""

    mode: str
    transport: str
    daemon: Any = None

    # Provided by DaemonTestCase; declared for the type checker.
    with_client: Callable[[Any, str, Scenario], Deferred[None]]
    start_daemon: Callable[..., Any]
    stdio_parameters: Callable[..., Any]
    errlog: Callable[..., Any]
    events: Path
    workdir: Path
    assertEqual: Callable[..., None]
    assertIn: Callable[..., None]
    assertTrue: Callable[..., None]
    assertFalse: Callable[..., None]
    assertLessEqual: Callable[..., None]
    assertGreaterEqual: Callable[..., None]

    def server(self) -> Any:
        """What `Client` connects to: a URL, or a stdio transport started by the SDK."""
        if self.transport == "stdio":
            return stdio_client(self.stdio_parameters(), errlog=self.errlog())
        self.daemon = self.start_daemon()
        return self.daemon.url

    def scenario(self, scenario: Scenario) -> Deferred[None]:
        return self.with_client(self.server(), self.mode, scenario)

    def trace_path(self) -> Path:
        return self.daemon.trace if self.daemon is not None else self.workdir / "stdio.trace.jsonl"

    # -- listing and introspection ---------------------------------------------------------------

    def test_list_tools_and_server_info(self) -> Deferred[None]:
        """tools/list shows the server and fixture tools; server.info describes this daemon."""

        async def scenario(client: Client) -> None:
            listed = await client.list_tools()
            names = {tool.name for tool in listed.tools}
            self.assertTrue(names >= SERVER_TOOLS | FIXTURE_TOOLS, names)
            result = await client.call_tool("server.info", {})
            self.assertFalse(result.is_error, result)
            info = result.structured_content
            assert info is not None
            self.assertEqual(info["name"], "mcpd")
            self.assertEqual(info["version"], __version__)
            self.assertIn(self.transport, info["transports"])
            self.assertEqual(info["tool_count"], len(names))
            self.assertIn("tests.fixture_pack", info["toolsets"])
            if self.daemon is not None:
                self.assertIn(self.daemon.url, info["listeners"])
            # The same JSON is also returned as text (2025-11-25 server/tools §Structured Content).
            self.assertEqual(json.loads(result.content[0].text), info)  # type: ignore[union-attr]

        return self.scenario(scenario)

    def test_server_tools_filters(self) -> Deferred[None]:
        """server.tools filters by pack, by name and by hint."""

        async def scenario(client: Client) -> None:
            by_pack = (await client.call_tool("server.tools", {"pack": "tests"})).structured_content
            assert by_pack is not None
            self.assertEqual({row["name"] for row in by_pack["tools"]}, FIXTURE_TOOLS)
            self.assertEqual(by_pack["count"], len(FIXTURE_TOOLS))
            blocking = {row["name"] for row in by_pack["tools"] if row["blocking"]}
            self.assertEqual(blocking, {"tests.blocking_wait"})
            by_name = (await client.call_tool("server.tools", {"name": "server."})).structured_content
            assert by_name is not None
            self.assertEqual({row["name"] for row in by_name["tools"]}, SERVER_TOOLS)
            by_glob = (await client.call_tool("server.tools", {"name": "server.*"})).structured_content
            self.assertEqual(by_glob, by_name)
            by_match = (await client.call_tool("server.tools", {"match": "server."})).structured_content
            self.assertEqual(by_match, by_name)  # the filter's earlier name
            read_only = (await client.call_tool("server.tools", {"read_only": True})).structured_content
            assert read_only is not None
            # The default toolsets: server, the packs on the SQL store (tasks, notes, kb, memory), and cache.
            self.assertEqual({row["name"] for row in read_only["tools"]}, SERVER_TOOLS | READ_ONLY_DATA_TOOLS)
            none = (await client.call_tool("server.tools", {"name": "no-such-tool"})).structured_content
            self.assertEqual(none, {"count": 0, "tools": []})

        return self.scenario(scenario)

    # -- progress --------------------------------------------------------------------------------

    def test_progress(self) -> Deferred[None]:
        """Progress notifications arrive, their values increase, and then the result arrives."""
        seen: list[tuple[float, float | None, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append((progress, total, message))

        async def scenario(client: Client) -> None:
            result = await client.call_tool(
                "tests.progress", {"steps": 5, "delay": 0.05}, progress_callback=on_progress
            )
            self.assertFalse(result.is_error, result)
            self.assertEqual(result.content[0].text, "done after 5 steps")  # type: ignore[union-attr]
            self.assertGreaterEqual(len(seen), 1, "no progress notification arrived")
            values = [progress for progress, _total, _message in seen]
            self.assertEqual(values, sorted(set(values)), f"progress values do not increase: {values}")
            for progress, total, _message in seen:
                self.assertEqual(total, 5)
                self.assertLessEqual(progress, 5)

        return self.scenario(scenario)

    # -- cancellation ----------------------------------------------------------------------------

    def test_cancel_wait_for_cancel(self) -> Deferred[None]:
        """Cancelling the client's call cancels the handler's Deferred in the daemon."""
        return self.scenario(self.cancel_scenario("tests.wait_for_cancel"))

    def test_cancel_blocking_wait(self) -> Deferred[None]:
        """Cancelling the client's call reaches a blocking handler in the thread pool."""
        return self.scenario(self.cancel_scenario("tests.blocking_wait"))

    def cancel_scenario(self, tool: str) -> Scenario:
        label = f"{self.mode}-{uuid.uuid4().hex[:12]}"

        async def scenario(client: Client) -> None:
            outcome: list[Any] = []

            async def call() -> None:
                outcome.append(await client.call_tool(tool, {"label": label}))

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await wait_for_event(self.events, f"started {tool} {label}")
                tg.cancel_scope.cancel()
            self.assertEqual(outcome, [], "the call finished although it was cancelled")
            # While the client is still connected: closing stdin or the session would also cancel.
            await wait_for_event(self.events, f"cancelled {tool} {label}")
            self.check_cancel_on_the_wire(tool, label)
            # The connection is still usable.
            after = await client.call_tool("server.info", {})
            self.assertFalse(after.is_error, after)

        return scenario

    def check_cancel_on_the_wire(self, tool: str, label: str) -> None:
        """The trace shows the cancellation the SDK sends in this mode, and no response to it."""
        entries = read_trace(self.trace_path())
        calls = [
            entry
            for entry in entries
            if entry["dir"] == "in"
            and entry["message"].get("method") == "tools/call"
            and entry["message"]["params"].get("arguments", {}).get("label") == label
        ]
        self.assertEqual(len(calls), 1, f"tools/call with label {label} in the trace: {calls}")
        peer, request_id = calls[0]["peer"], calls[0]["message"]["id"]
        notices = [
            entry
            for entry in entries
            if entry["dir"] == "in"
            and entry["peer"] == peer
            and entry["message"].get("method") == "notifications/cancelled"
            and entry["message"].get("params", {}).get("requestId") == request_id
        ]
        if self.transport == "streamable-http" and self.mode == MODERN:
            # 2026-07-28 transports: the SDK closes the response stream; no notification.
            self.assertEqual(notices, [])
        else:
            self.assertEqual(len(notices), 1, f"no notifications/cancelled for request {request_id}")
        answers = [
            entry
            for entry in entries
            if entry["dir"] == "out" and entry["peer"] == peer and entry["message"].get("id") == request_id
        ]
        # basic/utilities/cancellation: the receiver should not answer a cancelled request.
        self.assertEqual(answers, [], f"mcpd answered the cancelled request {request_id}")

    def test_server_pings_the_client(self) -> Deferred[None]:
        """2025-11-25 basic/utilities/ping: the server may ping; the SDK client answers. The
        stateless era has no server-to-client requests, which the tool is told."""

        async def scenario(client: Client) -> None:
            result = await client.call_tool("tests.ping_client", {})
            text = result.content[0].text  # type: ignore[union-attr]
            if self.mode == LEGACY:
                self.assertFalse(result.is_error, result)
                self.assertEqual(text, "pong {}")
            else:
                self.assertTrue(result.is_error, result)
                self.assertIn("2026-07-28", text)

        return self.scenario(scenario)

    # -- errors ----------------------------------------------------------------------------------

    def test_unknown_tool(self) -> Deferred[None]:
        """An unknown tool is a protocol error, -32602, naming the tool."""

        async def scenario(client: Client) -> None:
            try:
                result = await client.call_tool("no.such.tool", {})
            except MCPError as e:
                self.assertEqual(e.code, INVALID_PARAMS)
                self.assertIn("no.such.tool", e.message)
            else:
                raise AssertionError(f"calling an unknown tool returned {result}")

        return self.scenario(scenario)

    def test_invalid_arguments(self) -> Deferred[None]:
        """Arguments that break the input schema give an isError result saying what is wrong."""

        async def scenario(client: Client) -> None:
            wrong_type = await client.call_tool("server.tools", {"read_only": "yes"})
            self.assertTrue(wrong_type.is_error, wrong_type)
            text = wrong_type.content[0].text  # type: ignore[union-attr]
            self.assertIn("server.tools", text)
            self.assertIn("read_only", text)
            self.assertIn("boolean", text)
            missing = await client.call_tool("tests.progress", {})
            self.assertTrue(missing.is_error, missing)
            self.assertIn("steps", missing.content[0].text)  # type: ignore[union-attr]
            extra = await client.call_tool("tests.wait_for_cancel", {"label": "x", "bogus": 1})
            self.assertTrue(extra.is_error, extra)
            self.assertIn("bogus", extra.content[0].text)  # type: ignore[union-attr]

        return self.scenario(scenario)


class StdioLegacyTests(_ClientScenarios, DaemonTestCase):
    transport = "stdio"
    mode = LEGACY


class StdioModernTests(_ClientScenarios, DaemonTestCase):
    transport = "stdio"
    mode = MODERN


class HTTPLegacyTests(_ClientScenarios, DaemonTestCase):
    transport = "streamable-http"
    mode = LEGACY


class HTTPModernTests(_ClientScenarios, DaemonTestCase):
    transport = "streamable-http"
    mode = MODERN


async def server_info(client: Client) -> dict[str, Any]:
    """server.info's structured content."""
    result = await client.call_tool("server.info", {})
    assert result.structured_content is not None, result
    return result.structured_content


class CommandLineTests(DaemonTestCase):
    """The ``mcpd`` and ``twistd mcpd`` commands: options, errors, stdio framing, settings."""

    def run_command(self, *argv: str, timeout: float = 10.0) -> Any:
        """Run a command in this test's dir to its end; its CompletedProcess."""
        return subprocess.run(
            argv, cwd=self.workdir, env=daemon_env(self.workdir), capture_output=True, text=True, timeout=timeout
        )

    def assert_clean_usage_error(self, result: Any, *words: str) -> None:
        """A non-zero exit with a one-line error naming ``words``, no traceback, nothing on stdout."""
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(result.stdout, "")
        self.assertNotIn("Traceback", result.stderr)
        lines = result.stderr.splitlines()
        self.assertTrue(lines, "nothing on stderr")
        for word in words:
            self.assertIn(word, lines[0])
        # Any further line may only point at --help.
        for line in lines[1:]:
            self.assertIn("--help", line)

    def test_twistd_help(self) -> None:
        result = self.run_command(TWISTD, "-n", "mcpd", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for flag in ("--port", "--stdio", "--listen", "--tool-pack", "--config"):
            self.assertIn(flag, result.stdout)

    def test_port_zero(self) -> None:
        self.assert_clean_usage_error(self.run_command(MCPD, "--port", "0"), "--port")

    def test_unknown_tool_pack(self) -> None:
        self.assert_clean_usage_error(self.run_command(MCPD, "--tool-pack", "no.such.module"), "no.such.module")

    def test_port_in_use(self) -> Deferred[None]:
        """A port another process holds: one line naming it, exit 1, from mcpd and from twistd."""
        daemon = self.start_daemon()

        def check() -> None:
            for argv in ([MCPD], [TWISTD, "-n", "--pidfile=", "mcpd"]):
                result = self.run_command(*argv, "--port", str(daemon.port))
                self.assertNotEqual(result.returncode, 0, argv)
                output = result.stdout + result.stderr
                self.assertNotIn("Traceback", output)
                self.assertIn(f"cannot listen on tcp:{daemon.port}", output)

        # The daemon holding the port still serves (and its trace gets something to validate).
        return self.in_thread(check).addCallback(lambda _: self.assert_serves_on(daemon, daemon.port))

    # -- raw stdio -------------------------------------------------------------------------------

    def raw_stdio_exchange(self, *argv: str) -> Deferred[None]:
        """Initialize by hand; stdout holds JSON-RPC lines only, logs go to stderr, EOF ends it."""

        def check() -> None:
            server = self.spawn_stdio(*argv)
            server.send(INITIALIZE)
            initialized = server.receive()
            self.assertEqual(initialized["id"], 1)
            self.assertEqual(initialized["result"]["protocolVersion"], "2025-11-25")
            self.assertEqual(initialized["result"]["serverInfo"]["name"], "mcpd")
            server.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            server.send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
            listed = server.receive()
            self.assertEqual(listed["id"], 2)
            self.assertIn("server.info", {tool["name"] for tool in listed["result"]["tools"]})
            server.close_stdin()
            code = server.wait()
            self.assertEqual(code, 0, server.stderr)
            self.assertEqual(len(server.stdout_lines), 2, server.stdout_lines)
            for line in server.stdout_lines:
                message = json.loads(line)
                self.assertEqual(message.get("jsonrpc"), "2.0", line)
            self.assertIn("stdin closed", server.stderr)

        return self.in_thread(check)

    def test_stdio_answers_request_sent_just_before_eof(self) -> Deferred[None]:
        """A response already produced is flushed before mcpd exits on stdin EOF (five tries)."""

        def check() -> None:
            for attempt in range(5):
                server = self.spawn_stdio(MCPD, "--stdio", name=f"eof{attempt}")
                server.send(INITIALIZE)
                server.receive()
                server.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
                server.send({"jsonrpc": "2.0", "id": 2, "method": "ping"})
                server.close_stdin()
                self.assertEqual(server.wait(), 0, server.stderr)
                answers = [json.loads(line) for line in server.stdout_lines[1:]]
                self.assertEqual(
                    answers, [{"jsonrpc": "2.0", "id": 2, "result": {}}], f"attempt {attempt}: ping unanswered"
                )

        return self.in_thread(check)

    # Five start-ups one after the other (each 5-9 s on a loaded 2-core machine).
    test_stdio_answers_request_sent_just_before_eof.timeout = 120  # type: ignore[attr-defined]

    def test_python_m_mcpd_stdio(self) -> Deferred[None]:
        return self.raw_stdio_exchange(PYTHON, "-m", "mcpd", "--stdio")

    def test_twistd_stdio(self) -> Deferred[None]:
        d = self.raw_stdio_exchange(TWISTD, "-n", "--pidfile=", "mcpd", "--stdio")

        def twistd_logged_to_stderr(_: None) -> None:
            self.assertIn("starting up", (self.workdir / "stdio.stderr.log").read_text())

        return d.addCallback(twistd_logged_to_stderr)

    # -- where settings come from ----------------------------------------------------------------

    def assert_serves_on(self, daemon: Any, port: int, fixture_tools: bool = True) -> Deferred[None]:
        """The daemon answers MCP on ``port`` and listens there only."""

        async def scenario(client: Client) -> None:
            info = await server_info(client)
            self.assertEqual(info["listeners"], [f"http://127.0.0.1:{port}/mcp"])
            names = {tool.name for tool in (await client.list_tools()).tools}
            self.assertEqual(names >= FIXTURE_TOOLS, fixture_tools, names)

        return self.with_client(f"http://127.0.0.1:{port}/mcp", LEGACY, scenario)

    def test_listen_endpoint(self) -> Deferred[None]:
        """``--listen tcp:PORT:interface=127.0.0.1`` without --port serves that endpoint only."""
        port = free_port()
        daemon = self.start_daemon("--listen", f"tcp:{port}:interface=127.0.0.1", pick_port=False, port=port)
        return self.assert_serves_on(daemon, port)

    def test_port_from_environment(self) -> Deferred[None]:
        port = free_port()
        daemon = self.start_daemon(pick_port=False, port=port, env={"PORT": str(port)})
        return self.assert_serves_on(daemon, port)

    def test_config_file(self) -> Deferred[None]:
        """PORT and TOOL_PACKS from a --config file."""
        port = free_port()
        config = self.workdir / "mcpd.env"
        config.write_text(f"# test settings\nPORT={port}\nexport TOOL_PACKS='tests.fixture_pack'\n")
        daemon = self.start_daemon("--config", str(config), fixture_pack=False, pick_port=False, port=port)
        return self.assert_serves_on(daemon, port)

    def test_environment_beats_config_file(self) -> Deferred[None]:
        from_file, from_env = free_port(), free_port()
        config = self.workdir / "mcpd.env"
        config.write_text(f"PORT={from_file}\n")
        daemon = self.start_daemon("--config", str(config), pick_port=False, port=from_env, env={"PORT": str(from_env)})
        return self.assert_serves_on(daemon, from_env)

    def test_mcpd_command_serves_http(self) -> Deferred[None]:
        """The ``mcpd`` console script (not twistd) serves HTTP too."""
        daemon = self.start_daemon(command=[MCPD])
        return self.assert_serves_on(daemon, daemon.port)


class ShutdownTests(DaemonTestCase):
    """SIGTERM with a blocking tool call in flight: once --shutdown-timeout has passed, the call is
    cancelled and the daemon exits."""

    def blocking_call_then_sigterm(
        self, process: subprocess.Popen[bytes], send_call: Callable[[], None], label: str
    ) -> None:
        """Start the call in a thread, SIGTERM once it runs, expect a prompt exit and a cancellation."""
        caller = threading.Thread(target=send_call, daemon=True)
        caller.start()
        wait_for_event_blocking(self.events, f"started tests.blocking_wait {label}")
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(SHUTDOWN_LIMIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(
                f"still running {SHUTDOWN_LIMIT}s after SIGTERM: the blocking call was not cancelled; "
                f"events: {read_events(self.events)}"
            ) from None
        finally:
            caller.join(SHUTDOWN_LIMIT)
        self.assertIn(f"cancelled tests.blocking_wait {label}", read_events(self.events))

    def test_http_legacy(self) -> Deferred[None]:
        daemon = self.start_daemon("--shutdown-timeout", "1")

        def check() -> None:
            status, headers, _body = post(daemon.port, INITIALIZE, {})
            self.assertEqual(status, 200)
            session = {"mcp-session-id": headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
            post(daemon.port, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
            call = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "tests.blocking_wait", "arguments": {"label": "legacy", "timeout": 20}},
            }
            self.blocking_call_then_sigterm(
                daemon.process, lambda: _quietly(post, daemon.port, call, session, 30), "legacy"
            )

        return self.in_thread(check)

    def test_http_modern(self) -> Deferred[None]:
        daemon = self.start_daemon("--shutdown-timeout", "1")

        def check() -> None:
            status, _headers, _body = post(daemon.port, *modern_request(1, "tools/list", {}))
            self.assertEqual(status, 200)
            body, headers = modern_request(
                2, "tools/call", {"name": "tests.blocking_wait", "arguments": {"label": "modern", "timeout": 20}}
            )
            self.blocking_call_then_sigterm(
                daemon.process, lambda: _quietly(post, daemon.port, body, headers, 30), "modern"
            )

        return self.in_thread(check)

    def test_stdio(self) -> Deferred[None]:
        def check() -> None:
            # stdio drains like HTTP: the call has --shutdown-timeout to finish.
            server = self.spawn_stdio(MCPD, "--stdio", "--tool-pack", "tests.fixture_pack", "--shutdown-timeout", "1")
            server.send(INITIALIZE)
            server.receive()
            server.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            call = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "tests.blocking_wait", "arguments": {"label": "stdio", "timeout": 20}},
            }
            self.blocking_call_then_sigterm(server.process, lambda: server.send(call), "stdio")

        return self.in_thread(check)


def _quietly(function: Callable[..., Any], *args: Any) -> None:
    """Call ``function``, ignoring connection errors (the daemon is being stopped)."""
    with contextlib.suppress(OSError, http.client.HTTPException):
        function(*args)
