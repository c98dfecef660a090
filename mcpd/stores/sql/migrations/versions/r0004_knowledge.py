# -*- test-case-name: tests.test_sqlstore -*-
"""The knowledge base and memories (the kb and memory packs), and the outbox of index work.

Revision ID: 0004_knowledge
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mcpd.stores.sql.types import TABLE_OPTIONS, key, long_text, sequence, timestamp

revision = "0004_knowledge"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kb_collections",
        sa.Column("id", key(32), primary_key=True),
        sa.Column("tenant", key(64), nullable=False),
        sa.Column("name", key(100), nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("analyzer", key(16), nullable=False),
        sa.Column("created_at", timestamp(), nullable=False),
        sa.Column("created_by", key(64), nullable=False),
        sa.UniqueConstraint("tenant", "name", name="uq_kb_collections_tenant_name"),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "kb_documents",
        sa.Column("id", key(32), primary_key=True),
        sa.Column("tenant", key(64), nullable=False),
        sa.Column(
            "collection_id",
            key(32),
            sa.ForeignKey("kb_collections.id", name="fk_kb_documents_collection", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("title", sa.String(500)),
        sa.Column("text", long_text(), nullable=False),
        sa.Column("source", sa.String(2000)),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("chunks", sa.Integer, nullable=False),
        sa.Column("created_at", timestamp(), nullable=False),
        sa.Column("updated_at", timestamp(), nullable=False),
        sa.Column("created_by", key(64), nullable=False),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_kb_documents_collection", "kb_documents", ["collection_id", "id"])
    op.create_table(
        "kb_chunks",
        sa.Column("id", key(32), primary_key=True),
        sa.Column("tenant", key(64), nullable=False),
        sa.Column(
            "document_id",
            key(32),
            sa.ForeignKey("kb_documents.id", name="fk_kb_chunks_document", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("collection_id", key(32), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("headings", sa.Text, nullable=False),
        sa.Column("start", sa.Integer, nullable=False),
        sa.Column("end", sa.Integer, nullable=False),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_kb_chunks_document", "kb_chunks", ["document_id", "position"])
    op.create_index("ix_kb_chunks_collection", "kb_chunks", ["collection_id", "id"])
    op.create_table(
        "memories",
        sa.Column("id", key(32), primary_key=True),
        sa.Column("tenant", key(64), nullable=False),
        sa.Column("owner", key(64), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("created_at", timestamp(), nullable=False),
        sa.Column("updated_at", timestamp(), nullable=False),
        sa.Column("created_by", key(64), nullable=False),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_memories_owner", "memories", ["tenant", "owner", "id"])
    op.create_table(
        "memory_tags",
        sa.Column(
            "memory_id",
            key(32),
            sa.ForeignKey("memories.id", name="fk_memory_tags_memory", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("tenant", key(64), nullable=False),
        sa.Column("tag", key(64), nullable=False),
        sa.PrimaryKeyConstraint("memory_id", "tag", name="pk_memory_tags"),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_memory_tags_tag", "memory_tags", ["tenant", "tag", "memory_id"])
    op.create_table(
        "index_outbox",
        sa.Column("seq", sequence(), primary_key=True, autoincrement=True),
        sa.Column("tenant", key(64), nullable=False),
        sa.Column("collection", key(64), nullable=False),
        sa.Column("kind", key(16), nullable=False),
        sa.Column("target", key(32), nullable=False),
        sa.Column("stale", sa.Integer, nullable=False),
        sa.Column("created_at", timestamp(), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_index_outbox_collection", "index_outbox", ["tenant", "collection"])


def downgrade() -> None:
    for table in ("index_outbox", "memory_tags", "memories", "kb_chunks", "kb_documents", "kb_collections"):
        op.drop_table(table)
