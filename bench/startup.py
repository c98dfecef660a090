"""``mcpd --stdio``: from spawn to the answer to ``initialize``.

Starts ``python -m mcpd --stdio`` (its default toolsets, or the arguments after ``--``), writes
``initialize`` at once, and times the answer: the wall clock, and the CPU seconds the process
had used by then (``/proc``; on a loaded machine the CPU time is the figure to compare). Each
run is a fresh process; the median and the range of ``--runs`` are printed::

    .venv/bin/python bench/startup.py --runs 7
    .venv/bin/python bench/startup.py --runs 7 -- --toolsets server

The process runs in a temporary directory (its ``./mcpd-data``), so its SQLite store is new
each run unless ``--keep-data`` is given (a fresh store is created and migrated in the
background, after the first answer). ``--tree`` runs another checkout's mcpd with the same
interpreter (before and after, alternately, on a loaded machine). The tree's modules are
compiled first and the process may write bytecode (an inherited ``PYTHONDONTWRITEBYTECODE``
would have every run compile all of mcpd: half as much again).

``--instructions`` counts instead what the process executes until the answer, with callgrind
(every thread; load-independent, so the figure to compare on a shared machine)::

    .venv/bin/python bench/startup.py --runs 3 --instructions
"""

from __future__ import annotations

import argparse
import compileall
import glob
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

INITIALIZE = (
    json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "startup", "version": "1"},
            },
        }
    ).encode()
    + b"\n"
)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def instructions(pid: int, data_dir: str) -> float:
    """What callgrind counted in ``pid`` so far, every thread (dumped now)."""
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    total = 0
    for path in glob.glob(os.path.join(data_dir, f"cg.{pid}*")):
        with open(path) as f:
            total += sum(int(line.split()[1]) for line in f if line.startswith("totals:"))
    return float(total)


def one_run(python: str, tree: str, mcpd_args: list[str], data_dir: str, count: bool) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=tree + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    command = [python, "-m", "mcpd", "--stdio", *mcpd_args]
    if count:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            f"--callgrind-out-file={data_dir}/cg.%p",
            *command,
        ]
    started = time.monotonic()
    server = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=data_dir,
        env=env,
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        server.stdin.write(INITIALIZE)
        server.stdin.flush()
        fd = server.stdout.fileno()
        answer = b""
        while b"\n" not in answer:
            ready, _, _ = select.select([fd], [], [], 600)
            if not ready:
                raise SystemExit("no answer to initialize within 600 s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise SystemExit(f"mcpd exited with status {server.wait()} before answering")
            answer += chunk
        wall = time.monotonic() - started
        cpu = instructions(server.pid, data_dir) if count else cpu_seconds(server.pid)
        if b'"result"' not in answer:
            raise SystemExit(f"unexpected answer: {answer[:300]!r}")
        return wall, cpu
    finally:
        server.stdin.close()
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    parser.add_argument("--tree", default=ROOT, help="the mcpd source tree to run (another checkout: before/after)")
    parser.add_argument("--keep-data", action="store_true", help="one data directory for every run")
    parser.add_argument("--instructions", action="store_true", help="count instructions (callgrind), not time")
    parser.add_argument("mcpd_args", nargs="*")
    args = parser.parse_args()
    compileall.compile_dir(os.path.join(args.tree, "mcpd"), quiet=1)
    walls, cpus = [], []
    shared = tempfile.mkdtemp(prefix="startup-") if args.keep_data else None
    for _ in range(args.runs):
        data_dir = shared or tempfile.mkdtemp(prefix="startup-")
        wall, cpu = one_run(args.python, args.tree, args.mcpd_args, data_dir, args.instructions)
        walls.append(wall)
        cpus.append(cpu)
    if args.instructions:
        print(
            f"start to first answer: {statistics.median(cpus) / 1e6:,.1f}M instructions "
            f"({min(cpus) / 1e6:,.1f}M-{max(cpus) / 1e6:,.1f}M), {args.runs} runs"
        )
        return 0
    print(
        f"start to first answer: wall {statistics.median(walls):.3f} s ({min(walls):.3f}-{max(walls):.3f}), "
        f"CPU {statistics.median(cpus):.3f} s ({min(cpus):.3f}-{max(cpus):.3f}), {args.runs} runs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
