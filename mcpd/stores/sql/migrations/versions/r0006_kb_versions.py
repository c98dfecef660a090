# -*- test-case-name: tests.test_sqlstore,tests.test_knowledge -*-
"""Documents and memories carry a version, raised by every change: the index work read at one
version is known to be stale once SQL holds another. A document's metadata may reach the 64 KiB
the tools allow on MySQL/MariaDB too (TEXT stops one byte short, and counts escapes).

Revision ID: 0006_kb
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mcpd.stores.sql.types import long_text

revision = "0006_kb"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("kb_documents", sa.Column("version", sa.Integer, nullable=False, server_default="1"))
    op.add_column("memories", sa.Column("version", sa.Integer, nullable=False, server_default="1"))
    if op.get_context().dialect.name == "mysql":
        op.alter_column("kb_documents", "metadata", type_=long_text(), existing_nullable=False)


def downgrade() -> None:
    if op.get_context().dialect.name == "mysql":
        op.alter_column("kb_documents", "metadata", type_=sa.Text, existing_nullable=False)
    # Plain DROP COLUMN (SQLite has it since 3.35): a batch copy would drop the table, and with
    # foreign keys on that drop cascades into kb_chunks and memory_tags.
    op.drop_column("memories", "version")
    op.drop_column("kb_documents", "version")
