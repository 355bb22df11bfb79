"""K-means clustering of pixel spectra: centroids fitted once per image, then nearest-centroid.

The fit sample is a decimated read of the whole image (bounded size, independent of chunking),
so every chunk is labelled with the same centroids and the mask does not depend on chunk size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.cluster import KMeans

from segflow.tasks.config import JobConfig, class_table
from segflow.tasks.errors import UserError
from segflow.tasks.models.base import InputSpec, SegmentationModel
from segflow.tasks.models.params import KMeansParams

if TYPE_CHECKING:
    from distributed import Client

    from segflow.tasks.sources.base import SourceBase


class KMeansModel(SegmentationModel):
    """``k`` clusters over all selected bands; class ids ordered by centroid brightness."""

    kind = "kmeans"
    Params = KMeansParams
    soft = True

    def __init__(self, classes: Any, params: KMeansParams) -> None:
        super().__init__(classes, params)
        self.k, self.seed, self.max_samples = params.k, params.seed, params.max_samples
        self.centroids: np.ndarray | None = None

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> KMeansModel:
        params = KMeansParams.model_validate(cfg.model.params)
        k = params.k
        classes = class_table(cfg.model, [f"cluster_{i + 1}" for i in range(k)])
        if len(classes) != k:
            raise UserError(source, f"model.classes names {len(classes)} classes but k={k}")
        return cls(classes, params)

    def fit(self, source: SourceBase, client: Client) -> None:
        sample = source.read_overview(self.max_samples).astype(np.float64)
        if len(sample) < self.k:
            raise UserError(source.uri,
                               f"{len(sample)} valid pixels cannot make {self.k} clusters")
        km = KMeans(n_clusters=self.k, random_state=self.seed, n_init=4).fit(sample)
        # Sort clusters by brightness so ids mean the same thing from run to run.
        self.centroids = km.cluster_centers_[np.argsort(km.cluster_centers_.sum(axis=1))]

    def predict(self, pixels: np.ndarray, valid: np.ndarray,
                core: tuple[slice, ...]) -> np.ndarray:
        return self._nearest(pixels, core, scores=False)[0]

    def predict_scores(self, pixels: np.ndarray, valid: np.ndarray,
                       core: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroids and fuzzy c-means memberships (m = 2): each cluster's
        1 / distance², normalised to sum to 1, so the nearest centroid scores highest."""
        labels, inverse = self._nearest(pixels, core, scores=True)
        return labels, inverse / inverse.sum(axis=0, keepdims=True)

    def _nearest(self, pixels: np.ndarray, core: tuple[slice, ...], scores: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
        assert self.centroids is not None, "fit() before predict()"
        pixels = pixels[(slice(None), *core)]
        x = pixels.reshape(pixels.shape[0], -1).astype(np.float64)
        # Elementwise distances, one centroid at a time: the same arithmetic for a pixel whatever
        # block it arrives in (a BLAS product may change summation order with the block shape).
        best = np.full(x.shape[1], np.inf)
        labels = np.zeros(x.shape[1], np.uint8)
        inverse = np.empty((len(self.centroids) if scores else 0, x.shape[1]))
        for i, centroid in enumerate(self.centroids):
            dist = ((x - centroid[:, None]) ** 2).sum(axis=0)
            closer = dist < best
            best[closer] = dist[closer]
            labels[closer] = i
            if scores:  # a pixel on a centroid: that cluster's membership dominates
                inverse[i] = 1.0 / np.maximum(dist, 1e-300)
        spatial = pixels.shape[1:]
        return labels.reshape(spatial), inverse.reshape(len(inverse), *spatial)

    def identity(self) -> str:
        return f"kmeans(k={self.k}, seed={self.seed})"

    def fitted(self) -> dict[str, Any]:
        return {"centroids": None if self.centroids is None else self.centroids.tolist()}
