"""The per-chunk work a Dask worker does: read chunk + halo, predict the core, write it.

The worker reads its own pixels from the source and writes its own shard, so image data never
passes through the client; what comes back is whether the chunk was skipped.
"""

from __future__ import annotations

import numpy as np

from segflow.tasks.errors import retry_transient
from segflow.tasks.mask.store import MaskStore
from segflow.tasks.models.base import SegmentationModel  # no torch: models import lazily
from segflow.tasks.plan.grid import Chunk
from segflow.tasks.sources.base import SourceBase


def segment_chunk(chunk: Chunk, background: bool, source: SourceBase,
                  model: SegmentationModel, store: MaskStore, skip_empty: bool) -> bool:
    """Segment one chunk and record it in the store; True when it was skipped (no tissue on
    the slide thumbnail: written as class 0 unread; or all nodata: left as nodata).

    Idempotent, so a retry is safe: storage hiccups are retried here, a bad file is not.
    """
    return retry_transient(lambda: _segment(chunk, background, source, model, store,
                                            skip_empty))


def _segment(chunk: Chunk, background: bool, source: SourceBase, model: SegmentationModel,
             store: MaskStore, skip_empty: bool) -> bool:
    if background:
        shape = tuple(s.stop - s.start for s in chunk.core)
        store.write_chunk(chunk, np.zeros(shape, store.dtype), skipped=True)
        return True
    pixels, valid = source.read(chunk.read)
    core_valid = valid[chunk.crop]
    if skip_empty and not core_valid.any():
        store.write_chunk(chunk, np.empty(0, store.dtype), skipped=True)
        return True
    labels = model.predict(pixels, valid, chunk.crop).astype(store.dtype, copy=False)
    labels[~core_valid] = store.nodata
    store.write_chunk(chunk, labels)
    return False
