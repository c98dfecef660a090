# -*- test-case-name: tests.test_kb -*-
"""The knowledge base's and the memories' records on SQL, and the outbox of index work.

SQL is the truth: a document, its chunks and the outbox row asking for them to be indexed are
written in one transaction, so nothing acknowledged is ever missing from SQL, and nothing in SQL
is ever forgotten by the index (the re-indexer works the outbox off). Every statement is scoped
by tenant.

While ``mcpd reindex`` rebuilds an index collection (into a new one, swapped in when full),
a marker row says so: the rows of changes made meanwhile are kept (they reached the old one)
until the rebuild has applied them to the new one. The marker is a lease, one per collection:
the rebuild renews it as it goes, a second rebuild of the collection is refused while it is
live, and one left by a rebuild that died (killed, or its index went down) expires after
`MARKER_LEASE` seconds: the re-indexer then deletes it and does the work it held.

Documents and memories carry a version that every change raises. Index work reads a record at
one version (`targets`) and, once the index holds that, `settle` clears its outbox row only if
SQL still holds that version: work that raced a newer change (or a delete, or its collection's
drop) leaves its row, marked stale, so the re-indexer applies what SQL holds now. The last
write therefore always ends up in the index, and nothing deleted stays there.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any

import attrs
from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from twisted.internet.defer import Deferred

from mcpd.interfaces import Chunk, Conflict, IndexedChunk, NotFound, StoreError, indexed_text, unindexable
from mcpd.stores.sql.database import SQLDatabase
from mcpd.stores.sql.ids import new_id
from mcpd.stores.sql.schema import (
    index_outbox,
    kb_chunks,
    kb_collections,
    kb_documents,
    memories,
    memory_tags,
)
from mcpd.stores.sql.tasks import iso, like_prefix, replace_tags, utcnow

MEMORY_COLLECTION = "memory"
# Tries of an outbox row the index refused (not down) before it is given up: kept with its
# last_error for the operator (``mcpd reindex`` clears it), no longer pending.
MAX_ATTEMPTS = 5
DOCUMENT, MEMORY, COLLECTION = "document", "memory", "collection"
# An outbox row saying an index collection is being rebuilt (``mcpd reindex``): while it is
# there, rows of the collection are kept once done (the rebuild applies them to the new
# collection) and the re-indexer leaves them. Its tenant is `ANY_TENANT` (the memories'
# collection serves every tenant); it is not pending work.
REBUILD = "rebuild"
ANY_TENANT = "*"
# Seconds a rebuild's marker holds without being renewed (the rebuild renews it at every page,
# well within this); its ``created_at`` is the last renewal, its ``last_error`` when and by whom
# the rebuild began.
MARKER_LEASE = 300.0
# A document's metadata as JSON (the search index's bound, and the column's).
MAX_METADATA_BYTES = 65_536


def index_collection(collection_id: str) -> str:
    """The index collection of a kb collection (its id is letters and digits)."""
    return f"kb_{collection_id}"


def unix(when: datetime.datetime) -> float:
    return when.replace(tzinfo=datetime.UTC).timestamp()


@attrs.frozen
class Work:
    """One row of the outbox: bring ``target`` (a document, memory or dropped collection) of
    ``collection`` in line with SQL."""

    seq: int
    tenant: str
    collection: str
    kind: str
    target: str
    stale: bool
    attempts: int


@attrs.frozen
class Target:
    """What the index must hold for one outbox row: ``chunks`` (none when the record is gone),
    the analyzer of its collection, and whether stale chunks must go first; ``version`` is the
    record's version read (None: gone), ``collection`` whether its kb collection exists."""

    work: Work
    chunks: tuple[IndexedChunk, ...]
    analyzer: str
    exists: bool
    version: int | None = None
    collection: bool = True


