"""Class areas in physical units, checked against pyproj.Geod and the affine, not segflow."""

from __future__ import annotations

import numpy as np
import pytest
from pyproj import Geod
from rasterio.transform import from_origin

from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config
from tests.conftest import smooth_noise, write_geotiff

WGS84 = Geod(ellps="WGS84")


def _parallel_rectangle_area(west: float, east: float, south: float, north: float) -> float:
    """Area of a lon/lat rectangle whose north/south edges follow parallels (densified)."""
    lons = np.linspace(west, east, 2001)
    ring_lons = np.concatenate([lons, lons[::-1]])
    ring_lats = np.concatenate([np.full_like(lons, south), np.full_like(lons, north)])
    area, _ = WGS84.polygon_area_perimeter(ring_lons, ring_lats)
    return abs(area)


def _segment_halves(path, tmp_path, dask_address, unit="m2"):
    cfg = load_config(overrides=["model.kind=threshold", "model.params.value=50",
                                 "output.pyramid=false",
                                 "tiling.chunk=128", f"stats.area_unit={unit}"])
    result = segment_image(str(path), str(tmp_path / "out"), cfg.model_dump(mode="json"),
                           dask_address)
    return {r["class_name"]: r for r in result["class_stats"]}


def test_geographic_areas_at_high_latitude_match_geod(tmp_path, dask_address):
    # 10 degrees of latitude (64N to 74N) by 6 degrees of longitude, 0.05 degree pixels;
    # the northern 120 rows are foreground (100), the southern 80 background (0).
    height, width, res = 200, 120, 0.05
    data = np.zeros((1, height, width), np.uint8)
    data[0, :120] = 100
    path = write_geotiff(tmp_path / "arctic.tif", data, "EPSG:4326",
                         from_origin(10.0, 74.0, res, res), blocksize=64)
    stats = _segment_halves(path, tmp_path, dask_address)

    north = _parallel_rectangle_area(10.0, 16.0, 74.0 - 120 * res, 74.0)
    south = _parallel_rectangle_area(10.0, 16.0, 64.0, 74.0 - 120 * res)
    assert stats["foreground"]["area_unit"] == "m2"
    assert stats["foreground"]["area"] == pytest.approx(north, rel=3e-4)
    assert stats["background"]["area"] == pytest.approx(south, rel=3e-4)

    # The check discriminates: an area from the centre latitude alone misses by far more.
    pixel_at_centre = (np.deg2rad(res) * 6378137) ** 2 * np.cos(np.deg2rad(69.0))
    naive_total = pixel_at_centre * height * width
    assert abs(naive_total / (north + south) - 1) > 3e-4


def test_projected_areas_are_pixels_times_resolution(tmp_path, dask_address):
    """A textured 3-band UTM scene with a nodata corner, over several 128-px chunks."""
    import rasterio

    bands = np.stack([smooth_noise((300, 260), seed) for seed in (1, 2, 3)])
    data = (bands * 250 + 1).astype(np.uint8)
    data[:, :60, :80] = 0
    textured_tif = write_geotiff(tmp_path / "textured.tif", data, "EPSG:32633",
                                 from_origin(500000, 7000000, 10, 10), nodata=0)
    with rasterio.open(textured_tif) as src:
        band = src.read(1)
        valid = src.dataset_mask() > 0
        xres, yres = src.res
    stats = _segment_halves(textured_tif, tmp_path, dask_address, unit="ha")
    foreground = int(((band > 50) & valid).sum())
    assert stats["foreground"]["pixels"] == foreground
    assert stats["foreground"]["area_unit"] == "ha"
    assert stats["foreground"]["area"] == pytest.approx(foreground * xres * yres / 1e4, rel=1e-12)
    total = stats["foreground"]["pixels"] + stats["background"]["pixels"]
    assert total == int(valid.sum())
    assert stats["foreground"]["fraction"] == pytest.approx(foreground / valid.sum())


def test_no_crs_reports_pixels(tmp_path, dask_address):
    import rasterio

    data = np.arange(64 * 64, dtype=np.uint16).reshape(1, 64, 64)
    path = tmp_path / "plain.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1,
                       dtype="uint16") as dst:
        dst.write(data)
    stats = _segment_halves(path, tmp_path, dask_address)
    assert stats["foreground"]["area_unit"] == "px"
    assert stats["foreground"]["area"] == stats["foreground"]["pixels"] == int((data > 50).sum())
