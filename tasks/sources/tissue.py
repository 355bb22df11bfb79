"""Tissue detection on a slide thumbnail, so chunks of bare glass are never read or inferred.

Stained tissue is coloured and glass is grey-white, so Otsu's threshold on HSV saturation of a
low-resolution pyramid level separates them (as histolab and TIAToolbox do); the mask is
dilated by a few thumbnail pixels so faint tissue edges are not cut.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu

from segflow.tasks.plan.grid import Plan
from segflow.tasks.sources.base import SourceBase

THUMB_SIDE = 1024  # longest side of the thumbnail the mask is computed on
DILATE = 4  # thumbnail pixels added around tissue, so faint edges are kept


def tissue_mask(slide: SourceBase) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of a thumbnail and its decimation factor relative to the slide."""
    step = max(1, int(np.ceil(max(slide.spatial_shape) / THUMB_SIDE)))
    thumb, factor = slide.thumbnail(step)
    saturation = rgb2hsv(np.moveaxis(thumb[:3], 0, -1))[..., 1]
    if np.ptp(saturation) == 0:
        return np.ones(saturation.shape, bool), factor
    mask = saturation > threshold_otsu(saturation)
    # No speck removal: a small fragment of tissue is still tissue, and a wrongly skipped chunk
    # costs accuracy while a wrongly kept one only costs time.
    return binary_dilation(mask, iterations=DILATE), factor


def background_chunks(slide: SourceBase, plan: Plan) -> set[tuple[int, ...]]:
    """Indexes of chunks whose footprint on the thumbnail holds no tissue at all."""
    mask, factor = tissue_mask(slide)
    empty = set()
    for chunk in plan.chunks:
        window = tuple(slice(int(s.start // factor), int(np.ceil(s.stop / factor)) + 1)
                       for s in chunk.core)
        if not mask[window].any():
            empty.add(chunk.index)
    return empty
