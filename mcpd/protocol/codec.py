# -*- test-case-name: tests.test_codec -*-
"""JSON on the wire: the one decoder every transport reads messages with, and the one encoder
every transport and the protocol trace write them with.

Input is parsed strictly, as RFC 8259 and I-JSON (RFC 7493) define JSON text, so that what mcpd
accepts is what every other JSON reader (a proxy, a gateway, a client SDK) would read the same
way; anything else is a -32700 Parse error naming the problem:

- UTF-8 only (RFC 8259 §8.1); a lone UTF-16 surrogate (``"\\ud800"``) is not Unicode text
  (RFC 8259 §8.2, RFC 7493 §2.1), and could never be written back as UTF-8;
- no ``NaN``, ``Infinity`` or ``-Infinity`` (not JSON: RFC 8259 §6), and no number too large
  for a double (``1e999999``, RFC 7493 §2.2);
- no duplicate names in an object (RFC 7493 §2.3): readers disagree on which one wins;
- at most `MAX_DEPTH` levels of nesting (RFC 8259 §9 lets a parser limit it), so no later step
  (schema validation, encoding) runs out of stack on a message that was accepted.

Output is valid UTF-8 JSON whatever a handler put in it: `encode` never raises and never writes
``NaN``. The cost of the checks is paid only by messages that need them (a ``\\u`` escape, many
brackets, a long number): a plain message is read by orjson and checked for duplicate names by
counting colons (`_quick`), under half of what the json module's reader costs with a duplicate
check per object; any other message, and any orjson refuses, is read by the json module, whose
words every parse error keeps.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson
from twisted.logger import Logger

from mcpd.protocol.errors import InternalError, ParseError, error_response
from mcpd.tools.jsontext import JSONText, write_json, write_json_bytes

log = Logger(namespace="mcpd.codec")

# Deepest nesting accepted: serde_json's default, far beyond any MCP message.
MAX_DEPTH = 128
# Nesting kept when a message JSON cannot carry is rewritten (see `encode`).
_SANITIZED_DEPTH = 64
# A \u escape of a surrogate (D800-DFFF): only then can a decoded string hold a lone one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# A surrogate code point in a decoded string: paired escapes decode to one code point, so any
# left is lone.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value (RFC 8259 §6)")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:40]} is too large for a double (RFC 7493 §2.2)")
    return value


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise ValueError(f"the name {name[:60]!r} appears twice in one object (RFC 7493 §2.3)")
            seen.add(name)
    return value


_decode = json.JSONDecoder(
    parse_float=_finite_float, parse_constant=_refuse_constant, object_pairs_hook=_unique_pairs
).decode


# Digits as zeros, so that a run of 19 (a number orjson may read as a float) is one search, and
# braces as brackets, so that the openings of any nesting are one count.
_SHAPE = bytes.maketrans(b"123456789{", b"000000000[")
_LONG_NUMBER = b"0" * 19
# What `_quick` answers for a text it leaves to the json module.
_UNREAD: Any = object()


def _quick(text: str, raw: bytes, shape: bytes) -> Any:
    """``raw`` read by orjson, or `_UNREAD` for a text it may read otherwise than the json module
    with our rules: one with a ``\\u`` escape (a lone surrogate, an escaped colon), a run of 19
    digits (an integer past 64 bits, which orjson reads as a float), or duplicate names (orjson
    keeps the last); and one orjson refuses, so that the json module words the error.

    Duplicates by counting: every member is written back with one colon and its strings with
    the colons they hold (no escapes change that here), so the text has more colons than the
    value written back exactly when a member was overwritten."""
    # find, not ``in``: CPython 3.11 tries a bytes operand of ``in`` as an integer first, and
    # makes and formats the TypeError of that failure (~200 ns) before it searches.
    if "\\u" in text or shape.find(_LONG_NUMBER) >= 0:
        return _UNREAD
    try:
        value = orjson.loads(raw)
        written = orjson.dumps(value)  # refuses nesting past 254 levels: left to the json module
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return _UNREAD
    return value if written.count(b":") == raw.count(b":") else _UNREAD


def decode(data: bytes | str) -> Any:
    """Read one JSON text (a message or a batch); `ParseError` saying what is wrong with it."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ParseError(f"Parse error: the message is not UTF-8 (byte {e.start}; RFC 8259 §8.1)") from None
        raw = data
    else:
        text = data
        if _SURROGATE.search(text):
            raise ParseError("Parse error: the message holds a lone UTF-16 surrogate, which is not Unicode text")
        raw = text.encode("utf-8")
    if text.startswith("\ufeff"):
        raise ParseError(
            "Parse error: the message starts with a byte order mark, which JSON text must not (RFC 8259 §8.1)"
        )
    shape = raw.translate(_SHAPE)  # ``raw`` with its digits as 0 and its braces as brackets
    value = _quick(text, raw, shape)
    if value is _UNREAD:
        try:
            value = _decode(text)
        except RecursionError:
            raise ParseError(f"Parse error: the message nests deeper than {MAX_DEPTH} levels") from None
        except ValueError as e:
            raise ParseError(f"Parse error: {_reason(e)}") from None
    # Deeper than MAX_DEPTH takes more than MAX_DEPTH brackets each way: short texts cannot be.
    if (
        len(text) > 2 * MAX_DEPTH
        and isinstance(value, (dict, list))
        and shape.count(b"[") > MAX_DEPTH
        and _too_deep(value)
    ):
        raise ParseError(f"Parse error: the message nests deeper than {MAX_DEPTH} levels")
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) and _SURROGATE.search(write_json(value)):
        raise ParseError(
            "Parse error: a string holds a lone UTF-16 surrogate escape (such as \\ud800 without its pair), "
            "which is not Unicode text (RFC 8259 §8.2)"
        )
    return value


