# -*- test-case-name: tests.test_kb,tests.test_memory -*-
"""What the kb and memory tests share: a daemon with the index where a test wants it (Milvus Lite
embedded in its data directory, or the run's ``milvus-lite server`` through --milvus-uri), with
or without the fake embedding service, and SDK clients of two tenants' keys."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp import Client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from tests.daemon import MODERN, Daemon, run_anyio
from tests.embedding_service import TOY_MODEL, EmbeddingService
from tests.milvus_service import require_milvus, shared_server, unique_prefix
from tests.services import PASSWORD, shared_mariadb

EMBEDDED, SERVER = "embedded", "server"
SQLITE, MARIADB = "sqlite", "mariadb"
KEYS = {
    "alice": ("alice-key", "acme", "admin"),
    "bob": ("bob-key", "acme", "admin"),
    "eve": ("eve-key", "globex", "admin"),
}
SCENARIO_TIMEOUT = 120.0


def structured(result: Any) -> dict[str, Any]:
    """A successful tool result's structured content (the same JSON is its text)."""
    assert not result.is_error, result
    assert result.structured_content is not None, result
    assert json.loads(result.content[0].text) == result.structured_content
    return dict(result.structured_content)


def error_text(result: Any) -> str:
    """An isError result's message."""
    assert result.is_error, result
    return str(result.content[0].text)


class KnowledgeDaemon:
    """For a `tests.daemon.DaemonTestCase`: ``index`` (EMBEDDED or SERVER), ``embedding``
    (whether the fake embedding service is configured) and ``database`` (SQLITE in the data
    directory, or a fresh database of the run's MariaDB) pick the daemon's stores."""

    index: str = EMBEDDED
    embedding: bool = False
    database: str = SQLITE

    start_daemon: Any
    workdir: Any
    addCleanup: Any
    in_thread: Any

    def index_args(self) -> list[str]:
        require_milvus()
        args: list[str] = []
        if self.database == MARIADB:
            server = shared_mariadb()
            password_file = self.workdir / "db-password"
            password_file.write_text(PASSWORD + "\n")
            args += ["--db-url", server.url(server.new_database()), "--db-password-file", str(password_file)]
        if self.index == SERVER:
            args += ["--milvus-uri", shared_server().uri, "--milvus-prefix", unique_prefix()]
        if self.embedding:
            service = EmbeddingService()
            url = service.listen(reactor)
            self.addCleanup(service.stop)
            args += ["--embedding-url", url + "/v1/embeddings", "--embedding-model", TOY_MODEL]
        return args

    def knowledge_daemon(self, *args: str, keys: bool = True, **options: Any) -> Daemon:
        """A daemon serving server, kb and memory (with the two tenants' keys)."""
        extra = ["--toolsets", "server,kb,memory", *self.index_args(), *args]
        if keys:
            key_file = self.workdir / "keys"
            key_file.write_text("".join(f"{n}:{k}:{scope}:{t}\n" for n, (k, t, scope) in KEYS.items()))
            extra += ["--api-key-file", str(key_file)]
        return self.start_daemon(*extra, fixture_pack=False, **options)

    def with_clients(self, daemon: Daemon, scenario: Callable[..., Awaitable[None]], *names: str) -> Deferred[None]:
        """Run ``scenario(*clients)``, one SDK client over Streamable HTTP per key name, in a thread."""

        def client(name: str) -> Client:
            http = create_mcp_http_client(headers={"Authorization": f"Bearer {KEYS[name][0]}"})
            return Client(streamable_http_client(daemon.url, http_client=http), mode=MODERN)

        async def main() -> None:
            with anyio.fail_after(SCENARIO_TIMEOUT):
                clients = [client(name) for name in names]
                async with _all(clients) as opened:
                    await scenario(*opened)

        return self.in_thread(lambda: run_anyio(main))

    def anonymous(self, daemon: Daemon, scenario: Callable[[Client], Awaitable[None]]) -> Deferred[None]:
        """Run ``scenario(client)`` with one SDK client without a key, in a thread."""

        async def main() -> None:
            with anyio.fail_after(SCENARIO_TIMEOUT * 2):
                async with Client(streamable_http_client(daemon.url), mode=MODERN) as client:
                    await scenario(client)

        return self.in_thread(lambda: run_anyio(main))


class _all:
    """Several async context managers entered together."""

    def __init__(self, managers: list[Any]) -> None:
        self.managers = managers
        self.stack: Any = None

    async def __aenter__(self) -> list[Any]:
        from contextlib import AsyncExitStack

        self.stack = AsyncExitStack()
        await self.stack.__aenter__()
        return [await self.stack.enter_async_context(manager) for manager in self.managers]

    async def __aexit__(self, *exc: Any) -> Any:
        return await self.stack.__aexit__(*exc)
