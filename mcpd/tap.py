# -*- test-case-name: tests.test_tap -*-
"""twistd wiring: command-line options become `Settings`; `makeService` builds the daemon."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mcpd._version import __version__
from mcpd.interfaces import INoteStore, ITaskBoard
from mcpd.lifecycle import DrainService, Lifecycle, OrderedMultiService, ReadinessService
from mcpd.observe import logging as mcpd_logging
from mcpd.observe.health import HealthService
from mcpd.protocol.engine import Engine
from mcpd.protocol.ledger import CALL, CONNECTION, REPLAY, SESSION, STREAM, SUBSCRIPTION, TASK, Ledger, Limit, share
from mcpd.protocol.session import SessionStore
from mcpd.protocol.tasks import TASK_CAPACITY
from mcpd.protocol.trace import Tracer
from mcpd.runtime import Runtime
from mcpd.settings import KNOBS, SettingError, Settings, read_env_file, read_lines, resolve
from mcpd.stores import StoreSet
from mcpd.stores.threads import ThreadPoolService
from mcpd.tools.pack import BUILTIN_PACKS, PackLoadError, ToolPack, ToolRegistry, load_pack
from mcpd.transport.legacy_sse import SSEMessagesResource, SSEStreamResource
from mcpd.transport.sse import close_streams
from mcpd.transport.stdio import StdioProtocol
from mcpd.transport.streamable import StreamableHTTP
from mcpd.transport.tls import EndpointError, TLSHandshakeLog, check_endpoint, is_tls
from mcpd.transport.websocket import websocket_resource
from mcpd.web.monitoring import build_monitor
from mcpd.web.policy import OriginGuard, beyond_loopback
from mcpd.web.security import ReloadService, Security, SecurityConfigError, load_allowlist, load_key_ring
from mcpd.web.site import make_site

if TYPE_CHECKING:
    from mcpd.stores.sql.config import DatabaseConfig

log = Logger(namespace="mcpd")

# Resource subscriptions held at once (resources/subscribe and subscriptions/listen URIs).
MAX_SUBSCRIPTIONS = 10_000
# Bytes of SSE events kept for Last-Event-ID replay, over every session.
REPLAY_BUDGET = 256 * 1024 * 1024


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    return "none" if value is None else str(value)


class Options(usage.Options):
    """``twistd mcpd`` flags; every one also reads from the environment and ``--config``."""

    synopsis = "[options]"
    longdesc = (
        "Serve the Model Context Protocol over Streamable HTTP (default 127.0.0.1:8765) or stdio. "
        "Each option can also be set by the environment variable named in brackets, or in a "
        "--config file of NAME=value lines; a flag wins over the environment, which wins over the file."
    )
    optFlags = [["stdio", None, "Serve one client on stdin/stdout instead of HTTP (logs go to stderr)."]] + [
        [knob.flag, None, f"{knob.help} [{knob.env}]"] for knob in KNOBS if knob.switch
    ]
    optParameters = [["config", "c", None, "A .env-style file of NAME=value settings."]] + [
        [knob.flag, None, None, f"{knob.help} [{knob.env}] (default: {_show(knob.default)})"]
        for knob in KNOBS
        if not knob.repeatable and not knob.switch
    ]

    def __init__(self) -> None:
        super().__init__()
        for knob in KNOBS:
            if knob.repeatable:
                self[knob.name] = []
        self.settings: Settings | None = None
        self.packs: list[ToolPack] = []

    def opt_listen(self, endpoint: str) -> None:
        """A Twisted endpoint string to serve HTTP on (repeatable), e.g. tcp:8765:interface=0.0.0.0 [LISTEN]."""
        self["listen"].append(endpoint)

    def opt_tool_pack(self, reference: str) -> None:
        """A tool pack by dotted module name, module[:attribute] (repeatable) [TOOL_PACKS]."""
        self["tool_pack"].append(reference)

    def opt_api_key(self, key: str) -> None:
        """An API key clients must send (repeatable; shows in ps: prefer --api-key-file) [API_KEYS]."""
        self["api_key"].append(key)

    def opt_allowed_ip(self, entry: str) -> None:
        """A client address or CIDR range allowed to connect (repeatable) [ALLOWED_IPS]."""
        self["allowed_ip"].append(entry)

    def opt_trusted_proxy(self, entry: str) -> None:
        """A reverse proxy address or CIDR whose X-Forwarded-For is believed (repeatable) [TRUSTED_PROXIES]."""
        self["trusted_proxy"].append(entry)

    def opt_cors_origin(self, origin: str) -> None:
        """A browser origin allowed to call mcpd, or * (repeatable) [CORS_ORIGINS]."""
        self["cors_origin"].append(origin)

    def opt_version(self) -> None:
        """Print mcpd's version and exit."""
        print(f"mcpd {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        flags = {knob.name: self.get(knob.flag, self.get(knob.name)) for knob in KNOBS}
        for knob in KNOBS:
            if knob.switch:  # an absent flag (0) must not hide the environment
                flags[knob.name] = True if flags[knob.name] else None
        try:
            file_values = read_env_file(self["config"]) if self["config"] else {}
            self.settings = resolve(flags, os.environ, file_values, stdio=bool(self["stdio"]))
        except SettingError as e:
            raise usage.UsageError(str(e)) from None
        self.packs = load_packs(self.settings)
        # The toolsets actually served (the default: every built-in pack whose stores run).
        self.settings = attrs.evolve(self.settings, toolsets=toolsets_of(self.settings))
        if needs_sql(self.packs):
            from mcpd.stores.sql.config import DatabaseConfigError

            try:
                sql_config(self.settings)
            except DatabaseConfigError as e:
                raise usage.UsageError(str(e)) from None
        settings = self.settings
        for flag, path in (("--trace-file", settings.trace_file), ("--logfile", settings.logfile)):
            if path:
                _check_appendable(flag, path)
        mcpd_logging.configure(settings.log_format, settings.logfile, settings.stdio)
        if self.parent is not None and (settings.stdio or settings.logfile or settings.log_format != "text"):
            # twistd -n logs to stdout, which belongs to the protocol in stdio mode.
            self.parent["logger"] = "mcpd.observe.logging.observer"
        if not self.settings.stdio:
            from twisted.internet import reactor

            for description in self.settings.http_endpoints():
                try:
                    check_endpoint(reactor, description)
                except EndpointError as e:
                    raise usage.UsageError(f"--listen {description!r}: {e}") from None
            try:
                load_key_ring(self.settings)
                load_allowlist(self.settings)
            except SecurityConfigError as e:
                raise usage.UsageError(str(e)) from None


def _check_appendable(flag: str, path: str) -> None:
    """Stop start-up with one line when a file mcpd will append to cannot be opened."""
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise usage.UsageError(f"{flag} {path}: cannot write it ({e.strerror})") from None


# The store interfaces the SQL store provides (mcpd.stores.sql).
SQL_INTERFACES = (ITaskBoard, INoteStore)


def configured_stores(settings: Settings) -> frozenset[Any]:
    """The store interfaces this configuration can provide: the SQL store always can (SQLite in
    --data-dir when no --db-url is given)."""
    return frozenset(SQL_INTERFACES)


def toolsets_of(settings: Settings) -> tuple[str, ...]:
    """--toolsets, or by default every built-in pack whose stores are configured."""
    if settings.toolsets is not None:
        return settings.toolsets
    available = configured_stores(settings)
    chosen = []
    for name in BUILTIN_PACKS:
        try:
            pack = load_pack(name)
        except PackLoadError as e:
            raise usage.UsageError(str(e)) from None
        if set(pack.stores) <= available:
            chosen.append(name)
    return tuple(chosen)


def needs_sql(packs: list[ToolPack]) -> bool:
    """Whether a pack served needs a store only the SQL store provides."""
    return any(interface in SQL_INTERFACES for pack in packs for interface in pack.stores)


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


def load_packs(settings: Settings) -> list[ToolPack]:
    """Load every configured pack, or stop with a message naming the one that failed (or the
    store it needs that is not configured)."""
    packs = []
    available = configured_stores(settings)
    for name in toolsets_of(settings):
        if name not in BUILTIN_PACKS:
            raise usage.UsageError(
                f"--toolsets: unknown toolset {name!r} (built-in: {', '.join(sorted(BUILTIN_PACKS))}); "
                "load other packs with --tool-pack"
            )
    for reference in (*toolsets_of(settings), *settings.tool_pack):
        try:
            pack = load_pack(reference)
        except PackLoadError as e:
            raise usage.UsageError(str(e)) from None
        missing = [interface.__name__ for interface in pack.stores if interface not in available]
        if missing:
            raise usage.UsageError(
                f"tool pack {reference!r} needs the store(s) {', '.join(missing)}, not configured here"
            )
        packs.append(pack)
    try:
        ToolRegistry(packs)
    except PackLoadError as e:
        raise usage.UsageError(str(e)) from None
    return packs


class HeapFreezeService(Service):
    """Once the daemon is up, moves everything allocated so far (modules, schemas, the service
    tree) out of the garbage collector's reach with `gc.freeze`.

    Full collections otherwise rescan that heap every few thousand requests: measured here,
    they pushed the p99 of tools/call from ~3 ms to 13-19 ms at 16 clients.
    """

    def startService(self) -> None:
        from twisted.internet import reactor

        super().startService()
        # After the rest of the tree has started (callLater runs once the reactor turns).
        reactor.callLater(0, self._freeze)  # type: ignore[attr-defined]

    def _freeze(self) -> None:
        gc.collect()
        gc.freeze()
        log.info("Start-up heap frozen ({count} objects kept out of collections)", count=gc.get_freeze_count())

    def stopService(self) -> None:
        super().stopService()
        gc.unfreeze()


class TraceService(Service):
    """Closes the protocol trace on shutdown, writing what it still holds."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    def stopService(self) -> None:
        super().stopService()
        self.tracer.close()


class EngineService(Service):
    """On shutdown, cancels every call still in flight before the thread pool is stopped, so
    handlers that watch for cancellation end and the pool's threads can be joined."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def stopService(self) -> None:
        super().stopService()
        if self.engine.in_flight:
            log.info("Cancelling {count} call(s) in flight", count=self.engine.in_flight)
        if self.engine.tasks.running:
            log.info("Cancelling {count} running task(s)", count=self.engine.tasks.running)
        # Modern subscription streams hear notifications/cancelled before their requests end.
        self.engine.end_subscriptions()
        self.engine.cancel_all()


class SessionService(Service):
    """Expires idle legacy sessions while running; ends them all on shutdown."""

    def __init__(self, sessions: SessionStore) -> None:
        self.sessions = sessions

    def startService(self) -> None:
        super().startService()
        self.sessions.start()

    def stopService(self) -> None:
        super().stopService()
        self.sessions.stop()


class ListenerService(Service):
    """Listens on one endpoint string; a port that cannot be bound stops start-up."""

    def __init__(self, description: str, factory: Any, runtime: Runtime) -> None:
        self.description = description
        self.factory = factory
        self.runtime = runtime
        self.port: Any = None
        # The listen under way (an endpoint that binds later), and why it failed if it did.
        self._listen: Deferred[Any] | None = None
        self.failure: Failure | None = None

    def privilegedStartService(self) -> None:
        from twisted.internet import reactor

        super().privilegedStartService()
        d = endpoints.serverFromString(reactor, self.description).listen(self.factory)
        if not d.called:
            # An endpoint that binds later (most bind at once): a failure then stops the daemon.
            self._listen = d
            d.addCallbacks(self._listening, self._cannot_listen)
            return
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        if isinstance(outcome[0], Failure):
            # One clear line instead of a traceback, under twistd as under the mcpd command.
            raise SystemExit(f"mcpd: cannot listen on {self.description}: {outcome[0].getErrorMessage()}")
        self._listening(outcome[0])

    def _cannot_listen(self, failure: Failure) -> None:
        from twisted.internet import reactor

        self._listen = None
        if failure.check(CancelledError):
            return  # stopped before it bound
        self.failure = failure
        log.critical(
            "Cannot listen on {description}: {why}", description=self.description, why=failure.getErrorMessage()
        )
        reactor.stop()  # type: ignore[attr-defined]

    def startService(self) -> None:
        if self.port is None and self._listen is None and not self.running:
            self.privilegedStartService()
        super().startService()

    def _listening(self, port: Any) -> None:
        self._listen = None
        self.port = port
        address = port.getHost()
        shown = f"http://{_url_host(getattr(address, 'host', '?'))}:{getattr(address, 'port', '?')}/mcp"
        if is_tls(self.description):
            shown = "https" + shown[4:]
        self.runtime.listeners.append(shown)
        log.info("Serving MCP on {url} ({description})", url=shown, description=self.description)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._listen is not None:
            self._listen.cancel()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class StdioService(Service):
    """Serves stdin/stdout; the reactor stops when the client closes stdin."""

    def __init__(self, engine: Engine, max_message_size: int, max_write_buffer: int) -> None:
        self.engine = engine
        self.max_message_size = max_message_size
        self.max_write_buffer = max_write_buffer
        self.protocol: StdioProtocol | None = None

    def startService(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.stdio import StandardIO

        super().startService()
        self.protocol = StdioProtocol(
            self.engine, self.max_message_size, on_close=self._closed, max_write_buffer=self.max_write_buffer
        )
        StandardIO(self.protocol, reactor=reactor)

    def connections(self) -> list[Any]:
        """stdin/stdout while open (closed by the drain once the last answers are written)."""
        protocol = self.protocol
        return [protocol.transport] if protocol is not None and protocol.connected else []

    def _closed(self) -> None:
        from twisted.internet import reactor

        log.info("stdin closed; stopping")
        with contextlib.suppress(ReactorNotRunning):  # already stopping (SIGTERM)
            reactor.stop()  # type: ignore[attr-defined]


def build_service(settings: Settings, packs: list[ToolPack]) -> MultiService:
    """The whole daemon as one service tree: thread pool, sessions, then transports."""
    from twisted.internet import reactor

    # Started in order; stopped in reverse order, one after the other (mcpd.lifecycle).
    root = OrderedMultiService()
    lifecycle = Lifecycle()
    _named(HeapFreezeService(), "heap-freeze").setServiceParent(root)
    registry = ToolRegistry(packs)
    stores = StoreSet()
    runtime = Runtime(settings, registry, stores=stores)
    pool = ThreadPool(minthreads=0, maxthreads=settings.threads, name="mcpd-tools")
    _named(ThreadPoolService(pool), "thread-pool").setServiceParent(root)
    # The stores start before the engine and stop after it has cancelled the calls in flight.
    for service in build_stores(settings, packs, stores, reactor):
        service.setServiceParent(root)
    tracer = Tracer(settings.trace_file) if settings.trace_file else None
    if tracer is not None:
        # Stops after the engine: every answer written at shutdown is in the trace.
        _named(TraceService(tracer), "trace").setServiceParent(root)
    state_key = settings.state_key.encode("utf-8") if settings.state_key is not None else None
    ledger = build_ledger(settings)
    engine = Engine(
        registry,
        runtime=runtime,
        thread_pool=pool,
        page_size=settings.page_size,
        tracer=tracer,
        client_timeout=settings.client_timeout,
        state_key=state_key,
        ledger=ledger,
        max_batch=settings.max_batch,
        max_batch_bytes=settings.max_message_size,
    )
    engine.tool_timeout = settings.tool_timeout
    if state_key is None:
        log.info(
            "No --state-key: 2026-07-28 requestState is signed with a random key of this process; "
            "set STATE_KEY alike on every instance behind a load balancer"
        )
    # Children stop in reverse order: transports, then the engine's calls, then the pool.
    _named(EngineService(engine), "engine").setServiceParent(root)
    if settings.stdio:
        runtime.transports.append("stdio")
        stdio = StdioService(engine, settings.max_message_size, settings.max_write_buffer)
        _named(stdio, "stdio").setServiceParent(root)
        # Calls in flight finish (or are answered "shutting down"), then stdout is flushed.
        _drain(lifecycle, settings, engine, connections=stdio.connections).setServiceParent(root)
        ReadinessService(lifecycle, reactor).setServiceParent(root)
        return root
    sessions = SessionStore(reactor, settings.session_timeout, ledger)
    _named(SessionService(sessions), "sessions").setServiceParent(root)
    runtime.transports.append("streamable-http")
    resource = StreamableHTTP(engine, sessions, settings.max_message_size, settings.sse_replay)
    # Legacy HTTP+SSE sessions live in a store of their own: ids never cross transports.
    sse_sessions = SessionStore(reactor, settings.session_timeout, ledger)
    _named(SessionService(sse_sessions), "sse-sessions").setServiceParent(root)
    runtime.transports += ["legacy-sse", "websocket"]
    websockets = websocket_resource(
        engine, settings.max_message_size, settings.sse_keepalive, message_timeout=settings.request_timeout
    )
    transports = {
        b"sse": OriginGuard(SSEStreamResource(sse_sessions)),
        b"messages": OriginGuard(SSEMessagesResource(engine, sse_sessions, settings.max_message_size)),
        b"ws": OriginGuard(websockets),
    }
    # /health /ready /stats /metrics /dashboard, counted in the engine's observer hook.
    monitor = build_monitor(
        runtime,
        engine,
        pool,
        {"sessions": sessions, "sse_sessions": sse_sessions},
        lifecycle,
        reactor,
        stores=list(stores),
    )
    site = make_site(OriginGuard(resource), runtime, transports, settings.sse_keepalive, monitor)
    # One policy layer around every HTTP transport: per request (keys, addresses, Origin/CORS,
    # body size, rate and stream limits) and per connection (caps, slow clients).
    security = Security(settings, reactor, lifecycle=lifecycle, ledger=ledger)
    security.attach(engine, registry)
    _named(ReloadService(security, reactor), "reload").setServiceParent(root)
    guarded = security.protect(site)
    streams = site.sse_streams
    assert streams is not None
    vitals = monitor.vitals
    vitals.connections = lambda: guarded.open_connections
    vitals.sse_streams = streams.__len__
    vitals.websockets = websockets.open.__len__
    vitals.refusals = lambda: security.gate.refusals + ledger.refused
    vitals.refused_at_capacity = lambda: guarded.refused_at_capacity
    vitals.holdings = ledger.holdings
    vitals.dropped_slow_readers = lambda: guarded.dropped_slow_readers
    _named(HealthService(monitor.health, reactor), "health-checks").setServiceParent(root)
    # Stops after the listeners: calls in flight finish, then streams and connections close.
    _drain(
        lifecycle,
        settings,
        engine,
        close_streams=[
            lambda retry_ms: close_streams(streams, retry_ms),
            lambda _retry_ms: _close_websockets(websockets),
        ],
        connections=lambda: guarded.protocols,
    ).setServiceParent(root)
    for description in settings.http_endpoints():
        factory = TLSHandshakeLog(guarded) if is_tls(description) else guarded
        _named(ListenerService(description, factory, runtime), f"listener {description}").setServiceParent(root)
    # Last: ready once everything above has started, and the first to hear of a shutdown.
    ReadinessService(lifecycle, reactor).setServiceParent(root)
    security.warn_about([d for d in settings.http_endpoints() if beyond_loopback(d)])
    return root


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


def _drain(lifecycle: Lifecycle, settings: Settings, engine: Engine, **closing: Any) -> DrainService:
    """The drain at shutdown: the engine's calls finish or are answered "shutting down", then
    ``closing`` (streams, connections) closes."""
    from twisted.internet import reactor

    return DrainService(
        lifecycle,
        reactor,
        settings.shutdown_timeout,
        in_flight=lambda: engine.in_flight,
        cancel_in_flight=engine.abort_in_flight,
        end_subscriptions=engine.end_subscriptions,
        **closing,
    )


def vector_stores(settings: Settings, reactor: Any) -> tuple[Service, Service | None]:
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


def build_stores(settings: Settings, packs: list[ToolPack], stores: StoreSet, reactor: Any) -> list[Any]:
    """The services of the stores the packs need, each registered in ``stores`` by the
    interfaces it provides. Nothing is imported or opened for a store no pack needs."""
    services: list[Any] = []
    if needs_sql(packs):
        from mcpd.stores.sql.config import DatabaseConfigError
        from mcpd.stores.sql.database import SQLDatabase
        from mcpd.stores.sql.notes import SQLNoteStore
        from mcpd.stores.sql.service import SQLStoreService
        from mcpd.stores.sql.tasks import SQLTaskBoard

        try:
            config = sql_config(settings)
        except DatabaseConfigError as e:
            raise SystemExit(f"mcpd: {e}") from None
        database = SQLDatabase(config, reactor)
        stores.add(database, ())
        stores.add(SQLTaskBoard(database), (ITaskBoard,))
        stores.add(SQLNoteStore(database), (INoteStore,))
        services.append(_named(SQLStoreService(database, reactor), "database"))
    return services


def _named(service: Any, name: str) -> Any:
    """A service with a name, so that a start-up failure says which one failed."""
    service.setName(name)
    return service


def _close_websockets(endpoint: Any) -> int:
    count = len(endpoint.open)
    endpoint.close_all()
    return count


def makeService(options: Options) -> MultiService:
    """twistd's entry point."""
    assert options.settings is not None
    return build_service(options.settings, options.packs)
