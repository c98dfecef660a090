# -*- test-case-name: tests.test_sqlstore -*-
"""task.next reads an index instead of sorting: the open tasks of a tenant (or of a project) by
priority, due date and id.

Revision ID: 0005
Revises: 0004_knowledge
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004_knowledge"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_tasks_next", "tasks")
    op.create_index("ix_tasks_next", "tasks", ["tenant", "status", "priority", "due", "id"])
    # (project_id, status) led the old index too: the project's counts by status still use it.
    op.create_index("ix_tasks_project_next", "tasks", ["project_id", "status", "priority", "due", "id"])
    op.drop_index("ix_tasks_project_status", "tasks")


def downgrade() -> None:
    op.create_index("ix_tasks_project_status", "tasks", ["project_id", "status"])
    op.drop_index("ix_tasks_project_next", "tasks")
    op.drop_index("ix_tasks_next", "tasks")
    op.create_index("ix_tasks_next", "tasks", ["tenant", "status", "priority", "due"])
