"""Outputs for other tools, each checked against an independent whole-image computation:
polygons against ``rasterio.features.shapes`` over the whole mask, the COG with rio-cogeo's
validator, the OME-TIFF with tifffile, the NIfTI with nibabel, zone statistics against
rasterising each zone once over the whole image, change against ``np.bincount``."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import geopandas as gpd
import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
import tifffile
import zarr
from affine import Affine
from distributed import Client
from rasterio.features import rasterize, shapes
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import Point, Polygon
from skimage.measure import label

from segflow.flows.change import change_masks
from segflow.flows.segment import segment_image
from segflow.tasks.catalog.query import run_query
from segflow.tasks.colours import rgb
from segflow.tasks.config import load_config
from segflow.tasks.errors import SegflowError
from segflow.tasks.export.polygons import Frames, Merger, polygonise_chunk
from segflow.tasks.export.vectors import regions
from segflow.tasks.mask.store import open_store_group
from segflow.tasks.measure.instances import label_instances
from segflow.tasks.models.instance import thing_ids
from segflow.tasks.sources.georef import through
from tests.conftest import DATA, smooth_noise, write_geotiff, write_pyramid_tiff
from tests.test_instances import CLASSES, THINGS, shapes_2d, write_mask

LANDSAT = Path(__file__).parents[1] / "samples" / "nc_lsat7_2000_b12345.tif"
OME_NS = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"


IDENTITY = Affine.identity()


def whole_polygons(mask: np.ndarray, nodata: int, transform: Affine = IDENTITY
                   ) -> list[tuple[int, shapely.Geometry]]:
    """(value, polygon) of polygonising the whole array at once, 4-connected."""
    return [(int(v), shapely.geometry.shape(g)) for g, v in
            shapes(mask, mask=mask != nodata, connectivity=4, transform=transform)]


def assert_same_polygons(got: list[tuple[int, shapely.Geometry]],
                         expected: list[tuple[int, shapely.Geometry]], cell_area: float) -> None:
    """Same count, and each polygon (matched by class, area and box) covers the same ground:
    their symmetric difference is below a millionth of a cell, holes included."""
    assert len(got) == len(expected)

    def key(item: tuple[int, shapely.Geometry]) -> tuple:
        value, geom = item
        return (value, round(geom.area / cell_area, 3),
                *(round(b / cell_area ** 0.5, 3) for b in geom.bounds))

    for (va, a), (vb, b) in zip(sorted(got, key=key), sorted(expected, key=key)):
        assert va == vb and a.is_valid
        assert len(a.interiors) == len(b.interiors)
        assert a.symmetric_difference(b).area < 1e-6 * cell_area


def snakes_and_holes() -> np.ndarray:
    """``shapes_2d`` (spiral, comb, staircase, noise, nodata) plus rings whose holes and
    bodies cross chunk corners, and a frame around the whole image."""
    mask = shapes_2d()
    mask[60:100, 130:170] = 3
    mask[70:90, 140:160] = 0
    mask[75:85, 145:155] = 2  # an island in the hole
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 3
    return mask


def chunked_polygons(client: Client, store, plan, instances: bool) -> dict[str, np.ndarray]:
    """segflow's polygons of a stored mask, in pixel coordinates, as columns."""
    totals = np.bincount(store.instances()[:].ravel()) if instances else None
    batches = list(regions(client, store, plan, totals, None, Frames(Affine.identity(), None)))
    return {"ids": np.concatenate([b.ids for b in batches]),
            "classes": np.concatenate([b.classes for b in batches]),
            "pixels": np.concatenate([b.pixels for b in batches]),
            "shapes": shapely.from_wkb([w for b in batches for w in b.wkb])}


