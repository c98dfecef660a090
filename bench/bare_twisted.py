"""A bare twisted.web server: the ceiling for any Twisted MCP server on this machine.

``POST /mcp`` parses the JSON-RPC body and answers with the CallToolResult an MCP server would
send for ``echo`` (the request's id, its ``text`` as one text block). No MCP logic, no sessions,
no access log: only Twisted's HTTP and the JSON work every server must do::

    python bench/bare_twisted.py 8000
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def echo_response(message: Any) -> dict[str, Any]:
    """The JSON-RPC response to a tools/call of ``echo``, whatever the message says."""
    params = message.get("params") if isinstance(message, dict) else None
    arguments = params.get("arguments") if isinstance(params, dict) else None
    text = arguments.get("text", "") if isinstance(arguments, dict) else ""
    result = {"content": [{"type": "text", "text": str(text)}], "resultType": "complete"}
    return {"jsonrpc": "2.0", "id": message.get("id") if isinstance(message, dict) else None, "result": result}


class EchoEndpoint(Resource):
    """The ``/mcp`` resource: every POST gets the echo CallToolResult as JSON."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        """Parse the body and answer it; a body that is not JSON gets HTTP 400."""
        assert request.content is not None
        try:
            message = json.loads(request.content.read())
        except ValueError:
            request.setResponseCode(400)
            return b""
        request.setHeader(b"content-type", b"application/json")
        return _dumps(echo_response(message)).encode("utf-8")


class QuietSite(Site):
    """A `Site` that writes no access log (a ceiling should not pay for one)."""

    def log(self, request: Request) -> None:
        """Log nothing."""


def main() -> None:
    """Listen on 127.0.0.1 at the port given as the only argument until stopped."""
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: bare_twisted.py PORT")
    root = Resource()
    root.putChild(b"mcp", EchoEndpoint())
    site = QuietSite(root)
    site.noisy = False
    TCP4ServerEndpoint(reactor, int(sys.argv[1]), interface="127.0.0.1").listen(site)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
