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

__all__ = ["JSONText", "write_json"]
