"""Tests for `mcpd.security.gate` (and `mcpd.security.identity`): the per-request policy, in memory."""

from __future__ import annotations

import gc
import json

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from mcpd.interfaces import IBucketStore
from mcpd.security.addresses import AddressList
from mcpd.security.gate import REFUSAL_INTERVAL, REFUSAL_LINES
from mcpd.security.keys import APIKey, KeyRing
from mcpd.security.ratelimit import RateLimit, RateLimiter
from mcpd.stores.memory import MemoryBucketStore
from mcpd.tools.api import Caller
from tests.gate_harness import KEYS, GateTestCase, Recorder
from tests.http_harness import HTTPConnection, assert_no_content, parse_response


class NoKeyTests(GateTestCase):
    def test_loopback_served_anonymously(self) -> None:
        self.make()
        self.assertEqual(self.fetch().status, 200)
        self.assertEqual(self.recorder.callers, [Caller(peer="127.0.0.1", transport="http", account="ip:127.0.0.1")])

    def test_beyond_loopback_refused_without_keys(self) -> None:
        self.make()
        self.assertRefused(self.fetch(peer="192.0.2.7"), 403, "loopback clients only")

    def test_insecure_no_auth(self) -> None:
        self.make(insecure_no_auth=True)
        self.assertEqual(self.fetch(peer="192.0.2.7").status, 200)

    def test_loopback_not_rate_limited_without_keys(self) -> None:
        self.make(limiter=RateLimiter(RateLimit(1, 60.0), MemoryBucketStore(Clock())))
        self.assertEqual([self.fetch().status for _ in range(3)], [200, 200, 200])

    def test_ip_rate_limit_beyond_loopback(self) -> None:
        self.make(insecure_no_auth=True, limiter=RateLimiter(RateLimit(2, 60.0), MemoryBucketStore(Clock())))
        statuses = [self.fetch(peer="192.0.2.7").status for _ in range(3)]
        self.assertEqual(statuses, [200, 200, 429])
        self.assertEqual(self.fetch(peer="192.0.2.8").status, 200)


