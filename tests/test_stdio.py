"""Tests for `mcpd.transport.stdio`: newline-delimited JSON-RPC on a `StringTransport`."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.testing import StringTransport
from twisted.python import threadable
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mcpd.protocol.engine import Engine
from mcpd.tools import ToolRegistry
from mcpd.transport.stdio import StdioProtocol
from tests.http_harness import (
    LATEST_LEGACY,
    MODERN,
    DrivenTools,
    call,
    initialize_request,
    modern_request,
    notification,
    request,
)
from tests.schema_check import validate_message

LIMIT = 1024


class StdioTests(SynchronousTestCase):
    """One client on a pair of pipes: a message per line each way."""

    def setUp(self) -> None:
        # Tools report progress straight away only on the reactor thread (`ToolContext.progress`).
        self.patch(threadable, "ioThread", threadable.getThreadID())
        self.tools = DrivenTools()
        self.closed: list[bool] = []
        self.protocol = StdioProtocol(
            Engine(ToolRegistry([self.tools.pack])), LIMIT, on_close=lambda: self.closed.append(True)
        )
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def feed(self, *chunks: bytes | dict[str, Any]) -> None:
        """Write to the server's stdin: messages as one line each, bytes as they are."""
        for chunk in chunks:
            data = chunk if isinstance(chunk, bytes) else json.dumps(chunk).encode() + b"\n"
            self.protocol.dataReceived(data)

    def replies(self) -> list[Any]:
        """Everything the server wrote since the last call, one message per line."""
        output = self.transport.value()
        self.transport.clear()
        if not output:
            return []
        self.assertTrue(output.endswith(b"\n"), output)
        return [json.loads(line) for line in output[:-1].split(b"\n")]

    def reply(self, version: str, request_method: str | None = None) -> Any:
        """The one message the server wrote, valid under ``version``."""
        [message] = self.replies()
        return self.assertValid(version, message, request_method)

    def assertValid(self, version: str, message: Any, request_method: str | None = None) -> Any:
        self.assertEqual(validate_message(version, message, request_method), [], message)
        return message

    def handshake(self, version: str = LATEST_LEGACY) -> None:
        self.feed(initialize_request(version))
        self.assertEqual(self.reply(version, "initialize")["result"]["protocolVersion"], version)
        self.feed(notification("notifications/initialized"))
        self.assertEqual(self.replies(), [])

    def test_one_message_per_line_each_way(self) -> None:
        self.handshake()
        lines = [call("test.echo", {"text": "two\nlines"}, request_id=1), request("ping", request_id=2)]
        self.feed(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
        output = self.transport.value()
        self.assertEqual(output.count(b"\n"), 2)
        first, second = self.replies()
        self.assertEqual(
            self.assertValid(LATEST_LEGACY, first, "tools/call")["result"]["content"][0]["text"], "two\nlines"
        )
        self.assertEqual(self.assertValid(LATEST_LEGACY, second, "ping"), {"jsonrpc": "2.0", "id": 2, "result": {}})

    def test_lines_split_across_chunks(self) -> None:
        line = json.dumps(initialize_request()).encode() + b"\n"
        self.feed(line[:10])
        self.assertEqual(self.replies(), [])
        self.feed(line[10:])
        self.assertEqual(self.reply(LATEST_LEGACY, "initialize")["id"], 0)

    def test_crlf_and_blank_lines(self) -> None:
        self.feed(b"\n\r\n   \n" + json.dumps(initialize_request()).encode() + b"\r\n\r\n")
        self.assertEqual(self.reply(LATEST_LEGACY, "initialize")["id"], 0)

    def test_parse_error_then_next_line(self) -> None:
        self.feed(b'{"jsonrpc": "2.0", "id": 1,\n', initialize_request())
        error, answer = self.replies()
        self.assertEqual(self.assertValid(LATEST_LEGACY, error)["error"]["code"], -32700)
        self.assertEqual(self.assertValid(LATEST_LEGACY, answer, "initialize")["id"], 0)

    def test_oversized_line(self) -> None:
        self.feed(b'"' + b"x" * (LIMIT * 2) + b'"\n', initialize_request())
        error, answer = self.replies()
        self.assertEqual(self.assertValid(LATEST_LEGACY, error)["error"]["code"], -32600)
        self.assertEqual(self.assertValid(LATEST_LEGACY, answer, "initialize")["id"], 0)

    def test_oversized_line_in_chunks(self) -> None:
        self.feed(b'"' + b"x" * LIMIT)
        self.feed(b"x" * LIMIT)
        self.feed(b"x" * LIMIT)
        error = self.reply(LATEST_LEGACY)
        self.assertEqual(error["error"]["code"], -32600)
        self.feed(b'x"\n' + json.dumps(initialize_request()).encode() + b"\n")
        self.assertEqual(self.reply(LATEST_LEGACY, "initialize")["id"], 0)

    def test_oversized_line_ending_in_the_next_chunk(self) -> None:
        self.feed(b'"' + b"x" * (LIMIT - 10))
        self.assertEqual(self.replies(), [])
        self.feed(b"x" * 20 + b'"\n')
        self.assertEqual(self.reply(LATEST_LEGACY)["error"]["code"], -32600)
        self.feed(initialize_request())
        self.assertEqual(self.reply(LATEST_LEGACY, "initialize")["id"], 0)

    def test_legacy_handshake_then_tools_call(self) -> None:
        self.handshake("2025-06-18")
        self.feed(request("tools/list", request_id=1))
        names = [tool["name"] for tool in self.reply("2025-06-18", "tools/list")["result"]["tools"]]
        self.assertEqual(names, ["test.echo", "test.hold", "test.progress", "test.region"])
        self.feed(call("test.echo", {"text": "hello"}, request_id=2))
        result = self.reply("2025-06-18", "tools/call")["result"]
        self.assertEqual(result, {"content": [{"type": "text", "text": "hello"}]})

    def test_modern_request(self) -> None:
        self.feed(modern_request("tools/call", {"name": "test.echo", "arguments": {"text": "now"}}, request_id="m1"))
        answer = self.reply(MODERN, "tools/call")
        self.assertEqual(answer["id"], "m1")
        self.assertEqual(answer["result"]["resultType"], "complete")
        self.assertEqual(answer["result"]["content"], [{"type": "text", "text": "now"}])

    def test_progress_lines_before_result(self) -> None:
        self.handshake()
        self.feed(call("test.progress", request_id=4, progressToken="p"))
        first, second, result = self.replies()
        for note, value in ((first, 1), (second, 2)):
            self.assertValid(LATEST_LEGACY, note)
            self.assertEqual(note["method"], "notifications/progress")
            self.assertEqual((note["params"]["progressToken"], note["params"]["progress"]), ("p", value))
        self.assertEqual(self.assertValid(LATEST_LEGACY, result, "tools/call")["id"], 4)

    def test_progress_of_a_pending_call(self) -> None:
        self.feed(modern_request("tools/call", {"name": "test.hold"}, request_id=5, progressToken=1))
        self.tools.last.progress(3)
        note = self.reply(MODERN)
        self.assertEqual(note["params"], {"progressToken": 1, "progress": 3, "total": 10})
        self.tools.last.finish("finally")
        self.assertEqual(self.reply(MODERN, "tools/call")["result"]["content"][0]["text"], "finally")

    def test_cancelled_call_gets_no_response(self) -> None:
        self.handshake()
        self.feed(call("test.hold", request_id=6))
        self.assertFalse(self.tools.last.cancelled)
        self.feed(notification("notifications/cancelled", {"requestId": 6, "reason": "changed my mind"}))
        self.assertTrue(self.tools.last.cancelled)
        self.assertEqual(self.replies(), [])
        self.feed(request("ping", request_id=7))
        self.assertEqual(self.reply(LATEST_LEGACY, "ping")["id"], 7)

    def test_connection_lost(self) -> None:
        self.handshake()
        self.feed(call("test.hold", request_id=8))
        self.protocol.connectionLost(Failure(ConnectionDone("stdin closed")))
        self.assertEqual(self.closed, [True])
        self.assertTrue(self.tools.last.cancelled)
        self.assertEqual(self.replies(), [])

    def test_end_of_input_flushes_answers_before_closing(self) -> None:
        # StandardIO drops unflushed output when stdin ends, unless the protocol half-closes.
        self.assertTrue(IHalfCloseableProtocol.providedBy(self.protocol))
        self.handshake()
        self.feed(call("test.hold", request_id=9), request("ping", request_id=10))
        self.protocol.readConnectionLost()
        self.assertTrue(self.tools.last.cancelled)
        self.assertTrue(self.transport.disconnecting, "stdout is closed after what was written is flushed")
        self.assertEqual(self.closed, [])
        self.assertEqual(self.reply(LATEST_LEGACY, "ping")["id"], 10)
        self.protocol.connectionLost(Failure(ConnectionDone("stdout flushed and closed")))
        self.assertEqual(self.closed, [True])

    def test_end_of_input_ends_an_unterminated_last_message(self) -> None:
        self.handshake()
        self.feed(json.dumps(request("ping", request_id=11)).encode())
        self.assertEqual(self.replies(), [])
        self.protocol.readConnectionLost()
        self.assertEqual(self.reply(LATEST_LEGACY, "ping")["id"], 11)

    def test_end_of_input_in_an_oversized_line_answers_nothing_more(self) -> None:
        self.handshake()
        self.feed(b"{" + b" " * (LIMIT + 1))
        self.assertEqual(self.reply(LATEST_LEGACY)["error"]["code"], -32600)
        self.protocol.readConnectionLost()
        self.assertEqual(self.replies(), [])

    def test_end_of_input_after_stdout_closed(self) -> None:
        self.protocol.writeConnectionLost()
        self.assertEqual(self.closed, [])
        self.protocol.readConnectionLost()
        self.assertEqual(self.closed, [True])
