"""Tests for mcpd.stores.embedders against small OpenAI-compatible and Ollama-compatible services
on loopback (tests/embedding_service.py): real HTTP, real time limits, scripted failures."""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mcpd.interfaces import DEGRADED, DOWN, UP, EmbeddingError, EmbeddingModel, EmbeddingUnavailable, IEmbedder
from mcpd.stores.embedders import OLLAMA, OPENAI, HTTPEmbedder, OllamaEmbedder, OpenAIEmbedder, api_of, make_embedder
from tests.daemon import free_port
from tests.embedding_service import TOY_DIMENSION, TOY_MODEL, EmbeddingService, Fault, toy_vector

PATHS = {OPENAI: "/v1/embeddings", OLLAMA: "/api/embed"}


class EmbedderContract:
    """What both APIs do; subclasses name the API."""

    api = OPENAI
    service: EmbeddingService

    def setUp(self) -> None:
        self.service = EmbeddingService()
        self.base = self.service.listen(reactor)
        self.addCleanup(self.service.stop)

    def embedder(self, **options: Any) -> HTTPEmbedder:
        options.setdefault("backoff", 0.01)
        options.setdefault("timeout", 2.0)
        embedder = make_embedder(self.base + PATHS[self.api], options.pop("model", TOY_MODEL), reactor, **options)
        embedder.startService()
        self.addCleanup(embedder.stopService)  # type: ignore[attr-defined]
        return embedder

    def bodies(self) -> list[dict[str, Any]]:
        return [r.body for r in self.service.requests]

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IEmbedder, self.embedder()))  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_documents_are_embedded_in_order_in_batches_with_their_prefix(self) -> Any:
        embedder = self.embedder(batch=3, document_prefix="passage: ")
        texts = [f"text number {i}" for i in range(7)]
        vectors = yield embedder.embed_documents(texts)
        self.assertEqual([list(v) for v in vectors], [toy_vector("passage: " + t) for t in texts])
        inputs = [body["input"] for body in self.bodies()]
        # The probe first, then batches of three.
        self.assertEqual([len(i) for i in inputs], [1, 3, 3, 1])
        self.assertEqual(inputs[1][0], "passage: text number 0")
        self.assertTrue(all(body["model"] == TOY_MODEL for body in self.bodies()))

    @inlineCallbacks
    def test_a_query_gets_the_query_prefix(self) -> Any:
        embedder = self.embedder(query_prefix="search_query: ", document_prefix="search_document: ")
        vector = yield embedder.embed_query("where is the backup")
        self.assertEqual(list(vector), toy_vector("search_query: where is the backup"))
        self.assertEqual(self.bodies()[-1]["input"], ["search_query: where is the backup"])

    @inlineCallbacks
    def test_the_model_is_probed_once(self) -> Any:
        embedder = self.embedder()
        models = yield gatherResults([embedder.model(), embedder.model(), embedder.model()])
        self.assertEqual(models, [EmbeddingModel(TOY_MODEL, TOY_DIMENSION)] * 3)
        yield embedder.embed_documents(["a", "b"])
        yield embedder.model()
        self.assertEqual(len(self.service.requests), 2)

    @inlineCallbacks
    def test_server_errors_are_retried_with_backoff(self) -> Any:
        embedder = self.embedder(retries=3)
        yield embedder.model()
        self.service.faults = [Fault(500), Fault(503)]
        vectors = yield embedder.embed_documents(["hello"])
        self.assertEqual(len(vectors), 1)
        self.assertEqual(len(self.service.requests), 4)
        self.assertEqual(embedder.status().state, DEGRADED)
        yield embedder.embed_documents(["hello"])
        self.assertEqual(embedder.status().state, UP)

    @inlineCallbacks
    def test_a_service_failing_after_every_retry_is_unavailable(self) -> Any:
        embedder = self.embedder(retries=2)
        self.service.faults = [Fault(500, b'{"error": "CUDA out of memory"}')] * 3
        error = yield self.assertFailure(embedder.embed_documents(["hello"]), EmbeddingUnavailable)
        self.assertIn("HTTP 500", str(error))
        self.assertIn("CUDA out of memory", str(error))
        self.assertIn("after 3 attempts", str(error))
        self.assertEqual(len(self.service.requests), 3)
        self.assertEqual(embedder.status().state, DOWN)
        # The failed probe is not kept: the next call probes again, and works.
        self.assertEqual(len((yield embedder.embed_documents(["hello"]))), 1)
        self.assertEqual(embedder.status().state, UP)

    @inlineCallbacks
    def test_a_slow_service_times_out_and_is_retried(self) -> Any:
        embedder = self.embedder(timeout=0.3, retries=1)
        self.service.faults = [Fault(200, b"{}", delay=5.0), Fault(200, b"{}", delay=5.0)]
        started = time.monotonic()
        error = yield self.assertFailure(embedder.model(), EmbeddingUnavailable)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertIn("no answer within 0.3s", str(error))
        self.service.faults = [Fault(200, b"{}", delay=5.0)]
        self.assertEqual((yield embedder.model()).dimension, TOY_DIMENSION)

    @inlineCallbacks
    def test_retry_after_is_honoured(self) -> Any:
        embedder = self.embedder(retries=1)
        self.service.faults = [Fault(429, b'{"error": "rate limited"}', headers={"Retry-After": "0.4"})]
        started = time.monotonic()
        yield embedder.model()
        self.assertGreaterEqual(time.monotonic() - started, 0.4)

    @inlineCallbacks
    def test_a_refusal_is_not_retried_and_quotes_the_service(self) -> Any:
        embedder = self.embedder(retries=3)
        self.service.faults = [Fault(401, b'{"error": {"message": "Incorrect API key provided"}}')]
        error = yield self.assertFailure(embedder.model(), EmbeddingError)
        self.assertIn("HTTP 401", str(error))
        self.assertIn("Incorrect API key provided", str(error))
        self.assertEqual(len(self.service.requests), 1)
        self.assertEqual(embedder.status().state, DOWN)

    @inlineCallbacks
    def test_an_unknown_model_is_an_error_naming_it(self) -> Any:
        embedder = self.embedder(model="no-such-model")
        error = yield self.assertFailure(embedder.embed_query("x"), EmbeddingError)
        self.assertIn("no-such-model", str(error))
        self.assertIn("HTTP 404", str(error))

    @inlineCallbacks
    def test_vectors_of_another_dimension_are_refused(self) -> Any:
        embedder = self.embedder()
        yield embedder.model()
        self.service.dimension = 16  # the operator swapped the model behind the same name
        error = yield self.assertFailure(embedder.embed_documents(["hello"]), EmbeddingError)
        self.assertIn(f"dimension 16; it was {TOY_DIMENSION} when first probed", str(error))

    @inlineCallbacks
    def test_malformed_answers_are_errors(self) -> Any:
        embedder = self.embedder()
        for body, expected in (
            (b"<html>Bad gateway page</html>", "did not answer JSON"),
            (b'{"unexpected": true}', "unexpected shape"),
            (json.dumps(self.answer(["AAAA"])).encode(), "base64"),
            (json.dumps(self.answer([[1.0, "x"]])).encode(), "not a list of numbers"),
            (json.dumps(self.answer([[1.0], [2.0]])).encode(), "expected 1 embedding"),
        ):
            self.service.faults = [Fault(200, body)]
            error = yield self.assertFailure(embedder.embed_query("x"), EmbeddingError)
            self.assertIn(expected, str(error))

    def answer(self, vectors: list[Any]) -> dict[str, Any]:
        if self.api == OLLAMA:
            return {"model": TOY_MODEL, "embeddings": vectors}
        return {"data": [{"index": i, "embedding": v} for i, v in enumerate(vectors)]}

    @inlineCallbacks
    def test_a_service_that_is_not_there_is_unavailable(self) -> Any:
        embedder = make_embedder(
            f"http://127.0.0.1:{free_port()}{PATHS[self.api]}", TOY_MODEL, reactor, retries=1, backoff=0.01
        )
        embedder.startService()
        self.addCleanup(embedder.stopService)  # type: ignore[attr-defined]
        error = yield self.assertFailure(embedder.embed_query("x"), EmbeddingUnavailable)
        self.assertIn("embedding service is unavailable (temporary)", str(error))
        status = yield embedder.check()
        self.assertEqual(status.state, DOWN)

    @inlineCallbacks
    def test_check_probes_without_retrying(self) -> Any:
        embedder = self.embedder(retries=5)
        status = yield embedder.check()
        self.assertEqual(status.state, UP)
        self.assertIsNotNone(status.latency)
        self.service.faults = [Fault(503)]
        status = yield embedder.check()
        self.assertEqual(status.state, DOWN)
        self.assertEqual(len(self.service.requests), 2)


