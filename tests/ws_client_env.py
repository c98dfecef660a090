# -*- test-case-name: tests.test_transports -*-
"""A virtualenv of its own for the MCP Python SDK 1.x WebSocket client (``mcp[ws]==1.30.0``).

The SDK 2.x the tests run with has no WebSocket client, and 1.x cannot share its virtualenv, so
the 1.x client lives in ``.cache/mcp-ws-client`` (gitignored), created once and reused by every
run. ``.ci/run`` creates it on a fresh machine (``python -m tests.ws_client_env``); a test that
needs it calls `ensure_ws_client`, which creates it when it is missing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

REQUIREMENT = "mcp[ws]==1.30.0"
REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_DIR = REPO_ROOT / ".cache" / "mcp-ws-client"
CREATE_TIMEOUT = 600.0
_MARKER = ENV_DIR / "installed.txt"


class WSClientEnvError(Exception):
    """The virtualenv could not be created; the message carries pip's output."""


def client_python() -> Path:
    """The interpreter of the WebSocket client's virtualenv."""
    return ENV_DIR / "bin" / "python"


def is_ready() -> bool:
    """Whether the virtualenv exists with the pinned requirement installed."""
    try:
        return client_python().exists() and _MARKER.read_text(encoding="utf-8").strip() == REQUIREMENT
    except OSError:
        return False


def ensure_ws_client(timeout: float = CREATE_TIMEOUT) -> Path:
    """The client's interpreter, creating its virtualenv first if needed (one creator at a time)."""
    ENV_DIR.parent.mkdir(parents=True, exist_ok=True)
    with open(ENV_DIR.parent / "mcp-ws-client.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_ready():
            _create(timeout)
    return client_python()


def _create(timeout: float) -> None:
    shutil.rmtree(ENV_DIR, ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)
    steps = [
        [base, "-m", "venv", str(ENV_DIR)],
        [str(client_python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", REQUIREMENT],
    ]
    env = {name: value for name, value in os.environ.items() if name not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=timeout, env=env)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise WSClientEnvError(f"{' '.join(step)}: {e}") from None
        if done.returncode != 0:
            raise WSClientEnvError(f"{' '.join(step)} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    _MARKER.write_text(REQUIREMENT + "\n", encoding="utf-8")


if __name__ == "__main__":
    try:
        print(ensure_ws_client())
    except WSClientEnvError as e:
        sys.exit(f"tests.ws_client_env: cannot create the {REQUIREMENT} virtualenv: {e}")
