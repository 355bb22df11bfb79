"""The chunk plan: a grid of work chunks, each with the halo it is read with.

N-dimensional so that images and volumes share one plan, and reused inside a chunk to cut
model tiles. Chunk origins are multiples of the chunk size, which is a multiple of the model's
stride, so a downsampling model sees the same pixel phase in every chunk.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    """One unit of work: the pixels it owns (core) and the pixels it reads (core + halo)."""

    index: tuple[int, ...]
    core: tuple[slice, ...]
    read: tuple[slice, ...]

    @property
    def crop(self) -> tuple[slice, ...]:
        """Where the core lies inside the read window: what survives the halo crop."""
        return tuple(slice(c.start - r.start, c.stop - r.start)
                     for c, r in zip(self.core, self.read))

    @property
    def read_shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.read)


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def plan_grid(lo: tuple[int, ...], hi: tuple[int, ...], size: int, halo: int,
              clip_lo: tuple[int, ...] | None = None,
              clip_hi: tuple[int, ...] | None = None) -> list[Chunk]:
    """Cut the box [lo, hi) into cubes of ``size`` (origin at ``lo``), each read with ``halo``.

    Read windows are clipped to [clip_lo, clip_hi) (default: the box): at the image border a
    chunk is read unpadded on its outer side, exactly as a whole-image pass sees it.
    """
    clip_lo = clip_lo or lo
    clip_hi = clip_hi or hi
    counts = [math.ceil((top - bottom) / size) for bottom, top in zip(lo, hi)]
    chunks = []
    for index in itertools.product(*(range(n) for n in counts)):
        core = tuple(slice(bottom + i * size, min(top, bottom + (i + 1) * size))
                     for i, bottom, top in zip(index, lo, hi))
        read = tuple(slice(max(cl, c.start - halo), min(ch, c.stop + halo))
                     for c, cl, ch in zip(core, clip_lo, clip_hi))
        chunks.append(Chunk(index=index, core=core, read=read))
    return chunks


@dataclass(frozen=True)
class Plan:
    """The chunk grid of one image, with the effective (stride-aligned) sizes."""

    shape: tuple[int, ...]
    chunk: int
    halo: int
    chunks: list[Chunk]

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(math.ceil(n / self.chunk) for n in self.shape)


def plan_chunks(shape: tuple[int, ...], chunk: int, halo: int, stride: int = 1) -> Plan:
    """The work chunks of an image of ``shape`` with chunk and halo rounded up to the stride;
    a chunk larger than the image is clipped to it (one chunk, one shard of its size)."""
    chunk = round_up(min(chunk, max(shape)), stride)
    halo = round_up(halo, stride)
    zeros = tuple(0 for _ in shape)
    return Plan(shape=tuple(shape), chunk=chunk, halo=halo,
                chunks=plan_grid(zeros, tuple(shape), chunk, halo))
