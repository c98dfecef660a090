"""In-memory HTTP for the transport tests: messages, an mcpd Site on a fake clock, a connection
that speaks HTTP/1.1 to it, and response and SSE parsing."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import treq
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import threadable
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from mcpd.config import Settings
from mcpd.interfaces import IRuntime
from mcpd.protocol.engine import Engine
from mcpd.protocol.ledger import Ledger
from mcpd.protocol.session import SessionStore
from mcpd.protocol.versions import LEGACY_VERSIONS, META_CLIENT_CAPABILITIES, META_PROTOCOL_VERSION
from mcpd.runtime import Runtime
from mcpd.security.policy import OriginGuard
from mcpd.tools import ToolContext, ToolPack, ToolRegistry
from mcpd.transport.streamable import StreamableHTTP
from mcpd.web.site import MCPSite, make_site
from tests.schema_check import validate_message

MODERN = "2026-07-28"


LATEST_LEGACY = "2025-11-25"


URL = "http://localhost:8765/mcp"


BOTH = "application/json, text/event-stream"


SSE_ONLY = "text/event-stream"


class HeldCall:
    """One call of ``test.hold``: the test reports its progress and finishes it by hand."""

    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx
        self.cancelled = False
        self.deferred: Deferred[str] = Deferred(self._cancel)

    def _cancel(self, _deferred: Deferred[str]) -> None:
        self.cancelled = True

    def progress(self, value: float) -> None:
        """Report progress ``value`` (of 10) to the client."""
        self.ctx.progress(value, 10)

    def finish(self, text: str = "held call done") -> None:
        """Answer the call."""
        self.deferred.callback(text)


class DrivenTools:
    """A tool pack for transport tests: an echo, a tool that reports progress and answers at once,
    and ``test.hold``, whose calls wait for the test (`HeldCall`)."""

    def __init__(self) -> None:
        self.pack = ToolPack("test", "Tools the transport tests drive")
        self.calls: list[HeldCall] = []
        tool = self.pack.tool

        @tool(
            "test.echo",
            description="Answer with the text given.",
            input_schema={
                "type": "object",
                "properties": {"text": {"type": "string"}},
                "required": ["text"],
            },
        )
        def echo(ctx: ToolContext, arguments: dict[str, Any]) -> str:
            return str(arguments["text"])

        @tool(
            "test.region",
            description="Answer with the region and shard, mirrored in Mcp-Param headers.",
            input_schema={
                "type": "object",
                "properties": {
                    "region": {"type": "string", "x-mcp-header": "Region"},
                    "shard": {"type": "integer", "x-mcp-header": "Shard"},
                },
            },
        )
        def region(ctx: ToolContext, arguments: dict[str, Any]) -> str:
            return f"{arguments.get('region')}/{arguments.get('shard')}"

        @tool("test.progress", description="Report progress twice, then answer.")
        def progress(ctx: ToolContext, arguments: dict[str, Any]) -> str:
            ctx.progress(1, 2, "halfway")
            ctx.progress(2, 2, "done")
            return "progress tool done"

        @tool("test.hold", description="Answer when the test says so.")
        def hold(ctx: ToolContext, arguments: dict[str, Any]) -> Deferred[str]:
            call = HeldCall(ctx)
            self.calls.append(call)
            return call.deferred

    @property
    def last(self) -> HeldCall:
        """The latest call of ``test.hold``."""
        return self.calls[-1]


def request(method: str, params: Mapping[str, Any] | None = None, request_id: int | str = 1) -> dict[str, Any]:
    """A JSON-RPC request."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = dict(params)
    return message


