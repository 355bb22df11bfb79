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

Forward = Callable[[np.ndarray], np.ndarray]  # (n, bands, h, w) float32 -> (n, h, w) class ids


def predict_tiled(forward: Forward, block: np.ndarray, core: tuple[slice, slice], tile: int,
                  halo: int, batch: int) -> np.ndarray:
    """Class ids for ``block[:, core]``, computed tile by tile with ``halo`` of context each.

    Tiles cover only the core (the part of the block that will be kept); their reads reach into
    the block's own halo. Tiles of equal shape are batched together.
    """
    height, width = block.shape[1:]
    lo = (core[0].start, core[1].start)
    hi = (core[0].stop, core[1].stop)
    tiles = plan_grid(lo, hi, tile, halo, clip_lo=(0, 0), clip_hi=(height, width))
    out = np.empty((hi[0] - lo[0], hi[1] - lo[1]), np.uint8)
    by_shape: dict[tuple[int, ...], list[Chunk]] = defaultdict(list)
    for t in tiles:
        by_shape[t.read_shape].append(t)
    for group in by_shape.values():
        for start in range(0, len(group), batch):
            members = group[start:start + batch]
            stack = np.stack([block[(slice(None), *t.read)] for t in members])
            labels = forward(stack)
            for t, lab in zip(members, labels):
                rows, cols = t.core
                out[rows.start - lo[0]:rows.stop - lo[0], cols.start - lo[1]:cols.stop - lo[1]] = \
                    lab[t.crop]
    return out
