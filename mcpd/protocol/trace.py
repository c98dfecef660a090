# -*- test-case-name: tests.test_engine -*-
"""An optional protocol trace: every JSON-RPC message in and out, as JSON lines.

Operators turn it on with ``--trace-file`` to see exactly what a misbehaving client sent; the
integration tests turn it on to validate everything mcpd says against the official schemas.
Each message is written with the transports' own encoder, so a line holds the very bytes that
went over the wire (and is valid JSON whatever a handler returned).

The file is written without ever blocking the reactor: it is opened non-blocking, and what a
file that does not drain (a pipe or FIFO nobody reads) cannot take is held, up to ``backlog``
bytes, then whole lines are dropped and counted rather than the daemon stalling.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.logger import Logger

from mcpd.protocol.codec import encode

log = Logger(namespace="mcpd.trace")

BACKLOG = 1024 * 1024


class Tracer:
    """Appends ``{"dir", "peer", "version", "message"}`` lines to a file."""

    def __init__(self, path: str, backlog: int = BACKLOG) -> None:
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
        self.backlog = backlog
        # Bytes the file has not taken yet (it would have blocked), written before anything newer.
        self._pending = bytearray()
        # Lines dropped because the file did not drain.
        self.dropped = 0

    def record(self, direction: str, peer: str, version: str | None, message: Any) -> None:
        """Write one line; ``direction`` is "in" (from the client) or "out" (to it)."""
        if self._fd is None:
            return  # closed (shutdown)
        head = encode({"dir": direction, "peer": peer, "version": version})
        data = head[:-1] + b',"message":' + encode(message) + b"}\n"
        if self._pending:
            self._flush()
        if self._pending:
            if len(self._pending) + len(data) > self.backlog:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warn("The trace file does not drain: {count} line(s) dropped so far", count=self.dropped)
                return
            self._pending += data
            return
        written = self._write(data)
        if written < len(data):
            self._pending += data[written:]

    def _write(self, data: bytes | bytearray) -> int:
        assert self._fd is not None
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0

    def _flush(self) -> None:
        del self._pending[: self._write(self._pending)]

    def close(self) -> None:
        """Write what is held if the file takes it, and close the file."""
        if self._fd is None:
            return
        if self._pending:
            self._flush()
        os.close(self._fd)
        self._fd = None
