"""What SQLite's per-tenant FTS5 tables cost at many tenants: file size, a connection's first
statement (SQLite reads the whole schema), note.search's statement on one tenant and cycling
through them all, and what a new tenant's table costs the other connections.

Makes the schema with the store's migrations in a temporary SQLite file, then ``--tenants``
tenants of ``--notes`` notes each through the store's own FTS5 statements (`fts_table`,
`_FTS_CREATE`, `_FTS_INSERT`, `_SQLITE_SEARCH`) on one sqlite3 connection set up as the store's
(`_sqlite_connect`). CPU time of this process (SQLite runs in it). See bench/README.rst.

    .venv/bin/python bench/sqlite_tenants.py --tenants 2000 --notes 5
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.store import WORDS  # noqa: E402
from mcpd.stores.sql import migrate  # noqa: E402
from mcpd.stores.sql.config import DatabaseConfig, database_url  # noqa: E402
from mcpd.stores.sql.database import _sqlite_connect, build_engine  # noqa: E402
from mcpd.stores.sql.notes import _FTS_CREATE, _FTS_INSERT, _SQLITE_SEARCH, fts_table  # noqa: E402


def connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, check_same_thread=False)
    _sqlite_connect(connection, None)
    return connection


def cpu_ms(work: object, runs: int = 1) -> float:
    started = time.process_time()
    for _ in range(runs):
        work()  # type: ignore[operator]
    return (time.process_time() - started) / runs * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=2000)
    parser.add_argument("--notes", type=int, default=5, help="notes per tenant")
    args = parser.parse_args()
    random.seed(15)
    directory = Path(tempfile.mkdtemp(prefix="mcpd-sqlite-tenants-"))
    try:
        measure(directory, args.tenants, args.notes)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def measure(directory: Path, tenant_count: int, notes_per_tenant: int) -> None:
    """Make the tenants' notes in ``directory`` and print what they cost."""
    config = DatabaseConfig(url=database_url(None, str(directory)))
    engine = build_engine(config)
    migrate.upgrade(engine, str(config.url))
    engine.dispose()
    path = Path(str(config.url.database))
    connection = connect(path)
    started = time.monotonic()
    seq = 0
    connection.execute("BEGIN")
    for t in range(tenant_count):
        tenant = f"tenant-{t:05d}"
        table = fts_table(tenant)
        connection.execute(_FTS_CREATE.format(table=table))
        for _ in range(notes_per_tenant):
            seq += 1
            title = " ".join(random.choices(WORDS, k=4))
            body = " ".join(random.choices(WORDS, k=60))
            connection.execute(
                "INSERT INTO notes (seq, id, tenant, title, body, length, tags, created_at, updated_at, created_by)"
                " VALUES (?, ?, ?, ?, ?, ?, '[]', '2026-11-30', '2026-11-30', 'bench')",
                (seq, f"n{seq:011d}", tenant, title, body, len(title) + len(body)),
            )
            connection.execute(_FTS_INSERT.format(table=table), (seq, title, body))
    connection.execute("COMMIT")
    print(f"{tenant_count} tenants, {seq} notes made in {time.monotonic() - started:.1f} s")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    tables = connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
    print(f"file {path.stat().st_size / 1e6:.1f} MB, {tables} schema entries")

    def first_statement() -> None:
        fresh = connect(path)
        fresh.execute("SELECT 1 FROM notes LIMIT 1").fetchall()
        fresh.close()

    print(f"a new connection's first statement: {cpu_ms(first_statement, 5):.1f} ms CPU")
    tag = ""

    def search(tenant: str) -> None:
        sql = _SQLITE_SEARCH.format(table=fts_table(tenant), tag=tag)
        connection.execute(sql, {"match": '"deploy" OR "pipeline"', "tenant": tenant, "limit": 11}).fetchall()

    one = cpu_ms(lambda: search("tenant-00000"), 500)
    names = [f"tenant-{t:05d}" for t in range(tenant_count)]
    cycle = iter(names * 10)
    every = cpu_ms(lambda: search(next(cycle)), min(2000, len(names) * 10))
    print(f"note.search statement: one tenant {one * 1000:.0f} µs CPU, cycling through all {every * 1000:.0f} µs CPU")
    other = connect(path)
    other.execute("SELECT 1 FROM notes LIMIT 1").fetchall()
    search("tenant-00000")

    def new_tenant() -> None:
        table = fts_table(f"new-{time.monotonic_ns()}")
        other.execute(_FTS_CREATE.format(table=table))

    def after() -> None:
        search("tenant-00000")

    made = cpu_ms(new_tenant)
    seen = cpu_ms(after)
    print(
        f"a new tenant's table: {made:.1f} ms CPU to make, then {seen:.1f} ms CPU for another connection's next search"
    )


if __name__ == "__main__":
    main()
