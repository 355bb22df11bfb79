"""How many cells ``input.mask`` (a cloud or QA asset) took out of a run: for each chunk, the
cells a mask asset flags that are nodata in the written mask (no other item of a mosaic filled
them), counted on the workers from the mask assets and the store, no image band read again;
for the run's summary and its STAC item."""

from __future__ import annotations

from typing import Any

from distributed import Client

from segflow.tasks.mask.store import MaskStore
from segflow.tasks.plan.grid import Chunk
from segflow.tasks.plan.job import Job
from segflow.tasks.runtime.cluster import broadcast
from segflow.tasks.runtime.zarr_nodes import read_cells


def _count(source: Any, chunk: Chunk, store: MaskStore) -> int:
    """On a worker: one chunk's flagged cells left nodata."""
    from segflow.tasks.errors import on_worker

    flagged = on_worker(source.flagged, chunk.core)
    return int((flagged & (read_cells(store.labels(), chunk.core) == store.nodata)).sum())


def masked_cells(client: Client, job: Job, store: MaskStore) -> int | None:
    """Cells a mask asset flags and the mask leaves nodata; None when the source has no mask
    rule."""
    if job.config.input.mask is None or not hasattr(job.reader, "flagged"):
        return None
    source = broadcast(client, job.reader)
    futures = client.map(_count, [source] * len(job.plan.chunks), job.plan.chunks,
                         store=store, pure=False)
    return int(sum(client.gather(futures)))
