"""The instance-model interface and the ownership rule that makes tiled instances exact.

An instance model maps a read window (a chunk or a tile, with its halo) to objects: a label
image over the window with a class and a score per label. Windows overlap, so one object is
seen by several of them; it is kept only by the window whose *core* holds its **canonical
point**: its first cell in raster order (or, for a prompted object, the prompt). The first
cell is a cell of the object (a bbox centre may lie outside a crescent), an integer with no
rounding ties, and the order of first cells is the order ``skimage.measure.label`` numbers a
whole image by, so the merged ids are numbered exactly as a whole-image pass numbers them.

An object that reaches its window's outer edge (other than the image border) may continue
beyond what the model saw: it is *cut*, counted, and warned about or refused
(``stats.on_cut``); the halo must cover the model's reach plus ``stats.max_object``.

Overlapping masks (Mask R-CNN, SAM) become one partition by score: the higher score keeps a
contested cell, ties go to the object listed first.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy import ndimage

from segflow.tasks.config import ClassSpec
from segflow.tasks.errors import UserError
from segflow.tasks.models.base import SegmentationModel
from segflow.tasks.plan.grid import plan_grid


def thing_ids(classes: list[ClassSpec], things: list[str] | None, source: str) -> list[int]:
    """Class ids that are objects: the named ``things``, or every class but id 0 when None."""
    if things is None:
        return sorted(c.id for c in classes if c.id != 0)
    by_name = {c.name: c.id for c in classes}
    unknown = [name for name in things if name not in by_name]
    if unknown:
        raise UserError(source, f"stats.things names unknown classes {unknown}; "
                                   f"the classes are {list(by_name)}")
    return sorted(by_name[name] for name in things)


@dataclass(frozen=True)
class Objects:
    """Objects in one window: label k (of ``labels``, 0 = none) is row k - 1 of the rest."""

    labels: np.ndarray  # (*window) int32
    classes: np.ndarray  # (n,) class ids
    scores: np.ndarray  # (n,) float32, higher wins a contested cell
    cut: np.ndarray  # (n,) bool: may continue beyond the window
    #: (n, ndim) window cell that decides the owner; None: each object's first cell
    anchors: np.ndarray | None = None
    capped: int = 0  # model calls whose detections hit the model's cap (some may be missing)
    #: (*window) class ids where no object lies (semantic stuff); None: class 0 everywhere
    stuff: np.ndarray | None = None

    @property
    def count(self) -> int:
        return len(self.classes)


def no_objects(shape: tuple[int, ...]) -> Objects:
    return Objects(np.zeros(shape, np.int32), np.empty(0, np.int64), np.empty(0, np.float32),
                   np.empty(0, bool))


def edge_layer(window: tuple[slice, ...], shape: tuple[int, ...], margin: int = 0
               ) -> np.ndarray:
    """Cells of a window on its faces that are not the image border (``margin`` cells in):
    an object touching them may continue beyond what was seen."""
    size = tuple(s.stop - s.start for s in window)
    edge = np.zeros(size, bool)
    for axis, (s, n) in enumerate(zip(window, shape)):
        for inner, at in ((s.start > 0, margin), (s.stop < n, size[axis] - 1 - margin)):
            if inner and 0 <= at < size[axis]:
                edge[(slice(None),) * axis + (at,)] = True
    return edge


def reaching(labels: np.ndarray, count: int, edge: np.ndarray) -> np.ndarray:
    """(count,) bool: which labels have a cell in ``edge``."""
    hit = np.zeros(count + 1, bool)
    hit[labels[edge]] = True
    return hit[1:]


def partition(masks: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping boolean masks (n, *window) as one label image by ``paint``'s rule (ties go
    to the earlier mask). Returns the labels (k = mask ``kept[k - 1]``) and the indexes of the
    masks that kept any cell."""
    whole = tuple(slice(None) for _ in masks.shape[1:])
    labels = paint(masks.shape[1:], [(whole, m) for m in masks], np.asarray(scores),
                   np.arange(len(masks)))
    kept = np.unique(labels[labels > 0]) - 1
    lut = np.zeros(len(masks) + 1, np.int32)
    lut[kept + 1] = np.arange(1, len(kept) + 1)
    return lut[labels], kept.astype(np.int64)


def first_cells(labels: np.ndarray, count: int) -> np.ndarray:
    """(count,) raster index in ``labels`` of each label's first cell (-1 for an empty one)."""
    flat = labels.ravel()
    cells = np.flatnonzero(flat)
    found, at = np.unique(flat[cells], return_index=True)
    first = np.full(count, -1, np.int64)
    first[found - 1] = cells[at]
    return first


def owned(objects: Objects, core: tuple[slice, ...]) -> np.ndarray:
    """Indexes (0-based) of the objects whose canonical point lies in ``core`` (window
    coordinates): each object of the image has exactly one owner among a grid's windows."""
    if objects.anchors is not None:
        points = objects.anchors
    else:
        first = first_cells(objects.labels, objects.count)
        points = np.stack(np.unravel_index(np.maximum(first, 0), objects.labels.shape), axis=1)
        points[first < 0] = -1
    inside = np.ones(objects.count, bool)
    for axis, s in enumerate(core):
        inside &= (points[:, axis] >= s.start) & (points[:, axis] < s.stop)
    return np.flatnonzero(inside)


