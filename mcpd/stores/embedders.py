# -*- test-case-name: tests.test_embedders -*-
"""Embedding services over HTTP, called with treq (the reactor never waits on them).

Two APIs cover the services teams run: OpenAI-compatible ``POST /v1/embeddings`` (vLLM, Hugging
Face TEI, LocalAI, llama.cpp's server, OpenAI itself) and Ollama's ``POST /api/embed``. Texts go
in batches; each request has a time limit; a service that is down, overloaded or answering 5xx is
retried with exponential backoff (and its ``Retry-After``); what retrying cannot fix (a refused
key, an unknown model, vectors of the wrong dimension) fails at once with the service's own words.
The model's dimension is probed once, with the first request.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs
import treq
from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.error import ConnectError, ConnectionLost, DNSLookupError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from zope.interface import implementer

from mcpd.interfaces import (
    DEGRADED,
    DOWN,
    UP,
    EmbeddingError,
    EmbeddingModel,
    EmbeddingUnavailable,
    IEmbedder,
    StoreStatus,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTCP, IReactorTime

log = Logger(namespace="mcpd.embedder")

STORE = "embedding service"
OPENAI, OLLAMA = "openai", "ollama"
APIS = (OPENAI, OLLAMA)
RETRIED_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_TEMPORARY = (ConnectError, ConnectionLost, DNSLookupError, ResponseFailed, ResponseNeverReceived, TimeoutError)
PROBE_TEXT = "mcpd embedding probe"
_SHOWN = 300  # characters of a service's error body quoted in a message


def api_of(url: str) -> str:
    """The API a URL speaks: Ollama for a path ending in ``/api/embed``, else OpenAI-compatible."""
    return OLLAMA if urlsplit(url).path.rstrip("/").endswith("/api/embed") else OPENAI


class _Retry(Exception):
    """One attempt failed in a way another may not (the message says how)."""

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


@implementer(IEmbedder)
class HTTPEmbedder(Service):
    """What both APIs share: batching, time limits, retries, the probe and the status. A service
    in the daemon's tree so that its persistent connections are closed at shutdown."""

    api = OPENAI

    def __init__(
        self,
        url: str,
        model: str,
        reactor: IReactorTCP,
        api_key: str | None = None,
        batch: int = 32,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        query_prefix: str = "",
        document_prefix: str = "",
    ) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"embedding URL {url!r}: must be http:// or https://")
        self.url = url
        self.model_name = model
        self.reactor = reactor
        self.clock: IReactorTime = reactor  # type: ignore[assignment]
        self.batch = batch
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.query_prefix = query_prefix
        self.document_prefix = document_prefix
        self._headers = Headers({"Content-Type": ["application/json"], "Accept": ["application/json"]})
        if api_key:
            self._headers.setRawHeaders("Authorization", [f"Bearer {api_key}"])
        self._connections = HTTPConnectionPool(reactor, persistent=True)
        self._connections.maxPersistentPerHost = 4
        self._http = treq.client.HTTPClient(Agent(reactor, pool=self._connections))
        self._model: EmbeddingModel | None = None
        self._probing: list[Deferred[EmbeddingModel]] | None = None
        self._status = StoreStatus(STORE, UP, "not used yet")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._connections.closeCachedConnections()

    # -- IEmbedder --

    def model(self) -> Deferred[EmbeddingModel]:
        if self._model is not None:
            return succeed(self._model)
        waiter: Deferred[EmbeddingModel] = Deferred()
        if self._probing is not None:
            self._probing.append(waiter)
            return waiter
        self._probing = [waiter]

        def settle(outcome: Any) -> None:
            waiting, self._probing = self._probing or [], None
            for d in waiting:
                if isinstance(outcome, EmbeddingModel):
                    d.callback(outcome)
                else:
                    d.errback(outcome)

        Deferred.fromCoroutine(self._probe()).addBoth(settle)
        return waiter

    def embed_documents(self, texts: Sequence[str]) -> Deferred[list[tuple[float, ...]]]:
        return Deferred.fromCoroutine(self._embed_all([self.document_prefix + text for text in texts]))

    def embed_query(self, text: str) -> Deferred[tuple[float, ...]]:
        async def one() -> tuple[float, ...]:
            vectors = await self._embed_all([self.query_prefix + text])
            return vectors[0]

        return Deferred.fromCoroutine(one())

    def status(self) -> StoreStatus:
        return self._status

    def check(self) -> Deferred[StoreStatus]:
        """One small request, not retried (a health probe must answer within its timeout)."""

        async def probe() -> StoreStatus:
            started = self.clock.seconds()
            try:
                await self._request([PROBE_TEXT], retries=0)
            except (EmbeddingError, EmbeddingUnavailable):
                return self._status  # it says what went wrong
            self._status = attrs.evolve(self._status, latency=self.clock.seconds() - started)
            return self._status

        return Deferred.fromCoroutine(probe())

    # -- the work --

    async def _probe(self) -> EmbeddingModel:
        vectors = await self._request([PROBE_TEXT])
        model = EmbeddingModel(self.model_name, len(vectors[0]))
        if model.dimension == 0:
            raise EmbeddingError(f"model {self.model_name} at {self.url} answered an empty vector")
        self._model = model
        log.info(
            "Embedding model {model} at {url}: dimension {dimension}",
            model=model.name,
            url=self.url,
            dimension=model.dimension,
        )
        return model

    async def _embed_all(self, texts: list[str]) -> list[tuple[float, ...]]:
        model = await self.model()
        vectors: list[tuple[float, ...]] = []
        for start in range(0, len(texts), self.batch):
            for vector in await self._request(texts[start : start + self.batch]):
                if len(vector) != model.dimension:
                    raise self._error(
                        EmbeddingError(
                            f"model {model.name} at {self.url} answered a vector of dimension {len(vector)}; "
                            f"it was {model.dimension} when first probed (was the model changed?)"
                        )
                    )
                vectors.append(vector)
        return vectors

    async def _request(self, texts: list[str], retries: int | None = None) -> list[tuple[float, ...]]:
        """One batch, retried while the failures are temporary; the status follows the outcome."""
        attempt = 0
        limit = self.retries if retries is None else retries
        while True:
            try:
                vectors = await self._attempt(texts)
            except _Retry as failure:
                if attempt >= limit:
                    detail = f"{failure.detail} (after {attempt + 1} attempts)"
                    self._status = StoreStatus(STORE, DOWN, detail)
                    log.warn("Embedding service {url} unavailable: {detail}", url=self.url, detail=detail)
                    raise EmbeddingUnavailable(STORE, f"{self.url}: {detail}") from None
                delay = min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)
                if failure.retry_after is not None:
                    delay = max(delay, min(failure.retry_after, self.max_backoff * 4))
                attempt += 1
                await deferLater(self.clock, delay)
                continue
            except EmbeddingError as e:
                raise self._error(e) from None
            if attempt:
                self._status = StoreStatus(STORE, DEGRADED, f"answered after {attempt} retries")
            else:
                self._status = StoreStatus(STORE, UP)
            return vectors

    def _error(self, error: EmbeddingError) -> EmbeddingError:
        self._status = StoreStatus(STORE, DOWN, str(error))
        return error

    async def _attempt(self, texts: list[str]) -> list[tuple[float, ...]]:
        """One HTTP request, bounded by the timeout (connecting, sending and reading the body)."""

        async def exchange() -> tuple[int, Mapping[str, str], bytes]:
            response = await self._http.post(self.url, json=self.body(texts), headers=self._headers)
            content = await response.content()
            retry_after = response.headers.getRawHeaders("retry-after", [""])[0]
            return response.code, {"retry-after": retry_after}, content

        d = Deferred.fromCoroutine(exchange())
        expired = []

        def expire() -> None:
            expired.append(True)
            d.cancel()

        timer = self.clock.callLater(self.timeout, expire)
        try:
            code, headers, content = await d
        except Exception as e:
            # Cancelled by the timer, treq reports the request as never answered.
            if expired:
                raise _Retry(f"no answer within {self.timeout:g}s") from None
            if isinstance(e, _TEMPORARY):
                raise _Retry(_describe(e)) from None
            raise
        finally:
            if timer.active():
                timer.cancel()
        if code in RETRIED_STATUSES:
            raise _Retry(f"HTTP {code}: {_quote(content)}", _retry_after(headers.get("retry-after", "")))
        if code != 200:
            raise EmbeddingError(f"{self.url} refused model {self.model_name}: HTTP {code}: {_quote(content)}")
        try:
            answer = json.loads(content)
        except ValueError:
            raise EmbeddingError(f"{self.url} did not answer JSON: {_quote(content)}") from None
        vectors = self.vectors(answer, len(texts))
        return [_checked(vector, self.url) for vector in vectors]

    # -- the API --

    def body(self, texts: list[str]) -> dict[str, Any]:
        """The request body for a batch."""
        raise NotImplementedError

    def vectors(self, answer: Any, count: int) -> list[Any]:
        """The batch's vectors, in order, from the decoded answer."""
        raise NotImplementedError

    def _shape(self, detail: str) -> EmbeddingError:
        return EmbeddingError(f"{self.url} answered in an unexpected shape for the {self.api} API: {detail}")


