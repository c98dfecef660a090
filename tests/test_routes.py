"""Tests for `mcpd.security.routes`: one route per request target, decided once; the policy layer
decides on it and the Site serves it. In memory for the table, then against a real daemon with
keys over real sockets (plain and TLS) for every spelling of a path an attacker might try."""

from __future__ import annotations

import json
import time

from twisted.trial.unittest import SynchronousTestCase

from mcpd.security import routes
from mcpd.security.routes import UNKNOWN, route_of, route_problem, split_target
from mcpd.transport.legacy_sse import SSEMessagesResource, SSEStreamResource
from mcpd.transport.streamable import StreamableHTTP
from mcpd.transport.websocket import WebSocketEndpoint
from mcpd.web.monitoring import ASSETS
from tests.http_harness import assert_no_content
from tests.security_harness import (
    KEY,
    MCP_HEADERS,
    Raw,
    RouteTestCase,
    call_body,
    read_all,
    read_until,
    request_bytes,
)

# Another spelling of a route is no route: each of these must be refused, never served.
NOT_ROUTES = [
    "//health",
    "//ready",
    "///health",
    "//%68ealth",
    "/%68ealth",
    "//mcp",
    "/mcp/",
    "/mcp//",
    "/./health",
    "/./mcp",
    "/mcp/.",
    "/mcp/../health",
    "/health/../mcp",
    "/%2e/health",
    "/mcp/%2e%2e/health",
    "/%2Fhealth",
    "/%2fmcp",
    "/mcp%2F",
    "/health;x",
    "/mcp;x",
    "/mcp%3Bx",
    "/MCP",
    "/Health",
    "/mcp%20",
    "/mcp%00",
    "/health/",
    "/sse/",
    "/ws/",
    "/messages",
    "//messages/",
    "/messages/x",
    "/messages//",
    "/stats/",
    "/metrics.txt",
    "/dashboard/",
    "/dashboard/x",
    "/dashboard//dashboard.js",
    "/dashboard/%64ashboard.js",
    "/mcp#x",
    "/nowhere",
    "*",
]


class TableTests(SynchronousTestCase):
    def test_every_route_by_its_exact_path(self) -> None:
        expected = {
            b"/": "mcp",
            b"/mcp": "mcp",
            b"/sse": "sse",
            b"/messages/": "messages",
            b"/ws": "ws",
            b"/health": "health",
            b"/ready": "ready",
            b"/stats": "stats",
            b"/metrics": "metrics",
            b"/dashboard": "dashboard",
            b"/dashboard/dashboard.html": "dashboard.html",
            b"/dashboard/dashboard.js": "dashboard.js",
            b"/dashboard/dashboard.css": "dashboard.css",
        }
        self.assertEqual({path: route.name for path, route in routes.ROUTES.items()}, expected)
        for path, name in expected.items():
            self.assertEqual(route_of(path + b"?x=1&y").name, name)

    def test_other_spellings_are_unknown(self) -> None:
        for target in NOT_ROUTES:
            self.assertIs(route_of(target.encode()), UNKNOWN, target)

    def test_absolute_form(self) -> None:
        self.assertEqual(split_target(b"http://h:1/health?x"), (b"h:1", b"/health"))
        self.assertEqual(split_target(b"HTTPS://h"), (b"h", b"/"))
        self.assertEqual(split_target(b"/mcp"), (None, b"/mcp"))
        self.assertEqual(split_target(b"ftp://h/mcp"), (None, b"ftp://h/mcp"))
        self.assertEqual(route_of(b"http://h/health").name, "health")
        self.assertEqual(route_of(b"http://h?x").name, "mcp")
        self.assertIs(route_of(b"http://h//health"), UNKNOWN)
        self.assertIs(route_of(b"http:/health"), UNKNOWN)

    def test_problems(self) -> None:
        self.assertIsNone(route_problem(routes.MCP, b"POST", b"/mcp"))
        self.assertIsNone(route_problem(routes.HEALTH, b"OPTIONS", b"/health"))
        status, body, headers = route_problem(routes.HEALTH, b"POST", b"/health") or (0, {}, ())
        self.assertEqual((status, headers), (405, (("Allow", "GET, HEAD, OPTIONS"),)))
        self.assertIn("/health takes GET, HEAD, OPTIONS", body["error"])
        status, body, _ = route_problem(UNKNOWN, b"GET", b"/" + b"a" * 5000 + b"?key=x") or (0, {}, ())
        self.assertEqual(status, 404)
        self.assertLess(len(body["error"]), 200)
        self.assertNotIn("key", body["error"])
        for method in (b"TRACE", b"PUT", b"PATCH", b"CONNECT", b"FOO"):
            self.assertEqual((route_problem(routes.MCP, method, b"/mcp") or (0,))[0], 501)

    def test_the_table_matches_what_serves_it(self) -> None:
        served = {
            routes.MCP: StreamableHTTP.allowed_methods,
            routes.SSE: SSEStreamResource.allowed_methods,
            routes.MESSAGES: SSEMessagesResource.allowed_methods,
            routes.WEBSOCKET: WebSocketEndpoint.allowed_methods,
        }
        for route, methods in served.items():
            self.assertEqual(route.methods, frozenset(methods), route.name)
        self.assertEqual(set(routes.DASHBOARD_FILES), set(ASSETS))


