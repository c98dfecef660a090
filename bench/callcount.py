"""Instructions per tools/call: mcpd under callgrind, driven over one keep-alive connection.

A loaded machine distorts throughput but not the instructions a request executes. This starts
``python -m mcpd`` under ``valgrind --tool=callgrind`` with instrumentation off, warms it up, turns
counting on for ``--calls`` sequential modern (2026-07-28) ``tools/call`` of the echo tool (or
``--tool NAME --args JSON``: any tool, e.g. one that reaches the SQL store) over one raw-socket
connection, dumps, and prints the instructions per call (every thread counted: a
blocking tool's hop to the thread pool is included)::

    .venv/bin/python bench/callcount.py                                  # key-less
    .venv/bin/python bench/callcount.py -- --api-key K --rate-limit 100000000
    MCPD_ECHO_BLOCKING=1 .venv/bin/python bench/callcount.py             # the thread-pool tool
    .venv/bin/python bench/callcount.py --tool note.save --args '{"title": "t", "body": "b"}'

``--clients N`` (HTTP) spreads the calls over N connections, each sequential in a client thread
of its own: the server has N calls in hand at once, as under load, which is where a hand-off to
a thread pool can cost more than at one call at a time.

``--stdio`` serves the client on mcpd's stdin and stdout instead (``mcpd --stdio``, its default
toolsets unless given after ``--``): ``initialize``, then legacy (2025-11-25) ``tools/call`` lines
one at a time, as ``../shared/bench/mcp_load.py stdio`` does; ``--settle S`` waits S seconds
after the warm-up so the background work of start-up (the SQL store's opening) is not counted,
``--settle 0`` counts it::

    .venv/bin/python bench/callcount.py --stdio --calls 2000

Arguments after ``--`` go to mcpd (``--key K`` makes the client send ``Authorization: Bearer K``;
it is added to mcpd's arguments as ``--api-key K`` too). The echo pack is bench/echo_pack.py, or
``MCPD_ECHO_BLOCKING=1`` to declare it blocking.
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


ToolCall = tuple[str, dict[str, object]]  # a tool's name and the arguments it is called with
ECHO: ToolCall = ("echo", {"text": "hello"})


def request(rid: int, token: str | None, session: str | None = None, tool: ToolCall = ECHO) -> bytes:
    """A tools/call of ``tool``: modern (2026-07-28), or in the legacy ``session``."""
    params: dict[str, object] = {"name": tool[0], "arguments": tool[1]}
    if session is None:
        params["_meta"] = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "callcount", "version": "1"},
        }
        head = [b"MCP-Protocol-Version: 2026-07-28", b"Mcp-Method: tools/call", b"Mcp-Name: " + tool[0].encode()]
    else:
        head = [b"MCP-Protocol-Version: 2025-11-25", b"Mcp-Session-Id: " + session.encode()]
    return post({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}, head, token)


def post(message: dict[str, object], head: list[bytes], token: str | None) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    head = [
        b"POST /mcp HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Content-Type: application/json",
        b"Accept: application/json, text/event-stream",
        *head,
    ]
    if token:
        head.append(b"Authorization: Bearer " + token.encode())
    head.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def open_session(sock: socket.socket, token: str | None, buf: bytearray) -> str:
    """The legacy handshake (2025-11-25): initialize, then notifications/initialized; the session id."""
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "callcount", "version": "1"}}
    sock.sendall(post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}, [], token))
    while (head := answer(buf, keep_head=True)) is None:
        buf += sock.recv(65536)
    line = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"mcp-session-id:"))
    session = line.split(b":", 1)[1].strip().decode()
    version = b"MCP-Protocol-Version: 2025-11-25"
    sock.sendall(
        post(
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            [version, b"Mcp-Session-Id: " + session.encode()],
            token,
        )
    )
    while answer(buf) is None:
        buf += sock.recv(65536)
    return session


def call(sock: socket.socket, rid: int, token: str | None, buf: bytearray, session: str | None, tool: ToolCall) -> None:
    sock.sendall(request(rid, token, session, tool))
    while True:
        body = answer(buf)
        if body is not None:
            if not answered(body):
                raise SystemExit(f"unexpected answer: {body!r}")
            return
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("the server closed the connection")
        buf += chunk


def answer(buf: bytearray, keep_head: bool = False) -> bytes | None:
    """The body of the first whole answer in ``buf`` (removed from it; its head instead with
    ``keep_head``), or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    raw_head = bytes(buf[:end])
    head = raw_head.lower()
    if not head.startswith((b"http/1.1 200", b"http/1.1 202")):
        raise SystemExit(f"unexpected answer: {bytes(buf)!r}")
    if b"content-length:" in head:
        length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        if len(buf) < end + 4 + length:
            return None
        body = bytes(buf[end + 4 : end + 4 + length])
        del buf[: end + 4 + length]
        return raw_head if keep_head else body
    # Transfer-Encoding: chunked (an answer that was not ready at once)
    at, body = end + 4, b""
    while True:
        line_end = buf.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buf[at:line_end]).split(b";")[0], 16)
        if len(buf) < line_end + 2 + size + 2:
            return None
        body += bytes(buf[line_end + 2 : line_end + 2 + size])
        at = line_end + 2 + size + 2
        if size == 0:
            del buf[:at]
            return body


