"""Tests for `mcpd.protocol.codec`: strict JSON in, valid JSON out, on every transport.

`DecodeTests` and `EncodeTests` run in memory; `WireTests` sends the same hostile inputs to a
real daemon over Streamable HTTP (both eras), /sse, /ws and stdio, and reads every answer with
a strict reader: each must be valid UTF-8 JSON of the right shape, and no input may cost the
daemon a traceback or a critical log line.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import datetime
import decimal
import enum
import http.client
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from mcpd.protocol import errors
from mcpd.protocol.codec import MAX_DEPTH, decode, encode
from mcpd.protocol.errors import ParseError
from mcpd.tools.jsontext import JSONText, write_json, write_json_bytes
from tests.clients import RawSSE
from tests.daemon import MCPD, MODERN, DaemonTestCase, StdioProcess

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from wsclient import WSClient  # noqa: E402

WIRE_PACK = "tests.wire_pack"


def strict(data: bytes) -> Any:
    """Read what mcpd wrote as a strict reader would: UTF-8, no NaN or Infinity."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in {data[:200]!r}")

    return json.loads(data.decode("utf-8"), parse_constant=refuse)


def nested(depth: int) -> bytes:
    """A request whose arguments nest ``depth`` levels below the message itself."""
    inner = "[" * (depth - 3) + "]" * (depth - 3)
    head = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"wire.echo","arguments":{"v":'
    return head + inner.encode() + b"}}}"


# Hostile inputs, each a whole request (or, as the first item says, where it goes), and the
# words the parse error must use.
HOSTILE: list[tuple[str, bytes, str]] = [
    (
        "NaN",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"wire.echo","arguments":{"v":NaN}}}',
        "NaN",
    ),
    (
        "Infinity",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"wire.echo","arguments":{"v":Infinity}}}',
        "Infinity",
    ),
    (
        "-Infinity",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"wire.echo","arguments":{"v":-Infinity}}}',
        "-Infinity",
    ),
    (
        "1e999999",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"wire.echo","arguments":{"v":1e999999}}}',
        "too large",
    ),
    ("lone surrogate id", b'{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}', "surrogate"),
    (
        "lone surrogate argument",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"wire.echo","arguments":{"v":"a\\udc00"}}}',
        "surrogate",
    ),
    (
        "lone surrogate name",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"wire.echo","arguments":{"\\ud800":1}}}',
        "surrogate",
    ),
    ("encoded surrogate", b'{"jsonrpc":"2.0","id":"\xed\xa0\x80","method":"ping"}', "UTF-8"),
    ("duplicate names", b'{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/list"}', "twice"),
    ("deep nesting", nested(MAX_DEPTH + 1), "deeper"),
    ("very deep nesting", b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"v":' + b"[" * 100_000 + b"}}", "deeper"),
    ("huge integer", b'{"jsonrpc":"2.0","id":' + b"9" * 5000 + b',"method":"ping"}', "digits"),
]


def _strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({name for name, _ in pairs}) != len(pairs):
        raise ValueError("duplicate")
    return dict(pairs)


def _written(tree: Any, ascii_only: bool) -> str:
    """``tree`` as JSON text, a list of (name, value) pairs written as an object."""
    if isinstance(tree, list) and tree and all(isinstance(item, tuple) for item in tree):
        members = (
            json.dumps(name, ensure_ascii=ascii_only) + ":" + _written(value, ascii_only) for name, value in tree
        )
        return "{" + ",".join(members) + "}"
    if isinstance(tree, list):
        return "[" + ",".join(_written(item, ascii_only) for item in tree) + "]"
    return json.dumps(tree, ensure_ascii=ascii_only)


_trees = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet='ab:\\"é\n\u2028'),
    lambda children: (
        st.lists(children, max_size=4) | st.lists(st.tuples(st.text(alphabet="ab:é", max_size=2), children), max_size=4)
    ),
    max_leaves=20,
)


