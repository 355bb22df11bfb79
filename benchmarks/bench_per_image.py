"""Per-image cost, side by side in one run: what a user pays per image, cold and warm.

A. 4096² 3-band scene, the benchmarks' TorchScript CNN (receptive field 10 px) with
   ``tiling: {chunk: 1024, halo: 16}`` and every other key default (tile and batch ``auto``):
   ``segflow segment`` end to end (CLI subprocess, nothing running: Prefect's temporary API,
   LocalCluster, store, stats, catalog) against the bare model over the same pixels (in memory,
   non-overlapping 1024² tiles, no halo, 2 torch threads) and MONAI's sliding_window_inference
   (roi 512, overlap 0.25, gaussian, sw_batch_size 4). The bare model runs twice: with glibc's
   default malloc (a user's script) and with the malloc settings segflow gives its workers.
B. Fixed cost: ``segflow segment`` of a 64² image (otsu), cold (nothing running) and warm
   (``segflow server start`` first; its start is not counted).
C. ``segflow batch`` over 32 images of 1024² with model A, cold and warm, against 32 x the bare
   model's time per image (read + one forward over the image + argmax).
D. A slide with ~76 % glass (``configs/pathology.yaml``, level 0, chunk 1024): the Prefect
   ``segment`` stage's time with and without skipping glass chunks (warm server).

    .venv/bin/python benchmarks/bench_per_image.py [--size 4096] [--batch 32] [--skip-monai]
    .venv/bin/python benchmarks/bench_per_image.py --fixed-only      # B alone, ~2 min
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

import bench_throughput  # noqa: E402
from _common import (  # noqa: E402
    OUT,
    PYTHON,
    REPO,
    SEGFLOW,
    fresh_dir,
    model_file,
    receptive_field,
    run_segflow,
    save_results,
    write_synthetic_geotiff,
)
from bench_slide_volume import make_slide  # noqa: E402

#: the malloc settings segflow's LocalCluster gives its workers (tasks/runtime/cluster.py)
WORKER_MALLOC = {"MALLOC_TRIM_THRESHOLD_": "100000000000", "MALLOC_MMAP_THRESHOLD_": "33554432",
                 "MALLOC_MMAP_MAX_": "0", "MALLOC_ARENA_MAX": "1"}
HOME = OUT / "segflow-home"
COLD = {"SEGFLOW_HOME": str(HOME), "SEGFLOW_SERVER": "off"}
WARM = {"SEGFLOW_HOME": str(HOME)}


def config(path: Path, weights: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"model:\n  kind: torchscript\n  weights: {weights}\n"
                    f"  params: {{receptive_field: {receptive_field()}}}\n"
                    "tiling: {chunk: 1024, halo: 16}\n")
    return path


# ------------------------------------------------------------------ in-process baselines


def part_bare(images: list[str], weights: str, tile: int) -> dict[str, Any]:
    """bench_throughput's bare model over each image in turn, times and peaks combined."""
    runs = [bench_throughput.part_bare(Path(image), Path(weights), tile) for image in images]
    return {"seconds": sum(r["seconds"] for r in runs), "read_s": sum(r["read_s"] for r in runs),
            "peak_rss": max(r["peak_rss"] for r in runs)}


def part_monai(image: str, weights: str) -> dict[str, Any]:
    return bench_throughput.part_monai(Path(image), Path(weights))


def run_part(name: str, env: dict[str, str], **kwargs: Any) -> dict[str, Any]:
    """One baseline in a fresh interpreter (its own memory and malloc settings)."""
    proc = subprocess.run([PYTHON, __file__, "--part", name, "--args", json.dumps(kwargs)],
                          capture_output=True, text=True, env={**os.environ, **env}, check=False)
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ segflow


