# -*- test-case-name: tests.test_engine -*-
"""An optional protocol trace: every JSON-RPC message in and out, as JSON lines.

Operators turn it on with ``--trace-file`` to see exactly what a misbehaving client sent; the
integration tests turn it on to validate everything mcpd says against the official schemas.
Each message is written with the transports' own encoder, so a line holds the very bytes that
went over the wire (and is valid JSON whatever a handler returned).
"""

from __future__ import annotations

from typing import IO, Any

from mcpd.protocol.codec import encode


class Tracer:
    """Appends ``{"dir", "peer", "version", "message"}`` lines to a file."""

    def __init__(self, path: str) -> None:
        # Unbuffered: one write per line, as line buffering gave.
        self._file: IO[bytes] = open(path, "ab", buffering=0)  # noqa: SIM115

    def record(self, direction: str, peer: str, version: str | None, message: Any) -> None:
        """Write one line; ``direction`` is "in" (from the client) or "out" (to it)."""
        head = encode({"dir": direction, "peer": peer, "version": version})
        self._file.write(head[:-1] + b',"message":' + encode(message) + b"}\n")

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()