def paint(shape: tuple[int, ...], masks: list[tuple[tuple[slice, ...], np.ndarray]],
          scores: np.ndarray, order_key: np.ndarray) -> np.ndarray:
    """Label image of ``shape`` with masks (box, bool mask) painted so that the higher score
    keeps a contested cell, ties going to the smaller ``order_key``; label k is mask k - 1."""
    labels = np.zeros(shape, np.int32)
    for i in np.lexsort((-order_key, scores)):  # lowest first: the winner paints last
        box, mask = masks[i]
        labels[box][mask] = i + 1
    return labels


def select(objects: Objects, keep: np.ndarray) -> Objects:
    """The objects ``keep`` (0-based, in that order) renumbered 1..len(keep)."""
    lut = np.zeros(objects.count + 1, np.int32)
    lut[keep + 1] = np.arange(1, len(keep) + 1)
    return Objects(lut[objects.labels], objects.classes[keep], objects.scores[keep],
                   objects.cut[keep],
                   None if objects.anchors is None else objects.anchors[keep],
                   objects.capped, objects.stuff)


def merge_tiles(shape: tuple[int, ...], tiles: list[tuple[tuple[slice, ...], tuple[slice, ...],
                                                          Objects]]) -> Objects:
    """One window's objects from overlapping tiles (tile read box, tile core box in window
    coordinates, the tile's objects): each object is kept by the tile that owns it, then all
    are painted by score, so the window holds no duplicate and no object cut at a tile seam."""
    boxes: list[tuple[tuple[slice, ...], np.ndarray]] = []
    classes, scores, cut, anchors = [], [], [], []
    for read, core, objs in tiles:
        local_core = tuple(slice(c.start - r.start, c.stop - r.start)
                           for c, r in zip(core, read))
        found = ndimage.find_objects(objs.labels, max_label=objs.count)
        for k in owned(objs, local_core):
            box = found[k]
            if box is None:
                continue
            boxes.append((tuple(slice(r.start + b.start, r.start + b.stop)
                                for r, b in zip(read, box)), objs.labels[box] == k + 1))
            classes.append(objs.classes[k])
            scores.append(objs.scores[k])
            cut.append(objs.cut[k])
            if objs.anchors is not None:
                anchors.append(objs.anchors[k] + [r.start for r in read])
    n = len(boxes)
    starts = np.array([[s.start for s in box] for box, _ in boxes],
                      np.int64).reshape(n, len(shape))
    key = (np.ravel_multi_index(tuple(starts.T), shape) if n else np.empty(0, np.int64))
    labels = paint(shape, boxes, np.asarray(scores, np.float32), np.asarray(key))
    return Objects(labels, np.asarray(classes, np.int64), np.asarray(scores, np.float32),
                   np.asarray(cut, bool), np.asarray(anchors, np.int64) if anchors else None)


def tile_windows(shape: tuple[int, ...], tile: int, overlap: int
                 ) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """Tiles over a window: (read box, core box); cores partition it, reads add ``overlap``."""
    core = max(1, tile - 2 * overlap)
    zeros = tuple(0 for _ in shape)
    return [(c.read, c.core) for c in plan_grid(zeros, tuple(shape), core, overlap)]


class InstanceModel(SegmentationModel):
    """A method that finds objects, not only classes; tasks/mask/owned.py merges them."""

    instance: ClassVar[bool] = True
    #: cells each side the model's objects depend on beyond the object itself
    reach: int = 0
    #: the largest object across, in cells (``stats.max_object``, set at plan time)
    max_object: int = 64
    #: what an owned object reaching its window's edge does: warn (counted) or error
    on_cut: str = "warn"

    def sized(self, max_object: int, on_cut: str) -> InstanceModel:
        """This model for objects up to ``max_object`` cells across: its receptive field (the
        halo it needs) is its reach plus that."""
        model = copy.copy(self)  # a planned model is never changed in place
        model.max_object, model.on_cut = int(max_object), on_cut
        model.receptive_field = model.reach + model.max_object
        return model

    @abstractmethod
    def predict_objects(self, pixels: np.ndarray, valid: np.ndarray,
                        window: tuple[slice, ...], shape: tuple[int, ...]) -> Objects:
        """Objects in a read window (``window``: where it lies in an image of ``shape``),
        nodata cells in none; ``cut`` marks those that may continue beyond it."""

    def thing_classes(self) -> list[int]:
        """Class ids that only objects may hold (cleared where no object is painted)."""
        return [c.id for c in self.classes if c.id != 0]

    def predict(self, pixels: np.ndarray, valid: np.ndarray,
                core: tuple[slice, ...]) -> np.ndarray:
        """Classes of ``core`` as this window sees its objects (before the ownership merge)."""
        shape = pixels.shape[1:]
        window = tuple(slice(0, n) for n in shape)
        return classes_of(self.predict_objects(pixels, valid, window, shape), core)


def classes_of(objects: Objects, core: tuple[slice, ...]) -> np.ndarray:
    """Class ids of ``core``: each object's class where it lies, its stuff elsewhere."""
    labels = objects.labels[core]
    lut = np.concatenate([[0], objects.classes]).astype(np.int64)
    stuff = 0 if objects.stuff is None else objects.stuff[core]
    return np.where(labels > 0, lut[labels], stuff)