class OpenAIEmbedderTests(EmbedderContract, TestCase):
    api = OPENAI

    @inlineCallbacks
    def test_it_asks_for_floats_and_sends_the_key(self) -> Any:
        embedder = self.embedder(api_key="sk-test-123")
        self.assertIsInstance(embedder, OpenAIEmbedder)
        yield embedder.embed_query("hello")
        request = self.service.requests[-1]
        self.assertEqual(request.path, "/v1/embeddings")
        self.assertEqual(request.body["encoding_format"], "float")
        self.assertEqual(request.headers["authorization"], "Bearer sk-test-123")
        self.assertTrue(request.headers["content-type"].startswith("application/json"))


class OllamaEmbedderTests(EmbedderContract, TestCase):
    api = OLLAMA

    @inlineCallbacks
    def test_it_speaks_ollamas_api(self) -> Any:
        embedder = self.embedder()
        self.assertIsInstance(embedder, OllamaEmbedder)
        yield embedder.embed_query("hello")
        request = self.service.requests[-1]
        self.assertEqual(request.path, "/api/embed")
        self.assertEqual(set(request.body), {"model", "input"})
        self.assertNotIn("authorization", request.headers)


class ChoiceTests(SynchronousTestCase):
    def test_the_api_follows_the_path_unless_named(self) -> None:
        self.assertEqual(api_of("http://gpu:11434/api/embed"), OLLAMA)
        self.assertEqual(api_of("http://gpu:11434/api/embed/"), OLLAMA)
        self.assertEqual(api_of("http://gpu:8000/v1/embeddings"), OPENAI)
        self.assertEqual(api_of("https://api.openai.com/v1/embeddings"), OPENAI)
        embedder = make_embedder("http://gpu:9000/embed", "m", reactor, api=OLLAMA)
        self.assertIsInstance(embedder, OllamaEmbedder)

    def test_bad_choices_are_refused(self) -> None:
        with self.assertRaises(ValueError):
            make_embedder("http://gpu:9000/embed", "m", reactor, api="cohere")
        with self.assertRaises(ValueError):
            make_embedder("ftp://gpu/embed", "m", reactor)