@pytest.mark.parametrize("chunk", [24, 64])
def test_region_polygons_equal_the_whole_mask_polygonisation(chunk, tmp_path, client):
    mask = snakes_and_holes()
    store, plan = write_mask(str(tmp_path / "m.zarr"), mask, chunk, ("y", "x"))
    found = chunked_polygons(client, store, plan, False)
    assert_same_polygons(list(zip(found["classes"], found["shapes"])),
                         whole_polygons(mask, 255), 1.0)
    assert len(found["ids"]) > 300 and any(g.interiors for g in found["shapes"])
    # ids are the raster index of each region's first cell: the same whatever the chunking
    whole = label(mask, background=255, connectivity=1)
    _, first = np.unique(whole.ravel(), return_index=True)
    assert sorted(found["ids"]) == sorted(first[np.unique(whole.ravel()) > 0])
    assert found["pixels"].sum() == int((mask != 255).sum())


def test_regions_leave_the_client_as_soon_as_they_are_whole(tmp_path):
    """Chunks handed over in row order: a region goes out once every face its pieces touch has
    its neighbour in, so the pieces held at once stay about one row of chunks' worth, and
    nothing is left for the end."""
    rng = np.random.default_rng(3)
    mask = (smooth_noise((320, 320), 5, scale=8) * 12).astype(np.uint8)  # no region spans it
    mask[rng.random(mask.shape) < 0.05] = 255
    store, plan = write_mask(str(tmp_path / "m.zarr"), mask, 32, ("y", "x"))
    merger = Merger(plan.grid, None, Frames(Affine.identity(), None))
    held, out = [], []
    for chunk in plan.chunks:  # row-major, as the window hands them out
        out += merger.add(polygonise_chunk(chunk, store, None, mask.shape, None, merger.frames))
        held.append(sum(len(m) for m in merger.members.values()))
    rest = merger.finish()
    assert len(rest) == 0 and not merger.members and not merger.waiting
    found = [(c, g) for b in out for c, g in zip(b.classes, shapely.from_wkb(b.wkb))]
    assert_same_polygons(found, whole_polygons(mask, 255), 1.0)
    row_of_chunks = max(held[: plan.grid[1] * 2])  # what the first two rows held at most
    assert max(held) <= 1.5 * row_of_chunks < sum(len(b) for b in out) / 4


def test_object_polygons_equal_the_whole_mask_polygonisation(tmp_path, client):
    mask = snakes_and_holes()
    store, plan = write_mask(str(tmp_path / "m.zarr"), mask, 24, ("y", "x"))
    label_instances(client, store, plan, thing_ids(CLASSES, THINGS, "test"), None)
    ids = store.instances()[:].astype(np.int32)
    found = chunked_polygons(client, store, plan, True)
    assert_same_polygons(list(zip(found["ids"], found["shapes"])), whole_polygons(ids, 0), 1.0)
    assert set(found["ids"].tolist()) == set(np.unique(ids[ids > 0]).tolist())


def test_an_object_in_disjoint_parts_is_one_row(tmp_path, client):
    """Instance models may give an object parts that do not touch (a mask split by a
    higher-scored one): in one chunk or in chunks apart, it is one (multi)polygon, one row."""
    mask = snakes_and_holes()
    store, plan = write_mask(str(tmp_path / "m.zarr"), mask, 24, ("y", "x"))
    label_instances(client, store, plan, thing_ids(CLASSES, THINGS, "test"), None)
    ids = store.instances()[:]
    far = np.unique(ids[100:, 150:])  # give an object far away the id of the first object
    far = int(far[far > 1][0])
    ids[ids == far] = 1
    store.instances("r+")[:] = ids
    found = chunked_polygons(client, store, plan, True)
    rows = found["ids"].tolist()
    assert len(rows) == len(set(rows)) == len(np.unique(ids[ids > 0]))
    one = found["shapes"][rows.index(1)]
    assert one.geom_type == "MultiPolygon" and found["pixels"][rows.index(1)] == (ids == 1).sum()
    assert one.area == pytest.approx((ids == 1).sum())


