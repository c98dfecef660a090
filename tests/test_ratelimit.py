"""Tests for `mcpd.security.ratelimit`: token buckets on a Clock, and, over real sockets, one limit per
JSON-RPC message whatever carries it (a batch, a WebSocket, an /sse session)."""

from __future__ import annotations

import asyncio
import http.client
import json
import sys
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mcpd.interfaces import IBucketStore
from mcpd.protocol.errors import INVALID_REQUEST, LIMIT_EXCEEDED, LimitExceeded
from mcpd.security.ratelimit import MessageLimiter, RateLimit, RateLimiter, retry_after
from mcpd.stores.memory import MemoryBucketStore
from mcpd.tools.api import Caller
from tests.clients import RawSSE
from tests.daemon import MCPD, DaemonTestCase

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from wsclient import WSClient  # noqa: E402


class RateLimiterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryBucketStore(self.clock)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IBucketStore, self.store))

    def test_exactly_the_limit_per_window(self) -> None:
        limiter = RateLimiter(RateLimit(10, 60.0), self.store)
        results = [limiter.check("key:a") for _ in range(20)]
        self.assertEqual(sum(1 for wait in results if wait == 0), 10)
        self.assertAlmostEqual(results[10], 6.0)
        # Other clients have their own bucket.
        self.assertEqual(limiter.check("key:b"), 0)
        # One token comes back every window/limit seconds.
        self.clock.advance(6.0)
        self.assertEqual(limiter.check("key:a"), 0)
        self.assertGreater(limiter.check("key:a"), 0)
        # A whole window refills the bucket, never beyond its size.
        self.clock.advance(600)
        self.assertEqual(sum(1 for _ in range(20) if limiter.check("key:a") == 0), 10)

    def test_store_without_take_now(self) -> None:
        """A store that answers only with Deferreds (`IBucketStore.take`) limits alike."""

        @implementer(IBucketStore)
        class DeferredOnly:
            def __init__(self, store: MemoryBucketStore) -> None:
                self.take = store.take

        limiter = RateLimiter(RateLimit(3, 60.0), DeferredOnly(self.store))
        self.assertEqual([limiter.check("key:a") == 0 for _ in range(4)], [True, True, True, False])
        memory = RateLimiter(RateLimit(3, 60.0), MemoryBucketStore(self.clock))
        self.assertEqual([memory.check("key:a") == 0 for _ in range(4)], [True, True, True, False])

    def test_burst(self) -> None:
        limiter = RateLimiter(RateLimit(60, 60.0, burst=3), self.store)
        self.assertEqual([limiter.check("ip:x") == 0 for _ in range(4)], [True, True, True, False])
        self.clock.advance(1.0)
        self.assertEqual(limiter.check("ip:x"), 0)

    def test_retry_after(self) -> None:
        self.assertEqual(retry_after(0.01), 1)
        self.assertEqual(retry_after(5.2), 6)

    def test_idle_buckets_pruned(self) -> None:
        import mcpd.stores.memory as memory

        self.patch(memory, "_PRUNE_AT", 3)
        self.store = MemoryBucketStore(self.clock)
        for name in "abc":
            self.store.take(name, 2.0, 1.0)
        self.clock.advance(10)
        self.store.take("d", 2.0, 1.0)
        self.assertEqual(len(self.store), 1)

    def test_busy_buckets_make_the_next_prune_wait(self) -> None:
        import mcpd.stores.memory as memory

        self.patch(memory, "_PRUNE_AT", 3)
        self.store = MemoryBucketStore(self.clock)
        scans: list[int] = []
        prune = self.store._prune
        self.patch(self.store, "_prune", lambda *a: (scans.append(len(self.store)), prune(*a)))
        for name in "abcdefgh":  # all active: nothing can be pruned
            self.store.take(name, 2.0, 1.0)
        # A scan at 3 freed nothing; the next waits until the table has doubled (6 buckets).
        self.assertEqual(scans, [3, 6])
        self.assertEqual(len(self.store), 8)


