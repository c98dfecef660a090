"""Time note.search's statistics on MariaDB at scale: how many of a tenant's notes hold each word,
counted in full (the statement before the cap) and capped at half the notes + 1 (the store's).

Starts the test fixture's MariaDB (tests/services.py) in a temporary directory, makes the schema
(``mcpd migrate``'s upgrade), loads ``--notes`` notes of one tenant, each 60-400 words drawn from
bench/store.py's words (so every word is held by ~98% of the notes), then times each form ``--runs`` times, alternating,
and the search's first statement (its candidates: every match is read for its tenant too).
See bench/README.rst.

    .venv/bin/python bench/note_counts.py --notes 100000 --runs 3
"""

from __future__ import annotations

import argparse
import datetime
import random
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine  # noqa: E402

from bench.store import WORDS  # noqa: E402
from mcpd.stores.sql import migrate  # noqa: E402
from mcpd.stores.sql.notes import _MYSQL_MATCHES, _MYSQL_NOTES, _mysql_holding, holding_cap  # noqa: E402
from tests.services import MariaDB  # noqa: E402

TENANT = "bench"
# The statement before the cap: every word's count in full, beside the count and mean length.
_UNCAPPED = (
    "SELECT COUNT(*), AVG(length){holding} FROM notes WHERE tenant = %(tenant)s",
    ", (SELECT COUNT(*) FROM notes WHERE tenant = %(tenant)s AND MATCH(title, body) AGAINST (%(w{n})s IN BOOLEAN MODE))",
)


def load(server: MariaDB, database: str, count: int) -> None:
    """``count`` notes of `TENANT`, in batches (the FULLTEXT index kept as they go: built after
    them, by ``CREATE FULLTEXT INDEX``, this MariaDB's index found none of their words)."""
    random.seed(15)
    started = time.monotonic()
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    connection = server.connect(database)
    with connection.cursor() as cursor:
        batch = []
        for n in range(count):
            title = " ".join(random.choices(WORDS, k=4))
            body = " ".join(random.choices(WORDS, k=random.randint(60, 400)))
            batch.append((f"n{n:011d}", TENANT, title, body, len(title) + len(body), "[]", now, now, "bench"))
            if len(batch) == 2000 or n == count - 1:
                cursor.executemany(
                    "INSERT INTO notes (id, tenant, title, body, length, tags, created_at, updated_at, created_by)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    batch,
                )
                batch = []
        print(f"{count} notes loaded in {time.monotonic() - started:.0f} s", flush=True)
    connection.close()


def timed(connection: object, words: list[str], capped: bool) -> tuple[float, list[int]]:
    """Seconds for the statistics of ``words``, and the counts."""
    params = {"tenant": TENANT, **{f"w{n}": word for n, word in enumerate(words)}}
    started = time.monotonic()
    with connection.cursor() as cursor:  # type: ignore[attr-defined]
        if capped:
            cursor.execute(_MYSQL_NOTES, params)
            notes_count, _ = cursor.fetchone()
            cursor.execute(_mysql_holding(len(words)), {**params, "cap": holding_cap(notes_count)})
            counts = list(cursor.fetchone())
        else:
            statement, holding = _UNCAPPED
            cursor.execute(statement.format(holding="".join(holding.format(n=n) for n in range(len(words)))), params)
            counts = list(cursor.fetchone()[2:])
    return time.monotonic() - started, counts


def candidates(connection: object, words: list[str]) -> float:
    """Seconds for the search's first statement: the tenant's best `CANDIDATES` matches."""
    statement = _MYSQL_MATCHES.format(tag="").replace(":tenant", "%(tenant)s").replace(":words", "%(words)s")
    started = time.monotonic()
    with connection.cursor() as cursor:  # type: ignore[attr-defined]
        cursor.execute(statement, {"tenant": TENANT, "words": " ".join(words)})
        cursor.fetchall()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--words", default="deploy pipeline", help="the query's words")
    args = parser.parse_args()
    words = args.words.split()
    server = MariaDB(Path(tempfile.mkdtemp(prefix="mcpd-note-counts-"))).start()
    try:
        database = server.new_database()
        url = server.url(database, password=True)
        migrate.upgrade(create_engine(url), url)
        load(server, database, args.notes)
        connection = server.connect(database)
        timed(connection, words, capped=True)  # warm the buffer pool
        for run in range(args.runs):
            for capped in (False, True):
                seconds, counts = timed(connection, words, capped)
                print(f"run {run} {'capped  ' if capped else 'uncapped'} {seconds * 1000:9.1f} ms  counts {counts}")
            print(f"run {run} candidates {candidates(connection, words) * 1000:9.1f} ms (the search's first statement)")
        connection.close()
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
