# -*- test-case-name: tests.test_notify -*-
"""Tell the service manager where the daemon is in its life: the sd_notify(3) protocol.

Under ``Type=notify`` systemd passes the address of a datagram socket in ``$NOTIFY_SOCKET``; the
service sends it newline-separated ``NAME=value`` assignments: ``READY=1`` once it serves,
``RELOADING=1`` (with ``MONOTONIC_USEC``) then ``READY=1`` around a reload, ``STOPPING=1`` when it
begins to shut down. Without the variable (not started by systemd) every call does nothing. No
libsystemd or python-systemd: the protocol is one datagram.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from twisted.logger import Logger

log = Logger(namespace="mcpd.notify")

ENV = "NOTIFY_SOCKET"
# A datagram to a live service manager is taken at once; never wait long for a stuck one.
SEND_TIMEOUT = 1.0


def notify(*assignments: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``assignments`` (``READY=1``, ``STATUS=…``) to the service manager, if there is one;
    whether they were sent. A failure is logged, never raised: the daemon serves regardless."""
    address = environ.get(ENV, "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket (sd_notify(3))
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        log.warn("{env}={address!r}: only AF_UNIX socket paths are supported", env=ENV, address=address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto("\n".join(assignments).encode("utf-8"), target)
    except OSError as e:
        log.warn("Cannot notify the service manager at {address}: {error}", address=address, error=e)
        return False
    return True


def ready(status: str = "Serving") -> bool:
    """The daemon serves: its listeners are up."""
    return notify("READY=1", f"STATUS={status}")


def stopping(status: str = "Draining") -> bool:
    """The daemon has begun to shut down."""
    return notify("STOPPING=1", f"STATUS={status}")


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares ``MONOTONIC_USEC`` with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


@contextmanager
def reloading() -> Iterator[None]:
    """Around a reload: ``RELOADING=1`` before, ``READY=1`` after (also if the reload failed:
    the daemon still serves with what it had)."""
    notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", "STATUS=Reloading")
    try:
        yield
    finally:
        ready()
