"""Neighbourhood filters shared by the classical methods, identical on a block and on the image.

A filtered value depends only on cells within the filter's radius; the image border is handled
by scipy's ``reflect`` mode, which is what a border chunk (read unpadded on its outer side) and a
whole-image call both see. Nodata cells get one global fill value, never a per-block one.
"""

from __future__ import annotations

from collections.abc import Callable

import dask.array as da
import numpy as np
from distributed import Client
from scipy import ndimage as ndi
from skimage.filters import sobel

from segflow.tasks.errors import UserError
from segflow.tasks.sources.base import SourceBase

FIT_CHUNK = 1024  # window of the global fit passes; any value gives the same (exact) result
TRUNCATE = 4.0  # scipy's and skimage's default Gaussian truncation, in sigmas

Filter = Callable[[np.ndarray], np.ndarray]


def gaussian_radius(sigma: float) -> int:
    """Cells each side a Gaussian reads: scipy's ``int(truncate * sigma + 0.5)``."""
    return int(TRUNCATE * sigma + 0.5)


def gradient_radius(sigma: float) -> int:
    """Cells each side ``gradient_magnitude`` reads: the smoothing radius plus Sobel's 1."""
    return gaussian_radius(sigma) + 1


def gradient_magnitude(band: np.ndarray, sigma: float) -> np.ndarray:
    """Sobel gradient magnitude of the band after Gaussian smoothing (sigma 0: none)."""
    smooth = ndi.gaussian_filter(band, sigma, mode="reflect", truncate=TRUNCATE) if sigma else band
    return sobel(smooth, mode="reflect")


def filled_band(pixels: np.ndarray, valid: np.ndarray, band: int, fill: float) -> np.ndarray:
    """One band (1-based) as float64 with nodata cells set to the global ``fill``."""
    values = pixels[band - 1].astype(np.float64)
    values[~valid] = fill
    return values


def valid_mean(source: SourceBase, band: int, client: Client) -> float:
    """Mean of the band's valid cells: the nodata fill that pulls local statistics least."""
    mean = float(client.compute(da.nanmean(source.to_dask(FIT_CHUNK)[band - 1]), sync=True))
    if not np.isfinite(mean):
        raise UserError(source.uri, "no valid pixels to fit on")
    return mean


def filtered_band(source: SourceBase, band: int, fill: float, func: Filter, radius: int,
                  chunk: int = FIT_CHUNK) -> da.Array:
    """``func`` applied to the filled band over the whole image, lazily; NaN where invalid.

    Blocks overlap by ``radius`` and are not padded at the image border (``boundary="none"``),
    so ``func``'s own reflect mode sees the border exactly as a whole-image call does.
    """

    def apply(block: np.ndarray) -> np.ndarray:
        invalid = np.isnan(block)
        out = func(np.where(invalid, fill, block))
        out[invalid] = np.nan
        return out

    values = source.to_dask(chunk)[band - 1]
    return values.map_overlap(apply, depth=radius, boundary="none", dtype=np.float64)
