"""Which WebSocket implementation serves ``/ws``? autobahn's Twisted resource, Twisted 26.10's
own ``twisted.web.websocket`` resource, and what mcpd ships (`mcpd.transport.websocket`: wsproto,
the engine under Twisted's, driven by mcpd itself) all run mcpd's engine and `MCPConnection`
behind a plain Site; this measures, for each, the server's memory per idle (initialized)
connection and tools/call round trips per second over a few busy connections::

    .venv/bin/python bench/websocket_choice.py --idle 1000 --busy 16 --duration 5

Each server runs in its own process pinned to CPU 0, the clients (`bench.wsclient`) on CPU 1.
The autobahn and twisted.web.websocket adapters live here, not in mcpd: Twisted's resource
cannot answer the ``mcp`` subprotocol without its private ``_WebSocketWireProtocol``, and bounds
no message; autobahn's fails on a TLS transport wrapped by a ``WrappingFactory`` (its TLS
channel-id code wants the TLS protocol itself).

Known problem: in later runs the ``twisted`` adapter stopped answering after the handshake (the
first two runs measured it; docs/architecture.rst shows those figures). Not investigated yet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.connections import port_answers, raise_nofile, rss_kib  # noqa: E402
from bench.procs import free_port, pinned, wait_until  # noqa: E402
from bench.wsclient import WSClient  # noqa: E402

IMPLEMENTATIONS = ("autobahn", "twisted", "mcpd")
REPO = Path(__file__).resolve().parent.parent


# -- the servers ------------------------------------------------------------------------------


def autobahn_resource(engine: Any, max_message_size: int) -> Any:
    """``/ws`` with autobahn's Twisted resource."""
    from autobahn.twisted.resource import WebSocketResource
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from autobahn.websocket.types import ConnectionDeny

    from mcpd.tools.api import Caller
    from mcpd.transport.websocket import MCPConnection

    class Protocol(WebSocketServerProtocol):  # type: ignore[misc]
        connection: MCPConnection | None = None

        def onConnect(self, request: Any) -> str:
            if "mcp" not in request.protocols:
                raise ConnectionDeny(400, "offer the WebSocket subprotocol 'mcp'")
            return "mcp"

        def onOpen(self) -> None:
            caller = Caller(peer=self.transport.getPeer().host, transport="websocket")
            self.connection = MCPConnection(engine, caller, lambda text: self.sendMessage(text.encode()))

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            if isBinary:
                self.sendClose(1003)
            elif self.connection is not None:
                self.connection.received(payload.decode())

        def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
            if self.connection is not None:
                self.connection.lost()

    factory = WebSocketServerFactory()
    factory.protocol = Protocol
    factory.setProtocolOptions(maxFramePayloadSize=max_message_size, maxMessagePayloadSize=max_message_size)
    return WebSocketResource(factory)


def twisted_resource(engine: Any, max_message_size: int) -> Any:
    """``/ws`` with twisted.web.websocket, answering the ``mcp`` subprotocol."""
    from twisted.web.server import NOT_DONE_YET
    from twisted.web.websocket import WebSocketResource
    from wsproto import ConnectionType
    from wsproto.events import AcceptConnection
    from wsproto.handshake import H11Handshake
    from wsproto.utilities import RemoteProtocolError

    from mcpd.tools.api import Caller
    from mcpd.transport.websocket import MCPConnection

    class Protocol:
        def __init__(self, caller: Caller) -> None:
            self.caller = caller
            self.transport: Any = None
            self.connection: MCPConnection | None = None

        def negotiationStarted(self, transport: Any) -> None:
            self.transport = transport

        def negotiationFinished(self) -> None:
            self.connection = MCPConnection(
                engine, self.caller, lambda data: self.transport.sendTextMessage(data.decode())
            )

        def textMessageReceived(self, message: str) -> None:
            assert self.connection is not None
            self.connection.received(message)

        def bytesMessageReceived(self, data: bytes) -> None:
            self.transport.loseConnection(1003)

        def pongReceived(self, payload: bytes) -> None:
            pass

        def connectionLost(self, reason: Any) -> None:
            if self.connection is not None:
                self.connection.lost()

    class Factory:
        def buildProtocol(self, request: Any) -> Protocol:
            return Protocol(Caller(peer=request.getClientAddress().host, transport="websocket"))

    class Resource(WebSocketResource):
        def render_GET(self, request: Any) -> Any:
            from twisted.web._websocket_impl import _WebSocketWireProtocol, serverBootstrap

            handshake = H11Handshake(ConnectionType.SERVER)
            headers = [(k, v) for k, vs in request.requestHeaders.getAllRawHeaders() for v in vs]
            try:
                handshake.initiate_upgrade_connection(headers, request.path)
            except RemoteProtocolError:
                request.setResponseCode(400)
                return b"bad handshake"
            protocol = self.factory.buildProtocol(request)
            to_send = handshake.send(AcceptConnection(subprotocol="mcp"))
            wire = _WebSocketWireProtocol(handshake.connection, serverBootstrap, protocol)
            request.channel._protocolUpgradeForWebsockets(wire)
            request.channel.transport.write(to_send)
            protocol.negotiationFinished()
            return NOT_DONE_YET

    del max_message_size  # wsproto has no limit to set
    return Resource(Factory())


