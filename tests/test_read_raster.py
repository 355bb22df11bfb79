"""The GeoTIFF reader: lazy windows, band selection, nodata, CRS and transform carried through."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from segflow.tasks.config import InputConfig
from segflow.tasks.errors import SegflowError
from segflow.tasks.sources.raster import open_raster


def test_windows_bands_and_nodata_match_rasterio(rgb_tif):
    raster = open_raster(str(rgb_tif), InputConfig(bands=[3, 1]))
    with rasterio.open(rgb_tif) as src:
        expected = src.read([3, 1], window=((100, 300), (50, 450)))
        # valid where any selected band is valid (GDAL's per-dataset rule, on these bands)
        mask = src.read_masks([3, 1], window=((100, 300), (50, 450))).any(axis=0)
        assert raster.crs_wkt == src.crs.to_wkt()
        assert raster.transform == tuple(src.transform)[:6]
    pixels, valid = raster.read((slice(100, 300), slice(50, 450)))
    np.testing.assert_array_equal(pixels, expected)
    np.testing.assert_array_equal(valid, mask)
    assert 0 < valid.mean() < 1  # the window crosses the nodata border


def test_dask_view_is_lazy_and_masks_nodata(rgb_tif):
    raster = open_raster(str(rgb_tif))
    arr = raster.to_dask(chunk=256)
    assert arr.shape == (3, 718, 791) and arr.numblocks == (1, 3, 4)
    with rasterio.open(rgb_tif) as src:
        valid = src.dataset_mask() > 0
        band = src.read(2).astype(float)
    got = arr[1].compute()
    np.testing.assert_array_equal(np.isnan(got), ~valid)
    np.testing.assert_array_equal(got[valid], band[valid])


def test_band_out_of_range_is_a_clear_error(rgb_tif):
    with pytest.raises(SegflowError, match="band 4 requested but the raster has 3"):
        open_raster(str(rgb_tif), InputConfig(bands=[4]))


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(SegflowError) as info:
        open_raster(str(tmp_path / "nope.tif"))
    assert str(tmp_path / "nope.tif") in str(info.value)
