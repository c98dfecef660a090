"""The official MCP Python SDK serving the same ``echo`` tool as `bench.echo_pack`.

Streamable HTTP at ``http://127.0.0.1:PORT/mcp`` with the SDK's defaults (both eras: stateless
2026-07-28 requests and legacy sessions, which answer over SSE), or stdio::

    python bench/sdk_echo_server.py 8000
    python bench/sdk_echo_server.py --stdio
"""

from __future__ import annotations

import argparse

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations


def make_server() -> MCPServer:
    """An SDK server with one ``echo`` tool whose result matches mcpd's (a single text block)."""
    server: MCPServer = MCPServer("sdk-echo", log_level="WARNING")

    @server.tool(
        name="echo",
        description="Return the given text unchanged.",
        annotations=ToolAnnotations(
            read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
        # No structuredContent: the same result shape and work as mcpd's echo.
        structured_output=False,
    )
    def echo(text: str) -> str:
        """Send ``text`` back as the call's single text block."""
        return text

    return server


def main() -> None:
    """Serve over Streamable HTTP on the port given, or over stdio with ``--stdio``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", nargs="?", type=int, help="TCP port on 127.0.0.1")
    parser.add_argument("--stdio", action="store_true", help="serve over stdin/stdout instead")
    parser.add_argument("--json-response", action="store_true", help="legacy era: answer with JSON instead of SSE")
    args = parser.parse_args()
    server = make_server()
    if args.stdio:
        server.run("stdio")
    elif args.port is None:
        parser.error("give a port, or --stdio")
    else:
        server.run(
            "streamable-http",
            host="127.0.0.1",
            port=args.port,
            streamable_http_path="/mcp",
            json_response=args.json_response,
        )


if __name__ == "__main__":
    main()