@pytest.fixture(scope="module")
def zones_file(tmp_path_factory) -> Path:
    """Three zones in WGS 84 over the Landsat scene (NC State Plane, metres): a disc, a box
    reaching past the scene, and a polygon with a hole; two overlap."""
    with rasterio.open(LANDSAT) as ds:
        b, crs = ds.bounds, ds.crs
    cx, cy = (b.left + b.right) / 2, (b.bottom + b.top) / 2
    zones = [Point(cx, cy).buffer(4000),
             Polygon([(b.left - 1000, b.bottom - 1000), (cx, b.bottom - 1000), (cx, cy),
                      (b.left - 1000, cy)]),
             Polygon([(cx - 3000, cy - 3000), (b.right + 500, cy - 3000),
                      (b.right + 500, b.top + 500), (cx - 3000, b.top + 500)]
                     ).difference(Point(cx + 2000, cy + 2000).buffer(1500))]
    path = tmp_path_factory.mktemp("zones") / "zones.gpkg"
    gpd.GeoDataFrame({"name": ["disc", "southwest", "northeast"]}, geometry=zones,
                     crs=crs).to_crs("EPSG:4326").to_file(path)
    return path


@pytest.fixture(scope="module")
def landsat_run(tmp_path_factory, dask_address, zones_file) -> tuple[Path, dict]:
    """The real Landsat scene, k-means, 128-px chunks (16 chunks), every raster output on."""
    root = tmp_path_factory.mktemp("landsat") / "out"
    cfg = load_config(overrides=[
        "model.kind=kmeans", "tiling.chunk=128", "output.vectors=true", "output.export=true",
        "output.probabilities=true", f"stats.zones={zones_file}", "stats.zone_id=name"])
    return root, segment_image(str(LANDSAT), str(root), cfg.model_dump(mode="json"),
                               dask_address)


def test_landsat_polygons_equal_the_whole_mask_polygonisation(landsat_run):
    root, run = landsat_run
    assert run["chunks_total"] == 16
    mask = zarr.open_array(run["output_uri"], path="0", mode="r")[:]
    with rasterio.open(LANDSAT) as ds:
        transform, crs = ds.transform, ds.crs
    polygons = gpd.read_parquet(root / "vectors" / f"{run['image_id']}.parquet")
    assert polygons.crs.equals(crs)  # the CRS travels as PROJJSON
    assert_same_polygons(list(zip(polygons.class_id, polygons.geometry)),
                         whole_polygons(mask, 255, transform), abs(transform.determinant))
    assert (polygons.pixels * 28.5 ** 2 / 1e4 - polygons["area"]).abs().max() < 1e-9
    meta = json.loads(pq.read_metadata(root / "vectors" / f"{run['image_id']}.parquet")
                      .metadata[b"geo"])
    assert meta["version"] == "1.1.0" and meta["columns"]["geometry"]["encoding"] == "WKB"
    assert meta["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    outputs = run_query(str(root), "select output, format, uri, features from outputs "
                                   "order by output").to_pylist()
    assert [(o["output"], o["format"]) for o in outputs] == [
        ("export", "cog"), ("probabilities", "zarr"), ("stac", "stac-item"),
        ("vectors", "geoparquet")]
    assert outputs[3]["features"] == len(polygons)


def test_landsat_cog_is_valid_and_equals_the_mask(landsat_run):
    root, run = landsat_run
    mask = zarr.open_array(run["output_uri"], path="0", mode="r")[:]
    cog = root / "exports" / f"{run['image_id']}.tif"
    valid, errors, _ = cog_validate(str(cog))
    assert valid, errors
    with rasterio.open(cog) as ds, rasterio.open(LANDSAT) as src:
        np.testing.assert_array_equal(ds.read(1), mask)
        assert ds.crs == src.crs and ds.transform == src.transform and ds.nodata == 255
        assert ds.overviews(1) and ds.colormap(1)[0][:3] != ds.colormap(1)[1][:3]
        assert ds.tags(1)["CLASS_0"] == "cluster_1"
    assert "<Category>cluster_4</Category>" in Path(f"{cog}.aux.xml").read_text()


