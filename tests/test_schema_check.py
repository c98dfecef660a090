"""Tests for tests.schema_check: the validator must really catch problems."""

from __future__ import annotations

import copy
import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.schema_check import (
    _index,
    _validator,
    assert_trace_valid,
    validate_message,
    validate_trace,
    versions,
)

LEGACY = "2025-11-25"
MODERN = "2026-07-28"

INITIALIZE_RESPONSE: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "result": {
        "protocolVersion": LEGACY,
        "capabilities": {"tools": {"listChanged": True}, "logging": {}},
        "serverInfo": {"name": "mcpd", "version": "0.1.0"},
        "instructions": "Test server.",
    },
}

# From the official examples: schema/2026-07-28/examples/.
CALL_TOOL_RESPONSE: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": "call-tool-example",
    "result": {
        "resultType": "complete",
        "content": [
            {
                "type": "text",
                "text": "Current weather in New York:\nTemperature: 72°F\nConditions: Partly cloudy",
            }
        ],
        "isError": False,
    },
}

LIST_TOOLS_RESPONSE: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": "list-tools-example",
    "result": {
        "resultType": "complete",
        "tools": [
            {
                "name": "get_weather",
                "title": "Weather Information Provider",
                "description": "Get current weather information for a location",
                "inputSchema": {
                    "type": "object",
                    "properties": {
                        "location": {
                            "type": "string",
                            "description": "City name or zip code",
                        }
                    },
                    "required": ["location"],
                },
                "icons": [
                    {
                        "src": "https://example.com/weather-icon.png",
                        "mimeType": "image/png",
                        "sizes": ["48x48"],
                    }
                ],
            }
        ],
        "nextCursor": "next-page-cursor",
        "ttlMs": 3600000,
        "cacheScope": "public",
    },
}

DISCOVER_RESPONSE: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": "discover-1",
    "result": {
        "resultType": "complete",
        "supportedVersions": [MODERN],
        "capabilities": {"tools": {}, "resources": {}},
        "_meta": {
            "io.modelcontextprotocol/serverInfo": {
                "name": "ExampleServer",
                "version": "1.0.0",
            }
        },
        "ttlMs": 3600000,
        "cacheScope": "public",
    },
}

PROGRESS: dict[str, Any] = {
    "jsonrpc": "2.0",
    "method": "notifications/progress",
    "params": {
        "progressToken": "oivaizmir",
        "progress": 50,
        "total": 100,
        "message": "Reticulating splines...",
    },
}

UNSUPPORTED_VERSION: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "error": {
        "code": -32022,
        "message": "Unsupported protocol version",
        "data": {"supported": [MODERN, LEGACY], "requested": "1900-01-01"},
    },
}

INPUT_REQUIRED: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 7,
    "result": {
        "resultType": "input_required",
        "requestState": "eyJwcm9ncmVzcyI6IjUwJSIsInN0YXRlIjoicHJvY2Vzc2luZyJ9",
    },
}


def _legacy_list_tools() -> dict[str, Any]:
    message = copy.deepcopy(LIST_TOOLS_RESPONSE)
    for key in ("resultType", "ttlMs", "cacheScope"):
        del message["result"][key]
    return message


