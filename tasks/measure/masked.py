"""How many cells ``input.mask`` (a cloud or QA asset) took out of a run: counted window by
window on the workers, for the run's summary and its STAC item."""

from __future__ import annotations

from typing import Any

from distributed import Client

from segflow.tasks.plan.job import Job
from segflow.tasks.runtime.cluster import broadcast


def _count(source: Any, box: tuple[slice, ...]) -> int:
    from segflow.tasks.errors import on_worker

    return int(on_worker(source.masked_cells, box))


def masked_cells(client: Client, job: Job) -> int | None:
    """Cells a mask asset flags that no other item of a mosaic fills; None when the source
    has no mask rule."""
    if job.config.input.mask is None or not hasattr(job.reader, "masked_cells"):
        return None
    source = broadcast(client, job.reader)
    futures = client.map(_count, [source] * len(job.plan.chunks),
                         [c.core for c in job.plan.chunks], pure=False)
    return int(sum(client.gather(futures)))