def serve(implementation: str, port: int) -> None:
    """Run one server until killed."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from bench.echo_pack import pack
    from mcpd.protocol.engine import Engine
    from mcpd.tools.pack import ToolRegistry
    from mcpd.transport.websocket import websocket_resource

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    engine = Engine(ToolRegistry([pack]))
    limit = 4 * 1024 * 1024
    makers = {"autobahn": autobahn_resource, "twisted": twisted_resource, "mcpd": websocket_resource}
    ws = makers[implementation](engine, limit)
    root = Resource()
    root.putChild(b"ws", ws)
    reactor.listenTCP(port, Site(root), backlog=2048, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


# -- the measurements -------------------------------------------------------------------------

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
}


def call(request_id: int) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hello"}},
    }


async def open_session(port: int) -> WSClient:
    client = await WSClient.connect("127.0.0.1", port)
    await client.send(INITIALIZE)
    await client.receive()
    await client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    return client


async def idle_figures(port: int, pid: int, count: int) -> dict[str, float]:
    """Server RSS before and after ``count`` initialized idle connections."""
    before = rss_kib(pid)
    clients = []
    started = time.monotonic()
    for chunk in range(0, count, 100):
        clients += await asyncio.wait_for(
            asyncio.gather(*(open_session(port) for _ in range(min(100, count - chunk)))), 30
        )
    opened = time.monotonic() - started
    await asyncio.sleep(1.0)
    after = rss_kib(pid)
    for client in clients:
        client.close()
    return {"connections": count, "kib_per_connection": (after - before) / count, "open_seconds": opened}


async def busy_figures(port: int, connections: int, duration: float) -> dict[str, float]:
    """tools/call round trips per second, each connection one call at a time."""
    clients = [await open_session(port) for _ in range(connections)]
    done = 0
    deadline = time.monotonic() + duration

    async def loop(client: WSClient) -> None:
        nonlocal done
        request_id = 1
        while time.monotonic() < deadline:
            await client.send(call(request_id))
            reply = await client.receive()
            assert reply.get("id") == request_id and "result" in reply, reply
            request_id += 1
            done += 1

    await asyncio.wait_for(asyncio.gather(*(loop(c) for c in clients)), duration + 30)
    for client in clients:
        client.close()
    return {"calls_per_second": done / duration}


def measure(implementation: str, idle: int, busy: int, duration: float, server_cpu: int | None) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, __file__, "--serve", implementation, "--port", str(port)]
    server = subprocess.Popen(pinned(command, server_cpu), cwd=REPO)
    try:
        if not wait_until(lambda: port_answers(port), 15):
            raise SystemExit(f"{implementation} server did not start")
        figures: dict[str, Any] = {"implementation": implementation}
        figures.update(asyncio.run(busy_figures(port, busy, duration)))
        figures.update(asyncio.run(idle_figures(port, server.pid, idle)))
        return figures
    finally:
        server.kill()
        server.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--idle", type=int, default=1000, help="idle connections to open (default 1000)")
    parser.add_argument("--busy", type=int, default=16, help="busy connections (default 16)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load (default 5)")
    parser.add_argument("--only", default=",".join(IMPLEMENTATIONS), help="implementations to measure")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU to pin the server to (-1: none)")
    parser.add_argument("--client-cpu", type=int, default=1, help="CPU to pin the clients to (-1: none)")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    raise_nofile(args.idle * 2 + 256)
    import os

    if args.client_cpu >= 0:
        os.sched_setaffinity(0, {args.client_cpu})
    server_cpu = args.server_cpu if args.server_cpu >= 0 else None
    rows = [measure(name, args.idle, args.busy, args.duration, server_cpu) for name in args.only.split(",")]
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
