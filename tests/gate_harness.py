"""The HTTP policy layer in memory: keys, a resource that records what reaches it, a gate test base."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from mcpd.observe.audit import AuditTrail
from mcpd.security.gate import Gate, guarded_request_factory
from mcpd.security.identity import caller_of
from mcpd.security.keys import APIKey, KeyRing
from mcpd.tools.api import Caller
from tests.http_harness import HTTPConnection, HTTPResponse

KEYS = KeyRing([APIKey.from_secret("alice-key", "alice", ["read"]), APIKey.from_secret("root-key", "root")])


class Recorder(Resource):
    """Records the callers of the requests that reach it; ``hold`` keeps responses open."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.callers: list[Caller] = []
        self.bodies: list[bytes] = []
        self.held: list[Request] = []
        self.hold = False

    def render(self, request: Request) -> bytes | int:
        self.callers.append(caller_of(request, "http"))
        self.bodies.append(request.content.read())
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        return b"served"


class GateTestCase(SynchronousTestCase):
    def make(self, **options: Any) -> None:
        self.clock = Clock()
        self.audit = AuditTrail(emit=False)
        self.recorder = Recorder()
        self.gate = Gate(audit=self.audit, **options)
        self.site = Site(self.recorder)
        self.site.reactor = self.clock  # the channels' idle timeouts
        self.site.requestFactory = guarded_request_factory(self.gate)

    def connect(self, peer: str = "127.0.0.1") -> HTTPConnection:
        address = IPv6Address("TCP", peer, 50000) if ":" in peer else IPv4Address("TCP", peer, 50000)
        return HTTPConnection(self.site, peer=address)

    def fetch(
        self,
        headers: Mapping[str, str] | None = None,
        peer: str = "127.0.0.1",
        method: str = "POST",
        path: str = "/mcp",
        body: bytes = b"{}",
    ) -> HTTPResponse:
        connection = self.connect(peer)
        connection.send(method, path, headers, body)
        self.connection = connection
        return connection.response

    def assertRefused(self, response: HTTPResponse, status: int, words: str) -> dict[str, Any]:
        self.assertEqual(response.status, status, response)
        self.assertEqual(response.headers["content-type"], "application/json")
        body = json.loads(response.body)
        self.assertIn(words, body["error"])
        self.assertEqual(self.recorder.callers, [])
        return body