class DecodeTests(SynchronousTestCase):
    """RFC 8259 and I-JSON (RFC 7493) strictness, and what is still accepted."""

    def assertParseError(self, data: bytes | str, words: str) -> None:
        with self.assertRaises(ParseError) as raised:
            decode(data)
        self.assertEqual(raised.exception.code, errors.PARSE_ERROR)
        self.assertIn(words, raised.exception.message)

    def test_hostile_inputs(self) -> None:
        for name, data, words in HOSTILE:
            with self.subTest(name):
                self.assertParseError(data, words)

    def test_not_json_constants_anywhere(self) -> None:
        for text in ("NaN", "[Infinity]", '{"a":-Infinity}', "1E400", "-1e309"):
            with self.subTest(text):
                self.assertRaises(ParseError, decode, text.encode())

    def test_surrogates(self) -> None:
        # A pair is one character; an escaped backslash before "ud800" is no escape at all.
        self.assertEqual(decode(b'"\\ud83d\\ude00"'), "\U0001f600")
        self.assertEqual(decode(b'"\\\\ud800"'), "\\ud800")
        for text in (b'"\\udc00\\ud800"', b'"\\ud800x"', b'"\\uDBFF"', b'["ok","\\uDFFF"]'):
            with self.subTest(text):
                self.assertParseError(text, "surrogate")
        # A str (a WebSocket frame) holding a surrogate itself.
        self.assertParseError('"\ud800"', "surrogate")

    def test_bytes_must_be_utf8(self) -> None:
        self.assertParseError(b'"caf\xe9"', "UTF-8")
        self.assertParseError(b"\xef\xbb\xbf{}", "byte order mark")
        self.assertEqual(decode('"café"'.encode()), "café")

    def test_numbers_still_accepted(self) -> None:
        self.assertEqual(
            decode(b"[1e308, 1e-999999, -0.0, 12345678901234567890123]"), [1e308, 0.0, -0.0, 12345678901234567890123]
        )
        self.assertEqual(decode(b"9" * 4300), int("9" * 4300))

    def test_depth(self) -> None:
        self.assertEqual(decode(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH), decode(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH))
        self.assertParseError(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "deeper")
        self.assertEqual(decode(nested(MAX_DEPTH))["id"], 1)
        # Objects count as much as arrays, alone or mixed with them.
        self.assertParseError(b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1), "deeper")
        half = (MAX_DEPTH + 2) // 2
        self.assertParseError(b'[{"a":' * half + b"1" + b"}]" * half, "deeper")
        value = decode(b'{"a":' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH)
        for _ in range(MAX_DEPTH):
            value = value["a"]
        self.assertEqual(value, 1)
        # Many brackets but shallow, and brackets inside strings: accepted.
        wide = json.dumps([[{"a": [1]}] for _ in range(200)]).encode()
        self.assertEqual(len(decode(wide)), 200)
        self.assertEqual(decode(json.dumps("[" * 500).encode()), "[" * 500)

    def test_duplicates_nested(self) -> None:
        self.assertParseError(b'{"params":{"name":"a","name":"b"}}', "'name' appears twice")
        self.assertEqual(decode(b'[{"a":1},{"a":2}]'), [{"a": 1}, {"a": 2}])

    def test_duplicates_however_written(self) -> None:
        # Plain texts are checked for duplicates by counting colons (mcpd.protocol.codec._quick):
        # the cases that could hide one from that count. Colons in the strings of the member kept
        # or lost, an escaped colon making up for the lost member's, whitespace, equal values, a
        # lost member holding members of its own, a duplicate deep in an array, non-ASCII names.
        for text in (
            b'{"a":"x","a":"y:z"}',
            b'{"a":"x:y","a":"z"}',
            b'{"a":1,"a":2,"b":"\\u003a"}',
            b'{"a":1,"a":2,"\\u003A":0}',
            b'{ "a" : 1 ,\n "a" : 1 }',
            b'{"a":{"b":1,"c":2},"a":3}',
            b'[1,[{"x":[{"k":"v","k":"v"}]}]]',
            '{"é":1,"é":2}'.encode(),
            b'{"a":1,"\\u0061":2}',
        ):
            with self.subTest(text):
                self.assertParseError(text, "appears twice")
        self.assertEqual(decode(b'{"a":"\\u003a","b":1}'), {"a": ":", "b": 1})
        self.assertEqual(decode(b'{"a:b":"c:d","e":[{"f":":"}]}'), {"a:b": "c:d", "e": [{"f": ":"}]})

    def test_long_integers_stay_integers(self) -> None:
        # orjson, which reads plain texts, makes an integer past 64 bits a float.
        for number in (2**63, -(2**63) - 1, 2**64, 10**30, -(10**25)):
            with self.subTest(number):
                self.assertEqual(decode(b'{"id":%d}' % number), {"id": number})
                self.assertIs(type(decode(b"[%d]" % number)[0]), int)

    # A loaded CI machine must not fail it for being slow to make examples.
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_trees, st.booleans())
    def test_read_as_the_json_module_reads(self, tree: Any, ascii_only: bool) -> None:
        # Objects are lists of (name, value) pairs, written as they are, duplicates and all; what
        # decode makes of the text is what the json module makes of it with a duplicate check.
        text = _written(tree, ascii_only)
        try:
            expected = json.loads(text, object_pairs_hook=_strict_pairs)
        except ValueError:
            self.assertParseError(text.encode(), "appears twice")
        else:
            self.assertEqual(repr(decode(text.encode())), repr(expected))
            self.assertEqual(repr(decode(text)), repr(expected))

    def test_syntax_errors_say_where(self) -> None:
        self.assertParseError(b'{"a":', "char 5")


