"""Tests for `mcpd.web.network`: allowlists, IPv4-mapped IPv6, forwarded clients."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mcpd.web.network import (
    AddressList,
    AddressListError,
    forwarded_client,
    normal_form,
    parse_address,
    read_address_file,
)


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

    def test_untrusted_peer_headers_ignored(self) -> None:
        self.assertEqual(forwarded_client("203.0.113.9", ["1.2.3.4"], "1.2.3.4", self.proxies), "203.0.113.9")
        self.assertEqual(forwarded_client("203.0.113.9", ["1.2.3.4"], None, AddressList()), "203.0.113.9")

    def test_rightmost_untrusted_hop(self) -> None:
        # The client sent a forged first hop; nginx appended the real address.
        chain = ["6.6.6.6, 198.51.100.4", "10.0.0.2"]
        self.assertEqual(forwarded_client("127.0.0.1", chain, None, self.proxies), "198.51.100.4")

    def test_real_ip_fallback_and_garbage(self) -> None:
        self.assertEqual(forwarded_client("127.0.0.1", [], "198.51.100.4", self.proxies), "198.51.100.4")
        self.assertEqual(forwarded_client("127.0.0.1", ["junk"], "198.51.100.4", self.proxies), "127.0.0.1")
        self.assertEqual(forwarded_client("127.0.0.1", ["::ffff:198.51.100.4"], None, self.proxies), "198.51.100.4")
