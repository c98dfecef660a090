"""README.rst against the code: its option list is the knob table (`mcpd.config`), section by
section, and every path its Layout section names exists."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mcpd.config import SECTIONS, Knob

REPO_ROOT = Path(__file__).resolve().parent.parent
README = (REPO_ROOT / "README.rst").read_text(encoding="utf-8")

# ``--flag`` (``ENV``, default ``VALUE``) at the start of a line, under a "Title (``section``)" heading.
_ENTRY = re.compile(r"^``--([a-z0-9-]+)`` \(``([A-Z0-9_]+)``(?:, default ``([^`]*)``)?\)$")
_HEADING = re.compile(r"^.+ \(``([a-z]+)``\)$")


def documented_options() -> dict[str, list[tuple[str, str, str | None]]]:
    """The README's options, by section: (flag, environment variable, default shown)."""
    start = README.index("The options by section")
    end = README.index("\nSecurity\n========")
    sections: dict[str, list[tuple[str, str, str | None]]] = {}
    current: list[tuple[str, str, str | None]] | None = None
    for line in README[start:end].splitlines():
        heading = _HEADING.match(line)
        if heading:
            current = sections.setdefault(heading.group(1), [])
            continue
        entry = _ENTRY.match(line)
        if entry:
            assert current is not None, f"{line!r} comes before any section heading"
            current.append((entry.group(1), entry.group(2), entry.group(3)))
    return sections


def shown_default(knob: Knob) -> str | None:
    """How README shows a knob's default (nothing for none, empty or off)."""
    default = knob.default
    if default is None or default == () or default is False or default == "":
        return None
    if isinstance(default, tuple):
        return ",".join(default)
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


class OptionListTests(SynchronousTestCase):
    def test_every_knob_is_listed_in_its_section_with_its_variable_and_default(self) -> None:
        expected = {
            section: [(knob.flag, knob.env, shown_default(knob)) for knob in knobs]
            for section, knobs in SECTIONS.items()
        }
        self.assertEqual(documented_options(), expected)

    def test_the_section_headings_are_found(self) -> None:
        self.assertEqual(list(documented_options()), list(SECTIONS))


class LayoutTests(SynchronousTestCase):
    def test_every_path_in_the_layout_exists(self) -> None:
        block = README[README.index("\nLayout\n======") :]
        block = block[: block.index("\n\n", block.index("::") + 3)]
        rows = [re.split(r"\s{2,}", line.strip())[0] for line in block.splitlines() if line.startswith("    ")]
        paths = [path for row in rows for path in row.split(", ")]
        self.assertTrue(paths)
        missing = [path for path in paths if not (REPO_ROOT / path).exists()]
        self.assertEqual(missing, [], "README's Layout names paths that do not exist")
