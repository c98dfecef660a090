"""Tests for `mcpd.security.addresses`: allowlists, IPv4-mapped IPv6, forwarded clients (in memory, then
through a real daemon behind a "proxy" on loopback)."""

from __future__ import annotations

import collections
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mcpd.security.addresses import (
    UNKNOWN_CLIENT,
    AddressList,
    AddressListError,
    forwarded_client,
    is_loopback_client,
    normal_form,
    parse_address,
    read_address_file,
)
from mcpd.security.gate import REFUSAL_LINES
from tests.security_harness import KEY, MCP_HEADERS, RouteTestCase, call_body


class AddressListTests(SynchronousTestCase):
    def test_addresses_and_ranges(self) -> None:
        allowed = AddressList(["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"])
        for inside in ("10.1.2.3", "192.168.1.7", "2001:db8::5", "[2001:db8::6]"):
            self.assertIn(inside, allowed)
        for outside in ("11.0.0.1", "192.168.1.8", "2001:db9::1", "not-an-address", ""):
            self.assertNotIn(outside, allowed)

    def test_ipv4_mapped(self) -> None:
        """A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d."""
        allowed = AddressList(["127.0.0.1"])
        self.assertIn("::ffff:127.0.0.1", allowed)
        self.assertNotIn("::ffff:10.0.0.1", allowed)
        self.assertNotIn("::ffff:10.0.0.1", AddressList(["127.0.0.0/8"]))
        # A mapped range in the list means its IPv4 range.
        self.assertIn("10.9.9.9", AddressList(["::ffff:10.0.0.0/104"]))
        self.assertEqual(str(parse_address("::ffff:10.0.0.1")), "10.0.0.1")
        self.assertEqual(normal_form("::ffff:10.0.0.1"), "10.0.0.1")
        self.assertEqual(normal_form("fe80::1%eth0"), "fe80::1")

    def test_bad_entries(self) -> None:
        self.assertRaises(AddressListError, AddressList, ["10.0.0.0/33"])
        self.assertRaises(AddressListError, AddressList, ["example.com"])

    def test_file(self) -> None:
        path = Path(self.mktemp())
        path.write_text("# office\n10.0.0.0/8  # lan\n\n::1\n", encoding="utf-8")
        self.assertEqual(read_address_file(str(path)), ["10.0.0.0/8", "::1"])
        path.write_text("10.0.0.0/8\nnope\n", encoding="utf-8")
        self.assertIn("line 2", str(self.assertRaises(AddressListError, read_address_file, str(path))))


