# -*- test-case-name: tests.test_fuzz -*-
"""Bad input for the robustness and fuzz suites, and what mcpd owes a client for it.

- Seeds: hand-picked malformed paths, methods, bodies and header sets (the seeded barrage of
  `tests.test_robustness` sends them as they are; the strategies below mix them in).
- Strategies (hypothesis): JSON-RPC *text*, spelled token by token so that what a strict parser
  refuses can be written too (``NaN``, ``1e999999``, an escaped lone surrogate, a member twice,
  nesting deeper than a parser's stack), messages of both eras that are mostly well formed and
  sometimes not, 2025-03-26 batches, byte-level damage, and the HTTP headers MCP reads.
- The oracle: `owed` reads a payload as mcpd's parser does and says which answers it must get;
  `answer_problems` compares that with what came back, `message_problems` checks each message's
  JSON-RPC shape.
- Profiles: few examples and a deadline by default (CI); ``MCPD_FUZZ_EXAMPLES=N`` (``make fuzz``)
  runs N random examples per test with no deadline and keeps failures in ``.hypothesis/``.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from mcpd.protocol.codec import MAX_DEPTH
from mcpd.protocol.versions import LEGACY_VERSIONS, MODERN_VERSIONS
from mcpd.protocol.vocabulary import REQUEST_METHODS as SERVED_METHODS
from tests.wire import NotStrictJSON, lone_surrogate, strict_loads

MODERN = MODERN_VERSIONS[-1]
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}

# -- seeds ---------------------------------------------------------------------------------------

PATHS = [
    "/",
    "/mcp",
    "/mcp/",
    "/sse",
    "/messages/?session_id=nope",
    "/messages/",
    "/ws",
    "/health",
    "/ready",
    "/stats?recent=x",
    "/metrics",
    "/dashboard",
    "/%00",
    "/mcp/../etc/passwd",
    "/" + "a" * 3000,
]
METHODS = ["GET", "POST", "DELETE", "PUT", "OPTIONS", "HEAD", "PATCH", "FOO"]
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}
BODIES = [
    b"",
    b"{",
    b"[]",
    b"[{}]",
    b"null",
    b"1",
    b'"text"',
    b"\xff\xfe\x00",
    b'{"a":' * 3000,
    b'{"jsonrpc":"2.0"}',
    b'{"jsonrpc":"2.0","id":{},"method":5}',
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":1}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"server.info"}}',
    json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "server.tools", "arguments": {"match": ["x"]}, "_meta": MODERN_META},
        }
    ).encode(),
    json.dumps(
        {"jsonrpc": "2.0", "id": 2, "method": "resources/read", "params": {"uri": None, "_meta": MODERN_META}}
    ).encode(),
    json.dumps(
        {"jsonrpc": "2.0", "id": 3, "method": "prompts/get", "params": {"name": {"x": 1}, "_meta": MODERN_META}}
    ).encode(),
    json.dumps(
        {"jsonrpc": "2.0", "id": 4, "method": "completion/complete", "params": {"ref": 7, "_meta": MODERN_META}}
    ).encode(),
    json.dumps(
        {"jsonrpc": "2.0", "id": 5, "method": "tasks/get", "params": {"taskId": [1], "_meta": MODERN_META}}
    ).encode(),
    json.dumps(
        {"jsonrpc": "2.0", "id": 6, "method": "subscriptions/listen", "params": {"filter": "x", "_meta": MODERN_META}}
    ).encode(),
]
HEADER_SETS: list[dict[str, str]] = [
    {},
    {"Content-Type": "application/json"},
    {"Content-Type": "text/plain"},
    {"MCP-Protocol-Version": "2026-07-28"},
    {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "server.info"},
    {"MCP-Protocol-Version": "1999-01-01"},
    {"Mcp-Session-Id": "nope"},
    {"Accept": "text/event-stream"},
    {"Accept": "application/xml"},
    {"Origin": "http://evil.example"},
    {"Last-Event-ID": "s1.x"},
    {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "x", "Sec-WebSocket-Version": "13"},
    {"Transfer-Encoding": "chunked"},
    {"X-Request-Id": "a" * 300},
    {"Authorization": "Bearer nonsense"},
    # Bytes that are not ASCII (sent as Latin-1) in headers mcpd reads, and in one it does not.
    {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "caf\xe9"},
    {"Origin": "http://caf\xe9.example"},
    {"Host": "caf\xe9"},
    {"Mcp-Session-Id": "\xe9"},
    {"User-Agent": "caf\xe9"},
]

# -- profiles --------------------------------------------------------------------------------------

EXAMPLES_ENV = "MCPD_FUZZ_EXAMPLES"
_QUIET_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "mcpd-ci",
    # Deterministic in CI: the same examples every run, so a red run is a real regression.
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=10),
    suppress_health_check=_QUIET_CHECKS,
    print_blob=True,
)
settings.register_profile(
    "mcpd-fuzz",
    derandomize=False,
    database=DirectoryBasedExampleDatabase(str(Path(__file__).resolve().parent.parent / ".hypothesis")),
    deadline=None,
    suppress_health_check=[*_QUIET_CHECKS, HealthCheck.large_base_example],
    print_blob=True,
)


def depth(value: Any, stop: int | None = None) -> int:
    """How many arrays and objects ``value`` nests (0 for a scalar), without recursion; the
    count stops growing past ``stop``."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if stop is not None and deepest > stop:
            return deepest
        pending.extend((child, level + 1) for child in children)
    return deepest


