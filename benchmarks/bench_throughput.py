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

    .venv/bin/python benchmarks/bench_throughput.py [--size 4096] [--repeat 1] [--skip-monai]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (OUT, PYTHON, TreeSampler, fresh_dir, gib, machine, model_file,  # noqa: E402
                     model_macs_per_pixel, receptive_field, run_segflow, save_results,
                     write_synthetic_geotiff)

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


def part_bare(image: Path, weights: Path) -> dict:
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
            for r in range(0, h, BARE_TILE):
                for c in range(0, w, BARE_TILE):
                    tile = x[:, :, r:r + BARE_TILE, c:c + BARE_TILE]
                    out[r:r + BARE_TILE, c:c + BARE_TILE] = \
                        module(tile).argmax(dim=1)[0].to(torch.uint8).numpy()
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


def run_part(name: str, image: Path, weights: Path) -> dict:
    """Run one in-process method in a fresh interpreter; its JSON is the last stdout line."""
    cmd = [PYTHON, __file__, "--part", name, "--image", str(image), "--weights", str(weights)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.perf_counter() - t0
    return result


def write_config(path: Path, weights: Path, halo: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "model:\n"
        "  kind: torchscript\n"
        f"  weights: {weights}\n"
        f"  params: {{receptive_field: {receptive_field()}}}\n"
        f"tiling: {{chunk: 2048, tile: 1024, halo: {halo}, batch: 1}}\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=1, help="segflow runs on the big image")
    ap.add_argument("--fixed-repeat", type=int, default=2, help="segflow runs on the 64x64 image")
    ap.add_argument("--halo-multiple", type=int, default=1,
                    help="round the halo (= receptive field) up to this multiple")
    ap.add_argument("--skip-monai", action="store_true")
    ap.add_argument("--part", choices=["bare", "monai"], help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.part:
        fn = part_bare if args.part == "bare" else part_monai
        print(json.dumps(fn(Path(args.image), Path(args.weights))))
        return

    started = time.perf_counter()
    weights = model_file()
    rf = receptive_field()
    halo = round_up(rf, args.halo_multiple)
    image = write_synthetic_geotiff(OUT / "data" / f"synthetic_{args.size}.tif", args.size)
    tiny = write_synthetic_geotiff(OUT / "data" / "synthetic_64.tif", 64)
    config = write_config(OUT / "configs" / f"throughput_h{halo}.yaml", weights, halo)
    pixels = args.size * args.size
    print(f"model: {weights.name}, receptive field {rf} px, halo {halo}, "
          f"{model_macs_per_pixel():,} MACs/pixel; image {args.size}x{args.size}x3 uint8")

    runs_dir = OUT / "runs" / "throughput"
    fixed = []
    for i in range(args.fixed_repeat):
        r = run_segflow(tiny, fresh_dir(runs_dir, "fixed"), config)
        fixed.append(r)
        print(f"segflow fixed cost (64x64, same config) #{i + 1}: {r['wall_s']:.1f} s wall, "
              f"flow {r['run_seconds']:.1f} s")
    fixed_s = statistics.median(r["wall_s"] for r in fixed)
    fixed_flow_s = statistics.median(r["run_seconds"] for r in fixed)

    seg = []
    for i in range(args.repeat):
        r = run_segflow(image, fresh_dir(runs_dir, "big"), config, sample_memory=True)
        seg.append(r)
        print(f"segflow {args.size}^2 #{i + 1}: {r['wall_s']:.1f} s wall, flow "
              f"{r['run_seconds']:.1f} s, {r['chunks_computed']} chunks, peak RSS (tree) "
              f"{gib(r['peak_rss'])}")
    seg_s = statistics.median(r["wall_s"] for r in seg)
    seg_flow_s = statistics.median(r["run_seconds"] for r in seg)

    bare = run_part("bare", image, weights)
    print(f"bare model: {bare['seconds']:.1f} s (+{bare['read_s']:.1f} s to read the image), "
          f"peak RSS {gib(bare['peak_rss'])}")
    monai = None
    if not args.skip_monai:
        monai = run_part("monai", image, weights)
        print(f"MONAI sliding window: {monai['seconds']:.1f} s, peak RSS {gib(monai['peak_rss'])}")

    b = bare["seconds"]
    ratios = {
        "segflow_wall/bare": seg_s / b,
        "(segflow_wall-fixed_wall)/bare": (seg_s - fixed_s) / b,
        "segflow_flow/bare": seg_flow_s / b,
        "(segflow_flow-fixed_flow)/bare": (seg_flow_s - fixed_flow_s) / b,
    }
    if monai:
        ratios["monai/bare"] = monai["seconds"] / b
    print("\nratios (target: segflow end-to-end <= 1.3x bare, goal 1.1x)")
    for k, v in ratios.items():
        print(f"  {k:34s} {v:5.2f}x")

    for r in fixed + seg:
        r.pop("stdout", None)
    path = save_results("throughput", {
        "image": str(image), "size": args.size, "pixels": pixels, "model": weights.name,
        "receptive_field": rf, "halo": halo, "macs_per_pixel": model_macs_per_pixel(),
        "config": config.read_text(), "threads": THREADS,
        "segflow_fixed": fixed, "segflow_fixed_wall_s": fixed_s,
        "segflow_fixed_flow_s": fixed_flow_s, "segflow": seg, "segflow_wall_s": seg_s,
        "segflow_flow_s": seg_flow_s, "bare": bare, "monai": monai, "ratios": ratios,
        "benchmark_wall_s": time.perf_counter() - started,
    })
    print(f"\nresults: {path}  (benchmark took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
