"""Edge-based segmentation: Sobel edges of the smoothed band, with small enclosed holes filled.

Edges are cells whose gradient magnitude (Gaussian smoothing, then Sobel) exceeds one global
value: ``params.value``, or Otsu's threshold of the gradient magnitude fitted on its exact
histogram over the whole image (the same filter run as overlapping Dask blocks). Regions are the
edges plus every non-edge hole of at most ``max_hole`` cells. Sobel, not Canny: Canny's
hysteresis follows edges arbitrarily far, so no halo could make it seamless.

Seamless by construction: the gradient reads ``r = gaussian_radius(sigma) + 1`` cells each side,
so edges are exact up to ``halo - r`` cells around the core. A hole of at most ``max_hole`` cells
lies within ``max_hole`` cells of any of its cells, so it is seen whole; a larger one shows more
than ``max_hole`` cells there, so it is left unfilled in the block as in the whole image. Hence
``receptive_field = r + max_hole``. Nodata cells are filled with
the band's global valid mean before filtering and count as non-edge.

Params: ``band`` (1-based, default 1); ``sigma`` (Gaussian smoothing in pixels, default 1.0,
0 = none); ``value`` (gradient-magnitude threshold, default Otsu's); ``max_hole`` (largest
hole filled, in pixels, default 27 so the receptive field is the default halo, 32).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from skimage.morphology import remove_small_holes

from segflow.tasks.config import JobConfig, class_table
from segflow.tasks.models.base import InputSpec, SegmentationModel
from segflow.tasks.models.filters import (
    filled_band,
    filtered_band,
    gradient_magnitude,
    gradient_radius,
    valid_mean,
)
from segflow.tasks.models.histogram import otsu_threshold
from segflow.tasks.models.params import EdgesParams, check_band

if TYPE_CHECKING:
    from distributed import Client

    from segflow.tasks.sources.base import SourceBase


class EdgesModel(SegmentationModel):
    """background / region: edge cells and the small holes they enclose."""

    kind = "edges"
    Params = EdgesParams

    def __init__(self, classes: Any, params: EdgesParams, band: int) -> None:
        super().__init__(classes, params)
        self.band, self.sigma, self.value = band, params.sigma, params.value
        self.max_hole = max_hole = params.max_hole
        sigma = self.sigma
        self.receptive_field = gradient_radius(sigma) + max_hole
        self.fill: float | None = None

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> EdgesModel:
        params = EdgesParams.model_validate(cfg.model.params)
        band = check_band(params.band, spec.bands, source)
        return cls(class_table(cfg.model, ["background", "region"]), params, band)

    def fit(self, source: SourceBase, client: Client) -> None:
        self.fill = valid_mean(source, self.band, client)
        if self.value is None:
            gradient = filtered_band(source, self.band, self.fill,
                                     partial(gradient_magnitude, sigma=self.sigma),
                                     gradient_radius(self.sigma))
            self.value = otsu_threshold(gradient, "float64", client, source.uri)

    def predict(self, pixels: np.ndarray, valid: np.ndarray,
                core: tuple[slice, ...]) -> np.ndarray:
        assert self.fill is not None and self.value is not None, "fit() before predict()"
        values = filled_band(pixels, valid, self.band, self.fill)
        edges = (gradient_magnitude(values, self.sigma) > self.value) & valid
        regions = remove_small_holes(edges, max_size=self.max_hole)
        return regions[core].astype(np.uint8)

    def identity(self) -> str:
        return (f"edges(band={self.band}, sigma={self.sigma:.6g}, value={self.value:.6g}, "
                f"max_hole={self.max_hole})")

    def fitted(self) -> dict[str, Any]:
        return {"band": self.band, "value": self.value, "fill": self.fill,
                "receptive_field": self.receptive_field}
