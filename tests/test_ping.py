"""The server pinging its client (2025-11-25 basic/utilities/ping), in memory."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpd.protocol.engine import Engine
from mcpd.protocol.versions import LATEST_LEGACY
from mcpd.tools import ToolRegistry
from tests import fixture_pack
from tests.engine_harness import Peer, assert_valid, legacy_peer


def engine() -> Engine:
    return Engine(ToolRegistry([fixture_pack.pack]), clock=Clock(), client_timeout=5)


class ServerPingTests(SynchronousTestCase):
    def test_the_client_answers(self) -> None:
        peer = legacy_peer(self, e=engine())
        d = peer.start(peer.message("tools/call", {"name": "tests.ping_client"}))
        self.assertNoResult(d)
        [ping] = peer.notes
        self.assertEqual((ping["method"], ping.get("params")), ("ping", {}))
        assert_valid(self, LATEST_LEGACY, ping)
        self.assertIsNone(peer.send({"jsonrpc": "2.0", "id": ping["id"], "result": {}}))
        self.assertEqual(self.successResultOf(d)["result"]["content"][0]["text"], "pong {}")

    def test_a_silent_client_times_out(self) -> None:
        e = engine()
        peer = legacy_peer(self, e=e)
        d = peer.start(peer.message("tools/call", {"name": "tests.ping_client"}))
        e.clock.advance(5.1)  # type: ignore[attr-defined]
        result = self.successResultOf(d)["result"]
        self.assertTrue(result["isError"])
        self.assertIn("did not answer", result["content"][0]["text"])

    def test_the_stateless_era_has_no_server_requests(self) -> None:
        peer = Peer(self, engine(), modern=True)
        result = peer.call("tests.ping_client")
        self.assertTrue(result["isError"])
        self.assertIn("2026-07-28", result["content"][0]["text"])
        self.assertEqual(peer.notes, [])
        self.assertEqual(result["resultType"], "complete")
