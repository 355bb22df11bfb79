"""Global thresholds on one band: a fixed value, or Otsu's threshold fitted on the whole image.

Otsu is fitted on an exact histogram summed over every valid pixel (a streaming dask pass), so
the threshold, and hence the mask, does not depend on how the image is chunked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
from skimage.filters import threshold_otsu

from tasks.config import JobConfig, class_table
from tasks.errors import SegflowError
from tasks.models.base import SegmentationModel

if TYPE_CHECKING:
    from distributed import Client

    from tasks.read_raster import Raster

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
    def from_config(cls, cfg: JobConfig, bands: int, dtype: str,
                    source: str) -> ThresholdModel:
        params = dict(cfg.model.params)
        band = int(params.get("band", 1))
        if not 1 <= band <= bands:
            raise SegflowError(source, f"model.params.band={band} but the input has {bands} bands")
        value = params.get("value")
        if cls.kind == "threshold" and value is None:
            raise SegflowError(source, "model.kind=threshold needs model.params.value")
        classes = class_table(cfg.model, ["background", "foreground"])
        return cls(classes, params, band, None if value is None else float(value))

    def predict(self, pixels: np.ndarray, valid: np.ndarray,
                core: tuple[slice, slice]) -> np.ndarray:
        assert self.value is not None, "fit() before predict()"
        return (self.band_of(pixels[(slice(None), *core)], self.band) > self.value).astype(np.uint8)

    def identity(self) -> str:
        return f"{self.kind}(band={self.band}, value={self.value:.6g})"

    def fitted(self) -> dict[str, Any]:
        return {"band": self.band, "value": self.value}


class OtsuModel(ThresholdModel):
    """Otsu's threshold on one band, fitted on the exact histogram of all valid pixels."""

    kind = "otsu"

    def fit(self, raster: Raster, client: Client) -> None:
        values = raster.to_dask(FIT_CHUNK)[self.band - 1]
        lo, hi = client.compute([da.nanmin(values), da.nanmax(values)], sync=True)
        if not np.isfinite(lo):
            raise SegflowError(raster.uri, "no valid pixels to fit Otsu's threshold on")
        if np.dtype(raster.dtype).kind in "iub":  # one bin per integer value: exact
            bins = int(min(hi - lo + 1, 65536))
            edges = (lo - 0.5, hi + 0.5)
        else:
            bins, edges = 1024, (lo, hi if hi > lo else lo + 1)
        counts, _ = da.histogram(values, bins=bins, range=edges)
        counts = client.compute(counts, sync=True)
        bin_edges = np.linspace(edges[0], edges[1], bins + 1)  # as da.histogram makes them
        centres = (bin_edges[:-1] + bin_edges[1:]) / 2
        self.value = float(threshold_otsu(hist=(counts, centres)))