class BypassTests(RouteTestCase):
    """Finding 1 of issue 9: ``POST //health`` with an MCP body and no key was served by the MCP
    endpoint (the gate saw /health, routing saw the MCP root)."""

    def test_other_spellings_are_refused_never_served(self) -> None:
        for scheme in self.start():
            for target in NOT_ROUTES:
                for headers in ({}, KEY):
                    reply = self.send(scheme, "POST", target, call_body("sec.record"), **MCP_HEADERS, **headers)
                    self.assertJSONError(reply, 404, f"{target!r} is not a path of this server")
                reply = self.send(scheme, "GET", target, Accept="text/event-stream")
                self.assertJSONError(reply, 404, "is not a path of this server")
        audited = [record["outcome"] for record in self.audit()]
        self.assertEqual(set(audited), {"not_found"})
        self.assertEqual(len(audited), 2 * 3 * len(NOT_ROUTES))

    def test_websocket_upgrades_to_other_spellings(self) -> None:
        upgrade = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Protocol": "mcp",
        }
        for scheme in self.start():
            for target in ("//ws", "/ws/", "/%77s", "/./ws", "/ws;x", "/mcp/../ws"):
                reply = self.send(scheme, "GET", target, **upgrade, **KEY)
                self.assertJSONError(reply, 404, "is not a path of this server")
            switched = self.send(scheme, "GET", "/ws", **upgrade, **KEY)
            self.assertEqual(switched.status, 101, switched.raw)

    def test_an_mcp_body_to_a_monitoring_route_is_405(self) -> None:
        for scheme in self.start():
            for target in ("/health", "/ready", "/stats", "/metrics", "/dashboard", "/health?x=1"):
                reply = self.send(scheme, "POST", target, call_body("sec.record"), **MCP_HEADERS)
                self.assertJSONError(reply, 405, "takes GET, HEAD, OPTIONS")
                self.assertEqual(reply.headers["allow"], "GET, HEAD, OPTIONS")

    def test_absolute_form_targets(self) -> None:
        schemes = self.start()
        body = call_body("sec.record")
        for scheme in schemes:
            here = f"127.0.0.1:{scheme.port}"
            # Routed by its path: /health takes no POST, /mcp needs its key.
            reply = self.send(scheme, "POST", f"http://{here}/health", body, **MCP_HEADERS)
            self.assertJSONError(reply, 405, "/health takes")
            reply = self.send(scheme, "POST", f"http://{here}//health", body, **MCP_HEADERS)
            self.assertJSONError(reply, 404, "is not a path")
            reply = self.send(scheme, "POST", f"HTTP://{here}/mcp", body, **MCP_HEADERS)
            self.assertJSONError(reply, 401, "needs an API key")
            # Another host than Host's: which one was meant cannot be told.
            for target in ("http://evil.example/mcp", f"http://user@{here}/mcp", "http://localhost/mcp"):
                reply = self.send(scheme, "POST", target, body, **MCP_HEADERS, **KEY)
                self.assertJSONError(reply, 400, "must name the same host as the Host header")
            served = self.send(scheme, "GET", f"http://{here}/health")
            self.assertEqual(served.status, 200, served.raw)
            self.assertEqual(served.json()["status"], "healthy")
        for scheme in schemes:
            served = self.send(scheme, "POST", f"https://127.0.0.1:{scheme.port}/mcp", body, **MCP_HEADERS, **KEY)
            self.assertEqual(served.status, 200, served.raw)
        self.assertEqual(self.executions(), ["executed sec.record root"] * 2)


