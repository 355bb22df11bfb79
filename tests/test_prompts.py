"""SAM prompts (``input.prompts``): points in a CRS other than the image's land on the cells
pyproj and rasterio put them on; through the flow each prompt gives exactly one object, found
around its own cell; files without geometry, of the wrong kind, or outside the image are
one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas
import numpy as np
import pytest
import rasterio
import torch
import zarr
from pyproj import Transformer
from rasterio.transform import rowcol
from rasterio.windows import Window
from shapely.geometry import LineString, Point, box

from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config
from segflow.tasks.errors import UserError
from segflow.tasks.models.sam import anchor_cells, build_sam, read_prompts
from segflow.tasks.sources.registry import open_source
from tests.conformance.test_instance_models import SAM_ENCODER, SAM_PARAMS
from tests.conftest import DATA

REACH = 8  # stats.max_object: every object lies within this many cells of its prompt


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("prompts")
    window = Window(200, 250, 192, 160)  # inside the scene: no collar
    with rasterio.open(DATA / "rgb_byte.tif") as src:
        data = src.read(window=window)
        profile = {**src.profile, "width": 192, "height": 160, "tiled": False,
                   "transform": src.window_transform(window)}
    profile.pop("blockxsize", None), profile.pop("blockysize", None)
    out = {"rgb": folder / "rgb.tif", "sam": folder / "sam.pt"}
    with rasterio.open(out["rgb"], "w", **profile) as dst:
        dst.write(data)
    torch.manual_seed(1)
    torch.save(build_sam("vit_b", SAM_ENCODER).state_dict(), out["sam"])
    return out


def lonlat(path: Path, cells: list[tuple[float, float]]) -> list[Point]:
    """Cell positions (row, col; fractional) as WGS84 points, with rasterio and pyproj."""
    with rasterio.open(path) as ds:
        to_wgs84 = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
        return [Point(*to_wgs84.transform(*(ds.transform * (c, r)))) for r, c in cells]


def test_prompts_in_another_crs_land_on_their_cells(scene, tmp_path):
    cells = [(10.5, 20.5), (64.5, 64.5), (80.2, 150.7), (159.5, 191.5)]
    points = lonlat(scene["rgb"], cells)
    path = tmp_path / "points.geojson"
    geopandas.GeoDataFrame(geometry=points, crs="EPSG:4326").to_file(path)
    prompts = read_prompts(str(path), open_source(str(scene["rgb"]), load_config().input))
    with rasterio.open(scene["rgb"]) as ds:  # independent: pyproj back, rasterio's rowcol
        back = Transformer.from_crs("EPSG:4326", ds.crs, always_xy=True)
        expected = [rowcol(ds.transform, *back.transform(p.x, p.y)) for p in points]
    np.testing.assert_array_equal(anchor_cells(prompts), np.array(expected))
    np.testing.assert_allclose(prompts[:, 1:3], np.array(cells), atol=1e-6)


def test_one_object_per_prompt_around_its_cell(scene, tmp_path, dask_address):
    cells = [(64, 64), (64, 100), (20, 128), (100, 40), (150, 180), (30, 30), (120, 120)]
    frame = geopandas.GeoDataFrame(
        geometry=lonlat(scene["rgb"], [(r + 0.5, c + 0.5) for r, c in cells]), crs="EPSG:4326")
    path = tmp_path / "points.geojson"
    frame.to_file(path)
    cfg = load_config(overrides=["model.kind=sam", f"model.weights={scene['sam']}", SAM_PARAMS,
                                 f"input.prompts={path}", f"stats.max_object={REACH}",
                                 "tiling.chunk=64"])
    result = segment_image(str(scene["rgb"]), str(tmp_path / "out"),
                           cfg.model_dump(mode="json"), dask_address)
    ids = zarr.open_array(result["output_uri"], path="labels/instances/0", mode="r")[:]
    found = [int(k) for k in np.unique(ids) if k]
    assert len(found) == result["instances"] <= len(cells)
    assert len(found) >= len(cells) - 1, "an untrained SAM may answer a prompt with nothing"
    owners = []
    for k in found:  # every object lies in the crop around exactly one prompt
        rows, cols = np.nonzero(ids == k)
        near = [i for i, (r, c) in enumerate(cells)
                if abs(rows - r).max() <= REACH and abs(cols - c).max() <= REACH]
        assert len(near) == 1, f"object {k} is not around one prompt: {near}"
        owners += near
    assert len(set(owners)) == len(owners)  # never two objects for one prompt


def test_bad_prompt_files_are_one_line_errors(scene, tmp_path):
    reader = open_source(str(scene["rgb"]), load_config().input)
    with rasterio.open(scene["rgb"]) as ds:
        crs, far = ds.crs, ds.transform * (500, 500)
    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "a"}, "geometry": None}]}))
    lines = tmp_path / "lines.geojson"
    geopandas.GeoDataFrame(geometry=[LineString([(0, 0), (1, 1)])], crs=crs).to_file(lines)
    outside = tmp_path / "outside.gpkg"
    geopandas.GeoDataFrame(geometry=[Point(*far), box(*far, far[0] + 30, far[1] + 30)],
                           crs=crs).to_file(outside)
    missing = tmp_path / "missing.geojson"
    for path, text in ((empty, "holds no geometry"), (lines, "not ['LineString']"),
                       (outside, "2 of 2 prompts lie outside the image"),
                       (missing, "cannot read prompts")):
        with pytest.raises(UserError) as error:
            read_prompts(str(path), reader)
        assert text in str(error.value) and "\n" not in str(error.value)
        assert str(path) in str(error.value)
