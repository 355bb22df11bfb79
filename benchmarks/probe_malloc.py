"""Why segflow's Dask workers run with MALLOC_MMAP_MAX_=0 and MALLOC_ARENA_MAX=1.

1. Per-pixel forward time of the benchmarks' CNN against the tile side, in one process with 2
   torch threads, under glibc's defaults and under the workers' settings: by default every
   activation above 32 MiB is mmap'd afresh and page-faulted on every layer.
2. Two threads (a Dask worker's two) each running 1-thread forwards over 1056² tiles, with the
   workers' settings with and without MALLOC_ARENA_MAX=1: a thread's own arena is an mmap'd
   heap of at most 64 MiB, so its big blocks are mmap'd whatever MALLOC_MMAP_MAX_ says.

    .venv/bin/python benchmarks/probe_malloc.py      # ~3 min on 2 cores
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PYTHON, build_model, save_results  # noqa: E402

KEEP = {"MALLOC_TRIM_THRESHOLD_": "100000000000", "MALLOC_MMAP_THRESHOLD_": "33554432",
        "MALLOC_MMAP_MAX_": "0"}
WORKER = {**KEEP, "MALLOC_ARENA_MAX": "1"}  # tasks/runtime/cluster.py WORKER_MALLOC
TILES = [256, 384, 512, 768, 1024]
HALO = 10


def per_pixel() -> dict[str, float]:
    """Microseconds per kept pixel for each tile side (2 torch threads, one process)."""
    import torch

    torch.set_num_threads(2)
    module = torch.jit.script(build_model().eval())
    out = {}
    with torch.inference_mode():
        for tile in TILES:
            x = torch.rand(1, 3, tile + 2 * HALO, tile + 2 * HALO)
            module(x)
            module(x)
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < 3:
                module(x).argmax(1)
                n += 1
            out[str(tile)] = 1e6 * (time.perf_counter() - t0) / n / tile ** 2
    return out


def two_threads() -> list[float]:
    """Seconds per 1056² forward in each of two threads, 1 torch thread each."""
    import threading

    import torch

    torch.set_num_threads(1)
    module = torch.jit.script(build_model().eval())
    x = torch.rand(1, 3, 1056, 1056)
    seconds: list[float] = []

    def work() -> None:
        with torch.inference_mode():
            module(x[:, :, :64, :64])
            module(x[:, :, :64, :64])
            t0 = time.perf_counter()
            for _ in range(3):
                module(x).argmax(1)
            seconds.append((time.perf_counter() - t0) / 3)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return seconds


def child(part: str, env: dict[str, str]) -> object:
    proc = subprocess.run([PYTHON, __file__, "--part", part], capture_output=True, text=True,
                          env={**os.environ, **env}, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if "--part" in sys.argv:
        part = sys.argv[sys.argv.index("--part") + 1]
        print(json.dumps(per_pixel() if part == "per_pixel" else two_threads()))
        return
    result = {"per_pixel_us": {"glibc default": child("per_pixel", {}),
                               "worker settings": child("per_pixel", WORKER)},
              "two_threads_s": {"mmap off, per-thread arenas": child("two_threads", KEEP),
                                "worker settings (one arena)": child("two_threads", WORKER)}}
    save_results("malloc", result)
    for env, row in result["per_pixel_us"].items():
        print(f"{env:16s} " + ", ".join(f"{t}²: {us:.2f} µs/px" for t, us in row.items()))
    for env, secs in result["two_threads_s"].items():
        print(f"{env:28s} " + ", ".join(f"{s:.2f}" for s in secs) + " s per 1056² forward")


if __name__ == "__main__":
    main()
