"""Touching objects split classically (``stats.split: distance``): the semantic model's thing
cells, holes filled and specks removed, cut into objects by a marker-controlled watershed on
the Euclidean distance transform, one marker per h-maximum of the distance (smoothed within its
clump by ``split_sigma``).

Every step is translation-invariant and confined to one *clump* (a connected component of a
thing class): hole filling, the distance to the clump's border, h-maxima (a morphological
reconstruction, so no tie-break by position as ``peak_local_max`` would need), the smoothing
(a normalised convolution that sees no cell outside the clump) and the watershed flooding
inside the clump. A clump that lies wholly inside a chunk's read window is
therefore split exactly as in a whole-image pass, which makes the split exact across chunks
once the halo covers the semantic model's reach plus ``stats.max_object`` (the largest clump
across). Clumps that reach the window's inner edge may continue beyond it: their objects are
marked cut (models/instance.py). A clump without any h-maximum (smaller than ``split_h``) is one
object.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label
from skimage.morphology import h_maxima, remove_small_objects
from skimage.segmentation import watershed

from segflow.tasks.models.base import SegmentationModel
from segflow.tasks.models.filters import TRUNCATE
from segflow.tasks.models.instance import InstanceModel, Objects, edge_layer, reaching

if TYPE_CHECKING:
    from distributed import Client

    from segflow.tasks.config import JobConfig
    from segflow.tasks.models.base import InputSpec
    from segflow.tasks.sources.base import SourceBase


class DistanceSplit(InstanceModel):
    """A semantic model whose thing classes are split into objects."""

    kind = "split"

    def __init__(self, inner: SegmentationModel, things: list[int], min_size: int,
                 h: float, sigma: float) -> None:
        super().__init__(inner.classes, inner.params)
        self.inner, self.things, self.min_size, self.h = inner, things, min_size, h
        self.sigma = sigma
        self.kind = inner.kind  # type: ignore[misc]  # the catalog names the semantic method
        self.reach = inner.receptive_field
        self.receptive_field = self.reach + self.max_object
        self.stride = inner.stride
        self.accelerated = inner.accelerated  # type: ignore[misc]

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> DistanceSplit:
        raise NotImplementedError("built by plan_job around a semantic model")

    def fit(self, source: SourceBase, client: Client) -> None:
        self.inner = copy.copy(self.inner)  # fitted() fits a copy: the planned one stays as is
        self.inner.fit(source, client)

    def thing_classes(self) -> list[int]:
        return self.things

    def predict_objects(self, pixels: np.ndarray, valid: np.ndarray,
                        window: tuple[slice, ...], shape: tuple[int, ...]) -> Objects:
        size = pixels.shape[1:]
        # a border window needs no margin on its image-border side: the inner model reads
        # there exactly as a whole-image pass does
        lo = [0 if s.start == 0 else self.reach for s in window]
        hi = [n if s.stop == m else n - self.reach for s, n, m in zip(window, size, shape)]
        known = tuple(slice(a, max(a, b)) for a, b in zip(lo, hi))
        classes = np.zeros(size, np.int64)
        classes[known] = self.inner.predict(pixels, valid, known)
        classes[~valid] = 0
        # clumps touching the known region's inner faces may continue beyond it
        edge = edge_layer(window, shape, margin=self.reach)
        labels = np.zeros(size, np.int32)
        out_classes: list[int] = []
        cut: list[bool] = []
        for thing in self.things:
            objects, clumps = self._split(classes == thing)
            n = int(objects.max(initial=0))
            if not n:
                continue
            clump_cut = reaching(clumps, int(clumps.max()), edge)
            first = ndi.labeled_comprehension(clumps, objects, np.arange(1, n + 1), np.max,
                                              np.int64, 0)
            labels[objects > 0] = objects[objects > 0] + len(out_classes)
            out_classes += [thing] * n
            cut += list(clump_cut[first - 1])
        count = len(out_classes)
        stuff = np.where(np.isin(classes, self.things), 0, classes)
        return Objects(labels, np.asarray(out_classes, np.int64), np.ones(count, np.float32),
                       np.asarray(cut, bool), stuff=stuff)

    def _split(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Objects and clumps (label images) of one thing class's cells."""
        mask = ndi.binary_fill_holes(mask)
        if self.min_size:
            mask = remove_small_objects(mask, max_size=self.min_size - 1)
        clumps = label(mask, connectivity=1)
        distance = ndi.distance_transform_edt(mask)
        objects = np.zeros(mask.shape, np.int64)
        top = 0
        # one clump at a time: smoothing then sees no other clump, and the watershed, which
        # breaks ties by its heap's order, no other clump's cells (so no chunking effect)
        for k, box in enumerate(ndi.find_objects(clumps), start=1):
            inside = clumps[box] == k
            height = self._smoothed(np.where(inside, distance[box], 0.0), inside)
            seeds = label(h_maxima(height, self.h), connectivity=2) * inside
            part = (watershed(-height, seeds, mask=inside) if seeds.any()
                    else inside.astype(np.int64))  # lower than split_h: one object
            objects[box][inside] = part[inside] + top
            top += int(part.max())
        return label(objects, connectivity=1, background=0), clumps  # 1..n, raster order

    def _smoothed(self, distance: np.ndarray, inside: np.ndarray) -> np.ndarray:
        """The distance smoothed within its clump only (normalised convolution): boundary
        noise no longer seeds extra peaks along an elongated object."""
        if not self.sigma:
            return distance
        # zero beyond the box (mode constant): where the box meets the window's edge this is
        # what a whole-image pass sees beyond the clump, never a reflection of it
        weight = ndi.gaussian_filter(inside.astype(np.float64), self.sigma, mode="constant",
                                     truncate=TRUNCATE)
        smooth = ndi.gaussian_filter(distance, self.sigma, mode="constant", truncate=TRUNCATE)
        return np.where(inside, smooth / np.maximum(weight, 1e-12), 0.0)

    def identity(self) -> str:
        return (f"{self.inner.identity()}+split(distance, h={self.h:.6g}, "
                f"sigma={self.sigma:.6g}, min_size={self.min_size}, "
                f"max_object={self.max_object})")

    def fitted(self) -> dict[str, object]:
        return self.inner.fitted()
