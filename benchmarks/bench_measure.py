"""What per-object measurements cost, and what they do to memory as images grow.

Cell-like 2-band uint8 GeoTIFFs (tiled 512, written window by window): bright discs of radius
3-4 px with their own brightness per band, one per lattice cell of ``spacing`` px (jittered),
on a dim noisy background. Each image is segmented by ``segflow segment`` (threshold 100,
default chunks) twice: with ``stats.instances`` only, and with
``stats.measure=[shape, intensity]`` (10 shape and 2 x 6 intensity measurements per object).
The measurement cost per million objects is the difference of the two runs' flow times over
the object count; the peak RSS is the whole process tree's (``TreeSampler``).

Images: ``dense`` at two sizes (4x the pixels, 4x the objects), and ``sparse`` at the larger
size with the smaller one's object count (4x the pixels, the same objects): what grows with
pixels and what with objects, apart.

    .venv/bin/python benchmarks/bench_measure.py [--sizes 4000 8000] [--spacing 12]
    .venv/bin/python benchmarks/bench_measure.py --properties   # where an object's time goes

``--properties`` times scikit-image's ``regionprops_table`` one property at a time on a 1000²
crop of the dense image (one thread, in this process), as segflow calls it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MIB, OUT, fresh_dir, run_segflow, save_results, wait_for_quiet  # noqa: E402


def write_cells(path: Path, size: int, spacing: int, seed: int = 0, block: int = 512) -> Path:
    """``size``² px of discs on a ``spacing``-px lattice; returns the path (kept if present)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=size, height=size, count=2, dtype="uint8",
                   crs="EPSG:32633", transform=from_origin(500000.0, 5500000.0, 0.5, 0.5),
                   tiled=True, blockxsize=512, blockysize=512, compress="deflate")
    n = size // spacing
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"))  # (2, n, n)
    centre = grid * spacing + spacing // 2 + rng.integers(-2, 3, (2, n, n))  # rows, cols
    radius = rng.uniform(3.0, 4.2, (n, n))
    bright = rng.integers(120, 250, (2, n, n))
    tmp = path.with_suffix(".partial.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, size, block):
            for c in range(0, size, block):
                h, w = min(block, size - r), min(block, size - c)
                yy, xx = np.mgrid[r:r + h, c:c + w]
                i, j = np.clip(yy // spacing, 0, n - 1), np.clip(xx // spacing, 0, n - 1)
                inside = ((yy - centre[0][i, j]) ** 2 + (xx - centre[1][i, j]) ** 2
                          <= radius[i, j] ** 2)
                out = rng.integers(5, 40, (2, h, w)).astype(np.uint8)
                for b in range(2):
                    out[b][inside] = bright[b][i, j][inside]
                dst.write(out, window=Window(c, r, w, h))
    tmp.rename(path)
    return path


def one(image: Path, measure: bool) -> dict:
    sets = ["model.kind=threshold", "model.params.value=100", "stats.instances=true",
            "output.pyramid=false"]
    if measure:
        sets.append("stats.measure=[shape, intensity]")
    wait_for_quiet()
    result = run_segflow(image, fresh_dir(OUT / "measure", image.stem), sets=sets,
                         sample_memory=True, timeout=3600)
    result.pop("stdout")
    return result


def per_property(spacing: int) -> None:
    """µs per object of each regionprops property segflow asks for, on a 1000² crop."""
    import time

    import rasterio
    from skimage.measure import label, regionprops_table

    from segflow.tasks.measure.features import SHAPE, intensity_stats

    path = write_cells(OUT / "data" / f"cells_2000_{spacing}.tif", 2000, spacing)
    with rasterio.open(path) as ds:
        pixels = ds.read(window=((0, 1000), (0, 1000)))
    labels = label(pixels[0] > 100, connectivity=1)
    n = int(labels.max())
    intensity = np.moveaxis(pixels.astype(np.float64), 0, -1)

    def median(mask: np.ndarray, values: np.ndarray) -> float:
        return float(np.median(values[mask]))

    def integrated(mask: np.ndarray, values: np.ndarray) -> float:
        return float(values[mask].sum())

    cases = {p: ([p], []) for p in SHAPE[2]}
    cases["every shape property"] = (list(SHAPE[2]), [])
    cases["regionprops mean, std, min, max (2 bands)"] = (
        ["intensity_mean", "intensity_std", "intensity_min", "intensity_max"], [])
    cases["regionprops median, integrated (2 bands)"] = ([], [median, integrated])
    for name, (props, extra) in cases.items():
        start = time.perf_counter()
        regionprops_table(labels, intensity_image=intensity, properties=["label", *props],
                          extra_properties=extra, spacing=(0.5, 0.5))
        print(f"{name:42s} {(time.perf_counter() - start) / n * 1e6:7.0f} µs per object "
              f"({n} objects)")
    start = time.perf_counter()
    ids = np.arange(1, n + 1)
    for band in pixels:
        intensity_stats(labels, band.astype(np.float64), ids)
    print(f"{'segflow: all six statistics (2 bands)':42s} "
          f"{(time.perf_counter() - start) / n * 1e6:7.0f} µs per object ({n} objects)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs=2, default=[4000, 8000])
    parser.add_argument("--spacing", type=int, default=12)
    parser.add_argument("--properties", action="store_true")
    args = parser.parse_args()
    if args.properties:
        per_property(args.spacing)
        return
    small, large = args.sizes
    factor = large // small
    images = {"dense-small": (small, args.spacing), "dense-large": (large, args.spacing),
              "sparse-large": (large, args.spacing * factor)}
    runs = []
    for name, (size, spacing) in images.items():
        path = write_cells(OUT / "data" / f"cells_{size}_{spacing}.tif", size, spacing)
        objects = (size // spacing) ** 2
        plain, measured = one(path, False), one(path, True)
        extra = measured["run_seconds"] - plain["run_seconds"]
        row = {"image": name, "size": size, "spacing": spacing, "objects": objects,
               "instances_only": plain, "measured": measured,
               "measure_seconds": extra, "seconds_per_million": extra / objects * 1e6}
        runs.append(row)
        roles = measured["peak_rss_by_role"]
        print(f"{name}: {size}² px, {objects} objects: flow {plain['run_seconds']:.1f} s -> "
              f"{measured['run_seconds']:.1f} s with measurements "
              f"({row['seconds_per_million']:.0f} s per million objects); peak RSS "
              f"{plain['peak_rss'] / MIB:.0f} -> {measured['peak_rss'] / MIB:.0f} MiB "
              f"(CLI {roles.get('segflow-cli', 0) / MIB:.0f}, worker "
              f"{roles.get('dask-worker', 0) / MIB:.0f} MiB)", flush=True)
    save_results("measure", {"runs": runs})


if __name__ == "__main__":
    main()
