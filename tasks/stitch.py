"""Tiled inference inside one chunk: cut tiles with a halo, batch them, crop each halo away.

For a model whose receptive field fits in the halo, the cropped tiles equal one forward pass
over the whole block: every kept pixel saw all the context it depends on, and tiles on the
block border are fed unpadded on their outer side, as the whole pass sees them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np

from tasks.plan import Chunk, plan_grid

# (n, bands, *spatial) float32 -> (n, *spatial) class ids
Forward = Callable[[np.ndarray], np.ndarray]


def predict_tiled(forward: Forward, block: np.ndarray, core: tuple[slice, ...], tile: int,
                  halo: int, batch: int) -> np.ndarray:
    """Class ids for ``block[:, *core]``, computed tile by tile with ``halo`` of context each.

    Works for 2-D images and 3-D volumes alike (``block`` is bands x spatial axes). Tiles cover
    only the core (the part of the block that will be kept); their reads reach into the
    block's own halo. Tiles of equal shape are batched together.
    """
    spatial = block.shape[1:]
    lo = tuple(s.start for s in core)
    hi = tuple(s.stop for s in core)
    tiles = plan_grid(lo, hi, tile, halo, clip_lo=(0,) * len(spatial), clip_hi=spatial)
    out = np.empty(tuple(top - bottom for bottom, top in zip(lo, hi)), np.uint8)
    by_shape: dict[tuple[int, ...], list[Chunk]] = defaultdict(list)
    for t in tiles:
        by_shape[t.read_shape].append(t)
    for group in by_shape.values():
        for start in range(0, len(group), batch):
            members = group[start:start + batch]
            stack = np.stack([block[(slice(None), *t.read)] for t in members])
            labels = forward(stack)
            for t, lab in zip(members, labels):
                where = tuple(slice(c.start - o, c.stop - o) for c, o in zip(t.core, lo))
                out[where] = lab[t.crop]
    return out
