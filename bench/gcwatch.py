"""mcpd with the garbage collector watched: collections by generation, their pauses, and what they freed.

Runs ``python -m mcpd`` in this process with a `gc.callbacks` hook and, when the daemon stops
(SIGTERM), prints per generation the collections, their total and longest pause (CPU time of the
collecting thread: a loaded machine does not stretch it), and the objects they freed (objects only a collection frees were in reference cycles). Drive it with the
shared instrument, then stop it; divide by the requests served for per-request figures::

    PYTHONPATH=.:../shared/bench/anchors .venv/bin/python bench/gcwatch.py -- --port 8003 \\
        --tool-pack mcpd_echo --max-connections 20000 --max-streams-per-key 20000 &
    python3 ../shared/bench/mcp_load.py http http://127.0.0.1:8003/mcp -c 16 -d 8 --warmup 0 --era modern
    kill %1

Only the collections while the start-up heap is frozen count (`mcpd.services.HeapFreezeService`:
from the end of start-up to the shutdown).
"""

from __future__ import annotations

import argparse
import atexit
import gc
import runpy
import sys
import time
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mcpd_args", nargs="*")
    args = parser.parse_args()
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    freed = {0: 0, 1: 0, 2: 0}
    started = [0.0]

    frozen = [False]
    freeze, unfreeze = gc.freeze, gc.unfreeze

    def frozen_now() -> None:
        freeze()
        frozen[0] = True

    def thawed() -> None:
        frozen[0] = False
        unfreeze()

    # Told by the freeze itself: gc.get_freeze_count() walks the whole frozen heap (~10 ms).
    gc.freeze, gc.unfreeze = frozen_now, thawed

    def watch(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.thread_time()
        elif frozen[0]:
            pauses[info["generation"]].append(time.thread_time() - started[0])
            freed[info["generation"]] += info["collected"]

    def report() -> None:
        print(f"gcwatch: threshold {gc.get_threshold()}, while the start-up heap was frozen:", file=sys.stderr)
        for generation, times in pauses.items():
            longest = max(times, default=0.0)
            print(
                f"gcwatch: gen{generation} {len(times)} collections, {sum(times) * 1e3:.1f} ms in all, "
                f"longest {longest * 1e3:.2f} ms, {freed[generation]} objects freed",
                file=sys.stderr,
            )

    gc.callbacks.append(watch)
    atexit.register(report)
    sys.argv = ["mcpd", *args.mcpd_args]
    runpy.run_module("mcpd", run_name="__main__")


if __name__ == "__main__":
    main()
