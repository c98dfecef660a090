"""Benchmark the search index on Milvus Lite (embedded, as mcpd runs it by default): ingest rate,
keyword (BM25) search latency and the memory it costs, at growing sizes.

    .venv/bin/python bench/vector_index.py                      # 10,000 and 100,000 chunks
    .venv/bin/python bench/vector_index.py --sizes 10000 --queries 500 --json out.json

The chunks are Debian's manual pages (manpages, manpages-dev: apt-get install manpages
manpages-dev), chunked as the kb pack chunks them; past the pages' own chunks the same texts are
indexed again for further tenants (tenant t0 holds the first copy, t1 the second, ...), so each
search is filtered to one tenant as mcpd's are. Ingest goes through `MilvusIndex.upsert` in
batches (what the re-indexer does), search through `MilvusIndex.search` from the reactor (what a
kb.search does, minus the tool call). RSS is this process's: Milvus Lite runs inside it (with
``--uri``, the index is another process and this one holds only the client).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `mcpd` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import ensureDeferred  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402

from mcpd.interfaces import CollectionSpec, IndexedChunk, SearchQuery  # noqa: E402
from mcpd.packs.chunking import chunk_markdown, indexed_text  # noqa: E402
from mcpd.stores.milvus import LITE_FLUSH_DELAY, MilvusIndex  # noqa: E402
from tests import corpus  # noqa: E402

SECTIONS = ("man2", "man3", "man7")


def rss_mb() -> float:
    """This process's resident memory now, in MB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def texts_and_queries() -> tuple[list[tuple[str, str]], list[str]]:
    """(document, indexed text) of every chunk of the English pages, and their descriptions."""
    pages = list(corpus.pages([corpus.MAN_ROOT / section for section in SECTIONS]))
    if not pages:
        raise SystemExit("no manual pages found: apt-get install manpages manpages-dev")
    chunks = [(page.name, indexed_text(chunk)) for page in pages for chunk in chunk_markdown(page.markdown)]
    return chunks, sorted({page.description for page in pages})


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    base, descriptions = texts_and_queries()
    print(f"corpus: {len(base)} distinct chunks from {len(descriptions)} pages ({', '.join(SECTIONS)})")
    rss_start = rss_mb()
    uri = args.uri or os.path.join(args.dir or tempfile.mkdtemp(prefix="mcpd-bench-milvus-"), "milvus.db")
    index = MilvusIndex(uri, reactor, timeout=120.0, prefix=f"bench{os.getpid()}_")
    index.startService()
    await index.check()
    await index.create_collection(CollectionSpec("kb_bench"))
    rss_connected = rss_mb()
    where = "connected to " + args.uri if args.uri else "with Milvus Lite started"
    print(f"RSS: {rss_start:.0f} MB before the index, {rss_connected:.0f} MB {where}, the index empty")
    rows: list[dict[str, Any]] = []
    held = 0
    rng = random.Random(7)
    for size in args.sizes:
        started = time.perf_counter()
        added = size - held
        while held < size:
            batch = []
            for i in range(held, min(size, held + args.batch)):
                document, text = base[i % len(base)]
                tenant = f"t{i // len(base)}"
                batch.append(IndexedChunk(f"c{i}", tenant, f"{tenant}/{document}", text))
            await index.upsert("kb_bench", batch)
            held += len(batch)
        ingest = time.perf_counter() - started
        await deferLater(reactor, LITE_FLUSH_DELAY * 4)  # the last flush
        tenants = max(1, (size + len(base) - 1) // len(base))
        latencies = []
        for n in range(args.queries + 10):
            query = SearchQuery(f"t{rng.randrange(tenants)}", rng.choice(descriptions), limit=10)
            began = time.perf_counter()
            await index.search(["kb_bench"], query)
            if n >= 10:  # the first ten warm up
                latencies.append(time.perf_counter() - began)
        row = {
            "chunks": size,
            "ingest_chunks_per_s": round(added / ingest, 1),
            "search_p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
            "search_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
            "queries": len(latencies),
            "rss_mb": round(rss_mb(), 0),
            "rss_over_empty_mb": round(rss_mb() - rss_connected, 0),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
        }
        rows.append(row)
        print(
            f"{size:>7} chunks: ingest {row['ingest_chunks_per_s']:>7.0f} chunks/s, keyword search "
            f"p50 {row['search_p50_ms']:.1f} ms p99 {row['search_p99_ms']:.1f} ms ({row['queries']} queries), "
            f"RSS {row['rss_mb']:.0f} MB (+{row['rss_over_empty_mb']:.0f} over the empty index, peak {row['peak_rss_mb']:.0f})",
            flush=True,
        )
    await index.drop_collection("kb_bench")
    await index.stopService()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="index sizes to measure at, ascending")
    parser.add_argument("--queries", type=int, default=300, help="keyword searches per size")
    parser.add_argument("--batch", type=int, default=100, help="chunks per upsert")
    parser.add_argument("--dir", help="where the Milvus Lite file goes (default: a temporary directory)")
    parser.add_argument("--uri", help="a Milvus server instead (http://127.0.0.1:19530, or milvus-lite server)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    outcome: dict[str, Any] = {}

    def done(result: Any) -> None:
        outcome["result"] = result
        reactor.stop()  # type: ignore[attr-defined]

    reactor.callWhenRunning(lambda: ensureDeferred(run(args)).addBoth(done))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    result = outcome.get("result")
    if not isinstance(result, list):
        print(result)
        raise SystemExit(1)
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "rows": result}, indent=2))


if __name__ == "__main__":
    main()
