# -*- test-case-name: tests.test_network -*-
"""Addresses: allowlists of IPv4 / IPv6 addresses and CIDR ranges, and the real client behind
a trusted proxy."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

from mcpd.settings import read_lines

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressListError(ValueError):
    """An allowlist entry or file is not usable; the message says which and why."""


@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> IPAddress | None:
    """An address as Python sees it, IPv4-mapped IPv6 (``::ffff:10.1.2.3``, what a dual-stack
    listener reports for IPv4 clients) turned into the IPv4 address; None if not an address."""
    text = text.strip().strip("[]")
    if "%" in text:  # a zone index (fe80::1%eth0)
        text = text.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_network(text: str) -> IPNetwork:
    """An address or CIDR range; IPv4-mapped IPv6 ranges become IPv4 ranges."""
    text = text.strip()
    try:
        network = ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        raise AddressListError(f"{text!r} is not an IP address or CIDR range") from None
    mapped = network.network_address.ipv4_mapped if isinstance(network, ipaddress.IPv6Network) else None
    if mapped is not None and network.prefixlen >= 96:
        return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}", strict=False)
    return network


class AddressList:
    """A set of networks an address can be checked against."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(parse_network(entry) for entry in entries)
        self._contains = functools.lru_cache(maxsize=4096)(self._lookup)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and self._contains(address)

    def _lookup(self, text: str) -> bool:
        address = parse_address(text)
        return address is not None and any(address in network for network in self.networks)


def read_address_file(path: str) -> list[str]:
    """The entries of an allowlist file: one address or range a line, ``#`` comments."""
    entries = []
    for number, line in read_lines(path, "--allowed-ip-file", AddressListError):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            parse_network(entry)
        except AddressListError as e:
            raise AddressListError(f"--allowed-ip-file {path} line {number}: {e}") from None
        entries.append(entry)
    return entries


def forwarded_client(peer: str, forwarded_for: Sequence[str], real_ip: str | None, proxies: AddressList) -> str:
    """The real client of a request that arrived from ``peer``.

    Only a peer in ``proxies`` is believed: then the client is the right-most address of
    ``X-Forwarded-For`` that is not itself a trusted proxy (the left-most entries are whatever the
    client chose to send), else ``X-Real-IP``. From anyone else both headers are ignored.
    """
    if not proxies or peer not in proxies:
        return peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        if parse_address(hop) is None:
            # Garbage in the chain: trust nothing left of it.
            return peer
        if hop not in proxies:
            return normal_form(hop)
    if real_ip is not None and parse_address(real_ip) is not None:
        return normal_form(real_ip.strip())
    return peer


def normal_form(text: str) -> str:
    """An address as mcpd shows and counts it (IPv4-mapped IPv6 as IPv4)."""
    address = parse_address(text)
    return text if address is None else str(address)
