"""``change_masks``: two masks of one grid → the ``change`` table and a change mask store.

The masks are named by their store (a path or URL) or by a run id in ROOT's catalog. The change
mask ``ROOT/masks/change-<id_a>-<id_b>.zarr`` is written like a segmentation's: under the
store's lease, chunk by chunk on Dask, then its pyramid and OME-Zarr metadata, and marked
complete last; its ``change`` rows and a ``runs`` row go to ROOT's catalog.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from segflow.tasks.catalog.query import run_query
from segflow.tasks.catalog.tables import record_failed, record_run
from segflow.tasks.config import ClusterConfig
from segflow.tasks.errors import SegflowError, UserError, first_line, output_error
from segflow.tasks.mask.lease import hold
from segflow.tasks.mask.pyramid import build_levels, ome_metadata
from segflow.tasks.mask.store import mark_complete, open_or_create
from segflow.tasks.measure.change import (
    change_classes,
    change_rows,
    grid_difference,
    open_mask,
)
from segflow.tasks.plan.grid import plan_chunks
from segflow.tasks.runtime.cluster import client_for, dask_cluster
from segflow.tasks.runtime.layout import OutputRoot
from segflow.tasks.runtime.storage import filesystem
from segflow.tasks.sources.identity import normal_uri


def mask_uri(ref: str, root: str) -> str:
    """A mask store path or URL as given; else a run id looked up in ``root``'s catalog."""
    if "://" in ref or ref.endswith(".zarr") or filesystem(ref)[0].exists(ref):
        return normal_uri(ref)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", ref):
        raise UserError(ref, "neither a mask store nor a run id")
    found = run_query(root, f"select output_uri from runs where run_id = '{ref}' "
                            "and status = 'succeeded'").to_pylist()
    if not found:
        raise UserError(ref, f"no mask store there and no succeeded run with this id in {root}")
    return str(found[0]["output_uri"])


@flow(name="change_masks")
def change_masks(a: str, b: str, out: str, scheduler: str | None = None) -> dict[str, Any]:
    """From-to change between masks ``a`` and ``b`` into ``out``; returns the run row and the
    ``change`` rows."""
    out = normal_uri(out)
    clock = time.perf_counter()
    run: dict[str, Any] = {"run_id": str(flow_run.id or f"local-{time.time_ns()}"),
                           "image_id": "change", "source_uri": f"{a} {b}", "model": "change",
                           "started_at": datetime.now(UTC)}
    try:
        mask_a, mask_b = open_mask(mask_uri(a, out)), open_mask(mask_uri(b, out))
        run["source_uri"] = f"{mask_a.uri} {mask_b.uri}"
        differs = grid_difference(mask_a, mask_b)
        if differs:
            raise UserError(f"{mask_a.uri} vs {mask_b.uri}", f"the grids differ: {differs}")
        change_id = f"change-{mask_a.image_id}-{mask_b.image_id}"
        uri = OutputRoot(out).store(change_id)
        classes = change_classes(mask_a.classes, mask_b.classes)
        plan = plan_chunks(mask_a.shape, mask_a.chunk, 0)
        run.update(image_id=change_id, modality=mask_a.modality,
                   output_uri=uri, chunks_total=len(plan.chunks))
        coords, grid_mapping = mask_a.coordinates()
        attrs = {"segflow": {"source_uri": run["source_uri"], "model": "change",
                             "classes": [c.model_dump() for c in classes],
                             "change": {"a": mask_a.uri, "b": mask_b.uri},
                             "chunks_total": len(plan.chunks)},
                 "spatial": mask_a.ref.to_attrs()}
        with hold(uri, run["run_id"], 60.0, 30.0), \
                dask_cluster(ClusterConfig(), scheduler) as address:
            client = client_for(address)
            store, _, _ = open_or_create(uri, plan, mask_a.dims, max(c.id for c in classes) + 1,
                                         attrs, f"change:{time.time_ns()}", grid_mapping, coords)
            rows = change_rows(client, plan.chunks, mask_a, mask_b, store)
            levels = build_levels(uri, client)
            units, size = mask_a.ref.cell_size(len(mask_a.shape))
            mark_complete(uri, {"chunks_skipped": 0, "levels": levels},
                          ome_metadata(mask_a.dims, units, size, levels, classes, change_id,
                                       mask_a.ref.origin(len(size))))
        run.update(status="succeeded", chunks_skipped=0, finished_at=datetime.now(UTC),
                   seconds=time.perf_counter() - clock)
        record_run(out, run, {"change": rows})
        return {**run, "change": rows}
    except Exception as exc:
        error = exc if isinstance(exc, SegflowError) else output_error(out, exc)
        record_failed(out, run, first_line(error), time.perf_counter() - clock)
        if error is exc:
            raise
        raise error from exc
