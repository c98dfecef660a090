# -*- test-case-name: tests.test_daemon -*-
"""The whole daemon from its `Settings`: the one place that picks implementations and hands
every collaborator to its constructor.

Nothing is patched onto an object after it is made. Where two parts read each other at run time
(the monitoring routes count the connections of the factory that wraps the Site serving them),
the reading is a function of names bound further down, evaluated only when a scrape asks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from mcpd.config import ConfigError, Settings, read_lines
from mcpd.interfaces import IAuditLog, INoteStore, IRuntime, ITaskBoard
from mcpd.lifecycle import Lifecycle, OrderedMultiService
from mcpd.observe.audit import AuditWriter
from mcpd.observe.health import HealthChecks, size_check, store_check, thread_pool_check
from mcpd.observe.stats import Vitals
from mcpd.protocol.engine import Engine
from mcpd.protocol.ledger import CALL, CONNECTION, REPLAY, SESSION, STREAM, SUBSCRIPTION, TASK, Ledger, Limit, share
from mcpd.protocol.session import SessionStore
from mcpd.protocol.trace import Tracer
from mcpd.protocol.vocabulary import REQUEST_METHODS
from mcpd.runtime import Runtime
from mcpd.security.layer import Security, load_allowlist, load_key_ring
from mcpd.security.policy import OriginGuard, beyond_loopback
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
from mcpd.stores.memory import TASK_CAPACITY, MemoryBucketStore, MemorySessionStore, MemoryTaskStore
from mcpd.tools.pack import BUILTIN_PACKS, PackLoadError, ToolPack, ToolRegistry, load_pack
from mcpd.transport.legacy_sse import SSEMessagesResource, SSEStreamResource
from mcpd.transport.sse import close_streams
from mcpd.transport.streamable import StreamableHTTP
from mcpd.transport.tls import EndpointError, TLSHandshakeLog, check_endpoint, is_tls
from mcpd.transport.websocket import websocket_resource
from mcpd.web.monitoring import build_monitor
from mcpd.web.site import make_site

if TYPE_CHECKING:
    from mcpd.stores.sql.config import DatabaseConfig

log = Logger(namespace="mcpd")

# The store interfaces the SQL store provides (mcpd.stores.sql): it always can (SQLite in
# --data-dir when no --db-url is given).
SQL_INTERFACES = (ITaskBoard, INoteStore)

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
        missing = [interface.__name__ for interface in pack.needs if interface not in provided]
        if missing:
            raise PackLoadError(
                f"tool pack {pack.name!r} needs {', '.join(missing)}, which this server is not configured to "
                "provide (see README, Stores)"
            )
    if needs_sql(packs):
        from mcpd.stores.sql.config import DatabaseConfigError

        try:
            sql_config(settings)
        except DatabaseConfigError as e:
            raise ConfigError(str(e)) from None
    return packs


def needs_sql(packs: Sequence[ToolPack]) -> bool:
    """Whether a pack served needs a store only the SQL store provides."""
    return any(interface in SQL_INTERFACES for pack in packs for interface in pack.needs)


def sql_config(settings: Settings) -> DatabaseConfig:
    """The SQL store's configuration; `DatabaseConfigError` naming the setting that is wrong."""
    from mcpd.stores.sql.config import DatabaseConfig, DatabaseConfigError, database_url

    password = settings.db_password
    if password is None and settings.db_password_file:
        lines = read_lines(settings.db_password_file, "--db-password-file", DatabaseConfigError)
        password = lines[0][1].strip() if lines else ""
    return DatabaseConfig(
        url=database_url(settings.db_url, settings.data_dir, password),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_recycle=settings.db_pool_recycle,
        pre_ping=settings.db_pool_pre_ping,
        timeout=settings.db_timeout,
        statement_timeout=settings.db_statement_timeout,
    )


def build_stores(settings: Settings, packs: Sequence[ToolPack], stores: StoreSet, reactor: Any) -> list[Any]:
    """The services of the stores the packs need, each registered in ``stores`` by the
    interfaces it provides. Nothing is imported or opened for a store no pack needs."""
    services: list[Any] = []
    if needs_sql(packs):
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
    return services


def provided_interfaces(settings: Settings) -> frozenset[Any]:
    """The interfaces packs may ask their context for (``ctx.store(IThing)``) under these
    settings: the daemon's description of itself, the SQL store's, and each store whose knobs
    are set."""
    return frozenset({IRuntime, *SQL_INTERFACES})


