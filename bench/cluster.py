"""Benchmark several mcpd instances sharing Redis: tools/call throughput of one instance and of
two behind nginx, and what Redis-backed legacy sessions cost per request.

Rows (wrk over keep-alive connections, ``echo`` of bench/echo_pack.py, both eras):

- ``1 alone``: one instance, no Redis (the in-process stores);
- ``1 + redis``: one instance with ``--redis-url`` (buckets, records and sessions in Redis);
- ``nginx>1`` and ``nginx>2``: one or two instances with ``--redis-url`` behind nginx
  (Debian's nginx-light, the proxy settings of contrib/nginx/mcpd.conf over plain HTTP,
  round-robin, no affinity).

Nothing is pinned: on a 2-core machine the instances, nginx, Redis and wrk share both cores,
which is what running two instances on such a machine means. A legacy session's requests land
on both instances behind nginx; the first one on an instance adopts the session from Redis.
That first request is measured apart: ``initialize`` on one instance, then one ``tools/call`` on
the same instance or on the other (median of ``--sessions`` sessions).

Redis is started by the test fixture (tests/redis_service.py) on a loopback port; it needs
Debian's redis-server, nginx-light and wrk.

    .venv/bin/python bench/cluster.py --duration 10 --clients 16
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import LoadResult, run_wrk  # noqa: E402
from bench.mcp_client import LEGACY, MODERN, call_headers, call_message, open_legacy_session, post  # noqa: E402
from bench.procs import ServerProcess, free_port, wait_until  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NGINX = "/usr/sbin/nginx"
SHIPPED = REPO / "contrib" / "nginx" / "mcpd.conf"


def shipped_location() -> str:
    """The ``location / { … }`` block of contrib/nginx/mcpd.conf: its proxy settings."""
    text = SHIPPED.read_text(encoding="utf-8")
    match = re.search(r"\n    location / \{\n.*?\n    \}\n", text, re.DOTALL)
    if match is None:
        raise SystemExit("contrib/nginx/mcpd.conf has no 'location / {' block")
    return match.group(0)


def nginx_conf(workdir: Path, port: int, upstreams: Sequence[int]) -> str:
    servers = "".join(f"    server 127.0.0.1:{p};\n" for p in upstreams)
    return f"""daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    upstream mcpd {{
{servers}        keepalive 32;
    }}
    map $http_upgrade $mcpd_connection {{
        default upgrade;
        ""      "";
    }}
    server {{
        listen 127.0.0.1:{port};
{shipped_location()}    }}
}}
"""


@contextmanager
def nginx(workdir: Path, upstreams: Sequence[int]) -> Iterator[int]:
    port = free_port()
    for name in ("body", "proxy"):
        (workdir / name).mkdir(exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, port, upstreams), encoding="utf-8")
    process = subprocess.Popen([NGINX, "-p", str(workdir), "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        if not wait_until(lambda: answers(port), 10):
            raise SystemExit(f"nginx did not start: {(workdir / 'nginx-error.log').read_text()}")
        yield port
    finally:
        process.send_signal(signal.SIGQUIT)
        process.wait(10)


def answers(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def instance(workdir: Path, name: str, python: str, redis_url: str | None) -> Iterator[tuple[int, ServerProcess]]:
    port = free_port()
    command = [python, "-m", "mcpd", "--port", str(port), "--toolsets", "server", "--tool-pack", "bench.echo_pack"]
    if redis_url is not None:
        command += ["--redis-url", redis_url]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    server = ServerProcess(command, log_path=workdir / f"{name}.log", cwd=workdir, env=env)
    with server:
        if not wait_until(lambda: answers(port), 30):
            raise SystemExit(f"mcpd {name} did not start:\n{server.log_tail()}")
        time.sleep(0.5)  # the cluster's start-up check
        yield port, server


def measure(
    port: int, era: str, clients: int, duration: int, warmup: int, workdir: Path, servers: list[ServerProcess]
) -> tuple[LoadResult, float]:
    """One wrk run; its result and the instances' CPU (cores) meanwhile."""
    session = open_legacy_session(port) if era == LEGACY else None
    common = {"port": port, "era": era, "session_id": session, "clients": clients, "cpu": None, "workdir": workdir}
    if warmup:
        run_wrk(duration=warmup, **common)  # type: ignore[arg-type]
    before = sum(s.cpu_seconds() or 0.0 for s in servers)
    started = time.perf_counter()
    result = run_wrk(duration=duration, **common)  # type: ignore[arg-type]
    cores = (sum(s.cpu_seconds() or 0.0 for s in servers) - before) / (time.perf_counter() - started)
    return result, cores


