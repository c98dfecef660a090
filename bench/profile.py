"""Where a server's CPU goes: record it with py-spy under load, then sum the samples by layer.

`record` starts ``py-spy record`` on a running server (``--gil``: only samples holding the GIL,
which is what one core of Python spends) writing collapsed stacks; `summary` reads them and
gives each sample to the layer of its innermost frame that belongs to one (the database driver's
calls first: py-spy sees no C frames, so SQLite's own work shows as SQLAlchemy's ``do_execute``),
then the functions that spend the most themselves::

    .venv/bin/python bench/store.py --tools task.list --clients 16 --profile /tmp/profiles
    .venv/bin/python bench/profile.py /tmp/profiles/sqlite-task.list-c16.txt

py-spy is not a dependency of mcpd: ``pip install py-spy`` (it needs ptrace: root, or
``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

# Layer -> what a frame's text holds when it belongs to it (first match wins, in this order).
LAYERS: dict[str, tuple[str, ...]] = {
    "database driver (SQLite / PyMySQL work)": (
        "do_execute (",
        "do_executemany (",
        "do_commit (",
        "do_rollback (",
        "_sqlite_begin (",
        "pymysql/",
    ),
    "audit trail": ("mcpd/observe/audit", "mcpd/stores/sql/audit"),
    "SQL store (mcpd/stores/sql)": ("mcpd/stores/sql/",),
    "SQLAlchemy": ("sqlalchemy/",),
    "thread hop (thread pool, callFromThread)": (
        "twisted/python/threadpool",
        "twisted/internet/threads",
        "twisted/_threads/",
        "threading.py",
        "queue.py",
        "callFromThread",
    ),
    "JSON": ("json/",),
    "output/input validation": ("mcpd/tools/validation", "fastjsonschema", "jsonschema/"),
    "metrics and stats": ("mcpd/observe/metrics", "mcpd/observe/stats", "prometheus_client/"),
    "engine (mcpd/protocol)": ("mcpd/protocol/",),
    "transport and security": ("mcpd/transport/", "mcpd/security/", "mcpd/web/"),
    "twisted.web": ("twisted/web/",),
    "reactor and sockets": ("twisted/internet/",),
}


def record(pid: int, seconds: int, output: Path, rate: int = 200) -> subprocess.Popen[bytes] | None:
    """Start py-spy on ``pid`` for ``seconds`` (collapsed stacks to ``output``); None without py-spy."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy is not installed (pip install py-spy): no profile", file=sys.stderr)
        return None
    command = [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(rate)]
    command += ["--format", "raw", "--gil", "--nonblocking", "--output", str(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summary(path: Path, top: int = 15) -> str:
    """The layers and the hottest functions of one recording, as text."""
    totals: collections.Counter[str] = collections.Counter()
    selves: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        totals[_layer(frames)] += count
        selves[frames[-1]] += count
    if not samples:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {samples} samples holding the GIL", "  by layer (of the innermost frame in one):"]
    lines += [f"    {100 * n / samples:5.1f}%  {layer}" for layer, n in totals.most_common()]
    lines.append("  hottest functions (self):")
    lines += [f"    {100 * n / samples:5.1f}%  {frame[:110]}" for frame, n in selves.most_common(top)]
    return "\n".join(lines)


def _layer(frames: list[str]) -> str:
    for frame in reversed(frames):
        for layer, marks in LAYERS.items():
            if any(mark in frame for mark in marks):
                return layer
    return "other"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recordings", nargs="+", type=Path, help="py-spy raw (collapsed) files")
    parser.add_argument("--top", type=int, default=15, help="hottest functions shown (15)")
    args = parser.parse_args(argv)
    for path in args.recordings:
        print(summary(path, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
