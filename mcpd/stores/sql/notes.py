# -*- test-case-name: tests.test_sqlstore -*-
"""Notes on SQL with ranked full-text search (`INoteStore`).

Results are ranked by BM25 (k1 1.2, b 0.75, a word in the title weighing ten times one in the
body) over the caller's tenant's notes alone: how many notes a tenant has, how long they are and
how many hold each word are its own, so another tenant's notes never move its scores or order
(they would tell it about notes it cannot see).

SQLite: each tenant's notes have an FTS5 table of their own (`fts_table`, made with the tenant's
first note; Porter stemming), whose ``bm25()`` and ``snippet()`` rank and cut. MySQL/MariaDB: an
InnoDB FULLTEXT index finds the tenant's notes most relevant to the words (by InnoDB's own
relevance: `CANDIDATES` of them, or as many as a deeper page needs, up to `MAX_DEPTH`) and BM25
orders them here, with the tenant's note count and mean length (in characters, kept in each
note's ``length`` column on save and read from an index of its own), then the count of notes
holding each word, counted only up to where BM25's weight stops changing (`holding_cap`: half
the notes + 1); words InnoDB does not index (its stopwords, words shorter or longer than its
token sizes) are left out, as FTS5 finds no note by a word it never saw, and words are `fold`ed
as its collation matched them. Ranking covers those candidates alone. The snippet is cut here
the same way as FTS5's. Either way the words of the query are searched for, any of them, best
matches first: not a substring scan.

Pages follow what was shown, not an offset (`mcpd.stores.shown`): a search's cursor names the
notes its earlier pages showed, and a later page is the best of the others, so a note deleted,
added or changed between pages (which moves every score) neither repeats a note nor skips one.
A search pages at most `MAX_DEPTH` notes deep (the cursor grows with what it has shown).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence, Set
from typing import Any, TypeVar

from sqlalchemy import select, text
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred
from zope.interface import implementer

from mcpd.interfaces import INoteStore, NotFound
from mcpd.stores.shown import MAX_DEPTH, more_after, shown_after, shown_key
from mcpd.stores.sql.database import RawConnection, SQLDatabase
from mcpd.stores.sql.ids import new_id
from mcpd.stores.sql.schema import note_tags, notes
from mcpd.stores.sql.tasks import iso, like_prefix, replace_tags, utcnow

_WORD = re.compile(r"\w+")
T = TypeVar("T")
MAX_TERMS = 32
# Words around the first match in a snippet, and the markers around matched words.
SNIPPET_WORDS = 16
MARK = "**"
ELLIPSIS = "…"

# BM25's parameters (FTS5's own), and the weight of a word in the title against one in the body.
K1 = 1.2
B = 0.75
TITLE_WEIGHT = 10.0
# FTS5 gives a word held by more than half of the notes this much weight (not a negative one).
MIN_IDF = 1e-6

# SQLite: one external-content FTS5 table per tenant over its rows of notes(title, body), kept
# in step by `SQLNoteStore` (a trigger cannot choose a table by tenant). Porter stemming:
# "deploying" finds "deployment".
_FTS_CREATE = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS {table} USING fts5(title, body, content='notes', content_rowid='seq', "
    "tokenize='porter unicode61 remove_diacritics 2')"
)
_FTS_INSERT = "INSERT INTO {table}(rowid, title, body) VALUES (?, ?, ?)"
_FTS_DELETE = "INSERT INTO {table}({table}, rowid, title, body) VALUES ('delete', ?, ?, ?)"
_FTS_EXISTS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
_SQLITE_SEARCH = f"""
SELECT n.id, n.title, n.tags, -bm25({{table}}, {TITLE_WEIGHT}, 1.0) AS score,
       snippet({{table}}, 1, '{MARK}', '{MARK}', '{ELLIPSIS}', {SNIPPET_WORDS}) AS snippet
