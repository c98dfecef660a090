"""Tests for Streamable HTTP (`mcpd.transport.streamable`, `mcpd.transport.sse`) and the resource
tree around it (`mcpd.web.site`), driven in memory over a site wired as `mcpd.daemon.build_service` wires it.

Plain request/response exchanges go through `treq.testing.StubTreq`; streams, disconnects and
resumption use a real `twisted.web.server.Request` on a `StringTransport`, which shows what the
server has written so far.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Mapping
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mcpd.protocol.codec import MAX_DEPTH
from mcpd.protocol.errors import LIMIT_EXCEEDED
from mcpd.protocol.ledger import REPLAY, SESSION, STREAM, Ledger, Limit
from mcpd.protocol.vocabulary import Exchange
from mcpd.transport.sse import EventStream
from tests.http_harness import (
    BOTH,
    LATEST_LEGACY,
    MODERN,
    SSE_ONLY,
    ComponentizedDummyRequest,
    Event,
    HTTPConnection,
    HTTPResponse,
    HTTPTestCase,
    Server,
    call,
    initialize_request,
    make_server,
    modern_headers,
    modern_request,
    notification,
    request,
)


def assertFramedByLength(case: HTTPTestCase, response: HTTPResponse) -> None:
    """``response`` is complete JSON sent with a Content-Length, not chunked."""
    case.assertTrue(response.complete)
    case.assertEqual(response.headers["content-type"], "application/json")
    case.assertNotIn("transfer-encoding", response.headers)
    case.assertEqual(response.headers["content-length"], str(len(response.body)))


# -- modern era -----------------------------------------------------------------------------------


class ModernPostTests(HTTPTestCase):
    """2026-07-28: stateless POSTs whose routing headers mirror the body."""

    def test_tools_call_answers_json_with_result_type(self) -> None:
        message = modern_request("tools/call", {"name": "test.echo", "arguments": {"text": "hi"}}, request_id=7)
        response = self.post(message, modern_headers("tools/call", "test.echo"))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], "application/json")
        body = self.assertValid(MODERN, response.json(), "tools/call")
        self.assertEqual(body["id"], 7)
        self.assertEqual(body["result"]["resultType"], "complete")
        self.assertEqual(body["result"]["content"], [{"type": "text", "text": "hi"}])
        self.assertNotIn("mcp-session-id", response.headers)

    def test_server_discover(self) -> None:
        response = self.post(modern_request("server/discover"), modern_headers("server/discover"))
        self.assertEqual(response.status, 200)
        body = self.assertValid(MODERN, response.json(), "server/discover")
        self.assertIn(MODERN, body["result"]["supportedVersions"])

    def assertRejected(self, response: HTTPResponse, status: int, code: int, request_id: Any = 1) -> dict[str, Any]:
        """The response is a JSON-RPC error with this HTTP status and code."""
        self.assertEqual(response.status, status)
        self.assertEqual(response.headers["content-type"], "application/json")
        body = self.assertValid(MODERN, response.json())
        self.assertEqual(body["error"]["code"], code)
        self.assertEqual(body.get("id"), request_id)
        return body

    def test_name_header_mismatch(self) -> None:
        message = modern_request("tools/call", {"name": "test.echo", "arguments": {"text": "hi"}})
        response = self.post(message, modern_headers("tools/call", "test.progress"))
        self.assertRejected(response, 400, -32020)

    def test_name_header_missing(self) -> None:
        message = modern_request("tools/call", {"name": "test.echo", "arguments": {"text": "hi"}})
        response = self.post(message, modern_headers("tools/call"))
        self.assertRejected(response, 400, -32020)

    def test_method_header_mismatch(self) -> None:
        response = self.post(modern_request("tools/list"), modern_headers("server/discover"))
        self.assertRejected(response, 400, -32020)

    def test_method_header_missing(self) -> None:
        response = self.post(modern_request("tools/list"), {"MCP-Protocol-Version": MODERN})
        self.assertRejected(response, 400, -32020)

    def test_version_header_differs_from_meta(self) -> None:
        message = modern_request("tools/list", version="2099-01-01")
        response = self.post(message, modern_headers("tools/list"))
        self.assertRejected(response, 400, -32020)

    def test_unsupported_version(self) -> None:
        message = modern_request("tools/list", version="2099-01-01")
        response = self.post(message, modern_headers("tools/list", version="2099-01-01"))
        body = self.assertRejected(response, 400, -32022)
        self.assertEqual(body["error"]["data"]["requested"], "2099-01-01")
        self.assertIn(MODERN, body["error"]["data"]["supported"])

    def test_missing_meta(self) -> None:
        response = self.post(request("tools/list", {}), modern_headers("tools/list"))
        self.assertRejected(response, 400, -32602)

    def test_unknown_method(self) -> None:
        response = self.post(modern_request("tools/frobnicate"), modern_headers("tools/frobnicate"))
        self.assertRejected(response, 404, -32601)

    def test_parse_error(self) -> None:
        response = self.post(b'{"jsonrpc": "2.0", "id": 1, "method":', modern_headers("tools/list"))
        self.assertRejected(response, 400, -32700, request_id=None)

    def test_notification_is_accepted_without_body(self) -> None:
        message = notification("notifications/cancelled", {"requestId": 99})
        response = self.post(message, modern_headers("notifications/cancelled"))
        self.assertEqual(response.status, 202)
        self.assertEqual(response.body, b"")

    def test_get_and_delete_are_not_allowed(self) -> None:
        for method in ("GET", "DELETE"):
            response = self.fetch(method, {"Accept": SSE_ONLY, **modern_headers("tools/list")})
            self.assertEqual(response.status, 405, method)
            self.assertEqual(response.headers["allow"], "POST", method)


class ParameterHeaderTests(HTTPTestCase):
    """2026-07-28 transports §Custom Headers: Mcp-Param-* headers must mirror the body."""

    def call_region(self, arguments: dict[str, Any], **params: str) -> HTTPResponse:
        message = modern_request("tools/call", {"name": "test.region", "arguments": arguments})
        headers = {**modern_headers("tools/call", "test.region"), **params}
        return self.post(message, headers)

    def test_matching_headers_are_served(self) -> None:
        response = self.call_region(
            {"region": "us-west1", "shard": 7}, **{"Mcp-Param-Region": "us-west1", "Mcp-Param-Shard": "7"}
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json()["result"]["content"][0]["text"], "us-west1/7")

    def test_integers_compare_numerically_and_names_case_insensitively(self) -> None:
        response = self.call_region({"shard": 42}, **{"mcp-param-shard": "42.0"})
        self.assertEqual(response.status, 200)

    def test_base64_values_are_decoded(self) -> None:
        response = self.call_region(
            {"region": "Hello, 世界"}, **{"Mcp-Param-Region": "=?base64?SGVsbG8sIOS4lueVjA==?="}
        )
        self.assertEqual(response.status, 200)

    def test_absent_arguments_need_no_header(self) -> None:
        self.assertEqual(self.call_region({}).status, 200)

    def assertMismatch(self, response: HTTPResponse) -> None:
        self.assertEqual(response.status, 400)
        body = self.assertValid(MODERN, response.json())
        self.assertEqual(body["error"]["code"], -32020)

    def test_missing_header_is_rejected(self) -> None:
        self.assertMismatch(self.call_region({"region": "us-west1"}))

    def test_different_value_is_rejected(self) -> None:
        self.assertMismatch(self.call_region({"region": "us-west1"}, **{"Mcp-Param-Region": "eu-west1"}))

    def test_header_without_argument_is_rejected(self) -> None:
        self.assertMismatch(self.call_region({}, **{"Mcp-Param-Shard": "1"}))

    def test_bad_base64_is_rejected(self) -> None:
        self.assertMismatch(self.call_region({"region": "x"}, **{"Mcp-Param-Region": "=?base64?***?="}))

    def test_duplicated_routing_header_is_rejected(self) -> None:
        message = modern_request("tools/list")
        connection = HTTPConnection(self.server.site)
        body = json.dumps(message).encode()
        head = (
            "POST /mcp HTTP/1.1\r\nHost: localhost:8765\r\nAccept: application/json\r\n"
            "Content-Type: application/json\r\nMCP-Protocol-Version: 2026-07-28\r\n"
            f"Mcp-Method: tools/list\r\nMcp-Method: tools/list\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        connection.protocol.dataReceived(head.encode() + body)
        self.assertMismatch(connection.response)

    def test_a_message_nested_too_deep_is_not_read_for_a_rejection(self) -> None:
        """A body nested past MAX_DEPTH is answered like one that is not JSON: nothing is read
        from it (its id) or encoded again from it (the trace, which overflowed the stack and
        answered 500 when the nesting was just under Python's own limit)."""
        nested = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
        body = b'{"jsonrpc":"2.0","id":5,"method":"tools/list","params":{"x":' + nested + b"}}"
        connection = HTTPConnection(self.server.site)
        head = (
            "POST /mcp HTTP/1.1\r\nHost: localhost:8765\r\nAccept: application/json\r\n"
            "Content-Type: application/json\r\nMCP-Protocol-Version: 2026-07-28\r\n"
            f"Mcp-Method: tools/list\r\nMcp-Method: tools/list\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        connection.protocol.dataReceived(head.encode() + body)
        self.assertMismatch(connection.response)
        self.assertNotIn("id", connection.response.json())
        response = self.post(body, modern_headers("tools/list"))
        self.assertEqual(response.status, 400)
        self.assertIn(f"nests deeper than {MAX_DEPTH} levels", response.json()["error"]["message"])


class ModernStreamTests(HTTPTestCase):
    """2026-07-28: a request's own notifications stream before its result; a disconnect cancels."""

    def call_progress_tool(self, accept: str) -> HTTPResponse:
        message = modern_request("tools/call", {"name": "test.progress"}, request_id=3, progressToken="p1")
        return self.post(message, modern_headers("tools/call", "test.progress"), accept=accept)

    def assertProgressThenResult(self, events: list[Event], values: list[float], request_id: Any) -> None:
        """Progress notifications with ``values``, then the result of ``request_id``; all valid."""
        self.assertEqual(len(events), len(values) + 1, events)
        for event, value in zip(events[:-1], values, strict=True):
            note = self.assertValid(MODERN, event.message)
            self.assertEqual(note["method"], "notifications/progress")
            self.assertEqual(note["params"]["progress"], value)
        result = self.assertValid(MODERN, events[-1].message, "tools/call")
        self.assertEqual(result["id"], request_id)
        self.assertEqual(result["result"]["resultType"], "complete")

    def test_progress_streams_as_sse(self) -> None:
        response = self.call_progress_tool(BOTH)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], "text/event-stream")
        self.assertEqual(response.headers["x-accel-buffering"], "no")
        self.assertProgressThenResult(response.events, [1, 2], request_id=3)
        self.assertEqual(response.events[0].message["params"]["progressToken"], "p1")

    def test_progress_without_sse_answers_json(self) -> None:
        response = self.call_progress_tool("application/json")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], "application/json")
        body = self.assertValid(MODERN, response.json(), "tools/call")
        self.assertEqual(body["result"]["content"], [{"type": "text", "text": "progress tool done"}])

    def test_later_progress_streams_as_sse(self) -> None:
        message = modern_request("tools/call", {"name": "test.hold"}, request_id=4, progressToken=9)
        connection = self.open("POST", modern_headers("tools/call", "test.hold"), message)
        self.tools.last.progress(1)
        self.assertEqual(connection.response.headers["content-type"], "text/event-stream")
        self.assertEqual(len(connection.response.events), 1)
        self.assertFalse(connection.response.complete)
        self.tools.last.progress(5)
        self.tools.last.finish()
        self.assertTrue(connection.response.complete)
        self.assertProgressThenResult(connection.response.events, [1, 5], request_id=4)

    def test_late_json_answer_has_content_length(self) -> None:
        # An answer that comes after render returned (a blocking tool's, a store's) is framed
        # like one ready at once: with its length, not chunked.
        message = modern_request("tools/call", {"name": "test.hold"}, request_id=5)
        connection = self.open("POST", modern_headers("tools/call", "test.hold"), message)
        self.assertEqual(connection.transport.value(), b"")
        self.tools.last.finish("late")
        response = connection.response
        assertFramedByLength(self, response)
        body = self.assertValid(MODERN, response.json(), "tools/call")
        self.assertEqual(body["result"]["content"], [{"type": "text", "text": "late"}])

    def test_disconnect_cancels_pending_call(self) -> None:
        message = modern_request("tools/call", {"name": "test.hold"})
        connection = self.open("POST", modern_headers("tools/call", "test.hold"), message)
        self.assertFalse(self.tools.last.cancelled)
        connection.disconnect()
        self.assertTrue(self.tools.last.cancelled)
        self.assertTrue(self.tools.last.ctx.cancelled)

    def test_disconnect_cancels_streaming_call(self) -> None:
        message = modern_request("tools/call", {"name": "test.hold"}, progressToken="t")
        connection = self.open("POST", modern_headers("tools/call", "test.hold"), message)
        self.tools.last.progress(1)
        [note] = self.messages(MODERN, connection.response.events)
        self.assertEqual(note["params"]["progressToken"], "t")
        connection.disconnect()
        self.assertTrue(self.tools.last.cancelled)


