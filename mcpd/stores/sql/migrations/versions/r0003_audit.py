# -*- test-case-name: tests.test_sqlstore -*-
"""The audit trail (server.audit): one row per audited event, by tenant and time.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mcpd.stores.sql.types import TABLE_OPTIONS, key, sequence, timestamp

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_records",
        sa.Column("seq", sequence(), primary_key=True, autoincrement=True),
        sa.Column("tenant", key(64), nullable=False),
        sa.Column("at", timestamp(), nullable=False),
        sa.Column("key_name", key(64)),
        sa.Column("peer", sa.String(64), nullable=False),
        sa.Column("transport", key(32), nullable=False),
        sa.Column("method", key(64)),
        sa.Column("tool", key(128)),
        sa.Column("outcome", key(32), nullable=False),
        sa.Column("duration_ms", sa.Float),
        sa.Column("request_id", sa.String(64)),
        sa.Column("x_request_id", sa.String(64)),
        sa.Column("detail", sa.Text),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_audit_tenant_at", "audit_records", ["tenant", "at"])
    op.create_index("ix_audit_key", "audit_records", ["tenant", "key_name", "at"])
    op.create_index("ix_audit_tool", "audit_records", ["tenant", "tool", "at"])
    op.create_index("ix_audit_outcome", "audit_records", ["tenant", "outcome", "at"])


def downgrade() -> None:
    op.drop_table("audit_records")
