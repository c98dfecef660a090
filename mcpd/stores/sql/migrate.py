# -*- test-case-name: tests.test_sqlstore -*-
"""Schema migrations (Alembic, versioned in the package), applied under a lock.

Two instances starting together against one database must not both migrate it: on MySQL and
MariaDB the upgrade holds a named server lock (``GET_LOCK``), on SQLite an exclusive ``flock``
on a file beside the database. Whoever gets the lock second finds the schema already current.
A database whose schema is newer than this code knows is refused, never touched.

A database already at `HEAD` (every start but the first after an upgrade) is recognised from its
version table with one plain query: Alembic and the migration scripts are loaded only when there is
something to migrate, or something to say about the revision found (a third of opening the store).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import attrs
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

SCRIPT_LOCATION = "mcpd.stores.sql:migrations"
# mcpd's own version table: a database shared with other Alembic users keeps theirs apart.
VERSION_TABLE = "mcpd_schema_version"
# The newest of this code's migrations (migrations/versions/), Alembic's head: a new migration
# moves it (tests.test_sqlstore holds the two equal).
HEAD = "0008"
# How long a starting instance waits for another one's migration to finish.
LOCK_TIMEOUT = 120


class MigrationError(Exception):
    """The schema cannot be brought up to date; the message says why and what to do."""


class SchemaTooNew(MigrationError):
    """The database was migrated by a newer mcpd."""


@attrs.frozen
class SchemaState:
    """Where a database's schema stands against this code's migrations."""

    current: str | None
    head: str
    pending: tuple[str, ...]

    @property
    def up_to_date(self) -> bool:
        return not self.pending


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    config.attributes["version_table"] = VERSION_TABLE
    return config


def scripts() -> ScriptDirectory:
    """This code's migrations."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def schema_state(connection: Connection, shown_url: str) -> SchemaState:
    """The schema revision of the database on ``connection`` and the revisions it lacks;
    `SchemaTooNew` when it is at a revision this code does not know."""
    if _recorded(connection) == [HEAD]:
        return SchemaState(HEAD, HEAD, ())
    from alembic.runtime.migration import MigrationContext

    directory = scripts()
    head = directory.get_current_head()
    assert head is not None
    current = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()
    known = {script.revision for script in directory.walk_revisions()}
    if current is not None and current not in known:
        raise SchemaTooNew(
            f"the database at {shown_url} has schema revision {current}, newer than this mcpd knows "
            f"(its latest is {head}): upgrade mcpd, or point --db-url at another database"
        )
    pending = [script.revision for script in directory.iterate_revisions(head, current)]
    return SchemaState(current, head, tuple(reversed(pending)))


def _recorded(connection: Connection) -> list[str] | None:
    """The revisions in the version table, as Alembic reads them; None without the table."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    return list(connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())


def upgrade(engine: Engine, shown_url: str) -> tuple[SchemaState, SchemaState]:
    """Bring the schema up to date under the migration lock; the state before and after."""
    with migration_lock(engine), engine.connect() as connection:
        if engine.dialect.name != "sqlite":
            # DDL on a large table may take longer than the per-statement limit of tool calls.
            _no_statement_limit(connection)
        before = schema_state(connection, shown_url)
        if before.pending:
            from alembic import command

            command.upgrade(_config(connection), "head")
            connection.commit()
            return before, schema_state(connection, shown_url)
    return before, before


def _no_statement_limit(connection: Connection) -> None:
    variable = "max_statement_time" if getattr(connection.dialect, "is_mariadb", False) else "max_execution_time"
    connection.execute(text(f"SET SESSION {variable} = 0"))
    connection.commit()


@contextlib.contextmanager
def migration_lock(engine: Engine, timeout: int = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the database's migration lock (see the module docstring)."""
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        assert database
        with open(f"{database}.migrate-lock", "a+b") as lock:
            os.chmod(lock.name, 0o600)
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        return
    name = f"mcpd.migrate.{engine.url.database}"
    with engine.connect() as connection:
        got = connection.execute(text("SELECT GET_LOCK(:name, :timeout)"), {"name": name, "timeout": timeout}).scalar()
        if got != 1:
            raise MigrationError(
                f"another mcpd has been migrating this database for over {timeout}s (lock {name!r}); "
                "wait for it, or see SHOW PROCESSLIST"
            )
        try:
            yield
        finally:
            connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
