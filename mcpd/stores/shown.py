# -*- test-case-name: tests.test_knowledge -*-
"""What a search's cursor carries of the results its pages have shown (kb.search,
memory.recall, note.search): a short key of each result's id, so that later pages leave them
out whatever the ranking has become meanwhile (an offset would repeat results and skip others
once a record is deleted or added between pages)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence, Set

# How deep a search pages: its cursor carries a key of each result shown, so it stops here.
MAX_DEPTH = 1000
# Nine bytes: no two of a search's (at most `MAX_DEPTH`) results share a key, and twelve
# characters each (`mcpd.tools.paging.SHOWN_KEY_CHARS`).
SHOWN_KEY_BYTES = 9


def more_after(shown: Set[str], limit: int, more: bool) -> bool:
    """Whether a page after this one (of ``limit`` results, after ``shown``) is offered: there
    are more results, and the next page still starts within `MAX_DEPTH`."""
    return more and len(shown) + limit < MAX_DEPTH


def shown_key(record_id: str) -> str:
    """A short key of a search result's id (a chunk's, a memory's, a note's)."""
    digest = hashlib.blake2b(record_id.encode(), digest_size=SHOWN_KEY_BYTES).digest()
    return base64.urlsafe_b64encode(digest).decode()


def shown_after(shown: Set[str], page: Sequence[str]) -> list[str]:
    """The keys of what was shown, this page's ids included (a set: no order is kept)."""
    return [*shown, *(shown_key(record_id) for record_id in page)]
