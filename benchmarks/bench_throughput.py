"""Throughput: ``segflow segment`` end to end vs the bare model vs MONAI sliding-window inference.

One compute-heavy stride-1 TorchScript model (5 dilated 3x3 convs, 32-48 channels, receptive-field
radius 10 px, 1x1 conv to 4 classes; built here with a fixed seed) over one synthetic 4096x4096
3-band uint8 GeoTIFF (tiled 512, deflate, EPSG:32633):

  a) segflow: the CLI as a subprocess (Prefect temporary server, LocalCluster, Zarr store,
     stats, catalog: everything a user pays), plus the same CLI on a 64x64 image with the same
     config, the fixed cost, so that ``segflow - fixed`` is the part that scales with pixels;
  b) bare: the scripted model in-process, image fully in memory, non-overlapping 1024x1024
     tiles, no halo, argmax; torch.set_num_threads(2);
  c) MONAI sliding_window_inference (roi 512, overlap 0.25, gaussian, sw_batch_size 4), argmax,
     same model and threads.

(b) and (c) run in fresh subprocesses of this script so peak RSS is per method.

Everything is measured twice: with glibc's default malloc settings (what a user gets), and with
settings that keep freed memory in the heap (MALLOC_MMAP_MAX_=0, MALLOC_ARENA_MAX=1, a huge
MALLOC_TRIM_THRESHOLD_, also passed to the Dask workers through the nanny's pre-spawn environ),
because on this VM page faults on torch's freshly mmap'd activations are ~half of a forward's
cost (see benchmarks/probe_threads.py). MONAI runs in the first pass only.

    .venv/bin/python benchmarks/bench_throughput.py [--size 4096] [--repeat 1] [--skip-monai]
        [--default-malloc-only]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    OUT,
    PYTHON,
    TreeSampler,
    fresh_dir,
    gib,
    measured,
    model_file,
    model_macs_per_pixel,
    receptive_field,
    run_segflow,
    save_results,
    write_synthetic_geotiff,
    write_torchscript_config,
)

THREADS = 2
BARE_TILE = 1024


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def load_image(path: Path):
    """The whole image as a float32 (1, 3, H, W) tensor scaled to [0, 1], as segflow scales."""
    import numpy as np
    import rasterio
    import torch

    t0 = time.perf_counter()
    with rasterio.open(path) as ds:
        pixels = ds.read()
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0)[None]
    return x, time.perf_counter() - t0


def part_bare(image: Path, weights: Path, tile: int = BARE_TILE) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(THREADS)
    module = torch.jit.load(str(weights), map_location="cpu").eval()
    x, read_s = load_image(image)
    _, _, h, w = x.shape
    out = np.empty((h, w), np.uint8)
    with torch.inference_mode():
        module(x[:, :, :64, :64])  # warm-up: TorchScript profiling runs, allocator
        with TreeSampler(__import__("os").getpid()) as mem:
            t0 = time.perf_counter()
            for r in range(0, h, tile):
                for c in range(0, w, tile):
                    out[r:r + tile, c:c + tile] = module(x[:, :, r:r + tile, c:c + tile]) \
                        .argmax(dim=1)[0].to(torch.uint8).numpy()
            seconds = time.perf_counter() - t0
    return {"seconds": seconds, "read_s": read_s, "peak_rss": mem.peak,
            "class_counts": np.bincount(out.ravel(), minlength=4).tolist()}


def part_monai(image: Path, weights: Path) -> dict:
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    torch.set_num_threads(THREADS)
    module = torch.jit.load(str(weights), map_location="cpu").eval()
    x, read_s = load_image(image)
    with torch.inference_mode():
        module(x[:, :, :64, :64])
        with TreeSampler(__import__("os").getpid()) as mem:
            t0 = time.perf_counter()
            logits = sliding_window_inference(x, roi_size=(512, 512), sw_batch_size=4,
                                              predictor=module, overlap=0.25, mode="gaussian")
            labels = logits.argmax(dim=1)[0].to(torch.uint8).numpy()
            seconds = time.perf_counter() - t0
    return {"seconds": seconds, "read_s": read_s, "peak_rss": mem.peak,
            "class_counts": np.bincount(labels.ravel(), minlength=4).tolist()}


def run_part(name: str, image: Path, weights: Path, env: dict[str, str],
             tile: int = BARE_TILE) -> dict:
    """Run one in-process method in a fresh interpreter; its JSON is the last stdout line."""
    cmd = [PYTHON, __file__, "--part", name, "--image", str(image), "--weights", str(weights),
           "--bare-tile", str(tile)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, **env})
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.perf_counter() - t0
    return result


# glibc returns every large (> 32 MiB) block to the kernel on free, so each conv layer's
# activations are fresh pages: on this VM page faults are most of a forward's cost. "tuned" keeps
# freed memory in the heap, in every process of the run, Dask workers included (their nanny
# otherwise sets MALLOC_TRIM_THRESHOLD_=65536).
ALLOCATORS = {
    "glibc default": {},
    "malloc keeps memory": {
        "MALLOC_MMAP_MAX_": "0", "MALLOC_ARENA_MAX": "1", "MALLOC_TRIM_THRESHOLD_": "100000000000",
        "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": json.dumps({
            "MALLOC_TRIM_THRESHOLD_": "100000000000", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}),
    },
}


# The Dask nanny's own worker malloc setting, as segflow had it before tasks/cluster.py set
# MALLOC_TRIM_THRESHOLD_/MALLOC_MMAP_THRESHOLD_ for its workers: the nanny prefers variables
# already in the environment over its config, and 131072 is glibc's static mmap threshold, which
# is what any explicit trim threshold freezes it at.
NANNY_DEFAULT_MALLOC = {"MALLOC_TRIM_THRESHOLD_": "65536", "MALLOC_MMAP_THRESHOLD_": "131072"}


def measure(label: str, env: dict[str, str], image: Path, tiny: Path, weights: Path,
            config: Path, fixed_repeat: int, repeat: int, monai: bool,
            wait_quiet: float) -> dict:
    """Every method once (segflow ``repeat`` times) under one malloc environment."""
    runs_dir = OUT / "runs" / "throughput"
    res: dict = {"allocator": label, "env": env, "load": {}}

    def phase(name, fn):
        return measured(name, fn, res["load"], wait_quiet)

    print(f"\n[{label}] {' '.join(f'{k}={v}' for k, v in env.items()) or '(no malloc settings)'}")
    fixed = []
    for i in range(fixed_repeat):
        r = phase(f"segflow_fixed_{i}", lambda: run_segflow(
            tiny, fresh_dir(runs_dir, "fixed"), config, env=env))
        r.pop("stdout", None)
        fixed.append(r)
        print(f"  segflow fixed cost (64x64, same config) #{i + 1}: {r['wall_s']:.1f} s wall, "
              f"flow {r['run_seconds']:.1f} s", flush=True)
    seg = []
    for i in range(repeat):
        r = phase(f"segflow_{i}", lambda: run_segflow(
            image, fresh_dir(runs_dir, "big"), config, env=env, sample_memory=True))
        r.pop("stdout", None)
        seg.append(r)
        print(f"  segflow {image.stem}: {r['wall_s']:.1f} s wall, flow {r['run_seconds']:.1f} s, "
              f"{r['chunks_computed']} chunks, peak RSS (tree) {gib(r['peak_rss'])}", flush=True)
    bare = phase("bare", lambda: run_part("bare", image, weights, env))
    print(f"  bare model: {bare['seconds']:.1f} s (+{bare['read_s']:.1f} s to read the image), "
          f"peak RSS {gib(bare['peak_rss'])}", flush=True)
    mon = None
    if monai:
        mon = phase("monai", lambda: run_part("monai", image, weights, env))
        print(f"  MONAI sliding window: {mon['seconds']:.1f} s, peak RSS {gib(mon['peak_rss'])}",
              flush=True)

    fixed_s = statistics.median(r["wall_s"] for r in fixed)
    fixed_flow_s = statistics.median(r["run_seconds"] for r in fixed)
    seg_s = statistics.median(r["wall_s"] for r in seg)
    seg_flow_s = statistics.median(r["run_seconds"] for r in seg)
    b = bare["seconds"]
    ratios = {
        "segflow_wall/bare": seg_s / b,
        "(segflow_wall-fixed_wall)/bare": (seg_s - fixed_s) / b,
        "segflow_flow/bare": seg_flow_s / b,
        "(segflow_flow-fixed_flow)/bare": (seg_flow_s - fixed_flow_s) / b,
    }
    if mon:
        ratios["monai/bare"] = mon["seconds"] / b
    print(f"  ratios [{label}] (target: segflow end-to-end <= 1.3x bare, goal 1.1x)")
    for k, v in ratios.items():
        print(f"    {k:34s} {v:5.2f}x")
    res.update(segflow_fixed=fixed, segflow_fixed_wall_s=fixed_s,
               segflow_fixed_flow_s=fixed_flow_s, segflow=seg, segflow_wall_s=seg_s,
               segflow_flow_s=seg_flow_s, bare=bare, monai=mon, ratios=ratios)
    return res


def tile_sweep(image: Path, weights: Path, config: Path, wait_quiet: float) -> None:
    """Tile size matters more than anything else here: segflow and bare at 256-pixel tiles."""
    runs_dir = OUT / "runs" / "throughput"
    rows = []
    for tile, batch, env_name in ((256, 1, "as configured"), (256, 8, "as configured"),
                                  (256, 1, "Dask nanny default malloc")):
        loads: dict = {}
        r = measured("segflow", lambda tile=tile, batch=batch, env_name=env_name: run_segflow(
            image, fresh_dir(runs_dir, f"t{tile}b{batch}"), config,
            sets=[f"tiling.tile={tile}", f"tiling.batch={batch}"],
            env=NANNY_DEFAULT_MALLOC if env_name != "as configured" else None,
            sample_memory=True), loads, wait_quiet)
        r.pop("stdout", None)
        r.update(method="segflow", tile=tile, batch=batch, env=env_name, load=loads["segflow"])
        rows.append(r)
        print(f"  segflow tile {tile} batch {batch} ({env_name}): {r['wall_s']:.1f} s wall, "
              f"flow {r['run_seconds']:.1f} s, peak RSS (tree) {gib(r['peak_rss'])}", flush=True)
    for tile in (256, 1024):
        loads = {}
        r = measured("bare", lambda tile=tile: run_part("bare", image, weights, {}, tile=tile),
                     loads, wait_quiet)
        r.update(method="bare", tile=tile, batch=1, env="glibc default", load=loads["bare"])
        rows.append(r)
        print(f"  bare model, {tile} tiles: {r['seconds']:.1f} s, peak RSS {gib(r['peak_rss'])}",
              flush=True)
    path = save_results("throughput_tile_sweep", {"image": str(image), "rows": rows})
    print(f"results: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=1, help="segflow runs on the big image")
    ap.add_argument("--fixed-repeat", type=int, default=2, help="segflow runs on the 64x64 image")
    ap.add_argument("--halo-multiple", type=int, default=1,
                    help="round the halo (= receptive field) up to this multiple")
    ap.add_argument("--skip-monai", action="store_true")
    ap.add_argument("--default-malloc-only", action="store_true",
                    help="skip the second pass with malloc settings that keep freed memory")
    ap.add_argument("--wait-quiet", type=float, default=180.0,
                    help="wait up to this many seconds for an idle machine before each part")
    ap.add_argument("--part", choices=["bare", "monai"], help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--bare-tile", type=int, default=BARE_TILE, help=argparse.SUPPRESS)
    ap.add_argument("--tile-sweep", action="store_true",
                    help="only: segflow at tile 256 (batch 1 and 8; batch 1 also with the Dask "
                         "nanny's default worker malloc) and the bare model at 256 and 1024 "
                         "tiles (~3.5 min)")
    args = ap.parse_args()

    if args.part:
        if args.part == "bare":
            print(json.dumps(part_bare(Path(args.image), Path(args.weights), args.bare_tile)))
        else:
            print(json.dumps(part_monai(Path(args.image), Path(args.weights))))
        return

    started = time.perf_counter()
    weights = model_file()
    rf = receptive_field()
    halo = round_up(rf, args.halo_multiple)
    image = write_synthetic_geotiff(OUT / "data" / f"synthetic_{args.size}.tif", args.size)
    tiny = write_synthetic_geotiff(OUT / "data" / "synthetic_64.tif", 64)
    config = write_torchscript_config(OUT / "configs" / f"throughput_h{halo}.yaml", weights, halo)
    print(f"model: {weights.name}, receptive field {rf} px, halo {halo}, "
          f"{model_macs_per_pixel():,} MACs/pixel; image {args.size}x{args.size}x3 uint8")

    if args.tile_sweep:
        tile_sweep(image, weights, config, args.wait_quiet)
        return

    variants = []
    for i, (label, env) in enumerate(ALLOCATORS.items()):
        if i and args.default_malloc_only:
            break
        variants.append(measure(label, env, image, tiny, weights, config,
                                args.fixed_repeat if i == 0 else 1, args.repeat,
                                monai=not args.skip_monai and i == 0,
                                wait_quiet=args.wait_quiet))

    path = save_results("throughput", {
        "image": str(image), "size": args.size, "pixels": args.size ** 2, "model": weights.name,
        "receptive_field": rf, "halo": halo, "macs_per_pixel": model_macs_per_pixel(),
        "config": config.read_text(), "threads": THREADS, "variants": variants,
        "benchmark_wall_s": time.perf_counter() - started,
    })
    print(f"\nresults: {path}  (benchmark took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
