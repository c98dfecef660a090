"""Signposts lead somewhere: every module of mcpd names its tests in a ``test-case-name`` line
that points at real test modules, and the docs, README and docstrings refer only to modules,
objects and files that exist."""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

REPO_ROOT = Path(__file__).resolve().parent.parent
HEADER = re.compile(r"^# -\*- test-case-name: ([\w.,]+) -\*-$")
# `mcpd.x.y` or ``mcpd.x.y`` (a module, or an object in one).
DOTTED = re.compile(r"`{1,2}(mcpd(?:\.\w+)+)(?:\(\))?`{1,2}")
# A path inside the repository, not part of a longer path (``/etc/mcpd/…`` is the system's, and
# so is ``-C / etc/mcpd`` in a shell line).
PATH = re.compile(r"(?<![\w/.~ -])((?:mcpd|tests|docs|bench|etc|contrib|debian)/[\w./-]*\w)")


def sources() -> list[Path]:
    return sorted(path for path in (REPO_ROOT / "mcpd").rglob("*.py") if "__pycache__" not in path.parts)


def documents() -> list[Path]:
    found = [REPO_ROOT / "README.rst", *sorted((REPO_ROOT / "docs").glob("*.rst"))]
    found += [path for path in (REPO_ROOT / "CONTRIBUTING.rst", REPO_ROOT / "bench" / "README.rst") if path.exists()]
    return found + sources()


def generated(path: str) -> bool:
    """Whether a path is one git ignores: made by a script the docs describe, not shipped."""
    found = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT, check=False)
    return found.returncode == 0


def names_a_module(reference: str) -> bool:
    """Whether ``mcpd.x…`` starts with a module or package of mcpd (``mcpd.embedding_model``, a
    Milvus collection property, does not: it is not Python)."""
    first = reference.split(".")[1]
    return (REPO_ROOT / "mcpd" / first).is_dir() or (REPO_ROOT / "mcpd" / f"{first}.py").exists()


def resolves(reference: str) -> bool:
    """Whether a dotted name is a module, or an attribute path inside one."""
    parts = reference.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(found, name):
                return False
            found = getattr(found, name)
        return True
    return False


class TestCaseNameTests(SynchronousTestCase):
    def test_every_module_names_real_test_modules(self) -> None:
        problems = []
        for path in sources():
            relative = path.relative_to(REPO_ROOT)
            first = path.read_text(encoding="utf-8").splitlines()[:1]
            header = HEADER.match(first[0]) if first else None
            if header is None:
                if path.name != "__init__.py" and path.name not in ("__main__.py", "_version.py"):
                    problems.append(f"{relative}: no test-case-name line")
                continue
            for name in header.group(1).split(","):
                if not (REPO_ROOT / Path(*name.split("."))).with_suffix(".py").exists():
                    problems.append(f"{relative}: names {name}, which does not exist")
        self.assertEqual(problems, [])


class ReferenceTests(SynchronousTestCase):
    def test_dotted_references_resolve(self) -> None:
        problems = []
        for path in documents():
            for match in DOTTED.finditer(path.read_text(encoding="utf-8")):
                reference = match.group(1)
                if names_a_module(reference) and not resolves(reference):
                    problems.append(f"{path.relative_to(REPO_ROOT)}: {match.group(1)}")
        self.assertEqual(problems, [])

    def test_paths_exist(self) -> None:
        problems = []
        for path in documents():
            for match in PATH.finditer(path.read_text(encoding="utf-8")):
                if not (REPO_ROOT / match.group(1)).exists() and not generated(match.group(1)):
                    problems.append(f"{path.relative_to(REPO_ROOT)}: {match.group(1)}")
        self.assertEqual(problems, [])
