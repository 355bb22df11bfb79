"""A deep model's input intensities: clip, normalise, mask, all per cell on the model's device.

Normalisations that need statistics of the image (nnU-Net's z-score, MONAI's
``NormalizeIntensity`` without a given mean, ``ScaleIntensity``'s min/max) are fitted once over
the whole image (``fit``, through Dask), never per tile: a per-tile statistic would make the
mask depend on the chunk size, a global one keeps it chunk-size invariant.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import dask.array as da
import numpy as np
import torch

from segflow.tasks.config import Normalize
from segflow.tasks.errors import UserError

if TYPE_CHECKING:
    from distributed import Client

    from segflow.tasks.sources.base import SourceBase

#: cells per Dask block of the global fit
FIT_CHUNK = 512
Fit = Literal["none", "zscore", "minmax"]


@dataclass(frozen=True)
class Intensity:
    """clip to ``clip``, then ``(x - mean) / std`` per band (or ``x / scale``), fitted globally
    when ``fit`` says so; with ``nonzero`` only non-zero cells are normalised (zeros stay 0)
    and only they enter the fit, as MONAI's ``nonzero=True`` and nnU-Net's foreground mask."""

    normalize: Normalize | None = None
    scale: float | None = None
    clip: tuple[float, float] | None = None
    fit: Fit = "none"
    nonzero: bool = False
    #: the range ``minmax`` maps the image's minimum and maximum to
    target: tuple[float, float] = (0.0, 1.0)

    def fitted(self, source: SourceBase, client: Client) -> Intensity:
        """This with ``fit`` replaced by the image's own mean/std (or min/max) per band."""
        if self.fit == "none":
            return self
        values = source.to_dask(FIT_CHUNK).astype(np.float64)
        if self.clip is not None:
            values = da.clip(values, *self.clip)
        if self.nonzero:
            values = da.where(values == 0, np.nan, values)
        axes = tuple(range(1, values.ndim))
        if self.fit == "zscore":
            stats = da.nanmean(values, axis=axes), da.nanstd(values, axis=axes)
        else:
            stats = da.nanmin(values, axis=axes), da.nanmax(values, axis=axes)
        first, second = (np.asarray(s) for s in client.compute(list(stats), sync=True))
        if not np.all(np.isfinite(first)):
            raise UserError(source.uri, "no valid pixels to fit the model's normalisation on")
        if self.fit == "zscore":
            mean, std = first, np.maximum(second, 1e-8)
        else:  # (x - lo) / (hi - lo) * (b - a) + a  ==  (x - mean) / std
            lo, hi = first, second
            a, b = self.target
            std = np.maximum(hi - lo, 1e-8) / (b - a)
            mean = lo - a * std
        norm = Normalize(mean=[float(v) for v in mean], std=[float(v) for v in std])
        return replace(self, normalize=norm, fit="none")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised block (bands, *spatial) float32, on its device."""
        if self.fit != "none":
            raise RuntimeError("fit() before predict(): the normalisation is global")
        raw = x
        if self.clip is not None:
            x = x.clamp(*self.clip)
        if self.normalize is not None:
            per_band = (-1,) + (1,) * (x.ndim - 1)
            mean = torch.tensor(self.normalize.mean, device=x.device).reshape(per_band)
            std = torch.tensor(self.normalize.std, device=x.device).reshape(per_band)
            x = (x - mean) / std
        elif self.scale:
            x = x / self.scale
        return torch.where(raw != 0, x, 0.0) if self.nonzero else x

    def describe(self) -> dict[str, object]:
        """What the store records of it (the fitted statistics included)."""
        out: dict[str, object] = {}
        if self.normalize is not None:
            out["normalize"] = self.normalize.model_dump()
        if self.scale:
            out["scale"] = self.scale
        if self.clip is not None:
            out["clip"] = list(self.clip)
        if self.nonzero:
            out["nonzero"] = True
        return out
