"""Brain tissue classes on T1 MRI: a bias field fitted once, then a Gaussian mixture.

The fit runs once on a decimated volume (every ``step``-th voxel, bounded size):
1. the head: voxels above Otsu's threshold of log(1 + intensity), which parts Rician
   background noise from tissue, dark CSF included (a linear Otsu falls between CSF and GM);
2. the bias field: a smooth multiplicative field exp(p(x, y, z)), p a polynomial of degree
   ``degree`` in the voxel's normalised position, fitted in the log domain to the residual
   log(intensity) - log(class mean) of the head voxels, EM-style for
   ``iterations`` rounds (Wells et al. 1996); an iteration is kept only while it raises the
   data's likelihood (the mixture's, with the field's Jacobian), so a noisy volume falls back
   to less correction rather than to a wrong one;
3. the tissue model: a 3-class Gaussian mixture (CSF, GM, WM ordered by mean on T1) on the
   corrected head voxels, initialised at the multi-Otsu classes' means.

Per chunk the field is evaluated at each voxel's global position (a pure function of it), the
class posteriors computed, smoothed by a Gaussian of ``smooth`` voxels (a local spatial prior
whose reach is the receptive field, so the halo keeps chunks exact), and the argmax taken.
Voxels below the head threshold are nodata: that is the brain mask, and the statistics'
fractions are fractions of it. An unsupervised tissue model, not a validated segmentation.

Params: ``degree`` 3, ``iterations`` 4, ``smooth`` 1.0, ``fit_voxels`` 2,000,000, ``seed`` 0.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_multiotsu, threshold_otsu
from sklearn.mixture import GaussianMixture

from segflow.tasks.config import JobConfig, class_table
from segflow.tasks.errors import UserError
from segflow.tasks.models.base import InputSpec, SegmentationModel, label_dtype
from segflow.tasks.models.filters import TRUNCATE, gaussian_radius
from segflow.tasks.models.params import TissueParams

if TYPE_CHECKING:
    from distributed import Client

    from segflow.tasks.sources.base import SourceBase

SAMPLE = 200_000  # head voxels the mixture is fitted on


def monomials(position: list[np.ndarray], shape: tuple[int, ...], degree: int
              ) -> list[np.ndarray]:
    """The polynomial basis at voxel indexes ``position`` (one array per axis), each axis
    mapped to [-1, 1] over the whole volume, so the field does not depend on the chunk."""
    u = [2 * p / max(n - 1, 1) - 1 for p, n in zip(position, shape)]
    return [math.prod(axis ** e for axis, e in zip(u, powers))  # type: ignore[misc]
            for powers in itertools.product(range(degree + 1), repeat=len(shape))
            if sum(powers) <= degree]


class TissueModel(SegmentationModel):
    """Bias-corrected 3-class Gaussian mixture of T1 intensities (CSF, GM, WM)."""

    kind = "tissue"
    Params = TissueParams

    def __init__(self, classes: Any, params: TissueParams) -> None:
        super().__init__(classes, params)
        self.degree, self.iterations = params.degree, params.iterations
        self.smooth, self.fit_voxels, self.seed = params.smooth, params.fit_voxels, params.seed
        self.receptive_field = gaussian_radius(self.smooth) if self.smooth else 0
        self.shape: tuple[int, ...] = ()
        self.coef = np.zeros(0)
        self.head = 0.0
        self.means = self.variances = self.weights = np.zeros(0)

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> TissueModel:
        if spec.ndim != 3:
            raise UserError(source, "model.kind=tissue is for 3-D volumes")
        classes = class_table(cfg.model, ["csf", "grey_matter", "white_matter"])
        if len(classes) != 3:
            raise UserError(source, "model.kind=tissue has three classes (CSF, GM, WM)")
        return cls(classes, TissueParams.model_validate(cfg.model.params))

    def fit(self, source: SourceBase, client: Client) -> None:
        self.shape = tuple(source.spatial_shape)
        step = max(1, math.ceil((math.prod(self.shape) / self.fit_voxels) ** (1 / 3)))
        pixels, valid = source.read_decimated(step)
        values = np.clip(pixels[0].astype(np.float64), 0, None)  # magnitudes: never below 0
        position = [p[valid] * step for p in np.indices(values.shape)]
        values = values[valid]
        if values.size < 1000 or values.max() <= 0:
            raise UserError(source.uri, "too few voxels with signal to fit tissue classes")
        basis = np.stack(monomials(position, self.shape, self.degree), axis=1)
        coef, best = np.zeros(basis.shape[1]), -np.inf
        for _ in range(self.iterations + 1):
            field = basis @ coef
            corrected = values / np.exp(field)
            head, mixture, likelihood = self._mixture(corrected, field)
            if likelihood <= best:  # this round made the fit worse: keep the last one
                break
            best, self.coef, self.head = likelihood, coef, head
            self.means, self.variances = mixture.means_[:, 0], mixture.covariances_.ravel()
            self.weights = mixture.weights_
            inside = corrected > head
            label = mixture.predict(corrected[inside, None])
            residual = np.log(values[inside]) - np.log(self.means[label])  # values > head >= 0
            coef = np.linalg.lstsq(basis[inside], residual, rcond=None)[0]

    def _mixture(self, corrected: np.ndarray, field: np.ndarray
                 ) -> tuple[float, GaussianMixture, float]:
        """Head threshold, the 3-class mixture of the head voxels, and the sample's mean
        log-likelihood of the observed intensities (mixture density and field Jacobian)."""
        head = float(np.expm1(threshold_otsu(np.log1p(corrected))))
        inside = corrected > head
        x = corrected[inside]
        rng = np.random.default_rng(self.seed)
        pick = rng.choice(x.size, min(SAMPLE, x.size), replace=False)
        cuts = threshold_multiotsu(x[pick], 3)
        groups = np.digitize(x[pick], cuts)
        init = np.array([x[pick][groups == k].mean() for k in range(3)])[:, None]
        mixture = GaussianMixture(3, means_init=init, random_state=self.seed).fit(x[pick, None])
        order = np.argsort(mixture.means_[:, 0])
        mixture.means_, mixture.weights_ = mixture.means_[order], mixture.weights_[order]
        mixture.covariances_ = mixture.covariances_[order]
        mixture.precisions_cholesky_ = mixture.precisions_cholesky_[order]
        likelihood = float(np.mean(mixture.score_samples(x[pick, None]) - field[inside][pick]))
        return head, mixture, likelihood

    def predict(self, pixels: np.ndarray, valid: np.ndarray,
                core: tuple[slice, ...]) -> np.ndarray:
        """A block whose position is unknown is taken to start at the volume's origin."""
        return self.predict_at(pixels, valid, core,
                               tuple(slice(0, n) for n in pixels.shape[1:]))

    def predict_at(self, pixels: np.ndarray, valid: np.ndarray, core: tuple[slice, ...],
                   window: tuple[slice, ...]) -> np.ndarray:
        position = np.meshgrid(*[np.arange(s.start, s.stop) for s in window], indexing="ij")
        field = sum(c * b for c, b in zip(self.coef, monomials(list(position), self.shape,
                                                                self.degree)))
        corrected = np.clip(pixels[0].astype(np.float64), 0, None) / np.exp(field)
        z = (corrected[..., None] - self.means) ** 2 / self.variances
        log_post = np.log(self.weights) - 0.5 * (np.log(self.variances) + z)
        post = np.exp(log_post - log_post.max(axis=-1, keepdims=True))
        post /= post.sum(axis=-1, keepdims=True)
        if self.smooth:
            post = np.stack([ndi.gaussian_filter(post[..., k], self.smooth, mode="reflect",
                                                 truncate=TRUNCATE) for k in range(3)], -1)
        labels = post.argmax(axis=-1)[core]
        labels[~(corrected[core] > self.head)] = label_dtype(3)[1]  # outside the head: nodata
        return labels

    def identity(self) -> str:
        means = ", ".join(f"{m:.4g}" for m in self.means)
        return (f"tissue(degree={self.degree}, head>{self.head:.4g}, means=[{means}], "
                f"smooth={self.smooth:.3g})")

    def fitted(self) -> dict[str, Any]:
        return {"bias_coefficients": self.coef.tolist(), "head_threshold": self.head,
                "means": self.means.tolist(), "variances": self.variances.tolist(),
                "weights": self.weights.tolist()}
