# -*- test-case-name: tests.test_recall -*-
"""Real documents nobody here wrote, for retrieval-quality tests and benchmarks: Debian's manual
pages, in English (``manpages-dev``: the Linux system calls, section 2) and in Chinese
(``manpages-zh``: the zh_CN pages of sections 1 and 8), turned from roff into markdown.

A page's NAME line (``open, openat, creat \\- open and possibly create a file``) gives a query (the
description) and its expected document (the page, indexed without its NAME section): the classic
known-item test of a search engine. tests/install-deps.sh installs both packages.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator
from pathlib import Path

import attrs

MAN_ROOT = Path(os.environ.get("MCPD_MAN_ROOT", "/usr/share/man"))
ENGLISH = ("manpages-dev", [MAN_ROOT / "man2"])
CHINESE = ("manpages-zh", [MAN_ROOT / "zh_CN" / "man1", MAN_ROOT / "zh_CN" / "man8"])
_NAME_HEADINGS = ("NAME", "名称", "名字", "名称 NAME")
_CJK = re.compile(r"[\u4e00-\u9fff]")

# roff escapes: fonts, sizes, strings, and the named characters that matter for reading.
_CHARACTERS = {"em": "—", "en": "–", "aq": "'", "dq": '"', "co": "©", "lq": "“", "rq": "”", "bu": "•", "mu": "×"}
_ESCAPES = re.compile(r"\\(?:f(?:\[[^\]]*\]|\(..|.)|s[+-]?\d+|\*(?:\[[^\]]*\]|\(..|.)|\((..)|\[([^\]]*)\]|(.))")


def _escape(match: re.Match[str]) -> str:
    named = match.group(1) or match.group(2)
    if named is not None:
        return _CHARACTERS.get(named, "")
    plain = match.group(3)
    if plain is None:  # a font, size or string: dropped
        return ""
    return {"-": "-", "e": "\\", " ": " ", "~": " ", "0": " "}.get(plain, "")


def inline(text: str) -> str:
    """One line of roff text as plain text."""
    return _ESCAPES.sub(_escape, text)


@attrs.frozen
class Page:
    """A manual page: its name (``open.2``), NAME description, and body as markdown (no NAME)."""

    name: str
    description: str
    markdown: str


def roff_to_markdown(source: str) -> tuple[str, str]:
    """(the NAME section's text, the rest as markdown) of a man(7) page."""
    out: list[str] = []
    name_lines: list[str] = []
    section = ""
    for raw in source.splitlines():
        if raw.startswith(('.\\"', "'\\\"", '.\\"')) or raw.strip() in (".", "'"):
            continue
        if raw.startswith((".", "'")):
            request, _, rest = raw[1:].strip().partition(" ")
            rest = rest.strip().strip('"')
            if request in ("SH", "SS"):
                section = inline(rest)
                if request == "SH" and section.upper() in _NAME_HEADINGS or section in _NAME_HEADINGS:
                    section = "NAME"
                    continue
                out += ["", ("## " if request == "SH" else "### ") + section, ""]
            elif request in ("PP", "LP", "P", "TP", "sp", "IP", "TQ"):
                out.append("")
                if request == "IP" and rest:
                    out.append(inline(rest.split('"')[0] if rest.startswith('"') else rest.split(" ")[0]))
            elif request in ("B", "I", "BR", "IR", "RB", "RI", "BI", "IB", "SM", "SB"):
                words = re.findall(r'"[^"]*"|\S+', raw[1:].strip().partition(" ")[2])
                text = ("" if request in ("B", "I", "SM", "SB") else "").join(w.strip('"') for w in words)
                if request in ("B", "I", "SM", "SB"):
                    text = " ".join(w.strip('"') for w in words)
                (name_lines if section == "NAME" else out).append(inline(text))
            continue
        (name_lines if section == "NAME" else out).append(inline(raw))
    markdown = re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()
    return " ".join(line.strip() for line in name_lines if line.strip()), markdown


def pages(directories: list[Path]) -> Iterator[Page]:
    """The pages of these directories that have a description (aliases, ``.so`` pages, skipped)."""
    for directory in directories:
        for path in sorted(directory.glob("*.gz")):
            source = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
            if source.lstrip().startswith(".so "):
                continue
            name_text, markdown = roff_to_markdown(source)
            _names, dash, description = name_text.partition(" - ")
            if not dash:
                _names, dash, description = name_text.partition(" — ")
            description = description.strip()
            if dash and description and markdown:
                yield Page(path.name.removesuffix(".gz"), description, markdown)


def english() -> list[Page]:
    """Section 2 of Debian's manpages-dev: pages with a description of at least three words."""
    return [p for p in pages(ENGLISH[1]) if len(p.description.split()) >= 3]


def chinese() -> list[Page]:
    """Debian's manpages-zh (zh_CN, sections 1 and 8): pages whose description is in Chinese."""
    return [p for p in pages(CHINESE[1]) if len(_CJK.findall(p.description)) >= 2]


def available() -> dict[str, bool]:
    """Which corpus packages are installed."""
    return {package: all(d.is_dir() and any(d.glob("*.gz")) for d in dirs) for package, dirs in (ENGLISH, CHINESE)}
