# -*- test-case-name: tests.test_sqlstore -*-
"""Record ids: opaque to clients, unique across instances, in creation order."""

from __future__ import annotations

import base64
import os
import threading
import time

# RFC 4648 base32 digits, in order, to Crockford's (lower case): ASCII order = numeric order.
_CROCKFORD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "0123456789abcdefghjkmnpqrstvwxyz")
_lock = threading.Lock()
_last = 0


def new_id() -> str:
    """A ULID-style id: 48 bits of milliseconds then 80 random bits, in 26 base-32 characters.

    Ids sort by creation time, which keeps B-tree inserts at the end of the index and lets lists
    page by id; within one millisecond this process's ids still increase (ULID's monotonic rule).
    """
    global _last
    candidate = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    with _lock:
        value = _last = max(candidate, _last + 1)
    return base64.b32encode(value.to_bytes(16, "big")).decode("ascii")[:26].translate(_CROCKFORD)
