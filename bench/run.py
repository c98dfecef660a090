"""Benchmark mcpd against the official MCP Python SDK and a bare twisted.web server.

Each server runs in its own process pinned to one CPU; the load (wrk, or a stdio round-trip
loop) runs pinned to another. It prints one table row per server, era and client count::

    .venv/bin/python bench/run.py --duration 10 --clients 16 --only mcpd,sdk,bare

See bench/README.rst for what the figures mean.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import WRK_INSTALL, LoadResult, run_stdio, run_wrk, with_server_cpu  # noqa: E402
from bench.mcp_client import (  # noqa: E402
    EXTRA_HEADERS,
    LEGACY,
    MODERN,
    ProtocolProblem,
    StdioClient,
    answers_http,
    call_message,
    check_echo,
    open_legacy_session,
    verify_http_echo,
)
from bench.procs import (  # noqa: E402
    ServerProcess,
    busy_cpu_fraction,
    free_port,
    pinned,
    pinning_problem,
    stop_all,
    thread_pinned,
)

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
STDIO = "stdio"
ERAS = (MODERN, LEGACY, STDIO)
ERA_LABELS = {MODERN: "modern", LEGACY: "legacy", STDIO: "stdio"}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
BUSY_WARNING = 0.15
VERSIONS_SCRIPT = """\
import importlib.metadata as m, json, platform
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
found = {name: version(name) for name in ("mcpd", "mcp", "twisted", "klein", "uvicorn", "starlette")}
print(json.dumps({"python": platform.python_version(), **found}))
"""


@dataclass(frozen=True)
class Target:
    """A server to benchmark: how to start it over HTTP (given a port) and over stdio."""

    name: str
    http: Callable[[str, int], list[str]]
    stdio: Callable[[str], list[str]] | None
    eras: tuple[str, ...]


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target(
            "mcpd",
            http=lambda py, port: [
                py,
                "-m",
                "mcpd",
                "--port",
                str(port),
                "--tool-pack",
                "bench.echo_pack",
                *MCPD_EXTRA_ARGS,
            ],
            stdio=lambda py: [py, "-m", "mcpd", "--stdio", "--tool-pack", "bench.echo_pack"],
            eras=ERAS,
        ),
        Target(
            "sdk",
            http=lambda py, port: [py, str(BENCH / "sdk_echo_server.py"), str(port)],
            stdio=lambda py: [py, str(BENCH / "sdk_echo_server.py"), "--stdio"],
            eras=ERAS,
        ),
        # Opt-in: the SDK's legacy sessions answering JSON, as mcpd's do, instead of its default SSE.
        Target(
            "sdk-json",
            http=lambda py, port: [py, str(BENCH / "sdk_echo_server.py"), str(port), "--json-response"],
            stdio=None,
            eras=(LEGACY,),
        ),
        # The bare server ignores the protocol; it is driven with the self-contained modern POST.
        Target(
            "bare", http=lambda py, port: [py, str(BENCH / "bare_twisted.py"), str(port)], stdio=None, eras=(MODERN,)
        ),
    )
}


DEFAULT_TARGETS = ("mcpd", "sdk", "bare")
# Extra arguments for mcpd's HTTP server (--server-arg).
MCPD_EXTRA_ARGS: list[str] = []


@dataclass(frozen=True)
class Row:
    """One line of the report; the figures are None when the run failed (``note`` says why)."""

    server: str
    era: str
    clients: int
    requests_per_second: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int | None = None
    server_cpu_pct: float | None = None
    requests: int | None = None
    seconds: float | None = None
    runs_per_second: list[float] = field(default_factory=list)
    note: str = ""

    @classmethod
    def measured(cls, server: str, era: str, clients: int, results: Sequence[LoadResult]) -> Row:
        """A row holding the median (by requests/s) of repeated load runs; errors are summed."""
        ranked = sorted(results, key=lambda result: result.requests_per_second)
        median = ranked[(len(ranked) - 1) // 2]
        return cls(
            server,
            ERA_LABELS[era],
            clients,
            requests_per_second=round(median.requests_per_second, 1),
            p50_ms=round(median.p50_ms, 3),
            p99_ms=round(median.p99_ms, 3),
            errors=sum(result.errors for result in results),
            server_cpu_pct=None if median.server_cpu is None else round(100 * median.server_cpu, 1),
            requests=median.requests,
            seconds=round(median.seconds, 3),
            runs_per_second=[round(result.requests_per_second, 1) for result in results],
        )


@dataclass
class Settings:
    """What the command line asked for."""

    python: str
    duration: int
    warmup: int
    repeat: int
    clients: list[int]
    targets: list[Target]
    eras: list[str]
    server_cpu: int | None
    load_cpu: int | None
    start_timeout: float
    json_path: Path | None
    logs: Path | None
    workdir: Path = field(default_factory=Path)


class BenchFailure(Exception):
    """One server/era could not be measured: the message says why, ``detail`` shows the evidence."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail

    @classmethod
    def from_log(cls, message: str, server: ServerProcess) -> BenchFailure:
        """A failure whose evidence is the end of the server's log; its last line joins the message."""
        tail = server.log_tail()
        last = tail.splitlines()[-1].strip() if tail.strip() else "(nothing logged)"
        return cls(f"{message}: {last}", tail)


