"""README.rst against the code: its option list is the knob table (`mcpd.config`), section by
section, and every path its Layout section names exists."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mcpd.config import SECTIONS, Knob
from mcpd.config.settings import ConfigError, read_env_file, resolve

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


_ENV_LINE = re.compile(r"^(?:export )?[A-Z][A-Z0-9_]*=")


def env_file_examples() -> list[tuple[str, list[str]]]:
    """Every literal block of README.rst and docs/ that is an env file: its lines are
    ``NAME=value`` settings and ``#`` comments only. (where, lines)"""
    examples = []
    for path in [REPO_ROOT / "README.rst", *sorted((REPO_ROOT / "docs").glob("*.rst"))]:
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if not line.endswith("::"):
                continue
            block = []
            for body in lines[number + 1 :]:
                if body and not body.startswith(" "):
                    break
                block.append(body.strip())
            settings = [body for body in block if body and not body.startswith("#")]
            if settings and all(_ENV_LINE.match(body) for body in settings):
                examples.append((f"{path.name}:{number + 2}", [body for body in block if body]))
    return examples


class EnvFileExampleTests(SynchronousTestCase):
    """An env file is read by systemd's EnvironmentFile= and by `read_env_file`, and neither
    strips a ``#`` after a value: an example must keep its comments on lines of their own."""

    def test_the_production_example_is_found(self) -> None:
        self.assertIn("ALLOWED_IPS=10.20.0.0/16", [line for _, lines in env_file_examples() for line in lines])

    def test_no_example_has_an_inline_comment(self) -> None:
        inline = [
            (where, line)
            for where, lines in env_file_examples()
            for line in lines
            if not line.startswith("#") and "#" in line
        ]
        self.assertEqual(inline, [])

    def test_every_example_is_read_and_accepted_as_settings(self) -> None:
        for where, lines in env_file_examples():
            path = Path(self.mktemp())
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            try:
                resolve({}, {}, read_env_file(str(path)))
            except ConfigError as e:
                self.fail(f"{where}: {e}")


class PackageCommandTests(SynchronousTestCase):
    """A command the README runs by hand with the package's settings file gets what the unit
    sets with ``Environment=`` (``mcpd.env`` leaves those commented out): else ``mcpd reindex``
    rebuilds an empty database in the current directory."""

    def test_by_hand_commands_get_what_the_unit_sets(self) -> None:
        unit = (REPO_ROOT / "debian" / "mcpd.service").read_text(encoding="utf-8")
        unit_sets = re.findall(r"^Environment=(\S+)$", unit, re.MULTILINE)
        self.assertIn("DATA_DIR=/var/lib/mcpd", unit_sets)
        commands = [line.strip() for line in README.splitlines() if "--config /etc/mcpd/mcpd.env" in line]
        self.assertTrue(commands)
        for command in commands:
            self.assertIn("sudo -u mcpd ", command)
            for setting in unit_sets:
                self.assertIn(setting, command.split())
