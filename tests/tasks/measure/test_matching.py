"""tasks/measure/matching.py: predicted objects matched one to one to true objects at IoU >= 0.5,
summed from sparse per-chunk overlaps, against a dense IoU matrix of the whole image and, where
IoU is exactly 0.5, one match per object."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import zarr

from segflow.tasks.mask.store import INSTANCES, MaskStore
from segflow.tasks.measure.matching import instance_metrics
from segflow.tasks.plan.grid import plan_chunks


class MapClient:
    """``client.map`` / ``client.gather`` run here, one call per item."""

    def map(self, func, items, pure=True, **kwargs):
        return [func(item, **kwargs) for item in items]

    def gather(self, futures):
        return futures


class Truth:
    """A one-band label image with a valid mask, read window by window like a source."""

    def __init__(self, labels: np.ndarray, valid: np.ndarray) -> None:
        self.labels, self.valid = labels, valid

    def read(self, box):
        return self.labels[box][None], self.valid[box]


def _store(tmp_path, ids: np.ndarray) -> MaskStore:
    uri = str(tmp_path / "m.zarr")
    zarr.create_array(store=uri, name=f"{INSTANCES}/0", data=ids.astype(np.uint32),
                      chunks=(16, 16))
    return MaskStore(uri=uri, dtype="uint8", nodata=255)


def _dense_iou(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    n_p, n_t = int(pred.max()), int(true.max())
    iou = np.zeros((n_p, n_t))
    for p, t in itertools.product(range(1, n_p + 1), range(1, n_t + 1)):
        a, b = pred == p, true == t
        iou[p - 1, t - 1] = (a & b).sum() / (a | b).sum() if (a | b).any() else 0
    return iou


def _metrics(tmp_path, pred: np.ndarray, true: np.ndarray, valid: np.ndarray, chunk: int):
    objects = SimpleNamespace(count=int(pred.max()),
                              sums=SimpleNamespace(pixels=np.bincount(pred.ravel())[1:]))
    plan = plan_chunks(pred.shape, chunk, 0)
    [row] = instance_metrics(MapClient(), _store(tmp_path, pred), plan, Truth(true, valid),
                             objects)
    return row


def test_matches_equal_the_dense_iou_matrix_whatever_the_chunks(tmp_path):
    rng = np.random.default_rng(0)
    true = np.zeros((60, 50), np.int32)
    pred = np.zeros((60, 50), np.int32)
    for k in range(1, 13):  # boxes, each predicted shifted by 0..4 cells (IoU from ~1 to < 0.5)
        r, c = 5 * (k - 1) % 50, (11 * k) % 40
        true[r:r + 6, c:c + 8] = k
        dr, dc = rng.integers(0, 5, 2)
        pred[r + dr:r + dr + 6, c + dc:c + dc + 8] = k
    pred[50:55, 40:48] = 13  # a false positive
    valid = np.ones(true.shape, bool)
    iou = _dense_iou(pred, true)
    matched = iou[iou >= 0.5]  # at IoU > 0.5 a pair is the only candidate of both objects
    assert 0 < len(matched) < 12
    for chunk in (16, 60):
        row = _metrics(tmp_path / str(chunk), pred, true, valid, chunk)
        assert (row["tp"], row["fp"], row["fn"]) == (len(matched), 13 - len(matched),
                                                     12 - len(matched))
        assert row["precision"] == pytest.approx(len(matched) / 13)
        assert row["recall"] == pytest.approx(len(matched) / 12)
        assert row["f1"] == pytest.approx(2 * len(matched) / 25)
        assert row["mean_matched_iou"] == pytest.approx(matched.mean())


def test_ties_at_one_half_match_each_object_once(tmp_path):
    """A predicted 2x2 box and two true objects of 2 cells each inside it: IoU exactly 0.5 with
    both; one of them is matched, never both."""
    pred = np.zeros((8, 8), np.int32)
    true = np.zeros((8, 8), np.int32)
    pred[2:4, 2:4] = 1
    true[2:4, 2] = 1
    true[2:4, 3] = 2
    iou = _dense_iou(pred, true)
    assert (iou == 0.5).all()
    row = _metrics(tmp_path, pred, true, np.ones(pred.shape, bool), 3)  # split over 4 chunks
    assert (row["tp"], row["fp"], row["fn"]) == (1, 0, 1)
    assert row["mean_matched_iou"] == 0.5


def test_cells_invalid_in_the_truth_count_for_neither(tmp_path):
    pred = np.zeros((10, 10), np.int32)
    true = np.zeros((10, 10), np.int32)
    pred[0:4, 0:4] = 1
    true[0:4, 0:4] = 1
    true[6:9, 6:9] = 2  # under invalid cells: not a true object at all
    valid = np.ones(true.shape, bool)
    valid[5:, 5:] = False
    row = _metrics(tmp_path, pred, true, valid, 5)
    assert (row["tp"], row["fp"], row["fn"], row["true"]) == (1, 0, 0, 1)
    assert row["mean_matched_iou"] == 1.0
