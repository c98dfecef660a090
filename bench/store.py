"""Benchmark the SQL-backed tools beside echo: task.create, task.list and note.search over
Streamable HTTP (2026-07-28, stateless), on SQLite and on MariaDB.

mcpd runs pinned to one CPU with its defaults (the SQL store's thread pool: --db-pool-size 5 +
--db-max-overflow 5), the echo pack added; wrk drives it from the other CPU with keep-alive
connections, one row per tool and client count, p50/p99 from wrk's latency histogram. MariaDB
(``--backends mariadb``) is started by the test fixture (tests/services.py) on a loopback port
and is not pinned: it shares the machine with both. See bench/README.rst.

    .venv/bin/python bench/store.py --clients 1,16 --duration 10 --backends sqlite,mariadb
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import profile  # noqa: E402
from bench.load import _WRK_SCRIPT, RESULT_MARK, WRK_INSTALL, WRK_TIMEOUT_SECONDS, LoadResult, with_server_cpu  # noqa: E402
from bench.mcp_client import ACCEPT, MCP_PATH, MODERN, encode, post  # noqa: E402
from bench.procs import LOOPBACK, ServerProcess, free_port, pinned, wait_until  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WORDS = [
    "deploy",
    "pipeline",
    "release",
    "checklist",
    "database",
    "backup",
    "restore",
    "migration",
    "schema",
    "index",
    "query",
    "latency",
    "cache",
    "tenant",
    "project",
    "task",
    "note",
    "search",
    "ranking",
    "snippet",
    "budget",
    "meeting",
    "roadmap",
    "incident",
    "postmortem",
    "rollback",
    "canary",
    "kubernetes",
    "cluster",
    "node",
    "upgrade",
    "certificate",
    "rotation",
]
SEED_TASKS = 200
SEED_NOTES = 500
TOOLS: dict[str, dict[str, Any]] = {
    "echo": {"text": "hello"},
    "task.create": {"project": "bench", "title": "A benchmark task", "priority": "high", "tags": ["bench"]},
    "task.list": {"project": "bench", "limit": 20},
    "note.search": {"query": "deploy pipeline", "limit": 10},
}


def message(tool: str, arguments: dict[str, Any], request_id: Any) -> dict[str, Any]:
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    params = {"name": tool, "arguments": arguments, "_meta": meta}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def headers(tool: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Accept": ACCEPT,
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": tool,
    }


def call(port: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    body = post(port, message(tool, arguments, 1), headers(tool)).response_to(1)
    result = body.get("result")
    if result is None or result.get("isError"):
        raise RuntimeError(f"{tool} failed: {body}")
    return result  # type: ignore[no-any-return]


def seed(port: int) -> None:
    """A project with tasks and a few hundred notes to search."""
    call(port, "project.create", {"name": "bench"})
    for i in range(SEED_TASKS):
        call(port, "task.create", {"project": "bench", "title": f"seed task {i}", "tags": [WORDS[i % len(WORDS)]]})
    for i in range(SEED_NOTES):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(60)]
        call(port, "note.save", {"title": " ".join(words[:4]), "body": " ".join(words), "tags": [words[0]]})


def wrk_script(tool: str) -> str:
    sentinel = "\x00id\x00"
    prefix, suffix = encode(message(tool, TOOLS[tool], sentinel)).split(encode(sentinel))
    lines = "\n".join(f'wrk.headers["{name}"] = [==[{value}]==]' for name, value in headers(tool).items())
    # A reply counts as bad unless it carries structured content without isError.
    expect = '"structuredContent"' if tool != "echo" else '"text"'
    return _WRK_SCRIPT.format(prefix=prefix, suffix=suffix, headers=lines, expect=expect, mark=RESULT_MARK)


def run_wrk(port: int, tool: str, clients: int, duration: int, cpu: int | None, workdir: Path) -> LoadResult:
    script = workdir / f"{tool}.lua"
    script.write_text(wrk_script(tool))
    command = pinned(
        ["wrk", "-t1", f"-c{clients}", f"-d{duration}s", f"--timeout={WRK_TIMEOUT_SECONDS}s", "--latency", "-s", str(script),
         f"http://{LOOPBACK}:{port}{MCP_PATH}"],
        cpu,
    )  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
    for line in finished.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            figures = json.loads(line[len(RESULT_MARK) :])
            break
    else:
        raise RuntimeError(f"wrk exited {finished.returncode} without a result: {finished.stderr.strip()[-500:]}")
    return LoadResult(
        requests=figures["requests"],
        seconds=figures["duration_us"] / 1e6,
        p50_ms=figures["p50_us"] / 1e3,
        p99_ms=figures["p99_us"] / 1e3,
        errors=figures["socket_errors"] + figures["non2xx"] + figures["bad"],
    )


def bench_backend(backend: str, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    port = free_port()
    extra: list[str] = []
    env = {"PYTHONPATH": str(REPO)}
    mariadb = None
    if backend == "mariadb":
        from tests.services import PASSWORD, MariaDB

        mariadb = MariaDB(workdir / "mariadb").start()
        extra = ["--db-url", mariadb.url(mariadb.new_database())]
        env["DB_PASSWORD"] = PASSWORD
    data = workdir / f"data-{backend}"
    command = [
        args.python, "-m", "mcpd", "--port", str(port), "--tool-pack", "bench.echo_pack", "--data-dir", str(data),
        "--max-connections", "20000", "--max-streams-per-key", "20000", *extra, *args.mcpd_args.split(),
    ]  # fmt: skip
    rows = []
    server = ServerProcess(
        pinned(command, args.server_cpu),
        log_path=workdir / f"mcpd-{backend}.log",
        cwd=workdir,
        env={**os.environ, **env},
    )
    try:
        with server:
            if not wait_until(lambda: _answers(port), 30):
                raise RuntimeError(f"mcpd did not start:\n{server.log_tail()}")
            seed(port)
            for tool in args.tools:
                for clients in args.clients:
                    drive = functools.partial(run_wrk, port, tool, clients, cpu=args.load_cpu, workdir=workdir)
                    if args.warmup:
                        drive(duration=args.warmup)
                    spy = None
                    if args.profile is not None:
                        assert server.process is not None
                        recording = args.profile / f"{backend}-{tool}-c{clients}.txt"
                        spy = profile.record(server.process.pid, args.duration, recording)
                    result = with_server_cpu(functools.partial(drive, duration=args.duration), server.cpu_seconds)
                    row = {
                        "backend": backend,
                        "tool": tool,
                        "clients": clients,
                        "rps": round(result.requests_per_second),
                        "p50_ms": round(result.p50_ms, 2),
                        "p99_ms": round(result.p99_ms, 2),
                        "errors": result.errors,
                        "server_cpu": round(result.server_cpu or 0, 2),
                        # On a shared machine the figure to compare: the server's CPU per call.
                        "per_cpu_second": round(result.requests_per_second / result.server_cpu)
                        if result.server_cpu
                        else None,
                    }
                    print(
                        f"{backend:8} {tool:12} c={clients:<3} {row['rps']:>6} calls/s  p50 {row['p50_ms']:>6.2f} ms  "
                        f"p99 {row['p99_ms']:>6.2f} ms  errors {row['errors']}  server CPU {row['server_cpu']:.0%}  "
                        f"{row['per_cpu_second']} per CPU-second",
                        flush=True,
                    )
                    rows.append(row)
                    if spy is not None and spy.wait(60) == 0:
                        print(profile.summary(recording, top=10), flush=True)
    finally:
        if mariadb is not None:
            mariadb.destroy()
    return rows


def _answers(port: int) -> bool:
    try:
        call(port, "echo", {"text": "x"})
        return True
    except Exception:  # noqa: BLE001 -- not up yet
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite", help="sqlite, mariadb (comma-separated)")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated, from " + ", ".join(TOOLS))
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"))
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    parser.add_argument("--mcpd-args", default="", help="more mcpd options, e.g. '--db-pool-size 2'")
    parser.add_argument(
        "--profile", type=Path, help="record each row with py-spy into this directory and print where the time went"
    )
    args = parser.parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    if shutil.which("wrk") is None:
        print(WRK_INSTALL, file=sys.stderr)
        return 2
    args.tools = [tool for tool in args.tools.split(",") if tool]
    args.clients = [int(c) for c in args.clients.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mcpd-bench-store-") as tmp:
        for backend in args.backends.split(","):
            rows += bench_backend(backend, args, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps({"when": time.time(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
