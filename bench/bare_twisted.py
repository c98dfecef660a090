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

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IReactorTCP
from twisted.internet.task import react
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

MCP_PATH = b"/mcp"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def echo_response(message: Any) -> dict[str, Any]:
    """The JSON-RPC response to a tools/call of ``echo``, whatever the message says."""
    params = message.get("params") if isinstance(message, dict) else None
    arguments = params.get("arguments") if isinstance(params, dict) else None
    text = arguments.get("text", "") if isinstance(arguments, dict) else ""
    result = {"content": [{"type": "text", "text": str(text)}], "resultType": "complete"}
    return {"jsonrpc": "2.0", "id": message.get("id") if isinstance(message, dict) else None, "result": result}


class EchoEndpoint(Resource):
    """The whole site: a POST to ``/mcp`` gets the echo CallToolResult as JSON."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        """Answer the body; another path gets 404, a body that is not JSON 400."""
        if request.path != MCP_PATH:
            request.setResponseCode(404)
            return b""
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

    noisy = False

    def log(self, request: http.Request) -> None:
        """Log nothing."""


def serve(reactor: IReactorTCP, port: str) -> Deferred[None]:
    """Listen on 127.0.0.1 at ``port``; the Deferred never fires, so it serves until stopped."""
    # No form sniffing of POST bodies either (mcpd turns it off too): the ceiling should not pay
    # for twisted.web's email-package Content-Type parse.
    site = QuietSite(EchoEndpoint(), parsePOSTFormSubmission=False)
    TCP4ServerEndpoint(reactor, int(port), interface="127.0.0.1").listen(site)
    return Deferred()


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: bare_twisted.py PORT")
    react(serve, [sys.argv[1]])
