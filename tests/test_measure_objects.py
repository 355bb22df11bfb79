"""``stats.measure``: every object's shape and intensity measurements through the flow, at
three chunkings, equal scikit-image's ``regionprops_table`` on the whole image (labelled here
with ``skimage.measure.label``, face connectivity, as segflow numbers objects), in physical
units, for a georeferenced raster (30 m cells, two bands) and an anisotropic volume."""

from __future__ import annotations

import geopandas
import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
from rasterio.transform import from_origin
from scipy import ndimage
from skimage.measure import label, regionprops_table

from segflow.flows.segment import segment_image
from segflow.tasks.catalog.query import run_query
from segflow.tasks.config import load_config
from tests.conftest import write_geotiff

SHAPE_2D = {"area": "area", "perimeter": "perimeter", "equivalent_diameter_area":
            "equivalent_diameter", "axis_major_length": "major_axis", "axis_minor_length":
            "minor_axis", "eccentricity": "eccentricity", "solidity": "solidity",
            "extent": "extent", "orientation": "orientation"}
SHAPE_3D = {"area": "volume", "equivalent_diameter_area": "equivalent_diameter",
            "axis_major_length": "major_axis", "solidity": "solidity", "extent": "extent"}


def _blobs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Smoothed noise: irregular blobs of many sizes, some crossing any chunk border."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), 3)
    return ((field - field.min()) / np.ptp(field) * 200).astype(np.uint8)


def _same(got: float | None, expected: float) -> bool:
    """Equal to regionprops' value; an undefined one (NaN, inf: the solidity of a flat
    object) is null in the table."""
    if not np.isfinite(expected):
        return got is None
    return got == pytest.approx(expected, rel=1e-9, abs=1e-9)


def _measured(root, run_dir) -> dict[tuple[int, str, str | None], float]:
    rows = run_query(str(run_dir), "select instance_id, measurement, channel, value "
                                   "from object_measurements").to_pylist()
    return {(r["instance_id"], r["measurement"], r["channel"]): r["value"] for r in rows}


def _run(path, out, dask_address, chunk, *extra):
    cfg = load_config(overrides=["model.kind=threshold", "model.params.value=120",
                                 "stats.measure=[shape, intensity]", f"tiling.chunk={chunk}",
                                 "output.pyramid=false", "tiling.halo=0", *extra])
    result = segment_image(str(path), str(out), cfg.model_dump(mode="json"), dask_address)
    assert result["status"] == "succeeded"
    return _measured(out, out)


def test_raster_measurements_equal_regionprops_at_three_chunkings(tmp_path, dask_address):
    first = _blobs((180, 160), 0)
    second = _blobs((180, 160), 1)
    path = write_geotiff(tmp_path / "scene.tif", np.stack([first, second]), "EPSG:32633",
                         from_origin(500000, 4000000, 30.0, 30.0), blocksize=32)
    labels = label(first > 120, connectivity=1)
    expected = regionprops_table(labels, intensity_image=np.stack([first, second], -1)
                                 .astype(np.float64), spacing=(30.0, 30.0),
                                 properties=["label", *SHAPE_2D, "intensity_mean",
                                             "intensity_max"])
    assert labels.max() > 10
    for chunk in (48, 64, 256):
        vectors = ("output.vectors=true",) if chunk == 64 else ()
        got = _run(path, tmp_path / f"c{chunk}", dask_address, chunk, *vectors)
        for i, object_id in enumerate(expected["label"]):
            for prop, name in SHAPE_2D.items():
                assert _same(got[object_id, name, None], expected[prop][i]), (object_id, name)
            for b in (0, 1):
                assert got[object_id, "mean", f"band_{b + 1}"] == pytest.approx(
                    expected[f"intensity_mean-{b}"][i], rel=1e-12)
                assert got[object_id, "max", f"band_{b + 1}"] == expected[f"intensity_max-{b}"][i]
            cells = np.where(labels == object_id, first, 0)
            assert got[object_id, "integrated", "band_1"] == cells.sum()
        assert len({k[0] for k in got}) == labels.max()

    # the same measurements on each object's polygon: GeoParquet's map (a slide's QuPath
    # GeoJSON carries them too: tests/test_outputs.py)
    folder = tmp_path / "c64" / "vectors"
    polygons = pq.read_table(next(folder.glob("*.parquet"))).to_pylist()
    assert len(polygons) == labels.max()
    for row in polygons:
        measured = dict(row["measurements"])
        assert measured["Perimeter m"] == got[row["instance_id"], "perimeter", None]
        assert measured["band_2: Mean"] == got[row["instance_id"], "mean", "band_2"]
        assert "band_1: Integrated" in measured


