# -*- test-case-name: tests.test_daemon -*-
"""The whole daemon from its `Settings`: the one place that picks implementations and hands
every collaborator to its constructor.

Nothing is patched onto an object after it is made. Where two parts read each other at run time
(the monitoring routes count the connections of the factory that wraps the Site serving them),
the reading is a function of names bound further down, evaluated only when a scrape asks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.logger import Logger

from mcpd.config import ConfigError, Settings, read_lines
from mcpd.interfaces import (
    IAuditLog,
    IBucketStore,
    ICache,
    IKnowledgeBase,
    IMemoryStore,
    INoteStore,
    IRuntime,
    ISessionStore,
    ISQLSources,
    IStore,
    ITaskBoard,
    ITaskStore,
    IVectorIndex,
)
from mcpd.lifecycle import Lifecycle, OrderedMultiService
from mcpd.protocol.engine import Engine
from mcpd.protocol.ledger import CALL, CONNECTION, REPLAY, SESSION, STREAM, SUBSCRIPTION, TASK, Ledger, Limit, share
from mcpd.protocol.session import SessionStore
from mcpd.protocol.trace import Tracer
from mcpd.runtime import Runtime
from mcpd.services import (
    DrainService,
    EngineService,
    HealthService,
    HeapFreezeService,
    ListenerService,
    ReadinessService,
    ReloadService,
    SessionService,
    StdioService,
    ThreadPoolService,
    TraceService,
)
from mcpd.stores import StoreSet
from mcpd.stores.memory import TASK_CAPACITY, MemoryTaskStore
from mcpd.stores.opening import BackgroundOpening, OpenAtExit, Opened
from mcpd.stores.threads import ToolThreads
from mcpd.tools.pack import BUILTIN_PACKS, PackLoadError, ToolPack, ToolRegistry, load_pack

if TYPE_CHECKING:
    from mcpd.cluster.service import Cluster
    from mcpd.stores.redis import RedisConnection
    from mcpd.stores.redis.config import RedisConfig
    from mcpd.stores.sql.config import DatabaseConfig
    from mcpd.stores.sql.sources import SourceConfig
    from mcpd.transport.websocket import WebSocketEndpoint

log = Logger(namespace="mcpd")

# The store interfaces the SQL store provides (mcpd.stores.sql): it always can (SQLite in
# --data-dir when no --db-url is given).
SQL_INTERFACES = (ITaskBoard, INoteStore)
# The store interfaces of the knowledge base and memories: SQL records, searched through the
# index (mcpd.stores.knowledge); provided where pymilvus can reach the index.
INDEX_INTERFACES = (IKnowledgeBase, IMemoryStore)

# Resource subscriptions held at once (resources/subscribe and subscriptions/listen URIs).
MAX_SUBSCRIPTIONS = 10_000
# Bytes of SSE events kept for Last-Event-ID replay, over every session.
REPLAY_BUDGET = 256 * 1024 * 1024


def toolsets_of(settings: Settings) -> tuple[str, ...]:
    """--toolsets, or by default every built-in pack whose stores this server provides."""
    if settings.toolsets is not None:
        return settings.toolsets
    provided = provided_interfaces(settings)
    return tuple(name for name in BUILTIN_PACKS if set(load_pack(name).needs) <= provided)


def load_packs(settings: Settings) -> list[ToolPack]:
    """Every configured pack (``--toolsets``, then ``--tool-pack``); `PackLoadError` (a
    `ConfigError`) naming the one that cannot be served, `ConfigError` for the SQL store's
    settings when a pack needs it."""
    toolsets = toolsets_of(settings)
    for name in toolsets:
        if name not in BUILTIN_PACKS:
            raise PackLoadError(
                f"--toolsets: unknown toolset {name!r} (built-in: {', '.join(sorted(BUILTIN_PACKS))}); "
                "load other packs with --tool-pack"
            )
    packs = [load_pack(reference) for reference in (*toolsets, *settings.tool_pack)]
    ToolRegistry(packs)  # names clash across packs: refused here, before anything starts
    provided = provided_interfaces(settings)
    for pack in packs:
        missing = [interface for interface in pack.needs if interface not in provided]
        if missing:
            how = "; ".join(_HOW_TO_PROVIDE[i] for i in missing if i in _HOW_TO_PROVIDE)
            raise PackLoadError(
                f"tool pack {pack.name!r} needs {', '.join(i.__name__ for i in missing)}, which this server is "
                f"not configured to provide ({how or 'see README, Stores'})"
            )
    if needs_sql(packs):
        from mcpd.stores.sql.config import DatabaseConfigError, sqlite_path

        try:
            if settings.db_url is None and not settings.db_password_file:
                sqlite_path(settings.data_dir)  # the default: no URL to parse (nor SQLAlchemy to load)
            else:
                sql_config(settings)
        except DatabaseConfigError as e:
            raise ConfigError(str(e)) from None
    if any(ISQLSources in pack.needs for pack in packs):
        from mcpd.stores.sql.sources import SourceConfigError

        try:
            sql_sources_config(settings)
        except SourceConfigError as e:
            raise ConfigError(str(e)) from None
    return packs


def needs_sql(packs: Sequence[ToolPack]) -> bool:
    """Whether a pack served needs a store only the SQL store provides (or one kept in it)."""
    return needs_index(packs) or any(interface in SQL_INTERFACES for pack in packs for interface in pack.needs)


def needs_index(packs: Sequence[ToolPack]) -> bool:
    """Whether a pack served needs the search index (the kb and memory packs)."""
    return any(interface in INDEX_INTERFACES for pack in packs for interface in pack.needs)


def index_available(settings: Settings) -> bool:
    """Whether the search index can run: pymilvus installed, and Milvus Lite too for a local
    index. Looked up without importing either (importing pymilvus takes a second)."""
    import importlib.util

    from mcpd.stores.milvus import is_local

    needed = ["pymilvus", "milvus_lite"] if is_local(settings.index_uri()) else ["pymilvus"]
    return all(importlib.util.find_spec(name) is not None for name in needed)


def read_secrets(settings: Settings, *, database_only: bool = False) -> Settings:
    """``settings`` with the password files given read into the passwords they hold, each file
    once: start-up needs a password in several places (checking the settings, the store, the
    cluster's identity), and a file read again may have changed or gone; a pipe, such as a
    shell's ``<(...)``, gives its text once and then blocks the next reader. `ConfigError`
    naming the file that cannot be read. ``database_only``: the SQL store's file alone, for
    ``mcpd migrate`` and ``mcpd reindex``, which share the daemon's ``--config`` file but reach
    neither Redis nor the sql pack's sources (their files may be the daemon's user's alone)."""
    changes: dict[str, Any] = {}
    if settings.db_password is None and settings.db_password_file:
        changes["db_password"] = _first_line(settings.db_password_file, "--db-password-file")
    if database_only:
        return attrs.evolve(settings, **changes) if changes else settings
    if settings.redis_url is not None and settings.redis_password is None and settings.redis_password_file:
        changes["redis_password"] = _first_line(settings.redis_password_file, "--redis-password-file")
    if settings.sql_password_file:
        names = {name for name, _url in settings.sql_source}
        passwords = dict(settings.sql_passwords)
        for name, path in settings.sql_password_file:
            if name not in names:
                raise ConfigError(f"--sql-password-file {name}: there is no --sql-source {name}")
            passwords[name] = _first_line(path, f"--sql-password-file {name}")
        changes["sql_passwords"] = tuple(passwords.items())
        changes["sql_password_file"] = ()
    return attrs.evolve(settings, **changes) if changes else settings


def _first_line(path: str, option: str) -> str:
    """A password file's password: its first line, stripped ("" for an empty file)."""
    lines = read_lines(path, option)
    return lines[0][1].strip() if lines else ""


def sql_config(settings: Settings) -> DatabaseConfig:
    """The SQL store's configuration (its password file read by `read_secrets`);
    `DatabaseConfigError` naming the setting that is wrong."""
    from mcpd.stores.sql.config import DatabaseConfig, database_url

    return DatabaseConfig(
        url=database_url(settings.db_url, settings.data_dir, settings.db_password),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_recycle=settings.db_pool_recycle,
        pre_ping=settings.db_pool_pre_ping,
        timeout=settings.db_timeout,
        statement_timeout=settings.db_statement_timeout,
    )


def sql_sources_config(settings: Settings) -> list[SourceConfig]:
    """The sql pack's data sources (``--sql-source``), with their passwords (their files read by
    `read_secrets`); `SourceConfigError` naming the one that is wrong."""
    from mcpd.stores.sql.sources import SourceConfigError, source_config

    names = [name for name, _url in settings.sql_source]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise SourceConfigError(f"--sql-source: {', '.join(twice)} named more than once")
    passwords = dict(settings.sql_passwords)
    return [source_config(name, url, passwords.get(name)) for name, url in settings.sql_source]


def redis_settings(settings: Settings) -> RedisConfig | None:
    """How to reach Redis (None without --redis-url; its password file read by `read_secrets`);
    `ConfigError` naming the setting that is wrong."""
    if settings.redis_url is None:
        return None
    from mcpd.stores.redis.config import RedisConfigError, redis_config

    if settings.redis_ca_file:
        read_lines(settings.redis_ca_file, "--redis-ca-file")
    try:
        return redis_config(
            settings.redis_url,
            password=settings.redis_password,
            ca_file=settings.redis_ca_file,
            timeout=settings.redis_timeout,
            prefix=settings.redis_prefix,
        )
    except RedisConfigError as e:
        raise ConfigError(str(e)) from None


@attrs.frozen
class SharedState:
    """The state several instances must share (`mcpd.interfaces`): in this process by default,
    in Redis with --redis-url."""

    buckets: IBucketStore
    tasks: ITaskStore
    # Legacy sessions, by transport (their ids never cross).
    sessions: ISessionStore
    sse_sessions: ISessionStore


def redis_connection(settings: Settings, reactor: Any) -> RedisConnection | None:
    """The connection to Redis (a service for the tree), or None without --redis-url."""
    config = redis_settings(settings)
    if config is None:
        return None
    from mcpd.stores.redis import RedisConnection

    connection = RedisConnection(config, reactor)
    connection.setName("redis")
    return connection


def shared_state(settings: Settings, reactor: Any, redis: RedisConnection | None) -> SharedState:
    """The buckets, task records and session records: Redis' when connected to one."""
    if redis is None:
        from mcpd.stores.memory import MemoryBucketStore, MemorySessionStore

        return SharedState(MemoryBucketStore(reactor), MemoryTaskStore(), MemorySessionStore(), MemorySessionStore())
    from mcpd.stores.redis.buckets import RedisBucketStore
    from mcpd.stores.redis.sessions import RedisSessionStore
    from mcpd.stores.redis.tasks import RedisTaskStore

    return SharedState(
        RedisBucketStore(redis),
        RedisTaskStore(redis),
        RedisSessionStore(redis, reactor, settings.session_timeout, kind="streamable"),
        RedisSessionStore(redis, reactor, settings.session_timeout, kind="sse"),
    )


def cache_store(settings: Settings, reactor: Any, redis: RedisConnection | None) -> Any:
    """The cache pack's store: Redis' with --redis-url, else this process's."""
    limits = {
        "default_ttl": settings.cache_default_ttl,
        "max_ttl": settings.cache_max_ttl,
        "max_value": settings.cache_max_value,
    }
    if redis is None:
        from mcpd.stores.memory import MemoryCache

        return MemoryCache(reactor, max_keys=settings.cache_max_keys, **limits)
    from mcpd.stores.redis.cache import RedisCache

    return RedisCache(redis, **limits)


def build_stores(
    settings: Settings,
    packs: Sequence[ToolPack],
    stores: StoreSet,
    reactor: Any,
    redis: RedisConnection | None = None,
) -> list[Any]:
    """The services of the stores the packs need, each registered in ``stores`` by the
    interfaces it provides. Nothing is imported or opened for a store no pack needs; ``redis``
    (--redis-url) runs whenever it is given: it holds the state several instances share."""
    services: list[Any] = []
    if redis is not None:
        stores.add(redis, ())
        services.append(redis)
    if any(ICache in pack.needs for pack in packs):
        stores.add(cache_store(settings, reactor, redis), (ICache,))
    if needs_sql(packs) and settings.stdio:
        # Off the first answer's path (mcpd.stores.opening): its imports and migrations are most
        # of a --stdio start-up.
        index = needs_index(packs)
        interfaces = (*SQL_INTERFACES, IAuditLog, *(INDEX_INTERFACES if index else ()))
        opening = BackgroundOpening(
            "database",
            interfaces,
            lambda: _open_sql_store(settings, reactor, index),
            reactor,
            # The audit writer's: its records wait in memory until the store opens.
            housekeeping={IAuditLog: ("append", "prune")},
            # At exit only what is still to be written opens it: the next pruning is another
            # process's.
            dropped_at_exit={IAuditLog: ("prune",)},
        )
        for interface, stand_in in opening.stand_ins.items():
            stores.add(stand_in, () if interface is IStore else (interface,))
        opening.setName("database")
        services.append(opening)
    elif needs_sql(packs):
        from mcpd.stores.sql.audit import SQLAuditLog
        from mcpd.stores.sql.database import SQLDatabase
        from mcpd.stores.sql.notes import SQLNoteStore
        from mcpd.stores.sql.service import SQLStoreService
        from mcpd.stores.sql.tasks import SQLTaskBoard

        database = SQLDatabase(sql_config(settings), reactor)
        stores.add(database, ())
        stores.add(SQLTaskBoard(database), (ITaskBoard,))
        stores.add(SQLNoteStore(database), (INoteStore,))
        stores.add(SQLAuditLog(database), (IAuditLog,))
        service = SQLStoreService(database, reactor)
        service.setName("database")
        services.append(service)
        if needs_index(packs):
            services += knowledge_stores(settings, database, stores, reactor)
    if any(ISQLSources in pack.needs for pack in packs):
        from mcpd.stores.sql.sources import SQLSources, SQLSourcesService

        sources = SQLSources(sql_sources_config(settings), settings.sql_timeout, settings.sql_connections, reactor)
        stores.add(sources, (ISQLSources,))
        sources_service = SQLSourcesService(sources, reactor)
        sources_service.setName("sql-sources")
        services.append(sources_service)
    return services


def _open_sql_store(settings: Settings, reactor: Any, index: bool = False) -> Opened:
    """In a thread: import, build and open the SQL store (`BackgroundOpening`); with ``index``,
    the knowledge store on it too (its index, embedding service and re-indexer run with it)."""
    from mcpd.stores.sql.audit import SQLAuditLog
    from mcpd.stores.sql.database import SQLDatabase
    from mcpd.stores.sql.notes import SQLNoteStore
    from mcpd.stores.sql.service import SQLStoreService
    from mcpd.stores.sql.tasks import SQLTaskBoard

    database = SQLDatabase(sql_config(settings), reactor)
    database.open()
    service: Any = SQLStoreService(database, reactor)
    service.setName("database")
    providers: dict[Any, Any] = {
        IStore: database,
        ITaskBoard: SQLTaskBoard(database),
        INoteStore: SQLNoteStore(database),
        IAuditLog: SQLAuditLog(database),
    }
    if index:
        # Stopped in reverse: the re-indexer and the index before the database.
        both = OrderedMultiService()
        service.setServiceParent(both)
        found = StoreSet()
        for child in knowledge_stores(settings, database, found, reactor):
            child.setServiceParent(both)
        providers.update((interface, found.get(interface)) for interface in INDEX_INTERFACES)
        service = both
    return service, providers


def knowledge_stores(settings: Settings, database: Any, stores: StoreSet, reactor: Any) -> list[Any]:
    """The search index, the embedding service and the re-indexer, and the knowledge store the
    kb and memory packs use (registered in ``stores``, not required: with the index down mcpd is
    degraded, not unhealthy)."""
    from mcpd.stores.knowledge import KnowledgeStore
    from mcpd.stores.reindex import Reindexer
    from mcpd.stores.retrieval import Retriever
    from mcpd.stores.sql.knowledge import SQLKnowledge

    index, embedder = vector_stores(settings, reactor, connect_at_start=False)
    knowledge = KnowledgeStore(SQLKnowledge(database), Retriever(index, embedder), shown_index_uri(settings), reactor)
    stores.add(knowledge, INDEX_INTERFACES, required=False)
    if embedder is not None:
        stores.watch(embedder)
    reindexer = Reindexer(knowledge, reactor)
    reindexer.setName("reindexer")
    return [index, *([embedder] if embedder is not None else []), reindexer]


def shown_index_uri(settings: Settings) -> str:
    """Where the index is, as server.info shows it (no credentials)."""
    from urllib.parse import urlsplit, urlunsplit

    uri = settings.index_uri()
    parts = urlsplit(uri)
    if parts.password or parts.username:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return uri


def provided_interfaces(settings: Settings) -> frozenset[Any]:
    """The interfaces packs may ask their context for (``ctx.store(IThing)``) under these
    settings: the daemon's description of itself, the cache (in process or in Redis), the SQL
    store's, and each store whose knobs are set."""
    provided = {IRuntime, ICache, *SQL_INTERFACES}
    if settings.sql_source:
        provided.add(ISQLSources)
    if index_available(settings):
        provided.update(INDEX_INTERFACES)
    return frozenset(provided)


# What a pack's missing store asks the operator for.
_HOW_TO_PROVIDE = {ISQLSources: "give it a database to read with --sql-source NAME=URL"}


def check_settings(settings: Settings, reactor: Any) -> None:
    """Refuse, before anything starts, what would fail later: a file mcpd appends to that
    cannot be opened, the Redis settings, a listener's TLS files, the key and allowlist files
    (`ConfigError`)."""
    for flag, path in (("--trace-file", settings.trace_file), ("--logfile", settings.logfile)):
        if path:
            try:
                with open(path, "a", encoding="utf-8"):
                    pass
            except OSError as e:
                raise ConfigError(f"{flag} {path}: cannot write it ({e.strerror})") from None
    redis_settings(settings)
    if settings.stdio:
        return
    from mcpd.security.layer import load_allowlist, load_key_ring
    from mcpd.transport.tls import EndpointError, check_endpoint

    for description in settings.http_endpoints():
        try:
            check_endpoint(reactor, description)
        except EndpointError as e:
            raise ConfigError(f"--listen {description!r}: {e}") from None
    load_key_ring(settings)
    load_allowlist(settings)


def build_ledger(settings: Settings) -> Ledger:
    """The budgets every account is held to (`mcpd.protocol.ledger`): the server-wide caps, and
    ``--share-per-key`` percent of each for one key (one address without keys). stdio serves
    one client: only its streams and subscriptions are bounded."""
    percent = settings.share_per_key
    if settings.stdio:
        percent = 100
    limits = {
        STREAM: Limit(per_account=settings.max_streams_per_key),
        SUBSCRIPTION: Limit(MAX_SUBSCRIPTIONS, share(MAX_SUBSCRIPTIONS, percent)),
        # The task store enforces its own capacity; the ledger the shares of it.
        TASK: Limit(per_account=share(TASK_CAPACITY, percent)),
    }
    if not settings.stdio:
        limits[SESSION] = Limit(settings.max_sessions, share(settings.max_sessions, percent))
        # The capacity factory enforces --max-connections itself; the ledger the shares of it.
        limits[CONNECTION] = Limit(per_account=share(settings.max_connections, percent))
        # As many calls in flight as connections, whatever carries them: a WebSocket or an /sse
        # session can carry many at once, an HTTP connection one.
        limits[CALL] = Limit(per_account=share(settings.max_connections, percent))
        limits[REPLAY] = Limit(REPLAY_BUDGET, share(REPLAY_BUDGET, percent))
    return Ledger(limits)


def vector_stores(settings: Settings, reactor: Any, connect_at_start: bool = True) -> tuple[Any, Any]:
    """The search index and (when --embedding-url is given) the embedding service that the kb and
    memory packs use, built from the settings; both are services for the tree. Imported here, not
    at the top: a daemon serving other packs loads none of it (and pymilvus only ever loads in the
    index's threads)."""
    from mcpd.stores.milvus import MilvusIndex

    index = MilvusIndex(
        settings.index_uri(),
        reactor,
        token=settings.milvus_token,
        timeout=settings.milvus_timeout,
        prefix=settings.milvus_prefix,
        connect_at_start=connect_at_start,
    )
    index.setName("milvus")
    if not settings.embedding_url:
        return index, None
    from mcpd.stores.embedders import make_embedder

    assert settings.embedding_model is not None  # resolve() requires it with the URL
    embedder = make_embedder(
        settings.embedding_url,
        settings.embedding_model,
        reactor,
        api=settings.embedding_api,
        api_key=settings.embedding_api_key,
        batch=settings.embedding_batch,
        timeout=settings.embedding_timeout,
        retries=settings.embedding_retries,
        query_prefix=settings.embedding_query_prefix,
        document_prefix=settings.embedding_document_prefix,
    )
    embedder.setName("embedder")
    return index, embedder


def build_service(settings: Settings, reactor: Any, packs: Sequence[ToolPack] | None = None) -> OrderedMultiService:
    """The whole daemon as one service tree, started in order and stopped in reverse
    (`mcpd.lifecycle.OrderedMultiService`): heap freeze, thread pool, engine, session stores,
    reload, health checks, drain, listeners, readiness. ``packs`` default to those
    ``settings`` name."""
    if packs is None:
        packs = load_packs(settings)
    # The toolsets actually served (the default: every built-in pack whose stores run).
    settings = attrs.evolve(settings, toolsets=toolsets_of(settings))
    root = OrderedMultiService()
    lifecycle = Lifecycle()
    registry = ToolRegistry(packs)
    transports = ["stdio"] if settings.stdio else ["streamable-http", "legacy-sse", "websocket"]
    stores = StoreSet()
    runtime = Runtime(settings, registry, stores=stores, transports=transports)
    pool = ToolThreads(settings.threads, "mcpd-tools", reactor)
    ledger = build_ledger(settings)
    tracer = Tracer(settings.trace_file) if settings.trace_file else None
    _add(root, "heap-freeze", HeapFreezeService(reactor))
    _add(root, "thread-pool", ThreadPoolService(pool, reactor))
    redis = redis_connection(settings, reactor)
    shared = shared_state(settings, reactor, redis)
    # The stores start before the engine and stop after it has cancelled the calls in flight.
    for service in build_stores(settings, packs, stores, reactor, redis):
        service.setServiceParent(root)
    if tracer is not None:
        # Stops after the engine: every answer written at shutdown is in the trace.
        _add(root, "trace", TraceService(tracer))
    if settings.stdio:
        observers = _stdio_audit(root, settings, reactor, stores)
        opening = root.namedServices.get("database")
        if isinstance(opening, BackgroundOpening):
            # Stops before the audit writer: what it has left to write opens the store.
            _add(root, "open-at-exit", OpenAtExit(opening))
        engine = _engine(settings, reactor, registry, runtime, pool, ledger, tracer, shared.tasks, observers=observers)
        # Children stop in reverse order: the transport, then the engine's calls, then the pool.
        _add(root, "engine", EngineService(engine))
        stdio = StdioService(engine, settings.max_message_size, settings.max_write_buffer, reactor)
        _add(root, "stdio", stdio)
        if isinstance(opening, BackgroundOpening):
            # The SQL store opens once the client is quiet (mcpd.stores.opening).
            opening.activity = stdio.reads
        # Calls in flight finish (or are answered "shutting down"), then stdout is flushed.
        _drain(lifecycle, settings, reactor, engine, connections=stdio.connections).setServiceParent(root)
        ReadinessService(lifecycle, reactor, _first_connections(redis)).setServiceParent(root)
        return root
    _add_http(root, settings, reactor, lifecycle, registry, runtime, stores, pool, ledger, tracer, shared, redis, packs)
    return root


def _stdio_audit(
    root: OrderedMultiService, settings: Settings, reactor: Any, stores: StoreSet
) -> tuple[Callable[[Any], None], ...]:
    """Under --stdio, the engine's observer that persists the tool calls to the audit trail as
    over HTTP (the caller ``local``), when the SQL store runs (server.audit). The writer starts
    at once; its records wait in memory until the store has opened in the background."""
    audit_log = stores.get(IAuditLog)
    if audit_log is None:
        return ()
    from mcpd.observe.audit import AuditTrail, AuditWriter

    writer = AuditWriter(audit_log, reactor, retention_days=settings.audit_retention)
    _add(root, "audit-writer", writer)
    # No log lines: stdio has never written them (the client's own log is its stderr).
    trail = AuditTrail(settings.audit_buffer, emit=False, persist=writer.add)
    return (trail.observe,)


def _add_http(
    root: OrderedMultiService,
    settings: Settings,
    reactor: Any,
    lifecycle: Lifecycle,
    registry: ToolRegistry,
    runtime: Runtime,
    stores: StoreSet,
    pool: ToolThreads,
    ledger: Ledger,
    tracer: Tracer | None,
    shared: SharedState,
    redis: RedisConnection | None,
    packs: Sequence[ToolPack],
) -> None:
    """The HTTP side of the tree: the policy layer, the transports, the monitoring routes and the
    listeners. Imported here, not at the top: a --stdio daemon loads none of it (twisted.web,
    Klein, the WebSocket and TLS libraries, Prometheus), which is most of its start-up time."""
    from mcpd.observe.audit import AuditWriter
    from mcpd.observe.health import HealthChecks, size_check, store_check, thread_pool_check
    from mcpd.observe.stats import Vitals
    from mcpd.protocol.vocabulary import REQUEST_METHODS
    from mcpd.security.layer import Security
    from mcpd.security.policy import OriginGuard, beyond_loopback
    from mcpd.transport.legacy_sse import SSEMessagesResource, SSEStreamResource
    from mcpd.transport.sse import close_streams
    from mcpd.transport.streamable import StreamableHTTP
    from mcpd.transport.tls import TLSHandshakeLog, is_tls
    from mcpd.transport.websocket import websocket_resource
    from mcpd.web.monitoring import build_monitor
    from mcpd.web.site import make_site

    # The audit trail persisted in the SQL store, when it runs (server.audit): written after the
    # store starts and flushed before it stops.
    audit_log = stores.get(IAuditLog)
    audit_writer = None
    if audit_log is not None:
        audit_writer = AuditWriter(audit_log, reactor, retention_days=settings.audit_retention)
        _add(root, "audit-writer", audit_writer)
    # One policy layer around every HTTP transport: per request (keys, addresses, Origin/CORS,
    # body size, rate and stream limits) and per connection (caps, slow clients).
    security = Security(
        settings,
        reactor,
        shared.buckets,
        lifecycle=lifecycle,
        ledger=ledger,
        persist_audit=audit_writer.add if audit_writer is not None else None,
    )
    sessions = SessionStore(reactor, settings.session_timeout, ledger, shared.sessions)
    # Legacy HTTP+SSE sessions live in a store of their own: ids never cross transports.
    sse_sessions = SessionStore(reactor, settings.session_timeout, ledger, shared.sse_sessions)
    health = HealthChecks(
        [
            thread_pool_check(pool, reactor),
            size_check("sessions", sessions.__len__, "session(s)"),
            size_check("sse_sessions", sse_sessions.__len__, "session(s)"),
            # The stores behind the packs (mcpd.interfaces.IStore): a check each, required but
            # for the search index and the team's own databases (sql pack): mcpd serves on while
            # one of those is down; the embedding service's is not required either.
            *(
                store_check(store, required=stores.required(store) and not ISQLSources.providedBy(store))
                for store in stores
            ),
            *(store_check(reporter, name="embedding") for reporter in stores.watched()),
        ]
    )
    # Read at scrape time; `engine`, `site`, `websockets` and `guarded` are bound below.
    vitals = Vitals(
        uptime=runtime.uptime,
        in_flight=lambda: engine.in_flight,
        pool_queue_depth=pool.qsize,
        ready=lambda: lifecycle.ready,
        checks=lambda: health.last,
        connections=lambda: guarded.open_connections,
        sse_streams=lambda: len(site.sse_streams or ()),
        websockets=lambda: len(websockets.open),
        refusals=lambda: security.gate.refusals + ledger.refused,
        refused_at_capacity=lambda: guarded.refused_at_capacity,
        dropped_slow_readers=lambda: guarded.dropped_slow_readers,
        holdings=ledger.holdings,
    )
    # /health /ready /stats /metrics /dashboard, counted in the engine's observer hook.
    monitor = build_monitor(runtime, health, lifecycle, vitals, REQUEST_METHODS)
    for store in stores:  # the stores' own series
        for collector in store.collectors():
            monitor.metrics.registry.register(collector)
    if audit_writer is not None:
        monitor.metrics.registry.register(audit_writer)
    policy = security.scope_policy(registry)
    engine = _engine(
        settings,
        reactor,
        registry,
        runtime,
        pool,
        ledger,
        tracer,
        shared.tasks,
        tool_filter=policy,
        entry_filter=policy.allows_entry if policy is not None else None,
        observers=(*monitor.observers, security.audit.observe),
        message_limit=security.message_limit,
    )
    _add(root, "engine", EngineService(engine))
    monitor.metrics.registry.register(engine.tasks.unsaved)  # task statuses waiting for the store
    # Several instances as one: sessions, tasks and changes through Redis (None alone).
    cluster = _cluster(settings, reactor, packs, redis, engine, sessions, sse_sessions)
    if cluster is not None:
        _add(root, "cluster", cluster)
        health.checks.append(cluster.health_check())
    _add(root, "sessions", SessionService(sessions))
    _add(root, "sse-sessions", SessionService(sse_sessions))
    streamable = StreamableHTTP(
        engine,
        sessions,
        settings.max_message_size,
        settings.sse_replay,
        journal=cluster.sessions if cluster is not None else None,
    )
    sse_messages = SSEMessagesResource(
        engine, sse_sessions, settings.max_message_size, forward=cluster.sse.forward if cluster is not None else None
    )
    if cluster is not None:
        cluster.sse.messages = sse_messages
    # A live /sse session's messages are counted by the engine, answered in-band over the limit.
    security.gate.in_session = sse_messages.live
    websockets = websocket_resource(
        engine, settings.max_message_size, settings.sse_keepalive, message_timeout=settings.request_timeout
    )
    site = make_site(
        OriginGuard(streamable),
        runtime,
        {
            b"sse": OriginGuard(SSEStreamResource(sse_sessions)),
            b"messages": OriginGuard(sse_messages),
            b"ws": OriginGuard(websockets),
        },
        settings.sse_keepalive,
        monitor,
        request_factory=security.request_factory,
    )
    guarded = security.protect(site)
    _add(root, "reload", ReloadService(security, reactor))
    _add(root, "health-checks", HealthService(health, reactor))
    streams = site.sse_streams
    assert streams is not None
    # Stops after the listeners: calls in flight finish, then streams and connections close.
    _drain(
        lifecycle,
        settings,
        reactor,
        engine,
        close_streams=[
            lambda retry_ms: close_streams(streams, retry_ms),
            lambda _retry_ms: _close_websockets(websockets),
        ],
        connections=lambda: guarded.protocols,
    ).setServiceParent(root)
    for description in settings.http_endpoints():
        factory = TLSHandshakeLog(guarded) if is_tls(description) else guarded
        _add(root, f"listener {description}", ListenerService(description, factory, runtime, reactor))
    # Last: ready once everything above has started (and Redis answers, or its timeout has
    # passed), and the first to hear of a shutdown.
    ReadinessService(lifecycle, reactor, _first_connections(redis)).setServiceParent(root)
    security.warn_about([d for d in settings.http_endpoints() if beyond_loopback(d)])


def _cluster(
    settings: Settings,
    reactor: Any,
    packs: Sequence[ToolPack],
    redis: RedisConnection | None,
    engine: Engine,
    sessions: SessionStore,
    sse_sessions: SessionStore,
) -> Cluster | None:
    """This instance's part in a deployment sharing Redis (`mcpd.cluster`); None without
    --redis-url."""
    if redis is None:
        return None
    from mcpd.cluster.instances import store_identities
    from mcpd.cluster.service import Cluster

    sql = index = None
    if needs_sql(packs):
        config = sql_config(settings)
        sql = ("sqlite", config.url.database or "") if config.backend == "sqlite" else ("mysql", config.shown_url)
    if any(interface is IVectorIndex for pack in packs for interface in pack.needs):
        uri = settings.index_uri()
        index = ("milvus-lite", uri) if settings.milvus_uri is None else ("milvus", uri)
    return Cluster(
        redis,
        engine,
        sessions,
        sse_sessions,
        stores=store_identities(sql, index),
        listen=settings.http_endpoints(),
        replay_limit=settings.sse_replay,
        session_timeout=settings.session_timeout,
        clock=reactor,
    )


def _drain(lifecycle: Lifecycle, settings: Settings, reactor: Any, engine: Engine, **closing: Any) -> DrainService:
    """The drain at shutdown: the engine's calls finish or are answered "shutting down", then
    ``closing`` (streams, connections) closes."""
    return DrainService(
        lifecycle,
        reactor,
        settings.shutdown_timeout,
        in_flight=lambda: engine.in_flight,
        cancel_in_flight=engine.abort_in_flight,
        end_subscriptions=engine.end_subscriptions,
        **closing,
    )


def _engine(
    settings: Settings,
    reactor: Any,
    registry: ToolRegistry,
    runtime: Runtime,
    pool: ToolThreads,
    ledger: Ledger,
    tracer: Tracer | None,
    tasks: ITaskStore,
    **policy: Any,
) -> Engine:
    """The MCP engine, with the daemon's limits and ``policy`` (scopes, observers)."""
    state_key = settings.state_key.encode("utf-8") if settings.state_key is not None else None
    if state_key is None:
        log.info(
            "No --state-key: 2026-07-28 requestState is signed with a random key of this process; "
            "set STATE_KEY alike on every instance behind a load balancer"
        )
    return Engine(
        registry,
        thread_pool=pool,
        page_size=settings.page_size,
        tracer=tracer,
        client_timeout=settings.client_timeout,
        state_key=state_key,
        ledger=ledger,
        task_store=tasks,
        stores={IRuntime: runtime, **runtime.stores.providers()},
        tool_timeout=settings.tool_timeout,
        max_batch=settings.max_batch,
        max_batch_bytes=settings.max_message_size,
        clock=reactor,
        **policy,
    )


def _add(root: OrderedMultiService, name: str, service: Any) -> None:
    """Add a service with a name, so that a start-up failure says which one failed."""
    service.setName(name)
    service.setServiceParent(root)


def _first_connections(redis: RedisConnection | None) -> list[Any]:
    """What readiness waits for: Redis' first connection (at most --redis-timeout)."""
    return [redis.connected] if redis is not None else []


def _close_websockets(endpoint: WebSocketEndpoint) -> int:
    count = len(endpoint.open)
    endpoint.close_all()
    return count
