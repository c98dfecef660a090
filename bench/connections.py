"""Memory per idle connection: one mcpd process holding many legacy SSE streams and WebSockets.

Starts ``twistd -n mcpd`` on a loopback port (pinned to CPU 0), opens ``--count`` legacy HTTP+SSE
streams (``GET /sse``, read up to the ``endpoint`` event, then an ``initialize`` POSTed into the
session), measures the server's resident memory, closes them, then does the same with WebSocket
connections at ``/ws`` (handshake with subprotocol ``mcp``, then ``initialize``)::

    .venv/bin/python bench/connections.py --count 1000

Everything is bounded in time; RLIMIT_NOFILE is raised for the clients and inherited by the
server. Figures: KiB of server RSS per connection, after the connections settled for a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import ServerProcess, free_port, pinned, wait_until  # noqa: E402
from bench.wsclient import WSClient  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
OPEN_TIMEOUT = 60.0
BATCH = 100
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
}


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit towards ``wanted`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


class SSEStream:
    """One legacy HTTP+SSE session held open by a raw socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, endpoint: str) -> None:
        self.reader = reader
        self.writer = writer
        self.endpoint = endpoint

    @classmethod
    async def open(cls, port: int) -> SSEStream:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(f"GET /sse HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"GET /sse answered {head[:80]!r}")
        while True:
            line = (await reader.readline()).decode().strip()
            if line.startswith("data:") and "session_id=" in line:
                endpoint = line[5:].strip()
                break
        return cls(reader, writer, endpoint)

    def close(self) -> None:
        self.writer.close()


async def post(port: int, path: str, message: Any) -> int:
    """POST one message on its own connection; the status code."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    body = json.dumps(message).encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


async def open_sse(port: int) -> SSEStream:
    stream = await SSEStream.open(port)
    status = await post(port, stream.endpoint, INITIALIZE)
    if status != 202:
        raise RuntimeError(f"POST initialize answered {status}")
    return stream


async def open_ws(port: int) -> WSClient:
    client = await WSClient.connect(LOOPBACK, port)
    await client.send(INITIALIZE)
    await client.receive()
    return client


async def hold(kind: str, port: int, pid: int, count: int) -> dict[str, Any]:
    """Open ``count`` connections of ``kind``, measure, close them."""
    opener = open_sse if kind == "legacy-sse" else open_ws
    before = rss_kib(pid)
    held: list[Any] = []
    started = time.monotonic()
    try:
        while len(held) < count:
            batch = min(BATCH, count - len(held))
            held += await asyncio.wait_for(asyncio.gather(*(opener(port) for _ in range(batch))), OPEN_TIMEOUT)
        opened = time.monotonic() - started
        await asyncio.sleep(1.0)
        after = rss_kib(pid)
    finally:
        for connection in held:
            connection.close()
    await asyncio.sleep(1.0)
    return {
        "transport": kind,
        "connections": count,
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "kib_per_connection": round((after - before) / count, 1),
        "open_seconds": round(opened, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="connections of each kind (default 1000)")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU for the server (-1: not pinned)")
    args = parser.parse_args(argv)
    limit = raise_nofile(args.count * 3 + 512)
    if limit < args.count + 64:
        sys.exit(f"RLIMIT_NOFILE is {limit}: too low for {args.count} connections")
    port = free_port()
    twistd = str(Path(sys.executable).parent / "twistd")
    command = [twistd, "-n", "--pidfile=", "mcpd", "--port", str(port), "--toolsets", "server"]
    # Lift the security layer's connection, stream and rate limits (environment variables, so an
    # mcpd without them ignores them): this measures memory, not admission control.
    lifted = str(args.count * 4)
    limits = {"MAX_CONNECTIONS": lifted, "MAX_STREAMS_PER_KEY": lifted, "RATE_LIMIT": str(args.count * 100)}
    env = dict(os.environ, PYTHONPATH=str(REPO), **limits)
    with tempfile.TemporaryDirectory(prefix="mcpd-bench-") as workdir:
        log = Path(workdir) / "mcpd.log"
        server_cpu = args.server_cpu if args.server_cpu >= 0 else None
        with ServerProcess(pinned(command, server_cpu), log_path=log, cwd=Path(workdir), env=env) as server:
            assert server.process is not None
            if not wait_until(lambda: port_answers(port), 15):
                sys.exit(f"mcpd did not answer on port {port}:\n{server.log_tail()}")
            time.sleep(0.5)
            for kind in ("legacy-sse", "websocket"):
                row = asyncio.run(asyncio.wait_for(hold(kind, port, server.process.pid, args.count), 300))
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