class OpenAIEmbedder(HTTPEmbedder):
    """OpenAI-compatible ``POST /v1/embeddings``."""

    api = OPENAI

    def body(self, texts: list[str]) -> dict[str, Any]:
        # Some servers default to base64; ask for what we read.
        return {"model": self.model_name, "input": texts, "encoding_format": "float"}

    def vectors(self, answer: Any, count: int) -> list[Any]:
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or len(data) != count:
            raise self._shape(f"expected {count} embedding(s) in 'data'")
        try:
            ordered = sorted(data, key=lambda item: item["index"])
            return [item["embedding"] for item in ordered]
        except (KeyError, TypeError):
            raise self._shape("each item of 'data' needs 'index' and 'embedding'") from None


class OllamaEmbedder(HTTPEmbedder):
    """Ollama's ``POST /api/embed`` (Ollama 0.3 and later)."""

    api = OLLAMA

    def body(self, texts: list[str]) -> dict[str, Any]:
        return {"model": self.model_name, "input": texts}

    def vectors(self, answer: Any, count: int) -> list[Any]:
        embeddings = answer.get("embeddings") if isinstance(answer, dict) else None
        if not isinstance(embeddings, list) or len(embeddings) != count:
            raise self._shape(f"expected {count} embedding(s) in 'embeddings'")
        return embeddings


