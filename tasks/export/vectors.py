"""``output.vectors`` and ``output.qupath``: one polygon per region or object of a written mask,
in ``ROOT/vectors/<image_id>.parquet`` (GeoParquet) and, for slides, ``<image_id>.geojson``
(QuPath). Chunks are polygonised on the workers (export/polygons.py) through a bounded window;
the client merges what crosses chunk faces and appends rows as they come."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, closing
from typing import Any

import numpy as np
from affine import Affine
from distributed import Client, Future

from segflow.tasks.catalog.tables import SCHEMAS
from segflow.tasks.export.files import export_uri, staged
from segflow.tasks.export.polygons import Merger, Region, polygonise_chunk
from segflow.tasks.export.vector_files import GeoParquetSink, QuPathSink, vector_schema
from segflow.tasks.mask.store import MaskStore
from segflow.tasks.measure.classes import UNITS
from segflow.tasks.plan.grid import Chunk, Plan
from segflow.tasks.plan.job import Job
from segflow.tasks.runtime.cluster import broadcast, windowed
from segflow.tasks.sources.georef import through

BATCH = 5000  # rows per Parquet row group and per GeoJSON write
#: instance columns copied onto each object's polygon (the `instances` table's own)
INSTANCE_EXTRA = [(f.name, f.type) for f in SCHEMAS["instances"]
                  if f.name not in {"run_id", "image_id", "instance_id", "class_id", "pixels",
                                    "area", "area_unit"}]


def frames(job: Job) -> tuple[Affine, dict[str, Any] | None, Affine]:
    """Pixel corners (col, row) to output coordinates, their CRS as PROJJSON (None: not on
    Earth), and to QuPath's level-0 pixel coordinates."""
    georef = job.reader.georef
    if georef is not None:
        crs = georef.crs
        return georef.affine, crs.to_json_dict() if crs else None, Affine.identity()
    attrs = job.reader.spatial_attrs()
    mpp, downsample = attrs.get("mpp"), float(attrs.get("downsample") or 1.0)
    return Affine.scale(mpp or 1.0), None, Affine.scale(downsample)


def regions(client: Client, store: MaskStore, plan: Plan, instances: bool,
            row_areas: np.ndarray | None) -> Iterator[Region]:
    """Every region (or object, with ``instances``) of the mask in ``store`` as one polygon in
    pixel coordinates: complete ones as their chunks come back, merged ones at the end."""
    merger = Merger(plan.grid, instances)
    threads = sum(w["nthreads"] for w in client.scheduler_info(n_workers=-1)["workers"].values())
    areas = broadcast(client, row_areas)

    def submit(chunk: Chunk) -> Future:
        return client.submit(polygonise_chunk, chunk, store=store, instances=instances,
                             shape=plan.shape, row_areas=areas, pure=False)

    with closing(windowed(client, submit, plan.chunks, 8 * max(1, threads))) as parts:
        for _, part in parts:
            yield from merger.add(part)
    yield from merger.finish()


def write_vectors(client: Client, job: Job, store: MaskStore, unit: str | None,
                  instance_rows: list[dict[str, Any]] | None, parquet: bool, qupath: bool
                  ) -> list[dict[str, Any]]:
    """Polygonise the mask into the GeoParquet file (``parquet``) and the QuPath GeoJSON
    (``qupath``); returns their ``outputs`` rows."""
    instances = instance_rows is not None
    world, crs, level0 = frames(job)
    id_name = "instance_id" if instances else "region_id"
    schema = vector_schema(id_name, INSTANCE_EXTRA if instances else [])
    extra = {r["instance_id"]: r for r in instance_rows or []}
    names = {c.id: c.name for c in job.model.classes}
    colours = {c.id: c.colour for c in job.model.classes}
    scale = UNITS[unit] if unit else 1.0
    parquet_uri = export_uri(job.root, "vectors", f"{job.image_id}.parquet")
    geojson_uri = export_uri(job.root, "vectors", f"{job.image_id}.geojson")

    def row(region: Region) -> dict[str, Any]:
        return {**extra.get(region.id, {}), "image_id": job.image_id, id_name: region.id,
                "class_id": region.class_id, "class_name": names.get(region.class_id),
                "pixels": region.pixels, "area": region.area / scale,
                "area_unit": unit or "px", "geometry": through(world, region.shape),
                "qupath": through(level0, region.shape) if qupath else None}

    with ExitStack() as files:
        sinks: list[GeoParquetSink | QuPathSink] = []
        if parquet:
            sinks.append(GeoParquetSink(files.enter_context(staged(parquet_uri)), schema, crs))
        if qupath:
            sinks.append(QuPathSink(files.enter_context(staged(geojson_uri)),
                                    "detection" if instances else "annotation", colours))
        batch: list[dict[str, Any]] = []
        for region in regions(client, store, job.plan, instances, job.reader.cell_measure()):
            batch.append(row(region))
            if len(batch) == BATCH:
                _write(sinks, batch)
        _write(sinks, batch)
        counts = [sink.close() for sink in sinks]
    written = [("vectors", "geoparquet", parquet_uri)] * parquet + \
        [("qupath", "geojson", geojson_uri)] * qupath
    return [{"output": output, "format": fmt, "uri": uri, "features": n}
            for (output, fmt, uri), n in zip(written, counts)]


def _write(sinks: list[GeoParquetSink | QuPathSink], batch: list[dict[str, Any]]) -> None:
    for sink in sinks:
        sink.write(batch)
    batch.clear()