class EncodeTests(SynchronousTestCase):
    """`encode` writes valid UTF-8 JSON whatever it is given, and never raises."""

    def test_compact_utf8_one_line(self) -> None:
        data = encode({"jsonrpc": "2.0", "id": 1, "result": {"text": "é\n\u2028😀"}})
        self.assertEqual(data, '{"jsonrpc":"2.0","id":1,"result":{"text":"é\\n\u2028😀"}}'.encode())
        self.assertNotIn(b"\n", data)

    def test_nan_in_a_response_is_an_internal_error_for_its_id(self) -> None:
        data = encode({"jsonrpc": "2.0", "id": 7, "result": {"value": float("nan")}})
        answer = strict(data)
        self.assertEqual(answer["id"], 7)
        self.assertEqual(answer["error"]["code"], errors.INTERNAL_ERROR)
        self.assertIn("JSON cannot carry", answer["error"]["message"])

    def test_other_types_in_a_response(self) -> None:
        loop: list[Any] = []
        loop.append(loop)
        for value in ({1, 2}, b"bytes", loop, object()):
            with self.subTest(repr(value)[:20]):
                answer = strict(encode({"jsonrpc": "2.0", "id": "a", "result": {"v": value}}))
                self.assertEqual(answer["error"]["code"], errors.INTERNAL_ERROR)

    def test_nan_in_a_notification_becomes_null(self) -> None:
        note = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": [float("inf"), 1.5, {2}]}}
        self.assertEqual(strict(encode(note))["params"]["data"], [None, 1.5, "{2}"])

    def test_lone_surrogates_become_replacement_characters(self) -> None:
        data = encode({"jsonrpc": "2.0", "id": 1, "result": {"name\udc80": "report-\udcff.txt"}})
        self.assertEqual(strict(data)["result"], {"name\ufffd": "report-\ufffd.txt"})
        # Both at once: a notification with NaN and a lone surrogate.
        both = encode({"jsonrpc": "2.0", "method": "x", "params": {"a": float("nan"), "b": "\ud800"}})
        self.assertEqual(strict(both)["params"], {"a": None, "b": "\ufffd"})

    def test_deep_and_cyclic(self) -> None:
        deep: list[Any] = []
        node = deep
        for _ in range(5000):
            node.append([])
            node = node[0]
        self.assertEqual(strict(encode({"jsonrpc": "2.0", "id": 1, "result": {"v": deep}}))["error"]["code"], -32603)
        cyclic: dict[str, Any] = {}
        cyclic["self"] = cyclic
        self.assertEqual(strict(encode({"jsonrpc": "2.0", "method": "x", "params": cyclic}))["params"], {"self": None})

    def test_round_trip(self) -> None:
        message = {"jsonrpc": "2.0", "id": 2**70, "result": {"t": "\U0001f600 \x00 \\ud800", "n": [-0.5, 1e308]}}
        self.assertEqual(decode(encode(message)), message)

    def answer(self, structured: Any, text: Any) -> dict[str, Any]:
        result = {"content": [{"type": "text", "text": text}], "structuredContent": structured, "_meta": {"m": 1}}
        return {"jsonrpc": "2.0", "id": 3, "result": result}

    def test_structured_content_is_written_once(self) -> None:
        """A tool's structured result is written from its text copy, not encoded again: the bytes
        are the same as encoding both, and a value the encoder would refuse is never looked at."""
        from mcpd.tools.api import Tool, call_result

        tool = Tool(
            name="t",
            description="d",
            input_schema={"type": "object"},
            output_schema={"type": "object"},
            handler=lambda ctx, arguments: None,
        )
        value = {"tasks": [{"title": 'é "quoted" \u2028', "n": 1.5, "none": None}] * 3}
        result = call_result(tool, value)
        message = {"jsonrpc": "2.0", "id": 3, "result": result}
        data = encode(message)
        self.assertEqual(data, json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode())
        self.assertEqual(strict(data)["result"]["structuredContent"], value)
        self.assertEqual(json.loads(result["content"][0]["text"]), value)
        # Swap the value for one JSON cannot carry: only a second encoding would notice it.
        text = result["content"][0]["text"]
        unwritable = {"v": object()}
        text.value = unwritable
        written = strict(encode(self.answer(unwritable, text)))
        self.assertEqual(written["result"]["structuredContent"], value)

    def test_structured_content_without_its_text_is_encoded(self) -> None:
        """Any other text (a plain string, a text of another value, the placeholder itself in the
        message) leaves the encoding as it was."""
        from mcpd.protocol.codec import _PLACE
        from mcpd.tools.api import JSONText

        value = {"a": [1, 2]}
        other = JSONText('{"a":[1]}')
        other.value = {"a": [1]}
        for text in ('{"a":[1,2]}', other):
            with self.subTest(text=text):
                message = self.answer(value, text)
                self.assertEqual(strict(encode(message))["result"]["structuredContent"], value)
        sly = JSONText('{"a":[1,2]}')
        sly.value = value
        message = self.answer(value, sly)
        message["result"]["_meta"] = {"m": _PLACE}
        self.assertEqual(strict(encode(message))["result"]["_meta"], {"m": _PLACE})
        self.assertEqual(strict(encode(message))["result"]["structuredContent"], value)