class MessageLimiterTests(SynchronousTestCase):
    """The engine's per-message limit counts in the caller's account, as the gate does, with the
    gate's exemptions."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.limited: list[None] = []
        limiter = RateLimiter(RateLimit(2, 60.0), MemoryBucketStore(self.clock))
        self.limit = MessageLimiter(limiter, lambda: self.limited.append(None))

    def waits(self, caller: Caller, count: int = 3) -> list[int | None]:
        refusals = [self.limit(caller) for _ in range(count)]
        return [None if refusal is None else refusal.retry_after for refusal in refusals]

    def test_per_key(self) -> None:
        alice = Caller(name="alice", peer="127.0.0.1", transport="websocket", account="key:alice")
        self.assertEqual(self.waits(alice), [None, None, 30])
        self.assertEqual(len(self.limited), 1)
        refusal = self.limit(alice)
        self.assertIsInstance(refusal, LimitExceeded)
        self.assertEqual(refusal.code, LIMIT_EXCEEDED)
        self.assertEqual(refusal.data, {"limit": "rate", "max": 2, "scope": "caller", "retryAfter": 30})
        self.assertIn("2 messages per 60 s", refusal.message)

    def test_per_address_without_keys_loopback_free(self) -> None:
        remote = Caller(peer="203.0.113.9", transport="websocket", account="ip:203.0.113.9")
        self.assertEqual(self.waits(remote), [None, None, 30])
        for host in ("127.0.0.1", "::1"):
            loopback = Caller(peer=host, transport="websocket", account=f"ip:{host}")
            self.assertEqual(self.waits(loopback, 10), [None] * 10)

    def test_stdio_is_never_limited(self) -> None:
        local = Caller(name="local", peer="stdio", transport="stdio")
        self.assertEqual(self.waits(local, 10), [None] * 10)

    def test_a_remote_store(self) -> None:
        answers: list[Deferred[float]] = []

        @implementer(IBucketStore)
        class Remote:
            def take(self, key: str, capacity: float, rate: float) -> Deferred[float]:
                answers.append(Deferred())  # answered later, over the network
                return answers[-1]

        limit = MessageLimiter(RateLimiter(RateLimit(1, 1.0), Remote()), lambda: self.limited.append(None))
        pending = limit(Caller(name="a", transport="websocket", account="key:a"))
        self.assertNoResult(pending)
        answers[0].callback(7.0)
        refusal = self.successResultOf(pending)
        self.assertEqual(refusal.retry_after, 7)
        self.assertEqual(len(self.limited), 1)


# -- over real sockets ---------------------------------------------------------------------------

KEYS = "ws:ws-key\nbatch:batch-key\nsse:sse-key\n"
LIMIT = 5


def ping(request_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "ping"}


def initialize(version: str = "2025-03-26") -> dict[str, Any]:
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "limits", "version": "1"}}
    return {"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": params}


INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def post(port: int, path: str, message: Any, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers}
        connection.request("POST", path, json.dumps(message).encode(), headers)
        response = connection.getresponse()
        body = response.read()
        head = {k.lower(): v for k, v in response.getheaders()}
        return response.status, head, json.loads(body) if head.get("content-type") == "application/json" else body
    finally:
        connection.close()


def outcomes(answers: list[dict[str, Any]]) -> tuple[int, int]:
    """How many answers were results, and how many rate-limit errors (with their retry hint)."""
    served = sum(1 for answer in answers if "result" in answer)
    limited = [answer["error"] for answer in answers if answer.get("error", {}).get("code") == LIMIT_EXCEEDED]
    for error in limited:
        assert error["data"]["limit"] == "rate" and error["data"]["retryAfter"] >= 1, error
    return served, len(limited)


class MessageRateLimitTests(DaemonTestCase):
    """``--rate-limit 5``: five messages per key, whichever transport carries them. Each test
    uses its own key, so its bucket starts full."""

    timeout = 60

    def daemon(self) -> int:
        keys = self.workdir / "keys.txt"
        keys.write_text(KEYS, encoding="utf-8")
        daemon = self.start_daemon("--api-key-file", str(keys), "--rate-limit", str(LIMIT), "--rate-window", "600")
        assert daemon.port is not None
        self.port = daemon.port
        return daemon.port

    def rate_limited_total(self) -> float:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        connection.close()
        [line] = [line for line in text.splitlines() if line.startswith("mcp_rate_limited_total ")]
        return float(line.split()[1])

    def test_one_websocket_gets_the_limit_not_more(self) -> Deferred[None]:
        port = self.daemon()

        async def flood() -> list[dict[str, Any]]:
            client = await WSClient.connect("127.0.0.1", port, headers={"Authorization": "Bearer ws-key"})
            try:
                await client.send(initialize("2025-11-25"))
                assert "result" in await asyncio.wait_for(client.receive(), 10)
                for n in range(300):
                    client.send_frame(json.dumps(ping(n)).encode())
                await client.writer.drain()
                return [await asyncio.wait_for(client.receive(), 10) for _ in range(300)]
            finally:
                client.close()

        def check() -> None:
            answers = asyncio.run(flood())
            # The upgrade request and initialize took a token each; three pings were served, the
            # rest refused in-band, each answered (the connection stays open).
            self.assertEqual(outcomes(answers), (LIMIT - 2, 300 - LIMIT + 2))
            self.assertEqual(sorted(answer["id"] for answer in answers), list(range(300)))
            self.assertGreaterEqual(self.rate_limited_total(), 300 - LIMIT + 2)

        return self.in_thread(check)

    def test_a_batch_counts_each_message(self) -> Deferred[None]:
        port = self.daemon()
        key = {"Authorization": "Bearer batch-key"}

        def check() -> None:
            status, head, _ = post(port, "/mcp", initialize(), key)
            session = {**key, "Mcp-Session-Id": head["mcp-session-id"], "MCP-Protocol-Version": "2025-03-26"}
            post(port, "/mcp", INITIALIZED, session)
            # A batch over --max-batch is refused whole, its POST counted.
            status, head, body = post(port, "/mcp", [ping(n) for n in range(1000)], session)
            self.assertEqual(body["error"]["code"], INVALID_REQUEST)
            self.assertIn("at most 100 messages", body["error"]["message"])
            # Three requests so far; the batch's POST a fourth: one more of its messages is served.
            status, _, answers = post(port, "/mcp", [ping(n) for n in range(100)], session)
            self.assertEqual(status, 200)
            self.assertEqual(outcomes(answers), (LIMIT - 3, 100 - LIMIT + 3))
            # A single POST over the limit gets 429 from the gate.
            status, head, body = post(port, "/mcp", ping("one"), session)
            self.assertEqual(status, 429)
            self.assertGreaterEqual(int(head["retry-after"]), 1)

        return self.in_thread(check)

    def test_an_sse_session_counts_each_message(self) -> Deferred[None]:
        port = self.daemon()
        key = {"Authorization": "Bearer sse-key"}

        def check() -> None:
            stream = RawSSE(port, headers=key)
            try:
                post(port, stream.endpoint, initialize(), key)
                self.assertEqual(json.loads(stream.next_event()["data"])["id"], "init")
                post(port, stream.endpoint, INITIALIZED, key)
                # GET /sse and two POSTs so far; the batch's POST a third: one more of its
                # messages is served.
                status, _, _ = post(port, stream.endpoint, [ping(n) for n in range(20)], key)
                self.assertEqual(status, 202)
                answers = json.loads(stream.next_event()["data"])
                self.assertEqual(outcomes(answers), (LIMIT - 3, 20 - LIMIT + 3))
                # A single message over the limit is answered on the stream too (the POST is
                # accepted): a 429 would break the SDK's SSE client (docs/security.rst).
                status, _, _ = post(port, stream.endpoint, ping("one"), key)
                self.assertEqual(status, 202)
                self.assertEqual(outcomes([json.loads(stream.next_event()["data"])]), (0, 1))
            finally:
                stream.close()

        return self.in_thread(check)

    def test_stdio_has_no_limit(self) -> Deferred[None]:
        def check() -> None:
            server = self.spawn_stdio(MCPD, "--stdio", "--rate-limit", "1")
            server.send(initialize())
            server.receive()
            server.send(INITIALIZED)
            server.send([ping(n) for n in range(50)])
            self.assertEqual(outcomes(server.receive()), (50, 0))

        return self.in_thread(check)
