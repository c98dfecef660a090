"""Property-based fuzzing (hypothesis) of every transport of a real daemon with API keys.

Each test starts ``twistd -n mcpd`` with a key file (an admin and a read-only key) and the
`tests.fuzz_pack` echo tools, then sends generated JSON-RPC (see `tests.fuzzing`: ids of every JSON
type, nesting, odd Unicode and lone surrogates, NaN and numbers past a double spelled raw,
2025-03-26 batches, wrong methods and params, damaged bytes) the way real clients frame it:

- Streamable HTTP, stateless 2026-07-28 requests with their routing headers;
- Streamable HTTP, legacy sessions of every handshake version (``Mcp-Session-Id``);
- HTTP+SSE (``GET /sse``, ``POST /messages/``);
- WebSocket (``/ws``, subprotocol ``mcp``), a legacy and a stateless connection;
- stdio (``mcpd --stdio``), a legacy and a stateless process;
- raw HTTP requests: any method and path, every header MCP reads, keys sent every way,
  forwarding headers from a trusted proxy, oversized and missing or doubled headers.

Properties: every answer is interoperable JSON (`tests.wire.strict_loads`) of the right
JSON-RPC shape, every request is answered exactly as JSON-RPC says (`tests.fuzzing.owed`), no 5xx
but 501/503, nothing served to a client without a valid key, no critical line in the log, a
bounded peak RSS, a trace file of strict JSON, and a normal ``tools/call`` still served at the end.
Messages over WebSocket, /sse and stdio are each followed by a ``ping`` (the sentinel), so an
answer that never comes is noticed at once.

CI runs few examples per test with fixed seeds (~a minute for the module); ``make fuzz`` runs
many (``MCPD_FUZZ_EXAMPLES``) with random ones and prints each test's figures.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import attrs
from httpx2.websockets import WebSocketDisconnect, WebSocketNetworkError
from hypothesis import given, note
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from wsproto.events import TextMessage

from mcpd.protocol.codec import MAX_DEPTH
from mcpd.protocol.versions import LEGACY_VERSIONS
from tests.daemon import MCPD, Daemon, DaemonTestMixin
from tests.fuzzing import (
    ENVELOPE,
    HEADER_SETS,
    METHODS,
    MODERN,
    PATHS,
    Credentials,
    Owed,
    answer_problems,
    authorization,
    fuzz_settings,
    log_alarms,
    long_run,
    memory_kib,
    message_problems,
    owed,
    payloads,
    routing_headers,
    strict_trace_problems,
    weighted,
)
from tests.wire import (
    Answer,
    EventStream,
    HTTPClient,
    NotStrictJSON,
    Reply,
    SSEDecoder,
    exchange,
    raw_request,
    strict_loads,
)

KEYS = Credentials()
BOTH = "application/json, text/event-stream"
# How much the daemon's peak resident memory may pass what it used once started.
RSS_GROWTH_LIMIT_KIB = 96 * 1024
# How long an owed answer may take (the fuzz tools answer at once), and the first answer of a
# process that is still starting.
ANSWER_TIMEOUT = 5.0
SETUP_TIMEOUT = 30.0
# How long an owed answer may trail the answer to the ping sent after it.
GRACE = 0.5
# How long a stream that owes nothing more is watched before it is let go.
QUIET = 0.3
DAEMON_ARGS = (
    "--tool-pack",
    "tests.fuzz_pack",
    # Limits far above what the fuzzing sends: what is fuzzed here is the input, not the limits.
    "--rate-limit",
    "1000000",
    "--max-streams-per-key",
    "1000",
)


def bearer(key: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {key}")]


def encoded(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def message_bytes(message: Any) -> bytes:
    return json.dumps(message).encode()


def tools_call(request_id: Any, name: str = "server.info", modern: bool = True) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": {}}
    if modern:
        params["_meta"] = ENVELOPE
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def initialize(request_id: Any, version: str) -> dict[str, Any]:
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "fuzz", "version": "1"}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": params}


INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
INIT_OWED = Owed(ids=(("str", "init"),))


@attrs.define
class Figures:
    """What one property did: its examples and time (for the long run's closing line), and in a
    survey every distinct problem it met."""

    examples: int = 0
    started: float = attrs.field(factory=time.monotonic)
    findings: dict[str, list[str]] = attrs.field(factory=dict)

    def record(self, problem: str) -> None:
        """Keep ``problem`` under its kind (its first line, numbers and quotes blurred)."""
        first = problem.strip().splitlines()[0] if problem.strip() else "(no message)"
        kind = re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "_", first)[:100]
        self.findings.setdefault(kind, []).append(problem)

    def summary(self) -> str:
        kinds = sorted(self.findings.items(), key=lambda item: -len(item[1]))
        return "\n\n".join(f"[{len(problems)}x] {problems[0]}" for _kind, problems in kinds)


class FuzzTestCase(DaemonTestMixin, TestCase):
    """A daemon with keys and the fuzz pack, and the checks every test ends with."""

    timeout = 180 if long_run() is None else 900 + 2 * (long_run() or 0)

    def setUp(self) -> None:
        self.figures = Figures()
        self.baseline_kib = 0
        # What the example being run sent and got, for a failure message.
        self.context = ""

    def start_fuzzed(self, *args: str) -> tuple[Daemon, HTTPClient]:
        keys = self.workdir / "keys.txt"
        keys.write_text(KEYS.key_file(), encoding="utf-8")
        daemon = self.start_daemon("--api-key-file", str(keys), *DAEMON_ARGS, *args, fixture_pack=False)
        assert daemon.port is not None
        http = HTTPClient(daemon.port)
        self.addCleanup(http.close)
        self.daemon = daemon
        return daemon, http

    def in_thread(self, work: Callable[[], None]) -> Deferred[None]:
        """Run ``work`` (which runs the properties) in a thread, from a baseline of the
        daemon's memory; then fail with the findings of a survey."""

        def run() -> None:
            daemon = getattr(self, "daemon", None)
            if daemon is not None:
                self.baseline_kib = memory_kib(daemon.process.pid)[0]
            self.figures.started = time.monotonic()
            try:
                work()
            except Exception as e:
                if not self.figures.findings:
                    raise
                self.figures.record(f"{type(e).__name__}: {e}")
            if self.figures.findings:
                (self.workdir / "findings.txt").write_text(self.figures.summary(), encoding="utf-8")
                self.fail(f"{len(self.figures.findings)} kinds of problem:\n\n{self.figures.summary()}")

        return deferToThread(explained, run)

    def example(self, work: Callable[[], None]) -> None:
        """Run one example; in a survey (``MCPD_FUZZ_SURVEY=1``) its failure is recorded and
        the run goes on, so that one run lists every kind of problem."""
        self.figures.examples += 1
        self.context = ""
        if not survey():
            work()
            return
        try:
            work()
        except Exception as e:  # noqa: BLE001 -- recorded, reported at the end of the test
            self.figures.record(f"{type(e).__name__}: {e}\n{self.context}")

    def expect(self, problems: list[str]) -> None:
        """Fail with ``problems`` and what was sent and received, if there are any."""
        if problems:
            raise self.failureException("\n".join(problems) + "\n--\n" + self.context[:3000])

    def saw(self, text: str) -> None:
        """Add to what this example sent and received (shown with a failure)."""
        self.context += text + "\n"
        if currently_in_test_context():
            note(text[:3000])

    # -- the checks every test ends with --------------------------------------------------------

    def call_over_http(self, http: HTTPClient, key: str = KEYS.admin) -> dict[str, Any]:
        """A normal 2026-07-28 tools/call of server.info; its structured result."""
        headers = [
            ("Content-Type", "application/json"),
            ("Accept", BOTH),
            ("MCP-Protocol-Version", MODERN),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "server.info"),
            *bearer(key),
        ]
        answer = http.post("/mcp", message_bytes(tools_call("after")), encoded(headers), bool)
        self.assertEqual(answer.status, 200, answer)
        result: dict[str, Any] = answer.messages[0]["result"]["structuredContent"]
        return result

    def assert_healthy(self, http: HTTPClient, transport: str) -> None:
        """Still serving, nothing alarming in the log, memory bounded, the trace strict JSON."""
        daemon = self.daemon
        self.assertIsNone(daemon.process.poll(), "the daemon exited")
        self.assertEqual(self.call_over_http(http)["name"], "mcpd")
        self.assert_bounded(transport, daemon.process.pid, daemon.log("stdout") + daemon.log("stderr"), daemon.trace)

    def assert_bounded(self, transport: str, pid: int, log: str, trace: Any) -> None:
        rss, peak = memory_kib(pid)
        self.report(transport, rss, peak)
        self.assertLessEqual(
            peak - self.baseline_kib, RSS_GROWTH_LIMIT_KIB, f"peak RSS {peak} KiB, {self.baseline_kib} KiB once started"
        )
        self.assertEqual(log_alarms(log), [])
        self.assertEqual(strict_trace_problems(trace), [])

    def report(self, transport: str, rss: int, peak: int) -> None:
        figures = self.figures
        line = (
            f"fuzz {transport}: {figures.examples} examples in {time.monotonic() - figures.started:.1f} s; "
            f"RSS {self.baseline_kib // 1024} MiB once started, {rss // 1024} MiB at the end, "
            f"peak {peak // 1024} MiB"
        )
        if long_run() is not None:
            print(line, file=sys.__stdout__, flush=True)
        with open(self.workdir / "figures.txt", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    # -- HTTP -----------------------------------------------------------------------------------

    def post(self, http: HTTPClient, payload: bytes, headers: list[tuple[str, str]], expected: Owed) -> Answer:
        """POST ``payload`` to /mcp; the answer read as far as ``expected`` needs."""
        self.saw(f"POST /mcp {headers!r}\n{payload[:2000]!r}\nowed: {expected}")
        try:
            if expected.nothing or expected.maybe:
                answer = http.post("/mcp", payload, encoded(headers), lambda _m: False, quiet=QUIET)
            else:
                answer = http.post("/mcp", payload, encoded(headers), expected.satisfied)
        except NotStrictJSON as e:
            raise self.failureException(f"an answer that is not strict JSON: {e}\n--\n{self.context}") from None
        self.saw(f"answer: {answer.status} {answer.content_type} {answer.messages or answer.body[:300]!r}")
        return answer

    # -- message channels (WebSocket, /sse, stdio) --------------------------------------------------

    def converse(self, channel: Channel, payload: bytes, expected: Owed, timeout: float = ANSWER_TIMEOUT) -> list[Any]:
        """Send ``payload`` and a sentinel ping; every message that came before the ping's
        answer, and after it until every owed answer is in (bounded)."""
        self.saw(f"sent: {payload[:2000]!r}\nowed: {expected}")
        sentinel = f"fuzz-sentinel-{next(_sentinels)}"
        if not channel.send(payload):
            expected = Owed()  # refused as it was sent: nothing will come on the stream
        channel.send(message_bytes({"jsonrpc": "2.0", "id": sentinel, "method": "ping"}))
        answers: list[Any] = []
        answered = False
        deadline = time.monotonic() + timeout
        while not (answered and expected.satisfied(answers)):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                message = channel.receive(remaining)
            except TimeoutError:
                break
            except NotStrictJSON as e:
                raise self.failureException(f"an answer that is not strict JSON: {e}\n--\n{self.context}") from None
            if isinstance(message, dict) and message.get("id") == sentinel and "method" not in message:
                answered = True
                # Messages are served in order and the fuzz tools answer at once: what the
                # payload is owed was written before the ping's answer, or will not come.
                deadline = min(deadline, time.monotonic() + GRACE)
            else:
                answers.append(message)
        self.saw(f"answers: {answers!r}"[:3000])
        if not answered:
            self.expect(["the ping sent after the payload was never answered"])
        return answers


_sentinels = itertools.count(1)
SURVEY_ENV = "MCPD_FUZZ_SURVEY"


def survey() -> bool:
    """Whether this run lists every kind of problem instead of stopping at the first."""
    return os.environ.get(SURVEY_ENV, "") not in ("", "0")


def explained(work: Callable[[], None]) -> None:
    """Run ``work``; several failures found by hypothesis become one failure that shows each
    (trial shows neither the parts of an exception group nor exception notes), with the
    falsifying examples."""
    try:
        work()
    except BaseExceptionGroup as group:
        parts = ["".join(traceback.format_exception(error)) for error in group.exceptions]
        raise AssertionError(f"{len(parts)} distinct failures:\n\n" + "\n\n".join(parts)) from None
    except Exception as e:
        if getattr(e, "__notes__", None):
            raise AssertionError("".join(traceback.format_exception(e))) from None
        raise


def http_problems(answer: Answer, expected: Owed, clean: bool) -> list[str]:
    """What is wrong with one HTTP answer to one payload: status, content type, JSON-RPC shape
    and count. Not ``clean``: the request's headers were damaged, so the transport may refuse it
    ({"error": "..."}) or answer it as a JSON-RPC error without reading it."""
    if answer.status >= 500 and answer.status not in (501, 503):
        return [f"a server error: {answer.status} {answer.body[:300]!r}"]
    if answer.status == 202:
        if answer.body:
            return [f"202 with a body: {answer.body[:300]!r}"]
        return [] if expected.nothing or not clean else [f"202 for a payload owed {expected}"]
    if answer.body and not answer.stream and answer.content_type != "application/json":
        return [f"an answer that is not JSON: {answer.status} {answer.content_type} {answer.body[:300]!r}"]
    jsonrpc = [m for m in answer.messages if not _is_refusal(m)]
    if len(jsonrpc) != len(answer.messages):
        # The transport refused the request before the engine saw it.
        if not 400 <= answer.status < 500:
            return [f"a refusal with status {answer.status}"]
        return [f"a clean request was refused: {answer.status} {answer.messages}"] if clean else []
    problems = answer_problems(expected, jsonrpc, relaxed=not clean)
    if clean and not jsonrpc and not (expected.nothing or expected.maybe):
        problems.append(f"no answer ({answer.status}) to a payload owed {expected}")
    return problems


def _is_refusal(message: Any) -> bool:
    """The transport's own refusal (`mcpd.security.responses.json_error`, the gate): {"error": "..."}."""
    return isinstance(message, dict) and "jsonrpc" not in message and isinstance(message.get("error"), str)


class Channel:
    """A connection that carries one JSON-RPC message at a time, each way."""

    def send(self, payload: bytes) -> bool:
        """Send one message; whether it was taken (a POST to /messages/ may be refused)."""
        raise NotImplementedError

    def receive(self, timeout: float) -> Any:
        """The next message, strictly decoded; `TimeoutError` if none comes in time."""
        raise NotImplementedError


class WebSocketChannel(Channel):
    """``/ws`` through httpx2 (the SDK's stack), reopened after the server closed it."""

    def __init__(self, http: HTTPClient, key: str, version: str | None) -> None:
        self.http, self.key, self.version = http, key, version
        self._stack = contextlib.ExitStack()
        self.ws: Any = None

    def open(self, test: FuzzTestCase) -> None:
        with contextlib.suppress(Exception):
            self._stack.close()  # a session the server closed may fail to close again
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(self.http.websocket("/ws", encoded(bearer(self.key))))
        if self.version is not None:
            test.converse(self, message_bytes(initialize("init", self.version)), INIT_OWED, SETUP_TIMEOUT)
            self.send(message_bytes(INITIALIZED))

    def send(self, payload: bytes) -> bool:
        self.ws.send_text(payload.decode("utf-8"))
        return True

    def receive(self, timeout: float) -> Any:
        try:
            event = self.ws.receive(timeout)
        except (WebSocketDisconnect, WebSocketNetworkError) as e:
            self.ws = None
            raise AssertionError(f"the server closed the WebSocket: {e!r}") from None
        if not isinstance(event, TextMessage):
            raise AssertionError(f"not a text frame: {event!r}")
        return strict_loads(event.data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stack.close()


class SSEChannel(Channel):
    """A legacy HTTP+SSE session: POSTs to its endpoint, answers on its stream."""

    def __init__(self, http: HTTPClient, key: str) -> None:
        self.http, self.key = http, key
        self.stream = EventStream(http, "/sse", encoded(bearer(key)))
        event = self.stream.next_event(SETUP_TIMEOUT)
        assert event.get("event") == "endpoint", event
        self.endpoint = event["data"]
        self.statuses: list[int] = []

    def send(self, payload: bytes) -> bool:
        headers = [("Content-Type", "application/json"), *bearer(self.key)]
        status = self.http.post(self.endpoint, payload, encoded(headers), bool).status
        self.statuses.append(status)
        return status == 202

    def receive(self, timeout: float) -> Any:
        event = self.stream.next_event(timeout)
        if event.get("event") != "message":
            raise AssertionError(f"an event that is not a message: {event}")
        return strict_loads(event["data"])

    def close(self) -> None:
        self.stream.close()


class StdioChannel(Channel):
    """``mcpd --stdio``: one message a line."""

    def __init__(self, test: FuzzTestCase, name: str) -> None:
        self.name = name
        self.process = test.spawn_stdio(MCPD, "--stdio", *DAEMON_ARGS, name=name)

    def send(self, payload: bytes) -> bool:
        # basic/transports §stdio: messages are delimited by newlines and contain none.
        self.process.send(payload.replace(b"\n", b" ") + b"\n")
        return True

    def receive(self, timeout: float) -> Any:
        return strict_loads(self.process.readline(timeout))


# -- the tests ---------------------------------------------------------------------------------------


class StreamableHTTPFuzzTests(FuzzTestCase):
    def test_stateless_requests(self) -> Deferred[None]:
        """2026-07-28 POSTs: the routing headers derived from each message as a client does,
        sometimes damaged; keys sent every way."""
        daemon, http = self.start_fuzzed()

        @fuzz_settings(120)
        @given(payloads(modern=True), authorization(KEYS), _header_damage())
        def stateless(payload: bytes, auth: tuple[list[tuple[str, str]], bool | None], damage: Damage) -> None:
            def example() -> None:
                headers = [
                    ("Content-Type", "application/json"),
                    ("Accept", BOTH),
                    ("MCP-Protocol-Version", MODERN),
                    *routing_headers(payload),
                    *auth[0],
                ]
                headers, clean = damage.apply(headers)
                expected = owed(payload)
                answer = self.post(http, payload, headers, expected)
                problems = http_problems(answer, expected, clean and auth[1] is True)
                # Without a valid key: 401, or 400 for damaged headers (checked before the key).
                if auth[1] is False and answer.status not in ((401,) if clean else (400, 401)):
                    problems.append(f"{answer.status}, not 401, without a valid key")
                self.expect(problems)

            self.example(example)

        def check() -> None:
            stateless()
            self.assert_healthy(http, "Streamable HTTP, stateless")

        return self.in_thread(check)

    def test_legacy_sessions(self) -> Deferred[None]:
        """Handshake-era POSTs into sessions of every legacy version (batches in 2025-03-26),
        with the session's headers, sometimes another session's or none."""
        daemon, http = self.start_fuzzed()

        def open_session(version: str, key: str) -> str:
            headers = encoded([("Content-Type", "application/json"), ("Accept", BOTH), *bearer(key)])
            answer = http.post("/mcp", message_bytes(initialize(1, version)), headers, bool)
            self.assertEqual(answer.status, 200, answer)
            session = answer.headers["mcp-session-id"]
            more = encoded([("Mcp-Session-Id", session), ("MCP-Protocol-Version", version)])
            self.assertEqual(http.post("/mcp", message_bytes(INITIALIZED), headers + more, bool).status, 202)
            return session

        sessions: dict[str, str] = {}

        @fuzz_settings(120)
        @given(
            payloads(modern=False),
            st.sampled_from(LEGACY_VERSIONS),
            weighted((12, st.just("own")), (1, st.sampled_from(["none", "unknown", "other key", "wrong version"]))),
            weighted((6, st.just(BOTH)), (1, st.sampled_from(["application/json", "text/event-stream", "*/*"]))),
        )
        def legacy(payload: bytes, version: str, session_choice: str, accept: str) -> None:
            def example() -> None:
                headers = [("Content-Type", "application/json"), ("Accept", accept), *bearer(KEYS.admin)]
                clean = session_choice == "own"
                if session_choice in ("own", "wrong version"):
                    shown = version if clean else LEGACY_VERSIONS[LEGACY_VERSIONS.index(version) - 1]
                    headers += [("Mcp-Session-Id", sessions[version]), ("MCP-Protocol-Version", shown)]
                elif session_choice == "unknown":
                    headers.append(("Mcp-Session-Id", "0" * 32))
                elif session_choice == "other key":
                    headers.append(("Mcp-Session-Id", sessions["reader"]))
                expected = owed(payload)
                self.expect(http_problems(self.post(http, payload, headers, expected), expected, clean))

            self.example(example)

        def check() -> None:
            for version in LEGACY_VERSIONS:
                sessions[version] = open_session(version, KEYS.admin)
            sessions["reader"] = open_session(LEGACY_VERSIONS[-1], KEYS.reader)
            legacy()
            self.assert_healthy(http, "Streamable HTTP, legacy sessions")

        return self.in_thread(check)


class LegacySSEFuzzTests(FuzzTestCase):
    def test_sse_session(self) -> Deferred[None]:
        """``GET /sse`` and ``POST /messages/``: a 2025-03-26 session (batches allowed);
        answers come as ``message`` events."""
        daemon, http = self.start_fuzzed()
        channels: list[SSEChannel] = []

        @fuzz_settings(80)
        @given(payloads(modern=False))
        def sse(payload: bytes) -> None:
            def example() -> None:
                channel = channels[0]
                expected = owed(payload)
                answers = self.converse(channel, payload, expected)
                status = channel.statuses[-2]
                self.saw(f"POST status {status}")
                if status == 400:
                    # Refused at the POST (not JSON): nothing is owed on the stream.
                    refusable = expected.parse_error or not expected.strict
                    self.expect([] if refusable and not answers else [f"400 for a payload owed {expected}"])
                elif status != 202:
                    self.expect([f"POST answered {status}"])
                else:
                    self.expect(answer_problems(expected, answers))

            self.example(example)

        def check() -> None:
            channel = SSEChannel(http, KEYS.admin)
            self.addCleanup(channel.close)
            channels.append(channel)
            self.converse(channel, message_bytes(initialize("init", "2025-03-26")), INIT_OWED, SETUP_TIMEOUT)
            channel.send(message_bytes(INITIALIZED))
            sse()
            last = message_bytes(tools_call("last", modern=False))
            answers = self.converse(channel, last, Owed(ids=(("str", "last"),)))
            self.assertEqual(answers[-1]["result"]["structuredContent"]["name"], "mcpd")
            self.assert_healthy(http, "HTTP+SSE")

        return self.in_thread(check)


class WebSocketFuzzTests(FuzzTestCase):
    def test_websocket_connections(self) -> Deferred[None]:
        """``/ws``: one connection initialized with 2025-03-26 (batches allowed), one that
        sends stateless 2026-07-28 requests."""
        daemon, http = self.start_fuzzed()
        legacy = WebSocketChannel(http, KEYS.admin, "2025-03-26")
        modern = WebSocketChannel(http, KEYS.admin, None)
        for channel in (legacy, modern):
            self.addCleanup(channel.close)

        @fuzz_settings(120)
        @given(st.booleans().flatmap(lambda old: st.tuples(st.just(old), payloads(not old, binary=False))))
        def websocket(case: tuple[bool, bytes]) -> None:
            def example() -> None:
                old, payload = case
                channel = legacy if old else modern
                if channel.ws is None:
                    channel.open(self)  # the server closed it (a failure reported before)
                expected = owed(payload)
                answers = self.converse(channel, payload, expected)
                self.expect(answer_problems(expected, answers))
                if not old and any(isinstance(a, dict) and "serverInfo" in a.get("result", {}) for a in answers):
                    modern.open(self)  # it became a legacy session: start a stateless one again

            self.example(example)

        def check() -> None:
            legacy.open(self)
            modern.open(self)
            websocket()
            for channel, modern_call in ((legacy, False), (modern, True)):
                if channel.ws is None:
                    channel.open(self)
                request = message_bytes(tools_call("last", modern=modern_call))
                answers = self.converse(channel, request, Owed(ids=(("str", "last"),)))
                self.assertEqual(answers[-1]["result"]["structuredContent"]["name"], "mcpd")
            self.assert_healthy(http, "WebSocket")

        return self.in_thread(check)


class StdioFuzzTests(FuzzTestCase):
    def test_stdio(self) -> Deferred[None]:
        """``mcpd --stdio``: one process initialized with 2025-03-26 (batches allowed), one
        that serves stateless 2026-07-28 requests."""
        legacy = StdioChannel(self, "legacy")
        modern = StdioChannel(self, "modern")

        @fuzz_settings(100)
        @given(st.booleans().flatmap(lambda old: st.tuples(st.just(old), payloads(not old))))
        def stdio(case: tuple[bool, bytes]) -> None:
            def example() -> None:
                old, payload = case
                channel = legacy if old else modern
                self.assertIsNone(channel.process.process.poll(), "the stdio server exited")
                # A line that is blank once framed is skipped, not answered.
                blank = not payload.replace(b"\n", b" ").strip()
                expected = Owed() if blank else owed(payload)
                self.expect(answer_problems(expected, self.converse(channel, payload, expected)))

            self.example(example)

        def check() -> None:
            # The first answer also waits for the process to start (slow on a loaded machine).
            self.converse(legacy, message_bytes(initialize("init", "2025-03-26")), INIT_OWED, SETUP_TIMEOUT)
            self.converse(modern, message_bytes({"jsonrpc": "2.0", "method": "notifications/x"}), Owed(), SETUP_TIMEOUT)
            legacy.send(message_bytes(INITIALIZED))
            # Both processes start from about the same footprint: the legacy one's is the baseline.
            self.baseline_kib = memory_kib(legacy.process.process.pid)[0]
            stdio()
            for channel, modern_call in ((legacy, False), (modern, True)):
                request = message_bytes(tools_call("last", modern=modern_call))
                answers = self.converse(channel, request, Owed(ids=(("str", "last"),)))
                self.assertEqual(answers[-1]["result"]["structuredContent"]["name"], "mcpd")
                process = channel.process
                trace = self.workdir / f"{channel.name}.trace.jsonl"
                self.assert_bounded(f"stdio ({channel.name})", process.process.pid, process.stderr, trace)

        return self.in_thread(check)


class HTTPRequestFuzzTests(FuzzTestCase):
    def test_raw_requests(self) -> Deferred[None]:
        """Any method and path, the headers MCP reads, keys sent every way, forwarding headers
        from a trusted proxy: answered (never a silent close), never a server error, JSON
        errors, and nothing served to a client without a valid key."""
        daemon, http = self.start_fuzzed("--trusted-proxy", "127.0.0.1")
        assert daemon.port is not None
        port = daemon.port

        @fuzz_settings(150)
        @given(_raw_cases())
        def raw(case: RawCase) -> None:
            def example() -> None:
                headers = [(name, value.replace("{host}", f"127.0.0.1:{port}")) for name, value in case.headers]
                request = raw_request(case.method, case.target, headers, case.body)
                self.saw(f"{request[:3000]!r}\n{case}")
                reply = exchange(port, request, case.method, settle=0.2)
                self.saw(f"reply: {reply}")
                self.expect(reply_problems(case, reply))

            self.example(example)

        def check() -> None:
            raw()
            self.assert_healthy(http, "raw HTTP requests")

        return self.in_thread(check)


def reply_problems(case: RawCase, reply: Reply | None) -> list[str]:
    """What is wrong with mcpd's answer to one raw request."""
    if reply is None:
        return ["the connection closed without an answer"]
    status = reply.status
    if status >= 500 and status not in (501, 503):
        return [f"a server error: {status}"]
    wanted = {"huge header": 431, "huge target": 414, "no host": 400, "two hosts": 400}.get(case.edge)
    if wanted is not None and status != wanted:
        # RFC 9110 §15.5.15 (414), RFC 6585 §5 (431), RFC 9112 §3.2 (exactly one Host, else 400).
        return [f"{status}, not {wanted}, for a request with {case.edge}"]
    try:
        messages = _decoded_body(reply)
    except NotStrictJSON as e:
        return [f"a body that is not strict JSON: {e}"]
    if messages is None:
        return [f"an error that is not JSON: {status} {reply.content_type}"]
    problems = []
    served = (
        status == 101
        or reply.content_type == "text/event-stream"
        or any(isinstance(m, list) or isinstance(m, dict) and "jsonrpc" in m for m in messages)
    )
    if case.authorized is False and (status == 101 or served and 200 <= status < 300):
        # Without a valid key: refused, whatever the path says.
        problems.append(f"served without a valid key: {status} {reply.content_type}")
    if case.authorized is False and any(isinstance(m, dict) and "result" in m for m in messages):
        problems.append("a JSON-RPC result without a valid key")
    if case.remote and not case.admin and 200 <= status < 300 and _admin_page(reply, messages):
        # A client beyond loopback (behind the trusted proxy) needs an admin key for these.
        problems.append("an admin page served to a client beyond loopback without an admin key")
    for message in messages:
        if isinstance(message, list) or isinstance(message, dict) and "jsonrpc" in message:
            problems += message_problems(message)
    return problems


def _decoded_body(reply: Reply) -> list[Any] | None:
    """The JSON the body carried (the data of every message event of a stream), strictly
    decoded; None for an error whose body is not JSON (JSON errors everywhere: only a page served
    whole, such as /metrics or /dashboard, may be something else)."""
    if not reply.body:
        return []
    if reply.content_type == "text/event-stream":
        events = SSEDecoder().feed(reply.body)
        return [strict_loads(event["data"]) for event in events if event.get("event", "message") == "message"]
    if reply.content_type == "application/json":
        return [strict_loads(reply.body)]
    return [] if 200 <= reply.status < 300 else None


def _admin_page(reply: Reply, messages: list[Any]) -> bool:
    if reply.content_type == "text/html" or b"mcp_requests_total" in reply.body:
        return True
    return any(isinstance(m, dict) and "recent_requests" in m for m in messages)


# -- header damage ---------------------------------------------------------------------------------


@attrs.frozen
class Damage:
    """What to do to a clean set of headers, if anything."""

    kind: str
    value: str = ""

    def apply(self, headers: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], bool]:
        """The damaged headers, and whether they are still clean."""
        if self.kind == "none":
            return headers, True
        names = {"version": "MCP-Protocol-Version", "method": "Mcp-Method", "name": "Mcp-Name"}
        if self.kind in ("drop", "twice"):
            name = names[self.value]
            present = [h for h in headers if h[0] == name]
            if self.kind == "drop":
                return [h for h in headers if h[0] != name], not present
            return headers + present, not present
        if self.kind == "accept":
            return [h for h in headers if h[0] != "Accept"] + [("Accept", self.value)], self.value in (BOTH, "*/*")
        if self.kind == "content-type":
            kept = [h for h in headers if h[0] != "Content-Type"]
            return kept + [("Content-Type", self.value)], self.value.startswith("application/json")
        name = names[self.kind]
        return [h for h in headers if h[0] != name] + [(name, self.value)], False


def _header_damage() -> st.SearchStrategy[Damage]:
    values = st.sampled_from(["", "x", "tools/call", "2025-11-25", "1999-01-01", "=?base64?!!?=", "caf\xe9", "a" * 300])
    return weighted(
        (12, st.just(Damage("none"))),
        (1, st.builds(Damage, st.sampled_from(["drop", "twice"]), st.sampled_from(["version", "method", "name"]))),
        (1, st.builds(Damage, st.sampled_from(["version", "method", "name"]), values)),
        (
            1,
            st.builds(
                Damage,
                st.just("accept"),
                st.sampled_from(["application/json", "text/event-stream", "text/html", "*/*"]),
            ),
        ),
        (
            1,
            st.builds(
                Damage, st.just("content-type"), st.sampled_from(["text/plain", "application/json; charset=utf-8", ""])
            ),
        ),
    )


# -- raw requests ------------------------------------------------------------------------------------

TRICKY_PATHS = [
    "//health",
    "///health",
    "//%68ealth",
    "/%68ealth",
    "//ready",
    "/health/",
    "/health?x=1",
    "/health/../mcp",
    "//mcp",
    "/mcp//",
    "/./mcp",
    "/%2fmcp",
    "/%6dcp",
    "/MCP",
    "//stats",
    "/%73tats",
    "//metrics",
    "/dashboard/../mcp",
    "/sse/",
    "//sse",
    "/ws/",
    "//ws",
    "/messages",
    "//messages/?session_id=x",
    "/%",
    "/mcp#x",
    "/%2e%2e/mcp",
    "http://127.0.0.1/mcp",
    "*",
]
# Right-most forwarded hops: (value, what the client is). None: a server may read it either way.
HOPS: list[tuple[str, bool | None]] = [
    ("203.0.113.9", True),
    ("203.0.113.9:4711", True),
    ("[2001:db8::1]:4711", True),
    ("2001:db8::1", True),
    ("::ffff:203.0.113.9", True),
    ("unknown", True),
    ("_hidden", True),
    ("", None),
    ("not an address", True),
    ("127.0.0.2", False),
    ("::1", False),
    ("127.0.0.2:4711", None),
    ("[::1]:4711", None),
]


@attrs.frozen
class RawCase:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    # True: one valid key sent the standard way; False: no valid key anywhere; None: ambiguous.
    authorized: bool | None
    admin: bool
    # The trusted proxy says the client is beyond loopback (None: it may be read either way).
    remote: bool | None
    edge: str


@st.composite
def _raw_cases(draw: st.DrawFn) -> RawCase:
    method = draw(weighted((6, st.sampled_from(["POST", "GET"])), (2, st.sampled_from([*METHODS, "TRACE"]))))
    target = draw(
        weighted(
            (4, st.sampled_from(["/mcp", "/", "/sse", "/ws", "/messages/?session_id=x", "/health", "/stats"])),
            (2, st.sampled_from(PATHS)),
            (3, st.sampled_from(TRICKY_PATHS)),
            (1, st.text("abcdefghijklmnopqrstuvwxyz0123456789/%._-~?=&", max_size=24).map(lambda s: "/" + s)),
        )
    )
    auth, authorized = draw(authorization(KEYS))
    admin = authorized is True and any(KEYS.admin in value for _, value in auth)
    headers: list[tuple[str, str]] = [("Host", "{host}"), *auth]
    if draw(st.booleans()):
        headers += [("Content-Type", "application/json"), ("Accept", BOTH)]
    if draw(st.integers(0, 2)) == 0:
        headers += [("MCP-Protocol-Version", MODERN), ("Mcp-Method", "tools/call"), ("Mcp-Name", "fuzz.echo")]
    if draw(st.integers(0, 4)) == 0:
        headers += [
            (name, value) for name, value in draw(st.sampled_from(HEADER_SETS)).items() if name != "Transfer-Encoding"
        ]
    if draw(st.integers(0, 6)) == 0:
        key = base64.b64encode(os.urandom(16)).decode()
        headers += [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Protocol", "mcp"),
        ]
    remote: bool | None = False
    forwarded = draw(st.sampled_from(["none", "none", "x-forwarded-for", "x-real-ip", "forwarded"]))
    if forwarded != "none":
        hop, remote = draw(st.sampled_from(HOPS))
        if forwarded == "x-forwarded-for":
            before = draw(st.sampled_from(["", "198.51.100.7, ", "127.0.0.2, "]))
            after = draw(st.sampled_from(["", ", 127.0.0.1"]))  # the trusted proxy itself is skipped
            headers.append(("X-Forwarded-For", before + hop + after))
        elif forwarded == "x-real-ip":
            headers.append(("X-Real-IP", hop))
        else:
            quoted = f'"{hop}"' if ":" in hop or " " in hop or not hop else hop
            headers.append(("Forwarded", f"for={quoted};proto=http"))
    edge = draw(
        weighted((20, st.just("none")), (1, st.sampled_from(["huge header", "huge target", "no host", "two hosts"])))
    )
    if edge == "huge header":
        headers.append(("X-Padding", "a" * 20_000))
    elif edge == "huge target":
        target = "/mcp?" + "a" * 100_000
    elif edge == "no host":
        headers = [h for h in headers if h[0] != "Host"]
    elif edge == "two hosts":
        headers.append(("Host", "127.0.0.1"))
    if sum(1 for name, _ in headers if name == "Host") > 1 and edge == "none":
        edge = "two hosts"
    body = draw(weighted((3, payloads(modern=True)), (1, st.just(b""))))
    return RawCase(method, target, tuple(headers), body, authorized, admin, remote, edge)


class OracleTests(SynchronousTestCase):
    """The fuzz suite's own judges, on cases whose answer is known."""

    def test_strict_json_refuses_what_interoperable_peers_refuse(self) -> None:
        for text in (b"NaN", b"[Infinity]", b"-Infinity", b"1e999999", b'"\\ud800"', b'{"a":1,"a":2}', b'"\xff"'):
            with self.assertRaises(NotStrictJSON, msg=text):
                strict_loads(text)
        self.assertEqual(
            strict_loads(b'["\\ud83d\\ude00", 1e308, -0, 123456789012345678901234567890]')[0], "\U0001f600"
        )

    def test_what_a_payload_is_owed(self) -> None:
        request = b'{"jsonrpc":"2.0","id":%s,"method":"ping"}'
        self.assertEqual(owed(request % b"7").ids, (("int", 7),))
        self.assertEqual(owed(request % b'"7"').ids, (("str", "7"),))
        self.assertEqual(owed(request % b"7.0"), Owed(anonymous=1))  # not a valid id
        self.assertEqual(owed(request % b"NaN"), Owed(parse_error=True))
        self.assertFalse(owed(request % b'"\\udc00"').strict)
        self.assertTrue(owed(b'{"jsonrpc":"2.0","method":"notifications/initialized"}').nothing)
        self.assertEqual(owed(b"[]"), Owed(anonymous=1))
        batch = owed(b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":1,"method":"ping"},5]')
        self.assertEqual((batch.ids, batch.anonymous, batch.batch), ((("int", 1), ("int", 1)), 1, True))
        self.assertEqual(owed(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)), Owed(parse_error=True))

    def test_answers_are_judged_against_what_was_owed(self) -> None:
        ping = owed(b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
        self.assertEqual(answer_problems(ping, [{"jsonrpc": "2.0", "id": 1, "result": {}}]), [])
        self.assertEqual(len(answer_problems(ping, [])), 1)  # never answered
        twice = [{"jsonrpc": "2.0", "id": 1, "result": {}}] * 2
        self.assertEqual(len(answer_problems(ping, twice)), 1)
        self.assertEqual(len(answer_problems(ping, [{"jsonrpc": "2.0", "id": 2, "result": {}}])), 2)
        self.assertEqual(len(answer_problems(ping, [{"jsonrpc": "2.0", "id": 1, "result": []}])), 1)
        parse_error = {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}}
        self.assertEqual(answer_problems(owed(b"{"), [parse_error]), [])
        self.assertEqual(len(answer_problems(owed(b"{"), [{**parse_error, "id": 1}])), 2)
        batch = owed(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]')
        refused = {"jsonrpc": "2.0", "error": {"code": -32600, "message": "no batches here"}}
        self.assertEqual(answer_problems(batch, [refused]), [])  # a batch may be refused whole
        self.assertEqual(answer_problems(batch, [[{"jsonrpc": "2.0", "id": 1, "result": {}}]]), [])
        self.assertEqual(len(answer_problems(batch, [[]])), 1)  # never an empty array

    def test_events_are_read_across_chunks_and_must_be_utf8(self) -> None:
        decoder = SSEDecoder()
        self.assertEqual(decoder.feed(b'event: message\r\ndata: {"a":'), [])
        self.assertEqual(
            decoder.feed(b"1}\n\n: ping\n\nid: s1.2\ndata: x\ndata: y\n\n"),
            [
                {"event": "message", "data": '{"a":1}'},
                {"id": "s1.2", "data": "x\ny"},
            ],
        )
        with self.assertRaises(NotStrictJSON):
            SSEDecoder().feed(b"data: \xff\n\n")