def check_settings(settings: Settings, reactor: Any) -> None:
    """Refuse, before anything starts, what would fail later: a file mcpd appends to that
    cannot be opened, a listener's TLS files, the key and allowlist files (`ConfigError`)."""
    for flag, path in (("--trace-file", settings.trace_file), ("--logfile", settings.logfile)):
        if path:
            try:
                with open(path, "a", encoding="utf-8"):
                    pass
            except OSError as e:
                raise ConfigError(f"{flag} {path}: cannot write it ({e.strerror})") from None
    if settings.stdio:
        return
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


def vector_stores(settings: Settings, reactor: Any) -> tuple[Any, Any]:
    """The search index and (when --embedding-url is given) the embedding service that the kb and
    memory packs use, built from the settings; both are services for the tree. Imported here, not
    at the top: a daemon serving other packs loads none of it (and pymilvus only ever loads in the
    index's threads)."""
    from mcpd.stores.milvus import MilvusIndex

    index = MilvusIndex(settings.index_uri(), reactor, token=settings.milvus_token, timeout=settings.milvus_timeout)
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
    pool = ThreadPool(minthreads=0, maxthreads=settings.threads, name="mcpd-tools")
    ledger = build_ledger(settings)
    tracer = Tracer(settings.trace_file) if settings.trace_file else None
    _add(root, "heap-freeze", HeapFreezeService(reactor))
    _add(root, "thread-pool", ThreadPoolService(pool, reactor))
    # The stores start before the engine and stop after it has cancelled the calls in flight.
    for service in build_stores(settings, packs, stores, reactor):
        service.setServiceParent(root)
    if tracer is not None:
        # Stops after the engine: every answer written at shutdown is in the trace.
        _add(root, "trace", TraceService(tracer))
    if settings.stdio:
        engine = _engine(settings, reactor, registry, runtime, pool, ledger, tracer)
        # Children stop in reverse order: the transport, then the engine's calls, then the pool.
        _add(root, "engine", EngineService(engine))
        stdio = StdioService(engine, settings.max_message_size, settings.max_write_buffer, reactor)
        _add(root, "stdio", stdio)
        # Calls in flight finish (or are answered "shutting down"), then stdout is flushed.
        _drain(lifecycle, settings, reactor, engine, connections=stdio.connections).setServiceParent(root)
        ReadinessService(lifecycle, reactor).setServiceParent(root)
        return root

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
        MemoryBucketStore(reactor),
        lifecycle=lifecycle,
        ledger=ledger,
        persist_audit=audit_writer.add if audit_writer is not None else None,
    )
    sessions = SessionStore(reactor, settings.session_timeout, ledger, MemorySessionStore())
    # Legacy HTTP+SSE sessions live in a store of their own: ids never cross transports.
    sse_sessions = SessionStore(reactor, settings.session_timeout, ledger, MemorySessionStore())
    health = HealthChecks(
        [
            thread_pool_check(pool, reactor, reactor),
            size_check("sessions", sessions.__len__, "session(s)"),
            size_check("sse_sessions", sse_sessions.__len__, "session(s)"),
            # The stores behind the packs (mcpd.interfaces.IStore): a required check each.
            *(store_check(store, required=True) for store in stores),
        ]
    )
    # Read at scrape time; `engine`, `site`, `websockets` and `guarded` are bound below.
    vitals = Vitals(
        uptime=runtime.uptime,
        in_flight=lambda: engine.in_flight,
        pool_queue_depth=lambda: pool._queue.qsize(),
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
        tool_filter=policy,
        entry_filter=policy.allows_entry if policy is not None else None,
        observers=(*monitor.observers, security.audit.observe),
        message_limit=security.message_limit,
    )
    _add(root, "engine", EngineService(engine))
    _add(root, "sessions", SessionService(sessions))
    _add(root, "sse-sessions", SessionService(sse_sessions))
    streamable = StreamableHTTP(engine, sessions, settings.max_message_size, settings.sse_replay)
    websockets = websocket_resource(
        engine, settings.max_message_size, settings.sse_keepalive, message_timeout=settings.request_timeout
    )
    site = make_site(
        OriginGuard(streamable),
        runtime,
        {
            b"sse": OriginGuard(SSEStreamResource(sse_sessions)),
            b"messages": OriginGuard(SSEMessagesResource(engine, sse_sessions, settings.max_message_size)),
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
    # Last: ready once everything above has started, and the first to hear of a shutdown.
    ReadinessService(lifecycle, reactor).setServiceParent(root)
    security.warn_about([d for d in settings.http_endpoints() if beyond_loopback(d)])
    return root


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
    pool: ThreadPool,
    ledger: Ledger,
    tracer: Tracer | None,
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
        task_store=MemoryTaskStore(),
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


def _close_websockets(endpoint: Any) -> int:
    count = len(endpoint.open)
    endpoint.close_all()
    return count
