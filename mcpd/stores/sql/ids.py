# -*- test-case-name: tests.test_sqlstore -*-
"""Record ids: opaque to clients, unique across instances, roughly in creation order."""

from __future__ import annotations

import secrets
import time

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id() -> str:
    """A ULID-style id: 48 bits of milliseconds then 80 random bits, in 26 base-32 characters.

    Ids sort by creation time (to the millisecond), which keeps B-tree inserts at the end of
    the index and lets lists page by id.
    """
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))