def notification(method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-RPC notification."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = dict(params)
    return message


def modern_request(
    method: str,
    params: Mapping[str, Any] | None = None,
    request_id: int | str = 1,
    version: str = MODERN,
    **meta: Any,
) -> dict[str, Any]:
    """A 2026-07-28 request: the per-request envelope in ``params._meta``."""
    envelope = {META_PROTOCOL_VERSION: version, META_CLIENT_CAPABILITIES: {}, **meta}
    return request(method, {**(params or {}), "_meta": envelope}, request_id)


def modern_headers(method: str, name: str | None = None, version: str = MODERN) -> dict[str, str]:
    """The routing headers that mirror a 2026-07-28 request's body."""
    headers = {"MCP-Protocol-Version": version, "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    return headers


def call(
    name: str, arguments: Mapping[str, Any] | None = None, request_id: int | str = 1, **meta: Any
) -> dict[str, Any]:
    """A legacy tools/call request; ``meta`` goes into ``params._meta`` (a progressToken)."""
    params: dict[str, Any] = {"name": name, "arguments": dict(arguments or {})}
    if meta:
        params["_meta"] = meta
    return request("tools/call", params, request_id)


def initialize_request(version: str = LATEST_LEGACY) -> dict[str, Any]:
    """A legacy initialize request."""
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "tests", "version": "0"}}
    return request("initialize", params, request_id=0)


@attrs.define
class Server:
    """An mcpd HTTP site wired like `mcpd.daemon.build_service`, with a fake clock."""

    site: MCPSite
    resource: StreamableHTTP
    sessions: SessionStore
    clock: Clock
    tools: DrivenTools


def make_server(
    *,
    session_timeout: float = 60.0,
    max_message_size: int = 64 * 1024,
    sse_replay: int = 256,
    allowed_origins: Iterable[str] = (),
    ledger: Ledger | None = None,
) -> Server:
    """Build the site: engine and registry, session store on a `Clock`, Origin guard, routes."""
    settings = Settings(session_timeout=session_timeout, max_message_size=max_message_size, sse_replay=sse_replay)
    tools = DrivenTools()
    registry = ToolRegistry([tools.pack])
    runtime = Runtime(settings, registry)
    runtime.transports.append("streamable-http")
    engine = Engine(registry, stores={IRuntime: runtime}, page_size=settings.page_size, ledger=ledger)
    clock = Clock()
    sessions = SessionStore(clock, settings.session_timeout, engine.ledger)
    resource = StreamableHTTP(engine, sessions, settings.max_message_size, settings.sse_replay)
    site = make_site(OriginGuard(resource, allowed_origins), runtime)
    # Connection timeouts run on the fake clock, never on the global reactor.
    site.reactor = clock
    return Server(site, resource, sessions, clock, tools)


@attrs.frozen
class Event:
    """One Server-Sent Event."""

    id: str | None
    event: str | None
    data: str
    retry: int | None

    @property
    def message(self) -> Any:
        """The JSON-RPC message the event carries."""
        return json.loads(self.data)