def cli(*args: str, env: dict[str, str], timeout: float = 1800) -> float:
    """Wall seconds of one ``segflow`` call (it must succeed)."""
    t0 = time.perf_counter()
    proc = subprocess.run([SEGFLOW, *args], capture_output=True, text=True, cwd=REPO,
                          env={**{k: v for k, v in os.environ.items()
                                  if k != "PREFECT_API_URL"}, **env}, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"segflow {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def segment_stage_seconds(api_url: str) -> float:
    """The ``segment`` task run's duration of the latest segment_image flow run."""
    import httpx

    run = httpx.post(f"{api_url}/flow_runs/filter", json={
        "flows": {"name": {"any_": ["segment_image"]}}, "limit": 1,
        "sort": "START_TIME_DESC"}).json()[0]
    tasks = httpx.post(f"{api_url}/task_runs/filter", json={
        "flow_runs": {"id": {"any_": [run["id"]]}}, "limit": 50}).json()
    [stage] = [t for t in tasks if t["name"].startswith("segment-")]
    return float(stage["total_run_time"])


def fixed_cost(tiny: Path, runs: Path) -> dict[str, Any]:
    """B: 3 cold calls, then the warm server started (not counted), one call not counted
    (the server's first flow run), 3 warm calls; the server is left running."""
    tiny_args = ["segment", str(tiny), "--set", "model.kind=otsu"]
    cold = [cli(*tiny_args, "--out", str(fresh_dir(runs, "tiny")), env=COLD) for _ in range(3)]
    t0 = time.perf_counter()
    cli("server", "start", env=WARM)
    server_start = time.perf_counter() - t0
    cli(*tiny_args, "--out", str(fresh_dir(runs, "tiny")), env=WARM)
    warm = [cli(*tiny_args, "--out", str(fresh_dir(runs, "tiny")), env=WARM) for _ in range(3)]
    return {"cold_s": cold, "warm_s": warm, "server_start_s": server_start}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--skip-monai", action="store_true")
    p.add_argument("--fixed-only", action="store_true", help="part B only (~2 min)")
    p.add_argument("--part")
    p.add_argument("--args")
    args = p.parse_args()
    if args.part:  # a baseline, in its own interpreter
        part = {"bare": part_bare, "monai": part_monai}[args.part]
        print(json.dumps(part(**json.loads(args.args))))
        return

    data = OUT / "data"
    runs = OUT / "runs" / "per_image"
    tiny = write_synthetic_geotiff(data / "synthetic_64.tif", 64)
    if args.fixed_only:
        try:
            b = fixed_cost(tiny, runs)
        finally:
            cli("server", "stop", env=WARM)
        save_results("fixed_cost_cold_warm", b)
        print(f"B fixed cost: cold {statistics.median(b['cold_s']):.1f} s, warm "
              f"{statistics.median(b['warm_s']):.2f} s; server start {b['server_start_s']:.1f} s")
        return
    weights = model_file()
    cfg = config(OUT / "configs" / "per_image.yaml", weights)
    big = write_synthetic_geotiff(data / f"synthetic_{args.size}.tif", args.size)
    folder = data / f"batch_{args.batch}x1024"
    images = [write_synthetic_geotiff(folder / f"scene_{i:02d}.tif", 1024, seed=i)
              for i in range(args.batch)]
    slide = make_slide(data / "slide_8000x9000.tif", 8000, 9000)
    r: dict[str, Any] = {"size": args.size, "batch": args.batch}
    subprocess.run([SEGFLOW, "server", "stop"], env={**os.environ, **WARM},
                   capture_output=True, check=False)

    print("A. one big image, cold", flush=True)
    seg = run_segflow(big, fresh_dir(runs, "big"), cfg, env=COLD, sample_memory=True)
    r["A"] = {"segflow_s": seg["wall_s"], "segflow_run_seconds": seg["run_seconds"],
              "segflow_peak_rss": seg["peak_rss"],
              "bare_default_malloc": run_part("bare", {}, images=[str(big)],
                                              weights=str(weights), tile=1024),
              "bare_worker_malloc": run_part("bare", WORKER_MALLOC, images=[str(big)],
                                             weights=str(weights), tile=1024)}
    if not args.skip_monai:
        r["A"]["monai"] = run_part("monai", {}, image=str(big), weights=str(weights))
    print(json.dumps(r["A"], default=str), flush=True)
    save_results("per_image", r)  # kept even if a later part fails

    print("B. fixed cost, cold then warm", flush=True)
    try:
        r["B"] = fixed_cost(tiny, runs)
        cold, server_start = r["B"]["cold_s"], r["B"]["server_start_s"]
        state = json.loads((HOME / "server.json").read_text())
        print(json.dumps(r["B"]), flush=True)
        save_results("per_image", r)  # kept even if a later part fails

        print(f"C. batch of {args.batch} x 1024², warm then cold", flush=True)
        batch_args = ["batch", str(folder), "--config", str(cfg)]
        batch_warm = cli(*batch_args, "--out", str(fresh_dir(runs, "batch")), env=WARM)

        print("D. slide, skipping glass or not (warm)", flush=True)
        stage = {}
        for skip in (True, False):
            cli("segment", str(slide), "--out", str(fresh_dir(runs, "slide")), "--config",
                str(REPO / "configs" / "pathology.yaml"), "--set", "input.target_mpp=null",
                "--set", "tiling.chunk=1024", "--set", f"tiling.skip_empty={str(skip).lower()}",
                env=WARM)
            stage["skip" if skip else "no_skip"] = segment_stage_seconds(state["api_url"])
        r["D"] = stage
        print(json.dumps(stage), flush=True)
        save_results("per_image", r)  # kept even if a later part fails
    finally:
        cli("server", "stop", env=WARM)
    batch_cold = cli(*batch_args, "--out", str(fresh_dir(runs, "batch")), env=COLD)
    bare_batch = {label: run_part("bare", env, images=[str(i) for i in images],
                                  weights=str(weights), tile=1024)
                  for label, env in (("default_malloc", {}), ("worker_malloc", WORKER_MALLOC))}
    r["C"] = {"warm_s": batch_warm, "cold_s": batch_cold, "bare": bare_batch}
    print(json.dumps(r["C"], default=str), flush=True)
    path = save_results("per_image", r)

    a, c = r["A"], r["C"]
    fixed = statistics.median(cold)
    print(f"\nA {args.size}²: segflow {a['segflow_s']:.1f} s; bare "
          f"{a['bare_default_malloc']['seconds']:.1f} s "
          f"(worker malloc {a['bare_worker_malloc']['seconds']:.1f} s)"
          + (f"; MONAI {a['monai']['seconds']:.1f} s" if "monai" in a else ""))
    print(f"B fixed cost: cold {fixed:.1f} s (runs {', '.join(f'{x:.1f}' for x in cold)}), warm "
          f"{statistics.median(r['B']['warm_s']):.2f} s; server start {server_start:.1f} s")
    for label in ("default_malloc", "worker_malloc"):
        bare = c["bare"][label]["seconds"] + c["bare"][label]["read_s"]
        print(f"C batch {args.batch}: warm {c['warm_s']:.1f} s, cold {c['cold_s']:.1f} s; bare "
              f"({label}) {bare:.1f} s = {bare / args.batch:.2f} s/image; per-image overhead "
              f"warm {(c['warm_s'] - bare) / args.batch:.2f} s, cold "
              f"{(c['cold_s'] - fixed - bare) / args.batch:.2f} s")
    print(f"D slide segment stage: skipping {stage['skip']:.1f} s, not {stage['no_skip']:.1f} s "
          f"({stage['no_skip'] / stage['skip']:.1f}x)")
    print(f"figures: {path}")


if __name__ == "__main__":
    main()
