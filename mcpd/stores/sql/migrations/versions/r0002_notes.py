# -*- test-case-name: tests.test_sqlstore -*-
"""Notes with tags, and their full-text index (SQLite FTS5; MySQL/MariaDB FULLTEXT).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mcpd.stores.sql.types import TABLE_OPTIONS, key, long_text, sequence, timestamp

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# SQLite: an external-content FTS5 table over notes(title, body), kept in step by triggers, so
# that no writer can forget it. Porter stemming: "deploying" finds "deployment".
SQLITE_FTS = (
    "CREATE VIRTUAL TABLE notes_fts USING fts5(title, body, content='notes', content_rowid='seq', "
    "tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER notes_fts_insert AFTER INSERT ON notes BEGIN "
    "INSERT INTO notes_fts(rowid, title, body) VALUES (new.seq, new.title, new.body); END",
    "CREATE TRIGGER notes_fts_delete AFTER DELETE ON notes BEGIN "
    "INSERT INTO notes_fts(notes_fts, rowid, title, body) VALUES ('delete', old.seq, old.title, old.body); END",
    "CREATE TRIGGER notes_fts_update AFTER UPDATE OF title, body ON notes BEGIN "
    "INSERT INTO notes_fts(notes_fts, rowid, title, body) VALUES ('delete', old.seq, old.title, old.body); "
    "INSERT INTO notes_fts(rowid, title, body) VALUES (new.seq, new.title, new.body); END",
)
# MySQL/MariaDB: InnoDB FULLTEXT indexes, one over both columns and one over the title alone
# (a match in the title counts twice). InnoDB builds one FULLTEXT index per statement.
MYSQL_FTS = (
    "CREATE FULLTEXT INDEX ft_notes ON notes (title, body)",
    "CREATE FULLTEXT INDEX ft_notes_title ON notes (title)",
)


def upgrade() -> None:
    op.create_table(
        "notes",
        sa.Column("seq", sequence(), primary_key=True, autoincrement=True),
        sa.Column("id", key(32), nullable=False),
        sa.Column("tenant", key(64), nullable=False),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("body", long_text(), nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("created_at", timestamp(), nullable=False),
        sa.Column("updated_at", timestamp(), nullable=False),
        sa.Column("created_by", key(64), nullable=False),
        sa.UniqueConstraint("id", name="uq_notes_id"),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_notes_tenant_id", "notes", ["tenant", "id"])
    op.create_table(
        "note_tags",
        sa.Column(
            "note_id", key(32), sa.ForeignKey("notes.id", name="fk_note_tags_note", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("tenant", key(64), nullable=False),
        sa.Column("tag", key(64), nullable=False),
        sa.PrimaryKeyConstraint("note_id", "tag", name="pk_note_tags"),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_note_tags_tag", "note_tags", ["tenant", "tag", "note_id"])
    for statement in SQLITE_FTS if op.get_bind().dialect.name == "sqlite" else MYSQL_FTS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE notes_fts")
    op.drop_table("note_tags")
    op.drop_table("notes")
