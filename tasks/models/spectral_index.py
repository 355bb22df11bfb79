"""Land-cover classes from spectral indices of a multi-band raster, per pixel.

NDVI = (nir - red) / (nir + red) and a water index, either NDWI (McFeeters 1996) =
(green - nir) / (green + nir) or MNDWI (Xu 2006) = (green - swir1) / (green + swir1), which
separates water from built-up land better. A zero denominator gives an index of 0. Classes, first
match wins: water if the water index > ``ndwi``; vegetation if NDVI > ``ndvi``; bare if
NDVI < ``bare``; else other. Per pixel, so ``receptive_field`` is 0 and nothing is fitted.

The default thresholds suit surface reflectance; raw digital numbers (hazy blue and green) need
higher water and lower vegetation thresholds.

Params: ``bands`` (role -> 1-based index into the selected bands; defaults for Landsat TM/ETM+
bands 1-5: green 2, red 3, nir 4, swir1 5); ``water_index`` (``ndwi`` or ``mndwi``, default
``ndwi``); ``ndwi`` (default 0.0); ``ndvi`` (default 0.3); ``bare`` (default 0.1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segflow.tasks.config import JobConfig, class_table
from segflow.tasks.errors import UserError
from segflow.tasks.models.base import InputSpec, SegmentationModel
from segflow.tasks.models.params import IndexParams

DEFAULT_BANDS = {"green": 2, "red": 3, "nir": 4, "swir1": 5}
WATER_INDEX = {"ndwi": "nir", "mndwi": "swir1"}  # the band the water index sets against green


def normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a - b) / (a + b), 0 where the sum is 0."""
    total = a + b
    return np.divide(a - b, total, out=np.zeros_like(total), where=total != 0)


class SpectralIndexModel(SegmentationModel):
    """other / water / vegetation / bare from NDVI and NDWI (or MNDWI)."""

    kind = "index"
    Params = IndexParams

    def __init__(self, classes: Any, params: IndexParams, bands: dict[str, int]) -> None:
        super().__init__(classes, params)
        self.bands, self.water_index = bands, params.water_index
        self.limits = {"ndwi": params.ndwi, "ndvi": params.ndvi, "bare": params.bare}

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> SpectralIndexModel:
        params = IndexParams.model_validate(cfg.model.params)
        roles = params.bands.model_dump()
        bands = {role: roles[role]
                 for role in ("green", "red", "nir", WATER_INDEX[params.water_index])}
        for role, index in bands.items():
            if not 1 <= index <= spec.bands:
                raise UserError(source, f"model.params.bands.{role}={index} but the input "
                                           f"has {spec.bands} bands")
        classes = class_table(cfg.model, ["other", "water", "vegetation", "bare"])
        return cls(classes, params, bands)

    def predict(self, pixels: np.ndarray, valid: np.ndarray,
                core: tuple[slice, ...]) -> np.ndarray:
        pixels = pixels[(slice(None), *core)]
        band = {role: self.band_of(pixels, index) for role, index in self.bands.items()}
        ndvi = normalized_difference(band["nir"], band["red"])
        water = normalized_difference(band["green"], band[WATER_INDEX[self.water_index]])
        return np.select([water > self.limits["ndwi"], ndvi > self.limits["ndvi"],
                          ndvi < self.limits["bare"]], [1, 2, 3], 0).astype(np.uint8)

    def identity(self) -> str:
        limits = ", ".join(f"{k}={v:.6g}" for k, v in self.limits.items())
        return f"index({self.water_index}, bands={self.bands}, {limits})"

    def fitted(self) -> dict[str, Any]:
        return {"bands": self.bands, "water_index": self.water_index, **self.limits}
