"""Global thresholds on one band: a fixed value, or Otsu's threshold fitted on the whole image.

Otsu is fitted on an exact histogram summed over every valid pixel (a streaming dask pass), so
the threshold, and hence the mask, does not depend on how the image is chunked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.config import JobConfig, class_table
from tasks.errors import SegflowError
from tasks.histogram import otsu_threshold
from tasks.models.base import InputSpec, SegmentationModel

if TYPE_CHECKING:
    from distributed import Client

    from tasks.source import SourceBase

FIT_CHUNK = 1024  # window of the histogram pass; any value gives the same (exact) histogram


class ThresholdModel(SegmentationModel):
    """Foreground where ``band > value`` (skimage's convention for thresholds)."""

    kind = "threshold"

    def __init__(self, classes: Any, params: dict[str, Any], band: int,
                 value: float | None) -> None:
        super().__init__(classes, params)
        self.band = band
        self.value = value

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> ThresholdModel:
        params = dict(cfg.model.params)
        band = int(params.get("band", 1))
        if not 1 <= band <= spec.bands:
            raise SegflowError(source,
                               f"model.params.band={band} but the input has {spec.bands} bands")
        value = params.get("value")
        if cls.kind == "threshold" and value is None:
            raise SegflowError(source, "model.kind=threshold needs model.params.value")
        classes = class_table(cfg.model, ["background", "foreground"])
        return cls(classes, params, band, None if value is None else float(value))

    def predict(self, pixels: np.ndarray, valid: np.ndarray,
                core: tuple[slice, ...]) -> np.ndarray:
        assert self.value is not None, "fit() before predict()"
        return (self.band_of(pixels[(slice(None), *core)], self.band) > self.value).astype(np.uint8)

    def identity(self) -> str:
        return f"{self.kind}(band={self.band}, value={self.value:.6g})"

    def fitted(self) -> dict[str, Any]:
        return {"band": self.band, "value": self.value}


class OtsuModel(ThresholdModel):
    """Otsu's threshold on one band, fitted on the exact histogram of all valid pixels."""

    kind = "otsu"

    def fit(self, source: SourceBase, client: Client) -> None:
        values = source.to_dask(FIT_CHUNK)[self.band - 1]
        self.value = otsu_threshold(values, source.dtype, client, source.uri)