class SQLKnowledge:
    """Documents, chunks, memories and the outbox on one `SQLDatabase`."""

    def __init__(self, database: SQLDatabase) -> None:
        self.database = database

    # -- collections ----------------------------------------------------------------------------

    def create_collection(
        self, tenant: str, name: str, description: str | None, analyzer: str, author: str
    ) -> Deferred[dict[str, Any]]:
        def work(connection: Connection) -> dict[str, Any]:
            row = {
                "id": new_id(),
                "tenant": tenant,
                "name": name,
                "description": description,
                "analyzer": analyzer,
                "created_at": utcnow(),
                "created_by": author,
            }
            try:
                connection.execute(kb_collections.insert(), row)
            except IntegrityError:
                raise Conflict(
                    f"a collection named {name!r} already exists: add to it (kb.collections lists it), "
                    "or pick another name"
                ) from None
            return _collection(row, 0, 0)

        return self.database.run("kb.collection.create", work, write=True)

    def find_collection(self, tenant: str, name: str) -> Deferred[dict[str, Any]]:
        return self.database.run("kb.collection.get", lambda c: dict(_find(c, tenant, name)._mapping))

    def list_collections(
        self, tenant: str, limit: int, after: str | None
    ) -> Deferred[tuple[list[dict[str, Any]], str | None]]:
        def work(connection: Connection) -> tuple[list[dict[str, Any]], str | None]:
            query = select(kb_collections).where(kb_collections.c.tenant == tenant)
            if after is not None:
                query = query.where(kb_collections.c.name > after)
            rows = connection.execute(query.order_by(kb_collections.c.name).limit(limit + 1)).all()
            page = rows[:limit]
            ids = [row.id for row in page]
            documents: dict[str, int] = dict(
                connection.execute(
                    select(kb_documents.c.collection_id, func.count())
                    .where(kb_documents.c.collection_id.in_(ids))
                    .group_by(kb_documents.c.collection_id)
                ).all()
            )
            chunks: dict[str, int] = dict(
                connection.execute(
                    select(kb_chunks.c.collection_id, func.count())
                    .where(kb_chunks.c.collection_id.in_(ids))
                    .group_by(kb_chunks.c.collection_id)
                ).all()
            )
            listed = [_collection(row._mapping, documents.get(row.id, 0), chunks.get(row.id, 0)) for row in page]
            return listed, (page[-1].name if len(rows) > limit else None)

        return self.database.run("kb.collection.list", work)

    def collection_names(self, tenant: str, prefix: str, limit: int) -> Deferred[list[str]]:
        def work(connection: Connection) -> list[str]:
            query = (
                select(kb_collections.c.name)
                .where(kb_collections.c.tenant == tenant, kb_collections.c.name.like(like_prefix(prefix), escape="\\"))
                .order_by(kb_collections.c.name)
                .limit(limit)
            )
            return list(connection.execute(query).scalars())

        return self.database.run("kb.collection.complete", work)

    def drop_collection(self, tenant: str, name: str) -> Deferred[tuple[dict[str, Any], int]]:
        """Delete the collection's rows; fires with it, and the outbox row dropping its index."""

        def work(connection: Connection) -> tuple[dict[str, Any], int]:
            row = _find(connection, tenant, name)
            # Chunks first: SQLite deletes cascades row by row, explicit deletes use the indexes.
            connection.execute(delete(kb_chunks).where(kb_chunks.c.collection_id == row.id))
            connection.execute(delete(kb_documents).where(kb_documents.c.collection_id == row.id))
            connection.execute(delete(kb_collections).where(kb_collections.c.id == row.id))
            # Work on its documents is moot once the index collection is dropped (a rebuild's
            # marker stays: the rebuild drops what it built).
            connection.execute(
                delete(index_outbox).where(
                    index_outbox.c.tenant == tenant,
                    index_outbox.c.collection == index_collection(row.id),
                    index_outbox.c.kind != REBUILD,
                )
            )
            seq = _enqueue(connection, tenant, index_collection(row.id), COLLECTION, row.id, False)
            return dict(row._mapping), seq

        return self.database.run("kb.collection.drop", work, write=True)

    # -- documents ------------------------------------------------------------------------------

    def add_document(
        self, tenant: str, collection: str, document: dict[str, Any], chunks: Sequence[Chunk], author: str
    ) -> Deferred[tuple[dict[str, Any], Work]]:
        def work(connection: Connection) -> tuple[dict[str, Any], Work]:
            _indexable(chunks, document.get("title"))
            found = _find(connection, tenant, collection)
            now = utcnow()
            row = {
                "id": new_id(),
                "tenant": tenant,
                "collection_id": found.id,
                "title": document.get("title"),
                "text": document["text"],
                "source": document.get("source"),
                "metadata": metadata_json(document.get("metadata")),
                "chunks": len(chunks),
                "created_at": now,
                "updated_at": now,
                "created_by": author,
            }
            connection.execute(kb_documents.insert(), row)
            _insert_chunks(connection, tenant, found.id, row["id"], chunks)
            outbox = _enqueue(connection, tenant, index_collection(found.id), DOCUMENT, row["id"], False)
            return _document(row, found.name), _work(outbox, tenant, index_collection(found.id), DOCUMENT, row["id"])

        return self.database.run("kb.document.add", work, write=True)

    def get_document(self, tenant: str, collection: str, document_id: str) -> Deferred[dict[str, Any]]:
        def work(connection: Connection) -> dict[str, Any]:
            found = _find(connection, tenant, collection)
            return _document(_find_document(connection, tenant, found, document_id)._mapping, found.name)

        return self.database.run("kb.document.get", work)

    def update_document(
        self, tenant: str, collection: str, document_id: str, changes: dict[str, Any], chunks: Sequence[Chunk] | None
    ) -> Deferred[tuple[dict[str, Any], Work]]:
        """Apply ``changes`` (title, text, metadata); ``chunks`` replace the old ones when given."""

        def work(connection: Connection) -> tuple[dict[str, Any], Work]:
            found = _find(connection, tenant, collection)
            current = _find_document(connection, tenant, found, document_id, lock=True)
            if chunks is not None or "title" in changes:
                kept = chunks if chunks is not None else _chunks_of(connection, document_id)
                _indexable(kept, changes.get("title", current.title))
            values: dict[str, Any] = {"updated_at": utcnow(), "version": current.version + 1}
            if "title" in changes:
                values["title"] = changes["title"]
            if "text" in changes:
                values["text"] = changes["text"]
            if "metadata" in changes:
                values["metadata"] = metadata_json(changes["metadata"])
            if chunks is not None:
                values["chunks"] = len(chunks)
                connection.execute(delete(kb_chunks).where(kb_chunks.c.document_id == document_id))
                _insert_chunks(connection, tenant, found.id, document_id, chunks)
            connection.execute(update(kb_documents).where(kb_documents.c.id == document_id).values(**values))
            name = index_collection(found.id)
            outbox = _enqueue(connection, tenant, name, DOCUMENT, document_id, chunks is not None)
            row = {**current._mapping, **values}
            return _document(row, found.name), _work(outbox, tenant, name, DOCUMENT, document_id, chunks is not None)

        return self.database.run("kb.document.update", work, write=True)

    def delete_document(self, tenant: str, collection: str, document_id: str) -> Deferred[Work | None]:
        def work(connection: Connection) -> Work | None:
            found = _find(connection, tenant, collection)
            where = and_(
                kb_documents.c.tenant == tenant,
                kb_documents.c.collection_id == found.id,
                kb_documents.c.id == document_id,
            )
            if connection.execute(select(kb_documents.c.id).where(where)).first() is None:
                return None
            connection.execute(delete(kb_chunks).where(kb_chunks.c.document_id == document_id))
            connection.execute(delete(kb_documents).where(where))
            name = index_collection(found.id)
            return _work(
                _enqueue(connection, tenant, name, DOCUMENT, document_id, True),
                tenant,
                name,
                DOCUMENT,
                document_id,
                True,
            )

        return self.database.run("kb.document.delete", work, write=True)

    def document_ids(self, tenant: str, collection: str, prefix: str, limit: int) -> Deferred[list[str]]:
        def work(connection: Connection) -> list[str]:
            found = _find(connection, tenant, collection)
            query = (
                select(kb_documents.c.id)
                .where(
                    kb_documents.c.collection_id == found.id,
                    kb_documents.c.id.like(like_prefix(prefix), escape="\\"),
                )
                .order_by(kb_documents.c.id.desc())
                .limit(limit)
            )
            return list(connection.execute(query).scalars())

        return self.database.run("kb.document.complete", work)

    def collections_of(self, tenant: str, names: Sequence[str]) -> Deferred[dict[str, Any]]:
        """The tenant's collections by these names (`NotFound` naming one it lacks)."""

        def work(connection: Connection) -> dict[str, Any]:
            rows = connection.execute(
                select(kb_collections).where(kb_collections.c.tenant == tenant, kb_collections.c.name.in_(list(names)))
            ).all()
            found = {row.name: row for row in rows}
            for name in names:
                if name not in found:
                    raise NotFound(_no_collection(name))
            return {name: dict(found[name]._mapping) for name in names}

        return self.database.run("kb.collection.get", work)

    def chunk_rows(
        self, tenant: str, chunk_ids: Sequence[str], collection_ids: Sequence[str]
    ) -> Deferred[dict[str, Any]]:
        """The tenant's chunks with these ids in these collections, with their documents: what a
        search may show (the index may still hold what SQL no longer has)."""

        def work(connection: Connection) -> dict[str, Any]:
            if not chunk_ids:
                return {}
            query = (
                select(
                    kb_chunks.c.id,
                    kb_chunks.c.text,
                    kb_chunks.c.headings,
                    kb_chunks.c.position,
                    kb_chunks.c.document_id,
                    kb_chunks.c.collection_id,
                    kb_documents.c.title,
                    kb_documents.c.metadata,
                    kb_documents.c.source,
                )
                .join(kb_documents, kb_documents.c.id == kb_chunks.c.document_id)
                .where(
                    kb_chunks.c.tenant == tenant,
                    kb_chunks.c.id.in_(list(chunk_ids)),
                    kb_chunks.c.collection_id.in_(list(collection_ids)),
                )
            )
            return {row.id: row._mapping for row in connection.execute(query)}

        return self.database.run("kb.search.check", work)

    def scan_chunks(
        self, tenant: str, collection_ids: Sequence[str], words: Sequence[str], limit: int
    ) -> Deferred[list[Any]]:
        """Chunks holding any of ``words`` (a plain scan, for when the index is down)."""

        def work(connection: Connection) -> list[Any]:
            if not words:
                return []
            from sqlalchemy import or_

            query = (
                select(
                    kb_chunks.c.id,
                    kb_chunks.c.text,
                    kb_chunks.c.document_id,
                    kb_chunks.c.collection_id,
                    kb_documents.c.title,
                    kb_documents.c.metadata,
                    kb_documents.c.created_at,
                )
                .join(kb_documents, kb_documents.c.id == kb_chunks.c.document_id)
                .where(
                    kb_chunks.c.tenant == tenant,
                    kb_chunks.c.collection_id.in_(list(collection_ids)),
                    or_(*(kb_chunks.c.text.like("%" + _escape(word) + "%", escape="\\") for word in words)),
                )
                .limit(limit)
            )
            return [row._mapping for row in connection.execute(query)]

        return self.database.run("kb.search.scan", work)

    # -- memories -------------------------------------------------------------------------------

    def remember(
        self, tenant: str, owner: str, text: str, tags: Sequence[str], author: str
    ) -> Deferred[tuple[dict[str, Any], Work]]:
        def work(connection: Connection) -> tuple[dict[str, Any], Work]:
            now = utcnow()
            tags_ = list(dict.fromkeys(tags))
            memory_id = new_id()
            row = {
                "id": memory_id,
                "tenant": tenant,
                "owner": owner,
                "text": text,
                "tags": json.dumps(tags_, ensure_ascii=False),
                "created_at": now,
                "updated_at": now,
                "created_by": author,
            }
            connection.execute(memories.insert(), row)
            replace_tags(connection, memory_tags, "memory_id", memory_id, tenant, tags_, new=True)
            seq = _enqueue(connection, tenant, MEMORY_COLLECTION, MEMORY, memory_id, False)
            return _memory(row), _work(seq, tenant, MEMORY_COLLECTION, MEMORY, memory_id)

        return self.database.run("memory.remember", work, write=True)

    def get_memory(self, tenant: str, owners: Sequence[str], memory_id: str) -> Deferred[dict[str, Any]]:
        return self.database.run("memory.get", lambda c: _memory(_find_memory(c, tenant, owners, memory_id)._mapping))

    def memory_rows(self, tenant: str, owners: Sequence[str], ids: Sequence[str]) -> Deferred[dict[str, Any]]:
        """The memories with these ids the caller may see (a search's check against SQL)."""

        def work(connection: Connection) -> dict[str, Any]:
            if not ids:
                return {}
            query = select(memories).where(
                memories.c.tenant == tenant, memories.c.owner.in_(list(owners)), memories.c.id.in_(list(ids))
            )
            return {row.id: _memory(row._mapping) for row in connection.execute(query)}

        return self.database.run("memory.recall.check", work)

    def list_memories(
        self, tenant: str, owners: Sequence[str], tags: Sequence[str], limit: int, after: str | None
    ) -> Deferred[tuple[list[dict[str, Any]], str | None]]:
        def work(connection: Connection) -> tuple[list[dict[str, Any]], str | None]:
            query = select(memories).where(memories.c.tenant == tenant, memories.c.owner.in_(list(owners)))
            for tag in dict.fromkeys(tags):
                query = query.where(
                    memories.c.id.in_(
                        select(memory_tags.c.memory_id).where(memory_tags.c.tenant == tenant, memory_tags.c.tag == tag)
                    )
                )
            if after is not None:
                query = query.where(memories.c.id < after)
            rows = connection.execute(query.order_by(memories.c.id.desc()).limit(limit + 1)).all()
            page = rows[:limit]
            return [_memory(row._mapping) for row in page], (page[-1].id if len(rows) > limit else None)

        return self.database.run("memory.list", work)

    def update_memory(
        self, tenant: str, owners: Sequence[str], memory_id: str, changes: dict[str, Any]
    ) -> Deferred[tuple[dict[str, Any], Work]]:
        def work(connection: Connection) -> tuple[dict[str, Any], Work]:
            current = _find_memory(connection, tenant, owners, memory_id, lock=True)
            values: dict[str, Any] = {"updated_at": utcnow(), "version": current.version + 1}
            if "text" in changes:
                values["text"] = changes["text"]
            if "tags" in changes:
                tags_ = list(dict.fromkeys(changes["tags"]))
                values["tags"] = json.dumps(tags_, ensure_ascii=False)
                replace_tags(connection, memory_tags, "memory_id", memory_id, tenant, tags_)
            connection.execute(update(memories).where(memories.c.id == memory_id).values(**values))
            seq = _enqueue(connection, tenant, MEMORY_COLLECTION, MEMORY, memory_id, False)
            return _memory({**current._mapping, **values}), _work(seq, tenant, MEMORY_COLLECTION, MEMORY, memory_id)

        return self.database.run("memory.update", work, write=True)

    def forget(self, tenant: str, owners: Sequence[str], memory_id: str) -> Deferred[Work | None]:
        def work(connection: Connection) -> Work | None:
            where = and_(memories.c.tenant == tenant, memories.c.owner.in_(list(owners)), memories.c.id == memory_id)
            if not connection.execute(delete(memories).where(where)).rowcount:
                return None
            connection.execute(delete(memory_tags).where(memory_tags.c.memory_id == memory_id))
            seq = _enqueue(connection, tenant, MEMORY_COLLECTION, MEMORY, memory_id, False)
            return _work(seq, tenant, MEMORY_COLLECTION, MEMORY, memory_id)

        return self.database.run("memory.forget", work, write=True)

    def memory_ids(self, tenant: str, owners: Sequence[str], prefix: str, limit: int) -> Deferred[list[str]]:
        def work(connection: Connection) -> list[str]:
            query = (
                select(memories.c.id)
                .where(
                    memories.c.tenant == tenant,
                    memories.c.owner.in_(list(owners)),
                    memories.c.id.like(like_prefix(prefix), escape="\\"),
                )
                .order_by(memories.c.id.desc())
                .limit(limit)
            )
            return list(connection.execute(query).scalars())

        return self.database.run("memory.complete", work)

    # -- the outbox -----------------------------------------------------------------------------

    def pending_work(self, limit: int, after: int = 0, rebuilt: str | None = None) -> Deferred[list[Work]]:
        """The oldest outbox rows after ``after`` (not given up), but those of collections being
        rebuilt; with ``rebuilt``, that collection's only (a rebuild catching up)."""

        def work(connection: Connection) -> list[Work]:
            query = select(index_outbox).where(
                index_outbox.c.seq > after,
                index_outbox.c.attempts < MAX_ATTEMPTS,
                index_outbox.c.kind != REBUILD,
            )
            if rebuilt is not None:
                query = query.where(index_outbox.c.collection == rebuilt)
            else:
                query = query.where(index_outbox.c.collection.not_in(_rebuilding(_lease_start())))
            return [_work_of(row) for row in connection.execute(query.order_by(index_outbox.c.seq).limit(limit))]

        return self.database.run("index.outbox.read", work)

    def pending_count(self, tenant: str | None = None, collections: Sequence[str] | None = None) -> Deferred[int]:
        """Outbox rows waiting, not given up (of one tenant's collections, when given)."""

        def work(connection: Connection) -> int:
            query = (
                select(func.count())
                .select_from(index_outbox)
                .where(index_outbox.c.attempts < MAX_ATTEMPTS, index_outbox.c.kind != REBUILD)
            )
            if tenant is not None:
                query = query.where(index_outbox.c.tenant == tenant)
            if collections is not None:
                query = query.where(index_outbox.c.collection.in_(list(collections)))
            return int(connection.execute(query).scalar() or 0)

        return self.database.run("index.outbox.count", work)

    def targets(self, items: Sequence[Work]) -> Deferred[list[Target]]:
        """What the index must hold for each outbox row, read from SQL in one transaction."""

        def work(connection: Connection) -> list[Target]:
            return [_target(connection, item) for item in items]

        return self.database.run("index.outbox.load", work)

    def settle(self, applied: Sequence[Target], rebuilt: bool = False) -> Deferred[list[int]]:
        """The index now holds each of ``applied``: clear the outbox row of each whose record SQL
        still holds at the version read. The others raced a newer change, a delete or their
        collection's drop: their rows stay, marked stale (the index may hold chunks SQL no
        longer has), and a drop the index may have undone is queued again. Rows of a collection
        being rebuilt stay too, unless ``rebuilt`` (the rebuild applied them to the new one).
        Fires with the seqs of the rows left."""

        def work(connection: Connection) -> list[int]:
            left = []
            held = set() if rebuilt else set(connection.execute(_rebuilding(_lease_start())).scalars())
            for target in applied:
                if target.work.collection in held:
                    left.append(target.work.seq)
                    continue
                # One statement when nothing changed (the usual case): the row goes if SQL holds
                # what was read.
                unchanged = delete(index_outbox).where(index_outbox.c.seq == target.work.seq, *_unchanged(target))
                if connection.execute(unchanged).rowcount:
                    continue
                current = _target_version(connection, target.work)
                if current == (target.version, target.collection):
                    continue  # cleared meanwhile (another instance did the same work)
                left.append(target.work.seq)
                connection.execute(update(index_outbox).where(index_outbox.c.seq == target.work.seq).values(stale=1))
                gone = target.work.kind == DOCUMENT and not current[1]
                if gone and not _drop_queued(connection, target.work.collection):
                    collection = target.work.collection
                    _enqueue(
                        connection, target.work.tenant, collection, COLLECTION, collection.removeprefix("kb_"), False
                    )
            return left

        return self.database.run("index.outbox.done", work, write=True)

    def failed(self, seq: int, error: str) -> Deferred[None]:
        def work(connection: Connection) -> None:
            connection.execute(
                update(index_outbox)
                .where(index_outbox.c.seq == seq)
                .values(attempts=index_outbox.c.attempts + 1, last_error=error[:2000])
            )

        return self.database.run("index.outbox.failed", work, write=True)

    # -- rebuilding -----------------------------------------------------------------------------

    def index_collections(self) -> Deferred[list[tuple[str, str, str, str]]]:
        """Every index collection SQL has records for: its name, analyzer, and the tenant and
        name of its kb collection (the memories: "", "memory")."""

        def work(connection: Connection) -> list[tuple[str, str, str, str]]:
            query = select(
                kb_collections.c.id, kb_collections.c.analyzer, kb_collections.c.tenant, kb_collections.c.name
            )
            rows = connection.execute(query.order_by(kb_collections.c.id))
            found = [(index_collection(row.id), row.analyzer, row.tenant, row.name) for row in rows]
            return [(MEMORY_COLLECTION, "standard", "", MEMORY_COLLECTION), *found]

        return self.database.run("index.rebuild.list", work)

    def chunks_after(self, collection: str, after: str, limit: int) -> Deferred[list[IndexedChunk]]:
        """The index collection's chunks (kb) or memories, by id, after the id ``after``."""

        def work(connection: Connection) -> list[IndexedChunk]:
            if collection == MEMORY_COLLECTION:
                query = select(memories).where(memories.c.id > after).order_by(memories.c.id).limit(limit)
                return [_memory_chunk(row) for row in connection.execute(query)]
            collection_id = collection.removeprefix("kb_")
            query = (
                select(kb_chunks, kb_documents.c.title, kb_documents.c.metadata, kb_documents.c.created_at)
                .join(kb_documents, kb_documents.c.id == kb_chunks.c.document_id)
                .where(kb_chunks.c.collection_id == collection_id, kb_chunks.c.id > after)
                .order_by(kb_chunks.c.id)
                .limit(limit)
            )
            return [_kb_chunk(row) for row in connection.execute(query)]

        return self.database.run("index.rebuild.read", work)

    def rebuilding(self, collection: str, by: str) -> Deferred[int | None]:
        """Take the lease on rebuilding ``collection`` (searches say the index is degraded until
        `clear_work` ends it) for ``by`` (who, for the operator): fires with the marker's seq,
        or None when the kb collection is gone (dropped since it was listed). `Conflict` when
        another rebuild holds a live lease; an expired one is taken over."""

        def work(connection: Connection) -> int | None:
            if collection != MEMORY_COLLECTION:
                found = exists().where(kb_collections.c.id == collection.removeprefix("kb_"))
                if not connection.execute(select(found)).scalar():
                    return None
            start = _lease_start()
            mine = and_(
                index_outbox.c.tenant == ANY_TENANT,  # the index's prefix: only these rows are locked
                index_outbox.c.collection == collection,
                index_outbox.c.kind == REBUILD,
            )
            live = connection.execute(
                select(index_outbox.c.created_at, index_outbox.c.last_error).where(
                    mine, index_outbox.c.created_at >= start
                )
            ).first()
            if live is not None:
                raise Conflict(
                    f"a rebuild of {collection} is under way since {live.last_error}, last heard of at"
                    f" {iso(live.created_at)}: try again once it has ended, or {int(MARKER_LEASE)}s after that"
                    " if it died"
                )
            connection.execute(delete(index_outbox).where(mine))  # expired: their rebuilds died
            seq = _enqueue(connection, ANY_TENANT, collection, REBUILD, collection, False)
            since = f"{iso(utcnow())} (by {by})"
            connection.execute(update(index_outbox).where(index_outbox.c.seq == seq).values(last_error=since[:2000]))
            return seq

        # The write lock (SQLite: taken at BEGIN; MySQL: SERIALIZABLE reads lock the range read)
        # makes the look and the insert one step: two rebuilds never both hold the lease.
        return self.database.run("index.rebuild.mark", work, write=True, serializable=True)

    def renew(self, markers: Sequence[int]) -> Deferred[set[int]]:
        """Renew the leases of a rebuild's ``markers``; fires with those still held (one that
        expired meanwhile may have gone, and its collection may be another rebuild's now)."""

        def work(connection: Connection) -> set[int]:
            held = index_outbox.c.seq.in_(list(markers))
            connection.execute(update(index_outbox).where(held).values(created_at=utcnow()))
            return set(connection.execute(select(index_outbox.c.seq).where(held)).scalars())

        return self.database.run("index.rebuild.renew", work, write=True)

    def unmark(self, marker: int) -> Deferred[None]:
        """The rebuild holding ``marker`` ended: its marker goes (another's, if any, stays)."""

        def work(connection: Connection) -> None:
            connection.execute(delete(index_outbox).where(index_outbox.c.seq == marker, index_outbox.c.kind == REBUILD))

        return self.database.run("index.rebuild.unmark", work, write=True)

    def expire_markers(self) -> Deferred[list[str]]:
        """Delete the markers whose lease expired (their rebuilds died); fires with their
        collections, whose kept work is pending again. Only a read when there are none."""

        def old() -> Any:
            return and_(index_outbox.c.kind == REBUILD, index_outbox.c.created_at < _lease_start())

        def expire(connection: Connection) -> list[str]:
            gone = list(connection.execute(select(index_outbox.c.collection).where(old())).scalars())
            connection.execute(delete(index_outbox).where(old()))
            return gone

        def found(any_old: bool) -> Deferred[list[str]] | list[str]:
            return self.database.run("index.rebuild.expire", expire, write=True) if any_old else []

        look = self.database.run(
            "index.rebuild.expired", lambda c: c.execute(select(index_outbox.c.seq).where(old()).limit(1)).first()
        )
        return look.addCallback(lambda row: found(row is not None))

    def clear_work(self, collection: str, up_to: int) -> Deferred[None]:
        """Forget the outbox rows of a collection up to ``up_to`` (a rebuild did their work)."""

        def work(connection: Connection) -> None:
            connection.execute(
                delete(index_outbox).where(
                    index_outbox.c.collection == collection,
                    index_outbox.c.kind.not_in([COLLECTION, REBUILD]),
                    index_outbox.c.seq <= up_to,
                )
            )

        return self.database.run("index.rebuild.clear", work, write=True)

    def last_seq(self) -> Deferred[int]:
        return self.database.run(
            "index.outbox.last", lambda c: int(c.execute(select(func.max(index_outbox.c.seq))).scalar() or 0)
        )


