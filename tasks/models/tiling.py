"""Tiled inference inside one chunk: cut tiles with a halo, batch them, then stitch them.

``crop`` (exact): each tile's halo is cropped away. For a model whose receptive field fits in the
halo, the cropped tiles equal one forward pass over the whole block: every kept pixel saw all
the context it depends on, and tiles on the block border are fed unpadded on their outer side,
as the whole pass sees them.

``gaussian`` (nnU-Net/MONAI style): each tile's softmax probabilities over its whole read
window are weighted by a Gaussian importance map (sigma = 1/8 of the window side per axis),
summed where windows overlap, normalised, then argmax over the core. For models whose output
depends on more than the halo (whole-tile normalisation, global pooling, a receptive field
larger than the halo) it hides the seams that cropping shows. Memory: one float32 per class per
cell of the chunk's read window.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from functools import lru_cache, reduce

import numpy as np
from scipy.signal.windows import gaussian

from segflow.tasks.models.base import label_dtype
from segflow.tasks.plan.grid import Chunk, plan_grid

# (n, bands, *spatial) float32 -> (n, *spatial) class ids for crop, or
# (n, classes, *spatial) probabilities for gaussian
Forward = Callable[[np.ndarray], np.ndarray]


def _batches(forward: Forward, block: np.ndarray, core: tuple[slice, ...], tile: int,
             halo: int, batch: int) -> Iterator[tuple[Chunk, np.ndarray]]:
    """Each tile covering ``core`` with the model's output for its read window.

    Tiles cover only the core (the part of the block that will be kept); their reads reach into
    the block's own halo. Tiles of equal shape are batched together.
    """
    spatial = block.shape[1:]
    lo = tuple(s.start for s in core)
    hi = tuple(s.stop for s in core)
    tiles = plan_grid(lo, hi, tile, halo, clip_lo=(0,) * len(spatial), clip_hi=spatial)
    by_shape: dict[tuple[int, ...], list[Chunk]] = defaultdict(list)
    for t in tiles:
        by_shape[t.read_shape].append(t)
    for group in by_shape.values():
        for start in range(0, len(group), batch):
            members = group[start:start + batch]
            stack = np.stack([block[(slice(None), *t.read)] for t in members])
            yield from zip(members, forward(stack))


def predict_tiled(forward: Forward, block: np.ndarray, core: tuple[slice, ...], tile: int,
                  halo: int, batch: int) -> np.ndarray:
    """Class ids for ``block[:, *core]`` (bands x 2 or 3 spatial axes), tiles cropped."""
    lo = tuple(s.start for s in core)
    out: np.ndarray | None = None
    for t, labels in _batches(forward, block, core, tile, halo, batch):
        if out is None:
            out = np.empty(tuple(s.stop - s.start for s in core), labels.dtype)
        where = tuple(slice(c.start - o, c.stop - o) for c, o in zip(t.core, lo))
        out[where] = labels[t.crop]
    assert out is not None  # a core has at least one cell, so at least one tile
    return out


@lru_cache(maxsize=16)
def importance_map(shape: tuple[int, ...]) -> np.ndarray:
    """Separable Gaussian peaking at the window centre, sigma = side / 8 per axis (nnU-Net)."""
    axes = [gaussian(n, std=n / 8) for n in shape]
    return reduce(np.multiply.outer, axes).astype(np.float32)


def predict_blended(forward: Forward, block: np.ndarray, core: tuple[slice, ...], tile: int,
                    halo: int, batch: int) -> np.ndarray:
    """Class ids for ``block[:, *core]``: argmax of the Gaussian-weighted sum of overlapping
    tile probabilities, accumulated only over the core plus halo (the tiles' reads).

    The sum is not divided by the summed weights: a positive per-cell factor leaves the argmax
    unchanged.
    """
    spatial = block.shape[1:]
    box_lo = tuple(max(0, s.start - halo) for s in core)
    box_hi = tuple(min(n, s.stop + halo) for s, n in zip(core, spatial))
    total: np.ndarray | None = None
    for t, probs in _batches(forward, block, core, tile, halo, batch):
        if total is None:
            total = np.zeros((probs.shape[0], *(b - a for a, b in zip(box_lo, box_hi))),
                             np.float32)
        where = tuple(slice(r.start - o, r.stop - o) for r, o in zip(t.read, box_lo))
        total[(slice(None), *where)] += probs * importance_map(t.read_shape)
    assert total is not None  # a core has at least one cell, so at least one tile
    inner = tuple(slice(s.start - o, s.stop - o) for s, o in zip(core, box_lo))
    return total[(slice(None), *inner)].argmax(axis=0).astype(label_dtype(total.shape[0])[0])
