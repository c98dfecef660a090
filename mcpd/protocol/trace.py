# -*- test-case-name: tests.test_engine -*-
"""An optional protocol trace: every JSON-RPC message in and out, as JSON lines.

Operators turn it on with ``--trace-file`` to see exactly what a misbehaving client sent; the
integration tests turn it on to validate everything mcpd says against the official schemas.
"""

from __future__ import annotations

import json
from typing import IO, Any


class Tracer:
    """Appends ``{"dir", "peer", "version", "message"}`` lines to a file."""

    def __init__(self, path: str) -> None:
        self._file: IO[str] = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def record(self, direction: str, peer: str, version: str | None, message: Any) -> None:
        """Write one line; ``direction`` is "in" (from the client) or "out" (to it)."""
        line = {"dir": direction, "peer": peer, "version": version, "message": message}
        self._file.write(json.dumps(line, separators=(",", ":"), default=str) + "\n")

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()
