# -*- test-case-name: tests.test_network -*-
"""Addresses: allowlists of IPv4 / IPv6 addresses and CIDR ranges, and the real client behind
a trusted proxy."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence

from mcpd.config import read_lines

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


# The client of a request a trusted proxy forwarded but did not name with an address: never
# loopback, never in an allowlist, rate-limited as a client of its own.
UNKNOWN_CLIENT = "unknown"
# RFC 7239 §6.3: an obfuscated node or port ("_" and letters, digits, ".", "_", "-").
_OBFUSCATED = re.compile(r"^_[A-Za-z0-9._-]{1,63}$")
_PORT = re.compile(r"^(?:[0-9]{1,5}|_[A-Za-z0-9._-]{1,63})$")
# RFC 7239 §4: forwarded-pair = token "=" value; value = token / quoted-string.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PAIR = re.compile(rf'\s*({_TOKEN})=({_TOKEN}|"(?:[^"\\]|\\.)*")\s*([;,]|$)')
_ESCAPE = re.compile(r"\\(.)")


def forwarded_client(
    peer: str,
    proxies: AddressList,
    forwarded_for: Sequence[str] = (),
    real_ip: Sequence[str] = (),
    forwarded: Sequence[str] = (),
) -> str:
    """The real client of a request that arrived from ``peer``.

    Only a peer in ``proxies`` is believed; from anyone else every forwarding header is
    ignored. From a trusted proxy, ``X-Forwarded-For`` and ``Forwarded`` (RFC 7239) name the
    client as their right-most hop that is not itself a trusted proxy (the left-most hops are
    whatever the client chose to send), ``X-Real-IP`` as its one value. A hop that is not an
    address (``unknown``, an obfuscated ``_name``, garbage) makes the client `UNKNOWN_CLIENT`
    (or the obfuscated name): an unknown client, not the proxy. When several headers name
    different clients, the proxy set one and passed another on from the client: which one is
    true cannot be told, so the client is unknown. Without any header naming a client, the
    client is the peer itself.
    """
    if not proxies or peer not in proxies:
        return peer
    named = set()
    for header, client in (
        (forwarded, _rightmost(_forwarded_for_values(forwarded), proxies)),
        (forwarded_for, _rightmost([hop for line in forwarded_for for hop in line.split(",") if hop.strip()], proxies)),
        (real_ip, _real_ip(real_ip, proxies)),
    ):
        if header and client is not None:
            named.add(client)
    if not named:
        return peer
    return named.pop() if len(named) == 1 else UNKNOWN_CLIENT


def _rightmost(hops: Sequence[str] | None, proxies: AddressList) -> str | None:
    """The client a chain of hops names: its right-most hop that is not a trusted proxy, an
    unknown client if that hop is not an address, None if every hop is a trusted proxy."""
    if hops is None:
        return UNKNOWN_CLIENT
    for hop in reversed(hops):
        node = parse_node(hop)
        if node is None:
            return UNKNOWN_CLIENT
        if node not in proxies:
            return node
    return None


def _real_ip(values: Sequence[str], proxies: AddressList) -> str | None:
    if len(values) != 1:
        return UNKNOWN_CLIENT if values else None
    node = parse_node(values[0])
    if node is None:
        return UNKNOWN_CLIENT
    return None if node in proxies else node


def _forwarded_for_values(lines: Sequence[str]) -> list[str] | None:
    """The ``for=`` value of each element of ``Forwarded`` header lines, in order (an element
    without one counts as ``unknown``); None if the header cannot be parsed."""
    values: list[str] = []
    for line in lines:
        position, current, open_element = 0, None, False
        while position < len(line):
            match = _PAIR.match(line, position)
            if match is None:
                return None
            name, value, end = match.groups()
            if name.lower() == "for":
                if current is not None:
                    return None  # two for= in one element
                current = _ESCAPE.sub(r"\1", value[1:-1]) if value.startswith('"') else value
            position, open_element = match.end(), end == ";"
            if not open_element:
                values.append(current if current is not None else UNKNOWN_CLIENT)
                current = None
        if open_element:
            values.append(current if current is not None else UNKNOWN_CLIENT)
    return values


def parse_node(text: str) -> str | None:
    """A forwarded node in the forms proxies write (``203.0.113.9``, ``203.0.113.9:4711``,
    ``2001:db8::1``, ``[2001:db8::1]:4711``, RFC 7239 nodes), as mcpd counts clients: the address
    in normal form; an unknown client for ``unknown`` or an obfuscated ``_name`` (the name kept,
    so that a proxy's per-client names stay apart); None if it is none of these."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or ":" not in host or (port and not (port[0] == ":" and _PORT.match(port[1:]))):
            return None
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not _PORT.match(port):
            return None
    else:
        host = text
    if host.lower() == UNKNOWN_CLIENT:
        return UNKNOWN_CLIENT
    if _OBFUSCATED.match(host):
        return host
    if "[" in host or "]" in host:
        return None
    address = parse_address(host)
    return None if address is None else str(address)


@functools.lru_cache(maxsize=4096)
def is_loopback_client(client: str) -> bool:
    """Whether a client (an address as `forwarded_client` gives it) is this machine: only a
    loopback address is, never a name or an unknown client."""
    address = parse_address(client)
    return address is not None and address.is_loopback


def normal_form(text: str) -> str:
    """An address as mcpd shows and counts it (IPv4-mapped IPv6 as IPv4)."""
    address = parse_address(text)
    return text if address is None else str(address)
