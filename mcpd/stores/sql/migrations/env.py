# -*- test-case-name: tests.test_sqlstore -*-
"""Alembic's environment for the SQL store: migrations run on the connection mcpd hands over.

mcpd applies them itself (at start-up under a lock, or with ``mcpd migrate``); there is no
alembic.ini. To add a revision, copy the latest file in ``versions/``, give it the next number as
``revision`` and the latest as ``down_revision``, and add the tables to ``mcpd/stores/sql/schema.py``
(``tests.test_sqlstore`` checks that the two agree on SQLite and MariaDB).
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    version_table=context.config.attributes["version_table"],
    # One transaction per revision: on SQLite a failed revision leaves the one before intact.
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