class ValidateMessageTests(SynchronousTestCase):
    """validate_message picks the right definitions and reports real problems."""

    def test_initialize_result(self) -> None:
        """A valid InitializeResult passes in every handshake version."""
        for version in versions():
            if version != MODERN:
                self.assertEqual(validate_message(version, INITIALIZE_RESPONSE, "initialize"), [])

    def test_initialize_result_missing_server_info(self) -> None:
        """The specific result definition is applied, not only the envelope."""
        message = copy.deepcopy(INITIALIZE_RESPONSE)
        del message["result"]["serverInfo"]
        problems = validate_message(LEGACY, message, "initialize")
        self.assertTrue(problems)
        self.assertIn("InitializeResult", problems[0])
        self.assertIn("serverInfo", problems[0])
        self.assertEqual(validate_message(LEGACY, message), [])

    def test_list_tools_missing_tools(self) -> None:
        """A ListToolsResult without 'tools' fails in every version."""
        self.assertEqual(validate_message(LEGACY, _legacy_list_tools(), "tools/list"), [])
        self.assertEqual(validate_message(MODERN, LIST_TOOLS_RESPONSE, "tools/list"), [])
        for version, message in (
            (LEGACY, _legacy_list_tools()),
            (MODERN, LIST_TOOLS_RESPONSE),
        ):
            broken = copy.deepcopy(message)
            del broken["result"]["tools"]
            problems = validate_message(version, broken, "tools/list")
            self.assertTrue(any("ListToolsResult" in p and "'tools'" in p for p in problems))

    def test_modern_result_type(self) -> None:
        """A 2026-07-28 CallToolResult needs resultType; legacy ones do not."""
        self.assertEqual(validate_message(MODERN, CALL_TOOL_RESPONSE, "tools/call"), [])
        broken = copy.deepcopy(CALL_TOOL_RESPONSE)
        del broken["result"]["resultType"]
        problems = validate_message(MODERN, broken, "tools/call")
        self.assertTrue(any("resultType" in p for p in problems))
        self.assertTrue(validate_message(MODERN, broken))
        self.assertEqual(validate_message(LEGACY, broken, "tools/call"), [])

    def test_modern_result_type_value(self) -> None:
        """resultType must be one of the values the spec names."""
        broken = copy.deepcopy(CALL_TOOL_RESPONSE)
        broken["result"]["resultType"] = "done"
        self.assertTrue(validate_message(MODERN, broken, "tools/call"))

    def test_modern_list_needs_cache_fields(self) -> None:
        """2026-07-28 list results carry ttlMs and cacheScope."""
        broken = copy.deepcopy(LIST_TOOLS_RESPONSE)
        del broken["result"]["ttlMs"]
        self.assertTrue(validate_message(MODERN, broken, "tools/list"))

    def test_invalid_input_schema(self) -> None:
        """A tool whose inputSchema is not an object schema fails."""
        for bad in ("not a schema", {"type": "string"}, {"properties": {}}):
            for version, message in (
                (LEGACY, _legacy_list_tools()),
                (MODERN, LIST_TOOLS_RESPONSE),
            ):
                broken = copy.deepcopy(message)
                broken["result"]["tools"][0]["inputSchema"] = bad
                problems = validate_message(version, broken, "tools/list")
                self.assertTrue(any("inputSchema" in p for p in problems), (version, bad))

    def test_discover(self) -> None:
        """server/discover maps to DiscoverResult."""
        self.assertEqual(validate_message(MODERN, DISCOVER_RESPONSE, "server/discover"), [])
        broken = copy.deepcopy(DISCOVER_RESPONSE)
        del broken["result"]["supportedVersions"]
        problems = validate_message(MODERN, broken, "server/discover")
        self.assertTrue(any("DiscoverResult" in p for p in problems))

    def test_input_required(self) -> None:
        """input_required is checked against InputRequiredResult, where allowed."""
        self.assertEqual(validate_message(MODERN, INPUT_REQUIRED, "tools/call"), [])
        self.assertTrue(validate_message(MODERN, INPUT_REQUIRED, "tools/list"))
        empty = copy.deepcopy(INPUT_REQUIRED)
        del empty["result"]["requestState"]
        self.assertTrue(validate_message(MODERN, empty, "tools/call"))

    def test_ping(self) -> None:
        """ping has no PingResult: an empty result is right, a non-object wrong."""
        ok = {"jsonrpc": "2.0", "id": 3, "result": {}}
        self.assertEqual(validate_message(LEGACY, ok, "ping"), [])
        self.assertTrue(validate_message(LEGACY, {**ok, "result": []}, "ping"))

    def test_error_code_not_integer(self) -> None:
        """An error response whose code is not an integer fails in every version."""
        message = {
            "jsonrpc": "2.0",
            "id": 1,
            "error": {"code": "-32602", "message": "bad"},
        }
        for version in versions():
            problems = validate_message(version, message)
            self.assertTrue(any("code" in p for p in problems), version)
            valid = {**message, "error": {"code": -32602, "message": "bad"}}
            self.assertEqual(validate_message(version, valid), [], version)

    def test_specific_error_definition(self) -> None:
        """2026-07-28 errors with their own definition are checked by code."""
        self.assertEqual(validate_message(MODERN, UNSUPPORTED_VERSION), [])
        broken = copy.deepcopy(UNSUPPORTED_VERSION)
        del broken["error"]["data"]["supported"]
        problems = validate_message(MODERN, broken)
        self.assertTrue(any("UnsupportedProtocolVersionError" in p for p in problems))

    def test_progress_missing_token(self) -> None:
        """A progress notification without progressToken fails."""
        for version in versions():
            self.assertEqual(validate_message(version, PROGRESS), [], version)
            broken = copy.deepcopy(PROGRESS)
            del broken["params"]["progressToken"]
            problems = validate_message(version, broken)
            self.assertTrue(any("ProgressNotification" in p for p in problems), version)
            self.assertTrue(any("progressToken" in p for p in problems), version)

    def test_client_notification_from_server(self) -> None:
        """A server may not send a client-only notification."""
        message = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        self.assertTrue(validate_message(LEGACY, message))

    def test_unknown_method_envelope_only(self) -> None:
        """Unknown methods are checked against the envelope only."""
        note = {
            "jsonrpc": "2.0",
            "method": "notifications/mcpd/custom",
            "params": {"x": 1},
        }
        self.assertEqual(validate_message(LEGACY, note), [])
        self.assertTrue(validate_message(LEGACY, {**note, "jsonrpc": "1.0"}))
        result = {"jsonrpc": "2.0", "id": 1, "result": {"x": 1}}
        self.assertEqual(validate_message(LEGACY, result, "mcpd/custom"), [])

    def test_server_requests(self) -> None:
        """Server-to-client requests: checked in legacy, absent in 2026-07-28."""
        ping = {"jsonrpc": "2.0", "id": "s1", "method": "ping"}
        self.assertEqual(validate_message(LEGACY, ping), [])
        self.assertTrue(validate_message(MODERN, ping))
        sampling = {
            "jsonrpc": "2.0",
            "id": "s2",
            "method": "sampling/createMessage",
            "params": {},
        }
        self.assertTrue(validate_message(LEGACY, sampling))

    def test_unknown_version(self) -> None:
        """A version without a schema is a problem."""
        self.assertTrue(validate_message("1900-01-01", INITIALIZE_RESPONSE, "initialize"))

    def test_mapping_from_schemas(self) -> None:
        """The method-to-result mapping comes from the schemas."""
        for version in versions():
            results = _index(version).result_for_method
            self.assertEqual(results["tools/list"], "ListToolsResult")
            self.assertEqual(results["prompts/get"], "GetPromptResult")
        self.assertEqual(_index(MODERN).result_for_method["server/discover"], "DiscoverResult")
        self.assertNotIn("initialize", _index(MODERN).result_for_method)

    def test_validators_cached(self) -> None:
        """Validators are compiled once."""
        self.assertIs(_validator(LEGACY, "ListToolsResult"), _validator(LEGACY, "ListToolsResult"))


