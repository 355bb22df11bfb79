"""Per-instance measurements, streamed: cells, physical size, centroid and bounding box.

Each chunk sums what it holds of every object (cells, area, index sums, index box); the client
merges the partial sums by object id, O(objects) and never O(pixels), and maps centroids and
boxes to physical coordinates with the reader's spatial reference only at the end.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from segflow.tasks.measure.classes import UNITS
from segflow.tasks.sources.base import SourceBase


@dataclass(frozen=True)
class InstanceSums:
    """What one chunk (or, merged, the whole image) holds of each object, in cell indexes."""

    ids: np.ndarray  # (n,) object ids
    pixels: np.ndarray  # (n,) cells
    area: np.ndarray  # (n,) size in the reader's base unit (m2, um2, mm3); 0 without one
    index_sum: np.ndarray  # (n, ndim) sum of the cells' indexes along each axis
    lo: np.ndarray  # (n, ndim) smallest index along each axis
    hi: np.ndarray  # (n, ndim) largest index + 1 along each axis


def chunk_sums(local: np.ndarray, ids: np.ndarray, origin: tuple[int, ...],
               row_areas: np.ndarray | None) -> InstanceSums:
    """Partial sums of one chunk whose cells carry local labels 1..n (0: none), label k
    being object ``ids[k - 1]``; ``origin`` is the chunk's first cell in the image."""
    n, ndim = len(ids), local.ndim
    flat = local.ravel().astype(np.intp)
    pixels = np.bincount(flat, minlength=n + 1)[1:]
    grids: tuple[np.ndarray, ...] = np.indices(local.shape, sparse=True)
    index_sum = np.stack(
        [np.bincount(flat, weights=np.broadcast_to(g, local.shape).ravel(), minlength=n + 1)[1:]
         for g in grids], axis=1) + pixels[:, None] * np.asarray(origin)
    area: np.ndarray = np.zeros(n)
    if row_areas is not None:
        per_cell = row_areas[origin[0] + grids[0]]
        area = np.bincount(flat, weights=np.broadcast_to(per_cell, local.shape).ravel(),
                           minlength=n + 1)[1:]
    boxes = ndimage.find_objects(local, max_label=n)
    lo = np.array([[s.start for s in box] for box in boxes], np.int64).reshape(n, ndim)
    hi = np.array([[s.stop for s in box] for box in boxes], np.int64).reshape(n, ndim)
    return InstanceSums(ids=np.asarray(ids, np.int64), pixels=pixels, area=area,
                        index_sum=index_sum, lo=lo + origin, hi=hi + origin)


@dataclass(frozen=True)
class Instances:
    """Every object of one image; object id i is row i - 1 of each array."""

    class_ids: np.ndarray  # (N,)
    sums: InstanceSums
    cut: int = 0  # instance models: objects that reached their read window's edge
    capped: int = 0  # instance models: model calls whose detections hit the model's cap

    @property
    def count(self) -> int:
        return len(self.class_ids)

    def counts_per_class(self) -> dict[int, int]:
        """Objects per class id (for densities such as nuclei per mm² of tissue)."""
        ids, counts = np.unique(self.class_ids, return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, counts)}

    def rows(self, reader: SourceBase, unit: str | None) -> list[dict[str, Any]]:
        """One catalog row per object; size in ``unit`` (cell counts, ``px``, when None);
        centroid and box in the reader's physical axes (z is None for 2-D)."""
        s = self.sums
        if not self.count:
            return []
        centroid = reader.physical(s.index_sum / s.pixels[:, None] + 0.5)
        corners = np.stack([reader.physical(np.where(pick, s.hi, s.lo))
                            for pick in itertools.product([False, True], repeat=s.lo.shape[1])])
        low, high = corners.min(axis=0), corners.max(axis=0)
        area = s.area / UNITS[unit] if unit else s.pixels.astype(np.float64)
        axes = reader.physical_axes
        columns: dict[str, Any] = {
            "instance_id": s.ids, "class_id": self.class_ids, "pixels": s.pixels,
            "area": area, "area_unit": [unit or "px"] * self.count}
        for name in ("x", "y", "z"):
            k = axes.index(name) if name in axes else None
            for prefix, values in (("centroid", centroid), ("bbox_min", low), ("bbox_max", high)):
                columns[f"{prefix}_{name}"] = (values[:, k] if k is not None
                                               else [None] * self.count)
        return [dict(zip(columns, row)) for row in zip(*(_plain(v) for v in columns.values()))]


def _plain(values: Any) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def merge_sums(parts: list[InstanceSums], n_objects: int, ndim: int) -> InstanceSums:
    """Sum the chunks' partials into one row per object id 1..n_objects."""
    ids = np.concatenate([p.ids for p in parts] or [np.empty(0, np.int64)]) - 1

    def stacked(name: str, width: int | None) -> np.ndarray:
        empty = np.empty((0, width) if width else 0)
        return np.concatenate([getattr(p, name) for p in parts] or [empty])

    pixels = np.bincount(ids, weights=stacked("pixels", None), minlength=n_objects)
    area = np.bincount(ids, weights=stacked("area", None), minlength=n_objects)
    index_sum = np.zeros((n_objects, ndim))
    np.add.at(index_sum, ids, stacked("index_sum", ndim))
    lo = np.full((n_objects, ndim), np.iinfo(np.int64).max)
    np.minimum.at(lo, ids, stacked("lo", ndim).astype(np.int64))
    hi = np.zeros((n_objects, ndim), np.int64)
    np.maximum.at(hi, ids, stacked("hi", ndim).astype(np.int64))
    return InstanceSums(ids=np.arange(1, n_objects + 1), pixels=pixels.astype(np.int64),
                        area=area, index_sum=index_sum, lo=lo, hi=hi)