def answered(body: bytes) -> bool:
    """Whether ``body`` is a tool's result (not an error, nor an isError result)."""
    return b'"result"' in body and b'"isError":true' not in body


def stdio_session(server: subprocess.Popen[bytes], tool: ToolCall) -> tuple[Callable[[int], None], Callable[[], None]]:
    """``call(rid)`` and ``start()`` for a server on pipes: initialize once, then one line each."""
    assert server.stdin is not None and server.stdout is not None
    stdin, stdout = server.stdin, server.stdout

    def exchange(line: bytes) -> bytes:
        stdin.write(line)
        stdin.flush()
        answer = stdout.readline()
        if not answer:
            raise SystemExit("mcpd closed stdout")
        return answer

    def start() -> None:
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "cc", "version": "1"},
            },
        }
        if b'"result"' not in exchange(json.dumps(init).encode() + b"\n"):
            raise SystemExit("initialize failed")
        stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')

    def call(rid: int) -> None:
        params = {"name": tool[0], "arguments": tool[1]}
        message = {"jsonrpc": "2.0", "id": rid + 1, "method": "tools/call", "params": params}
        line = json.dumps(message, separators=(",", ":"))  # compact, as the echo line always was
        answer = exchange(line.encode() + b"\n")
        if not answered(answer):
            raise SystemExit(f"unexpected answer: {answer!r}")

    return call, start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_session(
    server: subprocess.Popen[bytes], port: int, key: str | None, work: str, era: str, tool: ToolCall
) -> Callable[[int], None]:
    """``call(rid)`` over one keep-alive connection to the server's port, once it listens (the
    legacy era: in one session opened first)."""
    deadline = time.monotonic() + 300
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port))
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mcpd did not start; see {work}/server.log") from None
            time.sleep(0.2)
    buf = bytearray()
    session = open_session(sock, key, buf) if era == "legacy" else None
    return lambda rid: call(sock, rid, key, buf, session, tool)