class KeyTests(GateTestCase):
    def setUp(self) -> None:
        self.make(keys=KEYS)

    def test_no_key(self) -> None:
        response = self.fetch()
        body = self.assertRefused(response, 401, "needs an API key")
        self.assertIn("Authorization: Bearer", body["hint"])
        self.assertEqual(response.headers["www-authenticate"], 'Bearer realm="mcpd"')
        self.assertEqual([r["outcome"] for r in self.audit], ["auth_failure"])

    def test_wrong_key(self) -> None:
        response = self.fetch({"Authorization": "Bearer nope"})
        self.assertRefused(response, 401, "not valid")
        self.assertIn('error="invalid_token"', response.headers["www-authenticate"])
        self.assertNotIn("nope", json.dumps(list(self.audit)))

    def test_bearer_and_x_api_key(self) -> None:
        self.assertEqual(self.fetch({"Authorization": "Bearer alice-key"}).status, 200)
        self.assertEqual(self.fetch({"X-API-Key": "root-key"}).status, 200)
        self.assertEqual(self.fetch({"Authorization": "bearer  alice-key "}).status, 200)
        names = [(c.name, c.scopes, c.account) for c in self.recorder.callers]
        self.assertEqual(
            names,
            [
                ("alice", frozenset({"read"}), "key:alice"),
                ("root", frozenset({"admin"}), "key:root"),
                ("alice", frozenset({"read"}), "key:alice"),
            ],
        )

    def test_identity_follows_the_key_address_and_reload(self) -> None:
        """Identities are kept between requests (`Gate._identity`), never across what makes them:
        another address, or a reload that gives a key name other scopes or another tenant."""
        self.make(keys=KEYS, insecure_no_auth=True)
        key = {"X-API-Key": "alice-key"}
        for peer in ("10.0.0.5", "10.0.0.5", "10.0.0.6"):
            self.assertEqual(self.fetch(key, peer=peer).status, 200)
        self.gate.keys = KeyRing([APIKey.from_secret("alice-key", "alice", ["write"], tenant="acme")])
        self.assertEqual(self.fetch(key, peer="10.0.0.5").status, 200)
        self.gate.keys = KeyRing()  # no keys: the address is the account
        self.assertEqual(self.fetch(peer="10.0.0.5").status, 200)
        seen = [(c.name, c.scopes, c.peer, c.account, c.tenant) for c in self.recorder.callers]
        read, write = frozenset({"read"}), frozenset({"write"})
        self.assertEqual(
            seen,
            [
                ("alice", read, "10.0.0.5", "key:alice", "default"),
                ("alice", read, "10.0.0.5", "key:alice", "default"),
                ("alice", read, "10.0.0.6", "key:alice", "default"),
                ("alice", write, "10.0.0.5", "key:alice", "acme"),
                ("anonymous", frozenset(), "10.0.0.5", "ip:10.0.0.5", "default"),
            ],
        )

    def test_a_connection_checks_its_bearer_key_once(self) -> None:
        """A keep-alive connection that sends the same Bearer header again is not hashed again
        (`KEY_MEMO`); another header, a refused key and a reload are each checked afresh."""
        found: list[str] = []

        def ring(*keys: APIKey) -> KeyRing:
            keyring = KeyRing(keys)
            find = keyring.find
            self.patch(keyring, "find", lambda presented: found.append(presented) or find(presented))
            return keyring

        alice, root = KEYS.keys
        self.make(keys=ring(alice, root))
        connection = self.connect()

        def status(headers: dict[str, str]) -> int:
            connection.transport.clear()
            connection.send("POST", "/mcp", headers, b"{}")
            return connection.response.status

        as_alice, as_root = {"Authorization": "Bearer alice-key"}, {"Authorization": "Bearer root-key"}
        self.assertEqual([status(as_alice) for _ in range(3)], [200, 200, 200])
        self.assertEqual(found, ["alice-key"])
        self.assertEqual(status(as_root), 200)
        self.assertEqual(status({"Authorization": "Bearer nope"}), 401)
        self.assertEqual(status({"X-API-Key": "alice-key"}), 200)
        self.assertEqual(status(as_root), 200)
        # (A refused key and an X-API-Key leave the connection's last Bearer key as it was.)
        self.assertEqual(found, ["alice-key", "root-key", "nope", "alice-key"])
        # A reload: root revoked, alice's scopes changed; the same connection and header.
        self.gate.keys = ring(APIKey.from_secret("alice-key", "alice", ["write"]))
        self.assertEqual(status(as_root), 401)
        self.assertEqual(status(as_alice), 200)
        self.assertEqual(status(as_alice), 200)
        self.assertEqual(found[4:], ["root-key", "alice-key"])
        seen = [(c.name, c.scopes) for c in self.recorder.callers]
        read, admin, write = frozenset({"read"}), frozenset({"admin"}), frozenset({"write"})
        self.assertEqual(
            seen,
            [("alice", read)] * 3 + [("root", admin), ("alice", read), ("root", admin)] + [("alice", write)] * 2,
        )

    def test_key_in_query_refused(self) -> None:
        for method, path in (
            ("POST", "/mcp?api_key=root-key"),
            ("POST", "/mcp?x=1&token=root-key"),
            ("GET", "/sse?Key=root-key"),
        ):
            response = self.fetch({"Authorization": "Bearer root-key"}, method=method, path=path)
            self.assertRefused(response, 401, "refused in the URL")

    def test_public_health(self) -> None:
        self.assertEqual(self.fetch(method="GET", path="/health", body=b"").status, 200)

    def test_refused_body_discarded_connection_kept(self) -> None:
        response = self.fetch(body=b'{"x": 1}')
        self.assertEqual(response.status, 401)
        self.assertNotEqual(response.headers.get("connection"), "close")
        self.assertFalse(self.connection.transport.disconnecting)
        self.assertEqual(self.recorder.bodies, [])


