"""Slides and volumes: the speed-up from skipping glass chunks on a slide that is mostly
background, peak memory at two slide sizes, and 3-D TorchScript throughput against the bare model.

    .venv/bin/python benchmarks/bench_slide_volume.py      # ~6 min on 2 cores

Slides are the real CMU-1 H&E region (tests/data/cmu1_pyramid.tif) tiled onto a glass canvas
(noise around RGB 236) and written as pyramidal tiled TIFFs with their pixel size; the volume is
the real T1 MRI (tests/data/nibabel_anatomical.nii) upsampled to 192x240x160 1 mm voxels.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from _common import OUT, REPO, fresh_dir, gib, machine, measured, run_segflow, save_results

DATA = REPO / "tests" / "data"
CONFIGS = REPO / "configs"


def make_slide(path: Path, height: int, width: int) -> Path:
    """Tissue copies on glass: the tissue covers ~25 % of the slide whatever its size."""
    import tifffile

    if path.exists():
        return path
    tissue = tifffile.imread(DATA / "cmu1_pyramid.tif", level=0)
    th, tw = tissue.shape[:2]
    rng = np.random.default_rng(0)
    canvas = np.clip(rng.normal(236, 3, (height, width, 3)), 0, 255).astype(np.uint8)
    for y in range(0, height - th + 1, 2 * th):
        for x in range(0, width - tw + 1, 2 * tw):
            canvas[y:y + th, x:x + tw] = tissue
    per_cm = 1e4 / 0.499
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        opts = dict(tile=(256, 256), compression="zlib", photometric="rgb")
        tif.write(canvas, subifds=3, resolution=(per_cm, per_cm), resolutionunit="CENTIMETER",
                  **opts)
        level = canvas
        for _ in range(3):
            level = level[::2, ::2]
            tif.write(level, subfiletype=1, **opts)
    return path


def make_volume(path: Path) -> Path:
    import nibabel as nib
    from scipy.ndimage import zoom

    if path.exists():
        return path
    img = nib.load(DATA / "nibabel_anatomical.nii")
    data = zoom(np.asarray(img.dataobj).astype(np.float32), (192 / 33, 240 / 41, 160 / 25),
                order=1).astype(np.int16)
    affine = img.affine.copy()
    affine[:3, :3] = np.diag([-1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def model_3d(path: Path) -> Path:
    import torch

    if path.exists():
        return path
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv3d(16, 16, 3, padding=2, dilation=2), torch.nn.ReLU(),
        torch.nn.Conv3d(16, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv3d(16, 4, 1)).eval()
    torch.jit.script(net).save(str(path))
    return path


def bare_3d(volume: Path, weights: Path, tile: int) -> float:
    """The model over the same voxels, non-overlapping tiles, 2 torch threads, no halo."""
    import nibabel as nib
    import torch

    torch.set_num_threads(2)
    x = np.asarray(nib.load(volume).dataobj).astype(np.float32) / 32767.0
    module = torch.jit.load(str(weights)).eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, x.shape[0], tile):
            for j in range(0, x.shape[1], tile):
                for k in range(0, x.shape[2], tile):
                    block = x[i:i + tile, j:j + tile, k:k + tile]
                    module(torch.from_numpy(np.ascontiguousarray(block))[None, None]).argmax(1)
    return time.perf_counter() - t0


def main() -> None:
    data = OUT / "data"
    data.mkdir(parents=True, exist_ok=True)
    runs = OUT / "runs"
    loads: dict = {}
    results: dict = {"machine": machine()}

    slide = make_slide(data / "slide_8000x9000.tif", 8000, 9000)
    sets = ["input.target_mpp=null", "tiling.chunk=1024"]
    for skip in (True, False):
        name = f"slide_skip_{skip}"
        flags = sets + [f"tiling.skip_empty={str(skip).lower()}"]
        r = measured(name, lambda n=name, f=flags: run_segflow(
            slide, fresh_dir(runs, n), CONFIGS / "pathology.yaml", f, sample_memory=True), loads)
        results[name] = {k: v for k, v in r.items() if k != "stdout"}
        skipped = r["stdout"].split("chunks:")[1].split("\n")[0]
        print(f"slide 8000x9000 skip={skip}: wall {r['wall_s']:.1f} s, flow "
              f"{r['run_seconds']:.1f} s, peak {gib(r['peak_rss'])}; chunks:{skipped}", flush=True)
    on, off = results["slide_skip_True"], results["slide_skip_False"]
    print(f"  speed-up of the flow from skipping glass: "
          f"{off['run_seconds'] / on['run_seconds']:.2f}x", flush=True)

    big = make_slide(data / "slide_16000x18000.tif", 16000, 18000)
    r = measured("slide_big", lambda: run_segflow(
        big, fresh_dir(runs, "slide_big"), CONFIGS / "pathology.yaml",
        sets + ["tiling.skip_empty=true"], sample_memory=True), loads)
    results["slide_big"] = {k: v for k, v in r.items() if k != "stdout"}
    print(f"slide 16000x18000 skip=True: wall {r['wall_s']:.1f} s, flow {r['run_seconds']:.1f} s, "
          f"peak {gib(r['peak_rss'])} ({r['peak_rss'] / on['peak_rss']:.2f}x the 8000x9000 "
          f"slide)", flush=True)

    volume = make_volume(data / "head_192x240x160.nii")
    weights = model_3d(OUT / "models" / "dilated3d_r4.pt")
    voxels = 192 * 240 * 160
    cfg = ["model.kind=torchscript", f"model.weights={weights}", "model.params.receptive_field=4",
           "tiling.chunk=96", "tiling.tile=96", "tiling.halo=4", "tiling.batch=1"]
    r = measured("volume_segflow", lambda: run_segflow(
        volume, fresh_dir(runs, "volume"), None, cfg, sample_memory=True), loads)
    results["volume_segflow"] = {k: v for k, v in r.items() if k != "stdout"}
    bare = measured("volume_bare", lambda: bare_3d(volume, weights, 96), loads)
    results["volume_bare_s"] = bare
    print(f"volume 192x240x160, 3-D CNN (r=4): segflow wall {r['wall_s']:.1f} s, flow "
          f"{r['run_seconds']:.1f} s ({voxels / r['run_seconds'] / 1e6:.2f} Mvoxel/s), "
          f"bare {bare:.1f} s ({voxels / bare / 1e6:.2f} Mvoxel/s); flow/bare "
          f"{r['run_seconds'] / bare:.2f}x, peak {gib(r['peak_rss'])}", flush=True)
    results["loads"] = loads
    print(f"results: {save_results('slide_volume', results)}")


if __name__ == "__main__":
    main()