FROM {{table}} JOIN notes AS n ON n.seq = {{table}}.rowid
WHERE {{table}} MATCH :match AND n.tenant = :tenant {{tag}}
ORDER BY bm25({{table}}, {TITLE_WEIGHT}, 1.0), n.id
LIMIT :limit
"""
# MySQL/MariaDB: the tenant's notes holding any of the words, the most relevant to InnoDB first
# (its relevance counts every tenant's notes: it only bounds the work; BM25 orders them), at most
# `CANDIDATES` of them, or as many as the page needs past what earlier pages showed (`MAX_DEPTH`
# at most: a search of 1,000 took twice the time of one of 500, 155 against 80 ms among 5,000
# matching notes of 1.6 KB, so only deep pages pay it); the tenant's statistics and how many of
# its notes hold each word.
CANDIDATES = 500
# Only their seq: sorting rows that carry their bodies costs InnoDB twice as much.
_MYSQL_MATCHES = """
SELECT seq FROM notes
WHERE tenant = :tenant AND MATCH(title, body) AGAINST (:words) {tag}
ORDER BY MATCH(title, body) AGAINST (:words) DESC, seq LIMIT :depth
"""
_MYSQL_CANDIDATES = "SELECT id, title, tags, body FROM notes WHERE seq IN ({marks})"
# The tenant's note count and mean length, from the (tenant, length) index alone (PyMySQL's
# placeholders).
_MYSQL_NOTES = "SELECT COUNT(*), AVG(length) FROM notes WHERE tenant = %(tenant)s"
# Then how many of its notes hold each word, counted up to %(cap)s: `rank` weighs a word held by
# half the notes or more the least (`MIN_IDF`) whatever the count, so counting on past half + 1
# changes nothing, and a word held by nearly every note (seconds to count at 100,000 notes)
# stops there (`_mysql_holding`).
_MYSQL_HOLDS = (
    "(SELECT COUNT(*) FROM (SELECT 1 FROM notes WHERE tenant = %(tenant)s"
    " AND MATCH(title, body) AGAINST (%(w{n})s IN BOOLEAN MODE) LIMIT %(cap)s) AS h{n})"
)
# What InnoDB leaves out of its FULLTEXT index (read once per store).
_MYSQL_TOKEN_RULES = text(
    "SELECT @@innodb_ft_min_token_size, @@innodb_ft_max_token_size, @@innodb_ft_enable_stopword, "
    "@@innodb_ft_server_stopword_table"
)
_MYSQL_DEFAULT_STOPWORDS = text("SELECT value FROM INFORMATION_SCHEMA.INNODB_FT_DEFAULT_STOPWORD")
_TAGGED = "AND {alias}id IN (SELECT note_id FROM note_tags WHERE tenant = :tenant AND tag = :tag)"
_MYSQL_SEARCHES = {
    False: text(_MYSQL_MATCHES.format(tag="")),
    True: text(_MYSQL_MATCHES.format(tag=_TAGGED.format(alias=""))),
}


@functools.cache
def _mysql_holding(terms: int) -> str:
    """The statement counting the notes that hold each of ``terms`` words (up to the cap)."""
    return "SELECT " + ", ".join(_MYSQL_HOLDS.format(n=n) for n in range(terms))


def holding_cap(notes_count: int) -> int:
    """How far a word's notes need counting among ``notes_count``: BM25's weight of a word
    (``log((N - n + 0.5) / (n + 0.5))``, at least `MIN_IDF`) is `MIN_IDF` for every ``n`` of at
    least ``N / 2``, and this cap is past that, so a count stopped here weighs the same."""
    return notes_count // 2 + 1


def candidates(shown: int, limit: int) -> int:
    """How many notes InnoDB's relevance picks for BM25 to rank (MySQL/MariaDB): `CANDIDATES`,
    or enough for a page of ``limit`` after ``shown`` and one more, up to `MAX_DEPTH`."""
    return max(CANDIDATES, min(shown + limit + 1, MAX_DEPTH))


def fts_table(tenant: str) -> str:
    """The name of the SQLite FTS5 table of ``tenant``'s notes (a digest: any tenant name)."""
    return "notes_fts_" + hashlib.blake2b(tenant.encode(), digest_size=16).hexdigest()