def make_embedder(url: str, model: str, reactor: IReactorTCP, api: str | None = None, **options: Any) -> HTTPEmbedder:
    """The embedder for ``url``: the API named, or the one its path shows (`api_of`)."""
    chosen = api or api_of(url)
    if chosen not in APIS:
        raise ValueError(f"embedding API {chosen!r}: choose one of {', '.join(APIS)}")
    kind: Callable[..., HTTPEmbedder] = OllamaEmbedder if chosen == OLLAMA else OpenAIEmbedder
    return kind(url, model, reactor, **options)


def _checked(vector: Any, url: str) -> tuple[float, ...]:
    if isinstance(vector, str):
        raise EmbeddingError(f"{url} answered a base64 string though encoding_format 'float' was asked")
    if not isinstance(vector, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector):
        raise EmbeddingError(f"{url} answered an embedding that is not a list of numbers")
    if not all(math.isfinite(x) for x in vector):
        raise EmbeddingError(f"{url} answered an embedding with NaN or infinite values")
    return tuple(float(x) for x in vector)


def _retry_after(value: str) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: use our own backoff
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _quote(content: bytes) -> str:
    text = content.decode("utf-8", "replace").strip().replace("\n", " ")
    return text[:_SHOWN] + ("…" if len(text) > _SHOWN else "") if text else "(empty body)"


def _describe(error: BaseException) -> str:
    if isinstance(error, (ResponseFailed, ResponseNeverReceived)):
        reasons = getattr(error, "reasons", None) or []
        inner = "; ".join(r.getErrorMessage() for r in reasons) if reasons else ""
        return f"connection lost before the answer{': ' + inner if inner else ''}"
    return str(error) or type(error).__name__
