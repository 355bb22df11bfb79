"""Metrics streamed over chunks equal a NumPy computation on the whole real Landsat scene
against its real land-cover map, and a ground truth off the input's grid is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from rasterio.transform import from_origin

from segflow.flows.segment import segment_image
from segflow.tasks.catalog.query import run_query
from segflow.tasks.catalog.tables import write_rows
from segflow.tasks.config import ClassSpec, load_config
from segflow.tasks.errors import SegflowError
from segflow.tasks.mask.store import MaskStore
from segflow.tasks.measure.metrics import evaluate, open_ground_truth
from segflow.tasks.plan.grid import plan_chunks
from segflow.tasks.sources.raster import open_raster
from tests.conftest import write_geotiff

SAMPLES = Path(__file__).parent.parent / "samples"
LANDSAT = SAMPLES / "nc_lsat7_2000_b12345.tif"
LANDCLASS = SAMPLES / "nc_landclass96.tif"  # 1..7 on the same grid, CRS NAD83(HARN) vs NAD83
NAMES = ["none", "developed", "agriculture", "herbaceous", "shrubland", "forest", "water",
         "sediment"]


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, dask_address) -> dict:
    """k-means with k=8 (ids 0..7, like the truth's 1..7 plus one the truth never has),
    chunk 128 so 16 chunks stream."""
    out = tmp_path_factory.mktemp("metrics")
    source = shutil.copy(LANDSAT, out / LANDSAT.name)
    cfg = load_config(overrides=["model.kind=kmeans", "model.params.k=8", "tiling.chunk=128",
                                 "tiling.halo=0", f"model.classes={NAMES}"])
    return segment_image(str(source), str(out / "run"), cfg.model_dump(mode="json"),
                         dask_address)


def reference(mask: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    counted = valid & (mask != 255)
    t, p = truth[counted].astype(np.int64), mask[counted].astype(np.int64)
    return np.bincount(t * 8 + p, minlength=64).reshape(8, 8)


def test_metrics_equal_numpy_reference(segmented, client, tmp_path):
    reader = open_raster(str(LANDSAT))
    truth = open_ground_truth(str(LANDCLASS), reader)
    plan = plan_chunks(reader.spatial_shape, 128, 0)
    store = MaskStore(uri=segmented["output_uri"], dtype="uint8", nodata=255)
    classes = [ClassSpec(id=i, name=n) for i, n in enumerate(NAMES)]
    result = evaluate(client, store, plan, truth, classes)
    assert len(plan.chunks) == 16

    mask = zarr.open_array(segmented["output_uri"], path="0", mode="r")[:]
    with rasterio.open(LANDCLASS) as ds:
        gt = ds.read(1, masked=True)
    valid = ~np.ma.getmaskarray(gt)
    assert (~valid).sum() == 1  # the truth's own nodata cell is left out
    expected = reference(mask, gt.filled(0), valid)
    np.testing.assert_array_equal(result.matrix, expected)
    assert result.unknown == 0 and expected.sum() > 150_000

    rows = {r["class_id"]: r for r in result.metric_rows()}
    for k in range(8):
        is_t, is_p = (gt.filled(0) == k) & valid & (mask != 255), (mask == k) & valid
        tp, fp, fn = int((is_t & is_p).sum()), int((~is_t & is_p).sum()), int((is_t & ~is_p).sum())
        row = rows[k]
        assert (row["tp"], row["fp"], row["fn"], row["class_name"]) == (tp, fp, fn, NAMES[k])
        assert row["iou"] == pytest.approx(tp / (tp + fp + fn))
        assert row["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert row["precision"] == (pytest.approx(tp / (tp + fp)) if tp + fp else None)
        assert row["recall"] == (pytest.approx(tp / (tp + fn)) if tp + fn else None)
    assert rows[0]["recall"] is None and rows[0]["fp"] > 0  # the truth has no class 0

    confusion = result.confusion_rows()
    assert len(confusion) == 64 and sum(r["pixels"] for r in confusion) == expected.sum()
    root = str(tmp_path / "cat")
    keys = {"run_id": "r1", "image_id": "i"}
    write_rows(root, "metrics", "r1", [{**r, **keys} for r in rows.values()])
    write_rows(root, "confusion", "r1", [{**r, **keys} for r in confusion])
    write_rows(root, "runs", "r1", [keys])  # result rows count once their run's row exists
    table = run_query(root, "SELECT sum(pixels) AS n FROM confusion WHERE true_class = "
                            "predicted_class").to_pydict()
    assert table["n"] == [int(np.trace(expected))]
    nulls = run_query(root, "SELECT class_id FROM metrics WHERE recall IS NULL").to_pydict()
    assert nulls["class_id"] == [0]


@pytest.mark.parametrize("case", ["shape", "shift"])
def test_truth_off_the_grid_is_a_one_line_error(case, tmp_path):
    reader = open_raster(str(LANDSAT))
    with rasterio.open(LANDCLASS) as ds:
        data, crs, (a, _, c, _, e, f) = ds.read(), ds.crs, tuple(ds.transform)[:6]
    if case == "shape":
        data = data[:, :400, :450]
    else:  # same shape, origin one cell east
        c += a
    path = write_geotiff(tmp_path / "gt.tif", data, crs, from_origin(c, f, a, -e), nodata=-99999)
    with pytest.raises(SegflowError) as info:
        open_ground_truth(str(path), reader)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    assert ("shape (400, 450)" in message) if case == "shape" else ("1 cells off" in message)