def fold(text: str) -> str:
    """``text`` as a search compares it: without diacritics and case-folded (NFKD, combining
    marks dropped), as InnoDB's utf8mb4_unicode_ci collation matches "cafe" to "Café" (and
    SQLite's FTS5 tokenizer, ``remove_diacritics 2``)."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


@functools.lru_cache(maxsize=1 << 16)
def _folded(word: str) -> tuple[str, ...]:
    """The words a word of a note is, `fold`ed: one, but for the likes of "½" ("1", "2")."""
    return tuple(_WORD.findall(fold(word)))


def _word_counts(text: str) -> Counter[str]:
    """How often each `fold`ed word is in ``text``. Not ASCII: its words (composed, NFC) are
    folded each once, from a cache (folding the whole text took three times as long)."""
    if text.isascii():
        return Counter(_WORD.findall(text.lower()))
    counts: Counter[str] = Counter()
    for word, count in Counter(_WORD.findall(unicodedata.normalize("NFC", text))).items():
        for folded in _folded(word):
            counts[folded] += count
    return counts


def rank(
    rows: Sequence[Sequence[Any]],
    terms: Sequence[str],
    holding: Sequence[int],
    notes_count: int,
    mean_length: float,
) -> list[tuple[float, Sequence[Any]]]:
    """``rows`` (id, title, tags, body: notes of one tenant holding any of ``terms``) by BM25,
    best first (then by id), with their scores: FTS5's formula, a note's length in characters,
    the weight of each term from how many of the tenant's ``notes_count`` notes hold it
    (``holding``, in the order of ``terms``). Words match as the FULLTEXT index matched them:
    `fold`ed (a note with "café" holds "cafe")."""
    terms = [fold(term) for term in terms]
    counted = []
    for row in rows:
        in_title = _word_counts(row[1])
        in_body = _word_counts(row[3])
        frequencies = [TITLE_WEIGHT * in_title[term] + in_body[term] for term in terms]
        counted.append((row, frequencies, len(row[1]) + len(row[3])))
    weights = [max(math.log((notes_count - n + 0.5) / (n + 0.5)), MIN_IDF) for n in holding]
    scored = []
    for row, frequencies, length in counted:
        norm = K1 * (1 - B + B * length / (mean_length or 1.0))
        score = sum(w * f * (K1 + 1) / (f + norm) for w, f in zip(weights, frequencies, strict=True) if f)
        scored.append((score, row))
    scored.sort(key=lambda pair: (-pair[0], pair[1][0]))
    return scored


def search_terms(query: str) -> list[str]:
    """The words of a search query, lower-cased, each once (at most `MAX_TERMS`)."""
    return list(dict.fromkeys(word.lower() for word in _WORD.findall(query)))[:MAX_TERMS]


def cut_snippet(body: str, terms: Sequence[str], words: int = SNIPPET_WORDS) -> str:
    """About ``words`` words of ``body`` around the first of ``terms`` it holds, with the terms
    marked as FTS5's ``snippet()`` marks them (`fold`ed: "cafe" marks "café"); the opening
    words when none is there."""
    found = list(_WORD.finditer(body))
    if not found:
        return body[:200]
    wanted = {fold(term) for term in terms}
    first = next((i for i, word in enumerate(found) if not wanted.isdisjoint(_folded(word.group()))), 0)
    start = max(0, min(first - words // 4, len(found) - words))
    shown = found[start : start + words]
    pieces = []
    position = shown[0].start()
    for word in shown:
        pieces.append(body[position : word.start()])
        token = word.group()
        pieces.append(f"{MARK}{token}{MARK}" if not wanted.isdisjoint(_folded(token)) else token)
        position = word.end()
    snippet = "".join(pieces)
    prefix = ELLIPSIS if start > 0 else ""
    suffix = ELLIPSIS if start + words < len(found) else ""
    return prefix + " ".join(snippet.split()) + suffix


@implementer(INoteStore)
class SQLNoteStore:
    """`INoteStore` on one `SQLDatabase`."""

    def __init__(self, database: SQLDatabase) -> None:
        self.database = database
        # The FTS5 tables known to exist (SQLite): a tenant's is made with its first note and
        # dropped only by a migration.
        self._fts_tables: set[str] = set()
        # (FTS5 table, with a tag) -> the search statement's text.
        self._searches: dict[tuple[str, bool], str] = {}
        # MySQL/MariaDB: the words its FULLTEXT index leaves out, (stopwords, shortest, longest).
        self._token_rules: tuple[frozenset[str], int, int] | None = None

    def save_note(self, tenant: str, note: dict[str, Any], author: str) -> Deferred[dict[str, Any]]:
        def work(connection: Connection) -> dict[str, Any]:
            now = utcnow()
            tags = list(dict.fromkeys(note.get("tags") or ()))
            title, body = note["title"], note["body"]
            values = {
                "title": title,
                "body": body,
                "length": len(title) + len(body),  # characters, as MariaDB's CHAR_LENGTH counts
                "tags": json.dumps(tags),
                "updated_at": now,
            }
            note_id = note.get("id")
            current = None
            if note_id is None:
                row = {"id": new_id(), "tenant": tenant, "created_at": now, "created_by": author, **values}
                inserted = connection.execute(notes.insert(), row).inserted_primary_key
                assert inserted is not None
                row["seq"] = inserted[0]
            else:
                query = select(notes).where(notes.c.tenant == tenant, notes.c.id == note_id)
                if connection.dialect.name != "sqlite":
                    query = query.with_for_update()
                current = connection.execute(query).first()
                if current is None:
                    raise NotFound(_no_note(note_id))
                connection.execute(notes.update().where(notes.c.seq == current.seq).values(**values))
                row = {**current._mapping, **values}
            replace_tags(connection, note_tags, "note_id", row["id"], tenant, tags, new=note_id is None)
            if sqlite:
                if current is not None:
                    connection.exec_driver_sql(
                        _FTS_DELETE.format(table=table), (current.seq, current.title, current.body)
                    )
                else:
                    self._index_for(connection, table)
                connection.exec_driver_sql(_FTS_INSERT.format(table=table), (row["seq"], row["title"], row["body"]))
            return _note(row)

        sqlite = self.database.backend == "sqlite"
        table = fts_table(tenant)
        return self.database.run("note.save", work, write=True).addCallback(self._indexed, table if sqlite else None)

    def _index_for(self, connection: Connection, table: str) -> None:
        """Make the tenant's FTS5 table if it is not known to be there (SQLite)."""
        if table not in self._fts_tables:
            connection.exec_driver_sql(_FTS_CREATE.format(table=table))

    def _indexed(self, result: T, table: str | None) -> T:
        """Once a transaction that made (or found) ``table`` is committed: it is there."""
        if table is not None:
            self._fts_tables.add(table)
        return result

    def get_note(self, tenant: str, note_id: str) -> Deferred[dict[str, Any]]:
        def work(connection: Connection) -> dict[str, Any]:
            row = connection.execute(select(notes).where(notes.c.tenant == tenant, notes.c.id == note_id)).first()
            if row is None:
                raise NotFound(_no_note(note_id))
            return _note(row._mapping)

        return self.database.run("note.get", work)

    def delete_note(self, tenant: str, note_id: str) -> Deferred[bool]:
        def work(connection: Connection) -> bool:
            mine = (notes.c.tenant == tenant, notes.c.id == note_id)
            if connection.dialect.name == "sqlite":
                current = connection.execute(select(notes.c.seq, notes.c.title, notes.c.body).where(*mine)).first()
                if current is None:
                    return False
                table = fts_table(tenant)
                connection.exec_driver_sql(_FTS_DELETE.format(table=table), tuple(current))
            deleted = connection.execute(notes.delete().where(*mine))
            return bool(deleted.rowcount)

        return self.database.run("note.delete", work, write=True)

    def search_notes(
        self, tenant: str, query: str, tag: str | None, limit: int, shown: Set[str] = frozenset()
    ) -> Deferred[tuple[list[dict[str, Any]], bool, list[str]]]:
        terms = search_terms(query)

        def work(connection: RawConnection) -> tuple[list[dict[str, Any]], bool]:
            if not terms:
                return [], False
            params: dict[str, Any] = {"tenant": tenant, "tag": tag}
            if connection.sqlite:
                return self._search_sqlite(connection, params, terms, tag is not None, limit, shown)
            return self._search_mysql(connection, params, terms, tag is not None, limit, shown)

        def page(found: tuple[list[dict[str, Any]], bool]) -> tuple[list[dict[str, Any]], bool, list[str]]:
            notes, more = found
            more = more_after(shown, limit, more)
            return notes, more, shown_after(shown, [note["id"] for note in notes]) if more else []

        return self.database.run_raw("note.search", work).addCallback(page)

    def _search_mysql(
        self,
        connection: RawConnection,
        params: dict[str, Any],
        terms: list[str],
        tagged: bool,
        limit: int,
        shown: Set[str],
    ) -> tuple[list[dict[str, Any]], bool]:
        stopwords, shortest, longest = self._indexed_words(connection)
        terms = [term for term in terms if shortest <= len(term) <= longest and term not in stopwords]
        if not terms or len(shown) >= MAX_DEPTH:
            return [], False
        params["words"] = " ".join(terms)
        params["depth"] = candidates(len(shown), limit)
        seqs = [seq for (seq,) in connection.execute(_MYSQL_SEARCHES[tagged], params).fetchall()]
        if not seqs:
            return [], False
        marks = ", ".join(["%s"] * len(seqs))  # PyMySQL's placeholders
        rows = connection.execute_sql(_MYSQL_CANDIDATES.format(marks=marks), seqs).fetchall()
        # Over all the tenant's notes, whatever the tag: a filter must not move the scores.
        words = {"tenant": params["tenant"], **{f"w{n}": term for n, term in enumerate(terms)}}
        notes_count, mean_length = connection.execute_sql(_MYSQL_NOTES, words).fetchone()
        words["cap"] = holding_cap(notes_count)
        holding = connection.execute_sql(_mysql_holding(len(terms)), words).fetchone()
        ranked = rank(rows, terms, holding, notes_count, float(mean_length or 0))
        if shown:
            ranked = [(score, row) for score, row in ranked if shown_key(row[0]) not in shown]
        found = [
            {
                "id": row[0],
                "title": row[1],
                "snippet": cut_snippet(row[3], terms),
                "score": round(score, 6),
                "tags": json.loads(row[2]),
            }
            for score, row in ranked[:limit]
        ]
        return found, len(ranked) > limit

    def _indexed_words(self, connection: RawConnection) -> tuple[frozenset[str], int, int]:
        """InnoDB's stopwords and shortest and longest indexed word (read once): a word it does
        not index finds no note, and counted here it would weigh as the rarest of all."""
        if self._token_rules is None:
            shortest, longest, enabled, table = connection.execute(_MYSQL_TOKEN_RULES, {}).fetchone()
            stopwords: frozenset[str] = frozenset()
            if enabled:
                if table:  # "database/table", the operator's own list
                    database, _, name = str(table).partition("/")
                    query = text(f"SELECT value FROM `{database}`.`{name}`")
                else:
                    query = _MYSQL_DEFAULT_STOPWORDS
                stopwords = frozenset(str(value).lower() for (value,) in connection.execute(query, {}).fetchall())
            self._token_rules = (stopwords, int(shortest), int(longest))
        return self._token_rules

    def _search_sqlite(
        self,
        connection: RawConnection,
        params: dict[str, Any],
        terms: list[str],
        tagged: bool,
        limit: int,
        shown: Set[str],
    ) -> tuple[list[dict[str, Any]], bool]:
        table = fts_table(params["tenant"])
        if table not in self._fts_tables:
            if connection.execute_sql(_FTS_EXISTS, (table,)).fetchone() is None:
                return [], False  # the tenant has never saved a note
            self._fts_tables.add(table)
        params["match"] = " OR ".join(f'"{term}"' for term in terms)
        sql = self._searches.get((table, tagged))
        if sql is None:
            tag = _TAGGED.format(alias="n.") if tagged else ""
            sql = self._searches[table, tagged] = _SQLITE_SEARCH.format(table=table, tag=tag)
        # Enough rows for a page and one more whichever of them earlier pages showed.
        params["limit"] = len(shown) + limit + 1
        rows = connection.execute_sql(sql, params).fetchall()
        if shown:
            rows = [row for row in rows if shown_key(row[0]) not in shown]
        found = [
            {"id": row[0], "title": row[1], "snippet": row[4], "score": round(row[3], 6), "tags": json.loads(row[2])}
            for row in rows[:limit]
        ]
        return found, len(rows) > limit

    def note_ids(self, tenant: str, prefix: str, limit: int) -> Deferred[list[str]]:
        def work(connection: Connection) -> list[str]:
            query = (
                select(notes.c.id)
                .where(notes.c.tenant == tenant, notes.c.id.like(like_prefix(prefix), escape="\\"))
                .order_by(notes.c.id.desc())
                .limit(limit)
            )
            return list(connection.execute(query).scalars())

        return self.database.run("note.complete", work)


def _no_note(note_id: str) -> str:
    return f"no note {note_id!r}: note.search finds notes by their words"


def _note(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "title": row["title"],
        "body": row["body"],
        "tags": json.loads(row["tags"]),
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "created_by": row["created_by"],
    }
