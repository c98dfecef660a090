# -*- test-case-name: tests.test_sqlstore -*-
"""Where the SQL store lives and how it connects: the URL (its password kept out of logs) and the
pool's knobs."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    # Imported where a URL is made: checking the settings of the default SQLite store must not
    # load SQLAlchemy (`mcpd --stdio` opens the store in the background, mcpd.stores.opening).
    from sqlalchemy.engine import URL

SQLITE_FILE = "mcpd.sqlite3"


class DatabaseConfigError(ValueError):
    """The database settings cannot be used; the message names the setting."""


@attrs.frozen
class DatabaseConfig:
    """How to reach the SQL store and how many connections (and threads) to use."""

    url: URL = attrs.field(repr=False)
    pool_size: int = 5
    max_overflow: int = 5
    pool_recycle: float = 3600.0
    pre_ping: bool = True
    # Seconds to connect or wait for a lock, and the longest one statement may run.
    timeout: float = 5.0
    statement_timeout: float = 10.0

    @property
    def backend(self) -> str:
        """``sqlite`` or ``mysql`` (MariaDB included)."""
        return "sqlite" if self.url.get_backend_name() == "sqlite" else "mysql"

    @property
    def shown_url(self) -> str:
        """The URL as logs and server.info show it: never the password."""
        return self.url.render_as_string(hide_password=True)

    @property
    def connections(self) -> int:
        """The most connections open at once, and so the store's thread count."""
        return self.pool_size + self.max_overflow


def sqlite_path(data_dir: str) -> str:
    """The default SQLite file in ``data_dir``, which is created (mode 0700) when missing."""
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
    except OSError as e:
        raise DatabaseConfigError(f"--data-dir {data_dir}: cannot create it ({e.strerror})") from None
    return os.path.abspath(os.path.join(data_dir, SQLITE_FILE))


def database_url(db_url: str | None, data_dir: str, password: str | None = None) -> URL:
    """The SQLAlchemy URL of the store: ``db_url`` (with ``password`` set on it), or a SQLite
    file in ``data_dir``, which is created (mode 0700) when missing."""
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import ArgumentError

    if db_url is None:
        return URL.create("sqlite", database=sqlite_path(data_dir))
    try:
        url = make_url(db_url)
    except ArgumentError:
        raise DatabaseConfigError(
            "--db-url: not a database URL (sqlite:///PATH or mysql+pymysql://USER@HOST/DB)"
        ) from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise DatabaseConfigError("--db-url: an in-memory SQLite database would vanish; name a file")
        return url
    if backend in ("mysql", "mariadb"):
        if not url.database:
            raise DatabaseConfigError("--db-url: name the database, mysql+pymysql://USER@HOST:3306/DATABASE")
        # PyMySQL is the driver mcpd ships with; utf8mb4 holds every character.
        url = url.set(drivername=f"{backend}+pymysql", query={**url.query, "charset": "utf8mb4"})
        if password is not None:
            url = url.set(password=password)
        return url
    raise DatabaseConfigError(f"--db-url: {backend} is not supported (SQLite, MySQL 8 and MariaDB 10.11+ are)")
