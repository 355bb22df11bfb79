"""Quality against a ground-truth label image: a confusion matrix streamed over the chunks,
then IoU, Dice, precision and recall per class.

The truth is opened with the project's readers and must lie on the input's grid. Each worker
reads its chunk of truth and mask and returns a (classes x classes) count matrix; the client
only sums these. Cells that are nodata or invalid in either, and cells whose truth value is not
a class id of the model (counted apart as ``unknown``), are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from distributed import Client
from pyproj import Transformer

from segflow.tasks.config import ClassSpec, InputConfig
from segflow.tasks.errors import UserError
from segflow.tasks.mask.store import MaskStore
from segflow.tasks.plan.grid import Chunk, Plan
from segflow.tasks.runtime.zarr_nodes import read_cells
from segflow.tasks.sources.base import SourceBase
from segflow.tasks.sources.georef import Georef
from segflow.tasks.sources.registry import open_source

GRID_TOLERANCE = 0.25  # cells: how far the truth's grid may sit from the input's


def _check_grid(uri: str, truth: Georef, reader: Georef, shape: tuple[int, ...],
                what: str) -> None:
    """The truth's corners, taken to the input's CRS, must land on the input's corners."""
    if (truth.crs is None) != (reader.crs is None):
        raise UserError(uri, f"{what} and input must both have a CRS or both have none")
    height, width = shape
    corners = np.array([[0, 0], [0, width], [height, 0], [height, width]], np.float64)
    x, y = truth.physical(corners).T
    if truth.crs is not None and not truth.crs.equals(reader.crs):
        x, y = Transformer.from_crs(truth.crs, reader.crs, always_xy=True).transform(x, y)
    cols, rows = ~reader.affine @ (np.asarray(x), np.asarray(y))
    shift = float(np.abs(np.stack([rows, cols], axis=1) - corners).max())
    if not shift <= GRID_TOLERANCE:
        raise UserError(uri, f"{what} is not on the input's grid: its corners are "
                             f"{shift:.3g} cells off (different transform or CRS)")


def open_ground_truth(uri: str, reader: SourceBase, what: str = "ground truth") -> SourceBase:
    """Open a label image on the input's grid (band 1: ground truth, regions) and check it
    lies on ``reader``'s grid."""
    truth = open_source(uri, InputConfig(bands=[1]))
    if truth.spatial_shape != reader.spatial_shape:
        raise UserError(uri, f"{what} has shape {truth.spatial_shape} but the input "
                             f"has {reader.spatial_shape}")
    if reader.georef is not None and truth.georef is not None:
        _check_grid(uri, truth.georef, reader.georef, reader.spatial_shape, what)
    return truth


def confusion_chunk(chunk: Chunk, store: MaskStore, truth: SourceBase,
                    lookup: np.ndarray) -> tuple[np.ndarray, int]:
    """Counts (true, predicted) of one chunk, rows and columns in class-table order, and the
    number of valid cells whose truth value is not a class id (runs on a worker).

    ``lookup`` maps a class id to its position in the class table (-1: not a class)."""
    n = int(lookup.max()) + 1
    pred = read_cells(store.labels(), chunk.core).astype(np.int64)
    values, valid = truth.read(chunk.core)
    value = values[0]
    predicted = np.full(pred.shape, -1)
    known = (pred != store.nodata) & (pred < len(lookup))
    predicted[known] = lookup[pred[known]]
    true = np.full(pred.shape, -1)
    known = valid & (value >= 0) & (value < len(lookup)) & (np.mod(value, 1) == 0)
    true[known] = lookup[value[known].astype(np.int64)]
    counted = (true >= 0) & (predicted >= 0)
    unknown = int((valid & (predicted >= 0) & (true < 0)).sum())
    matrix = np.bincount(true[counted] * n + predicted[counted], minlength=n * n)
    return matrix.reshape(n, n), unknown


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


@dataclass(frozen=True)
class Evaluation:
    """The summed confusion matrix of one image."""

    classes: list[ClassSpec]
    matrix: np.ndarray  # (n, n) cells: row = true class, column = predicted, class-table order
    unknown: int  # valid cells whose truth value is no class id: left out of the matrix

    def metric_rows(self) -> list[dict[str, Any]]:
        """Per class tp, fp, fn and iou, dice, precision, recall. A ratio whose denominator is
        0 is None: iou and dice when the class is in neither truth nor prediction, precision
        when nothing is predicted as it, recall when the truth has none of it."""
        rows = []
        for k, spec in enumerate(self.classes):
            tp = int(self.matrix[k, k])
            fp = int(self.matrix[:, k].sum()) - tp
            fn = int(self.matrix[k, :].sum()) - tp
            rows.append({"class_id": spec.id, "class_name": spec.name,
                         "iou": _ratio(tp, tp + fp + fn), "dice": _ratio(2 * tp, 2 * tp + fp + fn),
                         "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
                         "tp": tp, "fp": fp, "fn": fn})
        return rows

    def confusion_rows(self) -> list[dict[str, Any]]:
        """Every (true, predicted) pair of class ids with its cell count, zeros included."""
        return [{"true_class": t.id, "predicted_class": p.id, "pixels": int(self.matrix[i, j])}
                for i, t in enumerate(self.classes) for j, p in enumerate(self.classes)]


def evaluate(client: Client, store: MaskStore, plan: Plan, truth: SourceBase,
             classes: list[ClassSpec]) -> Evaluation:
    """Stream the confusion matrix of the written mask against ``truth`` over every chunk."""
    lookup = np.full(max(c.id for c in classes) + 1, -1)
    lookup[[c.id for c in classes]] = np.arange(len(classes))
    parts = client.gather(client.map(confusion_chunk, plan.chunks, store=store, truth=truth,
                                     lookup=lookup, pure=False))
    return Evaluation(classes=classes, matrix=sum(p[0] for p in parts),
                      unknown=sum(p[1] for p in parts))
