# -*- test-case-name: tests.test_chunking -*-
"""Splitting a document into chunks for the knowledge base: by markdown headings, then by
paragraphs, to a target size with some overlap.

Sizes are counted in approximate model tokens, so that Chinese and English chunks hold about as
much: a CJK character (Han, kana, Hangul, full-width punctuation) counts one, any other four
characters count one. Every chunk is an exact slice of the document (``text ==
document[start:end]``) and keeps its position and the path of headings it sits under.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator

import attrs

from mcpd.interfaces import Chunk, indexed_text

__all__ = ["Chunk", "chunk_markdown", "indexed_text", "text_size"]

DEFAULT_SIZE = 400
DEFAULT_OVERLAP = 50
MIN_SIZE, MAX_SIZE = 50, 4000
# Characters of a heading kept in a chunk's heading path (at most six levels): the path is stored
# as JSON (MariaDB: a TEXT of 64 KiB) and indexed with every chunk under it.
MAX_HEADING = 200


@functools.cache
def _cjk() -> re.Pattern[str]:
    """The CJK characters, compiled on first use: their ranges were most of this module's
    import, paid by every ``mcpd --stdio`` start-up with the kb pack."""
    return re.compile(r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t#]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```+|~~~+)")
# Where a sentence may end: after . ! ? followed by white space, after CJK end marks, at a newline.
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|(?<=[。！？；])|\n")


def text_size(text: str) -> int:
    """The size of ``text`` in approximate tokens (a CJK character is one, four others are one)."""
    cjk = len(_cjk().findall(text))
    return cjk + math.ceil((len(text) - cjk) / 4)


@attrs.frozen
class _Piece:
    """A stretch of the document that is never split further: a heading line, a paragraph (or a
    part of one too large for a chunk) or a fenced code block."""

    start: int
    end: int
    size: int
    headings: tuple[str, ...]
    heading: bool = False


def chunk_markdown(text: str, size: int = DEFAULT_SIZE, overlap: int = DEFAULT_OVERLAP) -> list[Chunk]:
    """Split ``text`` (markdown or plain text) into chunks of at most about ``size`` tokens.

    A heading starts a new chunk once the current one holds a quarter of ``size`` (smaller
    sections are kept together); paragraphs are kept whole when they fit; a chunk cut because it
    is full begins with the last sentences (up to ``overlap`` tokens) of the one before it; a
    run of headings without text is cut like text. Linear in the length of ``text``.
    """
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"chunk size must be from {MIN_SIZE} to {MAX_SIZE} tokens, not {size}")
    if not 0 <= overlap <= size // 2:
        raise ValueError(f"chunk overlap must be from 0 to half the chunk size ({size // 2}), not {overlap}")
    chunks: list[Chunk] = []
    current: list[_Piece] = []
    held = 0  # tokens in current
    has_text = False  # whether current holds more than headings (kept as it grows: linear time)
    for piece in _pieces(text, size):
        if has_text:
            new_section = piece.heading and held >= size // 4
            if new_section or held + piece.size > size:
                # Headings that end the chunk belong to the next one.
                cut = len(current)
                while current[cut - 1].heading:
                    cut -= 1
                carried = current[cut:]
                current = current[:cut]
                chunks.append(_chunk(text, len(chunks), current))
                tail = None
                if overlap and not new_section and not carried and not piece.heading:
                    tail = _tail_start(text, current[0].start, current[-1].end, overlap)
                if tail is not None and text_size(text[tail : piece.end]) <= size:
                    last = current[-1]
                    carried = [_Piece(tail, last.end, text_size(text[tail : last.end]), last.headings)]
                current = carried
                held = sum(p.size for p in current)
                has_text = any(not p.heading for p in current)
        elif current and held + piece.size > size and (piece.heading or held > size // 4):
            # A run of headings with no text between them that fills a chunk (or more than a
            # quarter of one, with the text after it): a chunk of its own.
            chunks.append(_chunk(text, len(chunks), current))
            current, held = [], 0
        current.append(piece)
        held += piece.size
        has_text = has_text or not piece.heading
    if has_text or (current and not chunks):
        chunks.append(_chunk(text, len(chunks), current))
    return chunks


def _chunk(text: str, position: int, pieces: list[_Piece]) -> Chunk:
    start, end = pieces[0].start, pieces[-1].end
    first_text = next((p for p in pieces if not p.heading), pieces[-1])
    body = text[start:end]
    return Chunk(position, body, first_text.headings, start, end, text_size(body))


def _tail_start(text: str, start: int, end: int, budget: int) -> int | None:
    """Where the last sentences of ``text[start:end]`` worth at most ``budget`` tokens begin
    (failing a sentence end, a word break), or None when not even one word fits."""
    body = text[start:end]
    for pattern in (_SENTENCE_END, re.compile(r"\s+")):
        cuts = [m.end() for m in pattern.finditer(body) if 0 < m.end() < len(body)]
        best = None
        for cut in reversed(cuts):
            if text_size(body[cut:]) > budget:
                break
            best = cut
        if best is not None:
            return start + best
    return None


def _pieces(text: str, size: int) -> Iterator[_Piece]:
    """The document's headings, paragraphs and code blocks in order, each paragraph too large
    for one chunk cut into sentences (and a sentence too large, into words or characters)."""
    for block_start, block_end, level, _title, headings in _blocks(text):
        if level:
            # Sized by its whole line(s), marks included: a run of empty headings still fills a chunk.
            yield _Piece(block_start, block_end, text_size(text[block_start:block_end]), headings, heading=True)
            continue
        body = text[block_start:block_end]
        if text_size(body) <= size:
            yield _Piece(block_start, block_end, text_size(body), headings)
            continue
        for start, end in _split(body, size):
            yield _Piece(block_start + start, block_start + end, text_size(body[start:end]), headings)


def _split(body: str, size: int) -> Iterator[tuple[int, int]]:
    """Cut an oversized paragraph into its sentences (the packer joins them again up to ``size``)."""
    bounds = [0, *(m.end() for m in _SENTENCE_END.finditer(body) if 0 < m.end() < len(body)), len(body)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        if text_size(body[start:end]) > size:
            yield from _hard_split(body, start, end, size)
        else:
            yield start, end


def _hard_split(body: str, start: int, end: int, size: int) -> Iterator[tuple[int, int]]:
    """A sentence longer than a chunk: cut between words, or between characters of CJK text."""
    cjk = _cjk().match
    position = start
    while position < end:
        limit = position
        used = 0.0
        while limit < end:
            step = 1.0 if cjk(body[limit]) else 0.25
            if used + step > size:
                break
            used += step
            limit += 1
        if limit < end:
            space = body.rfind(" ", position + 1, limit)
            if space > position and not cjk(body[limit - 1]):
                limit = space + 1
        yield position, limit
        position = limit


def _blocks(text: str) -> Iterator[tuple[int, int, int, str, tuple[str, ...]]]:
    """(start, end, heading level or 0, heading title, heading path) for each block: a heading
    line, a fenced code block or a paragraph (lines up to a blank line)."""
    path: list[tuple[int, str]] = []
    lines = _lines(text)
    index = 0
    while index < len(lines):
        start, end, line = lines[index]
        if not line.strip():
            index += 1
            continue
        atx = _ATX.match(line)
        if atx:
            level = len(atx.group(1))
            title = (atx.group(2) or "").strip()
            _enter(path, level, title)
            yield start, end, level, title, tuple(t for _, t in path)
            index += 1
            continue
        fence = _FENCE.match(line)
        last = index
        if fence:
            marker = fence.group(1)
            last += 1
            while last < len(lines) and not lines[last][2].lstrip().startswith(marker):
                last += 1
            last = min(last, len(lines) - 1)
        else:
            while last + 1 < len(lines) and lines[last + 1][2].strip() and not _starts_block(lines[last + 1][2]):
                if _SETEXT.match(lines[last + 1][2]) and last == index:
                    break
                last += 1
            setext = last + 1 < len(lines) and last == index and _SETEXT.match(lines[last + 1][2])
            if setext:
                level = 1 if lines[last + 1][2].strip().startswith("=") else 2
                title = line.strip()
                _enter(path, level, title)
                yield start, lines[last + 1][1], level, title, tuple(t for _, t in path)
                index = last + 2
                continue
        yield start, lines[last][1], 0, "", tuple(t for _, t in path)
        index = last + 1


def _starts_block(line: str) -> bool:
    return bool(_ATX.match(line) or _FENCE.match(line))


def _enter(path: list[tuple[int, str]], level: int, title: str) -> None:
    while path and path[-1][0] >= level:
        path.pop()
    path.append((level, title[:MAX_HEADING]))


def _lines(text: str) -> list[tuple[int, int, str]]:
    """Each line's start and end offsets (without its line break) and its text."""
    lines = []
    position = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        lines.append((position, position + len(body), body))
        position += len(line)
    return lines