def run_calls(sessions: list[Callable[[int], None]], first: int, count: int) -> None:
    """Calls ``first`` to ``first + count - 1`` spread over ``sessions``, each in a thread of its
    own (one session: in this thread)."""
    if len(sessions) == 1:
        for rid in range(first, first + count):
            sessions[0](rid)
        return
    failed: list[BaseException] = []

    def drive(one: Callable[[int], None], rids: range) -> None:
        try:
            for rid in rids:
                one(rid)
        except BaseException as e:  # noqa: BLE001 -- raised again in the main thread
            failed.append(e)

    clients = [
        threading.Thread(target=drive, args=(one, range(first + n, first + count, len(sessions))))
        for n, one in enumerate(sessions)
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    if failed:
        raise failed[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--clients", type=int, default=1, help="connections calling at once (HTTP)")
    parser.add_argument("--era", choices=("modern", "legacy"), default="modern", help="legacy: one 2025-11-25 session")
    parser.add_argument("--tool", default="echo", help="the tool to call (default: the echo pack's)")
    parser.add_argument("--args", default=None, help='its arguments, a JSON object (echo\'s: {"text": "hello"})')
    parser.add_argument("--key", help="send this bearer token (and pass --api-key to mcpd)")
    parser.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    parser.add_argument("--tree", default=ROOT, help="the mcpd source tree to run (another checkout: before/after)")
    parser.add_argument("--no-valgrind", action="store_true", help="CPU seconds of the process instead")
    parser.add_argument("--cprofile", metavar="PATH", help="run mcpd under cProfile (not callgrind), stats to PATH")
    parser.add_argument("--stdio", action="store_true", help="serve on stdin/stdout (mcpd --stdio)")
    parser.add_argument("--settle", type=float, default=0.0, help="--stdio: seconds to wait after the warm-up")
    parser.add_argument("mcpd_args", nargs="*")
    args = parser.parse_args()
    tool: ToolCall = (args.tool, json.loads(args.args) if args.args is not None else ECHO[1])
    port = free_port()
    work = os.environ.get("CALLCOUNT_DIR") or tempfile.mkdtemp(prefix="callcount-")
    profile = ["-m", "cProfile", "-o", os.path.abspath(args.cprofile)] if args.cprofile else []
    if args.cprofile:
        args.no_valgrind = True
    tree = args.tree
    where = ["--stdio"] if args.stdio else ["--port", str(port)]
    cmd = [args.python, *profile, "-m", "mcpd", *where, "--tool-pack", "bench.echo_pack", *args.mcpd_args]
    if args.key:
        cmd += ["--api-key", args.key]
    if not args.no_valgrind:
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--separate-threads=yes",
            f"--callgrind-out-file={work}/cg.%p",
            *cmd,
        ]
    env = dict(os.environ, PYTHONPATH=tree + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(os.path.join(work, "server.log"), "wb")  # noqa: SIM115
    if args.stdio:
        server = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        one, start = stdio_session(server, tool)
        sessions = [one]
    else:
        server = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        connect = functools.partial(http_session, server, port, args.key, work, args.era, tool)
        sessions, start = [connect() for _ in range(args.clients)], lambda: None
    try:
        start()
        run_calls(sessions, 0, args.warmup)
        time.sleep(args.settle)
        if args.no_valgrind:
            with open(f"/proc/{server.pid}/stat") as f:
                before = sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:13])
        else:
            subprocess.run(["callgrind_control", "-i", "on", str(server.pid)], check=True, capture_output=True)
        started = time.monotonic()
        run_calls(sessions, args.warmup, args.calls)
        wall = time.monotonic() - started
        if args.no_valgrind:
            with open(f"/proc/{server.pid}/stat") as f:
                after = sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:13])
            cpu = (after - before) / os.sysconf("SC_CLK_TCK")
            print(f"{cpu / args.calls * 1e6:.1f} CPU us per call ({args.calls} calls, {wall:.2f} s wall)")
            return 0
        subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True, capture_output=True)
        threads, main_thread = [], 0
        for path in glob.glob(f"{work}/cg.{server.pid}*"):
            with open(path) as f:
                for line in f:
                    if line.startswith("totals:") and int(line.split()[1]):
                        threads.append(int(line.split()[1]))
                        if path.endswith("-01"):  # callgrind numbers the main thread 1
                            main_thread += threads[-1]
        total = sum(threads)
        each = ", ".join(f"{count / args.calls / 1000:.1f}k" for count in sorted(threads, reverse=True))
        print(
            f"{total / args.calls / 1000:.1f}k instructions per call ({args.calls} calls; "
            f"the reactor thread {main_thread / args.calls / 1000:.1f}k; by thread: {each})"
        )
        return 0
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    sys.exit(main())