class EveryRouteTests(RouteTestCase):
    """Every route × method × key, from loopback and from a client behind a trusted proxy:
    every answer that is not served is JSON."""

    def test_from_loopback(self) -> None:
        for scheme in self.start("--trusted-proxy", "192.0.2.1"):
            for target in ("/health", "/ready", "/stats", "/metrics", "/dashboard", "/dashboard/dashboard.js"):
                for method in ("GET", "HEAD"):
                    reply = self.send(scheme, method, target)
                    self.assertEqual(reply.status, 200, (method, target, reply.raw[:300]))
                    if method == "HEAD":
                        self.assertEqual(reply.body, b"")
            for method, target in (
                ("POST", "/mcp"),
                ("POST", "/"),
                ("GET", "/sse"),
                ("POST", "/messages/?session_id=x"),
                ("GET", "/ws"),
            ):
                self.assertJSONError(
                    self.send(scheme, method, target, b"{}" if method == "POST" else b""), 401, "needs an API key"
                )
            for target in ("/mcp", "/sse", "/messages/", "/ws"):
                reply = self.send(scheme, "HEAD", target, **KEY)
                self.assertJSONError(reply, 405, "Method Not Allowed", head=True)
                self.assertIn("OPTIONS", reply.headers["allow"])
            for method, target in (("DELETE", "/sse"), ("GET", "/messages/"), ("POST", "/ws"), ("DELETE", "/health")):
                reply = self.send(scheme, method, target, b"{}" if method == "POST" else b"", **KEY)
                self.assertJSONError(reply, 405, "Method Not Allowed")
            for method in ("TRACE", "PUT", "PATCH", "FOO"):
                for target in ("/mcp", "/health", "/nowhere"):
                    reply = self.send(scheme, method, target, **KEY)
                    self.assertJSONError(reply, 501, f"does not implement the {method} method")
            # A plain OPTIONS (not a CORS preflight) is told what the route takes.
            reply = self.send(scheme, "OPTIONS", "/mcp", **KEY)
            self.assertEqual((reply.status, reply.headers["allow"]), (204, "DELETE, GET, OPTIONS, POST"))
            reply = self.send(scheme, "OPTIONS", "/health")
            self.assertEqual((reply.status, reply.headers["allow"]), (204, "GET, HEAD, OPTIONS"))

    def test_from_beyond_loopback(self) -> None:
        """Behind a trusted proxy, the client is 203.0.113.9: the admin routes need an admin key."""
        beyond = {"X-Forwarded-For": "203.0.113.9"}
        schemes = self.start("--trusted-proxy", "127.0.0.1")
        for scheme in schemes:
            for target in ("/health", "/ready"):
                self.assertEqual(self.send(scheme, "GET", target, **beyond).status, 200)
            for target in ("/stats", "/metrics", "/dashboard", "/dashboard/dashboard.css"):
                self.assertJSONError(self.send(scheme, "GET", target, **beyond), 401, "needs an API key")
                reply = self.send(scheme, "GET", target, **beyond, Authorization="Bearer alice-key")
                self.assertJSONError(reply, 403, "admin-scoped API key")
                self.assertEqual(self.send(scheme, "GET", target, **beyond, **KEY).status, 200)
            for target in NOT_ROUTES[:8]:
                reply = self.send(scheme, "POST", target, call_body("sec.record"), **MCP_HEADERS, **beyond)
                self.assertJSONError(reply, 404, "is not a path")
        for scheme in schemes:
            reply = self.send(scheme, "POST", "/mcp", call_body("sec.record"), **MCP_HEADERS, **beyond, **KEY)
            self.assertEqual(reply.status, 200, reply.raw)
        self.assertEqual(self.executions(), ["executed sec.record root"] * 2)
        peers = {record["peer"] for record in self.audit()}
        self.assertEqual(peers, {"203.0.113.9"})

    def test_without_keys_on_loopback(self) -> None:
        """Without keys loopback is served everything, but only by its exact path."""
        scheme = self.start_plain()
        for target in ("/health", "/ready", "/stats", "/metrics", "/dashboard", "/dashboard/dashboard.html"):
            self.assertEqual(self.send(scheme, "GET", target).status, 200, target)
        for target in NOT_ROUTES:
            reply = self.send(scheme, "POST", target, call_body("sec.record"), **MCP_HEADERS)
            self.assertJSONError(reply, 404, "is not a path of this server")
        reply = self.send(scheme, "POST", "/mcp", call_body("sec.record"), **MCP_HEADERS)
        self.assertEqual(reply.status, 200, reply.raw)
        self.assertEqual(self.executions(), ["executed sec.record anonymous"])

    def test_without_keys_only_loopback(self) -> None:
        """A daemon without keys serves loopback only: a client behind the proxy gets 403 on
        every route (the proxy itself, loopback, is served: its health checks)."""
        scheme = self.start_plain("--trusted-proxy", "127.0.0.1")
        beyond = {"X-Forwarded-For": "203.0.113.9"}
        self.assertEqual(self.send(scheme, "GET", "/health").status, 200)
        for method, target in (
            ("GET", "/health"),
            ("GET", "/stats"),
            ("POST", "/mcp"),
            ("GET", "/sse"),
            ("GET", "/ws"),
        ):
            reply = self.send(scheme, method, target, b"{}" if method == "POST" else b"", **beyond)
            self.assertJSONError(reply, 403, "loopback clients only")
        for target in ("//health", "//stats", "/mcp/"):
            self.assertJSONError(self.send(scheme, "GET", target, **beyond), 403, "loopback clients only")
            self.assertJSONError(self.send(scheme, "GET", target), 404, "is not a path")


