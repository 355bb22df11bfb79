"""Scaling: the same ``segflow segment`` job on a real Dask cluster of 1 and 2 worker processes.

A ``dask scheduler`` and N ``dask worker --nthreads 1`` processes (DASK_CONFIG=infra/dask, as the
README tells users to start them) on 127.0.0.1; the CLI runs against them with ``--scheduler``
(here ``--set cluster.address=...``, the same setting). Two jobs, 16 chunks each so both workers
have work to share: the benchmarks' TorchScript dilated CNN (_common.py) over a synthetic
2048x2048 3-band GeoTIFF (chunk 512), and adaptive thresholding over a 4096x4096 one (chunk
1024). Figures per run:

  - segment stage: first chunk task start to last chunk task end, from the scheduler's task
    stream (what more workers can speed up);
  - flow seconds: the whole flow as the CLI reports it (open, plan, segment, stats, catalog);
  - wall: the CLI process, including Prefect's temporary server start (a fixed cost).

Each figure is the median of ``--repeat`` runs; each run writes to a fresh --out.

    .venv/bin/python benchmarks/bench_scaling.py [--size 2048] [--adaptive-size 4096]
        [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    OUT,
    PYTHON,
    REPO,
    fresh_dir,
    model_file,
    receptive_field,
    run_segflow,
    save_results,
    wait_for_quiet,
    write_synthetic_geotiff,
    write_torchscript_config,
)


def start_cluster(workers: int, folder: Path) -> tuple[str, list[subprocess.Popen]]:
    """A ``dask scheduler`` and ``workers`` single-thread ``dask worker`` processes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["DASK_CONFIG"] = str(REPO / "infra" / "dask")
    file = folder / "scheduler.json"
    folder.mkdir(parents=True, exist_ok=True)
    file.unlink(missing_ok=True)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    procs = [subprocess.Popen([PYTHON, "-m", "distributed.cli.dask_scheduler", "--host",
                               "127.0.0.1", "--port", "0", "--scheduler-file", str(file),
                               "--no-dashboard"], **quiet)]
    while not file.exists():
        time.sleep(0.1)
    address = json.loads(file.read_text())["address"]
    procs += [subprocess.Popen([PYTHON, "-m", "distributed.cli.dask_worker", address,
                                "--nworkers", "1", "--nthreads", "1", "--no-dashboard"], **quiet)
              for _ in range(workers)]
    return address, procs


def one_run(workers: int, image: Path, config: Path) -> dict[str, Any]:
    from distributed import Client, get_task_stream

    address, procs = start_cluster(workers, OUT / "runs" / "scaling" / "cluster")
    try:
        with Client(address, set_as_default=False, timeout=60) as client:
            client.wait_for_workers(workers, timeout=60)
            wait_for_quiet()
            with get_task_stream(client) as stream:
                r = run_segflow(image, fresh_dir(OUT / "runs" / "scaling", f"w{workers}"),
                                config, sets=[f"cluster.address={address}"])
                time.sleep(1.0)  # the scheduler fills the stream a beat after tasks end
        chunks = [t for t in stream.data if str(t["key"]).startswith("chunk-")]
        starts = [s["start"] for t in chunks for s in t["startstops"] if s["action"] == "compute"]
        stops = [s["stop"] for t in chunks for s in t["startstops"] if s["action"] == "compute"]
        return {"workers": workers, "wall_s": r["wall_s"], "flow_s": r["run_seconds"],
                "segment_s": max(stops) - min(starts), "chunks": len(chunks),
                "chunk_workers": len({t["worker"] for t in chunks}), "command": r["command"]}
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(30)


def configs(weights: Path) -> dict[str, Path]:
    """The two jobs: the TorchScript CNN (torch runs cores / Dask threads intra-op threads per
    worker, so one worker already fills this host) and adaptive thresholding (scipy, one core
    per task: what extra processes can add on one host)."""
    folder = OUT / "configs"
    torch_cfg = write_torchscript_config(folder / "scaling_torchscript.yaml", weights,
                                         receptive_field())
    torch_cfg.write_text(torch_cfg.read_text().replace("chunk: 2048", "chunk: 512")
                         .replace("tile: 1024", "tile: 512"))
    adaptive = folder / "scaling_adaptive.yaml"
    adaptive.write_text("model: {kind: adaptive, params: {block_size: 49}}\n"
                        "tiling: {chunk: 1024, halo: 32}\n")
    return {"torchscript": torch_cfg, "adaptive": adaptive}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048, help="the TorchScript job's image side")
    ap.add_argument("--adaptive-size", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    jobs = configs(model_file())
    sizes = {"torchscript": args.size, "adaptive": args.adaptive_size}
    results: dict[str, Any] = {}
    for job, config in jobs.items():
        image = write_synthetic_geotiff(OUT / "data" / f"synthetic_{sizes[job]}.tif", sizes[job])
        print(f"{job}: {image.name}", flush=True)
        rows = []
        for _ in range(args.repeat):
            for workers in (1, 2):  # interleaved, so drift of a shared host hits both alike
                row = one_run(workers, image, config)
                rows.append(row)
                print(f"  {workers} worker(s): segment {row['segment_s']:.1f} s, flow "
                      f"{row['flow_s']:.1f} s, wall {row['wall_s']:.1f} s, {row['chunks']} "
                      f"chunks on {row['chunk_workers']} worker(s)", flush=True)
        median = {w: {k: statistics.median(r[k] for r in rows if r["workers"] == w)
                      for k in ("segment_s", "flow_s", "wall_s")} for w in (1, 2)}
        speedup = {k: median[1][k] / median[2][k] for k in median[1]}
        print("  speed-up 1 -> 2 workers: "
              + ", ".join(f"{k} {v:.2f}x" for k, v in speedup.items()), flush=True)
        results[job] = {"image": str(image), "size": sizes[job], "config": config.read_text(),
                        "rows": rows, "median": median, "speedup": speedup}
    print(f"results: {save_results('scaling', results)}")


if __name__ == "__main__":
    main()
