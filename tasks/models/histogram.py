"""Global thresholds (Otsu, multi-Otsu) from an exact histogram of every valid value.

The histogram is summed by a streaming Dask pass; exact integer counts do not depend on how the
image is chunked, so neither do the thresholds.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
from distributed import Client
from skimage.filters import threshold_multiotsu, threshold_otsu

from segflow.tasks.errors import UserError


def exact_histogram(values: da.Array, dtype: str, client: Client, uri: str,
                    max_bins: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Counts and bin centres of ``values`` (NaN = invalid) over their whole range.

    One bin per integer value for integer dtypes (at most ``max_bins``), else 1024 even bins.
    """
    return band_histograms(values[None], dtype, client, uri, max_bins)[0]


def band_histograms(values: da.Array, dtype: str, client: Client, uri: str,
                    max_bins: int = 65536) -> list[tuple[np.ndarray, np.ndarray]]:
    """``exact_histogram`` of each band of ``values`` (bands, ...), every band in the same two
    passes over the image (ranges, then counts)."""
    axes = tuple(range(1, values.ndim))
    lows, highs = (np.atleast_1d(v) for v in client.compute(
        [da.nanmin(values, axis=axes), da.nanmax(values, axis=axes)], sync=True))
    if not np.all(np.isfinite(lows)):
        raise UserError(uri, "no valid pixels to fit a threshold on")
    ranges = []
    for lo, hi in zip(lows.tolist(), highs.tolist()):
        if np.dtype(dtype).kind in "iub":
            ranges.append((int(min(hi - lo + 1, max_bins)), (lo - 0.5, hi + 0.5)))
        else:
            ranges.append((min(1024, max_bins), (lo, hi if hi > lo else lo + 1)))
    counts = client.compute([da.histogram(band, bins=bins, range=edges)[0]
                             for band, (bins, edges) in zip(values, ranges)], sync=True)
    found = []
    for band_counts, (bins, edges) in zip(counts, ranges):
        bin_edges = np.linspace(edges[0], edges[1], bins + 1)  # as da.histogram makes them
        found.append((band_counts, (bin_edges[:-1] + bin_edges[1:]) / 2))
    return found


def otsu_threshold(values: da.Array, dtype: str, client: Client, uri: str) -> float:
    """Otsu's threshold of ``values`` (NaN = invalid). A constant image (one value, or one
    pixel) has nothing to split: the threshold is that value, as skimage returns for a
    constant array, so every cell is background (``band > value`` is false)."""
    counts, centres = exact_histogram(values, dtype, client, uri)
    filled = np.flatnonzero(counts)
    if len(filled) == 1:
        return float(centres[filled[0]])
    return float(threshold_otsu(hist=(counts, centres)))


def multiotsu_thresholds(values: da.Array, dtype: str, client: Client, uri: str,
                         classes: int) -> list[float]:
    """The ``classes - 1`` multi-Otsu thresholds of ``values`` (NaN = invalid), ascending.

    At most 256 bins (skimage's default): the search is polynomial in the bin count.
    """
    counts, centres = exact_histogram(values, dtype, client, uri, max_bins=256)
    if np.count_nonzero(counts) < classes:
        raise UserError(uri, f"too few distinct values to split into {classes} classes")
    return [float(t) for t in threshold_multiotsu(classes=classes, hist=(counts, centres))]


def percentiles(values: da.Array, dtype: str, client: Client, uri: str,
                qs: tuple[float, ...]) -> list[list[float]]:
    """Per band of ``values`` (bands, ...; NaN = invalid), ``np.percentile(valid, qs)`` (linear
    interpolation) from the exact histogram: exact for integer dtypes, to a 1/1024 of the range
    for floats, and the same for any chunking. The per-image normalisation of Cellpose,
    StarDist (csbdeep) and InstanSeg, fitted once on the whole image instead of on each tile."""
    found = []
    for counts, centres in band_histograms(values, dtype, client, uri):
        order = np.cumsum(counts)  # order[i]: values at or below centre i
        band = []
        for q in qs:
            at = q / 100 * (order[-1] - 1)
            below = int(np.floor(at))
            low, high = (centres[np.searchsorted(order, i, side="right")]
                         for i in (below, min(below + 1, order[-1] - 1)))
            band.append(float(low + (at - below) * (high - low)))
        found.append(band)
    return found
