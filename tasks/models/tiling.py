"""Tiled inference inside one chunk, on the model's device: cut tiles with a halo, batch them,
then stitch them. Everything here is a torch tensor on that device (a GPU worker's copy of the
chunk stays on the GPU from normalisation to argmax; only class ids come back).

``crop`` (exact): each tile's halo is cropped away. For a model whose receptive field fits in the
halo, the cropped tiles equal one forward pass over the whole block: every kept pixel saw all
the context it depends on, and tiles on the block border are fed unpadded on their outer side,
as the whole pass sees them.

``gaussian`` (nnU-Net/MONAI style): each tile's softmax probabilities over its whole read
window are weighted by a Gaussian importance map (sigma = 1/8 of the window side per axis),
summed where windows overlap, then argmax over the core. For models whose output depends on
more than the halo (whole-tile normalisation, global pooling, a receptive field larger than the
halo) it hides the seams that cropping shows. Memory: one float32 per class per cell of the
chunk's read window, on the device.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator

import torch

from segflow.tasks.plan.grid import Chunk, plan_grid

# (n, bands, *spatial) float -> (n, *spatial) class ids for crop, or
# (n, classes, *spatial) probabilities for gaussian; tensors on the block's device
Forward = Callable[[torch.Tensor], torch.Tensor]


def tiles_of(shape: tuple[int, ...], core: tuple[slice, ...], tile: int,
             halo: int) -> list[Chunk]:
    """The tiles covering ``core`` of a block of spatial ``shape``; reads reach into the
    block's own halo and are clipped to the block."""
    lo = tuple(s.start for s in core)
    hi = tuple(s.stop for s in core)
    return plan_grid(lo, hi, tile, halo, clip_lo=(0,) * len(shape), clip_hi=shape)


def _batches(forward: Forward, block: torch.Tensor, core: tuple[slice, ...], tile: int,
             halo: int, batch: int) -> Iterator[tuple[Chunk, torch.Tensor]]:
    """Each tile covering ``core`` with the model's output for its read window; tiles of equal
    shape are batched together."""
    by_shape: dict[tuple[int, ...], list[Chunk]] = defaultdict(list)
    for t in tiles_of(tuple(block.shape[1:]), core, tile, halo):
        by_shape[t.read_shape].append(t)
    for group in by_shape.values():
        for start in range(0, len(group), batch):
            members = group[start:start + batch]
            stack = torch.stack([block[(slice(None), *t.read)] for t in members])
            yield from zip(members, forward(stack))


def predict_tiled(forward: Forward, block: torch.Tensor, core: tuple[slice, ...], tile: int,
                  halo: int, batch: int) -> torch.Tensor:
    """``forward``'s output for ``block[:, *core]`` (bands x 2 or 3 spatial axes), tiles
    cropped: class ids (*core), or per-class scores (classes, *core)."""
    lo = tuple(s.start for s in core)
    out: torch.Tensor | None = None
    for t, labels in _batches(forward, block, core, tile, halo, batch):
        lead = labels.shape[:labels.ndim - len(core)]  # () for ids, (classes,) for scores
        if out is None:
            out = torch.empty((*lead, *(s.stop - s.start for s in core)), dtype=labels.dtype,
                              device=labels.device)
        where = tuple(slice(c.start - o, c.stop - o) for c, o in zip(t.core, lo))
        out[(..., *where)] = labels[(..., *t.crop)]  # type: ignore[index]
    assert out is not None  # a core has at least one cell, so at least one tile
    return out


def importance_map(shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """Separable Gaussian peaking at the window centre, sigma = side / 8 per axis (nnU-Net)."""
    weights = torch.ones((), dtype=torch.float32, device=device)
    for n in shape:
        axis = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2
        weights = weights[..., None] * torch.exp(-0.5 * (axis / (n / 8)) ** 2)
    return weights


def blend(forward: Forward, block: torch.Tensor, core: tuple[slice, ...], tile: int,
          halo: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian-weighted sum of overlapping tile probabilities over ``block[:, *core]``
    (classes, *core), and the summed weights (*core); accumulated only over the core plus halo
    (the tiles' reads)."""
    spatial = block.shape[1:]
    box_lo = tuple(max(0, s.start - halo) for s in core)
    box_hi = tuple(min(n, s.stop + halo) for s, n in zip(core, spatial))
    box = tuple(b - a for a, b in zip(box_lo, box_hi))
    total: torch.Tensor | None = None
    summed: torch.Tensor | None = None
    weights: dict[tuple[int, ...], torch.Tensor] = {}
    for t, probs in _batches(forward, block, core, tile, halo, batch):
        if total is None:
            total = torch.zeros((probs.shape[0], *box), dtype=torch.float32, device=probs.device)
            summed = torch.zeros(box, dtype=torch.float32, device=probs.device)
        if t.read_shape not in weights:
            weights[t.read_shape] = importance_map(t.read_shape, probs.device)
        where = tuple(slice(r.start - o, r.stop - o) for r, o in zip(t.read, box_lo))
        total[(slice(None), *where)] += probs * weights[t.read_shape]
        assert summed is not None
        summed[where] += weights[t.read_shape]
    assert total is not None and summed is not None  # a core has at least one tile
    inner = tuple(slice(s.start - o, s.stop - o) for s, o in zip(core, box_lo))
    return total[(slice(None), *inner)], summed[inner]


def predict_blended(forward: Forward, block: torch.Tensor, core: tuple[slice, ...], tile: int,
                    halo: int, batch: int) -> torch.Tensor:
    """Class ids for ``block[:, *core]``: argmax of the Gaussian-weighted sum of overlapping
    tile probabilities. The sum is not divided by the summed weights: a positive per-cell
    factor leaves the argmax unchanged."""
    return blend(forward, block, core, tile, halo, batch)[0].argmax(dim=0)


def blended_scores(forward: Forward, block: torch.Tensor, core: tuple[slice, ...], tile: int,
                   halo: int, batch: int) -> torch.Tensor:
    """Per-class probabilities (classes, *core): the Gaussian-weighted mean of the overlapping
    tiles' probabilities, so they sum to 1 in every cell."""
    total, summed = blend(forward, block, core, tile, halo, batch)
    return total / summed