# -- helpers (in a store thread) ------------------------------------------------------------------


def _no_collection(name: str) -> str:
    return f"no collection {name!r}: kb.collections lists yours, kb.create_collection makes one"


def _find(connection: Connection, tenant: str, name: str) -> Any:
    row = connection.execute(
        select(kb_collections).where(kb_collections.c.tenant == tenant, kb_collections.c.name == name)
    ).first()
    if row is None:
        raise NotFound(_no_collection(name))
    return row


def _find_document(connection: Connection, tenant: str, collection: Any, document_id: str, lock: bool = False) -> Any:
    query = select(kb_documents).where(
        kb_documents.c.tenant == tenant, kb_documents.c.collection_id == collection.id, kb_documents.c.id == document_id
    )
    if lock and connection.dialect.name != "sqlite":
        query = query.with_for_update()
    row = connection.execute(query).first()
    if row is None:
        raise NotFound(
            f"no document {document_id!r} in collection {collection.name!r}: kb.search finds documents by their words"
        )
    return row


def _find_memory(connection: Connection, tenant: str, owners: Sequence[str], memory_id: str, lock: bool = False) -> Any:
    query = select(memories).where(
        memories.c.tenant == tenant, memories.c.owner.in_(list(owners)), memories.c.id == memory_id
    )
    if lock and connection.dialect.name != "sqlite":
        query = query.with_for_update()
    row = connection.execute(query).first()
    if row is None:
        raise NotFound(f"no memory {memory_id!r}: memory.list and memory.recall show yours and your team's")
    return row


