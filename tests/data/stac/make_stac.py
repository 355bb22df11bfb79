"""Sentinel-2-like STAC test data made from the real Landsat 7 scene in ``samples/``: per-band
COGs at two resolutions with a scene-classification (cloud) band, and four overlapping tiles
for mosaics, each written as a STAC Item with ``proj:`` and band (``raster:``/``eo:``) metadata.

    python tests/data/stac/make_stac.py OUT [--href-base s3://bucket/prefix]

* ``OUT/scene/scene.json`` (STAC 1.1 ``bands``): blue, green, red at the scene's 28.5 m ("10 m")
  and nir, swir16 averaged to 57 m ("20 m"), stored as uint16 ``DN = 100 * value + 1000`` with
  ``raster:scale`` 0.01 and ``raster:offset`` -10 (so scaled values are the scene's own), nodata
  0; ``scl`` at 57 m: 4 (vegetation) with smooth synthetic clouds (9) ringed by shadow (3).
* ``OUT/tiles/t<k>/t<k>.json`` (STAC 1.0 ``eo:bands`` + ``raster:bands``): red, green, blue of
  four tiles that overlap by 48 cells, each tile's values raised by ``7 * k`` (another
  acquisition) and tile 0 with a nodata hole, so the overlap rule decides cells.

Asset hrefs are relative to the item (``--href-base``: absolute, under that URL). The data are
made by the tests' fixtures in a temporary folder (nothing binary is committed); a test run's
figures therefore always come from this script.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine
from scipy import ndimage

SCENE = Path(__file__).resolve().parents[3] / "samples" / "nc_lsat7_2000_b12345.tif"
BANDS = [("B02", "blue", 1), ("B03", "green", 2), ("B04", "red", 3), ("B08", "nir", 4),
         ("B11", "swir16", 5)]
COARSE = {"B08", "B11"}
SCALE, OFFSET = 0.01, -10.0
EPSG = 32119
ROWS, COLS = 442, 488  # the scene cropped to even sizes: 57 m cells cover it exactly


def _write(path: Path, data: np.ndarray, transform: Affine, nodata: float | None) -> None:
    profile = {"driver": "COG", "height": data.shape[0], "width": data.shape[1], "count": 1,
               "dtype": data.dtype.name, "crs": f"EPSG:{EPSG}", "transform": transform,
               "nodata": nodata, "compress": "deflate", "blocksize": 128}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data, 1)


def _encode(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.where(valid, np.round((values - OFFSET) / SCALE), 0).astype(np.uint16)


def _clouds(shape: tuple[int, int], seed: int = 7) -> np.ndarray:
    """SCL codes: smooth blobs of cloud (9) over about 12% of the cells, shadow (3) around."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 6)
    cloud = field > np.quantile(field, 0.88)
    ring = ndimage.binary_dilation(cloud, iterations=2) & ~cloud
    return np.where(cloud, 9, np.where(ring, 3, 4)).astype(np.uint8)


def _href(base: str | None, folder: str, name: str) -> str:
    return f"{base.rstrip('/')}/{folder}/{name}" if base else f"./{name}"


def _proj(shape: tuple[int, int], transform: Affine) -> dict[str, object]:
    return {"proj:code": f"EPSG:{EPSG}", "proj:shape": list(shape),
            "proj:transform": list(transform)[:6]}


def _footprint(transform: Affine, shape: tuple[int, int]) -> tuple[dict, list[float]]:
    from pyproj import Transformer

    to_wgs84 = Transformer.from_crs(EPSG, 4326, always_xy=True)
    (h, w) = shape
    corners = [transform @ (c, r) for c, r in ((0, 0), (w, 0), (w, h), (0, h), (0, 0))]
    lonlat = [list(to_wgs84.transform(x, y)) for x, y in corners]
    xs, ys = [p[0] for p in lonlat], [p[1] for p in lonlat]
    return {"type": "Polygon", "coordinates": [lonlat]}, [min(xs), min(ys), max(xs), max(ys)]


def _item(item_id: str, transform: Affine, shape: tuple[int, int], assets: dict,
          stac_version: str, cloud: float, collection: str) -> dict:
    geometry, bbox = _footprint(transform, shape)
    extensions = ["https://stac-extensions.github.io/projection/v2.0.0/schema.json",
                  "https://stac-extensions.github.io/eo/v2.0.0/schema.json"]
    if stac_version == "1.0.0":
        extensions = ["https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                      "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                      "https://stac-extensions.github.io/raster/v1.1.0/schema.json"]
    return {"type": "Feature", "stac_version": stac_version, "stac_extensions": extensions,
            "id": item_id, "collection": collection, "geometry": geometry, "bbox": bbox,
            "properties": {"datetime": "2000-05-24T15:45:00Z", "eo:cloud_cover": cloud,
                           "platform": "landsat-7", **_proj(shape, transform)},
            "links": [], "assets": assets}