class NetworkTests(GateTestCase):
    def test_allowlist(self) -> None:
        self.make(keys=KEYS, allowed=AddressList(["10.0.0.0/8"]))
        key = {"X-API-Key": "root-key"}
        self.assertEqual(self.fetch(key, peer="10.1.1.1").status, 200)
        self.assertEqual(self.fetch(key, peer="::ffff:10.1.1.1").status, 200)
        self.recorder.callers.clear()
        self.assertRefused(self.fetch(key, peer="::ffff:127.0.0.1"), 403, "allowlist")

    def test_spoofed_forwarded_for_ignored(self) -> None:
        self.make(keys=KEYS, allowed=AddressList(["10.0.0.0/8"]), proxies=AddressList(["192.0.2.1"]))
        spoof = {"X-API-Key": "root-key", "X-Forwarded-For": "10.1.1.1", "X-Real-IP": "10.1.1.1"}
        self.assertRefused(self.fetch(spoof, peer="198.51.100.3"), 403, "198.51.100.3")

    def test_trusted_proxy(self) -> None:
        self.make(keys=KEYS, allowed=AddressList(["10.0.0.0/8"]), proxies=AddressList(["192.0.2.1"]))
        headers = {"X-API-Key": "root-key", "X-Forwarded-For": "10.1.1.1"}
        self.assertEqual(self.fetch(headers, peer="192.0.2.1").status, 200)
        self.assertEqual(self.recorder.callers[0].peer, "10.1.1.1")
        self.assertEqual(self.recorder.callers[0].account, "key:root")
        headers["X-Forwarded-For"] = "10.1.1.1, 203.0.113.5"
        self.recorder.callers.clear()
        self.assertRefused(self.fetch(headers, peer="192.0.2.1"), 403, "203.0.113.5")

    def test_account_without_keys_is_the_client_behind_the_proxy(self) -> None:
        self.make(insecure_no_auth=True, proxies=AddressList(["192.0.2.1"]))
        self.assertEqual(self.fetch({"X-Forwarded-For": "10.1.1.1"}, peer="192.0.2.1").status, 200)
        self.assertEqual(self.recorder.callers[0].account, "ip:10.1.1.1")


