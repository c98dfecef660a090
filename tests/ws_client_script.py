"""Run by the MCP Python SDK 1.x virtualenv (`tests.ws_client_env`), not by the test suite's own:
connect to an mcpd WebSocket URL with ``mcp.client.websocket.websocket_client``, initialize,
list the tools, call ``server.info`` and ``tests.progress`` (collecting its progress
notifications), and print what happened as one JSON object on stdout.

    python tests/ws_client_script.py ws://127.0.0.1:8765/ws

For ``wss://`` URLs the certificate authority comes from ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import json
import sys
import warnings

import anyio
from mcp import ClientSession
from mcp.client.websocket import websocket_client

TIMEOUT = 20.0


async def main(url: str) -> dict:
    progress: list[list] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append([done, total, message])

    with anyio.fail_after(TIMEOUT):
        async with websocket_client(url) as (read, write), ClientSession(read, write) as session:
            initialized = await session.initialize()
            tools = await session.list_tools()
            info = await session.call_tool("server.info", {})
            slow = await session.call_tool("tests.progress", {"steps": 3, "delay": 0.02}, progress_callback=on_progress)
            return {
                "protocolVersion": initialized.protocolVersion,
                "server": initialized.serverInfo.name,
                "tools": sorted(tool.name for tool in tools.tools),
                "info": info.structuredContent,
                "progress": progress,
                "result": [block.text for block in slow.content if block.type == "text"],
                "isError": slow.isError,
            }


if __name__ == "__main__":
    warnings.simplefilter("ignore", DeprecationWarning)
    print(json.dumps(anyio.run(main, sys.argv[1])))