# -- legacy era -----------------------------------------------------------------------------------


class LegacySessionTests(HTTPTestCase):
    """2025-03-26 … 2025-11-25: initialize opens a session named by Mcp-Session-Id."""

    def test_initialize_issues_visible_ascii_session_id(self) -> None:
        response = self.post(initialize_request())
        self.assertEqual(response.status, 200)
        body = self.assertValid(LATEST_LEGACY, response.json(), "initialize")
        self.assertEqual(body["result"]["protocolVersion"], LATEST_LEGACY)
        session_id = response.headers["mcp-session-id"]
        self.assertTrue(session_id)
        self.assertTrue(all(0x21 <= ord(c) <= 0x7E for c in session_id), session_id)
        self.assertIn(session_id, self.server.sessions)

    def test_sessions_are_distinct(self) -> None:
        self.assertNotEqual(self.initialize(), self.initialize())

    def test_request_without_session(self) -> None:
        self.initialize()
        response = self.post(request("tools/list", request_id=5))
        self.assertEqual(response.status, 400)
        body = self.assertValid(LATEST_LEGACY, response.json())
        self.assertEqual(body["error"]["code"], -32600)
        self.assertEqual(body["id"], 5)

    def test_parse_error_without_session(self) -> None:
        response = self.post(b"{not json")
        self.assertEqual(response.status, 400)
        self.assertEqual(self.assertValid(LATEST_LEGACY, response.json())["error"]["code"], -32700)
        self.assertEqual(len(self.server.sessions), 0)

    def test_unknown_session(self) -> None:
        response = self.post(request("tools/list"), self.session("no-such-session"))
        self.assertEqual(response.status, 404)
        self.assertValid(LATEST_LEGACY, response.json())

    def test_version_header_differs_from_session(self) -> None:
        session_id = self.initialize()
        response = self.post(request("tools/list"), self.session(session_id, "2025-06-18"))
        self.assertEqual(response.status, 400)
        self.assertEqual(self.assertValid(LATEST_LEGACY, response.json())["error"]["code"], -32600)

    def test_tools_list_and_call(self) -> None:
        session_id = self.initialize()
        listed = self.post(request("tools/list", request_id=2), self.session(session_id, LATEST_LEGACY))
        self.assertEqual(listed.status, 200)
        body = self.assertValid(LATEST_LEGACY, listed.json(), "tools/list")
        self.assertEqual(
            [tool["name"] for tool in body["result"]["tools"]],
            ["test.echo", "test.hold", "test.progress", "test.region"],
        )
        self.assertNotIn("ttlMs", body["result"])
        called = self.post(call("test.echo", {"text": "legacy"}, request_id=3), self.session(session_id))
        self.assertEqual(called.status, 200)
        body = self.assertValid(LATEST_LEGACY, called.json(), "tools/call")
        self.assertEqual(body["result"]["content"], [{"type": "text", "text": "legacy"}])
        self.assertNotIn("resultType", body["result"])

    def test_initialized_notification_is_accepted(self) -> None:
        response = self.post(initialize_request())
        session_id = response.headers["mcp-session-id"]
        accepted = self.post(notification("notifications/initialized"), self.session(session_id))
        self.assertEqual(accepted.status, 202)
        self.assertEqual(accepted.body, b"")
        self.assertTrue(self.server.sessions.get(session_id).initialized)  # type: ignore[union-attr]

    def test_delete_ends_session(self) -> None:
        session_id = self.initialize()
        self.assertEqual(self.fetch("DELETE", self.session(session_id)).status, 200)
        self.assertNotIn(session_id, self.server.sessions)
        self.assertEqual(self.post(request("tools/list"), self.session(session_id)).status, 404)
        self.assertEqual(self.fetch("DELETE", self.session(session_id)).status, 404)

    def test_delete_ends_open_stream(self) -> None:
        session_id = self.initialize()
        stream = self.open("GET", self.session(session_id), accept=SSE_ONLY)
        self.assertFalse(stream.response.complete)
        self.fetch("DELETE", self.session(session_id))
        self.assertTrue(stream.response.complete)

    def test_delete_cancels_pending_calls(self) -> None:
        session_id = self.initialize()
        self.open("POST", self.session(session_id), call("test.hold"))
        self.fetch("DELETE", self.session(session_id))
        self.assertTrue(self.tools.last.cancelled)

    def test_late_json_answers_have_content_length(self) -> None:
        # Legacy era, one call and a batch, each answered after render returned.
        session_id = self.initialize("2025-03-26")
        single = self.open("POST", self.session(session_id, "2025-03-26"), call("test.hold"), accept="application/json")
        self.tools.last.finish("one")
        assertFramedByLength(self, single.response)
        self.assertEqual(single.response.json()["result"]["content"], [{"type": "text", "text": "one"}])
        batch = [request("ping", request_id=1), call("test.hold", request_id=2)]
        both = self.open("POST", self.session(session_id, "2025-03-26"), batch, accept="application/json")
        self.tools.last.finish("two")
        assertFramedByLength(self, both.response)
        self.assertEqual([reply["id"] for reply in both.response.json()], [1, 2])

    def test_batch_in_2025_03_26(self) -> None:
        session_id = self.initialize("2025-03-26")
        batch = [
            request("ping", request_id=1),
            notification("notifications/progress", {"progressToken": 1, "progress": 1}),
            call("test.echo", {"text": "b"}, request_id=2),
        ]
        response = self.post(batch, self.session(session_id, "2025-03-26"))
        self.assertEqual(response.status, 200)
        replies = response.json()
        self.assertEqual([reply["id"] for reply in replies], [1, 2])
        self.assertValid("2025-03-26", replies[0], "ping")
        self.assertValid("2025-03-26", replies[1], "tools/call")
        self.assertEqual(replies[1]["result"]["content"], [{"type": "text", "text": "b"}])


