"""The SQL store: SQLAlchemy Core on SQLite (the default) or MySQL 8 / MariaDB 10.11+.

`config` (the URL and pool knobs), `database` (engine, thread pool, transactions, outages),
`migrate` (Alembic, under a lock), `schema` (the tables), one module per record kind (`tasks`,
`notes`) and `service` (its place in the daemon's service tree).
"""