@attrs.frozen
class HTTPResponse:
    """A response as far as it has arrived: status, headers (lowercase names), body so far."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    complete: bool = True

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)

    @property
    def events(self) -> list[Event]:
        """The complete SSE events of the body so far."""
        return parse_events(self.body)


def parse_events(body: bytes) -> list[Event]:
    """Split an SSE body into its complete events (those already ended by a blank line)."""
    events = []
    blocks = body.decode("utf-8").split("\n\n")
    for block in blocks[:-1]:
        fields: dict[str, list[str]] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
        retry = fields.get("retry")
        events.append(
            Event(
                id=fields["id"][-1] if "id" in fields else None,
                event=fields["event"][-1] if "event" in fields else None,
                data="\n".join(fields.get("data", [])),
                retry=int(retry[-1]) if retry else None,
            )
        )
    return events


def parse_response(raw: bytes) -> HTTPResponse:
    """Parse the bytes an HTTP/1.1 server wrote for one response, chunked or not."""
    head, separator, rest = raw.partition(b"\r\n\r\n")
    if not separator:
        raise AssertionError(f"no complete response head in {raw!r}")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body, complete = _dechunk(rest)
    else:
        length = int(headers.get("content-length", "0"))
        body, complete = rest[:length], len(rest) >= length
    return HTTPResponse(int(status_line.split()[1]), headers, body, complete)


def assert_no_content(case: Any, written: bytes, version: bytes = b"HTTP/1.1") -> HTTPResponse:
    """RFC 9110 §8.6, §15.3.5: ``written`` is one whole 204 head, without Content-Length or
    Transfer-Encoding, and nothing after it (``case``: the test asserting it)."""
    head, separator, rest = written.partition(b"\r\n\r\n")
    case.assertEqual((separator, rest), (b"\r\n\r\n", b""), written)
    case.assertTrue(head.startswith(version + b" 204 No Content\r\n"), written)
    response = parse_response(written)
    case.assertNotIn("content-length", response.headers, written)
    case.assertNotIn("transfer-encoding", response.headers, written)
    return response


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    body = b""
    while True:
        size_line, separator, data = data.partition(b"\r\n")
        if not separator:
            return body, False
        size = int(size_line, 16)
        if size == 0:
            return body, True
        if len(data) < size + 2:
            return body, False
        body, data = body + data[:size], data[size + 2 :]


class HTTPConnection:
    """One client connection to a site on a `StringTransport`: what the server wrote so far is
    readable at any moment, and the client can vanish."""

    def __init__(
        self,
        site: Site,
        host: IPv4Address | IPv6Address | None = None,
        peer: IPv4Address | IPv6Address | None = None,
    ) -> None:
        peer = peer or IPv4Address("TCP", "127.0.0.1", 50000)
        self.transport = StringTransport(hostAddress=host or IPv4Address("TCP", "127.0.0.1", 8765), peerAddress=peer)
        self.protocol = site.buildProtocol(peer)
        assert self.protocol is not None
        self.protocol.makeConnection(self.transport)

    def send(
        self, method: str, path: str = "/mcp", headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> None:
        """Send one request (``Host: localhost:8765`` unless ``headers`` names another)."""
        fields = {"host": "localhost:8765", **{name.lower(): value for name, value in (headers or {}).items()}}
        if body or method == "POST":
            fields["content-length"] = str(len(body))
        head = [f"{method} {path} HTTP/1.1"] + [f"{name}: {value}" for name, value in fields.items()]
        self.protocol.dataReceived(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    @property
    def response(self) -> HTTPResponse:
        """The response as far as it has been written."""
        return parse_response(self.transport.value())

    def disconnect(self) -> None:
        """The client goes away."""
        self.protocol.connectionLost(Failure(ConnectionDone("the client went away")))


class HTTPTestCase(SynchronousTestCase):
    """A fresh server per test, a StubTreq client for it, and helpers that validate what it says."""

    def setUp(self) -> None:
        # Tools report progress straight away only on the reactor thread (`ToolContext.progress`);
        # no reactor runs here, so name this thread as the reactor's.
        self.patch(threadable, "ioThread", threadable.getThreadID())
        self.server = self.make_server()
        self.http = StubTreq(self.server.site.resource)
        self.addCleanup(self.server.sessions.stop)

    def make_server(self) -> Server:
        return make_server()

    @property
    def tools(self) -> DrivenTools:
        return self.server.tools

    def assertValid(self, version: str, message: Any, request_method: str | None = None) -> Any:
        """Fail unless ``message`` conforms to ``version``'s schema; return it."""
        self.assertEqual(validate_message(version, message, request_method), [], message)
        return message

    def fetch(
        self,
        method: str,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        url: str = URL,
    ) -> HTTPResponse:
        """One exchange through StubTreq that completes at once."""
        d = self.http.request(method, url, headers=dict(headers or {}), data=body or None)
        response = self.successResultOf(d)
        content = self.successResultOf(treq.content(response))
        names = {
            name.decode("latin-1").lower(): values[-1].decode("latin-1")
            for name, values in response.headers.getAllRawHeaders()
        }
        return HTTPResponse(response.code, names, content)

    def post(
        self,
        message: Any,
        headers: Mapping[str, str] | None = None,
        accept: str = BOTH,
        content_type: str = "application/json",
        url: str = URL,
    ) -> HTTPResponse:
        """POST ``message`` (bytes as they are, anything else as JSON); every JSON-RPC message
        that comes back must conform to the schema of the protocol version in force."""
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        fields = {"Accept": accept, "Content-Type": content_type, **(headers or {})}
        response = self.fetch("POST", fields, body, url)
        self.assertValidReplies(response, message, self.version_in_force(message, fields))
        return response

    def version_in_force(self, message: Any, headers: Mapping[str, str]) -> str:
        """The protocol version a POST of ``message`` with ``headers`` is served under."""
        header = headers.get("MCP-Protocol-Version")
        if header is not None and header not in LEGACY_VERSIONS:
            return MODERN  # the modern path, also when it refuses an unknown version
        session_id = headers.get("Mcp-Session-Id")
        session = self.server.sessions.get(session_id) if session_id is not None else None
        if session is not None and session.version is not None:
            return session.version
        if isinstance(message, dict) and message.get("method") == "initialize":
            requested = message["params"]["protocolVersion"]
            return requested if requested in LEGACY_VERSIONS else LATEST_LEGACY
        return header or LATEST_LEGACY

    def assertValidReplies(self, response: HTTPResponse, message: Any, version: str) -> None:
        """Validate the JSON-RPC messages of a JSON or SSE response to ``message``."""
        requests = message if isinstance(message, list) else [message]
        methods = {m.get("id"): m.get("method") for m in requests if isinstance(m, dict) and "id" in m}
        content_type = response.headers.get("content-type")
        if content_type == "text/event-stream":
            replies = [event.message for event in response.events if event.data]
        elif content_type == "application/json" and response.body:
            body = response.json()
            replies = body if isinstance(body, list) else [body]
        else:
            replies = []
        for reply in replies:
            if isinstance(reply, dict) and reply.get("jsonrpc") is not None:
                self.assertValid(version, reply, methods.get(reply.get("id")))

    def messages(self, version: str, events: list[Event], request_method: str | None = None) -> list[Any]:
        """The JSON-RPC messages of SSE ``events`` (priming events have none), each valid."""
        return [self.assertValid(version, event.message, request_method) for event in events if event.data]

    def open(
        self,
        method: str,
        headers: Mapping[str, str] | None = None,
        message: Any = None,
        accept: str = BOTH,
    ) -> HTTPConnection:
        """Start an exchange on a `HTTPConnection`, to watch it stream or to drop it."""
        connection = HTTPConnection(self.server.site)
        fields = {"accept": accept, **(headers or {})}
        body = b""
        if message is not None:
            body = json.dumps(message).encode()
            fields["content-type"] = "application/json"
        connection.send(method, "/mcp", fields, body)
        return connection

    # -- legacy sessions --

    def initialize(self, version: str = LATEST_LEGACY) -> str:
        """Open a legacy session; return its id."""
        response = self.post(initialize_request(version))
        self.assertEqual(response.status, 200)
        self.assertValid(version, response.json(), "initialize")
        session_id = response.headers["mcp-session-id"]
        self.assertEqual(self.post(notification("notifications/initialized"), self.session(session_id)).status, 202)
        return session_id

    def session(self, session_id: str, version: str | None = None) -> dict[str, str]:
        """The headers naming a legacy session (and its version)."""
        headers = {"Mcp-Session-Id": session_id}
        if version is not None:
            headers["MCP-Protocol-Version"] = version
        return headers


class ComponentizedDummyRequest(DummyRequest, Componentized):
    """twisted.web's DummyRequest, Componentized as a Site's requests are (the policy layer keeps
    the caller's identity on the request as a component)."""

    def __init__(self, postpath: list[bytes], session: Any = None) -> None:
        DummyRequest.__init__(self, postpath, session)
        Componentized.__init__(self)
