"""Tests for `mcpd.protocol.ledger`: claims counted per account, shares and totals enforced with
errors a person can act on, and everything an account holds ended at once."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mcpd.protocol.errors import LIMIT_EXCEEDED, LimitExceeded, error_response, limit_status
from mcpd.protocol.ledger import CONNECTION, REPLAY, SESSION, STREAM, SUBSCRIPTION, Claim, Ledger, Limit, share


class CountingTests(SynchronousTestCase):
    def test_claims_are_counted_per_account_and_in_all(self) -> None:
        ledger = Ledger()
        a = ledger.claim("key:a", STREAM)
        ledger.claim("key:a", STREAM)
        ledger.claim("key:b", STREAM)
        self.assertEqual((ledger.held("key:a", STREAM), ledger.held("key:b", STREAM)), (2, 1))
        self.assertEqual(ledger.total(STREAM), 3)
        a.release()
        a.release()  # idempotent
        self.assertEqual(ledger.held("key:a", STREAM), 1)
        self.assertEqual(ledger.holdings(), {"key:a": {STREAM: 1}, "key:b": {STREAM: 1}})

    def test_the_share_of_one_account(self) -> None:
        ledger = Ledger({SESSION: Limit(total=10, per_account=2)})
        ledger.claim("key:alice", SESSION)
        ledger.claim("key:alice", SESSION)
        with self.assertRaises(LimitExceeded) as caught:
            ledger.claim("key:alice", SESSION)
        error = caught.exception
        self.assertEqual((error.code, error.status, error.retry_after), (LIMIT_EXCEEDED, 429, 5))
        self.assertEqual(error.data, {"limit": SESSION, "max": 2, "scope": "caller", "retryAfter": 5})
        self.assertIn("this API key holds 2 of at most 2", error.message)
        self.assertIn("DELETE with their Mcp-Session-Id", error.message)
        # Another account still has its share.
        ledger.claim("key:root", SESSION)
        self.assertEqual(ledger.held("key:alice", SESSION), 2)
        self.assertEqual(ledger.refused, {"sessions_limit": 1})

    def test_a_share_refused_elsewhere_is_refused_and_counted_alike(self) -> None:
        """A share held to elsewhere (a session's record, by the catalog) is refused as the
        ledger refuses its own, and counted with them."""
        ledger = Ledger({SUBSCRIPTION: Limit(per_account=1)})
        ledger.claim("key:alice", SUBSCRIPTION)
        with self.assertRaises(LimitExceeded) as caught:
            ledger.claim("key:alice", SUBSCRIPTION)
        error = ledger.over_share("key:alice", SUBSCRIPTION, 256, "256 in this session, at most 256")
        self.assertEqual((error.code, error.status, error.retry_after), (LIMIT_EXCEEDED, 429, 5))
        self.assertEqual(error.data, {"limit": SUBSCRIPTION, "max": 256, "scope": "caller", "retryAfter": 5})
        self.assertEqual(
            error.message,
            "Too many subscriptions: this API key holds 256 in this session, at most 256; unsubscribe from "
            "resources you no longer follow and retry",
        )
        self.assertEqual(
            caught.exception.message,
            "Too many subscriptions: this API key holds 1 of at most 1; unsubscribe from resources you no "
            "longer follow and retry",
        )
        self.assertEqual(ledger.refused, {"subscriptions_limit": 2})

    def test_the_total(self) -> None:
        ledger = Ledger({SESSION: Limit(total=3, per_account=2)})
        for account in ("ip:10.0.0.1", "ip:10.0.0.2", "ip:10.0.0.3"):
            ledger.claim(account, SESSION)
        with self.assertRaises(LimitExceeded) as caught:
            ledger.claim("ip:10.0.0.4", SESSION)
        self.assertEqual(caught.exception.status, 503)
        self.assertIn("its limit of 3", caught.exception.message)

    def test_addresses_are_named_as_such(self) -> None:
        ledger = Ledger({STREAM: Limit(per_account=1)})
        ledger.claim("ip:10.0.0.1", STREAM)
        with self.assertRaises(LimitExceeded) as caught:
            ledger.claim("ip:10.0.0.1", STREAM)
        self.assertIn("this client address holds 1 of at most 1", caught.exception.message)

    def test_take_and_give_quantities(self) -> None:
        ledger = Ledger({REPLAY: Limit(total=100, per_account=60)})
        self.assertTrue(ledger.take("key:a", REPLAY, 50))
        self.assertFalse(ledger.take("key:a", REPLAY, 11))
        self.assertTrue(ledger.take("key:b", REPLAY, 50))
        self.assertFalse(ledger.take("key:c", REPLAY, 1))  # the total
        ledger.give("key:a", REPLAY, 50)
        self.assertEqual(ledger.total(REPLAY), 50)
        self.assertEqual(ledger.holdings(), {"key:b": {REPLAY: 50}})

    def test_share(self) -> None:
        self.assertEqual(share(1000, 25), 250)
        self.assertEqual(share(2, 25), 1)

    def test_limit_status_of_an_error_response(self) -> None:
        caller = LimitExceeded("x", limit=STREAM, maximum=1, per_caller=True, retry_after=7)
        server = LimitExceeded("x", limit=SESSION, maximum=1, per_caller=False)
        self.assertEqual(limit_status(error_response(1, caller.to_error())["error"]), (429, 7))
        self.assertEqual(limit_status(error_response(1, server.to_error())["error"]), (503, 5))
        self.assertIsNone(limit_status({"code": -32602, "message": "x"}))


class Recorder:
    """A participant that records what it is told."""

    def __init__(self) -> None:
        self.told: list[tuple[str, ...]] = []

    def end_matching(self, match: object, reason: str) -> int:
        self.told.append(("end", reason))
        return 0

    def rescoped(self, account: str, scopes: frozenset[str], narrowed: bool) -> None:
        self.told.append(("rescoped", account, ",".join(sorted(scopes)), str(narrowed)))


class EndingTests(SynchronousTestCase):
    def test_end_an_account(self) -> None:
        ledger = Ledger()
        ended: list[tuple[str, str]] = []
        ledger.claim("key:a", STREAM, end=lambda why: ended.append(("stream", why)))
        ledger.claim("key:a", CONNECTION, end=lambda why: ended.append(("connection", why)))
        ledger.claim("key:a", SESSION)  # counted only: its owner gives it back
        ledger.claim("key:b", STREAM, end=lambda why: ended.append(("b", why)))
        self.assertEqual(ledger.end_accounts(["key:a"], "revoked"), 2)
        self.assertEqual(ended, [("stream", "revoked"), ("connection", "revoked")])
        self.assertEqual(ledger.held("key:a", STREAM), 0)
        self.assertEqual(ledger.held("key:a", SESSION), 1)
        self.assertEqual(ledger.held("key:b", STREAM), 1)
        self.assertEqual(ledger.end_accounts([], "nothing"), 0)

    def test_an_end_that_releases_other_claims(self) -> None:
        ledger = Ledger()
        inner: list[Claim] = []
        ledger.claim("key:a", SESSION, end=lambda why: inner[0].release())
        inner.append(ledger.claim("key:a", STREAM, end=lambda why: None))
        self.assertEqual(ledger.end_accounts(["key:a"], "revoked"), 1)
        self.assertEqual(ledger.holdings(), {})

    def test_end_by_address(self) -> None:
        ledger = Ledger()
        ended: list[str] = []
        ledger.claim("key:a", STREAM, peer="10.0.0.1", end=ended.append)
        ledger.claim("key:a", STREAM, peer="192.0.2.1", end=ended.append)
        self.assertEqual(ledger.end(lambda _account, peer: peer.startswith("10."), "address refused"), 1)
        self.assertEqual(ledger.held("key:a", STREAM), 1)

    def test_participants_and_rescope(self) -> None:
        ledger = Ledger()
        participant = Recorder()
        ledger.participants.append(participant)
        told = participant.told
        ledger.claim("key:a", STREAM, rescope=lambda scopes, narrowed: told.append(("claim", ",".join(scopes))))
        ledger.rescope("key:a", frozenset({"read"}), True)
        self.assertEqual(told, [("rescoped", "key:a", "read", "True"), ("claim", "read")])
        ledger.end_accounts(["key:a"], "revoked")
        self.assertEqual(told[-1], ("end", "revoked"))
