"""``output.vectors`` and ``output.qupath``: one polygon per region or object of a written mask,
in ``ROOT/vectors/<image_id>.parquet`` (GeoParquet) and, for slides, ``<image_id>.geojson``
(QuPath). Chunks are polygonised on the workers (export/polygons.py) through a bounded window
and come back column by column, already in output coordinates; the client merges only what
crosses chunk faces and appends each batch to the files as it comes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, closing
from typing import Any

import numpy as np
import pyarrow as pa
from affine import Affine
from distributed import Client, Future

from segflow.tasks.catalog.tables import SCHEMAS
from segflow.tasks.export.polygons import Batch, Frames, Merger, polygonise_chunk
from segflow.tasks.export.vector_files import (
    GeoParquetSink,
    QuPathAnnotations,
    QuPathSink,
    vector_schema,
)
from segflow.tasks.mask.store import MaskStore
from segflow.tasks.measure.classes import UNITS
from segflow.tasks.plan.grid import Chunk, Plan
from segflow.tasks.plan.job import Job
from segflow.tasks.runtime.cluster import broadcast, windowed
from segflow.tasks.runtime.layout import VECTOR_SUFFIX, OutputRoot
from segflow.tasks.runtime.storage import staged
from segflow.tasks.sources.spatial import SlideRef

#: an object's measurements in the GeoParquet file: name -> value
MEASUREMENTS = pa.map_(pa.string(), pa.float64())
#: polygon chunks in flight per worker thread: a chunk's polygons can be 100k rows
WINDOW = 2
#: instance columns copied onto each object's polygon (the `instances` table's own)
INSTANCE_EXTRA = [(f.name, f.type) for f in SCHEMAS["instances"]
                  if f.name not in {"run_id", "image_id", "instance_id", "class_id", "pixels",
                                    "area", "area_unit"}]


def frames(job: Job, qupath: bool) -> tuple[Frames, dict[str, Any] | None]:
    """Pixel corners (col, row) to output coordinates and (``qupath``) to level-0 pixels, and
    the output CRS as PROJJSON (None: not on Earth)."""
    georef = job.reader.georef
    if georef is not None:
        crs = georef.crs
        return (Frames(georef.affine, Affine.identity() if qupath else None),
                crs.to_json_dict() if crs else None)
    ref = job.reader.spatial_ref()
    mpp, downsample = (ref.mpp, ref.downsample) if isinstance(ref, SlideRef) else (None, 1.0)
    level0 = Affine.scale(float(downsample or 1.0))
    return Frames(Affine.scale(mpp or 1.0), level0 if qupath else None), None


def regions(client: Client, store: MaskStore, plan: Plan, totals: np.ndarray | None,
            row_areas: np.ndarray | None, frames: Frames) -> Iterator[Batch]:
    """Every region (or object, with ``totals``: cells per object id) of the mask in
    ``store`` as one polygon: complete ones as their chunks come back, merged ones last."""
    merger = Merger(plan.grid, totals, frames)
    threads = sum(w["nthreads"] for w in client.scheduler_info(n_workers=-1)["workers"].values())
    areas, cells = broadcast(client, row_areas), broadcast(client, totals)

    def submit(chunk: Chunk) -> Future:
        return client.submit(polygonise_chunk, chunk, store=store, totals=cells,
                             shape=plan.shape, row_areas=areas, frames=frames, pure=False)

    with closing(windowed(client, submit, plan.chunks, WINDOW * max(1, threads))) as parts:
        for _, part in parts:
            yield from merger.add(part)
    yield merger.finish()


def object_measurements(table: pa.Table | None) -> dict[int, dict[str, float | None]]:
    """The ``object_measurements`` table by object, named as QuPath names a detection's
    measurements: ``Perimeter um``, ``Circularity``, ``DAPI: Mean``."""
    by_object: dict[int, dict[str, float | None]] = {}
    for batch in (table.to_batches() if table is not None else []):
        for row in batch.to_pylist():
            name = row["measurement"].replace("_", " ").capitalize()
            if row["channel"] is not None:
                name = f"{row['channel']}: {name}"
            elif row["unit"] not in ("1", "rad"):
                name = f"{name} {row['unit']}"
            by_object.setdefault(row["instance_id"], {})[name] = row["value"]
    return by_object


def write_vectors(client: Client, job: Job, store: MaskStore, row_areas: np.ndarray | None,
                  unit: str | None, instance_rows: list[dict[str, Any]] | None,
                  parquet: bool, qupath: bool,
                  measured: dict[int, dict[str, float | None]] | None = None
                  ) -> list[dict[str, Any]]:
    """Polygonise the mask into the GeoParquet file (``parquet``) and the QuPath GeoJSON
    (``qupath``); ``row_areas`` is the reader's ``cell_measure()``, ``unit`` the reporting
    unit; ``measured``: each object's measurements (a ``measurements`` map column in the
    GeoParquet file, QuPath's ``measurements``). Returns the files' ``outputs`` rows."""
    instances = instance_rows is not None
    to, crs = frames(job, qupath)
    id_name = "instance_id" if instances else "region_id"
    measured = measured or {}
    extra = {r["instance_id"]: {**r, "measurements": list(measured.get(r["instance_id"],
                                                                        {}).items())}
             for r in instance_rows or []}
    columns = INSTANCE_EXTRA + ([("measurements", MEASUREMENTS)] if measured else [])
    names = {c.id: c.name for c in job.model.classes}
    scale = UNITS[unit] if unit else 1.0
    root = OutputRoot(job.root)
    parquet_uri = root.vectors(job.image_id, VECTOR_SUFFIX["polygons"])
    geojson_uri = root.vectors(job.image_id, VECTOR_SUFFIX["QuPath GeoJSON"])
    with ExitStack() as files:
        sinks: list[GeoParquetSink | QuPathSink | QuPathAnnotations] = []
        if parquet:
            sinks.append(GeoParquetSink(
                files.enter_context(staged(parquet_uri)),
                vector_schema(id_name, columns if instances else []), crs,
                job.image_id, names, unit, scale, extra))
        colours = {c.id: c.colour for c in job.model.classes}
        if qupath and instances:
            sinks.append(QuPathSink(files.enter_context(staged(geojson_uri)), "detection",
                                    names, colours, unit, scale, measured))
        elif qupath:
            kept = job.config.output.qupath_class_ids(job.model.classes)
            sinks.append(QuPathAnnotations(files.enter_context(staged(geojson_uri)), names,
                                           colours, unit, scale, kept))
        totals = None
        if instance_rows is not None:
            totals = np.zeros(len(instance_rows) + 1, np.int64)
            for row in instance_rows:
                totals[row["instance_id"]] = row["pixels"]
        for found in regions(client, store, job.plan, totals, row_areas, to):
            for sink in sinks:
                sink.write(found)
        counts = [sink.close() for sink in sinks]
    written = [("vectors", "geoparquet", parquet_uri)] * parquet + \
        [("qupath", "geojson", geojson_uri)] * qupath
    return [{"output": output, "format": fmt, "uri": uri, "features": n}
            for (output, fmt, uri), n in zip(written, counts)]