def test_landsat_probabilities_argmax_is_the_mask(landsat_run):
    _, run = landsat_run
    group = zarr.open_group(run["output_uri"], mode="r")
    mask, probs = group["0"][:], group["probabilities"][:]
    assert probs.shape == (4, *mask.shape) and probs.dtype == np.uint8
    assert group["probabilities"].chunks == (4, *group["0"].chunks)  # one shard per chunk
    assert group["probabilities"].attrs["grid_mapping"] == "spatial_ref"  # the mask's CRS
    top = np.sort(probs, axis=0)
    clear = (top[-1] > top[-2]) & (mask != 255)  # rounding to 0-255 can tie the top two
    assert clear.mean() > 0.8
    np.testing.assert_array_equal(probs.argmax(axis=0)[clear], mask[clear])
    assert (probs[:, mask == 255] == 0).all()


def test_landsat_zone_statistics_equal_whole_image_rasterisation(landsat_run, zones_file):
    root, run = landsat_run
    mask = zarr.open_array(run["output_uri"], path="0", mode="r")[:]
    with rasterio.open(LANDSAT) as ds:
        zones = gpd.read_file(zones_file).to_crs(ds.crs)
        transform = ds.transform
    rows = run_query(str(root), "select zone_id, class_id, pixels, area, fraction "
                                "from zone_stats").to_pylist()
    for name, geometry in zip(zones.name, zones.geometry):
        inside = rasterize([(geometry, 1)], out_shape=mask.shape, transform=transform) == 1
        valid = inside & (mask != 255)
        expected = np.bincount(mask[valid], minlength=4)
        got = {r["class_id"]: r for r in rows if r["zone_id"] == name}
        assert [got[c]["pixels"] for c in range(4)] == expected.tolist()
        for c in range(4):
            assert got[c]["area"] == pytest.approx(expected[c] * 28.5 ** 2 / 1e4)
            assert got[c]["fraction"] == pytest.approx(expected[c] / valid.sum())
    assert {r["zone_id"] for r in rows} == {"disc", "southwest", "northeast"}


def test_a_method_without_scores_refuses_probabilities(tmp_path):
    cfg = load_config(overrides=["model.kind=otsu", "output.probabilities=true"])
    with pytest.raises(SegflowError, match="no per-class score"):
        segment_image(str(LANDSAT), str(tmp_path / "out"), cfg.model_dump(mode="json"))


@pytest.mark.parametrize("stitch,dtype", [("crop", "uint8"), ("gaussian", "float16")])
def test_deep_model_probabilities_argmax_is_the_mask(stitch, dtype, tmp_path, dilated_model,
                                                     dask_address):
    data = (np.stack([smooth_noise((300, 260), s) for s in (1, 2, 3)]) * 250).astype(np.uint8)
    scene = write_geotiff(tmp_path / "scene.tif", data, "EPSG:32633",
                          from_origin(500000, 7000000, 10, 10))
    cfg = load_config(overrides=[
        "model.kind=torchscript", f"model.weights={dilated_model}", "tiling.chunk=128",
        "tiling.tile=64", "tiling.halo=8", f"tiling.stitch={stitch}",
        "output.probabilities=true", f"output.probabilities_dtype={dtype}"])
    run = segment_image(str(scene), str(tmp_path / "out"), cfg.model_dump(mode="json"),
                        dask_address)
    group = zarr.open_group(run["output_uri"], mode="r")
    mask, probs = group["0"][:], group["probabilities"][:].astype(np.float32)
    assert probs.shape == (4, 300, 260)
    top = np.sort(probs, axis=0)
    clear = top[-1] > top[-2]
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(probs.argmax(axis=0)[clear], mask[clear])
    total = probs.sum(axis=0) / (255 if dtype == "uint8" else 1)
    assert np.abs(total - 1).max() < 0.02  # probabilities: one per cell, up to rounding


