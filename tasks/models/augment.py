"""Test-time augmentation: the mean of the softmax over flipped (``flips``) or flipped and
rotated (``d4``) views of each tile, each view undone before the mean.

The views of a batch run through the model as one batch (``d4``'s rotated views of a non-square
tile in a second one). Before flipping, a tile is zero-padded on its high side to a multiple of
the model's stride, so every view pools on the same global grid as the whole-image pass: with
a halo that covers the receptive field, tiled TTA equals whole-image TTA exactly.

``flips`` mirrors every spatial axis and each combination of them (4 views in 2-D, 8 in 3-D, as
nnU-Net mirrors); ``d4`` is the dihedral group of the last two axes (8 views: 4 rotations, each
also transposed).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn import functional as F

TTA = Literal["none", "flips", "d4"]


@dataclass(frozen=True)
class View:
    """Flip ``axes`` (tensor dims), then ``turns`` quarter turns of the last two dims."""

    axes: tuple[int, ...] = ()
    turns: int = 0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.axes:
            x = x.flip(self.axes)
        return torch.rot90(x, self.turns, dims=(-2, -1)) if self.turns else x

    def undo(self, y: torch.Tensor) -> torch.Tensor:
        if self.turns:
            y = torch.rot90(y, -self.turns, dims=(-2, -1))
        return y.flip(self.axes) if self.axes else y


def views(tta: TTA, ndim: int, axes: tuple[int, ...] | None = None) -> list[View]:
    """The views of ``tta`` for inputs with ``ndim`` spatial axes (``axes``: the spatial axes
    that may be mirrored, 0-based; default all), identity first."""
    spatial = [2 + a for a in (range(ndim) if axes is None else axes)]
    if tta == "flips":
        return [View(tuple(c)) for r in range(len(spatial) + 1)
                for c in itertools.combinations(spatial, r)]
    if tta == "d4":
        return [View(flip, turns) for flip in ((), (ndim + 1,)) for turns in range(4)]
    return [View()]


def augmented(run: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor,
              chosen: list[View], stride: int) -> torch.Tensor:
    """The mean softmax of ``run`` (logits) over ``chosen`` views of ``batch``, each undone."""
    spatial = batch.shape[2:]
    pad = [(-n) % stride for n in spatial]
    if any(pad):  # F.pad takes the last axis first
        batch = F.pad(batch, [p for q in reversed(pad) for p in (0, q)])
    by_shape: dict[tuple[int, ...], list[View]] = {}
    for view in chosen:
        by_shape.setdefault(tuple(view.apply(batch[:1]).shape), []).append(view)
    total: torch.Tensor | None = None
    n = batch.shape[0]
    for group in by_shape.values():
        logits = run(torch.cat([v.apply(batch) for v in group]))
        for i, view in enumerate(group):
            probs = view.undo(logits[i * n:(i + 1) * n].float().softmax(dim=1))
            total = probs if total is None else total + probs
    assert total is not None
    mean = total / len(chosen)
    crop: tuple[slice, ...] = tuple(slice(0, s) for s in spatial)
    return mean[(..., *crop)]  # type: ignore[index]
