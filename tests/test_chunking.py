"""Tests for mcpd.packs.chunking: headings, paragraphs, sizes in approximate tokens (CJK-aware),
overlap, and chunks that are exact slices of the document."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mcpd.packs.chunking import Chunk, chunk_markdown, indexed_text, text_size
from mcpd.packs.kb import INLINE_CHUNKING, chunked

GUIDE = """# Operations guide

How the team runs its services.

## Backups

Back up the database every night with mysqldump. Keep seven copies off site.

Restore drills happen every quarter.

## Deploys

### Web

Deploy the web service with the blue green method.

### Workers

Workers drain their queues before they stop, and report what they finished.

Rollback
--------

Roll back by switching the load balancer to the previous colour.
"""


def slices_hold(test: SynchronousTestCase, text: str, chunks: list[Chunk]) -> None:
    for position, chunk in enumerate(chunks):
        test.assertEqual(chunk.position, position)
        test.assertEqual(chunk.text, text[chunk.start : chunk.end])
        test.assertEqual(chunk.size, text_size(chunk.text))


class SizeTests(SynchronousTestCase):
    def test_cjk_characters_count_one_and_four_others_count_one(self) -> None:
        self.assertEqual(text_size(""), 0)
        self.assertEqual(text_size("abcd"), 1)
        self.assertEqual(text_size("abcde"), 2)
        self.assertEqual(text_size("数据库"), 3)
        self.assertEqual(text_size("データベース"), 6)
        self.assertEqual(text_size("데이터"), 3)
        self.assertEqual(text_size("用 mysqldump 备份"), 3 + 3)  # 3 CJK; " mysqldump " is 11 others
        self.assertEqual(text_size("，。！"), 3)


class HeadingTests(SynchronousTestCase):
    def test_each_section_is_a_chunk_with_its_heading_path(self) -> None:
        chunks = chunk_markdown(GUIDE, size=56, overlap=0)
        slices_hold(self, GUIDE, chunks)
        self.assertEqual(
            [c.headings for c in chunks],
            [
                ("Operations guide",),  # the introduction, and the Backups section it was joined with
                ("Operations guide", "Deploys", "Web"),
                ("Operations guide", "Deploys", "Workers"),
                ("Operations guide", "Rollback"),
            ],
        )
        # The short introduction joined the next section rather than standing alone.
        self.assertTrue(chunks[0].text.startswith("# Operations guide\n\nHow the team runs"))
        self.assertIn("## Backups", chunks[0].text)
        self.assertTrue(chunks[3].text.startswith("Rollback\n--------"))

    def test_small_sections_are_kept_together_up_to_a_quarter_of_the_size(self) -> None:
        chunks = chunk_markdown(GUIDE, size=400, overlap=0)
        self.assertEqual(len(chunks), 1)
        self.assertEqual(chunks[0].text, GUIDE.strip("\n"))
        self.assertEqual(chunks[0].headings, ("Operations guide",))

    def test_a_chunk_never_ends_on_a_heading(self) -> None:
        text = "# A\n\n" + "word " * 60 + "\n\n## B\n\n" + "more " * 60 + "\n"
        chunks = chunk_markdown(text, size=60, overlap=0)
        slices_hold(self, text, chunks)
        for chunk in chunks:
            self.assertFalse(chunk.text.rstrip().endswith("## B"))
        self.assertTrue(any(c.text.startswith("## B") for c in chunks))

    def test_headings_inside_code_fences_are_code(self) -> None:
        text = "# Setup\n\n```sh\n# not a heading\necho hi\n\n# still code\n```\n\nAfter the code.\n"
        chunks = chunk_markdown(text, size=100, overlap=0)
        self.assertEqual([c.headings for c in chunks], [("Setup",)])
        self.assertIn("# still code", chunks[0].text)

    def test_heading_levels_pop_the_path(self) -> None:
        text = "# A\n\n## B\n\n### C\n\n" + "c " * 40 + "\n\n## D\n\n" + "d " * 40 + "\n"
        chunks = chunk_markdown(text, size=50, overlap=0)
        self.assertEqual([c.headings for c in chunks], [("A", "B", "C"), ("A", "D")])

    def test_plain_text_and_odd_input(self) -> None:
        self.assertEqual(chunk_markdown(""), [])
        self.assertEqual(chunk_markdown("\n\n  \n"), [])
        [only] = chunk_markdown("# Just a title")
        self.assertEqual((only.text, only.headings), ("# Just a title", ("Just a title",)))
        [plain] = chunk_markdown("no markdown at all")
        self.assertEqual((plain.text, plain.headings), ("no markdown at all", ()))
        crlf = "# T\r\n\r\nline one\r\nline two\r\n"
        [chunk] = chunk_markdown(crlf)
        self.assertEqual(chunk.text, crlf[: chunk.end])
        self.assertEqual(chunk.headings, ("T",))


class SizeLimitTests(SynchronousTestCase):
    def test_long_paragraphs_are_cut_between_sentences_with_overlap(self) -> None:
        sentences = [f"Sentence {i} tells of step {i} in the procedure." for i in range(60)]
        text = "# Procedure\n\n" + " ".join(sentences) + "\n"
        chunks = chunk_markdown(text, size=80, overlap=20)
        slices_hold(self, text, chunks)
        self.assertGreater(len(chunks), 4)
        for chunk in chunks:
            self.assertLessEqual(chunk.size, 80)
            self.assertEqual(chunk.headings, ("Procedure",))
        for before, after in zip(chunks, chunks[1:], strict=False):
            self.assertLess(after.start, before.end, "consecutive chunks overlap")
            self.assertLessEqual(text_size(text[after.start : before.end]), 20)
            self.assertTrue(after.text.startswith("Sentence "), after.text[:30])
        self.assertEqual(chunks[-1].end, len(text) - 1)

    def test_without_overlap_chunks_follow_each_other(self) -> None:
        text = "\n\n".join(f"Paragraph {i}. " + "filler words here " * 10 for i in range(20))
        chunks = chunk_markdown(text, size=100, overlap=0)
        slices_hold(self, text, chunks)
        for before, after in zip(chunks, chunks[1:], strict=False):
            self.assertGreaterEqual(after.start, before.end)
            self.assertTrue(after.text.startswith("Paragraph "))
        self.assertEqual("".join(c.text for c in chunks).replace("\n", ""), text.replace("\n", ""))

    def test_chinese_is_sized_per_character_and_cut_at_sentence_marks(self) -> None:
        sentence = "每天晚上用工具备份数据库，并在异地保留七份副本。"  # 24 CJK characters
        text = "## 备份\n\n" + sentence * 20 + "\n"
        chunks = chunk_markdown(text, size=100, overlap=30)
        slices_hold(self, text, chunks)
        self.assertGreater(len(chunks), 4)
        for chunk in chunks:
            self.assertLessEqual(chunk.size, 100)
            self.assertEqual(chunk.headings, ("备份",))
        for chunk in chunks[1:]:
            self.assertTrue(chunk.text.startswith("每天晚上"), chunk.text[:10])
        # The same budget holds about four times as many English characters.
        english = chunk_markdown("word " * 2000, size=100, overlap=0)
        self.assertGreater(len(english[0].text), 3 * len(chunks[0].text))

    def test_text_with_no_break_is_cut_anyway(self) -> None:
        text = "x" * 5000
        chunks = chunk_markdown(text, size=100, overlap=0)
        slices_hold(self, text, chunks)
        self.assertEqual("".join(c.text for c in chunks), text)
        self.assertTrue(all(c.size <= 100 for c in chunks))
        chinese = "数" * 450
        chunks = chunk_markdown(chinese, size=100, overlap=10)
        self.assertTrue(all(c.size <= 100 for c in chunks))
        self.assertEqual(chunks[-1].end, 450)

    def test_a_run_of_headings_without_text_is_cut_at_the_size(self) -> None:
        text = "#\n" * 60_000  # was one chunk of 120,000 characters, built in quadratic time
        chunks = chunk_markdown(text, size=400, overlap=50)
        slices_hold(self, text, chunks)
        self.assertTrue(all(text_size(c.text) <= 400 for c in chunks))
        self.assertGreater(len(chunks), 100)
        mixed = "#\n" * 1000 + "Some text.\n\n" + "## B\n" * 1000 + "More text.\n"
        chunks = chunk_markdown(mixed, size=100, overlap=0)
        slices_hold(self, mixed, chunks)
        self.assertTrue(all(text_size(c.text) <= 100 + 100 // 4 for c in chunks))  # a few headings lead text
        self.assertTrue(any("Some text." in c.text for c in chunks) and any("More text." in c.text for c in chunks))

    def test_sizes_are_bounded(self) -> None:
        for size, overlap in ((10, 0), (5000, 0), (100, 60), (100, -1)):
            with self.assertRaises(ValueError):
                chunk_markdown("text", size=size, overlap=overlap)


class IndexedTextTests(SynchronousTestCase):
    def test_the_title_and_headings_lead_the_indexed_text(self) -> None:
        chunk = chunk_markdown(GUIDE, size=56, overlap=0)[1]
        self.assertEqual(indexed_text(chunk, "ops.md"), "ops.md\nOperations guide > Deploys > Web\n" + chunk.text)
        self.assertEqual(indexed_text(chunk_markdown("plain")[0]), "plain")

    def test_the_heading_path_is_bounded(self) -> None:
        # Six levels of 20,000 quotes: 240,000 bytes as JSON (over MariaDB's TEXT) if kept whole.
        quotes = '"' * 20_000
        text = "".join("#" * level + " " + quotes + "\n\n" for level in range(1, 7)) + "The body."
        [*_, last] = chunk_markdown(text, size=4000, overlap=0)
        self.assertEqual(len(last.headings), 6)
        self.assertTrue(all(heading and heading in quotes for heading in last.headings), last.headings)
        self.assertLess(len(json.dumps(list(last.headings)).encode("utf-8")), 65_535 // 4)


class OffTheReactorTests(TestCase):
    @inlineCallbacks
    def test_all_but_short_texts_are_chunked_in_a_thread(self) -> Any:
        short = "A short note."
        self.assertEqual(self.successResultOf(chunked(short, 400, 50)), chunk_markdown(short, 400, 50))
        # 1,000 characters of the worst kind (empty headings) took 2.5 ms: not on the reactor.
        text = "#\n" * 500
        self.assertLess(INLINE_CHUNKING, len(text))
        pending = chunked(text, 400, 50)
        self.assertNoResult(pending)
        self.assertEqual((yield pending), chunk_markdown(text, 400, 50))