def test_semantic_slide_qupath_is_one_annotation_per_class_without_glass(tmp_path,
                                                                        dask_address):
    """A semantic mask's QuPath file: the stuff class (``glass``) left out, each other class
    one annotation whose MultiPolygon parts are exactly its regions (the whole mask
    polygonised at once, in level-0 pixels), with the class's pixel count."""
    tissue = tifffile.imread(DATA / "cmu1_pyramid.tif", level=0)[:768, :768]
    slide = write_pyramid_tiff(tmp_path / "slide.tif", tissue, mpp=0.5)
    root = tmp_path / "out"
    cfg = load_config(overrides=[
        "model.kind=otsu", "model.classes=[glass, tissue]", "input.target_mpp=1.0",
        "tiling.chunk=128", "output.qupath=true", "output.pyramid=false", "output.export=false"])
    run = segment_image(str(slide), str(root), cfg.model_dump(mode="json"), dask_address)
    mask = zarr.open_array(run["output_uri"], path="0", mode="r")[:]
    assert (mask == 0).any() and (mask == 1).any()
    features = json.loads((root / "vectors" / f"{run['image_id']}.geojson").read_text())
    [feature] = features["features"]  # tissue only: glass is stuff
    assert feature["properties"]["classification"]["name"] == "tissue"
    assert feature["properties"]["objectType"] == "annotation"
    assert feature["geometry"]["type"] == "MultiPolygon"
    measured = feature["properties"]["measurements"]
    assert measured["pixels"] == int((mask == 1).sum())
    parts = [(1, through(Affine.scale(0.5), Polygon(p[0], p[1:])))  # level 0 to level 1
             for p in feature["geometry"]["coordinates"]]
    expected = [(v, g) for v, g in whole_polygons(mask, 255) if v == 1]
    assert measured["regions"] == len(expected) > 1
    assert_same_polygons(parts, expected, 1.0)
    [row] = run_query(str(root), "select features from outputs where output = 'qupath'"
                      ).to_pylist()
    assert row["features"] == 1


def test_qupath_classes_name_what_is_written_and_an_unknown_name_is_one_line():
    from segflow.tasks.config import ClassSpec

    classes = [ClassSpec(id=0, name="Glass"), ClassSpec(id=1, name="tumour"),
               ClassSpec(id=2, name="stroma")]
    assert load_config().output.qupath_class_ids(classes) == {1, 2}
    chosen = load_config(overrides=["output.qupath_classes=[Glass, stroma]"])
    assert chosen.output.qupath_class_ids(classes) == {0, 2}
    wrong = load_config(overrides=["output.qupath_classes=[tumor]"])
    with pytest.raises(SegflowError) as info:
        wrong.output.qupath_class_ids(classes)
    assert "no class named tumor" in str(info.value) and "\n" not in str(info.value)