class _Text(str):
    """A str that prints as something else: json writes its characters."""

    def __str__(self) -> str:
        return "other"


class _Number(int):
    def __repr__(self) -> str:
        return "other"


class _Ratio(float):
    def __repr__(self) -> str:
        return "other"


class _Items(dict):  # type: ignore[type-arg]
    """A dict whose items() json reads (as PyMapping_Items does) and orjson would not."""

    def items(self) -> Any:
        return [("swapped", True)]


class _Row(list):  # type: ignore[type-arg]
    pass


class _Colour(enum.Enum):
    RED = 1


class _Size(enum.IntEnum):
    BIG = 2


class _Mode(enum.StrEnum):
    FAST = "fast"


@dataclasses.dataclass
class _Point:
    x: int = 1


def _outcome(write: Any, value: Any) -> tuple[str, Any]:
    try:
        return "bytes", write(value)
    except Exception as e:
        return "raises", type(e)


def _slow(value: Any) -> bytes:
    return write_json(value).encode("utf-8")


_SUBCLASSED = st.sampled_from(
    [
        _Text("text"),
        _Number(7),
        _Ratio(0.5),
        _Items(a=1),
        _Row([1]),
        collections.OrderedDict(a=1),
        _Colour.RED,
        _Size.BIG,
        _Mode.FAST,
        uuid.UUID(int=5),
        _Point(),
        datetime.datetime(2026, 11, 30, 12, 0),
        datetime.date(2026, 11, 30),
        decimal.Decimal("1.5"),
        orjson.Fragment(b"[1]"),
        b"bytes",
        {1, 2},
        1j,
        object(),
    ]
)
_writable = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**80)
    | st.integers(min_value=-(2**80), max_value=-(2**62))
    | st.floats()
    | st.floats(min_value=-1e-3, max_value=1e-3)
    | st.floats(min_value=1e14, max_value=1e18)
    | st.text()
    | st.text(alphabet='\x00\x1f\x7f"\\\u2028\ud800\udfffé😀a')
    | _SUBCLASSED,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=3), children, max_size=4)
        | st.dictionaries(
            st.one_of(
                st.integers(), st.floats(), st.booleans(), st.none(), st.text(alphabet="\ud800a"), st.just(_Text("k"))
            ),
            children,
            max_size=3,
        )
    ),
    max_leaves=12,
)


