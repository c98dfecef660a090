"""The audit writer's cost per row, in process: `AuditWriter.flush` of queued tool calls into the
SQL store's ``audit_records`` (SQLite in a temporary directory, or ``--db-url``).

Queues ``--rows`` records of tool calls as the engine's observers see them (a ``CallRecord``, its
caller per request, kept by /stats' ring of 1,000 too), flushes them ``--batch`` at a time as the
daemon's writer does (1,750: a 0.25 s flush at 7,000 calls/s), and prints the CPU seconds per row
(every thread), the garbage collector's collections by generation (and their CPU time) and the
rows stored. Under callgrind the writer thread's own figure is exact and load-independent
(``--separate-threads``; the SQLite writer thread does nothing else here)::

    .venv/bin/python bench/audit_rows.py --rows 20000
    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=/tmp/cg.%p \\
        .venv/bin/python bench/audit_rows.py --rows 10000
    callgrind_annotate /tmp/cg.PID-02 | head     # totals: the writer thread (usually -02)
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
from typing import Any

from twisted.internet import defer, task


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@defer.inlineCallbacks
def run(reactor: Any, args: argparse.Namespace) -> Any:
    from mcpd.observe.audit import AuditTrail, AuditWriter
    from mcpd.observe.stats import RequestStats
    from mcpd.protocol.vocabulary import CallRecord
    from mcpd.stores.sql.audit import SQLAuditLog
    from mcpd.stores.sql.config import DatabaseConfig, database_url
    from mcpd.stores.sql.database import SQLDatabase
    from mcpd.stores.sql.service import SQLStoreService
    from mcpd.tools.api import Caller

    database = SQLDatabase(DatabaseConfig(url=database_url(args.db_url, tempfile.mkdtemp())), reactor)
    service = SQLStoreService(database, reactor)
    service.startService()
    writer = AuditWriter(SQLAuditLog(database), reactor, retention_days=0, batch=args.batch)
    trail = AuditTrail(emit=False, persist=writer.add)
    stats = RequestStats()  # the daemon's other observer that keeps calls (its recent 1,000)
    collections = [0, 0, 0]
    paused = [0.0, 0.0]  # the collections' CPU time (of the collecting thread); when the last began

    def counted(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collections[info["generation"]] += 1
            paused[1] = time.thread_time()
        else:
            paused[0] += time.thread_time() - paused[1]

    yield task.deferLater(reactor, 0.2, lambda: None)  # the store's threads are up
    gc.collect()
    gc.freeze()  # as the daemon does once it serves (mcpd.services.HeapFreezeService)
    gc.callbacks.append(counted)
    started, cpu = time.monotonic(), cpu_seconds()
    done = 0
    while done < args.rows:
        # One flush's worth of calls queued, as the reactor queues them between two flushes.
        for n in range(done, min(done + args.batch, args.rows)):
            caller = Caller(peer="127.0.0.1", transport="http", x_request_id=None)
            call = CallRecord(n, "tools/call", "echo", caller, "2026-07-28", "ok", 0.000123)
            stats.observe(call)
            trail.observe(call)
        done = min(done + args.batch, args.rows)
        yield writer.flush()
    cpu, wall = cpu_seconds() - cpu, time.monotonic() - started
    gc.callbacks.remove(counted)
    stored = yield database.run("count", lambda c: c.exec_driver_sql("SELECT COUNT(*) FROM audit_records").scalar())
    print(
        f"audit_rows: {args.rows} rows in batches of {args.batch}: {cpu / args.rows * 1e6:.2f} us CPU a row "
        f"({wall:.2f} s wall); gc collections gen0/1/2 {collections[0]}/{collections[1]}/{collections[2]} "
        f"({paused[0] * 1e3:.1f} ms); "
        f"stored {stored}, written {writer.written}, dropped {writer.dropped}",
        file=sys.stderr,
    )
    yield service.stopService()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--db-url", default=None, help="default: SQLite in a temporary directory")
    args = parser.parse_args()
    task.react(run, (args,))


if __name__ == "__main__":
    main()