def test_slide_polygons_qupath_geojson_and_ome_tiff(tmp_path, dask_address):
    tissue = tifffile.imread(DATA / "cmu1_pyramid.tif", level=0)[:1024, :1024]
    slide = write_pyramid_tiff(tmp_path / "slide.tif", tissue, mpp=0.5)
    root = tmp_path / "out"
    cfg = load_config(overrides=[
        "model.kind=otsu", "input.target_mpp=1.0", "tiling.chunk=128", "stats.instances=true",
        "stats.measure=[intensity]", "output.vectors=true", "output.qupath=true",
        "output.export=true"])
    run = segment_image(str(slide), str(root), cfg.model_dump(mode="json"), dask_address)
    group = zarr.open_group(run["output_uri"], mode="r")
    ids = group["labels/instances/0"][:].astype(np.int32)
    assert ids.shape == (512, 512)  # level 1 was read: 1 µm per pixel

    polygons = gpd.read_parquet(root / "vectors" / f"{run['image_id']}.parquet")
    assert polygons.crs is None and len(polygons) == run["instances"] > 10
    # µm from the top-left: level-1 pixels times 1.0 µm
    assert_same_polygons(list(zip(polygons.instance_id, polygons.geometry)),
                         whole_polygons(ids, 0), 1.0)
    objects = run_query(str(root), "select instance_id, centroid_x from instances").to_pylist()
    by_id = dict(zip(polygons.instance_id, polygons.centroid_x))
    assert all(by_id[o["instance_id"]] == o["centroid_x"] for o in objects)

    geojson = json.loads((root / "vectors" / f"{run['image_id']}.geojson").read_text())
    features = geojson["features"]
    assert geojson["type"] == "FeatureCollection" and len(features) == len(polygons)
    first = features[0]["properties"]
    assert first["objectType"] == "detection" and first["classification"]["name"] == "foreground"
    assert first["measurements"]["area mm2"] == pytest.approx(first["measurements"]["pixels"]
                                                              * 1e-6)
    assert len(first["classification"]["color"]) == 3
    assert any(k.endswith(": Mean") for k in first["measurements"])  # QuPath's naming
    level0 = [(1, through(Affine.scale(0.5), g)) for g in
              (shapely.geometry.shape(f["geometry"]) for f in features)]
    assert_same_polygons(level0, [(1, g) for _, g in whole_polygons(ids, 0)], 1.0)

    with tifffile.TiffFile(root / "exports" / f"{run['image_id']}.ome.tif") as tif:
        assert tif.is_ome
        levels = tif.series[0].levels
        np.testing.assert_array_equal(levels[0].asarray(), group["0"][:])
        assert len(levels) == len([k for k in group.array_keys() if k.isdigit()]) > 1
        pixels = tif.ome_metadata
        assert 'PhysicalSizeX="1.0"' in pixels and 'PhysicalSizeXUnit="µm"' in pixels
        image = ElementTree.fromstring(pixels).find(f"{OME_NS}Image")
        legend = json.loads(image.find(f"{OME_NS}Description").text)  # type: ignore[union-attr]
    classes = {c["id"]: c for c in open_store_group(run["output_uri"])[1]["classes"]}
    assert legend == {"labels": {str(i): {"name": c["name"], "colour": c["colour"]}
                                 for i, c in classes.items()}, "nodata": 255}
    assert legend["labels"]["1"]["name"] == "foreground" and legend["labels"]["1"]["colour"]
    ome = root / "exports" / f"{run['image_id']}.ome.tif"
    with tifffile.TiffFile(ome) as tif:  # the class colours as the TIFF's palette
        page = tif.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
        for i, c in classes.items():
            assert tuple(page.colormap[:, i] // 257) == rgb(c["colour"])
    # the slide libraries: tiffslide reads every level and the MPP; OpenSlide's generic TIFF
    # reader reads the MPP but not OME's SubIFD pyramid (level 0 only)
    import openslide
    import tiffslide

    with tiffslide.TiffSlide(ome) as slide:
        assert slide.level_count == len(levels) and slide.properties["tiffslide.mpp-x"] == 1.0
        assert slide.level_dimensions[1] == (256, 256)
    with openslide.OpenSlide(ome) as slide:
        assert float(slide.properties["openslide.mpp-x"]) == 1.0
        assert slide.dimensions == (512, 512)


def test_volume_nifti_label_map_overlays_the_scan(tmp_path, head_nii, dask_address):
    root = tmp_path / "out"
    cfg = load_config(overrides=["model.kind=otsu", "tiling.chunk=32", "output.export=true",
                                 "output.vectors=true"])
    run = segment_image(str(head_nii), str(root), cfg.model_dump(mode="json"), dask_address)
    labels = nib.load(root / "exports" / f"{run['image_id']}.nii.gz")
    source = nib.load(head_nii)
    # the file's own grid (LAS), though the store runs x the RAS+ way: nibabel's canonical
    # view of the export is the store, voxel for voxel
    np.testing.assert_array_equal(labels.affine, source.affine)
    assert labels.shape == source.shape
    # the medical convention: 0 background and nodata (Otsu's "background" class included),
    # the other classes 1..n
    mask = zarr.open_array(run["output_uri"], path="0", mode="r")[:]
    np.testing.assert_array_equal(np.asarray(nib.as_closest_canonical(labels).dataobj),
                                  np.where(mask == 1, 1, 0))
    assert labels.header["intent_code"] == 1002  # NIFTI_INTENT_LABEL
    assert labels.header["descrip"].tobytes().rstrip(b"\0") == b"0 background, 1 foreground"
    assert nib.aff2axcodes(labels.affine) == nib.aff2axcodes(source.affine)
    assert not (root / "vectors").exists()  # volumes are not polygonised


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, dask_address) -> tuple[dict, dict, Path]:
    """k-means and Otsu masks of the Landsat scene, each in its own root."""
    base = tmp_path_factory.mktemp("change")
    runs = []
    for name, kind in (("a", "kmeans"), ("b", "multiotsu")):
        cfg = load_config(overrides=[f"model.kind={kind}", "tiling.chunk=128"])
        runs.append(segment_image(str(LANDSAT), str(base / name), cfg.model_dump(mode="json"),
                                  dask_address))
    return runs[0], runs[1], base


