"""Tests for the monitoring side of `mcpd.security.gate`: who may read /stats, /metrics and
/dashboard, request ids, refusal counts and draining, in memory."""

from __future__ import annotations

from mcpd.lifecycle import DRAINING, SERVING, Lifecycle
from mcpd.security.gate import Gate
from mcpd.security.keys import APIKey, KeyRing
from tests.gate_harness import KEYS, GateTestCase


class AccessRuleTests(GateTestCase):
    def test_open_on_loopback_even_with_keys(self) -> None:
        self.make(keys=KEYS)
        for path in ("/stats", "/metrics", "/dashboard", "/dashboard/dashboard.js"):
            self.assertEqual(self.fetch(method="GET", path=path).status, 200, path)

    def test_beyond_loopback_needs_an_admin_key(self) -> None:
        self.make(keys=KEYS)
        self.assertEqual(self.fetch(method="GET", path="/metrics", peer="192.0.2.9").status, 401)
        refused = self.fetch({"Authorization": "Bearer alice-key"}, method="GET", path="/stats", peer="192.0.2.9")
        self.assertRefused(refused, 403, "admin-scoped API key")
        served = self.fetch({"Authorization": "Bearer root-key"}, method="GET", path="/stats", peer="192.0.2.9")
        self.assertEqual(served.status, 200)
        self.assertEqual(self.gate.refusals["forbidden"], 1)
        self.assertEqual(self.gate.refusals["auth_failure"], 1)

    def test_beyond_loopback_a_tenants_admin_key_is_refused(self) -> None:
        # The pages are server-wide (every tenant's requests, every key's holdings): only the
        # operator's admin keys (tenant default) read them beyond loopback.
        keys = KeyRing([*KEYS.keys, APIKey.from_secret("bob-key", "bob", ["admin"], "tb")])
        self.make(keys=keys)
        pages = ("/stats", "/metrics", "/dashboard")
        for path in pages:
            refused = self.fetch({"Authorization": "Bearer bob-key"}, method="GET", path=path, peer="192.0.2.9")
            self.assertRefused(refused, 403, "admin key of tenant 'default'")
        for path in pages:
            served = self.fetch({"Authorization": "Bearer root-key"}, method="GET", path=path, peer="192.0.2.9")
            self.assertEqual(served.status, 200, path)
        self.assertEqual(
            [(r["key"], r["tenant"]) for r in self.audit if r["outcome"] == "forbidden"], [("bob", "tb")] * 3
        )
        # On loopback (the operator's own machine) and with --public-metrics, as before.
        self.assertEqual(self.fetch({"Authorization": "Bearer bob-key"}, method="GET", path="/stats").status, 200)
        self.make(keys=keys, public_metrics=True)
        metrics = self.fetch({"Authorization": "Bearer bob-key"}, method="GET", path="/metrics", peer="192.0.2.9")
        self.assertEqual(metrics.status, 200)

    def test_health_and_ready_always_open(self) -> None:
        self.make(keys=KEYS)
        for path in ("/health", "/ready"):
            self.assertEqual(self.fetch(method="GET", path=path, peer="192.0.2.9").status, 200, path)

    def test_encoded_or_doubled_paths_are_not_routes(self) -> None:
        # Paths are matched exactly: another spelling of a route is no route, on loopback too.
        self.make(keys=KEYS)
        for path in ("/%6detrics", "//metrics", "/%2fstats", "/dash%62oard", "/stats/", "/./stats"):
            for peer in ("192.0.2.9", "127.0.0.1"):
                refused = self.fetch({"Authorization": "Bearer alice-key"}, method="GET", path=path, peer=peer)
                self.assertRefused(refused, 404, "is not a path of this server")

    def test_insecure_no_auth_still_guards_metrics(self) -> None:
        self.make(insecure_no_auth=True)
        self.assertRefused(self.fetch(method="GET", path="/metrics", peer="192.0.2.9"), 403, "--public-metrics")

    def test_public_metrics(self) -> None:
        self.make(keys=KEYS, public_metrics=True)
        self.assertEqual(self.fetch(method="GET", path="/metrics", peer="192.0.2.9").status, 200)
        # The MCP endpoint still needs its key.
        self.assertEqual(self.fetch(peer="192.0.2.9").status, 401)


class RequestIdTests(GateTestCase):
    def test_every_response_has_one(self) -> None:
        self.make(keys=KEYS)
        served = self.fetch({"Authorization": "Bearer root-key"})
        refused = self.fetch()
        ids = {served.headers["x-request-id"], refused.headers["x-request-id"]}
        self.assertEqual(len(ids), 2)
        self.assertEqual(self.recorder.callers[0].x_request_id, served.headers["x-request-id"])
        audited = list(self.audit)[-1]
        self.assertEqual(audited["x_request_id"], refused.headers["x-request-id"])

    def test_a_sane_given_id_is_kept(self) -> None:
        self.make()
        self.assertEqual(self.fetch({"X-Request-Id": "lb-42.a"}).headers["x-request-id"], "lb-42.a")
        odd = self.fetch({"X-Request-Id": "<script>"}).headers["x-request-id"]
        self.assertNotEqual(odd, "<script>")


class DrainingTests(GateTestCase):
    def test_refused_while_draining_but_probes_answer(self) -> None:
        lifecycle = Lifecycle()
        lifecycle.state = SERVING
        self.make(lifecycle=lifecycle)
        self.assertEqual(self.fetch().status, 200)
        lifecycle.state = DRAINING
        self.recorder.callers.clear()
        response = self.fetch()
        self.assertRefused(response, 503, "shutting down")
        self.assertEqual(response.headers["retry-after"], "2")
        self.assertEqual(self.fetch(method="GET", path="/ready").status, 200)  # the app answers 503 itself
        self.assertIsInstance(self.gate, Gate)
