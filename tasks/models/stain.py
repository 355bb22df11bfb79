"""Stain-based tissue classes for H&E / IHC slides by colour deconvolution (skimage rgb2hed).

Three classes: glass (low HSV saturation), tissue, and stain-positive tissue (optical density of
the chosen stain above a threshold). Both thresholds are fitted once per slide by Otsu on a
decimated sample of the whole slide, unless given, so the mask does not depend on the chunks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from skimage.color import rgb2hed, rgb2hsv
from skimage.filters import threshold_otsu

from segflow.tasks.config import JobConfig, class_table
from segflow.tasks.errors import UserError
from segflow.tasks.models.base import InputSpec, SegmentationModel
from segflow.tasks.models.params import StainParams

if TYPE_CHECKING:
    from distributed import Client

    from segflow.tasks.sources.base import SourceBase

STAINS = {"hematoxylin": 0, "eosin": 1, "dab": 2}  # rgb2hed channel order


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """(3, ...) 8-bit RGB to (..., 3) floats in [0, 1], as skimage's colour functions want."""
    return np.moveaxis(pixels[:3].astype(np.float64) / 255.0, 0, -1)


def saturation(pixels: np.ndarray) -> np.ndarray:
    return rgb2hsv(_rgb(pixels))[..., 1]


def stain_density(pixels: np.ndarray, stain: str) -> np.ndarray:
    return rgb2hed(_rgb(pixels))[..., STAINS[stain]]


class StainModel(SegmentationModel):
    """glass / tissue / <stain>_positive, from saturation and colour deconvolution."""

    kind = "stain"
    Params = StainParams

    def __init__(self, classes: Any, params: StainParams) -> None:
        super().__init__(classes, params)
        self.stain, self.tissue, self.positive = params.stain, params.tissue, params.positive
        self.max_samples = params.max_samples

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> StainModel:
        params = StainParams.model_validate(cfg.model.params)
        stain = params.stain
        if spec.bands < 3 or np.dtype(spec.dtype) != np.uint8:
            raise UserError(source, "model.kind=stain needs 8-bit RGB input")
        classes = class_table(cfg.model, ["glass", "tissue", f"{stain}_positive"])
        return cls(classes, params)

    def fit(self, source: SourceBase, client: Client) -> None:
        # A decimated sample (coarse pyramid levels): bounded cost, and glass chunks are still
        # never read at full resolution. It depends on the slide only, not on the chunking.
        sample = source.read_overview(self.max_samples).T[:3, :, None]  # (3, n, 1)
        if sample.shape[1] < 2:
            raise UserError(source.uri, "too few pixels to fit stain thresholds")
        if self.tissue is None:
            self.tissue = float(threshold_otsu(saturation(sample)))
        if self.positive is None:
            tissue = saturation(sample) > self.tissue
            density = stain_density(sample, self.stain)[tissue]
            self.positive = float(threshold_otsu(density)) if density.size > 1 else np.inf

    def predict(self, pixels: np.ndarray, valid: np.ndarray,
                core: tuple[slice, ...]) -> np.ndarray:
        block = pixels[(slice(None), *core)]
        tissue = saturation(block) > self.tissue
        positive = tissue & (stain_density(block, self.stain) > self.positive)
        return tissue.astype(np.uint8) + positive.astype(np.uint8)

    def identity(self) -> str:
        return (f"stain({self.stain}, tissue>{self.tissue:.4g}, positive>{self.positive:.4g})")

    def fitted(self) -> dict[str, Any]:
        return {"stain": self.stain, "tissue": self.tissue, "positive": self.positive}