class WriterTests(SynchronousTestCase):
    """`write_json_bytes` (orjson for plain values) writes exactly what the json module writes,
    and raises what it raises, for every value: the bytes on the wire did not change."""

    # A loaded CI machine must not fail it for being slow to make examples.
    @settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_writable)
    def test_same_as_the_json_module(self, value: Any) -> None:
        for wrapped in (value, [value], {"v": value, "w": [value, (value,)]}):
            self.assertEqual(_outcome(write_json_bytes, wrapped), _outcome(_slow, wrapped))

    def test_what_orjson_would_write_otherwise(self) -> None:
        """Values orjson writes otherwise than json (or writes where json refuses) each take
        the json module's path; the plain ones orjson's."""
        deep: list[Any] = []
        node = deep
        for _ in range(300):  # past orjson's 254 levels, within json's
            node.append([])
            node = node[0]
        cyclic: list[Any] = []
        cyclic.append(cyclic)
        cases = [
            1e-05,
            1e16,
            float("nan"),
            float("inf"),
            2**64,
            -(2**63) - 1,
            {1: "a"},
            {None: 1, True: 2, 1.5: 3},
            {_Text("k"): 1},
            "\ud800",
            {"\udc00": 1},
            deep,
            cyclic,
        ]
        for value in cases:
            with self.subTest(repr(value)[:40]):
                self.assertEqual(_outcome(write_json_bytes, [value]), _outcome(_slow, [value]))
        jsontext = JSONText('{"a":1}')
        jsontext.value = {"a": 1}
        plain = {"id": 2**63 - 1, "t": ["é\u2028\x00", True, None, (1, -(2**63))], "j": jsontext}
        self.assertEqual(write_json_bytes(plain), _slow(plain))
        self.assertEqual(write_json_bytes(plain), orjson.dumps(plain))


# -- over real sockets ---------------------------------------------------------------------------

LEGACY = "2025-11-25"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": "init",
    "method": "initialize",
    "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "wire", "version": "1"}},
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
MODERN_META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
# Frames that are not UTF-8 never reach MCP over a WebSocket: the frame layer closes with 1007.
NOT_UTF8 = {"encoded surrogate"}


def request(request_id: Any, method: str, params: dict[str, Any] | None = None, modern: bool = False) -> bytes:
    """A request as bytes, with the 2026-07-28 envelope when ``modern``."""
    params = dict(params or {})
    if modern:
        params["_meta"] = MODERN_META
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params:
        message["params"] = params
    return json.dumps(message).encode()


