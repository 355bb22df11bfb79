"""Every output for other tools of one written mask, as ``outputs`` catalog rows: the
polygons (``output.vectors``, ``output.qupath``), the label file (``output.export``) and the
probabilities already in the store (``output.probabilities``)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from distributed import Client

from segflow.tasks.export.labels import export_labels
from segflow.tasks.export.vectors import object_measurements, write_vectors
from segflow.tasks.mask.store import MaskStore
from segflow.tasks.measure.classes import report_unit
from segflow.tasks.plan.job import Job
from segflow.tasks.sources.spatial import RasterRef


def write_outputs(client: Client, job: Job, store: MaskStore,
                  instance_rows: list[dict[str, Any]] | None,
                  measured: pa.Table | None = None) -> list[dict[str, Any]]:
    """Write the requested files (each appears whole, or not at all) and list them; objects'
    ``measured`` rows (``object_measurements``) go onto their polygons. Volumes are not
    polygonised: their objects are 3-D."""
    out = job.config.output
    rows: list[dict[str, Any]] = []
    if out.probabilities:
        rows.append({"output": "probabilities", "format": "zarr",
                     "uri": f"{store.uri}/probabilities", "features": None})
    if (out.vectors or out.qupath) and job.reader.modality != "volume":
        row_areas = job.reader.cell_measure()  # geodesic per row: computed once here
        unit = report_unit(job.reader, row_areas, job.config.stats)
        rows += write_vectors(client, job, store, row_areas, unit, instance_rows, out.vectors,
                              out.qupath, object_measurements(measured))
    formats = out.export_formats(job.reader.modality,
                                 georeferenced=isinstance(job.reader.spatial_ref(), RasterRef))
    for fmt in formats:
        rows.append(client.submit(export_labels, store, job.plan, fmt, job.root, job.image_id,
                                  job.model.classes, job.reader, pure=False).result())
    return rows
