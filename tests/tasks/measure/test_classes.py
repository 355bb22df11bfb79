"""tasks/measure/classes.py: per-class cells, sizes and fractions summed over chunks, against
``np.bincount`` of the whole mask and per-row cell areas summed here."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from segflow.tasks.config import ClassSpec
from segflow.tasks.mask.store import MaskStore
from segflow.tasks.measure.classes import class_rows, count_chunk
from segflow.tasks.plan.grid import plan_chunks

CLASSES = [ClassSpec(id=0, name="water"), ClassSpec(id=1, name="forest"),
           ClassSpec(id=2, name="town")]


@pytest.fixture
def mask_store(tmp_path) -> tuple[MaskStore, np.ndarray]:
    """A 45 x 37 class mask with nodata (255) and a stray id beyond the table (7), in a store."""
    rng = np.random.default_rng(0)
    mask = rng.choice([0, 1, 2, 255], p=[0.3, 0.4, 0.2, 0.1], size=(45, 37)).astype(np.uint8)
    mask[3, 4] = 7
    uri = str(tmp_path / "m.zarr")
    zarr.create_array(store=uri, name="0", data=mask, chunks=(16, 16))
    return MaskStore(uri=uri, dtype="uint8", nodata=255), mask


def test_counts_and_areas_equal_the_whole_mask(mask_store):
    store, mask = mask_store
    row_areas = np.linspace(900.0, 1100.0, mask.shape[0])  # m² per cell, row by row
    plan = plan_chunks(mask.shape, 16, 0)
    counts = [count_chunk(c, store, len(CLASSES), row_areas) for c in plan.chunks]
    assert len(counts) == 9

    known = np.where(np.isin(mask, [0, 1, 2]), mask, 3)  # nodata and strays: the last slot
    np.testing.assert_array_equal(sum(c.pixels for c in counts),
                                  np.bincount(known.ravel(), minlength=4))
    rows = class_rows(CLASSES, counts, "ha")
    valid = np.isin(mask, [0, 1, 2])
    for row, spec in zip(rows, CLASSES):
        cells = mask == spec.id
        assert (row["class_id"], row["class_name"]) == (spec.id, spec.name)
        assert row["pixels"] == cells.sum() and row["area_unit"] == "ha"
        area = sum(row_areas[r] for r, _ in zip(*np.nonzero(cells)))
        assert row["area"] == pytest.approx(area / 1e4, rel=1e-12)
        assert row["fraction"] == pytest.approx(cells.sum() / valid.sum())
        assert row["objects"] is None and row["density"] is None


def test_without_a_physical_size_areas_are_cell_counts_and_densities_per_cell(mask_store):
    store, mask = mask_store
    plan = plan_chunks(mask.shape, 20, 0)
    counts = [count_chunk(c, store, len(CLASSES), None) for c in plan.chunks]
    rows = class_rows(CLASSES, counts, None, objects={2: 5})
    valid = int(np.isin(mask, [0, 1, 2]).sum())
    assert [r["area"] for r in rows] == [float((mask == k).sum()) for k in range(3)]
    assert {r["area_unit"] for r in rows} == {"px"}
    town = rows[2]
    assert town["objects"] == 5 and town["density"] == pytest.approx(5 / valid)
    assert rows[0]["objects"] is None  # not a thing class: no count