class TraceTests(SynchronousTestCase):
    """validate_trace and assert_trace_valid read mcpd trace files."""

    def write(self, *entries: dict[str, Any]) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(entry) + "\n" for entry in entries)
        return path

    def line(
        self,
        direction: str,
        message: Any,
        version: str | None = LEGACY,
        peer: str = "p1",
    ) -> dict[str, Any]:
        return {"dir": direction, "peer": peer, "version": version, "message": message}

    def test_valid_trace(self) -> None:
        """A well-formed exchange passes."""
        path = self.write(
            self.line(
                "in",
                {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
                None,
            ),
            self.line("out", INITIALIZE_RESPONSE),
            self.line("in", {"jsonrpc": "2.0", "method": "notifications/initialized"}),
            self.line(
                "in",
                {"jsonrpc": "2.0", "id": "list-tools-example", "method": "tools/list"},
            ),
            self.line("out", _legacy_list_tools()),
            self.line("in", {"jsonrpc": "2.0", "id": 9, "method": "nope"}, MODERN, "x1"),
            self.line(
                "out",
                {"jsonrpc": "2.0", "id": 9, "error": {"code": -32601, "message": "no"}},
                MODERN,
                "x1",
            ),
        )
        self.assertEqual(validate_trace(path), [])
        assert_trace_valid(self, path)

    def test_mismatched_pair(self) -> None:
        """A response that does not fit its request's method is reported with its line."""
        path = self.write(
            self.line(
                "in",
                {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
                None,
            ),
            self.line("out", INITIALIZE_RESPONSE),
            self.line("in", {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
            self.line("out", {**INITIALIZE_RESPONSE, "id": 2}),
        )
        problems = validate_trace(path)
        self.assertEqual(len(problems), 1, problems)
        self.assertTrue(problems[0].startswith("line 4, peer 'p1', method tools/list: ListToolsResult"))
        self.assertRaises(self.failureException, assert_trace_valid, self, path)

    def test_peers_and_batches(self) -> None:
        """Ids are tracked per peer and inside batches; batch elements are checked."""
        v = "2025-03-26"
        batch_in = [
            {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            {"jsonrpc": "2.0", "id": 2, "method": "ping"},
        ]
        batch_out = [
            {"jsonrpc": "2.0", "id": 2, "result": {}},
            {"jsonrpc": "2.0", "id": 1, "result": {}},
        ]
        path = self.write(
            self.line("in", batch_in, v, "a"),
            self.line("in", {"jsonrpc": "2.0", "id": 1, "method": "ping"}, v, "b"),
            self.line("out", {"jsonrpc": "2.0", "id": 1, "result": {}}, v, "b"),
            self.line("out", batch_out, v, "a"),
        )
        problems = validate_trace(path)
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("line 4, peer 'a', method tools/list:", problems[0])

    def test_batch_outside_2025_03_26(self) -> None:
        """Only 2025-03-26 has batches."""
        path = self.write(
            self.line("in", [{"jsonrpc": "2.0", "id": 1, "method": "ping"}]),
            self.line("out", [{"jsonrpc": "2.0", "id": 1, "result": {}}]),
        )
        self.assertEqual(len(validate_trace(path)), 1)

    def test_unknown_id(self) -> None:
        """A result for an id the peer never sent (or answered twice) is reported."""
        path = self.write(
            self.line("in", {"jsonrpc": "2.0", "id": 1, "method": "ping"}),
            self.line("out", {"jsonrpc": "2.0", "id": 1, "result": {}}),
            self.line("out", {"jsonrpc": "2.0", "id": 1, "result": {}}),
        )
        problems = validate_trace(path)
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("line 3", problems[0])

    def test_null_version(self) -> None:
        """Null version: errors are checked against 2025-11-25, anything else is a problem."""
        path = self.write(
            self.line(
                "out",
                {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}},
                None,
            ),
            self.line(
                "out",
                {"jsonrpc": "2.0", "error": {"code": "x", "message": "Parse error"}},
                None,
            ),
            self.line("out", PROGRESS, None),
        )
        problems = validate_trace(path)
        self.assertEqual([p.split(",")[0] for p in problems], ["line 2", "line 3"], problems)

    def test_malformed_lines(self) -> None:
        """Lines that are not trace entries are reported."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("not json\n")
            f.write(json.dumps({"dir": "out", "message": {}}) + "\n")
            f.write(json.dumps(self.line("out", PROGRESS, "1900-01-01")) + "\n")
        problems = validate_trace(path)
        self.assertEqual(
            [p.split(",")[0].split(":")[0] for p in problems],
            ["line 1", "line 2", "line 3"],
        )

    def test_no_out_line(self) -> None:
        """A trace with nothing sent makes assert_trace_valid fail."""
        path = self.write(self.line("in", {"jsonrpc": "2.0", "method": "notifications/initialized"}))
        self.assertEqual(validate_trace(path), [])
        self.assertRaises(self.failureException, assert_trace_valid, self, path)

    def test_missing_file(self) -> None:
        """A missing trace file is a problem."""
        path = self.mktemp()
        self.assertTrue(validate_trace(path))
        self.assertRaises(self.failureException, assert_trace_valid, self, path)
