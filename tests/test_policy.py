"""Tests for `mcpd.security.policy`: the Origin and Host checks that guard every MCP endpoint
(DNS-rebinding protection, 2025-11-25 transports §Security Warning)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from mcpd.security.policy import OriginGuard, is_loopback
from tests.http_harness import HTTPConnection, HTTPResponse


class Recorder(Resource):
    """The guarded resource: records the requests that reach it."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.served: list[bytes] = []

    def render(self, request: Request) -> bytes:
        self.served.append(request.method)
        return b"served"


class OriginGuardTests(SynchronousTestCase):
    """Which requests `OriginGuard` lets through to the resource it wraps."""

    def fetch(
        self,
        headers: Mapping[str, str],
        address: str = "127.0.0.1",
        allowed_origins: Iterable[str] = (),
    ) -> HTTPResponse:
        """POST through the guard on a connection that arrived at ``address``."""
        self.recorder = Recorder()
        site = Site(OriginGuard(self.recorder, allowed_origins))
        site.reactor = Clock()
        host = IPv6Address("TCP", address, 8765) if ":" in address else IPv4Address("TCP", address, 8765)
        connection = HTTPConnection(site, host=host)
        connection.send("POST", "/mcp", headers, b"{}")
        return connection.response

    def assertAllowed(self, response: HTTPResponse) -> None:
        self.assertEqual((response.status, response.body), (200, b"served"))

    def assertForbidden(self, response: HTTPResponse, why: str) -> None:
        """A 403 with a JSON body saying why, and the wrapped resource never ran."""
        self.assertEqual(response.status, 403)
        self.assertEqual(response.headers["content-type"], "application/json")
        message = response.json()["error"]
        self.assertTrue(message.startswith("Forbidden"), message)
        self.assertIn(why, message)
        self.assertEqual(self.recorder.served, [])

    def test_no_origin(self) -> None:
        self.assertAllowed(self.fetch({"Host": "localhost:8765"}))
        self.assertEqual(self.recorder.served, [b"POST"])

    def test_loopback_origin_on_loopback(self) -> None:
        for origin in ("http://localhost:8765", "http://127.0.0.1:3000", "http://[::1]:8765", "https://localhost"):
            self.assertAllowed(self.fetch({"Host": "localhost:8765", "Origin": origin}))

    def test_foreign_origin(self) -> None:
        response = self.fetch({"Host": "localhost:8765", "Origin": "https://evil.example"})
        self.assertForbidden(response, "https://evil.example")

    def test_rebinding_host_on_loopback(self) -> None:
        for host in ("evil.example", "evil.example:8765"):
            self.assertForbidden(self.fetch({"Host": host}), host)

    def test_loopback_hosts_on_loopback(self) -> None:
        for host in ("localhost", "127.0.0.1:8765", "[::1]:8765", "app.localhost:8765"):
            self.assertAllowed(self.fetch({"Host": host}))

    def test_ipv6_loopback_connection(self) -> None:
        self.assertAllowed(self.fetch({"Host": "[::1]:8765", "Origin": "http://[::1]:8765"}, address="::1"))
        self.assertForbidden(self.fetch({"Host": "evil.example"}, address="::1"), "evil.example")

    def test_ipv4_mapped_loopback_connection(self) -> None:
        # A dual-stack listener sees IPv4 loopback clients at ::ffff:127.0.0.1.
        self.assertForbidden(self.fetch({"Host": "evil.example"}, address="::ffff:127.0.0.1"), "evil.example")
        self.assertAllowed(self.fetch({"Host": "localhost", "Origin": "http://localhost"}, address="::ffff:127.0.0.1"))

    def test_allowed_origins(self) -> None:
        allowed = ["https://app.example/", "https://other.example"]
        for origin in ("https://app.example", "https://other.example/"):
            self.assertAllowed(self.fetch({"Host": "localhost", "Origin": origin}, allowed_origins=allowed))
        response = self.fetch({"Host": "localhost", "Origin": "https://evil.example"}, allowed_origins=allowed)
        self.assertForbidden(response, "https://evil.example")

    def test_any_origin(self) -> None:
        self.assertAllowed(self.fetch({"Host": "localhost", "Origin": "https://evil.example"}, allowed_origins=["*"]))

    def test_same_origin_beyond_loopback(self) -> None:
        headers = {"Host": "mcp.example.com:8765", "Origin": "http://mcp.example.com:8765"}
        self.assertAllowed(self.fetch(headers, address="10.0.0.5"))

    def test_other_origins_beyond_loopback(self) -> None:
        for origin in ("http://mcp.example.com:9999", "http://localhost:8765", "null"):
            headers = {"Host": "mcp.example.com:8765", "Origin": origin}
            self.assertForbidden(self.fetch(headers, address="10.0.0.5"), origin)

    def test_any_host_beyond_loopback(self) -> None:
        self.assertAllowed(self.fetch({"Host": "mcp.example.com"}, address="10.0.0.5"))


class IsLoopbackTests(SynchronousTestCase):
    """`is_loopback` recognises this machine by name and by address."""

    def test_names(self) -> None:
        for name in ("localhost", "LOCALHOST", "localhost.localdomain", "ip6-localhost", "app.localhost"):
            self.assertTrue(is_loopback(name), name)
        for name in ("example.com", "localhost.example.com", "notlocalhost", ""):
            self.assertFalse(is_loopback(name), name)

    def test_ipv4(self) -> None:
        for address in ("127.0.0.1", "127.1.2.3"):
            self.assertTrue(is_loopback(address), address)
        for address in ("10.0.0.1", "0.0.0.0", "128.0.0.1"):
            self.assertFalse(is_loopback(address), address)

    def test_ipv6(self) -> None:
        for address in ("::1", "[::1]", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1", "[::ffff:127.0.0.1]"):
            self.assertTrue(is_loopback(address), address)
        for address in ("::", "[2001:db8::1]", "::ffff:10.0.0.1", "fe80::1"):
            self.assertFalse(is_loopback(address), address)