def test_volume_measurements_equal_regionprops_at_three_chunkings(tmp_path, dask_address):
    volume = _blobs((40, 36, 30), 2)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), path)
    labels = label(volume > 120, connectivity=1)
    expected = regionprops_table(labels, intensity_image=volume.astype(np.float64),
                                 spacing=(2.0, 2.0, 3.0),
                                 properties=["label", *SHAPE_3D, "intensity_mean"])
    assert labels.max() > 3
    for chunk in (16, 24, 64):
        got = _run(path, tmp_path / f"c{chunk}", dask_address, chunk)
        for i, object_id in enumerate(expected["label"]):
            for prop, name in SHAPE_3D.items():
                assert _same(got[object_id, name, None], expected[prop][i]), (object_id, name)
            assert got[object_id, "mean", "band_1"] == pytest.approx(
                expected["intensity_mean"][i], rel=1e-12)


def test_region_objects_equal_a_numpy_count_on_the_whole_image(tmp_path, dask_address):
    """Objects per region under their centroid, each region's area and its objects' mean
    measurements, against NumPy and ``regionprops`` on the whole image; chunks of 48 cut
    through objects and regions alike."""
    first = _blobs((180, 160), 0)
    transform = from_origin(500000, 4000000, 30.0, 30.0)
    path = write_geotiff(tmp_path / "scene.tif", first[None], "EPSG:32633", transform,
                         blocksize=32)
    regions = np.zeros((180, 160), np.uint8)
    regions[:, 70:] = 1
    regions[100:140, :] = 2
    region_path = write_geotiff(tmp_path / "regions.tif", regions[None], "EPSG:32633",
                                transform, blocksize=32)
    zones = tmp_path / "zones.geojson"
    west, north = 500000.0, 4000000.0
    polygons = {"a": shapely.box(west - 600, north - 3000, west + 2000, north + 300),
                "b": shapely.box(west + 1500, north - 5400, west + 4800, north - 2400)}
    geopandas.GeoDataFrame({"name": list(polygons)}, geometry=list(polygons.values()),
                           crs="EPSG:32633").to_file(zones, driver="GeoJSON")
    cfg = load_config(overrides=["model.kind=threshold", "model.params.value=120",
                                 f"stats.regions={region_path}", f"stats.zones={zones}",
                                 "stats.zone_id=name", "stats.measure=[shape, intensity]",
                                 "stats.region_names=[west, east, band]", "tiling.chunk=48",
                                 "tiling.halo=0", "output.pyramid=false"])
    out = tmp_path / "out"
    result = segment_image(str(path), str(out), cfg.model_dump(mode="json"), dask_address)
    assert result["status"] == "succeeded"
    rows = run_query(str(out), "select region_id, region_name, class_id, objects, "
                               "region_area, area_unit, density, means from region_objects "
                               "where layer = 'regions'").to_pylist()
    zone_rows = run_query(str(out), "select region_name, objects, region_area, density "
                                    "from region_objects where layer = 'zones'").to_pylist()

    labels = label(first > 120, connectivity=1)
    centroids = regionprops_table(labels, intensity_image=first.astype(np.float64),
                                  spacing=(30.0, 30.0),
                                  properties=["centroid", "area", "intensity_mean"])
    for name in ("centroid-0", "centroid-1"):
        centroids[name] = centroids[name] / 30.0  # in cells
    cells = np.floor(np.stack([centroids["centroid-0"], centroids["centroid-1"]], 1) + 0.5)
    under = regions[cells[:, 0].astype(int), cells[:, 1].astype(int)]
    ids, counts = np.unique(under, return_counts=True)
    expected = {int(i): int(c) for i, c in zip(ids, counts)}
    assert {r["region_id"]: r["objects"] for r in rows} == expected and len(expected) == 3
    for row in rows:
        area_ha = (regions == row["region_id"]).sum() * 900 / 1e4
        assert row["region_area"] == pytest.approx(area_ha) and row["area_unit"] == "ha"
        assert row["density"] == pytest.approx(row["objects"] / area_ha)
        assert row["region_name"] == ["west", "east", "band"][row["region_id"]]
        assert row["class_id"] == 1
        means = dict(row["means"])  # the objects' own measurements, averaged per region
        inside = under == row["region_id"]
        assert means["area"] == pytest.approx(centroids["area"][inside].mean())
        assert means["band_1: mean"] == pytest.approx(centroids["intensity_mean"][inside].mean())

    # zones: centroids in map coordinates inside each polygon (shapely on the CRS's metres),
    # areas of the polygons clipped to the scene
    x = west + (centroids["centroid-1"] + 0.5) * 30
    y = north - (centroids["centroid-0"] + 0.5) * 30
    scene = shapely.box(west, north - 180 * 30, west + 160 * 30, north)
    for row in zone_rows:
        polygon = polygons[row["region_name"]]
        assert row["objects"] == int(shapely.contains_xy(polygon, x, y).sum())
        area_ha = shapely.area(shapely.intersection(polygon, scene)) / 1e4
        assert row["region_area"] == pytest.approx(area_ha)
        assert row["density"] == pytest.approx(row["objects"] / area_ha)
    assert {r["region_name"] for r in zone_rows} == {"a", "b"}
