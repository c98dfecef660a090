# -*- test-case-name: tests.test_retrieval -*-
"""What the kb and memory packs, and the re-indexer, call: the search index together with the
embedding service, when one is configured.

Indexing embeds the chunks when their collection was built for semantic search, and creates the
collection on first use (with the model the embedding service runs, probed once). Searching picks
the mode: hybrid when an embedding service is configured (keyword without one), and says in a
``notice`` when it had to fall back to keyword search, and why. A mode asked for explicitly that
the collection cannot serve (built with another model) is refused naming the model it was built with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredLock

from mcpd.interfaces import (
    HYBRID,
    KEYWORD,
    SEARCH_MODES,
    CollectionInfo,
    CollectionSpec,
    EmbeddingError,
    EmbeddingUnavailable,
    Hit,
    IEmbedder,
    IndexedChunk,
    IndexMismatch,
    IVectorIndex,
    SearchQuery,
    StoreStatus,
)

NO_EMBEDDER = "keyword search only: no embedding service is configured (--embedding-url)"


@attrs.frozen
class SearchOutcome:
    """Search results, the mode that produced them, and why it is not the mode asked for (if so)."""

    hits: list[Hit]
    mode: str
    notice: str | None = None


class Retriever:
    """The index and the optional embedder, used together."""

    def __init__(self, index: IVectorIndex, embedder: IEmbedder | None = None) -> None:
        self.index = index
        self.embedder = embedder
        self._creating: dict[str, DeferredLock] = {}

    @property
    def default_mode(self) -> str:
        """Hybrid with an embedding service, keyword without."""
        return HYBRID if self.embedder is not None else KEYWORD

    def stores(self) -> list[StoreStatus]:
        """The state of the index and of the embedding service (for /health and server.info)."""
        found = [self.index.status()]
        if self.embedder is not None:
            found.append(self.embedder.status())
        return found

    def ensure_collection(self, name: str, analyzer: str = "standard") -> Deferred[CollectionInfo]:
        """The collection, created on first use: with dense vectors of the embedding service's model
        when one is configured (`EmbeddingUnavailable` while it cannot be probed)."""
        return Deferred.fromCoroutine(self._ensure(name, analyzer))

    async def _ensure(self, name: str, analyzer: str) -> CollectionInfo:
        info = await self.index.describe_collection(name)
        if info is not None:
            return info
        # One creation at a time per collection in this process: a write and the re-indexer
        # indexing the same first record both found it missing, and a milvus-lite server asked to
        # create one collection twice at once fails the second ("File exists").
        lock = self._creating.setdefault(name, DeferredLock())
        await lock.acquire()
        try:
            info = await self.index.describe_collection(name)
            if info is not None:
                return info
            embedding = await self.embedder.model() if self.embedder is not None else None
            return await self.index.create_collection(CollectionSpec(name, analyzer, embedding))
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._creating.pop(name, None)

    def index_chunks(self, name: str, chunks: Sequence[IndexedChunk], analyzer: str = "standard") -> Deferred[int]:
        """Index (insert or replace) chunks, embedding them when their collection has vectors.

        Fails with `StoreUnavailable` (the index or the embedding service: retry later),
        `IndexMismatch` (the collection was built with another model: re-index it), ValueError."""
        return Deferred.fromCoroutine(self._index(name, chunks, analyzer))

    async def _index(self, name: str, chunks: Sequence[IndexedChunk], analyzer: str) -> int:
        if not chunks:
            return 0
        info = await self._ensure(name, analyzer)
        built = info.spec.embedding
        if built is None:
            return await self.index.upsert(name, [attrs.evolve(c, vector=None) for c in chunks])
        if self.embedder is None:
            raise IndexMismatch(
                f"index collection {name!r} was built with embedding model {built.name} (dimension "
                f"{built.dimension}) and no embedding service is configured; configure it or re-index"
            )
        model = await self.embedder.model()
        if model != built:
            raise IndexMismatch(
                f"index collection {name!r} was built with embedding model {built.name} (dimension "
                f"{built.dimension}), not {model.name} (dimension {model.dimension}); configure that model "
                "or re-index the collection"
            )
        vectors = await self.embedder.embed_documents([c.text for c in chunks])
        embedded = [attrs.evolve(c, vector=v) for c, v in zip(chunks, vectors, strict=True)]
        return await self.index.upsert(name, embedded, model)

    def remove(
        self, name: str, tenant: str, chunk_ids: Sequence[str] = (), document_ids: Sequence[str] = ()
    ) -> Deferred[int]:
        """Take chunks (or whole documents) of the tenant out of the index."""
        return self.index.delete(name, tenant, chunk_ids, document_ids)

    def drop(self, name: str) -> Deferred[bool]:
        """Drop a collection's index (the kb collection was dropped, or it is being rebuilt)."""
        return self.index.drop_collection(name)

    def search(
        self,
        names: Sequence[str],
        tenant: str,
        text: str,
        mode: str | None = None,
        limit: int = 10,
        metadata: Mapping[str, Any] | None = None,
        tags: Sequence[str] = (),
        owners: Sequence[str] | None = None,
    ) -> Deferred[SearchOutcome]:
        """Search the tenant's chunks in these collections. ``mode`` None is the default mode."""
        query = SearchQuery(
            tenant=tenant,
            text=text,
            limit=limit,
            metadata=dict(metadata or {}),
            tags=tuple(tags),
            owners=None if owners is None else tuple(owners),
        )
        return Deferred.fromCoroutine(self._search(list(names), query, mode))

    async def _search(self, names: list[str], query: SearchQuery, asked: str | None) -> SearchOutcome:
        if asked is not None and asked not in SEARCH_MODES:
            raise ValueError(f"search mode {asked!r}: choose one of {', '.join(SEARCH_MODES)}")
        mode = asked or self.default_mode
        if mode == KEYWORD:
            notice = NO_EMBEDDER if self.embedder is None and asked is None else None
            return SearchOutcome(await self.index.search(names, query), KEYWORD, notice)
        if self.embedder is None:
            return await self._keyword(names, query, f"{mode} search needs an embedding service (--embedding-url)")
        try:
            model = await self.embedder.model()
            vector = await self.embedder.embed_query(query.text)
        except (EmbeddingUnavailable, EmbeddingError) as e:
            return await self._keyword(names, query, f"the embedding service failed ({e})")
        semantic = attrs.evolve(query, mode=mode, vector=vector, embedding=model)
        try:
            return SearchOutcome(await self.index.search(names, semantic), mode)
        except IndexMismatch as e:
            if asked is not None:
                raise
            return await self._keyword(names, query, str(e))

    async def _keyword(self, names: list[str], query: SearchQuery, why: str) -> SearchOutcome:
        hits = await self.index.search(names, attrs.evolve(query, mode=KEYWORD))
        return SearchOutcome(hits, KEYWORD, f"keyword results: {why}")