class OriginTests(GateTestCase):
    def test_evil_origin(self) -> None:
        self.make()
        self.assertRefused(self.fetch({"Origin": "https://evil.example"}), 403, "https://evil.example")
        self.assertRefused(self.fetch({"Host": "evil.example"}), 403, "evil.example")

    def test_cors_origin(self) -> None:
        self.make(cors_origins=["https://app.example"])
        response = self.fetch({"Origin": "https://app.example"})
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["access-control-allow-origin"], "https://app.example")
        self.assertIn("Mcp-Session-Id", response.headers["access-control-expose-headers"])

    def test_preflight(self) -> None:
        self.make(keys=KEYS, cors_origins=["*"])
        headers = {
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, mcp-protocol-version",
        }
        response = self.fetch(headers, method="OPTIONS", body=b"")
        self.assertEqual(response.status, 204)
        self.assertEqual(response.headers["access-control-allow-origin"], "https://app.example")
        self.assertEqual(response.headers["access-control-allow-headers"], "authorization, mcp-protocol-version")
        self.assertIn("POST", response.headers["access-control-allow-methods"])
        self.assertEqual(self.recorder.callers, [])

    def test_preflight_has_no_content_and_keeps_the_connection(self) -> None:
        self.make(keys=KEYS, cors_origins=["https://app.example"])
        connection = self.connect()
        preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        for _ in range(2):
            connection.send("OPTIONS", "/mcp", preflight)
            response = assert_no_content(self, connection.transport.value())
            self.assertEqual(response.headers["access-control-max-age"], "600")
            connection.transport.clear()
        connection.send("POST", "/mcp", {"X-API-Key": "root-key"}, b"{}")
        response = connection.response
        self.assertEqual((response.status, response.body), (200, b"served"))
        self.assertFalse(connection.transport.disconnecting)

    def test_preflight_answered_before_its_body(self) -> None:
        """A preflight with a body of unknown length is answered at once (`raw_response`), and
        the connection closed: still no Content-Length."""
        self.make(keys=KEYS, cors_origins=["https://app.example"])
        connection = self.connect()
        connection.protocol.dataReceived(
            b"OPTIONS /mcp HTTP/1.1\r\nHost: localhost\r\nOrigin: https://app.example\r\n"
            b"Access-Control-Request-Method: POST\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        response = assert_no_content(self, connection.transport.value())
        self.assertEqual(response.headers["connection"], "close")
        self.assertEqual(response.headers["access-control-allow-origin"], "https://app.example")
        self.assertTrue(connection.transport.disconnecting)

    def test_preflight_over_http_1_0(self) -> None:
        self.make(keys=KEYS, cors_origins=["https://app.example"])
        connection = self.connect()
        connection.protocol.dataReceived(
            b"OPTIONS /mcp HTTP/1.0\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n\r\n"
        )
        assert_no_content(self, connection.transport.value(), b"HTTP/1.0")
        self.assertTrue(connection.transport.disconnecting)

    def test_refusals_carry_cors_headers(self) -> None:
        self.make(keys=KEYS, cors_origins=["https://app.example"])
        for path, status in (("/mcp", 401), ("//mcp", 404)):
            response = self.fetch({"Origin": "https://app.example"}, path=path)
            self.assertEqual(response.status, status)
            self.assertEqual(response.headers["access-control-allow-origin"], "https://app.example")

    def test_no_preflight_for_an_unknown_path(self) -> None:
        self.make(keys=KEYS, cors_origins=["*"])
        headers = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        self.assertEqual(self.fetch(headers, method="OPTIONS", path="/mcp", body=b"").status, 204)
        self.assertRefused(self.fetch(headers, method="OPTIONS", path="//mcp", body=b""), 404, "not a path")


class LimitTests(GateTestCase):
    def test_too_large_by_length(self) -> None:
        self.make(max_body=10)
        connection = self.connect()
        connection.protocol.dataReceived(
            b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Length: 11\r\n\r\n" + b"x" * 5
        )
        response = connection.response
        self.assertEqual((response.status, json.loads(response.body)["error"][:17]), (413, "Payload Too Large"))
        self.assertEqual(response.headers["connection"], "close")
        self.assertTrue(connection.transport.disconnecting)
        connection.protocol.dataReceived(b"x" * 6)
        self.assertEqual(self.recorder.callers, [])

    def test_too_large_chunked(self) -> None:
        self.make(max_body=10)
        connection = self.connect()
        connection.protocol.dataReceived(
            b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n"
        )
        self.assertEqual(connection.response.status, 413)
        self.assertTrue(connection.transport.disconnecting)
        self.assertEqual(self.recorder.callers, [])

    def test_rate_limit_per_key(self) -> None:
        self.make(keys=KEYS, limiter=RateLimiter(RateLimit(3, 60.0), MemoryBucketStore(Clock())))
        statuses = [self.fetch({"X-API-Key": "alice-key"}).status for _ in range(3)]
        response = self.fetch({"X-API-Key": "alice-key"})
        self.assertEqual(statuses, [200, 200, 200])
        self.assertEqual(response.status, 429)
        self.assertEqual(response.headers["retry-after"], "20")
        self.assertEqual(json.loads(response.body), {"error": "Rate limit exceeded", "retry_after": 20})
        self.assertEqual(self.fetch({"X-API-Key": "root-key"}).status, 200)
        self.assertEqual([r["outcome"] for r in self.audit], ["rate_limited"])
        self.assertEqual(list(self.audit)[0]["key"], "alice")

    def test_refusals_are_audited_in_the_keys_tenant(self) -> None:
        """A refused key's record belongs to its tenant (server.audit shows it to that tenant's
        admin); a refusal before any key is known, to the default tenant."""
        keys = KeyRing([APIKey.from_secret("acme-key", "ann", ["read"], tenant="acme")])
        self.make(keys=keys, limiter=RateLimiter(RateLimit(1, 60.0), MemoryBucketStore(Clock())))
        self.assertEqual([self.fetch({"X-API-Key": "acme-key"}).status for _ in range(2)], [200, 429])
        self.assertEqual(self.fetch({"X-API-Key": "wrong"}).status, 401)
        self.assertEqual(
            [(r["outcome"], r["key"], r["tenant"]) for r in self.audit],
            [("rate_limited", "ann", "acme"), ("auth_failure", None, "default")],
        )


class FailedKeyTests(GateTestCase):
    """Finding 5 of rf_doors: failed keys were never rate-limited (unlimited guessing) and
    each logged two lines (a flood of the log)."""

    def test_failed_keys_take_from_the_address_bucket_beyond_loopback(self) -> None:
        self.make(keys=KEYS, limiter=RateLimiter(RateLimit(3, 60.0), MemoryBucketStore(Clock())))
        guesses = [self.fetch({"Authorization": f"Bearer guess-{n}"}, peer="203.0.113.9") for n in range(5)]
        self.assertEqual([r.status for r in guesses], [401] * 3 + [429] * 2)
        self.assertEqual(guesses[-1].headers["retry-after"], "20")
        self.assertEqual(json.loads(guesses[-1].body), {"error": "Rate limit exceeded", "retry_after": 20})
        # A missing key counts as a failed one.
        self.assertEqual(self.fetch(peer="203.0.113.9").status, 429)
        self.assertEqual([r["outcome"] for r in self.audit], ["auth_failure"] * 3 + ["rate_limited"] * 3)
        self.assertEqual({r["peer"] for r in self.audit}, {"203.0.113.9"})
        # A valid key from the same address is counted in its own bucket, not the address's;
        # another address has a bucket of its own; loopback is never limited.
        self.assertEqual(self.fetch({"X-API-Key": "alice-key"}, peer="203.0.113.9").status, 200)
        self.assertEqual(self.fetch({"X-API-Key": "wrong"}, peer="203.0.113.10").status, 401)
        self.assertEqual({self.fetch({"X-API-Key": "wrong"}).status for _ in range(5)}, {401})

    def test_behind_a_trusted_proxy_the_client_pays(self) -> None:
        self.make(
            keys=KEYS,
            proxies=AddressList(["127.0.0.1"]),
            limiter=RateLimiter(RateLimit(2, 60.0), MemoryBucketStore(Clock())),
        )
        statuses = [self.fetch({"X-API-Key": "x", "X-Forwarded-For": "203.0.113.9"}).status for _ in range(3)]
        self.assertEqual(statuses, [401, 401, 429])
        self.assertEqual(self.fetch({"X-API-Key": "x", "X-Forwarded-For": "203.0.113.7"}).status, 401)

    def test_without_a_limiter_failed_keys_are_refused_as_before(self) -> None:
        self.make(keys=KEYS)
        self.assertEqual({self.fetch({"X-API-Key": "x"}, peer="203.0.113.9").status for _ in range(20)}, {401})

    def test_a_remote_store_answers_later(self) -> None:
        store = LaterStore()
        self.make(keys=KEYS, limiter=RateLimiter(RateLimit(1, 60.0), store))
        statuses = []
        for _ in range(2):
            connection = self.connect("203.0.113.9")
            connection.send("POST", "/mcp", {"X-API-Key": "x"}, b"{}")
            store.answer()
            statuses.append(connection.response.status)
        self.assertEqual(statuses, [401, 429])
        self.assertEqual([r["outcome"] for r in self.audit], ["auth_failure", "rate_limited"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_one_clients_refusal_lines_are_bounded(self) -> None:
        clock = Clock()
        self.make(keys=KEYS, clock=clock)
        lines: list[str] = []

        def observe(event: dict[str, object]) -> None:
            if event.get("log_namespace") == "mcpd.gate" and str(event.get("log_format", "")).startswith("Refused"):
                lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        for _ in range(REFUSAL_LINES + 25):
            self.fetch({"X-API-Key": "x"}, peer="203.0.113.9")
        self.assertEqual(len(lines), REFUSAL_LINES)
        self.assertIn("further refusals from 203.0.113.9 are left out of the log", lines[-1])
        # Every refusal is counted and audited all the same.
        self.assertEqual(self.gate.refusals["auth_failure"], REFUSAL_LINES + 25)
        self.assertEqual(len(self.audit), REFUSAL_LINES + 25)
        # Another client, and loopback, have lines of their own.
        self.fetch({"X-API-Key": "x"}, peer="203.0.113.10")
        for _ in range(REFUSAL_LINES + 1):
            self.fetch({"X-API-Key": "x"})
        self.assertEqual(len(lines), 2 * REFUSAL_LINES + 2)
        # The next interval: the first line says how many were left out.
        clock.advance(REFUSAL_INTERVAL)
        self.fetch({"X-API-Key": "x"}, peer="203.0.113.9")
        self.assertIn("(25 earlier refusal(s) from 203.0.113.9 left out of the log)", lines[-1])


class SessionMessageTests(GateTestCase):
    """A live /sse session's POSTs are left to the engine's count (answered in-band); every
    other POST to /messages/ is counted here."""

    def test_only_a_live_session_of_the_callers_is_left_to_the_engine(self) -> None:
        self.make(keys=KEYS, limiter=RateLimiter(RateLimit(2, 60.0), MemoryBucketStore(Clock())))
        asked: list[tuple[bytes, str]] = []

        def in_session(query: bytes, name: str) -> bool:
            asked.append((query, name))
            return query == b"session_id=live" and name == "alice"

        self.gate.in_session = in_session
        alice = {"X-API-Key": "alice-key"}
        served = [self.fetch(alice, path="/messages/?session_id=live").status for _ in range(5)]
        self.assertEqual(served, [200] * 5)
        statuses = [
            self.fetch(alice, path="/messages/?session_id=other").status,
            self.fetch(alice, path="/messages/").status,
            self.fetch(alice, path="/messages/?session_id=other").status,
            self.fetch({"X-API-Key": "root-key"}, path="/messages/?session_id=live").status,
        ]
        self.assertEqual(statuses, [200, 200, 429, 200])
        self.assertEqual(asked[-1], (b"session_id=live", "root"))
        # Other routes never ask.
        count = len(asked)
        self.assertEqual(self.fetch({"X-API-Key": "root-key"}).status, 200)
        self.assertEqual(len(asked), count)


@implementer(IBucketStore)
class FailingStore:
    """A remote bucket store that is down."""

    def take(self, key: str, capacity: float, rate: float) -> Deferred[float]:
        return fail(ConnectionError("the bucket store is down"))


@implementer(IBucketStore)
class LaterStore:
    """A remote bucket store whose answers come later, as a network's do: after the whole
    request has been read (and the channel has forgotten its request line)."""

    def __init__(self) -> None:
        self.store = MemoryBucketStore(Clock())
        self.pending: list[tuple[Deferred[float], float]] = []

    def take(self, key: str, capacity: float, rate: float) -> Deferred[float]:
        d: Deferred[float] = Deferred()
        self.pending.append((d, self.store.take(key, capacity, rate).result))  # type: ignore[attr-defined]
        return d

    def answer(self) -> None:
        pending, self.pending = self.pending, []
        for d, wait in pending:
            d.callback(wait)


class RemoteStoreTests(GateTestCase):
    def test_a_later_answer_over_the_limit_is_a_429(self) -> None:
        # Regression: the refusal's log line read the request line from the channel, which had
        # forgotten it by then (AttributeError, answered 503).
        store = LaterStore()
        self.make(keys=KEYS, limiter=RateLimiter(RateLimit(1, 60.0), store))
        statuses = []
        for _ in range(2):
            connection = self.connect("127.0.0.1")
            connection.send("POST", "/mcp", {"X-API-Key": "alice-key"}, b"{}")
            store.answer()
            statuses.append(connection.response.status)
        self.assertEqual(statuses, [200, 429])
        self.assertEqual([r["outcome"] for r in self.audit], ["rate_limited"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_client_that_leaves_before_the_answer_is_forgotten(self) -> None:
        """The store's answer (within the limit or over it) for a client that has gone is
        dropped: nothing is served, nothing refused, and no error is left in a Deferred."""
        store = LaterStore()
        self.make(keys=KEYS, limiter=RateLimiter(RateLimit(1, 60.0), store))
        for _ in range(2):
            connection = self.connect("127.0.0.1")
            connection.send("POST", "/mcp", {"X-API-Key": "alice-key"}, b"{}")
            connection.disconnect()
            store.answer()
            gc.collect()  # an unhandled error in a Deferred is logged when it is collected
        self.assertEqual(self.recorder.callers, [])
        self.assertEqual(list(self.audit), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_failing_store_is_a_503_not_a_hang(self) -> None:
        self.make(keys=KEYS, limiter=RateLimiter(RateLimit(3, 60.0), FailingStore()))
        response = self.fetch({"X-API-Key": "alice-key"})
        self.assertRefused(response, 503, "try again shortly")
        self.assertEqual(response.headers["retry-after"], "5")
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)


class Broken(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        raise ValueError("a bug")


class ProcessingFailedTests(GateTestCase):
    def test_a_resource_that_raises_is_a_json_500(self) -> None:
        self.make()
        self.site.resource = Broken()
        response = self.fetch()
        self.assertEqual(response.status, 500)
        self.assertEqual(response.headers["content-type"], "application/json")
        self.assertIn("see its log", json.loads(response.body)["error"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class CallerOfTests(SynchronousTestCase):
    def test_without_policy(self) -> None:
        site = Site(Recorder())
        site.reactor = Clock()
        connection = HTTPConnection(site, peer=IPv4Address("TCP", "192.0.2.9", 1234))
        connection.send("POST", "/mcp", {}, b"{}")
        expected = Caller(peer="192.0.2.9", transport="http", account="ip:192.0.2.9")
        self.assertEqual(site.resource.callers, [expected])  # type: ignore[attr-defined]
        self.assertEqual(parse_response(connection.transport.value()).status, 200)
