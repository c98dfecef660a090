"""CPU time per SQL store operation, in process: the store's share of a tool call, without HTTP.

Where bench/store.py measures calls per second over HTTP (which, on a machine shared with other
work, says as much about the neighbours as about mcpd), this counts the process's CPU seconds
(user + system, every thread) per ``task.create``, ``task.list`` and ``note.search`` of the SQL
store, each run through the store's own thread pool as the packs run it, ``--calls`` times with
``--concurrency`` in flight. Figures from two trees compare when measured alternately::

    .venv/bin/python bench/store_cpu.py --calls 3000
    PYTHONPATH=/path/to/other/tree .venv/bin/python bench/store_cpu.py --calls 3000
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.store import SEED_NOTES, SEED_TASKS, WORDS  # noqa: E402

TENANT = "bench"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@defer.inlineCallbacks
def measure(name: str, operation: Callable[[int], defer.Deferred[Any]], calls: int, concurrency: int) -> Any:
    """Run ``operation(n)`` ``calls`` times, ``concurrency`` at once; print CPU and wall per call."""
    yield defer.gatherResults([operation(n) for n in range(min(calls, 50))])  # warm up
    started, cpu = time.perf_counter(), cpu_seconds()
    next_call = iter(range(calls))

    @defer.inlineCallbacks
    def worker() -> Any:
        for n in next_call:
            yield operation(n)

    yield defer.gatherResults([worker() for _ in range(concurrency)])
    wall, used = time.perf_counter() - started, cpu_seconds() - cpu
    print(
        f"{name:12} {1e6 * used / calls:8.0f} µs CPU/call  {calls / used:7.0f} calls per CPU-second  "
        f"({calls / wall:6.0f}/s wall)",
        flush=True,
    )


@defer.inlineCallbacks
def main(reactor: Any, argv: Sequence[str]) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--db-url", help="a database URL (default: SQLite in a temporary directory)")
    parser.add_argument("--tools", default="task.create,task.list,note.search")
    args = parser.parse_args(argv)

    from mcpd.stores.sql.config import DatabaseConfig, database_url
    from mcpd.stores.sql.database import SQLDatabase
    from mcpd.stores.sql.notes import SQLNoteStore
    from mcpd.stores.sql.service import SQLStoreService
    from mcpd.stores.sql.tasks import SQLTaskBoard

    database = SQLDatabase(DatabaseConfig(url=database_url(args.db_url, tempfile.mkdtemp())), reactor)
    service = SQLStoreService(database, reactor)
    service.startService()
    board, notes = SQLTaskBoard(database), SQLNoteStore(database)
    yield board.create_project(TENANT, "bench", None, "bench")
    for i in range(SEED_TASKS):
        yield board.create_task(TENANT, {"project": "bench", "title": f"seed task {i}", "tags": [WORDS[i % 30]]}, "b")
    for i in range(SEED_NOTES):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(60)]
        yield notes.save_note(TENANT, {"title": " ".join(words[:4]), "body": " ".join(words), "tags": [words[0]]}, "b")
    operations = {
        "task.create": lambda n: board.create_task(
            TENANT, {"project": "bench", "title": "A benchmark task", "priority": "high", "tags": ["bench"]}, "b"
        ),
        "task.list": lambda n: board.list_tasks(TENANT, {"project": "bench"}, 20, None),
        "note.search": lambda n: notes.search_notes(TENANT, "deploy pipeline", None, 10),
    }
    for name in args.tools.split(","):
        yield measure(name, operations[name], args.calls, args.concurrency)
    yield service.stopService()


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