class NoContentTests(RouteTestCase):
    """RFC 9110 §8.6 and §15.3.5: a 204 has no content and carries no Content-Length (nor a
    Transfer-Encoding); it ends at its head, and the connection serves the next request."""

    def test_options_and_preflight_keep_the_connection(self) -> None:
        for scheme in self.start("--cors-origin", "https://app.example"):
            host = f"Host: 127.0.0.1:{scheme.port}\r\n"
            sock = scheme.socket()
            try:
                # A plain OPTIONS (Root), one to a monitoring route, a CORS preflight (the policy
                # layer), one after the other on one connection.
                for head, expected in (
                    (
                        "OPTIONS /mcp HTTP/1.1\r\nAuthorization: Bearer root-key\r\n",
                        ("allow", "DELETE, GET, OPTIONS, POST"),
                    ),
                    ("OPTIONS /health HTTP/1.1\r\n", ("allow", "GET, HEAD, OPTIONS")),
                    (
                        "OPTIONS /mcp HTTP/1.1\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n",
                        ("access-control-max-age", "600"),
                    ),
                ):
                    sock.sendall((head + host + "\r\n").encode())
                    headers = assert_no_content(self, read_until(sock, b"\r\n\r\n")).headers
                    self.assertEqual(headers[expected[0]], expected[1])
                    self.assertNotIn("connection", headers)
                sock.sendall(f"GET /health HTTP/1.1\r\n{host}Connection: close\r\n\r\n".encode())
                served = Raw(read_all(sock))
            finally:
                sock.close()
            self.assertEqual(served.status, 200, served.raw)
            self.assertEqual(served.json()["status"], "healthy")

    def test_over_http_1_0(self) -> None:
        """An HTTP/1.0 client gets the same head, and the connection closes after it."""
        for scheme in self.start("--cors-origin", "https://app.example"):
            for head in (
                b"OPTIONS /mcp HTTP/1.0\r\nAuthorization: Bearer root-key\r\n\r\n",
                b"OPTIONS /mcp HTTP/1.0\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n\r\n",
            ):
                sock = scheme.socket()
                try:
                    sock.sendall(head)
                    started = time.monotonic()
                    data = read_all(sock, timeout=5)
                finally:
                    sock.close()
                self.assertLess(time.monotonic() - started, 3, data)
                assert_no_content(self, data, b"HTTP/1.0")


class LegacyTransportTests(RouteTestCase):
    def test_legacy_sse_over_its_exact_paths(self) -> None:
        """The legacy endpoint is ``/messages/`` exactly, as the endpoint event says."""
        for scheme in self.start():
            sock = scheme.socket()
            try:
                sock.sendall(request_bytes("GET", "/sse", scheme.port, Accept="text/event-stream", **KEY))
                data = b""
                sock.settimeout(10)
                while b"session_id=" not in data or b"\n\n" not in data.split(b"session_id=", 1)[1]:
                    chunk = sock.recv(65536)
                    self.assertTrue(chunk, data)
                    data += chunk
                endpoint = data.split(b"data: ", 2)[-1].split(b"\n", 1)[0].decode()
                self.assertTrue(endpoint.startswith("/messages/?session_id="), endpoint)
                initialize = json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": 0,
                        "method": "initialize",
                        "params": {
                            "protocolVersion": "2024-11-05",
                            "capabilities": {},
                            "clientInfo": {"name": "t", "version": "1"},
                        },
                    }
                ).encode()
                headers = {"Content-Type": "application/json", **KEY}
                session = endpoint.partition("?")[2]
                for wrong in (f"/messages?{session}", f"//messages/?{session}", f"/messages/x?{session}"):
                    self.assertJSONError(self.send(scheme, "POST", wrong, initialize, **headers), 404, "is not a path")
                anonymous = self.send(scheme, "POST", endpoint, initialize, **{"Content-Type": "application/json"})
                self.assertJSONError(anonymous, 401, "needs an API key")
                accepted = self.send(scheme, "POST", endpoint, initialize, **headers)
                self.assertEqual(accepted.status, 202, accepted.raw)
            finally:
                sock.close()