def comma_list(convert: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """An argparse type for a comma-separated list."""

    def parse(text: str) -> list[Any]:
        try:
            return [convert(item.strip()) for item in text.split(",") if item.strip()]
        except (ValueError, KeyError) as e:
            raise argparse.ArgumentTypeError(f"bad item in {text!r}: {e}") from None

    return parse


def parse_args(argv: Sequence[str] | None) -> Settings:
    """Read the command line."""
    venv_python = REPO / ".venv" / "bin" / "python"
    eras_by_label = {label: era for era, label in ERA_LABELS.items()}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of measured load per row (10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each row (2)")
    parser.add_argument("--repeat", type=int, default=1, help="measured runs per row; the median is shown (1)")
    parser.add_argument(
        "--clients", type=comma_list(int), default=[16], help="concurrent connections, e.g. 1,16,64 (16)"
    )
    parser.add_argument(
        "--only",
        type=comma_list(TARGETS.__getitem__),
        default=[TARGETS[name] for name in DEFAULT_TARGETS],
        help=f"servers to run, from {','.join(TARGETS)} ({','.join(DEFAULT_TARGETS)})",
    )
    parser.add_argument(
        "--eras",
        type=comma_list(eras_by_label.__getitem__),
        default=list(ERAS),
        help="eras to run, from modern,legacy,stdio (all)",
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU the server is pinned to (0)")
    parser.add_argument("--load-cpu", type=int, default=1, help="CPU the load generator is pinned to (1)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin anything to a CPU")
    parser.add_argument(
        "--python",
        default=str(venv_python if venv_python.exists() else sys.executable),
        help="interpreter for the servers (the repository's .venv)",
    )
    parser.add_argument("--start-timeout", type=float, default=30.0, help="seconds a server has to start (30)")
    parser.add_argument("--json", type=Path, dest="json_path", help="also write the results as JSON here")
    parser.add_argument("--logs", type=Path, help="keep the servers' logs and wrk scripts in this directory")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra argument for mcpd (repeatable), e.g. --api-key=K"
    )
    parser.add_argument(
        "--header", action="append", default=[], help="extra HTTP header NAME:VALUE on every request (repeatable)"
    )
    args = parser.parse_args(argv)
    MCPD_EXTRA_ARGS.extend(args.server_arg)
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep:
            parser.error(f"--header {header!r}: expected NAME:VALUE")
        EXTRA_HEADERS[name.strip()] = value.strip()
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
    if min(args.duration, args.repeat, *args.clients or [0]) < 1 or args.warmup < 0:
        parser.error("--duration, --repeat and --clients must be at least 1, --warmup at least 0")
    return Settings(
        python=args.python,
        duration=args.duration,
        warmup=args.warmup,
        repeat=args.repeat,
        clients=args.clients,
        targets=args.only,
        eras=args.eras,
        server_cpu=None if args.no_pin else args.server_cpu,
        load_cpu=None if args.no_pin else args.load_cpu,
        start_timeout=args.start_timeout,
        json_path=args.json_path,
        logs=args.logs,
    )


def server_env() -> dict[str, str]:
    """The servers' environment: ours, with the repository root first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def start_server(settings: Settings, target: Target, era: str, command: list[str]) -> ServerProcess:
    """A not-yet-entered `ServerProcess` for ``target`` pinned to the server CPU."""
    return ServerProcess(
        pinned(command, settings.server_cpu),
        log_path=settings.workdir / f"{target.name}-{ERA_LABELS[era]}.log",
        cwd=REPO,
        env=server_env(),
        stdio=era == STDIO,
    )


def wait_answering(server: ServerProcess, port: int, timeout: float) -> None:
    """Return once the server answers HTTP; `BenchFailure` if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.exited() is not None:
            raise BenchFailure.from_log(f"exited with status {server.exited()} on start-up", server)
        if answers_http(port):
            return
        time.sleep(0.1)
    raise BenchFailure.from_log(f"did not answer on port {port} within {timeout:g}s", server)


def bench_http(settings: Settings, target: Target, era: str) -> list[Row]:
    """Measure one server in one HTTP era at every client count, on one server process."""
    port = free_port()
    rows = []
    with start_server(settings, target, era, target.http(settings.python, port)) as server:
        wait_answering(server, port, settings.start_timeout)
        session_id = open_legacy_session(port) if era == LEGACY else None
        verify_http_echo(port, era, session_id)
        for clients in settings.clients:
            drive = functools.partial(
                run_wrk,
                port=port,
                era=era,
                session_id=session_id,
                clients=clients,
                cpu=settings.load_cpu,
                workdir=settings.workdir,
            )
            if settings.warmup:
                drive(duration=settings.warmup)
            measure = functools.partial(drive, duration=settings.duration)
            results = [with_server_cpu(measure, server.cpu_seconds) for _ in range(settings.repeat)]
            if server.exited() is not None:
                raise BenchFailure.from_log(f"exited with status {server.exited()} under load", server)
            rows.append(report_progress(Row.measured(target.name, era, clients, results)))
    return rows


def bench_stdio(settings: Settings, target: Target) -> list[Row]:
    """Measure sequential round trips over a server's stdin and stdout."""
    assert target.stdio is not None
    with start_server(settings, target, STDIO, target.stdio(settings.python)) as server:
        assert server.process is not None and server.process.stdin and server.process.stdout
        client = StdioClient(server.process.stdin, server.process.stdout)
        try:
            client.handshake(timeout=settings.start_timeout)
            check_echo(client.response_to_request(call_message(1, LEGACY)))
            with thread_pinned(settings.load_cpu):
                if settings.warmup:
                    run_stdio(client, settings.warmup, first_id=2)
                # Each run numbers its requests from its own billion: ids are never reused.
                results = [
                    with_server_cpu(
                        functools.partial(run_stdio, client, settings.duration, first_id=run * 1_000_000_000),
                        server.cpu_seconds,
                    )
                    for run in range(1, settings.repeat + 1)
                ]
        except ProtocolProblem as e:
            raise BenchFailure.from_log(str(e), server) from None
        finally:
            client.close()
    return [report_progress(Row.measured(target.name, STDIO, 1, results))]


def bench_target(settings: Settings, target: Target, era: str) -> list[Row]:
    """The rows for one server and era; a failure becomes a row whose note says why."""
    try:
        if era == STDIO:
            return bench_stdio(settings, target)
        return bench_http(settings, target, era)
    except (
        BenchFailure,
        ProtocolProblem,
        RuntimeError,
        OSError,
        ValueError,
        http.client.HTTPException,
        subprocess.TimeoutExpired,
    ) as e:
        detail = e.detail if isinstance(e, BenchFailure) else ""
        print(f"!! {target.name} {ERA_LABELS[era]}: {e}\n{detail}".rstrip(), file=sys.stderr)
        note = str(e).splitlines()[0] if str(e) else type(e).__name__
        return [
            Row(target.name, ERA_LABELS[era], clients, note=note)
            for clients in ([1] if era == STDIO else settings.clients)
        ]


def report_progress(row: Row) -> Row:
    """Print a row as soon as it is measured (the table comes at the end)."""
    print(f".. {row.server} {row.era} c={row.clients}: {row.requests_per_second} req/s", file=sys.stderr)
    return row


def format_table(rows: Sequence[Row]) -> str:
    """The rows as an aligned plain-text table."""

    def figure(value: float | int | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    header = ["server", "era", "clients", "requests/s", "p50 ms", "p99 ms", "errors", "server cpu %"]
    lines = [
        [
            row.server,
            row.era,
            str(row.clients),
            figure(row.requests_per_second, 0),
            figure(row.p50_ms, 2),
            figure(row.p99_ms, 2),
            figure(row.errors, 0),
            figure(row.server_cpu_pct, 0),
        ]
        + ([row.note] if row.note else [])
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [header, *lines] if i < len(cells)) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        padded = [
            cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths, strict=False))
        ]
        return "  ".join(padded + cells[len(widths) :]).rstrip()

    return "\n".join([render(header), render(["-" * w for w in widths]), *map(render, lines)])


def versions(python: str) -> dict[str, Any]:
    """Versions of what is measured, for the JSON report."""
    found: dict[str, Any] = {"machine": platform.machine(), "cpu": cpu_model()}
    try:
        probe = subprocess.run([python, "-c", VERSIONS_SCRIPT], capture_output=True, text=True, timeout=30)
        found.update(json.loads(probe.stdout))
        wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
        found["wrk"] = (wrk.stdout or wrk.stderr).split("\n", 1)[0].strip()
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass
    return found


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it (empty when unknown)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def write_json(settings: Settings, rows: Sequence[Row], argv: Sequence[str], busy: float | None) -> None:
    """Write the report and how it was made to ``settings.json_path``."""
    assert settings.json_path is not None
    report = {
        "command": ["bench/run.py", *argv],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": settings.duration,
        "warmup_s": settings.warmup,
        "repeat": settings.repeat,
        "server_cpu": settings.server_cpu,
        "load_cpu": settings.load_cpu,
        "cpus": os.cpu_count(),
        "busy_before": None if busy is None else round(busy, 3),
        "versions": versions(settings.python),
        "rows": [asdict(row) for row in rows],
    }
    settings.json_path.write_text(json.dumps(report, indent=2) + "\n")


class Interrupted(Exception):
    """A signal asked the benchmark to stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # Later signals must not cut the clean-up short.
    for ignored in STOP_SIGNALS:
        signal.signal(ignored, signal.SIG_IGN)
    raise Interrupted(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit status 1 when a row failed, 2 when it cannot run at all."""
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = parse_args(argv)
    if any(era != STDIO for era in settings.eras) and shutil.which("wrk") is None:
        print(WRK_INSTALL, file=sys.stderr)
        return 2
    if settings.server_cpu is not None and settings.load_cpu is not None:
        problem = pinning_problem([settings.server_cpu, settings.load_cpu])
        if problem:
            print(f"!! not pinning to CPUs: {problem}", file=sys.stderr)
            settings.server_cpu = settings.load_cpu = None
    # Ctrl-C and SIGTERM unwind through the `with` blocks that stop servers (and stop_all after).
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupt)
    rows: list[Row] = []
    busy: float | None = None
    interrupted: Interrupted | None = None
    try:
        busy = busy_cpu_fraction()
        if busy is not None and busy > BUSY_WARNING:
            print(f"!! the CPUs were {busy:.0%} busy before the run: figures will be noisy", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="mcpd-bench-") as workdir:
            settings.workdir = settings.logs or Path(workdir)
            for target in settings.targets:
                for era in (era for era in settings.eras if era in target.eras):
                    rows.extend(bench_target(settings, target, era))
    except Interrupted as e:
        interrupted = e
    finally:
        stop_all()
    if interrupted is not None:
        print(f"interrupted by {interrupted}: every server started was stopped", file=sys.stderr)
    pinning = (
        f"server on CPU {settings.server_cpu}, load on CPU {settings.load_cpu}"
        if settings.load_cpu is not None
        else "unpinned"
    )
    print(
        f"\n{settings.duration}s per row after {settings.warmup}s warm-up, median of {settings.repeat}; {pinning}; "
        "HTTP: wrk -t1 over keep-alive connections; stdio: sequential round trips\n"
    )
    print(format_table(rows) if rows else "nothing was measured")
    if settings.json_path is not None:
        write_json(settings, rows, argv, busy)
    if interrupted is not None:
        return 128 + interrupted.signum
    return 1 if any(row.note for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
