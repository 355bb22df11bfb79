"""Marker-controlled watershed: sure cells seed background and foreground, the rest is flooded.

Two global thresholds on one band (``low`` < ``high``: multi-Otsu with 3 classes on the exact
histogram of the whole image, or given) make markers: ``band < low`` is background,
``band > high`` foreground. Each connected component of the uncertain cells in between whose
bounding box spans at most ``max_extent`` cells on every axis is flooded from its adjacent
markers by skimage's watershed on the gradient magnitude (Gaussian, then Sobel); larger ones
fall back to the per-pixel rule ``band > (low + high) / 2``.

Flooding is non-local, so it is made exact by construction. Labelling the uncertain cells is
per-pixel, hence exact anywhere in the block. A component seen from a core cell either lies
whole within ``max_extent - 1`` cells of it, or runs to the block border, more than ``halo``
cells away, and so spans more than ``max_extent`` in the block as in the whole image (when
``halo >= max_extent``). A flooded component and the crop around it lie within ``max_extent``
cells of the core, and their gradient reads ``r = gaussian_radius(sigma) + 1`` more, hence
``receptive_field = max_extent + r``.

skimage's watershed pushes all markers with the same priority, so which of two markers claims a
cell between them depends on the heap's layout, i.e. on everything else in the call: one call
over a whole block gives different results for different chunkings. Hence each component is
flooded on its own crop (its bounding box plus one cell), which is the same array wherever the
block starts; a component bordered by markers of one class only takes that class unflooded.

Params: ``band`` (1-based, default 1); ``low`` and ``high`` (marker thresholds, both or
neither; default multi-Otsu); ``max_extent`` (largest uncertain component flooded, in pixels
per axis, default 24); ``sigma`` (gradient smoothing in pixels, default 1.0, 0 = none).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from segflow.tasks.config import JobConfig, class_table
from segflow.tasks.models.base import InputSpec, SegmentationModel
from segflow.tasks.models.filters import (
    FIT_CHUNK,
    filled_band,
    gradient_magnitude,
    gradient_radius,
    valid_mean,
)
from segflow.tasks.models.histogram import multiotsu_thresholds
from segflow.tasks.models.params import WatershedParams, check_band

if TYPE_CHECKING:
    from distributed import Client

    from segflow.tasks.sources.base import SourceBase


def flood(gradient: np.ndarray, markers: np.ndarray, uncertain: np.ndarray,
          max_extent: int) -> np.ndarray:
    """Class (0/1) of each uncertain cell flooded from its markers (1 bg, 2 fg); -1 elsewhere.

    Only components spanning <= max_extent on every axis are flooded; one that borders markers of
    one class takes it, one that borders both is flooded by watershed on its own crop.
    """
    labels, count = ndi.label(uncertain)
    adjacent = [np.bincount(labels[ndi.binary_dilation(markers == m) & uncertain],
                            minlength=count + 1) > 0 for m in (1, 2)]
    boxes = ndi.find_objects(labels)
    small = np.array([False] + [max(s.stop - s.start for s in box) <= max_extent
                                for box in boxes])
    table = np.full(count + 1, -1, np.int8)
    table[small & adjacent[0]] = 0
    table[small & adjacent[1]] = 1
    out = table[labels]
    for i in np.flatnonzero(small & adjacent[0] & adjacent[1]):
        crop = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in boxes[i - 1])
        component = labels[crop] == i
        seeds = markers[crop]
        grown = watershed(gradient[crop], seeds, mask=component | (seeds > 0))
        out[crop][component] = grown[component] - 1
    return out


class WatershedModel(SegmentationModel):
    """background / foreground from markers and a bounded watershed flood between them."""

    kind = "watershed"
    Params = WatershedParams

    def __init__(self, classes: Any, params: WatershedParams, band: int) -> None:
        super().__init__(classes, params)
        self.band, self.max_extent, self.sigma = band, params.max_extent, params.sigma
        self.bounds = (None if params.low is None or params.high is None
                       else (params.low, params.high))
        max_extent, sigma = self.max_extent, self.sigma
        self.receptive_field = max_extent + gradient_radius(sigma)
        self.fill: float | None = None

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> WatershedModel:
        params = WatershedParams.model_validate(cfg.model.params)
        band = check_band(params.band, spec.bands, source)
        return cls(class_table(cfg.model, ["background", "foreground"]), params, band)

    def fit(self, source: SourceBase, client: Client) -> None:
        self.fill = valid_mean(source, self.band, client)
        if self.bounds is None:
            values = source.to_dask(FIT_CHUNK)[self.band - 1]
            low, high = multiotsu_thresholds(values, source.dtype, client, source.uri, 3)
            self.bounds = (low, high)

    def predict(self, pixels: np.ndarray, valid: np.ndarray,
                core: tuple[slice, ...]) -> np.ndarray:
        assert self.fill is not None and self.bounds is not None, "fit() before predict()"
        low, high = self.bounds
        values = filled_band(pixels, valid, self.band, self.fill)
        markers = np.zeros(values.shape, np.uint8)
        markers[valid & (values < low)] = 1
        markers[valid & (values > high)] = 2
        flooded = flood(gradient_magnitude(values, self.sigma), markers,
                        valid & (markers == 0), self.max_extent)
        out = np.where(flooded >= 0, flooded, values > (low + high) / 2)
        out[markers > 0] = markers[markers > 0] - 1
        return out[core].astype(np.uint8)

    def identity(self) -> str:
        low, high = self.bounds or (np.nan, np.nan)
        return (f"watershed(band={self.band}, low={low:.6g}, high={high:.6g}, "
                f"max_extent={self.max_extent}, sigma={self.sigma:.6g})")

    def fitted(self) -> dict[str, Any]:
        low, high = self.bounds or (None, None)
        return {"band": self.band, "low": low, "high": high, "fill": self.fill,
                "receptive_field": self.receptive_field}