class LegacyExpiryTests(HTTPTestCase):
    """Idle sessions end after ``session_timeout``; one with a reader stays."""

    def make_server(self) -> Server:
        server = make_server(session_timeout=10.0)
        server.sessions.start()
        return server

    def test_idle_session_expires(self) -> None:
        session_id = self.initialize()
        self.server.clock.pump([1.0] * 9)
        self.assertEqual(self.post(request("ping"), self.session(session_id)).status, 200)
        self.server.clock.pump([1.0] * 12)
        self.assertNotIn(session_id, self.server.sessions)
        self.assertEqual(self.post(request("ping"), self.session(session_id)).status, 404)

    def test_session_with_open_stream_is_kept(self) -> None:
        kept = self.initialize()
        idle = self.initialize()
        stream = self.open("GET", self.session(kept), accept=SSE_ONLY)
        self.server.clock.pump([1.0] * 30)
        self.assertNotIn(idle, self.server.sessions)
        self.assertIn(kept, self.server.sessions)
        self.assertEqual(self.post(request("ping"), self.session(kept)).status, 200)
        stream.disconnect()
        self.server.clock.pump([1.0] * 30)
        self.assertNotIn(kept, self.server.sessions)

    def test_session_expires_after_call_whose_client_left(self) -> None:
        session_id = self.initialize()
        connection = self.open("POST", self.session(session_id), call("test.hold", progressToken=1))
        connection.disconnect()
        self.tools.last.progress(1)
        self.tools.last.finish()
        self.server.clock.pump([1.0] * 15)
        self.assertNotIn(session_id, self.server.sessions)


