# -*- test-case-name: tests.test_codec,tests.test_tools -*-
"""Compact JSON text, written one way for the whole daemon: the engine's messages
(``mcpd.protocol.codec``) and a tool result's text copy (``mcpd.tools.api``) are the same text
for the same value, which is what lets the engine splice one into the other (`JSONText`).

It sits with the tool API because that layer may not import the protocol layer, and both need it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson


class JSONText(str):
    """The JSON text of a tool's structured result (its text copy), knowing the ``value`` it was
    written from: the engine's encoder puts this text where ``value`` goes in the answer instead
    of encoding the value a second time (mcpd.protocol.codec)."""

    value: Any


def _json_writer() -> Callable[[Any], str]:
    """``JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode``, the
    same text, with its C encoder made once rather than with every call (json's ``encode`` makes
    one per call). Without circular-reference markers: a cycle raises RecursionError, where
    json's own check raises ValueError; callers handle both. A value JSON cannot carry raises
    ValueError (NaN, Infinity) or TypeError (naming its type)."""
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: json's own path
        return encoder.encode
    c_encoder = make(None, encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, False)
    join = "".join

    def write_json(value: Any) -> str:
        return join(c_encoder(value, 0))

    return write_json


write_json = _json_writer()

# Nesting `_plain` looks into; a deeper value (or a cycle) is left to the json module.
_PLAIN_DEPTH = 128


def _plain(node: Any, depth: int = 0) -> bool:
    """Whether the dict, list or tuple ``node`` holds only what orjson writes exactly as
    `write_json` does: exact str (or our `JSONText`), int, bool and None, in exact dicts, lists
    and tuples, at most `_PLAIN_DEPTH` deep. Not floats (written otherwise, NaN as null),
    subclasses (json may write them otherwise), nor what orjson writes and json refuses (a
    UUID, an enum). Dict keys are not looked at: orjson refuses any but an exact str.

    Straight type tests in a recursive walk: with orjson's writing, half to nine tenths of what
    the json module's writing costs (a list of numbers, a tools/list page, a tool's answer)."""
    for value in node.values() if type(node) is dict else node:
        kind = type(value)
        if kind is str or kind is int or kind is bool or value is None or kind is JSONText:
            continue
        if (kind is dict or kind is list or kind is tuple) and depth < _PLAIN_DEPTH and _plain(value, depth + 1):
            continue
        return False
    return True


def write_json_bytes(value: Any) -> bytes:
    """``write_json(value).encode("utf-8")``: the same bytes, or the same exception.

    orjson writes a value made of plain types only (`_plain`) at a fraction of the json
    module's cost and to the same bytes; whatever else it would write otherwise (floats, NaN as
    null, a UUID or an enum json refuses, subclasses) and whatever it refuses (an integer past
    64 bits, a non-str key, a lone surrogate, deep nesting) goes to the json module.
    tests.test_codec holds the two equal over arbitrary values."""
    kind = type(value)
    if (kind is dict or kind is list or kind is tuple) and _plain(value):
        try:
            return orjson.dumps(value)
        except orjson.JSONEncodeError:
            pass
    return write_json(value).encode("utf-8")


__all__ = ["JSONText", "write_json", "write_json_bytes"]