def long_run() -> int | None:
    """The number of examples per test of a ``make fuzz`` run, or None in an ordinary run."""
    value = os.environ.get(EXAMPLES_ENV)
    return int(value) if value else None


def fuzz_settings(ci_examples: int) -> settings:
    """Settings for one property: ``ci_examples`` examples normally, ``MCPD_FUZZ_EXAMPLES``
    in a long run."""
    examples = long_run()
    if examples is None:
        return settings(settings.get_profile("mcpd-ci"), max_examples=ci_examples)
    return settings(settings.get_profile("mcpd-fuzz"), max_examples=examples)


# -- JSON text, token by token -----------------------------------------------------------------------


@attrs.frozen
class Raw:
    """A token written exactly as given: ``NaN``, ``1e999999``, ``-0``, a deep ``[[[…]]]``."""

    text: str


@attrs.frozen
class Members:
    """An object written with the members in this order, a name possibly twice."""

    pairs: tuple[tuple[str, Any], ...]


_SURROGATE = re.compile("[\ud800-\udfff]")


def dump(value: Any, ascii_only: bool = True) -> str:
    """``value`` as JSON text; `Raw` tokens as they are, lone surrogates as ``\\uXXXX``."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=ascii_only)
        return text if ascii_only else _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    if isinstance(value, dict):
        value = Members(tuple(value.items()))
    if isinstance(value, Members):
        return "{" + ",".join(f"{dump(name, ascii_only)}:{dump(item, ascii_only)}" for name, item in value.pairs) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dump(item, ascii_only) for item in value) + "]"
    return json.dumps(value)  # None, booleans, integers of any size, finite floats


# -- strategies ------------------------------------------------------------------------------------


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``choices``, each drawn in proportion to its weight."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


ODD_STRINGS = [
    "",
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff",
    "x\udc00y",
    "\U0001f600",
    "\u2028\u2029",
    "\ufeff",
    "\u202eevil",
    "e\u0301",
    "\x7f\x1b[31m",
    "../../etc/passwd",
    "%00",
    "=?base64?AA==?=",
    "a" * 1000,
]
RAW_NUMBERS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999999",
    "-1e999999",
    "1E400",
    "-0",
    "0.0",
    "1e-400",
    "1E+2",
    "123456789012345678901234567890123456789",
    "-9223372036854775809",
    "18446744073709551616",
    "9007199254740993",
]
BIG_INTS = [2**53 + 1, 2**63, -(2**63) - 1, 2**64, 10**30, -(10**40)]

texts = weighted(
    (4, st.text(max_size=12)),
    # Lone surrogates too (st.text leaves out category Cs by default).
    (1, st.text(st.characters(exclude_categories=()), max_size=6)),
    (2, st.sampled_from(ODD_STRINGS)),
)
numbers = weighted(
    (4, st.integers(min_value=-1000, max_value=10**6)),
    (1, st.sampled_from(BIG_INTS)),
    (2, st.floats(allow_nan=False, allow_infinity=False)),
    (1, st.sampled_from(RAW_NUMBERS).map(Raw)),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=10,
)
objects = st.dictionaries(texts, json_values, max_size=4)
# Ids of every JSON type; integers and strings most often, as clients send them.
request_ids = weighted(
    (5, st.integers(min_value=-(2**31), max_value=2**31)),
    (3, st.text(max_size=10)),
    (2, st.one_of(st.sampled_from(BIG_INTS), texts, st.sampled_from(RAW_NUMBERS).map(Raw))),
    (2, st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False))),
    (1, json_values),
)
ABSENT = object()

# Every request method mcpd serves, in either era.
REQUEST_METHODS = sorted(SERVED_METHODS)
NOTIFICATION_METHODS = [
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "notifications/message",
]
# A request that is never answered while the stream it came on is open (it is answered only by
# the end of the stream or a cancellation): 2026-07-28 subscriptions/listen.
UNANSWERED_METHODS = frozenset({"subscriptions/listen"})
TOOLS = ["fuzz.echo", "fuzz.progress", "server.info", "server.tools", "no.such.tool"]
URIS = ["mcpd://server/info", "mcpd://server/nope", "task://1", "file:///etc/passwd", ""]
NAME_KEYS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"} | dict.fromkeys(
    ("tasks/get", "tasks/update", "tasks/cancel"), "taskId"
)


def _params_for(method: str) -> st.SearchStrategy[dict[str, Any]]:
    """Well-formed parameters of ``method``, with arbitrary values here and there."""
    name = st.one_of(st.sampled_from(TOOLS), texts)
    if method == "tools/call":
        arguments = weighted((4, objects), (1, json_values))
        return st.fixed_dictionaries({"name": name}, optional={"arguments": arguments})
    if method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        return st.fixed_dictionaries({"uri": st.one_of(st.sampled_from(URIS), texts)})
    if method == "prompts/get":
        prompt = st.one_of(st.just("server.tour"), texts)
        return st.fixed_dictionaries({"name": prompt}, optional={"arguments": st.dictionaries(texts, texts)})
    if method == "completion/complete":
        ref = st.one_of(st.just({"type": "ref/prompt", "name": "server.tour"}), json_values)
        argument = st.fixed_dictionaries({"name": texts, "value": texts})
        return st.fixed_dictionaries({"ref": ref, "argument": argument})
    if method == "initialize":
        version = st.one_of(st.sampled_from([*LEGACY_VERSIONS, MODERN, "1999-01-01"]), json_values)
        return st.fixed_dictionaries(
            {
                "protocolVersion": version,
                "capabilities": objects,
                "clientInfo": st.just({"name": "fuzz", "version": "1"}),
            }
        )
    if method == "logging/setLevel":
        return st.fixed_dictionaries({"level": st.one_of(st.sampled_from(["debug", "error", "loud"]), json_values)})
    if method.startswith("tasks/") and method != "tasks/list":
        return st.fixed_dictionaries({"taskId": st.one_of(texts, json_values)})
    if method.endswith("/list") or method == "tasks/list":
        return st.fixed_dictionaries({}, optional={"cursor": st.one_of(texts, json_values)})
    if method == "notifications/cancelled":
        return st.fixed_dictionaries({"requestId": request_ids}, optional={"reason": texts})
    if method == "notifications/progress":
        return st.fixed_dictionaries({"progressToken": request_ids, "progress": numbers})
    if method == "subscriptions/listen":
        return st.fixed_dictionaries({"filter": st.one_of(st.just({"toolsListChanged": True}), json_values)})
    return st.just({})


@st.composite
def _envelope(draw: st.DrawFn, modern: bool) -> dict[str, Any]:
    """``params._meta``: the 2026-07-28 envelope (mostly right) or a legacy progress token."""
    meta: dict[str, Any] = dict(ENVELOPE) if modern else {}
    if modern and draw(st.integers(0, 9)) == 0:
        meta = draw(st.one_of(objects, st.just({"io.modelcontextprotocol/protocolVersion": "1999-01-01"})))
    if draw(st.booleans()):
        meta["progressToken"] = draw(request_ids)
    if modern and draw(st.integers(0, 3)) == 0:
        meta["io.modelcontextprotocol/clientCapabilities"] = {
            "extensions": {"io.modelcontextprotocol/tasks": {}},
            "elicitation": {},
        }
    return meta


@st.composite
def messages(draw: st.DrawFn, modern: bool) -> Any:
    """One JSON-RPC message: mostly a well-formed request of a known method, sometimes a
    notification, a response, or something that is not quite a message."""
    method = draw(
        weighted(
            (8, st.sampled_from(REQUEST_METHODS)),
            (2, st.sampled_from(NOTIFICATION_METHODS)),
            (1, texts),
            (1, json_values),
            (1, st.just(ABSENT)),
        )
    )
    message: dict[str, Any] = {"jsonrpc": draw(weighted((12, st.just("2.0")), (1, json_values), (1, st.just(ABSENT))))}
    notification = isinstance(method, str) and method.startswith("notifications/")
    if not notification or draw(st.integers(0, 5)) == 0:
        message["id"] = draw(weighted((12, request_ids), (1, st.just(ABSENT))))
    if method is not ABSENT:
        message["method"] = method
    params: Any = draw(_params_for(method)) if isinstance(method, str) else draw(objects)
    if draw(st.integers(0, 3)) > 0 or modern:
        meta = draw(_envelope(modern))
        if meta:
            params["_meta"] = meta
    if draw(st.integers(0, 7)) == 0:
        params = draw(weighted((3, json_values), (1, st.just(ABSENT))))
    if params is not ABSENT:
        message["params"] = params
    if draw(st.integers(0, 9)) == 0:
        # Response-shaped members, or anything else.
        message.update(draw(st.dictionaries(st.sampled_from(["result", "error", "x", "id"]), json_values, max_size=2)))
    message = {key: value for key, value in message.items() if value is not ABSENT}
    if draw(st.integers(0, 19)) == 0 and message:
        # One member twice: a parser keeps the last, a proxy may have read the first.
        name = draw(st.sampled_from(sorted(message)))
        return Members((*((key, value) for key, value in message.items()), (name, draw(json_values))))
    return message


@st.composite
def payloads(draw: st.DrawFn, modern: bool, batches: bool = True, binary: bool = True) -> bytes:
    """The bytes of one message as a client would send them: a message or a batch as compact
    JSON (ASCII or UTF-8), a seed body, a damaged message, or nesting past any parser's stack.
    Without ``binary``, only valid UTF-8 (a WebSocket text frame)."""
    ascii_only = draw(st.booleans())
    kind = draw(
        st.sampled_from(
            ["message"] * 10 + ["batch"] * (3 if batches else 0) + ["seed", "damaged", "damaged", "deep", "big batch"]
        )
    )
    if kind == "seed":
        seed = draw(st.sampled_from(BODIES if binary else [body for body in BODIES if _utf8(body)]))
        return bytes(seed)
    if kind == "deep":
        # Around mcpd's limit (the envelope takes three levels), and around Python's own.
        levels = draw(st.sampled_from([MAX_DEPTH - 3, MAX_DEPTH - 2, 200, 900, 940, 955, 2000, 100_000]))
        inner = draw(st.sampled_from(["[", '{"a":']))
        closer = "]" if inner == "[" else "}"
        message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "fuzz.echo"}}
        message["params"]["arguments"] = {"deep": Raw(inner * levels + "1" + closer * levels)}
        if modern:
            message["params"]["_meta"] = ENVELOPE
        return dump(message).encode()
    if kind == "big batch":
        one = {"jsonrpc": "2.0", "method": "tools/list", "params": {}}
        size = draw(st.sampled_from([100, 1000]))
        return dump([{**one, "id": n} for n in range(size)]).encode()
    if kind == "batch":
        value: Any = draw(st.lists(messages(modern), max_size=6))
    else:
        value = draw(messages(modern))
    text = dump(value, ascii_only)
    if kind == "damaged":
        text = draw(_damaged(text))
    data = text.encode("utf-8", "surrogatepass")
    if binary and draw(st.integers(0, 9)) == 0:
        spot = draw(st.integers(0, len(data)))
        data = data[:spot] + draw(st.sampled_from([b"\xff", b"\x00", b"\xc3", b"\xed\xa0\x80", b"\r"])) + data[spot:]
    return data


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@st.composite
def _damaged(draw: st.DrawFn, text: str) -> str:
    """``text`` cut short, with a character inserted, or with a slice taken out."""
    spot = draw(st.integers(0, len(text)))
    how = draw(st.sampled_from(["cut", "insert", "delete"]))
    if how == "cut":
        return text[:spot]
    if how == "insert":
        return text[:spot] + draw(st.sampled_from(list('{}[],:"\\ 0-eE.') + ["NaN", "\u0000"])) + text[spot:]
    return text[:spot] + text[spot + draw(st.integers(1, 8)) :]


# -- headers -----------------------------------------------------------------------------------------


def header_value(text: str) -> str:
    """A value as a client puts it in an Mcp-* header: printable ASCII as it is, anything else
    as ``=?base64?…?=`` (2026-07-28 transports §Value Encoding)."""
    if re.fullmatch(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?", text):
        return text
    return "=?base64?" + base64.b64encode(text.encode("utf-8", "surrogatepass")).decode() + "?="


def routing_headers(payload: bytes) -> list[tuple[str, str]]:
    """The Mcp-Method and Mcp-Name headers a 2026-07-28 client derives from its message."""
    try:
        message = json.loads(payload)
    except (ValueError, RecursionError):
        return []
    if not isinstance(message, dict) or not isinstance(message.get("method"), str):
        return []
    headers = [("Mcp-Method", header_value(message["method"]))]
    params = message.get("params")
    key = NAME_KEYS.get(message["method"])
    if key is not None and isinstance(params, dict) and isinstance(params.get(key), str):
        headers.append(("Mcp-Name", header_value(params[key])))
    return headers


@attrs.frozen
class Credentials:
    """The keys a fuzzed daemon knows."""

    admin: str = "fuzz-admin-key-0123456789abcdef"
    reader: str = "fuzz-read-key-0123456789abcdef"

    def key_file(self) -> str:
        return f"admin:{self.admin}\nreader:{self.reader}:read\n"


@st.composite
def authorization(draw: st.DrawFn, keys: Credentials) -> tuple[list[tuple[str, str]], bool | None]:
    """Authorization headers and whether they carry a valid key: True (one valid key sent the
    standard way), False (no valid key anywhere), None (ambiguous: a server may go either way)."""
    choice = draw(
        st.sampled_from(
            ["admin"] * 10 + ["reader"] * 2 + ["none", "wrong", "basic", "empty", "lower", "x-api-key", "twice"]
        )
    )
    if choice in ("admin", "reader"):
        return [("Authorization", f"Bearer {getattr(keys, choice)}")], True
    if choice == "none":
        return [], False
    if choice == "wrong":
        return [("Authorization", f"Bearer {draw(st.sampled_from([keys.admin[:-1], 'x', keys.admin + 'x']))}")], False
    if choice == "basic":
        return [("Authorization", "Basic " + base64.b64encode(f"admin:{keys.admin}".encode()).decode())], False
    if choice == "empty":
        return [("Authorization", "Bearer")], False
    if choice == "lower":
        return [("Authorization", f"bearer {keys.admin}")], True
    if choice == "x-api-key":
        return [("X-API-Key", keys.admin)], True
    # Two Authorization headers, one valid: refused (400) once HTTP edges are fixed.
    return [("Authorization", f"Bearer {keys.admin}"), ("Authorization", "Bearer nonsense")], None


# -- the oracle ----------------------------------------------------------------------------------------


def _typed(request_id: Any) -> tuple[str, Any]:
    """An id as a key that keeps 1, 1.0 and True apart."""
    return type(request_id).__name__, request_id


def _valid_id(value: Any) -> bool:
    # basic §Requests: ids are strings or integers (MCP never allows null).
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


@attrs.frozen
class Owed:
    """The answers a payload is owed.

    ``ids``: each answered exactly once; ``maybe``: at most once; ``anonymous``: errors
    without an id. ``parse_error``: one -32700 without id and nothing else. ``refusable``: the
    payload may instead be refused as a whole by one error without id (a batch, a message too
    large or too deep, one that is valid JSON but not interoperable). ``strict``: the payload
    is interoperable JSON (I-JSON).
    """

    ids: tuple[tuple[str, Any], ...] = ()
    maybe: tuple[tuple[str, Any], ...] = ()
    anonymous: int = 0
    parse_error: bool = False
    refusable: bool = False
    strict: bool = True
    batch: bool = False

    @property
    def nothing(self) -> bool:
        """Whether no answer at all is owed (notifications, responses)."""
        return not (self.ids or self.anonymous or self.parse_error)

    def satisfied(self, answers: Sequence[Any]) -> bool:
        """Whether every answer owed has arrived (or a refusal of the whole payload)."""
        responses = list(_responses(answers))
        if self.parse_error or (self.refusable and any("id" not in r for r in responses)):
            return any("id" not in r for r in responses)
        seen = Counter(_typed(r["id"]) for r in responses if "id" in r)
        anonymous = sum(1 for r in responses if "id" not in r)
        return all(seen[key] >= 1 for key in self.ids) and anonymous >= self.anonymous


def owed(payload: bytes) -> Owed:
    """What mcpd owes a client for ``payload``: read as mcpd's parser (Python's json) reads
    it, except that NaN and Infinity (RFC 8259 §6) and a name twice in one object (RFC 7493
    §2.3: a proxy could act on one copy while mcpd served the other) are parse errors."""
    try:
        value = json.loads(payload, parse_constant=_no_constant, object_pairs_hook=_unique_names)
    except (ValueError, RecursionError):
        return Owed(parse_error=True)
    try:
        strict_loads(payload)
        strict = True
    except NotStrictJSON:
        # Valid JSON, but not interoperable: a lone surrogate, a number past a double.
        strict = lone_surrogate(value) is None and _finite(value)
    if depth(value, MAX_DEPTH) > MAX_DEPTH:
        return Owed(parse_error=True)  # refused unread, like a text too deep to parse
    if isinstance(value, list):
        if not value:
            return Owed(anonymous=1, strict=strict)
        parts = [_owed_message(item) for item in value]
        return Owed(
            ids=tuple(key for part in parts for key in part.ids),
            maybe=tuple(key for part in parts for key in part.maybe),
            anonymous=sum(part.anonymous for part in parts),
            refusable=True,
            strict=strict,
            batch=True,
        )
    part = _owed_message(value)
    return attrs.evolve(part, refusable=not strict, strict=strict)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise ValueError("a name appears twice in one object")
    return value


def _finite(value: Any) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float) and item in (float("inf"), float("-inf")):
            return False
        if isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
    return True


def _owed_message(message: Any) -> Owed:
    """JSON-RPC 2.0 §4-5 and MCP basic §Messages, as mcpd answers one message."""
    if not isinstance(message, dict):
        return Owed(anonymous=1)
    request_id = message.get("id")
    method = message.get("method")
    if method is None:
        if "id" in message and ("result" in message or "error" in message):
            return Owed()  # a response: never answered
        return _error_to(request_id)
    if message.get("jsonrpc") != "2.0" or not isinstance(method, str):
        return _error_to(request_id)
    if "id" not in message:
        return Owed()  # a notification, whatever its params
    if not _valid_id(request_id):
        return Owed(anonymous=1)
    if method in UNANSWERED_METHODS:
        return Owed(maybe=(_typed(request_id),))
    return Owed(ids=(_typed(request_id),))


def _error_to(request_id: Any) -> Owed:
    return Owed(ids=(_typed(request_id),)) if _valid_id(request_id) else Owed(anonymous=1)


def _responses(answers: Iterable[Any]) -> Iterable[dict[str, Any]]:
    for answer in answers:
        for item in answer if isinstance(answer, list) else [answer]:
            if isinstance(item, dict) and "method" not in item:
                yield item


def message_problems(message: Any) -> list[str]:
    """What is wrong with one message mcpd sent (JSON-RPC 2.0 and MCP basic §Messages)."""
    if isinstance(message, list):
        if not message:
            return ["an empty batch answer (JSON-RPC 2.0 §6: never an empty array)"]
        return [problem for item in message for problem in message_problems(item)]
    if not isinstance(message, dict):
        return [f"not a JSON-RPC message: {_short(message)}"]
    problems = []
    if message.get("jsonrpc") != "2.0":
        problems.append(f'no "jsonrpc": "2.0": {_short(message)}')
    if "method" in message:
        if not isinstance(message["method"], str) or not message["method"].startswith("notifications/"):
            problems.append(f"a request from the server where none is expected: {_short(message)}")
        if "params" in message and not isinstance(message["params"], dict):
            problems.append(f"params that are not an object: {_short(message)}")
        return problems
    if ("result" in message) == ("error" in message):
        problems.append(f"a response needs exactly one of result and error: {_short(message)}")
    if "id" in message and not _valid_id(message["id"]):
        problems.append(f"an id that is not a string or an integer: {_short(message)}")
    if "result" in message and not isinstance(message["result"], dict):
        problems.append(f"a result that is not an object: {_short(message)}")
    if "result" in message and "id" not in message:
        problems.append(f"a result without an id: {_short(message)}")
    error = message.get("error")
    if "error" in message and not (
        isinstance(error, dict)
        and isinstance(error.get("code"), int)
        and not isinstance(error.get("code"), bool)
        and isinstance(error.get("message"), str)
    ):
        problems.append(f"an error without an integer code and a string message: {_short(message)}")
    extra = set(message) - {"jsonrpc", "id", "result", "error"}
    if extra:
        problems.append(f"unknown members {sorted(extra)}: {_short(message)}")
    return problems


def answer_problems(expected: Owed, answers: Sequence[Any], *, relaxed: bool = False) -> list[str]:
    """What is wrong with ``answers`` (every message received for one payload, a batch answer
    as one list) given what was owed. ``relaxed``: the transport may have refused the request
    before reading it (fuzzed headers), so owed answers may be missing or anonymous."""
    problems = [problem for answer in answers for problem in message_problems(answer)]
    if problems:
        return problems
    if any(isinstance(answer, list) for answer in answers) and not expected.batch:
        problems.append("a batch answer to a payload that was not a batch")
    responses = list(_responses(answers))
    seen = Counter(_typed(r["id"]) for r in responses if "id" in r)
    anonymous = [r for r in responses if "id" not in r]
    if any("result" in r for r in anonymous):
        problems.append("a result without an id")
    owed_ids, maybe = Counter(expected.ids), Counter(expected.maybe)
    strangers = [key for key in seen if key not in owed_ids and key not in maybe]
    if strangers:
        problems.append(f"answers to ids that were not sent: {strangers[:5]}")
    if expected.parse_error:
        codes = [r.get("error", {}).get("code") for r in anonymous]
        if relaxed and len(anonymous) <= 1 and not seen:
            return problems  # refused for its headers, before its body was read
        if len(responses) != 1 or codes != [-32700]:
            problems.append(f"a payload that is not JSON must get one -32700 error without id, got {_short(responses)}")
        return problems
    refused = len(anonymous) == 1 and not seen and (expected.refusable or relaxed)
    if refused:
        return problems
    for key in owed_ids | maybe:
        least, most = owed_ids[key], owed_ids[key] + maybe[key]
        if seen[key] > most or (seen[key] < least and not relaxed):
            owing = str(least) if least == most else f"{least} to {most}"
            problems.append(f"id {key[1]!r} answered {seen[key]} times, owed {owing}")
    if len(anonymous) > expected.anonymous + (1 if relaxed else 0) or (
        len(anonymous) < expected.anonymous and not relaxed
    ):
        problems.append(f"{len(anonymous)} errors without id, owed {expected.anonymous}: {_short(anonymous)}")
    return problems


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= limit else text[:limit] + "..."


# -- the daemon's health -------------------------------------------------------------------------------


def memory_kib(pid: int) -> tuple[int, int]:
    """``(resident, peak resident)`` of process ``pid`` in KiB (Linux /proc)."""
    fields = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


# What a log must never hold: an unhandled failure, a traceback, a critical line.
LOG_ALARMS = ("Unhandled error", "Traceback", "#critical", '"level": "critical"', '"level":"critical"')


def log_alarms(text: str) -> list[str]:
    """The lines of a log that say something went wrong inside the daemon."""
    return [line for line in text.splitlines() if any(alarm in line for alarm in LOG_ALARMS)]


def strict_trace_problems(path: Path) -> list[str]:
    """Lines of a ``--trace-file`` that are not interoperable JSON."""
    problems = []
    if not path.exists():
        return problems
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            strict_loads(line)
        except NotStrictJSON as e:
            problems.append(f"{path.name} line {number}: {e}")
    return problems


Check = Callable[[], None]