class LegacyStreamTests(HTTPTestCase):
    """The standalone GET stream, SSE answers with event ids, and resumption."""

    def test_get_needs_event_stream(self) -> None:
        session_id = self.initialize()
        self.assertEqual(self.fetch("GET", {"Accept": "application/json", **self.session(session_id)}).status, 406)

    def test_get_without_session(self) -> None:
        self.assertEqual(self.fetch("GET", {"Accept": SSE_ONLY}).status, 400)
        self.assertEqual(self.fetch("GET", {"Accept": SSE_ONLY, **self.session("gone")}).status, 404)

    def test_get_opens_primed_stream(self) -> None:
        session_id = self.initialize()
        stream = self.open("GET", self.session(session_id), accept=SSE_ONLY)
        response = stream.response
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], "text/event-stream")
        self.assertFalse(response.complete)
        [priming] = response.events
        self.assertTrue(priming.id)
        self.assertEqual(priming.data, "")
        self.assertIsNotNone(priming.retry)

    def test_messages_pushed_before_the_get_stream_are_delivered_on_it(self) -> None:
        session_id = self.initialize()
        session = self.server.sessions.get(session_id)
        assert session is not None
        session.push({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        stream = self.open("GET", self.session(session_id), accept=SSE_ONLY)
        events = [event for event in stream.response.events if event.data]
        self.assertEqual([json.loads(event.data)["method"] for event in events], ["notifications/tools/list_changed"])
        # Delivered once: a second reader (after the first left) does not get it again.
        stream.disconnect()
        again = self.open("GET", self.session(session_id), accept=SSE_ONLY)
        self.assertEqual([event for event in again.response.events if event.data], [])

    def test_head_is_not_allowed_on_mcp_endpoints(self) -> None:
        for path in ("/mcp", "/sse", "/messages/", "/ws"):
            connection = HTTPConnection(self.server.site)
            connection.send("HEAD", path, {"Accept": "text/event-stream"})
            self.assertIn(connection.response.status, (404, 405), path)

    def test_older_versions_are_not_primed(self) -> None:
        session_id = self.initialize("2025-06-18")
        stream = self.open("GET", self.session(session_id), accept=SSE_ONLY)
        self.assertEqual(stream.response.status, 200)
        self.assertEqual(stream.response.events, [])

    def test_second_get_conflicts(self) -> None:
        session_id = self.initialize()
        first = self.open("GET", self.session(session_id), accept=SSE_ONLY)
        self.assertEqual(self.fetch("GET", {"Accept": SSE_ONLY, **self.session(session_id)}).status, 409)
        first.disconnect()
        self.assertEqual(self.open("GET", self.session(session_id), accept=SSE_ONLY).response.status, 200)

    def test_progress_answers_as_sse_with_event_ids(self) -> None:
        session_id = self.initialize()
        response = self.post(call("test.progress", request_id=8, progressToken="tok"), self.session(session_id))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], "text/event-stream")
        self.assertEqual(response.events[0].data, "")  # priming
        *notes, result = self.messages(LATEST_LEGACY, response.events, "tools/call")
        self.assertEqual([note["params"]["progress"] for note in notes], [1, 2])
        self.assertEqual(result["id"], 8)
        ids = [event.id for event in response.events]
        self.assertTrue(all(ids), ids)
        self.assertEqual(len(set(ids)), len(ids))

    def test_event_ids_unique_across_streams(self) -> None:
        session_id = self.initialize()
        first = self.post(call("test.progress", progressToken=1), self.session(session_id))
        second = self.post(call("test.progress", progressToken=1), self.session(session_id))
        ids = [event.id for event in first.events + second.events]
        self.assertEqual(len(set(ids)), len(ids), ids)

    def test_resumption_replays_missed_events_of_that_stream(self) -> None:
        session_id = self.initialize()
        dropped = self.open("POST", self.session(session_id), call("test.hold", request_id=1, progressToken="a"))
        first_call = self.tools.last
        first_call.progress(1)
        other = self.open("POST", self.session(session_id), call("test.hold", request_id=2, progressToken="b"))
        other_call = self.tools.last
        other_call.progress(1)
        seen = dropped.response.events
        [note] = self.messages(LATEST_LEGACY, seen)  # after the priming event
        self.assertEqual(note["params"]["progressToken"], "a")
        dropped.disconnect()

        first_call.progress(2)
        other_call.progress(2)
        first_call.finish("first done")
        self.assertFalse(first_call.cancelled)
        other_call.finish("other done")

        resumed = self.open("GET", {"Last-Event-ID": seen[-1].id, **self.session(session_id)}, accept=SSE_ONLY)
        response = resumed.response
        self.assertEqual(response.status, 200)
        self.assertTrue(response.complete)
        self.assertTrue(all(event.data for event in response.events), "no priming on a resumed stream")
        note, answer = self.messages(LATEST_LEGACY, response.events, "tools/call")
        self.assertEqual(note["params"], {"progressToken": "a", "progress": 2, "total": 10})
        self.assertEqual(answer["id"], 1)
        self.assertEqual(answer["result"]["content"], [{"type": "text", "text": "first done"}])
        self.assertEqual(len({event.id for event in seen + response.events}), 4)
        # The other stream went on undisturbed.
        *notes, other_answer = self.messages(LATEST_LEGACY, other.response.events, "tools/call")
        self.assertEqual([note["params"]["progress"] for note in notes], [1, 2])
        self.assertEqual(other_answer["result"]["content"], [{"type": "text", "text": "other done"}])

    def test_resumption_with_unknown_event_id(self) -> None:
        session_id = self.initialize()
        response = self.fetch("GET", {"Accept": SSE_ONLY, "Last-Event-ID": "nope.3", **self.session(session_id)})
        self.assertEqual(response.status, 404)

    def test_resumption_with_a_forged_event_id(self) -> None:
        """Unicode digits or a number past any stream's in a Last-Event-ID name no stream: 404,
        as for an unknown id, never a 500."""
        session_id = self.initialize()
        for forged in ("g.\u00b2", "s1.\u00b2", "s1." + "9" * 19, "g." + "9" * 5000):
            headers = {"Accept": SSE_ONLY, "Last-Event-ID": forged, **self.session(session_id)}
            self.assertEqual(self.fetch("GET", headers).status, 404, forged[:20])

    def test_cancelled_request_gets_an_empty_stream(self) -> None:
        # basic/utilities/cancellation: no result after notifications/cancelled; the POST that
        # carried the request is still answered as an event stream (transports §Sending Messages).
        session_id = self.initialize()
        connection = self.open("POST", self.session(session_id), call("test.hold", request_id=5))
        cancel = notification("notifications/cancelled", {"requestId": 5, "reason": "user"})
        self.assertEqual(self.post(cancel, self.session(session_id)).status, 202)
        self.assertTrue(self.tools.last.cancelled)
        response = connection.response
        self.assertTrue(response.complete)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], "text/event-stream")
        self.assertEqual([event for event in response.events if event.data], [])

    def test_disconnect_does_not_cancel(self) -> None:
        session_id = self.initialize()
        connection = self.open("POST", self.session(session_id), call("test.hold"))
        connection.disconnect()
        self.assertFalse(self.tools.last.cancelled)
        self.tools.last.finish()
        self.assertNotIn(1, self.server.sessions.get(session_id).in_flight)  # type: ignore[union-attr]


