# -*- test-case-name: tests.test_debian -*-
"""A client beyond loopback: a network namespace joined to this machine by a veth pair.

`ClientNetwork` makes a namespace of its own with one end of a veth pair inside it, addressed in
198.18.0.0/15 (RFC 2544's range for network tests: no real host lives there), so a process run
with `ClientNetwork.command` reaches this machine at `host_address` from `client_address`: a
genuinely non-loopback peer, without touching any other network. Needs root and iproute2.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Sequence


class NetworkError(Exception):
    """The namespace or the link could not be made; the message has ip's answer."""


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


class ClientNetwork:
    """One namespace, one veth pair, a /30 in 198.18.0.0/15; `close` removes them all."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{random.randrange(100, 1000)}"
        self.namespace = f"mcpdt{tag}"
        self.host_link = f"mh{tag}"[:15]
        self.client_link = f"mc{tag}"[:15]
        used = _ip("-o", "-4", "addr", "show")
        for _attempt in range(50):
            third, fourth = random.randrange(0, 512), random.randrange(0, 64) * 4
            host = f"198.{18 + third // 256}.{third % 256}.{fourth + 1}"
            if f" {host}/" not in used:
                break
        else:
            raise NetworkError("no free /30 in 198.18.0.0/15")
        self.host_address = host
        self.client_address = host[: host.rfind(".")] + f".{fourth + 2}"
        _ip("netns", "add", self.namespace)
        try:
            _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.client_link)
            _ip("link", "set", self.client_link, "netns", self.namespace)
            _ip("addr", "add", f"{self.host_address}/30", "dev", self.host_link)
            _ip("link", "set", self.host_link, "up")
            inside = ("netns", "exec", self.namespace, "ip")
            _ip(*inside, "addr", "add", f"{self.client_address}/30", "dev", self.client_link)
            _ip(*inside, "link", "set", self.client_link, "up")
            _ip(*inside, "link", "set", "lo", "up")
        except NetworkError:
            self.close()
            raise

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (as the client)."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def close(self) -> None:
        """Remove the link (its peer goes with it) and the namespace; safe to call twice."""
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)
