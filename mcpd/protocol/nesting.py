# -*- test-case-name: tests.test_engine -*-
"""How deeply a JSON-RPC message may nest.

Python's parser accepts about 950 levels, but whatever encodes the message again (the protocol
trace, a tool that echoes or stores its arguments, a result) needs a few more frames and fails
with a RecursionError: a 500, or a tool failure and a traceback in the log, caused by any client.
A message nested deeper than `MAX_DEPTH` is therefore a parse error, like one too deep to parse.
64 is .NET System.Text.Json's default; an MCP message spends three levels on its envelope
(message, params, arguments), which leaves 61 for a tool's values.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 64


def too_deep(text: bytes | str, value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value``, parsed from ``text``, nests more than ``limit`` arrays and objects.

    A text with fewer opening brackets than the limit cannot nest deeper: that check (in C)
    is all most messages cost.
    """
    opened = text.count(b"[") + text.count(b"{") if isinstance(text, bytes) else text.count("[") + text.count("{")
    return opened > limit and depth(value, limit) > limit


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


def nesting_error(limit: int = MAX_DEPTH) -> str:
    """What a client is told about a message nested too deeply."""
    return f"the message is nested more than {limit} levels deep"
