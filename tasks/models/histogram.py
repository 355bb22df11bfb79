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
    lo, hi = client.compute([da.nanmin(values), da.nanmax(values)], sync=True)
    if not np.isfinite(lo):
        raise UserError(uri, "no valid pixels to fit a threshold on")
    if np.dtype(dtype).kind in "iub":
        bins = int(min(hi - lo + 1, max_bins))
        edges = (lo - 0.5, hi + 0.5)
    else:
        bins, edges = min(1024, max_bins), (lo, hi if hi > lo else lo + 1)
    counts, _ = da.histogram(values, bins=bins, range=edges)
    counts = client.compute(counts, sync=True)
    bin_edges = np.linspace(edges[0], edges[1], bins + 1)  # as da.histogram makes them
    return counts, (bin_edges[:-1] + bin_edges[1:]) / 2


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
                qs: tuple[float, ...]) -> list[float]:
    """``np.percentile(valid, qs)`` (linear interpolation) of ``values`` (NaN = invalid) from
    the exact histogram: exact for integer dtypes, to a 1/1024 of the range for floats, and
    the same for any chunking. The per-image normalisation of Cellpose, StarDist (csbdeep) and
    InstanSeg, fitted once on the whole image instead of on each tile."""
    counts, centres = exact_histogram(values, dtype, client, uri)
    order = np.cumsum(counts)  # order[i]: values at or below centre i
    found = []
    for q in qs:
        at = q / 100 * (order[-1] - 1)
        below = int(np.floor(at))
        low, high = (centres[np.searchsorted(order, i, side="right")]
                     for i in (below, min(below + 1, order[-1] - 1)))
        found.append(float(low + (at - below) * (high - low)))
    return found
