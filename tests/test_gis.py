"""What a GIS user opens: with the default outputs a raster run writes ``exports/<id>.tif``, a
COG that GDAL as users have it (rasterio's wheel; Debian's ``gdalinfo`` where installed) reads
at full size with its CRS, nodata, class names and a palette of only the classes. The Zarr
store, which GDAL before 3.13 cannot read (sharded), never offers a coarser level in place of
level 0. ``output.qupath`` on a raster is refused before any pixel."""

from __future__ import annotations

import re

import numpy as np
import pytest
import rasterio
import zarr
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate

from segflow.flows.segment import segment_image
from segflow.tasks.catalog.query import run_query
from segflow.tasks.config import load_config
from segflow.tasks.errors import SegflowError
from tests.conftest import smooth_noise, write_geotiff
from tests.gdal import debian_gdalinfo, rasterio_gdal_version, rasterio_gdalinfo

CLASSES = "model.classes=[{id: 0, name: bare, colour: tan}, {id: 1, name: water, colour: blue}]"
SIZE = (1536, 2304)  # rows, cols: 2 x 3 shards of 1024, pyramid levels 1-4


@pytest.fixture(scope="module")
def gis_run(tmp_path_factory, dask_address) -> tuple[str, dict, np.ndarray]:
    folder = tmp_path_factory.mktemp("gis")
    band = (smooth_noise(SIZE, 5, scale=96) * 255).astype(np.uint8)
    band[:40, :300] = 0  # nodata collar
    scene = write_geotiff(folder / "scene.tif", band[None], "EPSG:32633",
                          from_origin(500000, 4000000, 10, 10), nodata=0)
    cfg = load_config(overrides=["model.kind=threshold", "model.params.value=128", CLASSES,
                                 "tiling.chunk=1024"])
    assert cfg.output.export == "auto"  # the default: nothing asked for
    result = segment_image(str(scene), str(folder / "out"), cfg.model_dump(mode="json"),
                           dask_address)
    return str(scene), result, band


def _cog(result: dict) -> str:
    [row] = run_query(result["output_uri"].split("/masks/")[0],
                      "select uri from outputs where output = 'export'").to_pylist()
    assert row["uri"].endswith(f"exports/{result['image_id']}.tif")
    return row["uri"]


def test_the_default_raster_run_writes_a_valid_cog_equal_to_the_mask(gis_run):
    scene, result, band = gis_run
    mask = zarr.open_array(result["output_uri"], path="0", mode="r")[:]
    assert set(np.unique(mask)) == {0, 1, 255}
    cog = _cog(result)
    assert cog_validate(cog)[0]
    with rasterio.open(cog) as ds, rasterio.open(scene) as src:
        np.testing.assert_array_equal(ds.read(1), mask)
        assert (ds.crs, ds.transform, ds.nodata) == (src.crs, src.transform, 255)


def _check_gdalinfo(text: str, result: dict) -> None:
    rows, cols = SIZE
    assert f"Size is {cols}, {rows}" in text, text  # level 0, not an overview
    assert 'ID["EPSG",32633]' in text and "Pixel Size = (10.0" in text
    assert "NoData Value=255" in text and "ColorInterp=Palette" in text
    categories = re.search(r"Categories:\n((?:\s+\d+: .*\n)+)", text)
    assert categories, text
    assert re.findall(r"(\d+): (\S+)", categories.group(1)) == [("0", "bare"), ("1", "water")]
    # the palette lists the classes, not 256 entries (which QGIS shows as 256 classes)
    assert "Color Table (RGB with 2 entries)" in text


def test_rasterio_gdal_reads_the_cog_whole_with_crs_and_legend(gis_run):
    _, result, _ = gis_run
    text = rasterio_gdalinfo(_cog(result))
    print(f"GDAL {rasterio_gdal_version()} (rasterio's wheel):\n{text}")
    _check_gdalinfo(text, result)


def test_debian_gdal_reads_the_cog_whole_with_crs_and_legend(gis_run):
    _, result, _ = gis_run
    text = debian_gdalinfo(_cog(result))
    if text is None:
        pytest.skip("no gdalinfo on PATH (Debian: apt install gdal-bin)")
    _check_gdalinfo(text, result)


def test_the_store_never_offers_a_coarser_level_in_place_of_level_0(gis_run):
    _, result, _ = gis_run
    group = zarr.open_group(result["output_uri"], mode="r")
    levels = sorted(k for k in group.array_keys() if k.isdigit())
    assert levels == ["0", "1", "2", "3", "4"]
    assert {group[k].shards for k in levels} == {(1024, 1024)}  # one layout for all levels
    for info in (rasterio_gdalinfo(f'ZARR:"{result["output_uri"]}"'),
                 debian_gdalinfo(f'ZARR:"{result["output_uri"]}"') or ""):
        listed = re.findall(r'SUBDATASET_\d+_NAME=ZARR:".*?":/(\w+)', info)
        assert not listed or "0" in listed, info


def test_qupath_on_a_raster_is_refused_before_any_pixel(gis_run, tmp_path, dask_address):
    scene, _, _ = gis_run
    cfg = load_config(overrides=["model.kind=otsu", "output.qupath=true"])
    with pytest.raises(SegflowError) as info:
        segment_image(scene, str(tmp_path / "out"), cfg.model_dump(mode="json"), dask_address)
    message = str(info.value)
    assert "output.qupath" in message and "raster" in message and "\n" not in message
    assert not (tmp_path / "out" / "masks").exists()
    [row] = run_query(str(tmp_path / "out"), "select status from runs").to_pylist()
    assert row["status"] == "failed"
