"""Run by the test suite's own interpreter as a separate process (inside a network namespace, so
the client is beyond loopback): connect to an mcpd URL through a proxy with the official MCP
Python SDK 2.x over Streamable HTTP or the legacy HTTP+SSE transport, list the tools, call
``server.info`` and ``tests.progress`` (collecting its progress), and print what happened as one
JSON object on stdout.

    python tests/proxy_client_script.py streamable|sse URL CA_FILE [MODE]

MODE is ``legacy`` (the initialize handshake, the default) or ``2026-07-28``.
"""

from __future__ import annotations

import json
import ssl
import sys
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

TIMEOUT = 30.0


async def main(transport: str, url: str, ca_file: str, mode: str) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=ca_file)

    def factory(headers: Any = None, timeout: Any = None, auth: Any = None) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(headers=headers, timeout=timeout, auth=auth, verify=context)

    progress: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    with anyio.fail_after(TIMEOUT):
        async with factory() as http:
            target = (
                streamable_http_client(url, http_client=http)
                if transport == "streamable"
                else sse_client(url, httpx_client_factory=factory)
            )
            async with Client(target, mode=mode) as client:
                tools = sorted(tool.name for tool in (await client.list_tools()).tools)
                info = (await client.call_tool("server.info", {})).structured_content
                slow = await client.call_tool(
                    "tests.progress", {"steps": 3, "delay": 0.05}, progress_callback=on_progress
                )
                return {"tools": tools, "info": info, "progress": progress, "isError": slow.is_error}


if __name__ == "__main__":
    mode = sys.argv[4] if len(sys.argv) > 4 else "legacy"
    print(json.dumps(anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], mode)))
