"""GPU path of the deep models: segflow's per-chunk inference vs the bare model, fp32 and AMP.

Runs segflow's own ``UNetModel.predict`` (the code a Dask worker runs per chunk: normalisation,
tiles with halo, batches, crop or Gaussian stitching, argmax) on the bundled demo U-Net over a
large scene made by tiling the real 5-band Landsat sample, and the bare network over the same
pixels in whole tiles. Reports Mpx/s and how often AMP's mask differs from fp32's. Works on CPU
too; on a GPU host it proves the CUDA path. No Dask or Prefect: the device machine may lack them.

    python benchmarks/bench_gpu.py --size 8192
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from segflow.tasks.config import load_config
from segflow.tasks.models import InputSpec, build_model
from segflow.tasks.plan.grid import plan_chunks

REPO = Path(__file__).resolve().parents[1]


def scene(size: int) -> np.ndarray:
    """The real sample scene (5, 443, 489) mirrored and tiled to (5, size, size)."""
    cached = REPO / "benchmarks" / "out" / "nc_scene.npy"
    if cached.exists():
        base = np.load(cached)
    else:
        import rasterio

        with rasterio.open(REPO / "samples" / "nc_lsat7_2000_b12345.tif") as src:
            base = src.read().astype(np.float32)
        base[base < -1e4] = 0
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(cached, base)
    tile = np.concatenate([base, base[:, ::-1]], axis=1)
    tile = np.concatenate([tile, tile[:, :, ::-1]], axis=2)
    reps = (1, -(-size // tile.shape[1]), -(-size // tile.shape[2]))
    return np.ascontiguousarray(np.tile(tile, reps)[:, :size, :size])


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_segflow(pixels: np.ndarray, overrides: list[str], chunk: int) -> tuple[np.ndarray, float]:
    cfg = load_config(REPO / "configs" / "landcover_unet.yaml", overrides)
    model = build_model(cfg, InputSpec(bands=5, dtype="float32"), "bench")
    plan = plan_chunks(pixels.shape[1:], chunk, cfg.tiling.halo, stride=model.stride)
    valid = np.ones(pixels.shape[1:], bool)
    out = np.empty(pixels.shape[1:], np.uint8)
    model.predict(pixels[:, :256, :256], valid[:256, :256], (slice(0, 256), slice(0, 256)))
    sync()  # warm-up: module load, cuDNN autotuning
    clock = time.perf_counter()
    for c in plan.chunks:
        out[c.core] = model.predict(pixels[(slice(None), *c.read)], valid[c.read], c.crop)
    sync()
    return out, time.perf_counter() - clock


def run_bare(pixels: np.ndarray, tile: int, batch: int, amp: bool) -> tuple[float, int]:
    """The network alone over the same pixels in whole tiles: no halo, no stitching."""
    cfg = load_config(REPO / "configs" / "landcover_unet.yaml")
    model = build_model(cfg, InputSpec(bands=5, dtype="float32"), "bench")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = model._module(device)
    mean = np.asarray(cfg.model.normalize.mean, np.float32)[:, None, None]
    std = np.asarray(cfg.model.normalize.std, np.float32)[:, None, None]
    side = pixels.shape[1] // tile * tile
    tiles = [(y, x) for y in range(0, side, tile) for x in range(0, side, tile)]
    ctx = torch.autocast("cuda", dtype=torch.float16) if amp and device == "cuda" else \
        torch.autocast("cpu", enabled=False)
    sync()
    clock = time.perf_counter()
    with torch.inference_mode(), ctx:
        for i in range(0, len(tiles), batch):
            stack = np.stack([(pixels[:, y:y + tile, x:x + tile] - mean) / std
                              for y, x in tiles[i:i + batch]])
            net(torch.from_numpy(stack).to(device)).argmax(1).cpu()
    sync()
    return time.perf_counter() - clock, side * side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--tile", default="auto", help="pixels, or auto (the default)")
    parser.add_argument("--batch", default="auto", help="tiles per forward, or auto")
    args = parser.parse_args()
    pixels = scene(args.size)
    mpx = args.size ** 2 / 1e6
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    tiling = [f"tiling.tile={args.tile}", f"tiling.batch={args.batch}"]
    report: dict[str, object] = {"device": device, "torch": torch.__version__,
                                 "size": args.size, "chunk": args.chunk, "tile": args.tile,
                                 "batch": args.batch}
    masks = {}
    for name, extra in (("crop_fp32", []), ("crop_amp", ["model.amp=true"]),
                        ("gaussian_amp", ["model.amp=true", "tiling.stitch=gaussian"])):
        masks[name], seconds = run_segflow(pixels, tiling + extra, args.chunk)
        report[f"segflow_{name}_mpx_s"] = round(mpx / seconds, 2)
    for amp in (False, True):
        seconds, pixels_done = run_bare(pixels, args.tile, args.batch, amp)
        report[f"bare_{'amp' if amp else 'fp32'}_mpx_s"] = round(pixels_done / 1e6 / seconds, 2)
    report["amp_vs_fp32_mask_differs"] = float((masks["crop_amp"] != masks["crop_fp32"]).mean())
    report["gaussian_vs_crop_differs"] = float((masks["gaussian_amp"] != masks["crop_amp"]).mean())
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
