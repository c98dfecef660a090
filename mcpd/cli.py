# -*- test-case-name: tests.test_tap -*-
"""The ``mcpd`` command: the twistd service without twistd's flags (``mcpd --port 8765``),
``mcpd migrate [--check]`` for the SQL store's schema, and ``mcpd reindex [memory | kb:NAME]``
to rebuild the search index from SQL."""

from __future__ import annotations

import gc
import importlib.util
import os
import sys
from typing import Any


def _lazy_module(name: str) -> Any:
    """Module ``name`` imported, but run only when one of its attributes is first read."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.loader is not None
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, module)  # as an import would
    return module


# Twisted imports http.cookiejar for a deprecated alias (twisted.python.compat.cookielib), and
# with it urllib.request, http.client and email: a twentieth of a ``mcpd --stdio`` start-up for
# a module mcpd does not use. It is made lazy before Twisted is imported: whoever uses it (a
# cookie-keeping web client) gets it whole, run on first use.
if "http.cookiejar" not in sys.modules:
    _lazy_module("http.cookiejar")

from twisted.internet.defer import Deferred, maybeDeferred  # noqa: E402
from twisted.logger import globalLogBeginner  # noqa: E402
from twisted.python import usage  # noqa: E402

from mcpd.config import KNOBS_BY_NAME, ConfigError, read_env_file, resolve  # noqa: E402
from mcpd.daemon import build_service, read_secrets, sql_config  # noqa: E402
from mcpd.observe.logging import observer  # noqa: E402
from mcpd.tap import Options  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the daemon in the foreground until stopped, return the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["migrate"], ["reindex"]):
        gc.enable()  # ``python -m mcpd`` leaves it off for start-up only
        return migrate_main(args[1:]) if args[0] == "migrate" else reindex_main(args[1:])
    # Start-up makes tens of thousands of objects that live as long as the process (modules,
    # schemas, the service tree) and no garbage worth a collection: the collector, which would
    # scan them again and again, waits until mcpd serves (mcpd.services.HeapFreezeService then
    # collects once and freezes them).
    gc.disable()
    try:
        started = _start(args)
    finally:
        gc.enable()
    if isinstance(started, int):
        return started
    service, reactor = started
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    # A listener that failed after start-up (one binding later), or a store opened in the
    # background that could not be (mcpd.stores.opening), stopped the reactor.
    failed = [child for child in service if getattr(child, "failure", None) is not None]
    return 1 if failed else 0


def _start(args: list[str]) -> int | tuple[Any, Any]:
    """The service tree started (and the reactor to run it), or the exit code."""
    options = Options()
    try:
        options.parseOptions(args)
    except usage.UsageError as e:
        print(f"mcpd: {e}", file=sys.stderr)
        print("mcpd: run 'mcpd --help' for the options", file=sys.stderr)
        return 2
    assert options.settings is not None
    if options.settings.stdio:
        install_stdio_reactor()
    from twisted.internet import reactor

    # Logs go to stderr (or --logfile), never stdout: it belongs to MCP in --stdio mode.
    globalLogBeginner.beginLoggingTo([observer(sys.__stderr__)], redirectStandardIO=False)
    service = build_service(options.settings, reactor, options.packs)
    try:
        # As twistd does: the whole tree starts before the reactor runs, so a service that
        # cannot start stops mcpd here (inside the reactor, the failure would only be logged).
        service.privilegedStartService()
        service.startService()
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 1
    return service, reactor


def install_stdio_reactor() -> None:
    """Install the platform's default reactor without importing the TLS libraries for it.

    Twisted's reactor imports pyOpenSSL and cryptography for ``listenSSL``, ``connectSSL`` and
    TCP's ``startTLS``: a fifth of a ``--stdio`` start-up, which listens on nothing. While the
    reactor is imported pyOpenSSL is left out, so Twisted builds it as it does where pyOpenSSL
    is not installed; ``listenSSL`` and ``connectSSL`` are then given their TLS module back,
    imported on first use. TLS made by wrapping a connection (the endpoints' ``wrapClientTLS``,
    treq, the Redis and embedding clients) is unaffected; a TCP connection has no ``startTLS``.
    Nothing is done when a reactor is installed already (twistd, tests).
    """
    if "twisted.internet.reactor" in sys.modules or "OpenSSL" in sys.modules:
        return
    sys.modules["OpenSSL"] = None  # type: ignore[assignment]  # import OpenSSL: ImportError
    try:
        from twisted.internet import default

        default.install()
    finally:
        del sys.modules["OpenSSL"]
    from twisted.internet import posixbase
    from twisted.internet.interfaces import IReactorSSL
    from zope.interface import classImplements

    if posixbase.tls is None:
        posixbase.tls = _lazy_module("twisted.protocols.tls")
        classImplements(posixbase.PosixReactorBase, IReactorSSL)


# The knobs `mcpd migrate` reads: where the database is and how to reach it.
_MIGRATE_KNOBS = ("data_dir", "db_url", "db_password", "db_password_file", "db_timeout")


class MigrateOptions(usage.Options):
    """``mcpd migrate`` flags: the database settings of the daemon, from the same places."""

    synopsis = "migrate [--check] [--config FILE] [--db-url URL] ..."
    longdesc = (
        "Bring the SQL store's schema up to date (what mcpd also does at start-up, under the same lock), "
        "or with --check only say whether it is: exit 0 up to date, 1 migrations pending, 2 the database "
        "is newer than this mcpd or cannot be reached."
    )
    optFlags = [["check", None, "Change nothing; exit 1 if migrations are pending."]]
    optParameters = [["config", "c", None, "A .env-style file of NAME=value settings."]] + [
        [KNOBS_BY_NAME[name].flag, None, None, f"{KNOBS_BY_NAME[name].help} [{KNOBS_BY_NAME[name].env}]"]
        for name in _MIGRATE_KNOBS
    ]

    def postOptions(self) -> None:
        flags = {name: self.get(KNOBS_BY_NAME[name].flag) for name in _MIGRATE_KNOBS}
        try:
            file_values = read_env_file(self["config"]) if self["config"] else {}
            self.settings = read_secrets(resolve(flags, os.environ, file_values), database_only=True)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def migrate_main(argv: list[str]) -> int:
    """``mcpd migrate [--check]``: one line saying where the schema stands; the exit code."""
    from sqlalchemy.exc import DBAPIError

    from mcpd.stores.sql import migrate
    from mcpd.stores.sql.config import DatabaseConfigError
    from mcpd.stores.sql.database import build_engine

    options = MigrateOptions()
    try:
        options.parseOptions(argv)
        config = sql_config(options.settings)
    except (usage.UsageError, DatabaseConfigError) as e:
        print(f"mcpd migrate: {e}", file=sys.stderr)
        return 2
    shown = config.shown_url
    engine = build_engine(config)
    try:
        if options["check"]:
            with engine.connect() as connection:
                state = migrate.schema_state(connection, shown)
            if state.up_to_date:
                print(f"database {shown}: schema at {state.head}, up to date")
                return 0
            print(
                f"database {shown}: schema at {state.current or 'none'}, needs {', '.join(state.pending)}: "
                "run mcpd migrate (or start mcpd, which applies them)"
            )
            return 1
        before, after = migrate.upgrade(engine, shown)
    except migrate.MigrationError as e:
        print(f"mcpd migrate: {e}", file=sys.stderr)
        return 2
    except DBAPIError as e:
        print(f"mcpd migrate: cannot use {shown}: {str(e.orig).splitlines()[0]}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if before.pending:
        print(
            f"database {shown}: upgraded from {before.current or 'none'} through {', '.join(before.pending)}; now at {after.current}"
        )
    else:
        print(f"database {shown}: already at {after.current}, nothing to do")
    return 0


# The knobs `mcpd reindex` reads: the SQL store, the index and the embedding service.
_REINDEX_KNOBS = (
    *_MIGRATE_KNOBS,
    "db_statement_timeout",
    "milvus_uri",
    "milvus_token",
    "milvus_timeout",
    "milvus_prefix",
    "embedding_url",
    "embedding_model",
    "embedding_api",
    "embedding_api_key",
    "embedding_batch",
    "embedding_timeout",
    "embedding_retries",
    "embedding_query_prefix",
    "embedding_document_prefix",
)


class ReindexOptions(usage.Options):
    """``mcpd reindex`` flags: the daemon's store settings, from the same places."""

    synopsis = "reindex [--tenant TENANT] [--config FILE] [...] [memory | kb:NAME]"
    longdesc = (
        "Rebuild the search index of the kb and memory packs from SQL, which holds every document, chunk "
        "and memory: each index collection is built anew with the embedding model configured now (none: "
        "keyword search only) and takes the old one's place once full; searches use the old one until "
        "then, and changes made meanwhile reach the new one. COLLECTION is 'memory' (the memories), or "
        "kb:NAME (the kb collections named NAME, of every tenant or of --tenant; a bare NAME other than "
        "'memory' means the same); without it, everything. Run it after changing the embedding "
        "model or losing the index's data; with Milvus Lite embedded, stop mcpd first (one process opens "
        "its file)."
    )
    optParameters = [
        ["config", "c", None, "A .env-style file of NAME=value settings."],
        ["tenant", None, None, "Only this tenant's collections."],
    ] + [
        [KNOBS_BY_NAME[name].flag, None, None, f"{KNOBS_BY_NAME[name].help} [{KNOBS_BY_NAME[name].env}]"]
        for name in _REINDEX_KNOBS
    ]

    def parseArgs(self, collection: str | None = None) -> None:
        """``memory`` is the memories' index, ``kb:NAME`` (or a bare ``NAME``) kb collections."""
        self.memory = collection == "memory"
        self.collection = None if collection is None or self.memory else collection.removeprefix("kb:")
        if self.collection == "":
            raise usage.UsageError("kb: names no collection: give kb:NAME")

    def postOptions(self) -> None:
        flags = {name: self.get(KNOBS_BY_NAME[name].flag) for name in _REINDEX_KNOBS}
        try:
            file_values = read_env_file(self["config"]) if self["config"] else {}
            self.settings = read_secrets(resolve(flags, os.environ, file_values), database_only=True)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def reindex_main(argv: list[str]) -> int:
    """``mcpd reindex [memory | kb:NAME]``: a line per index collection rebuilt; the exit code."""
    from twisted.internet.task import react

    options = ReindexOptions()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        print(f"mcpd reindex: {e}", file=sys.stderr)
        return 2
    outcome: list[int] = []

    async def run(reactor: Any) -> None:
        outcome.append(await _reindex(reactor, options))

    try:
        react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    except SystemExit as e:
        if e.code:
            return int(e.code) if isinstance(e.code, int) else 1
    return outcome[0] if outcome else 1


