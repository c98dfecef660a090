# -*- test-case-name: tests.test_sqlstore -*-
"""The SQL store's tables, as SQLAlchemy Core sees them (the queries use these).

The migrations in ``migrations/versions`` create them; ``tests.test_sqlstore`` checks that the
two agree on SQLite and MariaDB. Every row carries its tenant, and every index starts with it
where a query filters by tenant. A new store's tables (documents, chunks, memories) come as a
new migration and new tables here.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from mcpd.stores.sql.types import TABLE_OPTIONS, key, long_text, sequence, timestamp

metadata = MetaData()

ID = 32
TENANT = 64
TAG = 64

projects = Table(
    "projects",
    metadata,
    Column("id", key(ID), primary_key=True),
    Column("tenant", key(TENANT), nullable=False),
    Column("name", key(200), nullable=False),
    Column("description", Text),
    Column("created_at", timestamp(), nullable=False),
    Column("created_by", key(64), nullable=False),
    UniqueConstraint("tenant", "name", name="uq_projects_tenant_name"),
    **TABLE_OPTIONS,
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", key(ID), primary_key=True),
    Column("tenant", key(TENANT), nullable=False),
    Column("project_id", key(ID), ForeignKey("projects.id", name="fk_tasks_project"), nullable=False),
    Column("title", String(500), nullable=False),
    Column("description", Text),
    Column("status", key(16), nullable=False),
    # 0 low, 1 normal, 2 high, 3 urgent: sorts by urgency.
    Column("priority", SmallInteger, nullable=False),
    Column("assignee", key(200)),
    Column("due", Date),
    # The tags as a JSON list, for showing; task_tags holds them for filtering.
    Column("tags", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", timestamp(), nullable=False),
    Column("created_by", key(64), nullable=False),
    Column("updated_at", timestamp(), nullable=False),
    # task.list (newest first: all, a project's), counts by project and status, by assignee;
    # task.next (a tenant's or a project's open tasks in the order it picks them, per priority:
    # due dates first, then undated, each by id). A project id belongs to one tenant, so project
    # indexes lead with it (InnoDB then uses one for the foreign key, instead of an index of its
    # own that MariaDB merged with ours and sorted: 22 ms for a page of a 10,000-task project).
    Index("ix_tasks_tenant_id", "tenant", "id"),
    Index("ix_tasks_project", "project_id", "id"),
    Index("ix_tasks_project_next", "project_id", "status", "priority", "due", "id"),
    Index("ix_tasks_assignee", "tenant", "assignee"),
    Index("ix_tasks_next", "tenant", "status", "priority", "due", "id"),
    **TABLE_OPTIONS,
)

task_tags = Table(
    "task_tags",
    metadata,
    Column("task_id", key(ID), ForeignKey("tasks.id", name="fk_task_tags_task", ondelete="CASCADE"), nullable=False),
    Column("tenant", key(TENANT), nullable=False),
    Column("tag", key(TAG), nullable=False),
    PrimaryKeyConstraint("task_id", "tag", name="pk_task_tags"),
    Index("ix_task_tags_tag", "tenant", "tag", "task_id"),
    **TABLE_OPTIONS,
)

task_deps = Table(
    "task_deps",
    metadata,
    Column("task_id", key(ID), ForeignKey("tasks.id", name="fk_task_deps_task", ondelete="CASCADE"), nullable=False),
    Column(
        "depends_on",
        key(ID),
        ForeignKey("tasks.id", name="fk_task_deps_depends_on", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("tenant", key(TENANT), nullable=False),
    PrimaryKeyConstraint("task_id", "depends_on", name="pk_task_deps"),
    # What a task blocks (task.get's ``blocks``).
    Index("ix_task_deps_depends_on", "depends_on"),
    **TABLE_OPTIONS,
)

task_comments = Table(
    "task_comments",
    metadata,
    Column("id", key(ID), primary_key=True),
    Column(
        "task_id", key(ID), ForeignKey("tasks.id", name="fk_task_comments_task", ondelete="CASCADE"), nullable=False
    ),
    Column("tenant", key(TENANT), nullable=False),
    Column("text", Text, nullable=False),
    Column("created_at", timestamp(), nullable=False),
    Column("created_by", key(64), nullable=False),
    Index("ix_task_comments_task", "task_id", "id"),
    **TABLE_OPTIONS,
)

notes = Table(
    "notes",
    metadata,
    # The full-text index refers to rows by this integer (SQLite FTS5's rowid).
    Column("seq", sequence(), primary_key=True, autoincrement=True),
    Column("id", key(ID), nullable=False),
    Column("tenant", key(TENANT), nullable=False),
    Column("title", String(500), nullable=False),
    Column("body", long_text(), nullable=False),
    # Characters in title and body, kept on save: MariaDB's BM25 takes the tenant's mean length
    # from (tenant, length) alone, not from every body.
    Column("length", Integer, nullable=False, server_default="0"),
    Column("tags", Text, nullable=False),
    Column("created_at", timestamp(), nullable=False),
    Column("updated_at", timestamp(), nullable=False),
    Column("created_by", key(64), nullable=False),
    UniqueConstraint("id", name="uq_notes_id"),
    Index("ix_notes_tenant_id", "tenant", "id"),
    Index("ix_notes_tenant_length", "tenant", "length"),
    **TABLE_OPTIONS,
)

note_tags = Table(
    "note_tags",
    metadata,
    Column("note_id", key(ID), ForeignKey("notes.id", name="fk_note_tags_note", ondelete="CASCADE"), nullable=False),
    Column("tenant", key(TENANT), nullable=False),
    Column("tag", key(TAG), nullable=False),
    PrimaryKeyConstraint("note_id", "tag", name="pk_note_tags"),
    Index("ix_note_tags_tag", "tenant", "tag", "note_id"),
    **TABLE_OPTIONS,
)

# The audit trail (server.audit): one row per audited event, searchable by time, key, tool and
# outcome within a tenant; old rows are deleted by time (retention), found in seq order. Each
# index costs every audited call a B-tree insert: none is kept that no search uses.
audit_records = Table(
    "audit_records",
    metadata,
    Column("seq", sequence(), primary_key=True, autoincrement=True),
    Column("tenant", key(TENANT), nullable=False),
    Column("at", timestamp(), nullable=False),
    Column("key_name", key(64)),
    Column("peer", String(64), nullable=False),
    Column("transport", key(32), nullable=False),
    Column("method", key(64)),
    Column("tool", key(128)),
    Column("outcome", key(32), nullable=False),
    Column("duration_ms", Float),
    Column("request_id", String(64)),
    Column("x_request_id", String(64)),
    Column("detail", Text),
    Index("ix_audit_tenant_at", "tenant", "at"),
    Index("ix_audit_key", "tenant", "key_name", "at"),
    Index("ix_audit_tool", "tenant", "tool", "at"),
    Index("ix_audit_outcome", "tenant", "outcome", "at"),
    **TABLE_OPTIONS,
)

# -- the knowledge base and memories (the kb and memory packs); the search index is a copy --

kb_collections = Table(
    "kb_collections",
    metadata,
    Column("id", key(ID), primary_key=True),
    Column("tenant", key(TENANT), nullable=False),
    Column("name", key(100), nullable=False),
    Column("description", Text),
    Column("analyzer", key(16), nullable=False),
    Column("created_at", timestamp(), nullable=False),
    Column("created_by", key(64), nullable=False),
    # kb.collections pages by name; every lookup is by (tenant, name).
    UniqueConstraint("tenant", "name", name="uq_kb_collections_tenant_name"),
    **TABLE_OPTIONS,
)

kb_documents = Table(
    "kb_documents",
    metadata,
    Column("id", key(ID), primary_key=True),
    Column("tenant", key(TENANT), nullable=False),
    Column(
        "collection_id",
        key(ID),
        ForeignKey("kb_collections.id", name="fk_kb_documents_collection", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("title", String(500)),
    Column("text", long_text(), nullable=False),
    Column("source", String(2000)),
    # Flat JSON object (strings, numbers, booleans), at most 64 KiB.
    Column("metadata", long_text(), nullable=False),
    Column("chunks", Integer, nullable=False),
    # Raised by every change: index work read at an older version is stale.
    Column("version", Integer, nullable=False, server_default="1"),
    Column("created_at", timestamp(), nullable=False),
    Column("updated_at", timestamp(), nullable=False),
    Column("created_by", key(64), nullable=False),
    # A collection's documents (counts, completion, re-indexing in id order); a collection id
    # belongs to one tenant, and InnoDB uses this index for the foreign key.
    Index("ix_kb_documents_collection", "collection_id", "id"),
    **TABLE_OPTIONS,
)

kb_chunks = Table(
    "kb_chunks",
    metadata,
    Column("id", key(ID), primary_key=True),
    Column("tenant", key(TENANT), nullable=False),
    Column(
        "document_id",
        key(ID),
        ForeignKey("kb_documents.id", name="fk_kb_chunks_document", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("collection_id", key(ID), nullable=False),
    Column("position", Integer, nullable=False),
    # An exact slice of the document (at most 64 KB: the index's limit), and where it sits.
    Column("text", Text, nullable=False),
    Column("headings", Text, nullable=False),
    Column("start", Integer, nullable=False),
    Column("end", Integer, nullable=False),
    Index("ix_kb_chunks_document", "document_id", "position"),
    Index("ix_kb_chunks_collection", "collection_id", "id"),
    **TABLE_OPTIONS,
)

memories = Table(
    "memories",
    metadata,
    Column("id", key(ID), primary_key=True),
    Column("tenant", key(TENANT), nullable=False),
    # "" for the team's memories, else the one key name that sees it.
    Column("owner", key(64), nullable=False),
    Column("text", Text, nullable=False),
    Column("tags", Text, nullable=False),
    Column("created_at", timestamp(), nullable=False),
    Column("updated_at", timestamp(), nullable=False),
    Column("created_by", key(64), nullable=False),
    Column("version", Integer, nullable=False, server_default="1"),
    # memory.list: one owner's (or the team's) newest first.
    Index("ix_memories_owner", "tenant", "owner", "id"),
    **TABLE_OPTIONS,
)

memory_tags = Table(
    "memory_tags",
    metadata,
    Column(
        "memory_id",
        key(ID),
        ForeignKey("memories.id", name="fk_memory_tags_memory", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("tenant", key(TENANT), nullable=False),
    Column("tag", key(TAG), nullable=False),
    PrimaryKeyConstraint("memory_id", "tag", name="pk_memory_tags"),
    Index("ix_memory_tags_tag", "tenant", "tag", "memory_id"),
    **TABLE_OPTIONS,
)

# Index work not yet done (the index was down, or the process stopped first): each row names a
# record to bring the index in line with SQL (whatever SQL then holds), oldest first.
index_outbox = Table(
    "index_outbox",
    metadata,
    Column("seq", sequence(), primary_key=True, autoincrement=True),
    Column("tenant", key(TENANT), nullable=False),
    # The index collection (kb_<collection id>, memory).
    Column("collection", key(64), nullable=False),
    # document, memory, or collection (dropped).
    Column("kind", key(16), nullable=False),
    Column("target", key(ID), nullable=False),
    # Whether the index may hold chunks of the target that SQL no longer has (an update).
    Column("stale", Integer, nullable=False),
    Column("created_at", timestamp(), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    # Pending work a search must mention: by tenant and collection.
    Index("ix_index_outbox_collection", "tenant", "collection"),
    **TABLE_OPTIONS,
)
