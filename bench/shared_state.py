"""Benchmark the per-request cost of the shared state in Redis (``--redis-url``) next to the
in-process default: ``tools/call`` of ``echo`` over Streamable HTTP with an API key, so that
every request takes a token from its key's rate-limit bucket (in this process, or one Lua script
in Redis), in both eras (legacy: one session, its record kept in the store); then legacy session
churn (``initialize`` + ``DELETE``), whose records are written to and removed from the store.

mcpd runs pinned to one CPU; wrk drives it from the other. Redis is started by the test fixture
(tests/redis_service.py) on a loopback port and is not pinned: it shares the machine with both,
as do any other jobs running (say so when quoting figures). See bench/README.rst.

    .venv/bin/python bench/shared_state.py --clients 1,16 --duration 10
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import mcp_client  # noqa: E402
from bench.load import WRK_INSTALL, run_wrk, with_server_cpu  # noqa: E402
from bench.mcp_client import ACCEPT, LEGACY, MCP_PATH, MODERN, open_legacy_session, verify_http_echo  # noqa: E402
from bench.procs import LOOPBACK, ServerProcess, free_port, pinned, wait_until  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KEY = "bench-key"
ERAS = {"modern": MODERN, "legacy": LEGACY}


def churn(port: int, seconds: float) -> tuple[float, float]:
    """Legacy sessions opened and closed one after the other for ``seconds``: sessions a second
    and the mean milliseconds of one open + close."""
    import http.client

    count, started = 0, time.perf_counter()
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        while time.perf_counter() - started < seconds:
            session_id = open_legacy_session(port)
            headers = {"Mcp-Session-Id": session_id, "MCP-Protocol-Version": LEGACY, **mcp_client.EXTRA_HEADERS}
            connection.request("DELETE", MCP_PATH, headers={"Accept": ACCEPT, **headers})
            response = connection.getresponse()
            response.read()
            if response.status not in (200, 202, 204):
                raise RuntimeError(f"DELETE of a session got HTTP {response.status}")
            count += 1
    finally:
        connection.close()
    elapsed = time.perf_counter() - started
    return count / elapsed, elapsed / count * 1000 if count else 0.0


def micro(redis_url: str, operations: int, concurrencies: Sequence[int]) -> list[dict[str, Any]]:
    """The stores alone, in this process: microseconds per bucket take and per session save +
    load, in memory and in Redis, with so many calls outstanding (Redis pipelines them). Runs
    the reactor, so once per process."""
    from twisted.internet import reactor
    from twisted.internet.defer import gatherResults, inlineCallbacks

    from mcpd.stores.memory import MemoryBucketStore, MemorySessionStore
    from mcpd.stores.redis import RedisConnection, redis_config
    from mcpd.stores.redis.buckets import RedisBucketStore
    from mcpd.stores.redis.sessions import RedisSessionStore

    rows: list[dict[str, Any]] = []

    @inlineCallbacks
    def timed(name: str, backend: str, one: Any, concurrency: int) -> Any:
        started, cpu = time.perf_counter(), time.process_time()
        for start in range(0, operations, concurrency):
            yield gatherResults([one(i) for i in range(start, min(start + concurrency, operations))])
        micros = (time.perf_counter() - started) / operations * 1e6
        cpu_micros = (time.process_time() - cpu) / operations * 1e6
        rows.append(
            {
                "backend": backend,
                "operation": name,
                "concurrency": concurrency,
                "us_per_op": round(micros, 1),
                "cpu_us_per_op": round(cpu_micros, 1),
            }
        )
        print(
            f"{backend:7} {name:22} {concurrency:>3} outstanding  {micros:8.1f} us/op  "
            f"(this process's CPU: {cpu_micros:6.1f} us/op)",
            flush=True,
        )

    @inlineCallbacks
    def main(reactor: Any) -> Any:
        connection = RedisConnection(redis_config(redis_url, prefix="bench:"), reactor)
        connection.startService()
        yield connection.connected()
        stores = {
            "memory": (MemoryBucketStore(reactor), MemorySessionStore()),
            "redis": (RedisBucketStore(connection), RedisSessionStore(connection, reactor, 600.0)),
        }
        for concurrency in concurrencies:
            for backend, (buckets, sessions) in stores.items():
                take = functools.partial(_take, buckets)
                yield timed("bucket take", backend, take, concurrency)
                yield timed("session save + load", backend, functools.partial(_save_load, sessions), concurrency)
        yield connection.stopService()

    failures: list[Any] = []
    reactor.callWhenRunning(lambda: main(reactor).addErrback(failures.append).addBoth(lambda _: reactor.stop()))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    if failures:
        failures[0].raiseException()
    return rows


def _take(buckets: Any, i: int) -> Any:
    return buckets.take(f"key:{i % 100}", 1e9, 1e9)


def _save_load(sessions: Any, i: int) -> Any:
    from mcpd.interfaces import SessionRecord

    record = SessionRecord(f"s{i}", version="2025-11-25", owner="bench", account="key:bench")
    return sessions.save(record).addCallback(lambda _: sessions.load(record.session_id))


def bench_backend(backend: str, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    port = free_port()
    keys = workdir / "keys"
    keys.write_text(f"bench:{KEY}\n")
    # A limit no row reaches: every request takes a token, none is refused.
    extra = ["--api-key-file", str(keys), "--rate-limit", "1000000000", "--rate-window", "1"]
    redis = None
    if backend == "redis":
        from tests.redis_service import RedisServer

        redis = RedisServer(workdir / "redis").start()
        extra += ["--redis-url", redis.url]
    command = [
        args.python, "-m", "mcpd", "--port", str(port), "--tool-pack", "bench.echo_pack", "--toolsets", "server",
        "--max-connections", "20000", "--max-streams-per-key", "20000", "--share-per-key", "100", *extra,
    ]  # fmt: skip
    rows: list[dict[str, Any]] = []
    server = ServerProcess(
        pinned(command, args.server_cpu),
        log_path=workdir / f"mcpd-{backend}.log",
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        with server:
            if not wait_until(lambda: _answers(port), 30):
                raise RuntimeError(f"mcpd did not start:\n{server.log_tail()}")
            for era in args.eras:
                era_name = "modern" if era == MODERN else "legacy"
                session_id = open_legacy_session(port) if era == LEGACY else None
                verify_http_echo(port, era, session_id)
                for clients in args.clients:
                    drive = functools.partial(
                        run_wrk, port=port, era=era, session_id=session_id, clients=clients, cpu=args.load_cpu,
                        workdir=workdir,
                    )  # fmt: skip
                    if args.warmup:
                        drive(duration=args.warmup)
                    result = with_server_cpu(functools.partial(drive, duration=args.duration), server.cpu_seconds)
                    row = {
                        "backend": backend,
                        "era": era_name,
                        "clients": clients,
                        "rps": round(result.requests_per_second),
                        "p50_ms": round(result.p50_ms, 2),
                        "p99_ms": round(result.p99_ms, 2),
                        "errors": result.errors,
                        "server_cpu": round(result.server_cpu or 0, 2),
                        # mcpd's CPU time per call: what a request costs, whatever else runs.
                        "cpu_ms_per_call": round(
                            (result.server_cpu or 0) * 1000 / max(result.requests_per_second, 1), 3
                        ),
                    }
                    print(
                        f"{backend:7} {era_name:7} c={clients:<3} {row['rps']:>6} calls/s  p50 {row['p50_ms']:>6.2f} ms  "
                        f"p99 {row['p99_ms']:>6.2f} ms  errors {row['errors']}  server CPU {row['server_cpu']:.0%}  "
                        f"{row['cpu_ms_per_call']:.3f} CPU ms/call",
                        flush=True,
                    )
                    rows.append(row)
            if args.churn:
                per_second, ms = churn(port, args.churn)
                rows.append({"backend": backend, "era": "session churn", "sessions_per_s": round(per_second), "ms": ms})
                print(f"{backend:7} sessions opened and closed: {per_second:>6.0f}/s  ({ms:.2f} ms each)", flush=True)
    finally:
        if redis is not None:
            redis.destroy()
    return rows


def _answers(port: int) -> bool:
    try:
        verify_http_echo(port, MODERN)
        return True
    except Exception:  # noqa: BLE001 -- not up yet
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="memory,redis", help="memory, redis (comma-separated)")
    parser.add_argument("--eras", default="modern,legacy")
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--churn", type=float, default=5.0, help="seconds of session churn per backend (0: none)")
    parser.add_argument("--micro", type=int, default=20000, help="store operations per micro row (0: none)")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"))
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print(WRK_INSTALL, file=sys.stderr)
        return 2
    args.eras = [ERAS[era] for era in args.eras.split(",") if era]
    args.clients = [int(c) for c in args.clients.split(",")]
    mcp_client.EXTRA_HEADERS["Authorization"] = f"Bearer {KEY}"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mcpd-bench-shared-") as tmp:
        for backend in args.backends.split(","):
            rows += bench_backend(backend, args, Path(tmp))
        if args.micro:
            from tests.redis_service import RedisServer

            redis = RedisServer(Path(tmp) / "redis-micro").start()
            try:
                rows += micro(redis.url, args.micro, (1, 16))
            finally:
                redis.destroy()
    if args.json:
        Path(args.json).write_text(json.dumps({"when": time.time(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
