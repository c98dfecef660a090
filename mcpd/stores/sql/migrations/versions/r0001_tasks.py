# -*- test-case-name: tests.test_sqlstore -*-
"""The task board: projects, tasks, their tags, dependencies and comments.

Revision ID: 0001
Revises: none
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mcpd.stores.sql.types import TABLE_OPTIONS, key, timestamp

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", key(32), primary_key=True),
        sa.Column("tenant", key(64), nullable=False),
        sa.Column("name", key(200), nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("created_at", timestamp(), nullable=False),
        sa.Column("created_by", key(64), nullable=False),
        sa.UniqueConstraint("tenant", "name", name="uq_projects_tenant_name"),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "tasks",
        sa.Column("id", key(32), primary_key=True),
        sa.Column("tenant", key(64), nullable=False),
        sa.Column("project_id", key(32), sa.ForeignKey("projects.id", name="fk_tasks_project"), nullable=False),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("status", key(16), nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False),
        sa.Column("assignee", key(200)),
        sa.Column("due", sa.Date),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", timestamp(), nullable=False),
        sa.Column("created_by", key(64), nullable=False),
        sa.Column("updated_at", timestamp(), nullable=False),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_tasks_tenant_id", "tasks", ["tenant", "id"])
    op.create_index("ix_tasks_project", "tasks", ["project_id", "id"])
    op.create_index("ix_tasks_project_status", "tasks", ["project_id", "status"])
    op.create_index("ix_tasks_assignee", "tasks", ["tenant", "assignee"])
    op.create_index("ix_tasks_next", "tasks", ["tenant", "status", "priority", "due"])
    op.create_table(
        "task_tags",
        sa.Column(
            "task_id", key(32), sa.ForeignKey("tasks.id", name="fk_task_tags_task", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("tenant", key(64), nullable=False),
        sa.Column("tag", key(64), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "tag", name="pk_task_tags"),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_task_tags_tag", "task_tags", ["tenant", "tag", "task_id"])
    op.create_table(
        "task_deps",
        sa.Column(
            "task_id", key(32), sa.ForeignKey("tasks.id", name="fk_task_deps_task", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "depends_on",
            key(32),
            sa.ForeignKey("tasks.id", name="fk_task_deps_depends_on", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("tenant", key(64), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "depends_on", name="pk_task_deps"),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_task_deps_depends_on", "task_deps", ["depends_on"])
    op.create_table(
        "task_comments",
        sa.Column("id", key(32), primary_key=True),
        sa.Column(
            "task_id",
            key(32),
            sa.ForeignKey("tasks.id", name="fk_task_comments_task", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("tenant", key(64), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("created_at", timestamp(), nullable=False),
        sa.Column("created_by", key(64), nullable=False),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_task_comments_task", "task_comments", ["task_id", "id"])


def downgrade() -> None:
    for table in ("task_comments", "task_deps", "task_tags", "tasks", "projects"):
        op.drop_table(table)
