"""The per-chunk work a Dask worker does: read chunk + halo, predict the core, write it.

The worker reads its own pixels from the source and writes its own shard, so image data never
passes through the client; what comes back is a few integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.models.base import SegmentationModel  # no torch: the package imports models lazily
from tasks.plan import Chunk
from tasks.source import SourceBase
from tasks.store import MaskStore


@dataclass(frozen=True)
class ChunkResult:
    index: tuple[int, ...]
    skipped: bool  # all nodata: not inferred, left as the store's nodata fill


def segment_chunk(chunk: Chunk, background: bool, source: SourceBase,
                  model: SegmentationModel, store: MaskStore, skip_empty: bool) -> ChunkResult:
    """Segment one chunk and record it in the store; idempotent, so retries are safe.

    A ``background`` chunk (no tissue on the slide thumbnail) is written as class 0 unread.
    """
    if background:
        shape = tuple(s.stop - s.start for s in chunk.core)
        store.write_chunk(chunk, np.zeros(shape, store.dtype), skipped=True)
        return ChunkResult(chunk.index, skipped=True)
    pixels, valid = source.read(chunk.read)
    core_valid = valid[chunk.crop]
    if skip_empty and not core_valid.any():
        store.write_chunk(chunk, np.empty(0, store.dtype), skipped=True)
        return ChunkResult(chunk.index, skipped=True)
    labels = model.predict(pixels, valid, chunk.crop).astype(store.dtype, copy=False)
    labels[~core_valid] = store.nodata
    store.write_chunk(chunk, labels)
    return ChunkResult(chunk.index, skipped=False)