async def _reindex(reactor: Any, options: ReindexOptions) -> int:
    from mcpd.daemon import index_available, shown_index_uri, vector_stores
    from mcpd.interfaces import StoreError
    from mcpd.stores.knowledge import KnowledgeStore
    from mcpd.stores.reindex import rebuild
    from mcpd.stores.retrieval import Retriever
    from mcpd.stores.sql.config import DatabaseConfigError
    from mcpd.stores.sql.database import SQLDatabase
    from mcpd.stores.sql.knowledge import MEMORY_COLLECTION, SQLKnowledge
    from mcpd.stores.sql.migrate import MigrationError
    from mcpd.stores.sql.service import SQLStoreService

    settings = options.settings
    if not index_available(settings):
        print("mcpd reindex: pymilvus (and milvus-lite for a local index) is not installed", file=sys.stderr)
        return 2
    try:
        database = SQLDatabase(sql_config(settings), reactor)
        service = SQLStoreService(database, reactor)
        service.startService()
    except (DatabaseConfigError, MigrationError, StoreError) as e:
        print(f"mcpd reindex: {e}", file=sys.stderr)
        return 2
    index, embedder = vector_stores(settings, reactor, connect_at_start=False)
    running = [service, index, *([embedder] if embedder is not None else [])]
    for child in running[1:]:
        child.startService()
    store = KnowledgeStore(SQLKnowledge(database), Retriever(index, embedder), shown_index_uri(settings), reactor)
    wanted, memory, tenant = options.collection, options.memory, options["tenant"]
    everything = wanted is None and not memory

    def only(owner: str, name: str) -> bool:
        if name == MEMORY_COLLECTION and owner == "":
            return everything or memory
        return not memory and (wanted is None or name == wanted) and (tenant is None or owner == tenant)

    try:
        rebuilt = await rebuild(store, only)
    except (StoreError, ValueError) as e:
        print(f"mcpd reindex: {e}", file=sys.stderr)
        return 1
    finally:
        for child in reversed(running):
            await maybeDeferred(child.stopService)
    if wanted is not None and not any(owner and name == wanted for owner, name, _, _ in rebuilt):
        print(f"mcpd reindex: no kb collection named {wanted!r}", file=sys.stderr)
        return 1
    model = settings.embedding_model if embedder is not None else None
    for owner, name, collection, count in rebuilt:
        shown = "memories" if not owner else f"collection {name!r} of tenant {owner!r}"
        built = f"embedding model {model}" if model else "keyword search only"
        print(f"{shown}: {count} chunk(s) indexed into {collection} ({built})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
