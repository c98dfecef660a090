# -*- test-case-name: tests.test_settings -*-
"""One configuration knob, the one error every configuration problem raises, and the reader of
the files options name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs


class ConfigError(ValueError):
    """mcpd cannot start with this configuration: a knob's value, a file an option names (config,
    keys, allowlist, TLS), a pack or a store. The message is one line naming the option and what
    is wrong; start-up prints it and stops."""


@attrs.frozen
class Knob:
    """One setting: its attribute, flag, environment variable, parser, default and help."""

    name: str
    env: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    repeatable: bool = False
    # A flag without a value (--insecure-no-auth); its environment variable takes 1/0, true/false.
    switch: bool = False

    @property
    def flag(self) -> str:
        return self.name.replace("_", "-")


def read_lines(path: str, option: str, error: type[Exception] = ConfigError) -> list[tuple[int, str]]:
    """The numbered lines of the text file an option names; ``error`` naming the option and the
    file when it cannot be read (missing, unreadable, not UTF-8 text)."""
    try:
        with open(path, encoding="utf-8") as f:
            return list(enumerate(f.read().splitlines(), 1))
    except OSError as e:
        raise error(f"{option} {path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError:
        raise error(f"{option} {path}: not UTF-8 text") from None