class ForwardedClientTests(SynchronousTestCase):
    proxies = AddressList(["127.0.0.1", "10.0.0.0/24"])

    def client(self, peer: str = "127.0.0.1", **headers: list[str]) -> str:
        return forwarded_client(peer, self.proxies, **headers)

    def test_untrusted_peer_headers_ignored(self) -> None:
        everything = {"forwarded_for": ["1.2.3.4"], "real_ip": ["1.2.3.4"], "forwarded": ["for=1.2.3.4"]}
        self.assertEqual(self.client("203.0.113.9", **everything), "203.0.113.9")
        self.assertEqual(forwarded_client("203.0.113.9", AddressList(), forwarded_for=["1.2.3.4"]), "203.0.113.9")

    def test_rightmost_untrusted_hop(self) -> None:
        # The client sent a forged first hop; nginx appended the real address.
        self.assertEqual(self.client(forwarded_for=["6.6.6.6, 198.51.100.4", "10.0.0.2"]), "198.51.100.4")
        self.assertEqual(self.client(forwarded_for=["::ffff:198.51.100.4"]), "198.51.100.4")
        self.assertEqual(
            self.client(forwarded=["for=6.6.6.6, for=198.51.100.4;proto=https", "for=10.0.0.2"]), "198.51.100.4"
        )

    def test_real_ip(self) -> None:
        self.assertEqual(self.client(real_ip=["198.51.100.4"]), "198.51.100.4")
        self.assertEqual(self.client(real_ip=["198.51.100.4:4711"]), "198.51.100.4")
        # Set twice, or a list: which one is true cannot be told.
        self.assertEqual(self.client(real_ip=["198.51.100.4", "198.51.100.5"]), UNKNOWN_CLIENT)
        self.assertEqual(self.client(real_ip=["198.51.100.4, 198.51.100.5"]), UNKNOWN_CLIENT)

    def test_ports_and_brackets(self) -> None:
        for hop, client in (
            ("203.0.113.9:4711", "203.0.113.9"),
            ("[2001:db8::1]:4711", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
            ("[::ffff:203.0.113.9]:80", "203.0.113.9"),
            ("203.0.113.9:_port", "203.0.113.9"),
        ):
            self.assertEqual(self.client(forwarded_for=[hop]), client, hop)
            self.assertEqual(self.client(forwarded=[f'for="{hop}"']), client, hop)
            self.assertEqual(self.client(real_ip=[hop]), client, hop)

    def test_a_hop_that_is_no_address_is_an_unknown_client_never_the_proxy(self) -> None:
        """Finding 3 of issue 9: such a hop made the client the (loopback) proxy."""
        for hop in (
            "unknown",
            "UNKNOWN",
            "junk",
            "203.0.113.9:http",
            "[2001:db8::1]:x",
            "[2001:db8::1",
            "1.2.3.4:5:6",
            "[1.2.3.4]",
            '"1.2.3.4"',
        ):
            for headers in ({"forwarded_for": [hop]}, {"real_ip": [hop]}, {"forwarded_for": [f"198.51.100.4, {hop}"]}):
                client = self.client(**headers)  # type: ignore[arg-type]
                self.assertEqual(client, UNKNOWN_CLIENT, (hop, headers))
                self.assertFalse(is_loopback_client(client))
        # Obfuscated identifiers (RFC 7239 §6.3) keep their name: a proxy's clients stay apart.
        self.assertEqual(self.client(forwarded_for=["_hidden"]), "_hidden")
        self.assertEqual(self.client(forwarded=["for=_hidden"]), "_hidden")
        self.assertEqual(self.client(forwarded=["for=unknown"]), UNKNOWN_CLIENT)
        for client in ("_hidden", "_x.localhost", UNKNOWN_CLIENT):
            self.assertFalse(is_loopback_client(client))
            self.assertNotIn(client, AddressList(["0.0.0.0/0", "::/0"]))

    def test_forwarded_syntax(self) -> None:
        self.assertEqual(
            self.client(forwarded=['For="[2001:db8:cafe::17]:4711";proto=http;by=10.0.0.2']), "2001:db8:cafe::17"
        )
        self.assertEqual(self.client(forwarded=["proto=https;for=198.51.100.4"]), "198.51.100.4")
        self.assertEqual(self.client(forwarded=["for=198.51.100.4;"]), "198.51.100.4")
        # An element without for= is a hop that did not say: unknown.
        self.assertEqual(self.client(forwarded=["for=198.51.100.4, proto=https"]), UNKNOWN_CLIENT)
        for broken in ("for=", "for=1.2.3.4;for=5.6.7.8", 'for="1.2.3.4', "for 1.2.3.4", "for=1.2.3.4,,", "=x"):
            self.assertEqual(self.client(forwarded=[broken]), UNKNOWN_CLIENT, broken)

    def test_headers_that_disagree_name_an_unknown_client(self) -> None:
        # nginx appends X-Forwarded-For; a Forwarded the client forged is passed on untouched.
        forged = {"forwarded_for": ["198.51.100.4"], "real_ip": ["198.51.100.4"], "forwarded": ["for=10.9.9.9"]}
        self.assertEqual(self.client(**forged), UNKNOWN_CLIENT)
        agreeing = {"forwarded_for": ["6.6.6.6, 198.51.100.4"], "real_ip": ["198.51.100.4"], "forwarded": []}
        self.assertEqual(self.client(**agreeing), "198.51.100.4")
        # A header that names only trusted proxies says nothing: the others decide.
        self.assertEqual(self.client(forwarded_for=["198.51.100.4"], real_ip=["10.0.0.2"]), "198.51.100.4")
        self.assertEqual(self.client(forwarded_for=["127.0.0.1"], real_ip=["198.51.100.4"]), "198.51.100.4")

    def test_no_header_naming_a_client_means_the_peer(self) -> None:
        self.assertEqual(self.client(), "127.0.0.1")
        self.assertEqual(self.client(forwarded_for=["10.0.0.2, 127.0.0.1"]), "127.0.0.1")
        self.assertEqual(self.client(forwarded_for=[" , "]), "127.0.0.1")


# Hops a trusted proxy may write that name no address mcpd can check: each one is an unknown
# client, with its own name in the audit trail.
UNNAMED = [
    ({"X-Forwarded-For": "unknown"}, "unknown"),
    ({"X-Forwarded-For": "_hidden"}, "_hidden"),
    ({"X-Forwarded-For": "198.51.100.4, junk"}, "unknown"),
    ({"X-Real-IP": "unknown"}, "unknown"),
    ({"X-Real-IP": "_x.localhost"}, "_x.localhost"),
    ({"Forwarded": "for=unknown"}, "unknown"),
    ({"Forwarded": "for=_hidden;proto=https"}, "_hidden"),
    ({"Forwarded": "for=203.0.113.9:4711"}, "unknown"),  # a colon needs quotes: unparseable
    ({"Forwarded": "proto=https"}, "unknown"),
    ({"X-Forwarded-For": "203.0.113.9", "Forwarded": "for=127.0.0.2"}, "unknown"),  # they disagree
]
# The same, with a port: the address is the client.
WITH_PORTS = [
    ({"X-Forwarded-For": "203.0.113.9:4711"}, "203.0.113.9"),
    ({"X-Forwarded-For": "[2001:db8::1]:4711"}, "2001:db8::1"),
    ({"X-Real-IP": "203.0.113.9:4711"}, "203.0.113.9"),
    ({"Forwarded": 'for="[2001:db8::1]:4711"'}, "2001:db8::1"),
    ({"Forwarded": 'for="203.0.113.9:4711"'}, "203.0.113.9"),
]


class ForwardedDaemonTests(RouteTestCase):
    """Finding 3 of issue 9: with ``--trusted-proxy 127.0.0.1``, a right-most hop that was not a
    bare address made the client the proxy itself (loopback), and a key-less ``GET /stats`` was
    served."""

    def test_an_unnamed_or_ported_client_gets_no_loopback_rights(self) -> None:
        for scheme in self.start("--trusted-proxy", "127.0.0.1"):
            for headers, _client in UNNAMED + WITH_PORTS:
                for target in ("/stats", "/metrics", "/dashboard"):
                    self.assertJSONError(self.send(scheme, "GET", target, **headers), 401, "needs an API key")
                reply = self.send(scheme, "GET", "/stats", **headers, Authorization="Bearer alice-key")
                self.assertJSONError(reply, 403, "admin-scoped API key")
            # The proxy's own requests (no header naming a client) are loopback ones.
            self.assertEqual(self.send(scheme, "GET", "/stats").status, 200)
        refused = [(record["outcome"], record["peer"]) for record in self.audit()]
        expected = [
            row
            for _headers, client in UNNAMED + WITH_PORTS
            for row in [("auth_failure", client)] * 3 + [("forbidden", client)]
        ]
        # The log holds the first REFUSAL_LINES refusals of a client a minute (the rest are
        # audited, not logged: mcpd.security.gate).
        seen: collections.Counter[str] = collections.Counter()
        logged = []
        for row in expected * 2:
            seen[row[1]] += 1
            if seen[row[1]] <= REFUSAL_LINES:
                logged.append(row)
        self.assertEqual(refused, logged)

    def test_without_keys_an_unnamed_client_is_refused(self) -> None:
        scheme = self.start_plain("--trusted-proxy", "127.0.0.1")
        for headers, _client in UNNAMED + WITH_PORTS:
            for method, target in (("GET", "/stats"), ("POST", "/mcp")):
                body = call_body("sec.record") if method == "POST" else b""
                reply = self.send(scheme, method, target, body, **MCP_HEADERS, **headers)
                self.assertJSONError(reply, 403, "loopback clients only")

    def test_never_in_the_allowlist(self) -> None:
        schemes = self.start("--trusted-proxy", "127.0.0.1", "--allowed-ip", "127.0.0.1,203.0.113.0/24,2001:db8::/32")
        for scheme in schemes:
            for headers, client in UNNAMED:
                reply = self.send(scheme, "POST", "/mcp", call_body("sec.record"), **MCP_HEADERS, **KEY, **headers)
                self.assertJSONError(reply, 403, f"address {client} is not in this server's allowlist")
        for scheme in schemes:
            for headers, _client in WITH_PORTS:
                reply = self.send(scheme, "POST", "/mcp", call_body("sec.record"), **MCP_HEADERS, **KEY, **headers)
                self.assertEqual(reply.status, 200, reply.raw)
        self.assertEqual(self.executions(), ["executed sec.record root"] * 2 * len(WITH_PORTS))

    def test_an_unknown_client_is_rate_limited_as_its_own(self) -> None:
        scheme = self.start_plain("--trusted-proxy", "127.0.0.1", "--insecure-no-auth", "--rate-limit", "2")

        def statuses(count: int, **headers: str) -> list[int]:
            return [self.send(scheme, "POST", "/mcp", b"{}", **headers).status for _ in range(count)]

        # (400: the body is no JSON-RPC request, but it was let through to say so.)
        self.assertEqual(statuses(3, **{"X-Forwarded-For": "unknown"}), [400, 400, 429])
        # Another unknown name and an address have their own buckets; the proxy itself (loopback)
        # is not limited.
        self.assertEqual(statuses(3, **{"X-Forwarded-For": "_other"}), [400, 400, 429])
        self.assertEqual(statuses(1, **{"X-Forwarded-For": "203.0.113.9:1"}), [400])
        self.assertEqual(statuses(4), [400] * 4)
