# -*- test-case-name: tests.test_envfile -*-
"""The documented settings file: every knob of `mcpd.config.KNOBS`, commented out at its default.

``etc/mcpd.env`` is this module's output (``python -m mcpd.envfile > etc/mcpd.env``, checked by
the tests), and the Debian package writes ``/etc/mcpd/mcpd.env`` with it at build time, showing
the values its systemd unit sets (``--default API_KEY_FILE=/etc/mcpd/keys``): the file can never
miss a knob the daemon has.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Mapping, Sequence

from mcpd.config import KNOBS, SECTIONS, Knob

WIDTH = 100
HEADER = """\
mcpd settings: NAME=value lines (`mcpd --config FILE`, `twistd -ny etc/mcpd.tac`, or a systemd
EnvironmentFile). Every setting is listed, commented out at its default: uncomment a line to
change it. A command-line flag wins over the environment, which wins over this file.
Generated from mcpd's settings table by `python -m mcpd.envfile`."""


def shown_default(knob: Knob) -> str:
    """A knob's default as its environment variable would spell it ('' when it has none)."""
    value = knob.default
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def render(
    defaults: Mapping[str, str] | None = None, header: str = HEADER, set_by: str = "", ignore_unknown: bool = False
) -> str:
    """The whole file; ``defaults`` replaces the shown default of the knobs it names (by
    environment variable), each marked as set by ``set_by``. A name that is not a knob is an
    error, unless ``ignore_unknown`` (a unit may set variables a later mcpd reads)."""
    defaults = dict(defaults or {})
    unknown = sorted(set(defaults) - {knob.env for knob in KNOBS})
    if unknown and not ignore_unknown:
        raise ValueError(f"not settings of mcpd: {', '.join(unknown)}")
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    sections = {knobs[0].name: section for section, knobs in SECTIONS.items() if knobs}
    for knob in KNOBS:
        lines.append("")
        if knob.name in sections:
            lines += [f"# -- {sections[knob.name]} " + "-" * (WIDTH - 8 - len(sections[knob.name])), ""]
        flag = f"--{knob.flag}"
        lines.append(f"# {knob.env} ({flag}{', repeatable' if knob.repeatable else ''})")
        lines.extend(
            textwrap.wrap(knob.help, WIDTH - 2, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)
        )
        if knob.env in defaults:
            value = defaults[knob.env]
            default = shown_default(knob) or "unset"
            lines.append(f"# Set to {value} by {set_by or 'this installation'} (mcpd's own default: {default}).")
        else:
            value = shown_default(knob)
            if knob.default is None:
                lines.append("# Default: unset.")
        lines.append(f"#{knob.env}={value}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the file; ``--default NAME=VALUE`` (repeatable) shows an installation's own value."""
    parser = argparse.ArgumentParser(prog="python -m mcpd.envfile", description=main.__doc__)
    parser.add_argument("--default", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--set-by", default="", help="who sets the --default values (e.g. mcpd.service)")
    parser.add_argument("--ignore-unknown", action="store_true", help="skip --default names that are not settings")
    arguments = parser.parse_args(argv)
    defaults = {}
    for item in arguments.default:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--default {item!r}: expected NAME=VALUE")
        defaults[name] = value
    try:
        sys.stdout.write(render(defaults, set_by=arguments.set_by, ignore_unknown=arguments.ignore_unknown))
    except ValueError as e:
        parser.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
