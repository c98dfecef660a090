# -*- test-case-name: tests.test_sqlstore -*-
"""Column types that mean the same on SQLite and MySQL/MariaDB.

The migrations use them too: change one only by adding a new helper, never in place, or an old
revision would start creating a different schema.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, String, Text
from sqlalchemy.dialects import mysql

MYSQL = ("mysql", "mariadb")
# Every MySQL table: InnoDB (transactions, FULLTEXT) and utf8mb4 (every character).
TABLE_OPTIONS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_unicode_ci",
}


def key(length: int) -> Any:
    """An identifier (id, tenant, name, tag): compared byte for byte on every backend."""
    return String(length).with_variant(mysql.VARCHAR(length, collation="utf8mb4_bin"), *MYSQL)


def timestamp() -> Any:
    """A UTC time to the microsecond."""
    return DateTime().with_variant(mysql.DATETIME(fsp=6), *MYSQL)


def long_text() -> Any:
    """Text of up to 16 MB on MySQL (TEXT stops at 64 KB)."""
    return Text().with_variant(mysql.MEDIUMTEXT(), *MYSQL)


def sequence() -> Any:
    """An auto-incremented integer key (SQLite's rowid alias; BIGINT on MySQL)."""
    return BigInteger().with_variant(Integer(), "sqlite")
