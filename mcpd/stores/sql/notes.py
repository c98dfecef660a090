# -*- test-case-name: tests.test_sqlstore -*-
"""Notes on SQL with ranked full-text search (`INoteStore`).

SQLite searches its FTS5 index (BM25, the title weighted ten times the body, Porter stemming)
and cuts the snippet with FTS5's ``snippet()``; MySQL/MariaDB search InnoDB FULLTEXT indexes in
natural-language mode (a match in the title counts twice) and the snippet is cut here, the same
way. Either way the words of the query are searched for, any of them, best matches first: not a
substring scan.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred
from zope.interface import implementer

from mcpd.interfaces import INoteStore, NotFound
from mcpd.stores.sql.database import RawConnection, SQLDatabase
from mcpd.stores.sql.ids import new_id
from mcpd.stores.sql.schema import note_tags, notes
from mcpd.stores.sql.tasks import iso, like_prefix, replace_tags, utcnow

_WORD = re.compile(r"\w+")
MAX_TERMS = 32
# Words around the first match in a snippet, and the markers around matched words.
SNIPPET_WORDS = 16
MARK = "**"
ELLIPSIS = "…"

_SQLITE_SEARCH = """
SELECT n.id, n.title, n.tags, -bm25(notes_fts, 10.0, 1.0) AS score,
       snippet(notes_fts, 1, '{mark}', '{mark}', '{ellipsis}', {words}) AS snippet
FROM notes_fts JOIN notes AS n ON n.seq = notes_fts.rowid
WHERE notes_fts MATCH :match AND n.tenant = :tenant {tag}
ORDER BY bm25(notes_fts, 10.0, 1.0), n.id
LIMIT :limit OFFSET :offset
""".format(mark=MARK, ellipsis=ELLIPSIS, words=SNIPPET_WORDS, tag="{tag}")
_MYSQL_SEARCH = """
SELECT id, title, tags, body,
       MATCH(title, body) AGAINST (:words IN NATURAL LANGUAGE MODE)
       + MATCH(title) AGAINST (:words IN NATURAL LANGUAGE MODE) AS score
FROM notes
WHERE tenant = :tenant AND MATCH(title, body) AGAINST (:words IN NATURAL LANGUAGE MODE) {tag}
ORDER BY score DESC, id
LIMIT :limit OFFSET :offset
"""
_TAGGED = "AND {alias}id IN (SELECT note_id FROM note_tags WHERE tenant = :tenant AND tag = :tag)"
# (on SQLite, with a tag) -> the statement, parsed once.
_SEARCHES = {
    (True, False): text(_SQLITE_SEARCH.format(tag="")),
    (True, True): text(_SQLITE_SEARCH.format(tag=_TAGGED.format(alias="n."))),
    (False, False): text(_MYSQL_SEARCH.format(tag="")),
    (False, True): text(_MYSQL_SEARCH.format(tag=_TAGGED.format(alias=""))),
}


def search_terms(query: str) -> list[str]:
    """The words of a search query, lower-cased, each once (at most `MAX_TERMS`)."""
    return list(dict.fromkeys(word.lower() for word in _WORD.findall(query)))[:MAX_TERMS]


def cut_snippet(body: str, terms: Sequence[str], words: int = SNIPPET_WORDS) -> str:
    """About ``words`` words of ``body`` around the first of ``terms`` it holds, with the terms
    marked as FTS5's ``snippet()`` marks them; the opening words when none is there."""
    found = list(_WORD.finditer(body))
    if not found:
        return body[:200]
    wanted = set(terms)
    first = next((i for i, word in enumerate(found) if word.group().lower() in wanted), 0)
    start = max(0, min(first - words // 4, len(found) - words))
    shown = found[start : start + words]
    pieces = []
    position = shown[0].start()
    for word in shown:
        pieces.append(body[position : word.start()])
        token = word.group()
        pieces.append(f"{MARK}{token}{MARK}" if token.lower() in wanted else token)
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

    def save_note(self, tenant: str, note: dict[str, Any], author: str) -> Deferred[dict[str, Any]]:
        def work(connection: Connection) -> dict[str, Any]:
            now = utcnow()
            tags = list(dict.fromkeys(note.get("tags") or ()))
            values = {"title": note["title"], "body": note["body"], "tags": json.dumps(tags), "updated_at": now}
            note_id = note.get("id")
            if note_id is None:
                row = {"id": new_id(), "tenant": tenant, "created_at": now, "created_by": author, **values}
                connection.execute(notes.insert(), row)
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
            return _note(row)

        return self.database.run("note.save", work, write=True)

    def get_note(self, tenant: str, note_id: str) -> Deferred[dict[str, Any]]:
        def work(connection: Connection) -> dict[str, Any]:
            row = connection.execute(select(notes).where(notes.c.tenant == tenant, notes.c.id == note_id)).first()
            if row is None:
                raise NotFound(_no_note(note_id))
            return _note(row._mapping)

        return self.database.run("note.get", work)

    def delete_note(self, tenant: str, note_id: str) -> Deferred[bool]:
        def work(connection: Connection) -> bool:
            deleted = connection.execute(notes.delete().where(notes.c.tenant == tenant, notes.c.id == note_id))
            return bool(deleted.rowcount)

        return self.database.run("note.delete", work, write=True)

    def search_notes(
        self, tenant: str, query: str, tag: str | None, limit: int, offset: int
    ) -> Deferred[tuple[list[dict[str, Any]], bool]]:
        terms = search_terms(query)

        def work(connection: RawConnection) -> tuple[list[dict[str, Any]], bool]:
            if not terms:
                return [], False
            params: dict[str, Any] = {"tenant": tenant, "limit": limit + 1, "offset": offset, "tag": tag}
            sqlite = connection.sqlite
            if sqlite:
                params["match"] = " OR ".join(f'"{term}"' for term in terms)
            else:
                params["words"] = " ".join(terms)
            rows = connection.execute(_SEARCHES[sqlite, tag is not None], params).fetchall()
            # SQLite: id, title, tags, score, snippet; MySQL: id, title, tags, body, score.
            found = [
                {
                    "id": row[0],
                    "title": row[1],
                    "snippet": row[4] if sqlite else cut_snippet(row[3], terms),
                    "score": round(float(row[3] if sqlite else row[4]), 6),
                    "tags": json.loads(row[2]),
                }
                for row in rows[:limit]
            ]
            return found, len(rows) > limit

        return self.database.run_raw("note.search", work)

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
