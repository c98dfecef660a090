# -*- test-case-name: tests.test_settings -*-
"""Where the stores keep their data (mcpd.stores): the data directory of the embedded ones, the
SQL store of the tasks and notes packs, the search index (Milvus) and the embedding service of
the kb and memory packs, the databases the sql pack reads, and Redis (the state several
instances share, the cache pack).

A store's knobs go here, each with its environment variable; `mcpd.daemon` picks the
implementation they name, and the in-process or embedded one without them.
"""

from __future__ import annotations

from mcpd.config import parse
from mcpd.config.knob import Knob

SECTION = "stores"
KNOBS: tuple[Knob, ...] = (
    Knob(
        "data_dir",
        "DATA_DIR",
        parse.text,
        "./mcpd-data",
        "Directory of the embedded stores (the SQLite database, the Milvus Lite index), created with mode 0700.",
    ),
    Knob(
        "milvus_uri",
        "MILVUS_URI",
        parse.milvus_uri,
        None,
        "The search index of the kb and memory packs: a Milvus server (http://host:19530, or milvus-lite "
        "server), or a Milvus Lite file. Default: milvus.db in --data-dir, inside mcpd.",
    ),
    Knob(
        "milvus_token",
        "MILVUS_TOKEN",
        parse.text,
        None,
        "Token (user:password or API key) for a Milvus server. Prefer the environment or --config to a flag.",
    ),
    Knob("milvus_timeout", "MILVUS_TIMEOUT", parse.seconds, 10.0, "Seconds one call to Milvus may take."),
    Knob(
        "milvus_prefix",
        "MILVUS_PREFIX",
        parse.index_prefix,
        "mcpd_",
        "Prefix of mcpd's collection names in Milvus, so several deployments can share one server.",
    ),
    Knob(
        "embedding_url",
        "EMBEDDING_URL",
        parse.http_url,
        None,
        "The embedding service for semantic and hybrid search: an OpenAI-compatible endpoint "
        "(http://host:8000/v1/embeddings: vLLM, TEI, LocalAI, llama.cpp, OpenAI) or Ollama's "
        "(http://host:11434/api/embed). Without it, search is keyword (BM25) only.",
    ),
    Knob(
        "embedding_model",
        "EMBEDDING_MODEL",
        parse.text,
        None,
        "The model the embedding service runs (needed with --embedding-url).",
    ),
    Knob(
        "embedding_api",
        "EMBEDDING_API",
        parse.embedding_api,
        None,
        "openai or ollama (default: ollama when the URL path ends in /api/embed, else openai).",
    ),
    Knob(
        "embedding_api_key",
        "EMBEDDING_API_KEY",
        parse.text,
        None,
        "Bearer key for the embedding service. Prefer the environment or --config to a flag.",
    ),
    Knob(
        "embedding_batch", "EMBEDDING_BATCH", parse.positive_int, 32, "Texts sent to the embedding service per request."
    ),
    Knob("embedding_timeout", "EMBEDDING_TIMEOUT", parse.seconds, 30.0, "Seconds one embedding request may take."),
    Knob(
        "embedding_retries",
        "EMBEDDING_RETRIES",
        parse.count,
        3,
        "Retries of an embedding request that timed out or got 429/5xx, with exponential backoff.",
    ),
    Knob(
        "embedding_query_prefix",
        "EMBEDDING_QUERY_PREFIX",
        parse.text,
        "",
        "Text put before each search query, for models trained with one (e5: 'query: ', nomic: 'search_query: ').",
    ),
    Knob(
        "embedding_document_prefix",
        "EMBEDDING_DOCUMENT_PREFIX",
        parse.text,
        "",
        "Text put before each indexed chunk (e5: 'passage: ', nomic: 'search_document: ').",
    ),
    # -- the SQL store (mcpd.stores.sql); its SQLite file is in --data-dir --
    Knob(
        "db_url",
        "DB_URL",
        parse.db_url,
        None,
        "SQLAlchemy URL of the SQL store: sqlite:///PATH or mysql+pymysql://USER@HOST:3306/DB "
        "(MySQL 8 / MariaDB 10.11+). Default: sqlite:///DATA_DIR/mcpd.sqlite3.",
    ),
    Knob(
        "db_password",
        "DB_PASSWORD",
        parse.text,
        None,
        "Password of the --db-url user; shows in ps as a flag: prefer DB_PASSWORD or --db-password-file.",
    ),
    Knob(
        "db_password_file",
        "DB_PASSWORD_FILE",
        parse.text,
        None,
        "File holding the --db-url user's password (its first line).",
    ),
    Knob("db_pool_size", "DB_POOL_SIZE", parse.positive_int, 5, "Connections the SQL store keeps open."),
    Knob(
        "db_max_overflow",
        "DB_MAX_OVERFLOW",
        parse.count,
        5,
        "Connections the SQL store may open beyond --db-pool-size under load; its thread pool has "
        "--db-pool-size + --db-max-overflow threads.",
    ),
    Knob(
        "db_pool_recycle",
        "DB_POOL_RECYCLE",
        parse.seconds,
        3600.0,
        "Seconds after which a pooled connection is replaced (keep it below MySQL's wait_timeout).",
    ),
    Knob(
        "db_pool_pre_ping",
        "DB_POOL_PRE_PING",
        parse.boolean,
        True,
        "Test a pooled connection before each use, so a restarted server is reconnected to (1 or 0).",
    ),
    Knob(
        "db_timeout",
        "DB_TIMEOUT",
        parse.seconds,
        5.0,
        "Seconds to connect to the database or wait for a lock before a call is answered that it is unavailable.",
    ),
    Knob(
        "db_statement_timeout",
        "DB_STATEMENT_TIMEOUT",
        parse.seconds,
        10.0,
        "Longest a single SQL statement may run (MariaDB max_statement_time, MySQL max_execution_time).",
    ),
    # -- Redis (mcpd.stores.redis): shared state of several instances, the cache pack --
    Knob(
        "redis_url",
        "REDIS_URL",
        parse.redis_url,
        None,
        "Redis for the state several instances share (rate-limit buckets, tasks, sessions) and the "
        "cache pack: redis://HOST:6379/DB or rediss:// (TLS). Default: all of it in this process.",
    ),
    Knob(
        "redis_password",
        "REDIS_PASSWORD",
        parse.text,
        None,
        "Redis password (AUTH; with a user name in --redis-url, an ACL user's). Shows in ps as a "
        "flag: prefer REDIS_PASSWORD or --redis-password-file.",
    ),
    Knob(
        "redis_password_file",
        "REDIS_PASSWORD_FILE",
        parse.text,
        None,
        "File holding the Redis password (its first line).",
    ),
    Knob(
        "redis_ca_file",
        "REDIS_CA_FILE",
        parse.text,
        None,
        "PEM file of the CA certificates that a rediss:// server's certificate is checked against "
        "(default: the system's).",
    ),
    Knob(
        "redis_timeout",
        "REDIS_TIMEOUT",
        parse.seconds,
        2.0,
        "Seconds to connect to Redis or wait for an answer before a call is answered that it is unavailable.",
    ),
    Knob(
        "redis_prefix",
        "REDIS_PREFIX",
        parse.redis_prefix,
        "mcpd:",
        "Put before every Redis key and channel mcpd uses, so that several deployments can share one server.",
    ),
    # -- the cache pack's store: in this process, or Redis with --redis-url --
    Knob(
        "cache_default_ttl",
        "CACHE_DEFAULT_TTL",
        parse.positive_int,
        3600,
        "Seconds a cache key lives when cache.set or cache.incr gives no ttl.",
    ),
    Knob(
        "cache_max_ttl",
        "CACHE_MAX_TTL",
        parse.positive_int,
        604800,
        "The longest a cache key may live, in seconds; a longer ttl is capped to it.",
    ),
    Knob(
        "cache_max_value",
        "CACHE_MAX_VALUE",
        parse.positive_int,
        65536,
        "The most bytes one cached value may take as JSON text.",
    ),
    Knob(
        "cache_max_keys",
        "CACHE_MAX_KEYS",
        parse.positive_int,
        100000,
        "Keys the in-process cache holds at most, over every tenant (without --redis-url; bound "
        "Redis with its own maxmemory).",
    ),
    # -- the sql pack's data sources (mcpd.stores.sql.sources), each read-only --
    Knob(
        "sql_source",
        "SQL_SOURCES",
        parse.sql_sources,
        (),
        "A database the sql pack may read, NAME=URL: sqlite:///PATH or mysql+pymysql://USER@HOST:3306/DB "
        "(repeatable; in the environment, several separated by blanks). The first is the default. Give a "
        "password as SQL_PASSWORD_<NAME> in the environment or with --sql-password-file, not in the URL.",
        repeatable=True,
    ),
    Knob(
        "sql_password_file",
        "SQL_PASSWORD_FILES",
        parse.named_values,
        (),
        "NAME=PATH: the file holding the password (its first line) of --sql-source NAME (repeatable).",
        repeatable=True,
    ),
    Knob(
        "sql_timeout",
        "SQL_TIMEOUT",
        parse.seconds,
        10.0,
        "Longest one sql.query or sql.explain statement may run before the database stops it.",
    ),
    Knob(
        "sql_connections",
        "SQL_CONNECTIONS",
        parse.positive_int,
        4,
        "Connections (and threads) each --sql-source may use at once.",
    ),
)