def test_change_matrix_equals_a_bincount_of_the_two_masks(two_runs, dask_address):
    a, b, base = two_runs
    # A named by its store, B by its run id in the output root's catalog
    result = change_masks(a["output_uri"], b["run_id"], str(base / "b"), dask_address)
    ma = zarr.open_array(a["output_uri"], path="0", mode="r")[:].astype(np.int64)
    mb = zarr.open_array(b["output_uri"], path="0", mode="r")[:].astype(np.int64)
    valid = (ma != 255) & (mb != 255)
    expected = np.bincount(ma[valid] * 3 + mb[valid], minlength=12).reshape(4, 3)
    rows = run_query(str(base / "b"), "select class_a, class_b, pixels, area from change"
                     ).to_pylist()
    assert len(rows) == 12
    for row in rows:
        assert row["pixels"] == expected[row["class_a"], row["class_b"]]
        assert row["area"] == pytest.approx(row["pixels"] * 28.5 ** 2 / 1e4)
    change = zarr.open_group(result["output_uri"], mode="r")
    np.testing.assert_array_equal(change["0"][:], np.where(valid, ma * 3 + mb, 255))
    assert change.attrs["segflow"]["complete"] and "1" in change
    assert result["output_uri"].endswith(f"masks/change-{a['image_id']}-{b['image_id']}.zarr")
    names = {c["id"]: c["name"] for c in change.attrs["segflow"]["classes"]}
    b_names = zarr.open_group(b["output_uri"], mode="r").attrs["segflow"]["classes"]
    assert names[1 * 3 + 2] == f"cluster_2 -> {b_names[2]['name']}"


def test_change_between_different_grids_is_one_line(two_runs, tmp_path, cli, dask_address):
    a, _, _ = two_runs
    other = write_geotiff(tmp_path / "other.tif", np.full((1, 64, 64), 7, np.uint8),
                          "EPSG:32633", from_origin(0, 0, 1, 1))
    cfg = load_config(overrides=["model.kind=threshold", "model.params.value=3"])
    b = segment_image(str(other), str(tmp_path / "b"), cfg.model_dump(mode="json"),
                      dask_address)
    code, _, stderr = cli("change", a["output_uri"], b["output_uri"], "--out", tmp_path / "c",
                          "--scheduler", dask_address)
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "the grids differ: shape 443 x 489 vs 64 x 64" in lines[0]
    failed = run_query(str(tmp_path / "c"), "select status, error from runs").to_pylist()
    assert failed[0]["status"] == "failed" and "grids differ" in failed[0]["error"]