class Wire:
    """One client of one transport: raw messages in, each answer's status and raw bytes out."""

    name = ""
    modern = False

    def exchange(self, data: bytes) -> tuple[int, bytes]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class HTTPWire(Wire):
    """Streamable HTTP: stateless 2026-07-28 POSTs, or a 2025-03-26 session."""

    def __init__(self, port: int, modern: bool) -> None:
        self.port = port
        self.modern = modern
        self.name = "http-modern" if modern else "http-legacy"
        self.headers: dict[str, str] = {}
        if not modern:
            status, _, _ = self._post(json.dumps(INITIALIZE).encode())
            assert status == 200, status
            self.exchange(json.dumps(INITIALIZED).encode())

    def _post(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        headers.update(self.headers)
        if self.modern:
            headers.update(_routing_headers(data))
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("POST", "/mcp", data, headers)
            response = connection.getresponse()
            head = {k.lower(): v for k, v in response.getheaders()}
            if "mcp-session-id" in head:
                self.headers = {"Mcp-Session-Id": head["mcp-session-id"], "MCP-Protocol-Version": LEGACY}
            return response.status, head, response.read()
        finally:
            connection.close()

    def exchange(self, data: bytes) -> tuple[int, bytes]:
        status, head, body = self._post(data)
        if body:
            assert head["content-type"] == "application/json", (status, head, body[:200])
        return status, body


def _routing_headers(data: bytes) -> dict[str, str]:
    """2026-07-28 transports §Streamable HTTP: the routing headers mirroring the body."""
    headers = {"MCP-Protocol-Version": MODERN}
    try:
        message = json.loads(data)
    except (ValueError, RecursionError):
        return {**headers, "Mcp-Method": "tools/call"}
    if isinstance(message, dict) and isinstance(message.get("method"), str):
        headers["Mcp-Method"] = message["method"]
        name = (message.get("params") or {}).get("name")
        if isinstance(name, str):
            headers["Mcp-Name"] = (
                name if name.isascii() else "=?base64?" + base64.b64encode(name.encode()).decode() + "?="
            )
    return headers


class SSEWire(Wire):
    """Legacy HTTP+SSE: POSTs to /messages/, answers on the /sse stream (or the POST's 400)."""

    name = "sse"

    def __init__(self, port: int) -> None:
        self.port = port
        self.stream = RawSSE(port)
        self.exchange(json.dumps(INITIALIZE).encode())
        self._post(json.dumps(INITIALIZED).encode())

    def _post(self, data: bytes) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("POST", self.stream.endpoint, data, {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def exchange(self, data: bytes) -> tuple[int, bytes]:
        status, body = self._post(data)
        if status != 202:
            return status, body
        return 200, self.stream.next_event(timeout=10)["data"].encode("utf-8")

    def close(self) -> None:
        self.stream.close()


class WebSocketWire(Wire):
    """/ws: one text frame each way, on a loop of its own."""

    name = "websocket"

    def __init__(self, port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.client: WSClient = self.loop.run_until_complete(WSClient.connect("127.0.0.1", port))
        self.exchange(json.dumps(INITIALIZE).encode())
        self.client.send_frame(json.dumps(INITIALIZED).encode())

    def exchange(self, data: bytes) -> tuple[int, bytes]:
        self.client.send_frame(data)
        return 0, self.loop.run_until_complete(asyncio.wait_for(self.client.receive_text(), 10))

    def close(self) -> None:
        self.client.close()
        self.loop.close()


class StdioWire(Wire):
    """``mcpd --stdio``: one line each way."""

    name = "stdio"

    def __init__(self, process: StdioProcess) -> None:
        self.process = process
        self.exchange(json.dumps(INITIALIZE).encode())
        process.send(INITIALIZED)

    def exchange(self, data: bytes) -> tuple[int, bytes]:
        self.process.send(data + b"\n")
        return 0, self.process.readline(timeout=10)


class WireTests(DaemonTestCase):
    """The hostile inputs of `HOSTILE`, ids of every JSON type and awkward tool results, over
    every transport of one daemon and over stdio."""

    timeout = 120

    def wires(self) -> list[Wire]:
        daemon = self.start_daemon("--tool-pack", WIRE_PACK)
        assert daemon.port is not None
        self.daemon = daemon
        stdio = self.spawn_stdio(MCPD, "--stdio", "--tool-pack", WIRE_PACK)
        wires = [
            HTTPWire(daemon.port, modern=True),
            HTTPWire(daemon.port, modern=False),
            SSEWire(daemon.port),
            WebSocketWire(daemon.port),
            StdioWire(stdio),
        ]
        for wire in wires:
            self.addCleanup(wire.close)
        return wires

    def assert_nothing_broke(self, wires: list[Wire]) -> None:
        """Each transport still serves, and no log holds a traceback or a critical line."""
        for wire in wires:
            status, data = wire.exchange(
                request("after", "tools/call", {"name": "wire.echo", "arguments": {"a": 1}}, wire.modern)
            )
            self.assertEqual(strict(data)["result"]["structuredContent"], {"a": 1}, wire.name)
        logs = self.daemon.log("stdout") + self.daemon.log("stderr") + (self.workdir / "stdio.stderr.log").read_text()
        for bad in ("Traceback", "Unhandled error", "#critical"):
            self.assertNotIn(bad, logs)

    def test_hostile_inputs_are_parse_errors_everywhere(self) -> Deferred[None]:
        def check() -> None:
            wires = self.wires()
            for wire in wires:
                for name, data, words in HOSTILE:
                    if wire.name == "websocket" and name in NOT_UTF8:
                        continue
                    status, answer = wire.exchange(data)
                    where = f"{wire.name}, {name}"
                    body = strict(answer)
                    if wire.name == "sse":
                        # 2024-11-05 has no id-less parse error on the stream: the POST is a 400.
                        self.assertEqual(status, 400, where)
                        self.assertIn("Parse error", body["error"], where)
                        self.assertIn(words, body["error"], where)
                        continue
                    self.assertEqual(body["error"]["code"], errors.PARSE_ERROR, where)
                    self.assertNotIn("id", body, where)
                    self.assertIn(words, body["error"]["message"], where)
                    if wire.name.startswith("http"):
                        self.assertEqual(status, 400, where)
            # A POST with neither a session nor a version header is read before it is routed.
            sessionless = HTTPWire(self.daemon.port or 0, modern=True)
            sessionless.modern = False
            for name, data, _words in HOSTILE:
                status, answer = sessionless.exchange(data)
                self.assertEqual((status, strict(answer)["error"]["code"]), (400, errors.PARSE_ERROR), name)
            self.assert_nothing_broke(wires)

        return self.in_thread(check)

    def test_ids_of_every_json_type(self) -> Deferred[None]:
        good = [0, -1, 2**70, -(2**63), "", "x" * 300, "é😀", "\\ud800"]
        bad = [1.5, 1.0, True, False, None, {}, {"a": 1}, [], [1]]

        def check() -> None:
            wires = self.wires()
            for wire in wires:
                method = "tools/list" if wire.modern else "ping"
                for request_id in good:
                    status, answer = wire.exchange(request(request_id, method, modern=wire.modern))
                    body = strict(answer)
                    self.assertEqual(body["id"], request_id, wire.name)
                    self.assertIn("result", body, (wire.name, body))
                for request_id in bad:
                    status, answer = wire.exchange(request(request_id, method, modern=wire.modern))
                    body = strict(answer)
                    self.assertEqual(body["error"]["code"], errors.INVALID_REQUEST, (wire.name, request_id))
                    self.assertNotIn("id", body, wire.name)
            self.assert_nothing_broke(wires)

        return self.in_thread(check)

    def test_awkward_values_in_and_out(self) -> Deferred[None]:
        """What JSON carries comes back exactly; what it cannot is a clear error, never bad JSON."""
        arguments = {
            "big": 2**200,
            "small": -(10**30),
            "float": 1e308,
            "tiny": 5e-324,
            "text": "\U0001f600 \x00 \u2028 \x85 \\ud800 é",
            "nested": [[[[{"k": [None, True, False]}]]]],
        }

        def check() -> None:
            wires = self.wires()
            for wire in wires:
                call = request("echo", "tools/call", {"name": "wire.echo", "arguments": arguments}, wire.modern)
                status, answer = wire.exchange(call)
                self.assertEqual(strict(answer)["result"]["structuredContent"], arguments, wire.name)
                # Non-ASCII sent as escapes (above: a surrogate pair for the emoji) and raw.
                raw = json.dumps(json.loads(call), ensure_ascii=False).encode()
                self.assertEqual(strict(wire.exchange(raw)[1])["result"]["structuredContent"], arguments, wire.name)
                for tool, words in (("wire.nan", "NaN or Infinity"), ("wire.set", "set")):
                    status, answer = wire.exchange(request(tool, "tools/call", {"name": tool}, wire.modern))
                    result = strict(answer)["result"]
                    self.assertTrue(result["isError"], wire.name)
                    self.assertIn(words, result["content"][0]["text"], wire.name)
                status, answer = wire.exchange(request("block", "tools/call", {"name": "wire.nan_block"}, wire.modern))
                body = strict(answer)
                self.assertEqual((body["id"], body["error"]["code"]), ("block", errors.INTERNAL_ERROR), wire.name)
                status, answer = wire.exchange(request("s", "tools/call", {"name": "wire.surrogate"}, wire.modern))
                self.assertEqual(strict(answer)["result"]["content"][0]["text"], "report-\ufffd.txt", wire.name)
            self.assert_nothing_broke(wires)

        return self.in_thread(check)
