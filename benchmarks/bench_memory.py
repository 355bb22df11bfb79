"""Peak memory of a whole ``segflow segment`` process tree: does it stay flat as images grow?

The CLI runs as a subprocess; every 0.1 s the RSS of it and all its descendants (Dask nanny and
worker processes, Prefect's temporary server, multiprocessing helpers) is summed with psutil, and
the largest sum is the peak. Synthetic 3-band uint8 GeoTIFFs of smooth multi-octave noise
(6000x6000 and 12000x12000, tiled 512, deflate, written window by window) are segmented with

  * model kind ``otsu`` (``--set model.kind=otsu``; exact global histogram fit, then per chunk);
  * with ``--torchscript``: the throughput benchmark's TorchScript model (tile 1024, halo 10,
    batch 1). Off by default: it adds ~8 minutes on 2 CPU cores;
  * with ``--outputs``: k-means with every output for other tools on: GeoParquet polygons,
    the COG export, uint8 probabilities and zonal statistics over a 10x10 grid of zones given
    in WGS 84 (the raster is UTM).

  * with ``--stac``: Otsu on a STAC item made from the same image: 4 assets as separate
    GeoTIFFs, two at 10 m (bands 1, 2) and two averaged to 20 m (bands 3, 1), resampled
    bilinear onto the 10 m grid window by window (tasks/sources/stac.py).

Target: peak at 12000^2 within 1.3x of the peak at 6000^2, and under 3 GiB.

    .venv/bin/python benchmarks/bench_memory.py [--sizes 6000 12000] [--torchscript] [--outputs]
                                                [--stac]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    GIB,
    MIB,
    OUT,
    LoadMeter,
    fresh_dir,
    gib,
    model_file,
    receptive_field,
    run_segflow,
    save_results,
    wait_for_quiet,
    write_synthetic_geotiff,
    write_torchscript_config,
)


def zone_grid(image: Path, path: Path) -> Path:
    """A 10x10 grid of square zones over ``image``, written in WGS 84."""
    import geopandas as gpd
    import rasterio
    from shapely.geometry import box

    with rasterio.open(image) as ds:
        b, crs = ds.bounds, ds.crs
    dx, dy = (b.right - b.left) / 10, (b.top - b.bottom) / 10
    cells = [box(b.left + i * dx, b.bottom + j * dy, b.left + (i + 1) * dx, b.bottom + (j + 1) * dy)
             for i in range(10) for j in range(10)]
    gpd.GeoDataFrame({"name": [f"z{k}" for k in range(100)]}, geometry=cells,
                     crs=crs).to_crs("EPSG:4326").to_file(path, driver="GeoJSON")
    return path


def stac_item(image: Path, folder: Path) -> Path:
    """A STAC item of 4 single-band GeoTIFFs cut from ``image`` (10 m bands 1, 2; bands 3, 1
    averaged to 20 m), written 1024 rows at a time."""
    import json

    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    item_path = folder / "item.json"
    if item_path.exists():
        return item_path
    folder.mkdir(parents=True, exist_ok=True)
    assets = {}
    with rasterio.open(image) as src:
        for key, band, factor in (("B02", 1, 1), ("B03", 2, 1), ("B08", 3, 2), ("B11", 1, 2)):
            width, height = src.width // factor, src.height // factor
            profile = {**src.profile, "count": 1, "width": width, "height": height,
                       "transform": src.transform * src.transform.scale(factor)}
            with rasterio.open(folder / f"{key}.tif", "w", **profile) as dst:
                for row in range(0, height, 1024):
                    rows = min(1024, height - row)
                    window = Window(0, row * factor, src.width, rows * factor)
                    dst.write(src.read(band, window=window, out_shape=(rows, width),
                                       resampling=Resampling.average),
                              1, window=Window(0, row, width, rows))
            assets[key] = {"href": f"./{key}.tif", "type": "image/tiff; application=geotiff",
                           "roles": ["data"]}
        lon_lat = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]  # not read
    item_path.write_text(json.dumps({
        "type": "Feature", "stac_version": "1.1.0", "id": image.stem, "bbox": [0, 0, 1, 1],
        "geometry": {"type": "Polygon", "coordinates": [lon_lat]},
        "properties": {"datetime": "2024-06-01T00:00:00Z"}, "links": [], "assets": assets}))
    return item_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[6000, 12000])
    ap.add_argument("--torchscript", action="store_true",
                    help="also run the throughput benchmark's TorchScript model (slow)")
    ap.add_argument("--outputs", action="store_true",
                    help="also run k-means with every output for other tools on")
    ap.add_argument("--stac", action="store_true",
                    help="also run Otsu on a STAC item of 4 assets at 10 m and 20 m")
    ap.add_argument("--wait-quiet", type=float, default=180.0)
    args = ap.parse_args()
    started = time.perf_counter()

    images = {}
    for size in args.sizes:
        t0 = time.perf_counter()
        images[size] = write_synthetic_geotiff(OUT / "data" / f"synthetic_{size}.tif", size)
        print(f"image {size}x{size}: {images[size].stat().st_size / MIB:.0f} MiB on disk "
              f"({time.perf_counter() - t0:.0f} s to make or find)")

    # kind -> (config file, --set items for an image size); sources other than the GeoTIFF
    models: dict = {"otsu": (None, lambda size: ["model.kind=otsu"])}
    sources = {}
    if args.torchscript:
        rf = receptive_field()
        cfg = write_torchscript_config(OUT / "configs" / f"memory_torchscript_h{rf}.yaml",
                                       model_file(), rf)
        models["torchscript"] = (cfg, lambda size: [])

    if args.outputs:
        models["outputs"] = (None, lambda size: [
            "model.kind=kmeans", "output.vectors=true", "output.export=true",
            "output.probabilities=true", "stats.zone_id=name",
            f"stats.zones={zone_grid(images[size], OUT / 'data' / f'zones_{size}.geojson')}"])

    if args.stac:
        models["stac"] = (None, lambda size: ["model.kind=otsu",
                                              "input.assets=[B02, B03, B08, B11]",
                                              "input.resampling=bilinear"])
        for size in args.sizes:
            sources[("stac", size)] = stac_item(images[size], OUT / "data" / f"stac_{size}")

    runs_dir = OUT / "runs" / "memory"
    results: dict = {"runs": []}
    for kind, (cfg, sets) in models.items():
        peaks = {}
        for size in args.sizes:
            wait_for_quiet(args.wait_quiet)
            with LoadMeter() as load:
                r = run_segflow(sources.get((kind, size), images[size]),
                                fresh_dir(runs_dir, f"{kind}-{size}"), cfg,
                                sets(size), sample_memory=True, timeout=1800)
            r.pop("stdout", None)
            r.update(model=kind, size=size, load=load.as_dict())
            results["runs"].append(r)
            peaks[size] = r["peak_rss"]
            roles = ", ".join(f"{k} {v / MIB:.0f} MiB" for k, v in
                              sorted(r["peak_rss_by_role"].items(), key=lambda kv: -kv[1]))
            print(f"{kind:11s} {size:>5}^2: peak RSS (tree) {gib(r['peak_rss'])}; wall "
                  f"{r['wall_s']:.1f} s, flow {r['run_seconds']:.1f} s, "
                  f"{r['chunks_total']} chunks, "
                  f"{r['max_processes']} processes\n    per role (each role's own peak): {roles}",
                  flush=True)
        if len(args.sizes) >= 2:
            small, big = min(args.sizes), max(args.sizes)
            ratio = peaks[big] / peaks[small]
            ok = ratio <= 1.3 and peaks[big] < 3 * GIB
            results[f"{kind}_ratio"] = ratio
            print(f"{kind}: peak {big}^2 / peak {small}^2 = {ratio:.2f}x; "
                  f"{'meets' if ok else 'MISSES'} target (<= 1.3x and < 3 GiB)")

    results["benchmark_wall_s"] = time.perf_counter() - started
    path = save_results("memory" + ("_torchscript" if args.torchscript else "")
                        + ("_outputs" if args.outputs else "")
                        + ("_stac" if args.stac else ""), results)
    print(f"\nresults: {path}  (benchmark took {results['benchmark_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
