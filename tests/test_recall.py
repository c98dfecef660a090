"""Retrieval quality of keyword (BM25) search on real documents nobody here wrote: Debian's manual
pages in English and in Chinese (tests/corpus.py), chunked as the kb pack chunks, indexed in Milvus
Lite, searched with each page's NAME description; recall@5 = how often the page is among the first
five results. The floors sit just below what was measured (in the README and bench/README.rst):
a change to chunking, analysis or search that costs recall fails here.
"""

from __future__ import annotations

import collections
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from mcpd.interfaces import CollectionSpec, IndexedChunk, SearchQuery
from mcpd.packs.chunking import chunk_markdown, indexed_text
from mcpd.stores.milvus import MilvusIndex
from tests import corpus
from tests.milvus_service import require_milvus

MIN_QUERIES = 50
# Measured with the default chunking (400 tokens, overlap 50): English 0.743 (245 queries),
# Chinese 0.806 (315 queries); recall@1 0.539 and 0.606, recall@10 0.808 and 0.844.
FLOOR = {"manpages-dev": 0.72, "manpages-zh": 0.78}


def queries(pages: list[corpus.Page]) -> list[tuple[str, set[str]]]:
    """One query per description, expecting any page that has it; descriptions shared by more
    than three pages (``unimplemented system calls``) say too little to be a known-item query."""
    by_description: dict[str, set[str]] = collections.defaultdict(set)
    for page in pages:
        by_description[page.description].add(page.name)
    return [(text, names) for text, names in sorted(by_description.items()) if len(names) <= 3]


class RecallTests(TestCase):
    timeout = 600

    def setUp(self) -> None:
        require_milvus()
        missing = [package for package, ok in corpus.available().items() if not ok]
        if missing:
            if os.environ.get("CI") == "true":
                raise AssertionError(
                    f"CI=true but {', '.join(missing)} is not installed: tests/install-deps.sh installs it"
                )
            raise SkipTest(f"{', '.join(missing)} not installed (apt-get install {' '.join(missing)})")
        self.index = MilvusIndex(os.path.join(self.mktemp(), "milvus.db"), reactor, timeout=60.0)
        self.index.startService()
        self.addCleanup(self.index.stopService)

    @inlineCallbacks
    def recall(self, package: str, pages: list[corpus.Page], analyzer: str) -> Any:
        yield self.index.create_collection(CollectionSpec("kb_manual", analyzer))
        chunks = [
            IndexedChunk(f"{page.name}#{chunk.position}", "team", page.name, indexed_text(chunk))
            for page in pages
            for chunk in chunk_markdown(page.markdown)
        ]
        yield self.index.upsert("kb_manual", chunks)
        asked = queries(pages)
        self.assertGreaterEqual(len(asked), MIN_QUERIES)
        found = 0
        for text, expected in asked:
            hits = yield self.index.search(["kb_manual"], SearchQuery("team", text, limit=5))
            found += any(hit.document_id in expected for hit in hits)
        recall = found / len(asked)
        print(f"\n{package}: {len(pages)} pages, {len(chunks)} chunks, {len(asked)} queries, recall@5 {recall:.3f}")
        self.assertGreaterEqual(recall, FLOOR[package], f"{package}: recall@5 {recall:.3f} fell below {FLOOR[package]}")

    def test_english_manual_pages(self) -> Any:
        return self.recall("manpages-dev", corpus.english(), "standard")

    def test_chinese_manual_pages(self) -> Any:
        return self.recall("manpages-zh", corpus.chinese(), "jieba")