def _indexable(chunks: Sequence[Chunk], title: str | None) -> None:
    why = unindexable(chunks, title)
    if why is not None:
        raise StoreError(why)


def _chunks_of(connection: Connection, document_id: str) -> list[Chunk]:
    """A document's chunks as stored (their text and headings; offsets and sizes left out)."""
    rows = connection.execute(
        select(kb_chunks.c.position, kb_chunks.c.text, kb_chunks.c.headings).where(
            kb_chunks.c.document_id == document_id
        )
    )
    return [Chunk(row.position, row.text, tuple(json.loads(row.headings)), 0, 0, 0) for row in rows]


def _insert_chunks(
    connection: Connection, tenant: str, collection_id: str, document_id: str, chunks: Sequence[Chunk]
) -> None:
    rows = [
        {
            "id": new_id(),
            "tenant": tenant,
            "document_id": document_id,
            "collection_id": collection_id,
            "position": chunk.position,
            "text": chunk.text,
            "headings": json.dumps(list(chunk.headings), ensure_ascii=False),
            "start": chunk.start,
            "end": chunk.end,
        }
        for chunk in chunks
    ]
    if rows:
        connection.execute(kb_chunks.insert(), rows)


def _enqueue(connection: Connection, tenant: str, collection: str, kind: str, target: str, stale: bool) -> int:
    result = connection.execute(
        index_outbox.insert().values(
            tenant=tenant,
            collection=collection,
            kind=kind,
            target=target,
            stale=int(stale),
            created_at=utcnow(),
            attempts=0,
        )
    )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def metadata_json(metadata: dict[str, Any] | None) -> str:
    """A document's metadata as stored; `StoreError` over `MAX_METADATA_BYTES`."""
    text = json.dumps(metadata or {}, ensure_ascii=False)
    size = len(text.encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise StoreError(f"metadata is {size} bytes as JSON, over {MAX_METADATA_BYTES}: keep long values in the text")
    return text


def _lease_start() -> datetime.datetime:
    """A marker renewed before this has expired."""
    return utcnow() - datetime.timedelta(seconds=MARKER_LEASE)


def _rebuilding(start: datetime.datetime) -> Any:
    """The index collections being rebuilt, by a marker renewed since ``start`` (a subquery)."""
    return (
        select(index_outbox.c.collection)
        .where(index_outbox.c.kind == REBUILD, index_outbox.c.created_at >= start)
        .distinct()
    )


def _drop_queued(connection: Connection, collection: str) -> bool:
    query = select(index_outbox.c.seq).where(index_outbox.c.collection == collection, index_outbox.c.kind == COLLECTION)
    return connection.execute(query.limit(1)).first() is not None


def _unchanged(target: Target) -> list[Any]:
    """Conditions true while SQL holds the record of ``target`` at the version it read (and
    its collection as it was)."""
    item = target.work
    found: list[Any] = []
    if item.kind != MEMORY:
        collection = exists().where(kb_collections.c.id == item.collection.removeprefix("kb_"))
        found.append(collection if target.collection else ~collection)
    table = memories if item.kind == MEMORY else kb_documents if item.kind == DOCUMENT else None
    if table is not None:
        record = and_(table.c.tenant == item.tenant, table.c.id == item.target)
        if target.version is None:
            found.append(~exists().where(record))
        else:
            found.append(select(table.c.version).where(record).scalar_subquery() == target.version)
    return found


def _target_version(connection: Connection, item: Work) -> tuple[int | None, bool]:
    """The version SQL holds of an outbox row's record (None: gone), and whether its kb
    collection exists."""
    if item.kind == MEMORY:
        version = connection.execute(
            select(memories.c.version).where(memories.c.tenant == item.tenant, memories.c.id == item.target)
        ).scalar()
        return version, True
    collection = connection.execute(
        select(kb_collections.c.id).where(kb_collections.c.id == item.collection.removeprefix("kb_"))
    ).first()
    if item.kind != DOCUMENT:
        return None, collection is not None
    version = connection.execute(
        select(kb_documents.c.version).where(kb_documents.c.tenant == item.tenant, kb_documents.c.id == item.target)
    ).scalar()
    return version, collection is not None


def _work(seq: int, tenant: str, collection: str, kind: str, target: str, stale: bool = False) -> Work:
    return Work(seq, tenant, collection, kind, target, stale, 0)


def _work_of(row: Any) -> Work:
    return Work(row.seq, row.tenant, row.collection, row.kind, row.target, bool(row.stale), row.attempts)


def _target(connection: Connection, item: Work) -> Target:
    if item.kind == MEMORY:
        row = connection.execute(
            select(memories).where(memories.c.tenant == item.tenant, memories.c.id == item.target)
        ).first()
        kept: tuple[IndexedChunk, ...] = () if row is None else (_memory_chunk(row),)
        return Target(item, kept, "standard", row is not None, None if row is None else row.version)
    if item.kind == DOCUMENT:
        query = (
            select(kb_chunks, kb_documents.c.title, kb_documents.c.metadata, kb_documents.c.created_at)
            .join(kb_documents, kb_documents.c.id == kb_chunks.c.document_id)
            .where(kb_chunks.c.tenant == item.tenant, kb_chunks.c.document_id == item.target)
            .order_by(kb_chunks.c.position)
        )
        chunks = tuple(_kb_chunk(row) for row in connection.execute(query))
        analyzer = connection.execute(
            select(kb_collections.c.analyzer).where(kb_collections.c.id == item.collection.removeprefix("kb_"))
        ).scalar()
        version = connection.execute(
            select(kb_documents.c.version).where(kb_documents.c.tenant == item.tenant, kb_documents.c.id == item.target)
        ).scalar()
        exists = analyzer is not None and version is not None
        return Target(item, chunks if exists else (), analyzer or "standard", exists, version, analyzer is not None)
    return Target(item, (), "standard", False, None, False)  # a dropped collection


def _kb_chunk(row: Any) -> IndexedChunk:
    chunk = Chunk(row.position, row.text, tuple(json.loads(row.headings)), row.start, row.end, 0)
    return IndexedChunk(
        id=row.id,
        tenant=row.tenant,
        document_id=row.document_id,
        text=indexed_text(chunk, row.title),
        metadata=json.loads(row.metadata),
        created_at=unix(row.created_at),
    )


def _memory_chunk(row: Any) -> IndexedChunk:
    return IndexedChunk(
        id=row.id,
        tenant=row.tenant,
        document_id=row.id,
        text=row.text,
        owner=row.owner,
        tags=tuple(json.loads(row.tags)),
        created_at=unix(row.created_at),
    )


def _collection(row: Any, documents: int, chunks: int) -> dict[str, Any]:
    return {
        "name": row["name"],
        "description": row["description"],
        "analyzer": row["analyzer"],
        "documents": documents,
        "chunks": chunks,
        "created_at": iso(row["created_at"]),
        "created_by": row["created_by"],
        "id": row["id"],
    }


def _document(row: Any, collection: str) -> dict[str, Any]:
    return {
        "id": row["id"],
        "collection": collection,
        "title": row["title"],
        "text": row["text"],
        "source": row["source"],
        "metadata": json.loads(row["metadata"]),
        "chunks": row["chunks"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "created_by": row["created_by"],
    }


def _memory(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "text": row["text"],
        "tags": json.loads(row["tags"]),
        "scope": "team" if row["owner"] == "" else "personal",
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "created_by": row["created_by"],
        "owner": row["owner"],
    }


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
