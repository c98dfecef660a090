# -*- test-case-name: tests.test_embedders -*-
"""A small embedding service for the tests: OpenAI-compatible ``POST /v1/embeddings`` and Ollama's
``POST /api/embed`` over real HTTP on a loopback port (twisted.web), serving a toy model whose
vectors are hashed bags of words (texts sharing words point the same way, so semantic search has
something to find). A test scripts its failures: slow answers, 5xx, 429, wrong dimensions,
malformed bodies. Every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

import attrs
from twisted.internet import reactor as default_reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web import server
from twisted.web.resource import Resource

TOY_MODEL = "toy-embed"
TOY_DIMENSION = 32
_WORD = re.compile(r"\w+")


def toy_vector(text: str, dimension: int = TOY_DIMENSION) -> list[float]:
    """A unit vector: each word of ``text`` (lower-cased) adds one to a hashed coordinate."""
    vector = [0.0] * dimension
    for word in _WORD.findall(text.lower()):
        digest = hashlib.blake2b(word.encode("utf-8"), digest_size=4).digest()
        vector[int.from_bytes(digest, "big") % dimension] += 1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


@attrs.define
class Fault:
    """What the next request(s) get instead of a good answer."""

    status: int = 500
    body: bytes = b'{"error": {"message": "internal error"}}'
    delay: float = 0.0
    headers: dict[str, str] = attrs.field(factory=dict)


@attrs.define
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class EmbeddingService(Resource):
    """Both APIs on one site. ``faults`` are served in order, one per request, before good answers."""

    isLeaf = True

    def __init__(self, model: str = TOY_MODEL, dimension: int = TOY_DIMENSION) -> None:
        super().__init__()
        self.model = model
        self.dimension = dimension
        self.faults: list[Fault] = []
        self.requests: list[Recorded] = []
        self.delay = 0.0  # every good answer waits this long
        self.port: Any = None
        self._pending: set[Deferred[None]] = set()

    def listen(self, reactor: Any = default_reactor) -> str:
        """Listen on a free loopback port; returns the base URL."""
        site = server.Site(self)
        site.noisy = False
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        return f"http://127.0.0.1:{self.port.getHost().port}"

    def stop(self) -> Deferred[None]:
        for answer in list(self._pending):
            answer.cancel()
        return self.port.stopListening()

    def render_POST(self, request: server.Request) -> bytes | int:
        assert request.content is not None
        raw = request.content.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append(Recorded(request.path.decode(), headers, body))
        if self.faults:
            fault = self.faults.pop(0)
            self._later(request, fault.delay, fault.status, fault.body, fault.headers)
            return server.NOT_DONE_YET
        if request.path == b"/v1/embeddings":
            answer = self._openai(body)
        elif request.path == b"/api/embed":
            answer = self._ollama(body)
        else:
            request.setResponseCode(404)
            return b'{"error": "not found"}'
        if isinstance(answer, tuple):
            request.setResponseCode(answer[0])
            return json.dumps(answer[1]).encode()
        self._later(request, self.delay, 200, json.dumps(answer).encode(), {})
        return server.NOT_DONE_YET

    def _inputs(self, value: Any) -> list[str]:
        return [value] if isinstance(value, str) else list(value)

    def _openai(self, body: dict[str, Any]) -> Any:
        if body.get("model") != self.model:
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}
        texts = self._inputs(body["input"])
        data = [
            {"object": "embedding", "index": i, "embedding": toy_vector(t, self.dimension)} for i, t in enumerate(texts)
        ]
        data.reverse()  # clients must order by index, not by position
        return {"object": "list", "data": data, "model": self.model, "usage": {"prompt_tokens": 0, "total_tokens": 0}}

    def _ollama(self, body: dict[str, Any]) -> Any:
        if body.get("model") != self.model:
            return 404, {"error": f"model '{body.get('model')}' not found, try pulling it first"}
        texts = self._inputs(body["input"])
        return {"model": self.model, "embeddings": [toy_vector(t, self.dimension) for t in texts]}

    def _later(self, request: server.Request, delay: float, status: int, body: bytes, headers: dict[str, str]) -> None:
        def answer() -> None:
            if request.finished or request._disconnected:
                return
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"application/json")
            for name, value in headers.items():
                request.setHeader(name.encode(), value.encode())
            request.write(body)
            request.finish()

        later = deferLater(default_reactor, delay, answer)
        self._pending.add(later)
        later.addBoth(lambda _: self._pending.discard(later))