def first_request(ports: tuple[int, int], sessions: int) -> tuple[float, float]:
    """Median ms of a session's first tools/call on the instance that opened it, and on the
    other one (which adopts it from Redis)."""
    same, other = [], []
    for n in range(sessions):
        for target, into in ((ports[0], same), (ports[1], other)):
            session = open_legacy_session(ports[0])
            started = time.perf_counter()
            reply = post(target, call_message(n, LEGACY), call_headers(LEGACY, session))
            into.append((time.perf_counter() - started) * 1000)
            if reply.status != 200:
                raise SystemExit(f"tools/call on {target} got HTTP {reply.status}: {reply.messages!r}")
    return statistics.median(same), statistics.median(other)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of measured load per row (10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each row (2)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent keep-alive connections (16)")
    parser.add_argument("--sessions", type=int, default=200, help="sessions for the first-request figure (200)")
    parser.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"), help="the servers' interpreter")
    args = parser.parse_args(argv)
    for tool in ("wrk", NGINX):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed: apt-get install -y wrk nginx-light redis-server", file=sys.stderr)
            return 2
    from tests.redis_service import RedisServer

    workdir = Path(tempfile.mkdtemp(prefix="mcpd-bench-cluster-"))
    redis = RedisServer(workdir / "redis").start()
    rows = []
    try:
        setups = (
            ("1 alone", 1, False, False),
            ("1 + redis", 1, True, False),
            ("nginx>1", 1, True, True),
            ("nginx>2", 2, True, True),
        )
        for label, count, with_redis, proxied in setups:
            with ExitStack() as stack:
                started = [
                    stack.enter_context(
                        instance(
                            workdir,
                            f"{label}-{i}".replace(" ", "_").replace(">", "-"),
                            args.python,
                            redis.url if with_redis else None,
                        )
                    )
                    for i in range(count)
                ]
                ports = [port for port, _server in started]
                servers = [server for _port, server in started]
                port = stack.enter_context(nginx(workdir, ports)) if proxied else ports[0]
                for era in (MODERN, LEGACY):
                    result, cores = measure(port, era, args.clients, args.duration, args.warmup, workdir, servers)
                    rows.append((label, era, result, cores))
                    print(
                        f"{label:10} {era:10} {result.requests_per_second:8.0f}/s  p50 {result.p50_ms:6.2f} ms  "
                        f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}  mcpd cores {cores:.2f}",
                        flush=True,
                    )
                if count == 2:
                    same, other = first_request((ports[0], ports[1]), args.sessions)
                    print(
                        f"first tools/call of a legacy session: {same:.2f} ms on its instance, "
                        f"{other:.2f} ms on another (adopted from Redis); median of {args.sessions}"
                    )
        redis_rps = {
            era: next(r.requests_per_second for label, e, r, _ in rows if label == "1 + redis" and e == era)
            for era in (MODERN, LEGACY)
        }
        alone_rps = {
            era: next(r.requests_per_second for label, e, r, _ in rows if label == "1 alone" and e == era)
            for era in (MODERN, LEGACY)
        }
        for era in (MODERN, LEGACY):
            per_alone, per_redis = 1e6 / alone_rps[era], 1e6 / redis_rps[era]
            print(
                f"{era}: {per_alone:.0f} µs a request alone, {per_redis:.0f} µs with Redis ({per_redis - per_alone:+.0f} µs)"
            )
    finally:
        redis.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
