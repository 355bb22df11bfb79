"""Scale-out estimate: a 100-gigapixel job split as segflow splits it, on a real Dask scheduler
with many simulated GPU workers.

- the scheduler: a real ``dask scheduler`` process on 127.0.0.1;
- the workers: ``--workers`` (default 100) real ``distributed.Worker`` objects, one thread each
  (one per GPU, as on a GPU host), all in one separate process (this machine has 2 cores);
- the work: segflow's own chunk plan (``plan_chunks``) and lanes (``tasks.mask.run.lanes``),
  submitted with ``client.map`` and collected with ``as_completed`` as ``run_chunks`` does; each
  chunk of a lane sleeps for the per-chunk GPU time (``--chunk-seconds``, default: a 2048²
  chunk at the 24.4 Mpx/s segflow reached per chunk on an H100, BENCHMARKS.md §6) and writes
  a small shard file (one byte per 128² pixels), as the real lane writes its own Zarr shard.

It reports the end-to-end time against the ideal (chunks x seconds / workers), the task
throughput, and the scheduler's CPU time per task. On this 2-core machine the simulated
workers' own Python (100 event loops and threads in one process) is the bottleneck, not the
scheduler; the projection for that many real GPU hosts is therefore
max(ideal, scheduler CPU time) + submission time: the scheduler is one core and each
task costs it the measured CPU time.

    .venv/bin/python benchmarks/bench_scaleout.py [--gigapixels 100] [--workers 100]
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import OUT, PYTHON, fresh_dir, save_results  # noqa: E402

WORKERS_PROCESS = """
import asyncio, sys
from distributed import Worker

async def main(address, n):
    workers = [Worker(address, nthreads=1, dashboard=False, name=f"gpu-{i}",
                      resources={"GPU": 1}) for i in range(n)]
    await asyncio.gather(*workers)
    print("ready", flush=True)
    await asyncio.gather(*(w.finished() for w in workers))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def simulated_lane(chunks: list, seconds: float, store: str, ratio: int) -> int:
    """A lane of a GPU worker: each chunk costs ``seconds`` of device time, then its shard (a
    small file named by the chunk, one byte per ``ratio``² pixels, as a Zarr shard would be)."""
    for chunk in chunks:
        time.sleep(seconds)
        cells = (chunk.core[0].stop - chunk.core[0].start) // ratio
        name = "_".join(map(str, chunk.index))
        with open(f"{store}/{name}", "wb") as shard:
            shard.write(bytes(cells * cells))
    return len(chunks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gigapixels", type=float, default=100.0)
    p.add_argument("--workers", type=int, default=100)
    p.add_argument("--chunk", type=int, default=2048)
    p.add_argument("--chunk-seconds", type=float, default=2048 ** 2 / 24.4e6)
    args = p.parse_args()

    import psutil
    from distributed import Client, as_completed

    from segflow.tasks.mask.run import lanes
    from segflow.tasks.plan.grid import plan_chunks

    side = int(math.sqrt(args.gigapixels * 1e9))
    plan = plan_chunks((side, side), args.chunk, 32)
    ratio = 128  # one byte of the simulated store per 128² pixels
    store = fresh_dir(OUT / "scaleout", "labels")
    store.mkdir()
    port = 8790
    scheduler = subprocess.Popen([PYTHON, "-m", "distributed.cli.dask_scheduler", "--host",
                                  "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"tcp://127.0.0.1:{port}"
    workers = subprocess.Popen([PYTHON, "-c", WORKERS_PROCESS, address, str(args.workers)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(args.workers, timeout=300)
            groups = lanes(plan.chunks, args.workers)
            sched = psutil.Process(scheduler.pid)
            cpu0 = sum(sched.cpu_times()[:2])
            t0 = time.perf_counter()
            futures = client.map(simulated_lane, groups, seconds=args.chunk_seconds,
                                 store=str(store), ratio=ratio, resources={"GPU": 1},
                                 key=[f"chunk-{i}" for i in range(len(groups))])
            submitted = time.perf_counter() - t0
            done = sum(f.result() for f in as_completed(futures))
            wall = time.perf_counter() - t0
            scheduler_cpu = sum(sched.cpu_times()[:2]) - cpu0
    finally:
        workers.terminate()
        scheduler.terminate()
        workers.wait(30)
        scheduler.wait(30)
    assert done == len(plan.chunks) == len(list(store.iterdir()))
    ideal = len(plan.chunks) * args.chunk_seconds / args.workers
    result = {"gigapixels": args.gigapixels, "side": side, "chunk": args.chunk,
              "chunks": len(plan.chunks), "lane_tasks": len(groups), "workers": args.workers,
              "chunk_seconds": args.chunk_seconds, "submit_s": submitted, "wall_s": wall,
              "ideal_s": ideal, "overhead_s": wall - ideal, "efficiency": ideal / wall,
              "tasks_per_s": len(groups) / wall, "chunks_per_s": len(plan.chunks) / wall,
              "scheduler_cpu_s": scheduler_cpu,
              "scheduler_cpu_per_task_ms": 1e3 * scheduler_cpu / len(groups),
              # on real GPU hosts the workers' own Python does not share 2 cores: the job
              # takes the ideal time unless the scheduler saturates (one core)
              "projected_s": max(ideal, scheduler_cpu) + submitted}
    save_results("scaleout", result)
    print(f"{args.gigapixels:g} Gpx ({side}², {len(plan.chunks)} chunks of {args.chunk}², "
          f"{len(groups)} lane tasks) on {args.workers} simulated GPU workers at "
          f"{args.chunk_seconds:.3f} s/chunk: {wall:.1f} s end to end (ideal {ideal:.1f} s, "
          f"efficiency {ideal / wall:.0%}); submit {submitted:.1f} s; "
          f"{len(plan.chunks) / wall:.0f} chunks/s, {len(groups) / wall:.0f} tasks/s; scheduler "
          f"CPU {scheduler_cpu:.1f} s ({1e3 * scheduler_cpu / len(groups):.1f} ms/task); "
          f"projected on {args.workers} GPU hosts: {result['projected_s']:.1f} s")


if __name__ == "__main__":
    main()
