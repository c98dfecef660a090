"""Time and CPU per call of the ``sql`` pack's data sources on a real MariaDB, in process.

A MariaDB server of its own is started (tests/services.py, as bench/store.py does), given a
small ``orders`` table, and one `SQLSource` runs ``sql.query`` (``SELECT 1``, and a
parameterised indexed SELECT of 40 rows cut at 10),
``sql.tables`` and ``sql.describe`` through its own thread pool as the pack runs them, ``--calls``
times with ``--concurrency`` in flight. Printed per call: wall time, mcpd's CPU (user + system,
every thread), the server's (mariadbd, from /proc), and how many connections the server
accepted per call (a new connection's handshake shows in all three). Figures from two trees
compare when measured alternately (the machine may be shared: compare CPU per call rather
than calls per second)::

    .venv/bin/python bench/sql_source.py --calls 500
    PYTHONPATH=/path/to/other/tree .venv/bin/python bench/sql_source.py --calls 500
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

if __package__ in (None, ""):  # run as a script: `tests` importable, after PYTHONPATH's tree if one is given
    sys.path.append(str(Path(__file__).resolve().parent.parent))

ROWS = 2000


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """A process's user + system CPU seconds, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@defer.inlineCallbacks
def measure(
    name: str, operation: Callable[[int], defer.Deferred[Any]], calls: int, concurrency: int, server: Any
) -> Any:
    """Run ``operation(n)`` ``calls`` times, ``concurrency`` at once; print wall and CPU per call."""
    yield defer.gatherResults([operation(n) for n in range(min(calls, concurrency * 2))])  # warm up
    connections = _connections(server)
    started, cpu, served = time.perf_counter(), cpu_seconds(), process_cpu_seconds(server.process.pid)
    next_call = iter(range(calls))

    @defer.inlineCallbacks
    def worker() -> Any:
        for n in next_call:
            yield operation(n)

    yield defer.gatherResults([worker() for _ in range(concurrency)])
    wall = time.perf_counter() - started
    used, served = cpu_seconds() - cpu, process_cpu_seconds(server.process.pid) - served
    opened = _connections(server) - connections - 1  # the count's own
    print(
        f"{name:12} c={concurrency:<3} {1e3 * wall * concurrency / calls:8.3f} ms wall/call  "
        f"{1e6 * used / calls:7.0f} µs mcpd CPU/call  {1e6 * served / calls:7.0f} µs server CPU/call  "
        f"{opened / calls:5.2f} connections/call",
        flush=True,
    )


def _connections(server: Any) -> int:
    """How many connections the server has accepted so far."""
    return int(server.sql("SHOW GLOBAL STATUS LIKE 'Connections'")[0][1])


def _operations(source: Any) -> dict[str, Callable[[int], defer.Deferred[Any]]]:
    return {
        "sql.query 1": lambda n: source.query("SELECT 1", None, 1),
        "sql.query": lambda n: source.query(
            "SELECT id, total FROM orders WHERE customer_id = ? ORDER BY id", [n % 50], 10
        ),
        "sql.tables": lambda n: source.tables(20, None),
        "sql.describe": lambda n: source.describe("orders"),
    }


@defer.inlineCallbacks
def main(reactor: Any, argv: Sequence[str]) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--concurrency", default="1,4", help="comma-separated calls in flight")
    args = parser.parse_args(argv)

    from mcpd.stores.sql.sources import SQLSource, source_config
    from tests.services import PASSWORD, MariaDB

    mariadb = MariaDB(Path(tempfile.mkdtemp(prefix="mcpd-bench-sql-"))).start()
    try:
        database = mariadb.new_database()
        values = ", ".join(f"({i}, {i % 50}, {i * 1.5:.2f})" for i in range(ROWS))
        mariadb.sql(
            "CREATE TABLE orders (id INT PRIMARY KEY, customer_id INT NOT NULL, total DECIMAL(10, 2))",
            "CREATE INDEX orders_customer ON orders (customer_id)",
            f"INSERT INTO orders VALUES {values}",
            database=database,
        )
        assert mariadb.process is not None
        for concurrency in map(int, args.concurrency.split(",")):
            source = SQLSource(source_config("bench", mariadb.url(database), PASSWORD), 5.0, concurrency, reactor)
            source.pool.start()
            operations = _operations(source)
            for name, operation in operations.items():
                yield measure(name, operation, args.calls, concurrency, mariadb)
            source.pool.stop()
            source.close()
    finally:
        mariadb.destroy()


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
