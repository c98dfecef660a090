# -*- test-case-name: tests.test_settings -*-
"""Which tool packs are served."""

from __future__ import annotations

from mcpd.config import parse
from mcpd.config.knob import Knob

SECTION = "packs"
KNOBS: tuple[Knob, ...] = (
    Knob(
        "toolsets",
        "TOOLSETS",
        parse.names,
        None,
        "Built-in tool packs to serve, comma-separated (server, tasks, notes, cache, sql, kb, memory). "
        "Default: every built-in pack whose stores are configured (sql: when a --sql-source is given).",
    ),
    Knob(
        "tool_pack",
        "TOOL_PACKS",
        parse.names,
        (),
        "Extra tool pack by dotted module name (module[:attribute]); repeatable.",
        repeatable=True,
    ),
)
