"""Benchmark the knowledge base through mcpd: kb.add ingest (chunks/s) and kb.search latency
(p50/p99) in keyword mode on Milvus Lite embedded (mcpd's default), at growing sizes, and the
memory (RSS) mcpd takes for them.

mcpd runs with its defaults (SQLite and Milvus Lite in its data directory, no embedding service:
keyword search), serving ``server,kb``. Documents are Debian's manual pages (manpages-dev),
chunked as kb.add chunks them (400 tokens); past the pages' own chunks the pages are added again
with a copy number in their title. ``--clients`` threads call kb.add at once over Streamable HTTP
(2026-07-28, stateless); at each size, ``--queries`` kb.search calls of two words from the
corpus run one after the other. RSS is mcpd's process tree (Milvus Lite runs inside it).

    .venv/bin/python bench/kb.py --sizes 10000,100000 --queries 300
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench`, `mcpd` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mcp_client import post  # noqa: E402
from bench.procs import ServerProcess, free_port, wait_until  # noqa: E402
from bench.store import headers, message  # noqa: E402
from tests import corpus  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COLLECTION = "bench"


CALL_TIMEOUT = 120.0  # a search of 100,000 chunks on a loaded machine took more than 10 s


def call(port: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    body = post(port, message(tool, arguments, 1), headers(tool), timeout=CALL_TIMEOUT).response_to(1)
    result = body.get("result")
    if result is None or result.get("isError"):
        raise RuntimeError(f"{tool} failed: {body}")
    return result  # type: ignore[no-any-return]


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        stack += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


class Ingest:
    """kb.add from several threads until the collection holds ``target`` chunks."""

    def __init__(self, port: int, pages: list[Any], clients: int) -> None:
        self.port = port
        self.pages = pages
        self.clients = clients
        self.next = 0
        self.chunks = 0
        self.pending = 0
        self.lock = threading.Lock()

    def _take(self, target: int) -> int | None:
        with self.lock:
            if self.chunks >= target:
                return None
            number, self.next = self.next, self.next + 1
            return number

    def _worker(self, target: int) -> None:
        while (number := self._take(target)) is not None:
            page = self.pages[number % len(self.pages)]
            copy = number // len(self.pages)
            result = call(
                self.port,
                "kb.add",
                {
                    "collection": COLLECTION,
                    "title": f"{page.name} (copy {copy})",
                    "text": page.markdown,
                    "metadata": {"copy": copy},
                },
            )
            added = result["structuredContent"]
            with self.lock:
                self.chunks += added["document"]["chunks"]
                # pending: saved, indexing took longer than kb.add waits (it goes on).
                self.pending += added["indexing"] != "done"

    def run(self, target: int) -> tuple[int, float]:
        """Add until ``target`` chunks; (chunks added, seconds)."""
        before, started = self.chunks, time.monotonic()
        threads = [threading.Thread(target=self._worker, args=(target,)) for _ in range(self.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return self.chunks - before, time.monotonic() - started


def searches(port: int, words: list[str], count: int) -> list[float]:
    latencies = []
    rng = random.Random(7)
    for _ in range(count):
        query = " ".join(rng.sample(words, 2))
        started = time.monotonic()
        found = call(port, "kb.search", {"collection": COLLECTION, "query": query, "limit": 10})["structuredContent"]
        latencies.append(time.monotonic() - started)
        if found["mode"] != "keyword":
            raise RuntimeError(f"searched in {found['mode']} mode")
    return latencies


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="chunk counts to measure at (comma-separated)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--clients", type=int, default=4, help="threads calling kb.add at once")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between the writes and the first search")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    pages = corpus.english()
    if not pages:
        print("bench/kb.py needs Debian's manpages-dev (apt-get install manpages-dev)", file=sys.stderr)
        return 2
    words = sorted({w for page in pages for w in page.description.lower().split() if w.isalpha() and len(w) > 3})
    workdir = Path(tempfile.mkdtemp(prefix="mcpd-bench-kb-"))
    port = free_port()
    command = [
        args.python,
        "-m",
        "mcpd",
        "--port",
        str(port),
        "--toolsets",
        "server,kb",
        "--data-dir",
        str(workdir / "data"),
    ]
    rows = []
    with ServerProcess(
        command, log_path=workdir / "mcpd.log", cwd=workdir, env={**os.environ, "PYTHONPATH": str(REPO)}
    ) as server:
        if not wait_until(lambda: _answers(port), 60):
            raise RuntimeError(f"mcpd did not start:\n{server.log_tail()}")
        assert server.process is not None
        pid = server.process.pid
        idle = tree_rss(pid)
        call(port, "kb.create_collection", {"name": COLLECTION})
        ingest = Ingest(port, pages, args.clients)
        for size in sizes:
            added, seconds = ingest.run(size)
            # Milvus Lite flushes 0.5 s after the last write, and the index builds its BM25 index
            # 2 s after that flush (mcpd.stores.milvus.LITE_WARM_DELAYS).
            time.sleep(args.settle)
            started = time.monotonic()
            searches(port, words, 1)  # the first search after the writes; timed apart
            first = time.monotonic() - started
            caught_up = _caught_up(port)  # writes answered pending are indexed by now
            if caught_up is None:
                raise RuntimeError("the index did not catch up with the writes in 10 minutes")
            latencies = searches(port, words, args.queries)
            row = {
                "chunks": ingest.chunks,
                "documents": ingest.next,
                "ingest_chunks_per_s": round(added / seconds, 1),
                "search_p50_ms": round(statistics.median(latencies) * 1000, 2),
                "search_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
                "first_search_ms": round(first * 1000, 1),
                "answered_pending": ingest.pending,
                "catch_up_s": round(caught_up, 1),
                "rss_mb": round(tree_rss(pid) / 2**20, 1),
                "idle_rss_mb": round(idle / 2**20, 1),
            }
            rows.append(row)
            print(
                f"{row['chunks']:>7} chunks ({row['documents']} documents): ingest {row['ingest_chunks_per_s']:>7} "
                f"chunks/s, kb.search p50 {row['search_p50_ms']} ms p99 {row['search_p99_ms']} ms, RSS "
                f"{row['rss_mb']} MB (idle {row['idle_rss_mb']} MB); first search {row['first_search_ms']} ms; "
                f"{row['answered_pending']} kb.add answered pending, caught up in {row['catch_up_s']} s",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def _caught_up(port: int, timeout: float = 600.0) -> float | None:
    """Seconds until kb.search says the index is not behind (None: not within ``timeout``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        found = call(port, "kb.search", {"collection": COLLECTION, "query": "caught up", "limit": 1})
        if found["structuredContent"]["index"] == "ok":
            return time.monotonic() - started
        time.sleep(0.5)
    return None


def _answers(port: int) -> bool:
    try:
        call(port, "server.info", {})
        return True
    except Exception:  # noqa: BLE001 -- not up yet
        return False


if __name__ == "__main__":
    sys.exit(main())