def _reason(error: ValueError) -> str:
    text = str(error)
    if "integer string conversion" in text:
        # CPython's own bound on digits (CVE-2020-10735), in words a client can act on.
        return "an integer has too many digits (at most 4300)"
    return text


def _too_deep(value: dict[str, Any] | list[Any]) -> bool:
    # Level by level, so that a wide message costs a few comprehensions, not a Python loop.
    level: list[Any] = [value]
    for _ in range(MAX_DEPTH):
        level = [
            child
            for node in level
            for child in (node.values() if type(node) is dict else node)
            if type(child) is dict or type(child) is list
        ]
        if not level:
            return False
    return True


def encode(message: Any) -> bytes:
    """Serialise a message compactly as UTF-8 JSON (no newlines: safe for stdio and SSE framing).

    Never raises. A lone surrogate a handler put in a string (a file name decoded with
    ``surrogateescape``, say) is written as U+FFFD. A message JSON cannot carry (``NaN``, an
    object of another type, a cycle) is logged and replaced: a response by an internal error for
    its id, anything else by a copy with those values made null or text.
    """
    try:
        spliced = _with_structured_text(message)
        return write_json_bytes(message) if spliced is None else spliced.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", write_json(message)).encode("utf-8")
    except (ValueError, TypeError, RecursionError) as e:
        return _replacement(message, e)


# Where a tool result's structured content goes while the rest of its answer is written.
_PLACE = "\x00mcpd:structuredContent\x00"
_PLACE_JSON = write_json(_PLACE)


def _with_structured_text(message: Any) -> str | None:
    """A tool call's answer written with its structured content taken from its text copy (a
    `JSONText` of that very value, already written as this module writes JSON) rather than
    encoded again: a page of 20 tasks is ~7 KB encoded once instead of twice. None for any
    other message."""
    result = message.get("result") if type(message) is dict else None
    if type(result) is not dict:
        return None
    structured = result.get("structuredContent")
    content = result.get("content")
    if structured is None or type(content) is not list or not content or type(content[0]) is not dict:
        return None
    text = content[0].get("text")
    if type(text) is not JSONText or text.value is not structured:
        return None
    written = write_json({**message, "result": {**result, "structuredContent": _PLACE}})
    at = written.rfind(_PLACE_JSON)
    if at < 0 or written.find(_PLACE_JSON) != at:
        return None
    return written[:at] + text + written[at + len(_PLACE_JSON) :]


def dumps(value: Any) -> str:
    """``value`` as compact JSON text for a log line: like `encode` it never raises and never
    writes ``NaN``, but quietly (a logger must not log about its own lines): what JSON cannot
    carry becomes null or text, a lone surrogate U+FFFD."""
    try:
        text = write_json(value)
    except (ValueError, TypeError, RecursionError):
        text = write_json(_sanitized(value, 0, set()))
    # ASCII text holds no surrogate, and telling is free (a log line's search was 7% of it).
    return text if text.isascii() or not _SURROGATE.search(text) else _SURROGATE.sub("\ufffd", text)


def _replacement(message: Any, error: Exception) -> bytes:
    try:
        substitute = _substitute(message, error)
        return _SURROGATE.sub("\ufffd", write_json(substitute)).encode("utf-8")
    except Exception:
        log.failure("Could not write even a substitute for a message")
        return write_json(
            error_response(None, InternalError("Internal error: the server could not write its answer").to_error())
        ).encode()


def _substitute(message: Any, error: Exception) -> Any:
    if isinstance(message, dict) and "id" in message and "method" not in message:
        log.error(
            "The answer to request {id!r} holds a value JSON cannot carry ({error}); sent an internal error instead",
            id=message.get("id"),
            error=str(error),
        )
        reason = InternalError(
            "Internal error: the answer to this request holds a value JSON cannot carry (NaN, Infinity or "
            "a non-JSON type); the server log has the details"
        )
        return error_response(_sanitized(message["id"], 0, set()), reason.to_error())
    log.error("A message holds a value JSON cannot carry ({error}); sent it with null in its place", error=str(error))
    return _sanitized(message, 0, set())


def _sanitized(value: Any, depth: int, path: set[int]) -> Any:
    """A copy of ``value`` holding only what JSON can carry (as JavaScript's JSON.stringify
    does: non-finite numbers become null); a cycle, or nesting beyond a bound, becomes null too."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if not isinstance(value, (dict, list, tuple)):
        return str(value)
    if depth >= _SANITIZED_DEPTH or id(value) in path:
        return None
    path.add(id(value))
    try:
        if isinstance(value, dict):
            return {str(key): _sanitized(item, depth + 1, path) for key, item in value.items()}
        return [_sanitized(item, depth + 1, path) for item in value]
    finally:
        path.discard(id(value))


__all__ = ["MAX_DEPTH", "decode", "dumps", "encode"]
