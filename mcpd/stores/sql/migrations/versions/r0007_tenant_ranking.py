# -*- test-case-name: tests.test_sqlstore -*-
"""note.search ranks over the caller's tenant's notes alone.

SQLite: the one FTS5 table over every tenant's notes (and its triggers) becomes one FTS5 table
per tenant, so BM25's statistics are the tenant's; the store keeps them in step. MySQL/MariaDB:
BM25 is computed by the store from the tenant's matches, so the title-only FULLTEXT index (used
by InnoDB's relevance, which counted every tenant's notes) goes.

Revision ID: 0007
Revises: 0006_kb
"""

from __future__ import annotations

import hashlib
import re

from alembic import op

revision = "0007"
down_revision = "0006_kb"
branch_labels = None
depends_on = None

_TOKENIZE = "tokenize='porter unicode61 remove_diacritics 2'"
_TENANT_TABLE = re.compile(r"notes_fts_[0-9a-f]{32}")


def _table(tenant: str) -> str:
    # As mcpd.stores.sql.notes.fts_table names it (kept here as it was at this revision).
    return "notes_fts_" + hashlib.blake2b(tenant.encode(), digest_size=16).hexdigest()


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.execute("DROP INDEX ft_notes_title ON notes")
        return
    tenants = [row[0] for row in bind.exec_driver_sql("SELECT DISTINCT tenant FROM notes")]
    for tenant in tenants:
        table = _table(tenant)
        op.execute(
            f"CREATE VIRTUAL TABLE {table} USING fts5(title, body, content='notes', content_rowid='seq', {_TOKENIZE})"
        )
        bind.exec_driver_sql(
            f"INSERT INTO {table}(rowid, title, body) SELECT seq, title, body FROM notes WHERE tenant = ?", (tenant,)
        )
    for trigger in ("insert", "delete", "update"):
        op.execute(f"DROP TRIGGER notes_fts_{trigger}")
    op.execute("DROP TABLE notes_fts")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.execute("CREATE FULLTEXT INDEX ft_notes_title ON notes (title)")
        return
    names = [row[0] for row in bind.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for name in names:
        if _TENANT_TABLE.fullmatch(name):
            op.execute(f"DROP TABLE {name}")
    op.execute(
        f"CREATE VIRTUAL TABLE notes_fts USING fts5(title, body, content='notes', content_rowid='seq', {_TOKENIZE})"
    )
    op.execute(
        "CREATE TRIGGER notes_fts_insert AFTER INSERT ON notes BEGIN "
        "INSERT INTO notes_fts(rowid, title, body) VALUES (new.seq, new.title, new.body); END"
    )
    op.execute(
        "CREATE TRIGGER notes_fts_delete AFTER DELETE ON notes BEGIN "
        "INSERT INTO notes_fts(notes_fts, rowid, title, body) VALUES ('delete', old.seq, old.title, old.body); END"
    )
    op.execute(
        "CREATE TRIGGER notes_fts_update AFTER UPDATE OF title, body ON notes BEGIN "
        "INSERT INTO notes_fts(notes_fts, rowid, title, body) VALUES ('delete', old.seq, old.title, old.body); "
        "INSERT INTO notes_fts(rowid, title, body) VALUES (new.seq, new.title, new.body); END"
    )
    op.execute("INSERT INTO notes_fts(notes_fts) VALUES ('rebuild')")