def make_scene(out: Path, href_base: str | None = None) -> Path:
    """The one-item scene with 28.5 m and 57 m bands and its SCL band; returns the item."""
    folder = out / "scene"
    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(SCENE) as src:
        data = src.read(window=((0, ROWS), (0, COLS)), masked=True)
        fine = src.transform
    coarse = fine @ Affine.scale(2)
    assets: dict[str, dict] = {}
    for key, common, index in BANDS:
        band = data[index - 1]
        values, valid = band.filled(0).astype(np.float64), ~np.ma.getmaskarray(band)
        if key in COARSE:  # the mean of each valid 2x2 block (GDAL's "average")
            blocks = values.reshape(ROWS // 2, 2, COLS // 2, 2)
            counts = valid.reshape(ROWS // 2, 2, COLS // 2, 2).sum(axis=(1, 3))
            sums = (blocks * valid.reshape(blocks.shape)).sum(axis=(1, 3))
            values, valid = sums / np.maximum(counts, 1), counts > 0
        transform = coarse if key in COARSE else fine
        _write(folder / f"{key}.tif", _encode(values, valid), transform, 0)
        assets[key] = {"href": _href(href_base, "scene", f"{key}.tif"),
                       "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                       "roles": ["data"], **_proj(values.shape, transform),
                       "bands": [{"name": key, "eo:common_name": common, "nodata": 0,
                                  "data_type": "uint16", "raster:scale": SCALE,
                                  "raster:offset": OFFSET}]}
    scl = _clouds((ROWS // 2, COLS // 2))
    _write(folder / "SCL.tif", scl, coarse, None)
    assets["scl"] = {"href": _href(href_base, "scene", "SCL.tif"),
                     "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                     "roles": ["data", "cloud"], **_proj(scl.shape, coarse),
                     "bands": [{"name": "SCL", "data_type": "uint8"}]}
    cloud = float(np.isin(scl, [3, 8, 9, 10]).mean() * 100)
    item = _item("scene", fine, (ROWS, COLS), assets, "1.1.0", round(cloud, 2), "segflow-test")
    path = folder / "scene.json"
    path.write_text(json.dumps(item, indent=1))
    return path


def tile_windows() -> list[tuple[int, int, int, int]]:
    """(row0, row1, col0, col1) of the four tiles: quadrants grown by 24 cells each way."""
    half_r, half_c, grow = ROWS // 2, COLS // 2, 24
    return [(max(0, r0 - grow), min(ROWS, r1 + grow), max(0, c0 - grow), min(COLS, c1 + grow))
            for r0, r1 in ((0, half_r), (half_r, ROWS)) for c0, c1 in ((0, half_c), (half_c, COLS))]


def make_tiles(out: Path, href_base: str | None = None) -> list[Path]:
    """Four overlapping single-resolution tiles (red, green, blue); returns their items."""
    with rasterio.open(SCENE) as src:
        data = src.read([3, 2, 1], window=((0, ROWS), (0, COLS)), masked=True)
        fine = src.transform
    paths = []
    for k, (r0, r1, c0, c1) in enumerate(tile_windows()):
        name = f"t{k}"
        folder = out / "tiles" / name
        folder.mkdir(parents=True, exist_ok=True)
        transform = fine @ Affine.translation(c0, r0)
        part = data[:, r0:r1, c0:c1]
        valid = ~np.ma.getmaskarray(part).any(axis=0)
        if k == 0:  # a hole (a missing strip of a swath): other tiles fill it where they can
            valid[-60:-20, -80:-30] = False
        assets = {}
        for b, (key, common) in enumerate((("B04", "red"), ("B03", "green"), ("B02", "blue"))):
            values = part[b].filled(0).astype(np.float64) + 7 * k
            _write(folder / f"{key}.tif", _encode(values, valid), transform, 0)
            assets[key] = {"href": _href(href_base, f"tiles/{name}", f"{key}.tif"),
                           "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                           "roles": ["data"],
                           "eo:bands": [{"name": key, "common_name": common}],
                           "raster:bands": [{"nodata": 0, "data_type": "uint16",
                                             "scale": SCALE, "offset": OFFSET}]}
        item = _item(name, transform, part.shape[1:], assets, "1.0.0", float(10 * (3 - k)),
                     "segflow-tiles")
        path = folder / f"{name}.json"
        path.write_text(json.dumps(item, indent=1))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--href-base", default=None)
    args = parser.parse_args()
    print(make_scene(args.out, args.href_base))
    for path in make_tiles(args.out, args.href_base):
        print(path)


if __name__ == "__main__":
    main()
