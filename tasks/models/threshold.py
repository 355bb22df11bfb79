"""Global thresholds on one band: a fixed value, Otsu's threshold, or k-class multi-Otsu.

Otsu and multi-Otsu are fitted on an exact histogram summed over every valid pixel (a streaming
dask pass), so the thresholds, and hence the mask, do not depend on how the image is chunked.

Params: ``band`` (1-based, default 1) for all; ``value`` for threshold; ``classes_k`` (2..254,
default 3) for multiotsu; ``sigma`` (threshold and otsu, default 0) smooths the band with a
Gaussian first (Otsu is then fitted on the smoothed band, the same filter run over the whole
image), which keeps noise specks out of fluorescence masks; its reach is the receptive field.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from scipy import ndimage as ndi

from segflow.tasks.config import JobConfig, class_table
from segflow.tasks.errors import UserError
from segflow.tasks.models.base import InputSpec, SegmentationModel
from segflow.tasks.models.filters import (
    FIT_CHUNK,
    TRUNCATE,
    filled_band,
    filtered_band,
    gaussian_radius,
    valid_mean,
)
from segflow.tasks.models.histogram import multiotsu_thresholds, otsu_threshold
from segflow.tasks.models.params import (
    ModelParams,
    MultiOtsuParams,
    OtsuParams,
    ThresholdParams,
    check_band,
)

if TYPE_CHECKING:
    from distributed import Client

    from segflow.tasks.sources.base import SourceBase


class ThresholdModel(SegmentationModel):
    """Foreground where ``band > value`` (skimage's convention for thresholds)."""

    kind = "threshold"
    Params: ClassVar[type[ModelParams]] = ThresholdParams

    def __init__(self, classes: Any, params: OtsuParams, band: int) -> None:
        super().__init__(classes, params)
        self.band = band
        self.value = params.value if isinstance(params, ThresholdParams) else None
        self.sigma = sigma = params.sigma
        self.fill: float | None = None  # nodata cells' value under the smoothing
        self.receptive_field = gaussian_radius(sigma) if sigma else 0

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> ThresholdModel:
        params = cls.Params.model_validate(cfg.model.params)
        assert isinstance(params, OtsuParams)
        band = check_band(params.band, spec.bands, source)
        return cls(class_table(cfg.model, ["background", "foreground"]), params, band)

    def fit(self, source: SourceBase, client: Client) -> None:
        if self.sigma:
            self.fill = valid_mean(source, self.band, client)

    def smoothed(self, pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """The band, Gaussian-smoothed when ``sigma`` is set (nodata filled with the mean)."""
        if not self.sigma:
            return self.band_of(pixels, self.band)
        assert self.fill is not None, "fit() before predict()"
        values = filled_band(pixels, valid, self.band, self.fill)
        return ndi.gaussian_filter(values, self.sigma, mode="reflect", truncate=TRUNCATE)

    def predict(self, pixels: np.ndarray, valid: np.ndarray,
                core: tuple[slice, ...]) -> np.ndarray:
        assert self.value is not None, "fit() before predict()"
        if not self.sigma:
            pixels = pixels[(slice(None), *core)]
            return (self.band_of(pixels, self.band) > self.value).astype(np.uint8)
        return (self.smoothed(pixels, valid)[core] > self.value).astype(np.uint8)

    def identity(self) -> str:
        smooth = f", sigma={self.sigma:.6g}" if self.sigma else ""
        return f"{self.kind}(band={self.band}, value={self.value:.6g}{smooth})"

    def fitted(self) -> dict[str, Any]:
        return {"band": self.band, "value": self.value, "sigma": self.sigma}


class OtsuModel(ThresholdModel):
    """Otsu's threshold on one band, fitted on the exact histogram of all valid pixels."""

    kind = "otsu"
    Params = OtsuParams

    def fit(self, source: SourceBase, client: Client) -> None:
        super().fit(source, client)
        if not self.sigma:
            values = source.to_dask(FIT_CHUNK)[self.band - 1]
            self.value = otsu_threshold(values, source.dtype, client, source.uri)
            return
        assert self.fill is not None
        smooth = partial(ndi.gaussian_filter, sigma=self.sigma, mode="reflect",
                         truncate=TRUNCATE)
        values = filtered_band(source, self.band, self.fill, smooth, self.receptive_field)
        self.value = otsu_threshold(values, "float64", client, source.uri)


class MultiOtsuModel(SegmentationModel):
    """``k`` classes of one band split by multi-Otsu thresholds; class ids ordered by value."""

    kind = "multiotsu"
    Params = MultiOtsuParams

    def __init__(self, classes: Any, params: MultiOtsuParams, band: int, k: int) -> None:
        super().__init__(classes, params)
        self.band = band
        self.k = k
        self.thresholds: list[float] | None = None

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> MultiOtsuModel:
        params = MultiOtsuParams.model_validate(cfg.model.params)
        band = check_band(params.band, spec.bands, source)
        k = params.classes_k
        classes = class_table(cfg.model, [f"level_{i + 1}" for i in range(k)])
        if len(classes) != k:
            raise UserError(source,
                               f"model.classes names {len(classes)} classes but classes_k={k}")
        return cls(classes, params, band, k)

    def fit(self, source: SourceBase, client: Client) -> None:
        values = source.to_dask(FIT_CHUNK)[self.band - 1]
        self.thresholds = multiotsu_thresholds(values, source.dtype, client, source.uri, self.k)

    def predict(self, pixels: np.ndarray, valid: np.ndarray,
                core: tuple[slice, ...]) -> np.ndarray:
        assert self.thresholds is not None, "fit() before predict()"
        values = self.band_of(pixels[(slice(None), *core)], self.band)
        return np.digitize(values, self.thresholds).astype(np.uint8)

    def identity(self) -> str:
        values = "none" if self.thresholds is None else ", ".join(f"{t:.6g}"
                                                                for t in self.thresholds)
        return f"multiotsu(band={self.band}, thresholds=[{values}])"

    def fitted(self) -> dict[str, Any]:
        return {"band": self.band, "thresholds": self.thresholds}
