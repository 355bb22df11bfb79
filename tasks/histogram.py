"""Otsu's threshold from an exact histogram of every valid value, summed by a streaming Dask pass.

Exact sums do not depend on how the image is chunked, so neither does the threshold.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

import dask.array as da
import numpy as np
from distributed import Client
from skimage.filters import threshold_otsu

from tasks.errors import SegflowError
from tasks.source import SourceBase

S = TypeVar("S", bound=SourceBase)


def otsu_threshold(values: da.Array, dtype: str, client: Client, uri: str) -> float:
    """Otsu's threshold of ``values`` (NaN = invalid); one bin per integer value for integers."""
    lo, hi = client.compute([da.nanmin(values), da.nanmax(values)], sync=True)
    if not np.isfinite(lo):
        raise SegflowError(uri, "no valid pixels to fit Otsu's threshold on")
    if np.dtype(dtype).kind in "iub":
        bins = int(min(hi - lo + 1, 65536))
        edges = (lo - 0.5, hi + 0.5)
    else:
        bins, edges = 1024, (lo, hi if hi > lo else lo + 1)
    counts, _ = da.histogram(values, bins=bins, range=edges)
    counts = client.compute(counts, sync=True)
    bin_edges = np.linspace(edges[0], edges[1], bins + 1)  # as da.histogram makes them
    centres = (bin_edges[:-1] + bin_edges[1:]) / 2
    return float(threshold_otsu(hist=(counts, centres)))


def fit_foreground(source: S, client: Client, chunk: int = 256) -> S:
    """The source with background (first band at or below its Otsu threshold) marked invalid."""
    value = otsu_threshold(source.to_dask(chunk)[0], source.dtype, client, source.uri)
    return replace(source, foreground_above=value)
