"""Instances labelled chunk by chunk equal a whole-image skimage labelling, ids included, and
their measurements equal regionprops mapped through the file's own affine."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
import zarr
from rasterio.transform import from_origin
from scipy.ndimage import gaussian_filter
from skimage.measure import label, regionprops

from segflow.flows.segment import segment_image
from segflow.tasks.catalog.query import run_query
from segflow.tasks.catalog.tables import write_rows
from segflow.tasks.config import ClassSpec, load_config
from segflow.tasks.errors import SegflowError
from segflow.tasks.mask.store import MaskStore, open_or_create
from segflow.tasks.measure.instances import label_instances, measure_instances
from segflow.tasks.models.instance import thing_ids
from segflow.tasks.plan.grid import Plan, plan_chunks
from segflow.tasks.sources.raster import open_raster
from segflow.tasks.sources.slide import Slide
from segflow.tasks.sources.volume import open_nifti
from tests.conftest import write_geotiff

CLASSES = [ClassSpec(id=0, name="background"), ClassSpec(id=1, name="cell"),
           ClassSpec(id=2, name="nucleus"), ClassSpec(id=3, name="water")]
THINGS = ["cell", "nucleus"]  # water is stuff


def spiral(size: int) -> np.ndarray:
    """A square 1-px spiral with 1-px gaps: one object that winds through many chunks."""
    out = np.zeros((size, size), bool)
    r, c, dr, dc, length = size // 2, size // 2, 0, 1, 1
    while True:
        for _ in range(2):
            for _ in range(length):
                if not (0 <= r < size and 0 <= c < size):
                    return out
                out[r, c] = True
                r, c = r + dr, c + dc
            dr, dc = dc, -dr
        length += 2


def shapes_2d() -> np.ndarray:
    """Thin, winding and touching objects laid across 16- and 48-px chunk borders."""
    mask = np.zeros((150, 200), np.uint8)
    mask[5, 2:160] = 1  # a 1-px line across ten 16-px chunks
    mask[10:140, 165] = 2  # a 1-px column of the other class
    mask[20:91, 20:91][spiral(71)] = 1
    mask[118, 20:150] = 2  # a comb: spine, and teeth every 4 px (one object)
    mask[119:146, 20:150:4] = 2
    for step in range(21):  # a staircase going down-right (faces touch at each step)
        mask[95 + step, 100 + 2 * step:103 + 2 * step] = 1
    mask[60:95, 180] = mask[60:95, 188] = 1  # a U whose base lies in the chunk below
    mask[95, 180:189] = 1
    mask[126:140, 54:64] = 1  # two classes touching across a chunk face: two objects
    mask[126:140, 64:74] = 2
    mask[100:112, 20:40] = 3  # stuff touching things: never an object
    mask[100:112, 40] = 1
    mask[30:50, 95:130] = 255  # nodata
    rng = np.random.default_rng(7)
    noise = rng.choice([0, 1, 2, 3], p=[0.45, 0.3, 0.15, 0.1], size=(30, 48))
    mask[120:150, 152:200] = noise  # many small and percolating objects of both classes
    mask[63, 150] = mask[64, 151] = 1  # touching only diagonally, across a face: two objects
    return mask


def write_mask(uri: str, mask: np.ndarray, chunk: int,
               dims: tuple[str, ...]) -> tuple[MaskStore, Plan]:
    plan = plan_chunks(mask.shape, chunk, 0)
    store, _, _ = open_or_create(uri, plan, dims, len(CLASSES), {}, "test", None, {})
    for c in plan.chunks:
        store.write_chunk(c, mask[c.core])
    return store, plan


def whole_label(mask: np.ndarray, things: list[int]) -> np.ndarray:
    """scikit-image's labels of the whole mask's things (class + 1: class 0 can be a thing)."""
    return label(np.where(np.isin(mask, things), mask.astype(np.int32) + 1, 0), background=0,
                 connectivity=1)


@pytest.fixture
def geo_raster(tmp_path: Path) -> Path:
    """The mask as a geographic GeoTIFF: per-row pixel areas differ (0.01° at 45° N)."""
    return write_geotiff(tmp_path / "geo.tif", shapes_2d()[None], "EPSG:4326",
                         from_origin(-80.0, 46.0, 0.01, 0.01))


@pytest.mark.parametrize("chunk", [16, 48])
def test_chunked_ids_equal_whole_image_label(chunk, tmp_path, client):
    mask = shapes_2d()
    things = thing_ids(CLASSES, THINGS, "test")
    store, plan = write_mask(str(tmp_path / "m.zarr"), mask, chunk, ("y", "x"))
    result = label_instances(client, store, plan, things, None)
    ids = store.instances()[:]
    expected = whole_label(mask, things)
    np.testing.assert_array_equal(ids, expected)  # same ids, not just the same partition
    assert result.count == expected.max() > 100
    assert ids.dtype == np.uint32
    assert ids[100:112, 20:40].max() == 0 and ids[30:50, 95:130].max() == 0  # stuff, nodata
    assert len(np.unique(ids[20:91, 20:91][spiral(71)])) == 1  # the spiral is one object
    assert ids[5, 2] == ids[5, 159] and ids[60, 180] == ids[60, 188]  # line, U
    assert ids[95, 100] == ids[115, 142]  # staircase
    assert ids[130, 63] != ids[130, 64]  # different classes touching stay apart
    assert 0 < ids[63, 150] != ids[64, 151] > 0
    by_class = {k: len(np.unique(expected[(mask == k) & (expected > 0)])) for k in things}
    assert result.counts_per_class() == by_class
    np.testing.assert_array_equal(result.class_ids,
                                  [mask[tuple(p.coords[0])] for p in regionprops(expected)])


def test_class_0_is_a_thing_when_named(tmp_path, client):
    """k-means has no background class: its first cluster (id 0) has objects when asked."""
    mask = shapes_2d()
    classes = [c.model_copy(update={"name": f"cluster_{c.id + 1}"}) for c in CLASSES]
    things = thing_ids(classes, ["cluster_1", "cluster_2"], "test")
    assert things == [0, 1]
    store, plan = write_mask(str(tmp_path / "m.zarr"), mask, 16, ("y", "x"))
    result = label_instances(client, store, plan, things, None)
    expected = whole_label(mask, things)
    np.testing.assert_array_equal(store.instances()[:], expected)
    by_class = result.counts_per_class()
    assert by_class[0] == len(np.unique(expected[mask == 0])) > 0 and by_class[1] > 0


def test_measurements_equal_regionprops_with_the_affine(geo_raster, tmp_path, client):
    mask = shapes_2d()
    reader = open_raster(str(geo_raster))
    row_areas = reader.cell_measure()
    store, plan = write_mask(str(tmp_path / "m.zarr"), mask, 32, ("y", "x"))
    result = label_instances(client, store, plan, thing_ids(CLASSES, None, "test"), row_areas)
    rows = result.rows(reader, "ha")
    with rasterio.open(geo_raster) as ds:
        affine = ds.transform
    props = regionprops(whole_label(mask, [1, 2, 3]))
    assert [r["instance_id"] for r in rows] == [p.label for p in props]
    for row, p in zip(rows, props):
        r0, c0, r1, c1 = p.bbox
        x0, y0 = affine @ (c0, r0)
        x1, y1 = affine @ (c1, r1)
        cx, cy = affine @ (p.centroid[1] + 0.5, p.centroid[0] + 0.5)
        assert row["pixels"] == p.area
        assert row["area"] == pytest.approx(row_areas[p.coords[:, 0]].sum() / 1e4, rel=1e-9)
        assert (row["area_unit"], row["centroid_z"], row["bbox_max_z"]) == ("ha", None, None)
        np.testing.assert_allclose([row["centroid_x"], row["centroid_y"]], [cx, cy], atol=1e-9)
        np.testing.assert_allclose(
            [row["bbox_min_x"], row["bbox_min_y"], row["bbox_max_x"], row["bbox_max_y"]],
            [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], atol=1e-9)
    assert len({r["area"] for r in rows if r["pixels"] == 1}) > 1  # per-row areas differ
    # a reused run re-measures the labelled store to the same rows
    assert measure_instances(client, store, plan, row_areas).rows(reader, "ha") == rows
    root = str(tmp_path / "out")
    write_rows(root, "instances", "run1", [{**r, "run_id": "run1", "image_id": "g"} for r in rows])
    write_rows(root, "runs", "run1", [{"run_id": "run1", "image_id": "g"}])  # rows count with it
    table = run_query(root, "SELECT class_id, count(*) AS n FROM instances GROUP BY 1 ORDER BY 1")
    assert dict(zip(*table.to_pydict().values())) == result.counts_per_class()


@pytest.fixture
def volume_mask(tmp_path: Path) -> tuple[np.ndarray, Path]:
    """A 40x36x44 class volume (blobs of two thing classes and stuff, a 1-voxel line, a 3-D
    staircase) and a NIfTI on an oblique 0.8-1.2 mm grid to measure it in."""
    rng = np.random.default_rng(3)
    field = gaussian_filter(rng.random((40, 36, 44)), 1.5)
    mask = np.digitize(field, np.quantile(field, [0.4, 0.6, 0.75])).astype(np.uint8)
    mask[:, 18, 22] = 1  # a line through every chunk along i
    for s in range(30):
        mask[5 + s, 2 + s, 3 + s:5 + s] = 2
        mask[5 + s, 3 + s, 4 + s] = 2
    angle = np.deg2rad(20)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0],
                               [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]) @ np.diag(
        [0.8, 1.0, 1.2])
    affine[:3, 3] = [-20.0, 15.0, 7.5]
    path = tmp_path / "vol.nii"
    nib.save(nib.Nifti1Image(mask.astype(np.int16), affine), path)
    return mask, path


def test_volume_ids_and_measurements(volume_mask, tmp_path, client):
    mask, path = volume_mask
    reader = open_nifti(str(path))
    row_areas = reader.cell_measure()
    store, plan = write_mask(str(tmp_path / "v.zarr"), mask, 16, ("i", "j", "k"))
    result = label_instances(client, store, plan, [1, 2], row_areas)
    expected = whole_label(mask, [1, 2])
    np.testing.assert_array_equal(store.instances()[:], expected)
    assert len(plan.chunks) == 27 and result.count == expected.max() > 10
    affine = nib.load(path).affine
    rows = result.rows(reader, "mL")
    for row, p in zip(rows, regionprops(expected)):
        lo, hi = np.array(p.bbox[:3]) - 0.5, np.array(p.bbox[3:]) - 0.5
        corners = nib.affines.apply_affine(
            affine, [[(lo, hi)[b][a] for a, b in enumerate(pick)]
                     for pick in np.ndindex(2, 2, 2)])
        assert row["instance_id"] == p.label and row["pixels"] == p.area
        assert row["area"] == pytest.approx(p.area * 0.8 * 1.0 * 1.2 / 1e3)
        np.testing.assert_allclose([row[f"centroid_{a}"] for a in "xyz"],
                                   nib.affines.apply_affine(affine, p.centroid), atol=1e-9)
        np.testing.assert_allclose([row[f"bbox_min_{a}"] for a in "xyz"], corners.min(0),
                                   atol=1e-9)
        np.testing.assert_allclose([row[f"bbox_max_{a}"] for a in "xyz"], corners.max(0),
                                   atol=1e-9)


def test_things_resolve_names_and_reject_unknown():
    assert thing_ids(CLASSES, None, "s") == [1, 2, 3]
    assert thing_ids(CLASSES, ["nucleus"], "s") == [2]
    with pytest.raises(SegflowError, match=r"s: stats.things names unknown classes \['nuclei'\]"):
        thing_ids(CLASSES, ["nuclei"], "s")


def test_slide_physical_is_x_y_in_micrometres():
    slide = Slide(uri="s.tif", spatial_shape=(100, 80), bands=(1, 2, 3), dtype="uint8", mpp=0.5)
    np.testing.assert_allclose(slide.physical(np.array([[0.5, 1.5], [100.0, 0.0]])),
                               [[0.75, 0.25], [0.0, 50.0]])
    assert slide.physical_axes == ("x", "y")


def test_slide_objects_and_density_per_mm2_of_tissue(tmp_path, dask_address):
    """Panoptic run on the real H&E slide: haematoxylin-positive blobs are objects (things),
    glass and tissue are stuff; the count and the density per mm² of tissue follow from the
    mask, skimage's labelling and the slide's pixel size alone."""
    slide = Path(__file__).parent / "data" / "cmu1_pyramid.tif"
    cfg = load_config(Path(__file__).parents[1] / "configs" / "pathology.yaml",
                      ["tiling.chunk=512", "stats.instances=true",
                       "stats.things=[hematoxylin_positive]", "output.pyramid=false"])
    result = segment_image(str(slide), str(tmp_path / "out"), cfg.model_dump(mode="json"),
                           dask_address)
    mask = zarr.open_array(result["output_uri"], path="0", mode="r")[:]
    ids = zarr.open_array(result["output_uri"], path="labels/instances/0", mode="r")[:]
    positive = np.where(mask == 2, 2, 0)
    np.testing.assert_array_equal(ids, label(positive, connectivity=1))
    n_objects = int(ids.max())
    assert n_objects > 100 and result["instances"] == n_objects
    rows = {r["class_name"]: r for r in result["class_stats"]}
    assert rows["glass"]["objects"] is None and rows["tissue"]["objects"] is None  # stuff
    mpp = 0.998  # level 1 of the 0.499 µm/px pyramid
    valid_mm2 = int((mask != 255).sum()) * (mpp * 1e-3) ** 2
    assert rows["hematoxylin_positive"]["objects"] == n_objects
    assert rows["hematoxylin_positive"]["density"] == pytest.approx(n_objects / valid_mm2,
                                                                    rel=1e-3)
