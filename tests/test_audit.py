"""Tests for `mcpd.observe.audit`: records, the bounded buffer, the engine observer."""

from __future__ import annotations

import json

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mcpd.observe.audit import AuditTrail
from mcpd.protocol.vocabulary import CallRecord
from mcpd.tools.api import Caller


def _call(method: str, outcome: str, tool: str | None = None) -> CallRecord:
    caller = Caller(name="alice", scopes=frozenset({"read"}), peer="10.0.0.5", transport="http")
    return CallRecord(
        request_id=7, method=method, tool=tool, caller=caller, version="2026-07-28", outcome=outcome, duration=0.25
    )


class AuditTrailTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.logged: list[dict] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def test_tool_calls_and_denials_audited(self) -> None:
        trail = AuditTrail(clock=lambda: 1000.0)
        trail.observe(_call("tools/call", "ok", "notes.get"))
        trail.observe(_call("tools/list", "ok"))  # not audited
        trail.observe(_call("tools/call", "denied", "notes.drop"))
        self.assertEqual([r["outcome"] for r in trail], ["ok", "denied"])
        self.assertEqual(
            list(trail)[0],
            {
                "time": 1000.0,
                "key": "alice",
                "peer": "10.0.0.5",
                "transport": "http",
                "method": "tools/call",
                "tool": "notes.get",
                "outcome": "ok",
                "duration": 0.25,
                "request_id": 7,
                "x_request_id": None,
            },
        )

    def test_json_lines_in_the_log(self) -> None:
        trail = AuditTrail()
        trail.record(outcome="auth_failure", key=None, peer="::1", transport="http", detail="no key")
        audits = [event for event in self.logged if event.get("log_namespace") == "mcpd.audit"]
        self.assertEqual(len(audits), 1)
        self.assertEqual(audits[0]["log_level"], LogLevel.info)
        self.assertEqual(json.loads(str(audits[0]["audit"]))["outcome"], "auth_failure")

    def test_bounded(self) -> None:
        trail = AuditTrail(size=3, emit=False)
        for n in range(5):
            trail.record(outcome="ok", key="k", peer="p", transport="http", request_id=n)
        self.assertEqual([r["request_id"] for r in trail], [2, 3, 4])
