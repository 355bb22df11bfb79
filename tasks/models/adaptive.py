"""Adaptive (local) thresholding: foreground where a band exceeds its neighbourhood's mean.

The local mean is a finite filter, so ``receptive_field`` is its exact radius and, with a halo at
least that wide, every chunking gives the whole-image mask bit for bit (border chunks are read
unpadded and the filter reflects at the image border, as a whole-image call does). Nodata cells
are filled with the band's global valid mean, fitted once per image.

Params: ``band`` (1-based, default 1); ``block_size`` (odd neighbourhood width in pixels,
default 49, so the receptive field is 32, the default halo); ``method`` (``gaussian``:
skimage's threshold_local, sigma = (block_size - 1) / 6, radius int(4 sigma + 0.5); ``mean``:
box mean, radius block_size // 2); ``offset`` (subtracted from the local mean, default 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_local

from segflow.tasks.config import JobConfig, class_table
from segflow.tasks.models.base import InputSpec, SegmentationModel
from segflow.tasks.models.filters import filled_band, gaussian_radius, valid_mean
from segflow.tasks.models.params import AdaptiveParams, check_band

if TYPE_CHECKING:
    from distributed import Client

    from segflow.tasks.sources.base import SourceBase

METHODS = ("gaussian", "mean")


def box_mean(values: np.ndarray, size: int) -> np.ndarray:
    """Mean over a ``size`` box, summed afresh at every cell.

    scipy's uniform_filter (and so threshold_local's ``mean``) keeps a running sum whose rounding
    depends on where a line starts, which flips ties between chunkings; no library offers a
    position-independent box mean, so this is a separable correlation with equal weights.
    """
    weights = np.full(size, 1.0 / size)
    for axis in range(values.ndim):
        values = ndi.correlate1d(values, weights, axis=axis, mode="reflect")
    return values


class AdaptiveModel(SegmentationModel):
    """background / foreground by ``band > local mean - offset``."""

    kind = "adaptive"
    Params = AdaptiveParams

    def __init__(self, classes: Any, params: AdaptiveParams, band: int) -> None:
        super().__init__(classes, params)
        self.band, self.block_size = band, params.block_size
        self.method, self.offset = params.method, params.offset
        block_size, method = self.block_size, self.method
        self.sigma = (block_size - 1) / 6.0  # threshold_local's own choice for gaussian
        self.receptive_field = (gaussian_radius(self.sigma) if method == "gaussian"
                                else block_size // 2)
        self.fill: float | None = None

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> AdaptiveModel:
        params = AdaptiveParams.model_validate(cfg.model.params)
        band = check_band(params.band, spec.bands, source)
        return cls(class_table(cfg.model, ["background", "foreground"]), params, band)

    def fit(self, source: SourceBase, client: Client) -> None:
        self.fill = valid_mean(source, self.band, client)

    def predict(self, pixels: np.ndarray, valid: np.ndarray,
                core: tuple[slice, ...]) -> np.ndarray:
        assert self.fill is not None, "fit() before predict()"
        values = filled_band(pixels, valid, self.band, self.fill)
        if self.method == "gaussian":
            local = threshold_local(values, self.block_size, "gaussian", self.offset)
        else:
            local = box_mean(values, self.block_size) - self.offset
        return (values[core] > local[core]).astype(np.uint8)

    def identity(self) -> str:
        return (f"adaptive(band={self.band}, block_size={self.block_size}, method={self.method}, "
                f"offset={self.offset:.6g}, fill={self.fill:.6g})")

    def fitted(self) -> dict[str, Any]:
        return {"band": self.band, "fill": self.fill, "receptive_field": self.receptive_field}
