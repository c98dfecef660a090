# -*- test-case-name: tests.test_stores,tests.test_milvus,tests.test_embedders -*-
"""Every seam of mcpd where an implementation can be swapped, and the records that cross them.

A store's methods return Deferreds, even in memory (`mcpd.stores.memory`: ``succeed()``), so a
store that asks the network (Redis, SQL) drops in behind the same calls. What a store keeps is a
plain record (`TaskRecord`, `SessionRecord`): JSON in, JSON out, nothing that lives only in this
process. Each interface has one shared test suite (`mcpd.testing` and ``tests/test_stores.py``)
that every implementation runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from typing import TYPE_CHECKING, Any

import attrs
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    import datetime

    from twisted.internet.defer import Deferred

# Task states (2025-11-25 basic/utilities/tasks; SEP-2663).
WORKING = "working"
INPUT_REQUIRED = "input_required"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})


class StoreFull(Exception):
    """A bounded store has no room; ``capacity`` is its bound."""

    def __init__(self, message: str, capacity: int) -> None:
        super().__init__(message)
        self.capacity = capacity


@attrs.define(eq=True)
class TaskRecord:
    """What a task must keep between polls, wherever they land: serialisable (`to_json`).

    The work itself (its Deferred, the timer of its TTL, the answers it waits for) stays in the
    process running it (`mcpd.protocol.tasks.TaskRun`).
    """

    task_id: str
    # Who may see it: ``caller:NAME`` (modern) or ``session:ID`` (legacy).
    owner: str
    modern: bool
    created: float
    ttl_ms: int | None
    poll_interval_ms: int
    updated: float = 0.0
    status: str = WORKING
    status_message: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    # Outstanding requests to the client, by key (modern: answered by tasks/update).
    input_requests: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    # Whom the task is counted against (`mcpd.protocol.ledger`).
    account: str = ""
    # The instance running its work (several behind a load balancer; "" for one process).
    runner: str = ""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def expired(self, now: float) -> bool:
        """Whether its TTL has passed by ``now``."""
        return self.ttl_ms is not None and now >= self.created + self.ttl_ms / 1000

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-compatible data."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskRecord:
        """A record from what `to_json` made."""
        return cls(**data)


@attrs.define(eq=True)
class SessionRecord:
    """What a legacy session (``Mcp-Session-Id``, ``/sse``) must keep, wherever its requests
    land: serialisable (`to_json`). Its streams and the requests it serves stay in the process
    holding them (`mcpd.protocol.session.Session`)."""

    session_id: str
    # The protocol version its initialize fixed.
    version: str | None = None
    # Who opened it (the caller's key name): nobody else may use it.
    owner: str | None = None
    # Whom it is counted against (`mcpd.protocol.ledger`).
    account: str = ""
    client_info: dict[str, Any] | None = None
    client_capabilities: dict[str, Any] = attrs.field(factory=dict)
    # What its requests set since (`ISessionStore.update`): logging/setLevel, and the URIs of
    # resources/subscribe with the tenant of the caller that subscribed.
    log_level: str | None = None
    subscriptions: list[str] = attrs.field(factory=list)
    subscriptions_tenant: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-compatible data."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionRecord:
        """A record from what `to_json` made."""
        return cls(**data)


class IIdentity(Interface):
    """Who an HTTP request comes from, as the policy layer admitted it: kept on the request by
    ``mcpd.security.identity.admit``, read by the transports (``caller_of``)."""

    name = Attribute("The API key's name ('anonymous' without keys).")
    scopes = Attribute("The key's scopes (a frozenset; empty without keys).")
    peer = Attribute("The client's real address (behind a trusted proxy, the client's own).")
    account = Attribute("Whom limits and shares count against: key:NAME, or ip:ADDRESS.")
    tenant = Attribute("Whose records the caller sees: the key file's fourth field ('default' without one).")


class IGuardedConnection(Interface):
    """A connection the policy layer watches (its head and body deadlines, its place in the
    connection budget): what the gate tells it about each request it carries."""

    peer = Attribute("The address the connection comes from (the proxy's, behind one).")
    checked_with = Attribute("The allowlist the peer was last checked against.")

    def head_complete(length: int | None) -> None:
        """A request's headers are in; ``length`` is its body's (None: unknown, 0: none)."""

    def body_complete() -> None:
        """The whole request is in: it is being served, however long that takes."""

    def request_finished() -> None:
        """The response was sent; the next bytes start a new request."""

    def hold_for(account: str, client: str) -> Any:
        """Count the connection against ``account``'s share of the connection budget; the
        `mcpd.protocol.errors.LimitExceeded` refusing it, or None."""


class IClosingChannel(Interface):
    """An HTTP channel that can answer a refused request and close so that the client reads the
    answer (`mcpd.security.channel.MCPChannel`)."""

    def answer_and_close(response: bytes) -> None:
        """Write ``response`` (a whole HTTP response) and close once the client has it."""


class IRuntime(Interface):
    """What a running daemon knows about itself: the server pack's view of it
    (``ctx.store(IRuntime)``), provided by `mcpd.runtime.Runtime`."""

    settings = Attribute("The daemon's `mcpd.config.Settings`.")
    registry = Attribute("The `mcpd.tools.ToolRegistry` of every tool, resource and prompt served.")
    listeners = Attribute("The URLs it serves MCP on.")
    transports = Attribute("The transports it serves (streamable-http, legacy-sse, websocket, stdio).")
    stores = Attribute("The stores behind the packs (`mcpd.stores.StoreSet`): ``describe()`` for server.info.")
    version = Attribute("mcpd's version.")

    def uptime() -> float:
        """Seconds since the daemon started."""

    def protocol_versions() -> dict[str, list[str]]:
        """The protocol versions served, by era."""


class IBucketStore(Interface):
    """Token buckets by key: the state behind the rate limit.

    The in-process store (`mcpd.stores.memory.MemoryBucketStore`) serves one daemon; a shared
    store (Redis, with an atomic script) makes a limit hold across instances.
    """

    def take(key: str, capacity: float, rate: float) -> Any:
        """Take one token from the bucket ``key`` (``capacity`` tokens, refilled at ``rate``
        tokens a second, full when first seen).

        A Deferred firing with how many seconds the caller must wait before a token is free:
        0.0 when one was taken.
        """

    def __len__() -> int:
        """How many buckets are kept (an approximation for a shared store)."""


class ITaskStore(Interface):
    """Where task records are kept between polls (`mcpd.protocol.tasks`); every method returns
    a Deferred.

    The in-process store (`mcpd.stores.memory.MemoryTaskStore`) is bounded and serves one
    daemon; a shared store lets any instance behind a load balancer answer ``tasks/get``.
    """

    capacity = Attribute("How many records it keeps at most.")

    def add(record: TaskRecord, now: float) -> Any:
        """Keep a new record (the time is ``now``). Fires with the records it dropped: those
        whose TTL had passed, and the oldest finished one if it made room; fails with
        `StoreFull` when every record kept is still running."""

    def save(record: TaskRecord) -> Any:
        """Replace the kept record of ``record.task_id`` (a status change); fires with None,
        also when the record is no longer kept. The first terminal status stays: a record that
        has ended is replaced only by one with the same status (an instance that took a task's
        runner for gone must not turn its result into a failure, nor a late cancel a result
        into a cancel); such a refused save fires with the kept record."""

    def get(task_id: str) -> Any:
        """Fires with the record with this id, or None."""

    def remove(task_id: str) -> Any:
        """Forget a record; fires with it, or None if it was unknown."""

    def owned_by(owner: str) -> Any:
        """Fires with every record of ``owner``, oldest first."""

    def expire(now: float) -> Any:
        """Drop the records whose TTL has passed by ``now``; fires with them."""

    def count() -> Any:
        """Fires with how many records are kept."""


class ISessionStore(Interface):
    """Where legacy session records are kept (`mcpd.protocol.session`); every method returns a
    Deferred.

    In process by default (`mcpd.stores.memory.MemorySessionStore`); a shared store lets a
    session's requests land on any instance.
    """

    def save(record: SessionRecord) -> Any:
        """Keep (or replace) the record of ``record.session_id``; fires with True, or False when
        that session was deleted lately (a shared store keeps a tombstone for the idle timeout,
        so an instance that missed the end cannot bring the session back)."""

    def load(session_id: str) -> Any:
        """Fires with the record with this id, or None."""

    def touch(session_id: str) -> Any:
        """The session is in use: a store that forgets idle records (Redis, after the idle
        timeout) keeps this one longer. Fires with True if it is kept."""

    def touch_many(session_ids: list[str]) -> Any:
        """`touch` for many sessions at once (a sweep's); fires with whether each is kept, in
        order."""

    def delete(session_id: str) -> Any:
        """Forget a record; fires with True if it was kept."""

    def update(
        session_id: str,
        log_level: str | None = None,
        subscribe: str | None = None,
        unsubscribe: str | None = None,
        tenant: str | None = None,
        cap: int | None = None,
    ) -> Any:
        """Change a kept record's state in place (each change atomic, whoever else changes
        it): its log level, a URI subscribed to (and the subscriber's tenant) or unsubscribed
        from. Fires with True, or False when no record is kept; fails with `StoreFull` (and
        changes nothing) when ``subscribe`` would take the record past ``cap`` URIs."""

    def count() -> Any:
        """Fires with how many records are kept."""


class ICache(Interface):
    """Keys holding JSON values, each with a TTL, kept apart by tenant (the ``cache`` pack): in
    this process by default (`mcpd.stores.memory.MemoryCache`), in Redis with --redis-url.
    Every method returns a Deferred and takes the caller's tenant first; no call ever reads,
    lists or changes another tenant's keys. Values cross as JSON text."""

    default_ttl = Attribute("Seconds a key lives when no ttl is given (--cache-default-ttl).")
    max_ttl = Attribute("The longest ttl a key may have, in seconds; longer ones are capped (--cache-max-ttl).")
    max_value = Attribute("The most bytes a value may take as JSON text (--cache-max-value).")

    def get(tenant: str, key: str) -> Any:
        """Fires with ``(json_text, seconds_left)``, or ``(None, None)`` for no such key."""

    def set(tenant: str, key: str, value: str, ttl: int) -> Any:
        """Keep ``value`` (JSON text) under ``key`` for ``ttl`` seconds; fires with None.
        `StoreFull` when an in-process cache is at its bound."""

    def delete(tenant: str, key: str) -> Any:
        """Forget a key; fires with True if it was kept."""

    def incr(tenant: str, key: str, by: int, ttl: int | None) -> Any:
        """Add ``by`` to the integer under ``key`` (a missing key counts as 0 and gets ``ttl``,
        or the default); ``ttl`` given resets the key's TTL. Fires with the new value;
        `NotAnInteger` when the key holds something else or the sum leaves 64 bits."""

    def scan(tenant: str, pattern: str, limit: int, position: Any) -> Any:
        """The tenant's keys matching the glob ``pattern`` (``*``, ``?``, ``[a-z]``, ``[^a]``,
        ``\\`` escapes, as Redis matches), at most ``limit`` of them, from ``position`` (None:
        the start). Fires with ``(keys, next_position)``: next_position (JSON data) is None at
        the end; a page may hold fewer than ``limit`` keys before the end. A key kept throughout
        a scan is listed at least once."""


# -- The search index and the embedding service (mcpd.stores.milvus, mcpd.stores.embedders) --
#
# SQL holds documents, chunks and memories; the index is a copy of their text made searchable,
# rebuilt from SQL whenever needed. Values crossing these seams are the frozen classes below.

UP, DEGRADED, DOWN = "up", "degraded", "down"
KEYWORD, SEMANTIC, HYBRID = "keyword", "semantic", "hybrid"
SEARCH_MODES = (KEYWORD, SEMANTIC, HYBRID)
ANALYZERS = ("standard", "jieba")


@attrs.frozen
class StoreStatus:
    """How a store is: up, degraded (answering, but slowly or in part) or down, with a short
    detail a person can act on and how long its last probe took (seconds)."""

    store: str
    state: str
    detail: str | None = None
    latency: float | None = None


class StoreError(Exception):
    """A store could not do what was asked; the message says what to do about it.

    Tools answer it as an ``isError`` result (2025-11-25 server/tools §Error Handling): the model
    reads it and can act, and nothing of the store's internals shows.
    """


class NotFound(StoreError):
    """No record with that id (or name) in the caller's tenant."""


class Conflict(StoreError):
    """The change conflicts with the record as it is (a stale version, a dependency cycle, a
    name already taken)."""


class NotAnInteger(StoreError):
    """cache.incr on a key that holds no integer, or a sum that would leave 64 bits."""


class StoreUnavailable(StoreError):
    """A store cannot be reached right now; temporary. The message names the store."""

    def __init__(self, store: str, detail: str) -> None:
        super().__init__(f"{store} is unavailable (temporary): {detail}")
        self.store = store
        self.detail = detail


class EmbeddingUnavailable(StoreUnavailable):
    """The embedding service did not answer (down, timing out, overloaded) after the retries."""


class EmbeddingError(Exception):
    """The embedding service answered, but not with what mcpd can use (a refused key, an
    unknown model, vectors of the wrong dimension); retrying will not help."""


class IndexMismatch(ValueError):
    """A collection was built differently from what a call needs (another embedding model or
    dimension, no embeddings, another analyzer): the message names what it was built with."""


class UnknownCollection(LookupError):
    """No index collection by this name."""


@attrs.frozen
class EmbeddingModel:
    """The model an embedding service runs, and the dimension of its vectors."""

    name: str
    dimension: int


@attrs.frozen
class CollectionSpec:
    """What an index collection is built with: a BM25 analyzer for its text (``standard``, or
    ``jieba`` for Chinese) and, for semantic search, the embedding model of its vectors."""

    name: str
    analyzer: str = "standard"
    embedding: EmbeddingModel | None = None


@attrs.frozen
class CollectionInfo:
    """An index collection as it exists: its spec and about how many chunks it holds."""

    spec: CollectionSpec
    rows: int


@attrs.frozen
class Chunk:
    """One chunk of a document (`mcpd.packs.chunking` cuts them; the SQL store keeps them): its
    position in the document (from 0), its text (``document[start:end]``), the headings it sits
    under (outermost first) and its size in approximate tokens."""

    position: int
    text: str
    headings: tuple[str, ...]
    start: int
    end: int
    size: int


def indexed_text(chunk: Chunk, title: str | None = None) -> str:
    """What the index searches for a chunk: the document's title and the chunk's headings, so that
    a query naming the topic finds its paragraphs, then the chunk itself."""
    context = [part for part in (title, " > ".join(chunk.headings)) if part]
    return "\n".join([*context, chunk.text]) if context else chunk.text


# The longest text the search index stores (Milvus: a VARCHAR of at most 65,535 bytes).
MAX_INDEXED_BYTES = 65_535


def unindexable(chunks: Sequence[Chunk], title: str | None) -> str | None:
    """Why the index could never store one of ``chunks`` under ``title`` (what it stores is
    `indexed_text`, over `MAX_INDEXED_BYTES` in UTF-8), or None: a write refused with this is
    never left in the outbox, retried and given up."""
    for chunk in chunks:
        size = len(indexed_text(chunk, title).encode("utf-8"))
        if size > MAX_INDEXED_BYTES:
            return (
                f"chunk {chunk.position} with the title and its headings is {size} bytes (UTF-8), over the "
                f"{MAX_INDEXED_BYTES} the index can store: give a smaller chunk_size or a shorter title"
            )
    return None


@attrs.frozen
class IndexedChunk:
    """One searchable piece of text. ``id`` is the chunk's (or memory's) SQL id; ``owner`` is
    empty for what the whole tenant sees, else the one key that may; ``metadata`` is flat
    (strings, numbers, booleans); ``created_at`` is a Unix time; ``vector`` its embedding."""

    id: str
    tenant: str
    document_id: str
    text: str
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    owner: str = ""
    tags: tuple[str, ...] = ()
    created_at: float = 0.0
    vector: tuple[float, ...] | None = None


@attrs.frozen
class SearchQuery:
    """A search within one tenant. ``metadata`` keeps chunks whose metadata equals every pair
    given; ``tags`` those with every tag; ``owners`` (when given) those whose owner is one of
    them (``""`` = the tenant's shared chunks). ``vector`` is the embedded query, needed by the
    semantic and hybrid modes, made by ``embedding``."""

    tenant: str
    text: str
    mode: str = KEYWORD
    limit: int = 10
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    tags: tuple[str, ...] = ()
    owners: tuple[str, ...] | None = None
    vector: tuple[float, ...] | None = None
    embedding: EmbeddingModel | None = None


@attrs.frozen
class Hit:
    """One search result: the chunk, its document, its collection and a score (higher is
    better; BM25, cosine similarity or a fused rank score, by mode)."""

    collection: str
    chunk_id: str
    document_id: str
    score: float
    text: str
    metadata: Mapping[str, Any]
    owner: str
    tags: tuple[str, ...]
    created_at: float


class IHealthReporting(Interface):
    """A store that can say how it is, for /health, /metrics and ``server.info``."""

    def status() -> StoreStatus:
        """The state seen by the latest call or probe (no I/O)."""

    def check() -> Deferred[StoreStatus]:
        """Probe the store now (bounded by its timeout); fires with its status, never fails."""


class IVectorIndex(IHealthReporting):
    """Full-text (BM25) and vector search over chunks, by tenant. Collection names are letters,
    digits and underscores. Every method returns a Deferred; blocking work runs in the store's
    own threads. Failures: `StoreUnavailable` (temporary), `UnknownCollection`,
    `IndexMismatch`, ValueError (bad input: a filter key, an oversized text)."""

    def create_collection(spec: CollectionSpec) -> Deferred[CollectionInfo]:
        """Create the collection, or find it as it is; one built otherwise is an `IndexMismatch`."""

    def describe_collection(name: str) -> Deferred[CollectionInfo | None]:
        """The collection, or None when there is none by that name."""

    def list_collections() -> Deferred[list[str]]:
        """The names of every collection of this index."""

    def drop_collection(name: str) -> Deferred[bool]:
        """Drop the collection and everything in it; False when there was none."""

    def upsert(name: str, chunks: Sequence[IndexedChunk], embedding: EmbeddingModel | None = None) -> Deferred[int]:
        """Insert or replace chunks by id (their vectors made by ``embedding``); fires with how many."""

    def delete(
        name: str, tenant: str, chunk_ids: Sequence[str] = (), document_ids: Sequence[str] = ()
    ) -> Deferred[int]:
        """Delete the tenant's chunks with these ids, and those of these documents."""

    def search(names: Sequence[str], query: SearchQuery) -> Deferred[list[Hit]]:
        """The best ``query.limit`` chunks of the tenant across these collections, best first."""


class IEmbedder(IHealthReporting):
    """An embedding service: texts in, vectors out (OpenAI-compatible or Ollama)."""

    def model() -> Deferred[EmbeddingModel]:
        """The model and its dimension, probed once (a failed probe is retried next time)."""

    def embed_documents(texts: Sequence[str]) -> Deferred[list[tuple[float, ...]]]:
        """One vector per text, in order, for indexing (the document prefix is added)."""

    def embed_query(text: str) -> Deferred[tuple[float, ...]]:
        """The vector of a search query (the query prefix is added)."""


# -- stores of records (mcpd.stores) ----------------------------------------------------------
#
# Every method returns a Deferred, whatever the backend: blocking work runs in the store's own
# thread pool, never on the reactor. Records come back as plain JSON-ready dicts in the shapes
# of the tool contract (ids are opaque strings, times ISO 8601 UTC). Every method takes the
# caller's tenant first and never reads or writes another tenant's rows.


# The task board's vocabulary (TOOLS.md, pack tasks), shared by the pack and every backend.
TASK_STATUSES = ("open", "in_progress", "blocked", "done", "cancelled")
TASK_PRIORITIES = ("low", "normal", "high", "urgent")  # in order of urgency
# A dependency in one of these no longer holds its dependents back.
RESOLVED_STATUSES = ("done", "cancelled")


class IStore(IHealthReporting):
    """A store of records the daemon runs: checked by /health, described by server.info, with
    series of its own in /metrics."""

    def describe() -> dict[str, Any]:
        """The store's state for server.info (backend, address with no secret, state, schema)."""

    def collectors() -> list[Any]:
        """The prometheus-client collectors of the store's own series, for /metrics."""


class ITaskBoard(Interface):
    """Projects and their tasks, with dependencies and comments (the ``tasks`` pack)."""

    def create_project(tenant: str, name: str, description: str | None, author: str) -> Deferred[dict[str, Any]]:
        """A new project; `Conflict` if the tenant already has one by that name."""

    def list_projects(tenant: str, limit: int, after: str | None) -> Deferred[tuple[list[dict[str, Any]], str | None]]:
        """Projects by name with their open and done task counts, after the name ``after``;
        with the position of the next page (None at the end)."""

    def project_names(tenant: str, prefix: str, limit: int) -> Deferred[list[str]]:
        """Project names starting with ``prefix`` (completion)."""

    def create_task(tenant: str, task: dict[str, Any], author: str) -> Deferred[dict[str, Any]]:
        """A new task in ``task["project"]`` (an id or a name); `NotFound` for an unknown
        project or dependency."""

    def list_tasks(
        tenant: str, filters: dict[str, Any], limit: int, after: str | None
    ) -> Deferred[tuple[list[dict[str, Any]], str | None]]:
        """Tasks, newest first, matching ``filters`` (project, status, assignee, tag, query)."""

    def get_task(tenant: str, task_id: str) -> Deferred[dict[str, Any]]:
        """``{"task", "comments", "blocks"}``; `NotFound` for an unknown id."""

    def update_task(
        tenant: str, task_id: str, changes: dict[str, Any], expected_version: int | None
    ) -> Deferred[tuple[dict[str, Any], list[str]]]:
        """The task after ``changes``, and the ids of the other tasks whose view changed (their
        ``blocks``); `Conflict` for a stale ``expected_version`` or a dependency cycle."""

    def add_comment(tenant: str, task_id: str, text: str, author: str) -> Deferred[dict[str, Any]]:
        """A new comment on a task."""

    def next_task(
        tenant: str, project: str | None, assignee: str | None
    ) -> Deferred[tuple[dict[str, Any] | None, str]]:
        """The most urgent open task whose dependencies are all resolved, and why it (or none)."""

    def task_ids(tenant: str, prefix: str, limit: int) -> Deferred[list[str]]:
        """Task ids starting with ``prefix``, newest first (completion)."""

    def project_status(tenant: str, project: str, limit: int) -> Deferred[dict[str, Any]]:
        """A project's open work for a stand-up: counts by status and its unfinished tasks."""


class INoteStore(Interface):
    """Markdown notes with tags and ranked full-text search (the ``notes`` pack)."""

    def save_note(tenant: str, note: dict[str, Any], author: str) -> Deferred[dict[str, Any]]:
        """Create a note, or replace the one with ``note["id"]`` (`NotFound` if unknown)."""

    def get_note(tenant: str, note_id: str) -> Deferred[dict[str, Any]]:
        """The note; `NotFound` for an unknown id."""

    def delete_note(tenant: str, note_id: str) -> Deferred[bool]:
        """Delete a note; False when there was none by that id."""

    def search_notes(
        tenant: str, query: str, tag: str | None, limit: int, shown: Set[str]
    ) -> Deferred[tuple[list[dict[str, Any]], bool, list[str]]]:
        """Notes ranked by relevance to ``query`` (``id, title, snippet, score, tags``), none of
        ``shown`` (the keys of what earlier pages showed, `mcpd.stores.shown`); whether more
        follow, and if so ``shown`` with this page's keys too."""

    def note_ids(tenant: str, prefix: str, limit: int) -> Deferred[list[str]]:
        """Note ids starting with ``prefix``, newest first (completion)."""


# -- the team's own databases (mcpd.stores.sql.sources) ------------------------------------------


class Refused(StoreError):
    """A statement was refused: not one read-only statement, or the database would not run it
    (a syntax error, an unknown table, a write in a read-only transaction, the time limit). The
    message says why and what to send instead."""


class ISQLSources(Interface):
    """The operator's read-only SQL data sources (the ``sql`` pack), by name. Every statement
    runs in a read-only transaction (SQLite: a read-only connection with ``query_only``) under a
    time limit, one statement per call, in the sources' own threads. Failures: `NotFound` (no
    such source or table), `Refused`, `StoreUnavailable` (the source cannot be reached)."""

    names = Attribute("The sources' names, the default (first configured) first.")

    def tables(source: str, limit: int, after: str | None) -> Deferred[tuple[dict[str, Any], str | None]]:
        """``{"source", "tables": [{name, kind, rows_estimate}]}`` by name after ``after``, and the
        name the next page starts after (None at the end)."""

    def describe_table(source: str, table: str) -> Deferred[dict[str, Any]]:
        """``{"source", "table", "columns": [{name, type, nullable, default, key}], "indexes"}``."""

    def query(
        source: str, sql: str, params: Sequence[Any] | Mapping[str, Any] | None, limit: int
    ) -> Deferred[dict[str, Any]]:
        """``{"source", "columns", "rows", "row_count", "truncated", "elapsed_ms"}``: at most
        ``limit`` rows of one read-only statement."""

    def explain(source: str, sql: str, params: Sequence[Any] | Mapping[str, Any] | None) -> Deferred[dict[str, Any]]:
        """``{"source", "format", "plan"}``: the database's own plan of one read-only statement."""


class IKnowledgeBase(Interface):
    """A tenant's collections of documents, chunked and searchable (the ``kb`` pack).

    SQL holds the documents and their chunks; the search index is a copy of them, caught up by
    the re-indexer when it was down. Writes succeed while the index is down (``indexing``
    says ``pending``); searches then say the index is degraded."""

    def create_collection(
        tenant: str, name: str, description: str | None, analyzer: str, author: str
    ) -> Deferred[dict[str, Any]]:
        """A new collection; `Conflict` if the tenant has one by that name."""

    def list_collections(
        tenant: str, limit: int, after: str | None
    ) -> Deferred[tuple[list[dict[str, Any]], str | None]]:
        """Collections by name with their counts and how their index is built, after ``after``."""

    def collection_names(tenant: str, prefix: str, limit: int) -> Deferred[list[str]]:
        """Collection names starting with ``prefix`` (completion)."""

    def drop_collection(tenant: str, name: str) -> Deferred[dict[str, Any]]:
        """Drop a collection and every document in it; `NotFound` for an unknown name."""

    def add_document(tenant: str, collection: str, document: dict[str, Any], author: str) -> Deferred[dict[str, Any]]:
        """Store a document (``text``, ``title``, ``source``, ``metadata`` and its ``chunks``, each
        a `Chunk`), then index it: ``{"document", "indexing"}``."""

    def get_document(tenant: str, collection: str, document_id: str) -> Deferred[dict[str, Any]]:
        """The document with its text; `NotFound` for an unknown id."""

    def update_document(
        tenant: str, collection: str, document_id: str, changes: dict[str, Any]
    ) -> Deferred[dict[str, Any]]:
        """Change a document (``title``, ``metadata``; ``text`` with its new ``chunks``) and re-index it."""

    def delete_document(tenant: str, collection: str, document_id: str) -> Deferred[bool]:
        """Delete a document and its chunks; False when there was none."""

    def document_ids(tenant: str, collection: str, prefix: str, limit: int) -> Deferred[list[str]]:
        """Document ids of a collection starting with ``prefix`` (completion)."""

    def search(
        tenant: str,
        collections: Sequence[str],
        query: str,
        mode: str | None,
        filters: Mapping[str, Any],
        limit: int,
        shown: Set[str],
    ) -> Deferred[dict[str, Any]]:
        """``{"results", "mode", "notice", "index", "more", "shown"}``: chunks best first, none of
        ``shown`` (the keys of what earlier pages showed); ``shown`` then has this page's too."""


class IMemoryStore(Interface):
    """Long-term memories of assistants: personal (one key's) or the team's (the ``memory`` pack)."""

    def remember(tenant: str, owner: str, text: str, tags: Sequence[str], author: str) -> Deferred[dict[str, Any]]:
        """Keep a memory (``owner`` "" for the team) and index it: ``{"memory", "indexing"}``."""

    def recall(
        tenant: str, owners: Sequence[str], query: str, tags: Sequence[str], limit: int, shown: Set[str]
    ) -> Deferred[dict[str, Any]]:
        """``{"memories", "mode", "notice", "index", "more", "shown"}``: by relevance, newest first
        on ties, none of ``shown`` (as for `IKnowledgeStore.search`)."""

    def list_memories(
        tenant: str, owners: Sequence[str], tags: Sequence[str], limit: int, after: str | None
    ) -> Deferred[tuple[list[dict[str, Any]], str | None]]:
        """Memories newest first, after the id ``after``."""

    def get_memory(tenant: str, owners: Sequence[str], memory_id: str) -> Deferred[dict[str, Any]]:
        """One memory the caller may see; `NotFound` otherwise."""

    def update_memory(
        tenant: str, owners: Sequence[str], memory_id: str, changes: dict[str, Any]
    ) -> Deferred[dict[str, Any]]:
        """Change a memory's text or tags and re-index it."""

    def forget(tenant: str, owners: Sequence[str], memory_id: str) -> Deferred[bool]:
        """Delete a memory; False when the caller has none by that id."""

    def memory_ids(tenant: str, owners: Sequence[str], prefix: str, limit: int) -> Deferred[list[str]]:
        """Memory ids starting with ``prefix`` (completion)."""


# An audit record as it crosses `IAuditLog.append`: a tuple of these, in this order (``time`` in
# seconds since the epoch, ``duration`` in seconds): tuples, because every call makes one.
AUDIT_FIELDS = (
    "tenant",
    "time",
    "key",
    "peer",
    "transport",
    "method",
    "tool",
    "outcome",
    "duration",
    "request_id",
    "x_request_id",
    "detail",
)


class IAuditLog(Interface):
    """The persisted audit trail (``server.audit``): records of `mcpd.observe.audit`, each with
    its tenant, written in batches and searched newest first."""

    def append(records: Iterable[Sequence[Any]]) -> Deferred[int]:
        """Store ``records`` (tuples of `AUDIT_FIELDS`) in one transaction; how many were
        stored: the first that many (a store may stop early to let other writes go first; the
        rest is the caller's to give again). They are read in the store's thread: a lazy
        iterable keeps their making off the reactor."""

    def search(
        tenant: str, filters: dict[str, Any], limit: int, before: Any
    ) -> Deferred[tuple[list[dict[str, Any]], Any]]:
        """The tenant's records matching ``filters`` (since, until: naive UTC datetimes; key,
        tool, outcome), newest first, starting after the position ``before`` (None: the
        newest); with the position of the next page (None at the end)."""

    def prune(older_than: datetime.datetime, batch: int) -> Deferred[int]:
        """Delete up to ``batch`` of the oldest records if from before ``older_than`` (naive
        UTC); how many (fewer than ``batch``: none older is left)."""