class ShareTests(HTTPTestCase):
    """Streams, sessions and replay buffers are counted per caller (here one address, without
    keys), whatever opens them: over a share the answer says so (429, Retry-After)."""

    ME = "ip:127.0.0.1"

    def make_server(self) -> Server:
        self.ledger = Ledger(
            {
                STREAM: Limit(per_account=2),
                SESSION: Limit(total=4, per_account=3),
                REPLAY: Limit(total=10_000, per_account=600),
            }
        )
        return make_server(ledger=self.ledger)

    def held(self, kind: str) -> int:
        return self.ledger.held(self.ME, kind)

    def get_stream(self, session_id: str) -> HTTPConnection:
        return self.open("GET", self.session(session_id), accept=SSE_ONLY)

    def assertOverShare(self, response: HTTPResponse, words: str) -> None:
        self.assertEqual(response.status, 429, response.body)
        self.assertEqual(response.headers["retry-after"], "5")
        self.assertIn(words, response.body.decode())

    def test_get_streams_count(self) -> None:
        sessions = [self.initialize() for _ in range(3)]
        first = self.get_stream(sessions[0])
        self.get_stream(sessions[1])
        self.assertEqual(self.held(STREAM), 2)
        refused = self.get_stream(sessions[2]).response
        self.assertOverShare(refused, "Too many streams: this client address holds 2 of at most 2")
        self.assertEqual(refused.json()["retry_after"], 5)
        first.disconnect()
        self.assertEqual(self.held(STREAM), 1)
        self.assertEqual(self.get_stream(sessions[2]).response.status, 200)

    def test_an_sse_answer_counts_and_over_the_share_answers_json(self) -> None:
        session_id = self.initialize()
        self.get_stream(session_id)
        streaming = self.open("POST", self.session(session_id), call("test.hold", progressToken=1))
        self.tools.last.progress(1)
        self.assertEqual(streaming.response.headers["content-type"], "text/event-stream")
        self.assertEqual(self.held(STREAM), 2)
        # At the share the answer comes as JSON, without the notifications before it.
        response = self.post(call("test.progress", request_id=2, progressToken=2), self.session(session_id))
        self.assertEqual(response.headers["content-type"], "application/json")
        self.assertEqual(response.json()["result"]["content"][0]["text"], "progress tool done")
        self.tools.last.finish()
        self.assertEqual(self.held(STREAM), 1)

    def test_a_listen_over_http_is_one_stream(self) -> None:
        listen = modern_request("subscriptions/listen", {"notifications": {"toolsListChanged": True}})
        headers = modern_headers("subscriptions/listen")
        listening = self.open("POST", headers, listen)
        self.assertEqual(listening.response.headers["content-type"], "text/event-stream")
        self.assertEqual(self.held(STREAM), 1)
        self.open("POST", headers, listen)
        refused = self.post(listen, headers)
        self.assertOverShare(refused, "Too many streams")
        body = refused.json()
        self.assertEqual((body["id"], body["error"]["code"]), (1, LIMIT_EXCEEDED))
        listening.disconnect()
        self.assertEqual(self.held(STREAM), 1)

    def test_sessions_share_makes_room_from_the_idle_then_refuses(self) -> None:
        first, second, third = (self.initialize() for _ in range(3))
        self.post(request("ping"), self.session(second))  # first is now the least recently used
        fourth = self.initialize()
        self.assertNotIn(first, self.server.sessions)
        self.assertEqual(self.post(request("ping"), self.session(first)).status, 404)
        self.assertEqual(self.held(SESSION), 3)
        # None idle: each has a call in flight.
        for session_id in (second, third, fourth):
            self.open("POST", self.session(session_id), call("test.hold"))
        refused = self.post(initialize_request())
        self.assertOverShare(refused, "Too many sessions: this client address holds 3 of at most 3")
        body = refused.json()
        self.assertEqual((body["id"], body["error"]["code"]), (0, LIMIT_EXCEEDED))
        self.assertNotIn("mcp-session-id", refused.headers)

    def test_a_failed_initialize_gives_its_place_back(self) -> None:
        bad = request("initialize", {"protocolVersion": 5, "capabilities": {}}, request_id=0)
        self.assertEqual(self.post(bad).json()["error"]["code"], -32602)
        self.assertEqual(self.held(SESSION), 0)
        self.initialize()
        self.assertEqual(self.held(SESSION), 1)
        self.server.sessions.stop()
        self.assertEqual(self.ledger.holdings(), {})

    def test_replay_buffers_are_bounded_per_caller(self) -> None:
        session_id = self.initialize()
        session = self.server.sessions.get(session_id)
        assert session is not None
        for n in range(20):
            session.push({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": n}})
        self.assertLessEqual(self.held(REPLAY), 600)
        stream = self.get_stream(session_id)
        delivered = [event.message["params"]["data"] for event in stream.response.events if event.data]
        # The first events fitted the share; those beyond it reach only a client reading then.
        self.assertEqual(delivered, list(range(len(delivered))))
        self.assertLess(len(delivered), 20)
        session.push({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": 99}})
        self.assertEqual(stream.response.events[-1].message["params"]["data"], 99)
        self.assertEqual(self.post(request("ping"), self.session(session_id)).status, 200)
        self.server.sessions.remove(session_id)
        self.assertEqual(self.held(REPLAY), 0)

    def test_ending_the_account_ends_its_streams_sessions_and_calls(self) -> None:
        session_id = self.initialize()
        stream = self.get_stream(session_id)
        listen = modern_request("subscriptions/listen", {"notifications": {"toolsListChanged": True}})
        listening = self.open("POST", modern_headers("subscriptions/listen"), listen)
        pending = self.open(
            "POST", modern_headers("tools/call", "test.hold"), modern_request("tools/call", {"name": "test.hold"})
        )
        self.ledger.end_accounts([self.ME], "the API key was revoked")
        self.assertTrue(stream.response.complete)
        self.assertTrue(listening.response.complete)
        self.assertTrue(self.tools.last.cancelled)
        self.assertNotIn(session_id, self.server.sessions)
        self.assertEqual(self.ledger.holdings(), {})
        del pending


class PostLimitTests(HTTPTestCase):
    """What a POST must look like before anything reads it."""

    def make_server(self) -> Server:
        return make_server(max_message_size=1024)

    def test_accept_without_json_or_event_stream(self) -> None:
        response = self.post(initialize_request(), accept="text/html")
        self.assertEqual(response.status, 406)
        self.assertEqual(len(self.server.sessions), 0)

    def test_wrong_content_type(self) -> None:
        response = self.post(initialize_request(), content_type="text/plain")
        self.assertEqual(response.status, 415)
        self.assertEqual(len(self.server.sessions), 0)

    def test_body_too_large(self) -> None:
        message = modern_request("tools/call", {"name": "test.echo", "arguments": {"text": "x" * 2000}})
        response = self.post(message, modern_headers("tools/call", "test.echo"))
        self.assertEqual(response.status, 413)

    def test_body_at_limit_is_served(self) -> None:
        message = modern_request("tools/call", {"name": "test.echo", "arguments": {"text": ""}})
        size = len(json.dumps(message))
        message["params"]["arguments"]["text"] = "x" * (1024 - size)
        response = self.post(message, modern_headers("tools/call", "test.echo"))
        self.assertEqual(response.status, 200)
        self.assertValid(MODERN, response.json(), "tools/call")


class NoCycleTests(HTTPTestCase):
    """An answered POST leaves no reference cycle: the request, its headers and its body are freed
    when it is answered. (The exchange held its reply's bound ``notify`` and the reply its
    exchange, so each request waited for the garbage collector, whose collections came every few
    dozen requests and lengthened the latency tail.)"""

    COUNT = 20

    def setUp(self) -> None:
        super().setUp()
        self.connection = HTTPConnection(self.server.site)

    def send(self, message: dict[str, Any], headers: Mapping[str, str]) -> None:
        """POST on the one keep-alive connection (its answer: ``self.connection.response``)."""
        self.connection.transport.clear()
        fields = {"Accept": BOTH, "Content-Type": "application/json", **headers}
        self.connection.send("POST", headers=fields, body=json.dumps(message).encode())

    @property
    def answer(self) -> HTTPResponse:
        return self.connection.response

    def cyclic_garbage(self, serve: Callable[[int], None]) -> int:
        """Objects only the collector could free after ``COUNT`` calls of ``serve`` (one first, to
        make what is made once)."""
        serve(0)
        gc.collect()
        if gc.isenabled():
            gc.disable()
            self.addCleanup(gc.enable)
        for i in range(1, self.COUNT + 1):
            serve(i)
        return gc.collect()

    def test_modern_answer(self) -> None:
        def serve(i: int) -> None:
            message = modern_request("tools/call", {"name": "test.echo", "arguments": {"text": "hi"}}, request_id=i)
            self.send(message, modern_headers("tools/call", "test.echo"))
            self.assertEqual(self.answer.json()["result"]["content"], [{"type": "text", "text": "hi"}])

        self.assertLess(self.cyclic_garbage(serve), self.COUNT)

    def test_legacy_answer(self) -> None:
        self.send(initialize_request(), {})
        session = {"Mcp-Session-Id": self.answer.headers["mcp-session-id"], "MCP-Protocol-Version": LATEST_LEGACY}
        self.send(notification("notifications/initialized"), session)
        self.assertEqual(self.answer.status, 202)

        def serve(i: int) -> None:
            self.send(call("test.echo", {"text": "hi"}, request_id=i + 1), session)
            self.assertEqual(self.answer.json()["result"]["content"], [{"type": "text", "text": "hi"}])

        self.assertLess(self.cyclic_garbage(serve), self.COUNT)

    def test_late_answer(self) -> None:
        """An answer decided after ``render`` returned (a tool in the thread pool, a store)."""

        def serve(i: int) -> None:
            message = modern_request("tools/call", {"name": "test.hold", "arguments": {}}, request_id=i)
            self.send(message, modern_headers("tools/call", "test.hold"))
            self.server.tools.calls.pop().finish("done")
            self.assertEqual(self.answer.json()["result"]["content"], [{"type": "text", "text": "done"}])

        self.assertLess(self.cyclic_garbage(serve), self.COUNT)

    def test_late_request_to_client_reaches_the_session(self) -> None:
        """After the answer, a request to the client still goes to the session's GET stream, as
        it did when the reply itself was notified (2025-11-25 transports §Sending Messages)."""
        self.send(initialize_request(), {})
        session_id = self.answer.headers["mcp-session-id"]
        session = {"Mcp-Session-Id": session_id, "MCP-Protocol-Version": LATEST_LEGACY}
        self.send(notification("notifications/initialized"), session)
        engine = self.server.resource.engine
        exchanges: list[Exchange] = []

        def handle_bytes(body: bytes, exchange: Exchange) -> Any:
            exchanges.append(exchange)
            return handle(body, exchange)

        handle = engine.handle_bytes
        self.patch(engine, "handle_bytes", handle_bytes)
        for answer_late in (False, True):
            if answer_late:
                self.send(call("test.hold", request_id=1), session)
                self.server.tools.last.finish("done")
            else:
                self.send(call("test.echo", {"text": "hi"}, request_id=1), session)
            self.assertEqual(self.answer.json()["id"], 1)
            pushed: list[dict[str, Any]] = []
            self.patch(self.server.sessions.get(session_id), "push", pushed.append)
            notify = exchanges[-1].notify
            assert notify is not None
            notify({"jsonrpc": "2.0", "method": "notifications/message", "params": {}})
            elicit = {"jsonrpc": "2.0", "id": "s1", "method": "elicitation/create", "params": {}}
            notify(elicit)
            self.assertEqual(pushed, [elicit])


# -- the resource tree ----------------------------------------------------------------------------


class SiteTests(HTTPTestCase):
    """`/` and `/mcp` are MCP, `/health` answers JSON, the rest is 404; the Origin guard is on."""

    def test_health(self) -> None:
        response = self.fetch("GET", url="http://localhost:8765/health")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], "application/json")
        body = response.json()
        self.assertEqual(body["status"], "healthy")
        self.assertEqual(body["tools_count"], 4)

    def test_unknown_path(self) -> None:
        self.assertEqual(self.fetch("GET", url="http://localhost:8765/nowhere").status, 404)

    def test_root_and_mcp_both_serve_mcp(self) -> None:
        for url in ("http://localhost:8765/", "http://localhost:8765/mcp"):
            response = self.post(modern_request("server/discover"), modern_headers("server/discover"), url=url)
            self.assertEqual(response.status, 200, url)
            self.assertValid(MODERN, response.json(), "server/discover")

    def test_foreign_origin_is_refused(self) -> None:
        headers = {"Origin": "https://evil.example", **modern_headers("server/discover")}
        response = self.post(modern_request("server/discover"), headers)
        self.assertEqual(response.status, 403)
        self.assertIn("Forbidden", response.json()["error"])


# -- event streams --------------------------------------------------------------------------------


class EventStreamTests(SynchronousTestCase):
    """`EventStream` keeps at most ``replay_limit`` events for resumption."""

    def test_no_replay_keeps_nothing(self) -> None:
        ledger = Ledger({REPLAY: Limit(per_account=10_000)})
        stream = EventStream("s1", replay_limit=0, ledger=ledger, account="k")
        reader = ComponentizedDummyRequest([])
        stream.attach(reader)
        stream.send(b'{"a":1}')
        stream.send(b'{"a":2}')
        self.assertEqual(b"".join(reader.written).count(b"data: {"), 2)
        reader.finish()  # the client goes away, and resumes
        resumed = ComponentizedDummyRequest([])
        stream.attach(resumed, after=0)
        self.assertEqual(resumed.written, [b""])
        self.assertEqual(ledger.held("k", REPLAY), 0)

    def test_replay_limit_keeps_the_newest(self) -> None:
        stream = EventStream("s1", replay_limit=1)
        stream.send(b'{"a":1}')
        stream.send(b'{"a":2}')
        resumed = ComponentizedDummyRequest([])
        stream.attach(resumed, after=0)
        self.assertEqual(resumed.written[1:], [b'id: s1.2\nevent: message\ndata: {"a":2}\n\n'])
