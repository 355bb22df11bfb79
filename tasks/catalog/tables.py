"""The catalog: append-only Parquet tables under ``ROOT/catalog/<table>/``, one file per run.

Each run writes its own files (named by run id), so concurrent runs never touch the same
object; a file appears under its final name only when complete (local: rename; object stores:
a PUT is atomic). DuckDB, pandas, Spark and Athena read the folders as tables: table ``runs``
is every ``*.parquet`` under ``ROOT/catalog/runs/`` (e.g. ``s3://bucket/results/catalog/runs/``),
one external table per folder, unpartitioned, with the schema in ``SCHEMAS``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from segflow.tasks.intake.bids import entities
from segflow.tasks.runtime.crash import crash_point
from segflow.tasks.runtime.layout import OutputRoot
from segflow.tasks.runtime.storage import staged
from segflow.tasks.sources.identity import image_id
from segflow.tasks.sources.registry import modality_of

if TYPE_CHECKING:
    from segflow.tasks.config import JobConfig

_TS = pa.timestamp("us", tz="UTC")

SCHEMAS: dict[str, pa.Schema] = {
    "runs": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("source_uri", pa.string()),
        ("source_checksum", pa.string()), ("modality", pa.string()), ("model", pa.string()),
        ("config_hash", pa.string()), ("status", pa.string()), ("error", pa.string()),
        ("started_at", _TS), ("finished_at", _TS), ("seconds", pa.float64()),
        ("chunks_total", pa.int64()), ("chunks_skipped", pa.int64()),
        ("output_uri", pa.string()),
        # BIDS entities of the source's file name (None for other names)
        ("subject", pa.string()), ("session", pa.string()), ("acquisition", pa.string()),
        ("bids_run", pa.string()),
    ]),
    "class_stats": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("class_id", pa.int64()),
        ("class_name", pa.string()), ("pixels", pa.int64()), ("area", pa.float64()),
        ("area_unit", pa.string()), ("fraction", pa.float64()),
        ("objects", pa.int64()), ("density", pa.float64()),
    ]),
    # one row per object; centroid and box in the reader's physical axes (z null for 2-D)
    "instances": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("instance_id", pa.int64()),
        ("class_id", pa.int64()), ("pixels", pa.int64()), ("area", pa.float64()),
        ("area_unit", pa.string()),
        *((f"{part}_{axis}", pa.float64())
          for part in ("centroid", "bbox_min", "bbox_max") for axis in "xyz"),
    ]),
    # stats.measure: one row per object, measurement and channel (null for shape), long so
    # that any band names fit one schema (tasks/measure/features.py)
    "object_measurements": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("instance_id", pa.int64()),
        ("measurement", pa.string()), ("channel", pa.string()), ("value", pa.float64()),
        ("unit", pa.string()),
    ]),
    # stats.regions (layer "regions") and stats.zones (layer "zones") with instances: objects
    # per region or zone (under their centroid) and object class
    "region_objects": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("layer", pa.string()),
        ("region_id", pa.int64()),
        ("region_name", pa.string()), ("class_id", pa.int64()), ("objects", pa.int64()),
        ("region_area", pa.float64()), ("area_unit", pa.string()), ("density", pa.float64()),
        # stats.measure: each measurement averaged over the row's objects ("DAPI: mean")
        ("means", pa.map_(pa.string(), pa.float64())),
    ]),
    # one row per class; a ratio whose denominator is 0 is null
    "metrics": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("class_id", pa.int64()),
        ("class_name", pa.string()), ("iou", pa.float64()), ("dice", pa.float64()),
        ("precision", pa.float64()), ("recall", pa.float64()), ("tp", pa.int64()),
        ("fp", pa.int64()), ("fn", pa.int64()),
    ]),
    # stats.ground_truth_instances: objects matched one to one at IoU >= iou_threshold
    "instance_metrics": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("iou_threshold", pa.float64()),
        ("tp", pa.int64()), ("fp", pa.int64()), ("fn", pa.int64()),
        ("precision", pa.float64()), ("recall", pa.float64()), ("f1", pa.float64()),
        ("mean_matched_iou", pa.float64()), ("predicted", pa.int64()), ("true", pa.int64()),
    ]),
    "confusion": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("true_class", pa.int64()),
        ("predicted_class", pa.int64()), ("pixels", pa.int64()),
    ]),
    # one row per zone (stats.zones) and class; fraction of the zone's valid cells
    "zone_stats": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("zone_id", pa.string()),
        ("class_id", pa.int64()), ("class_name", pa.string()), ("pixels", pa.int64()),
        ("area", pa.float64()), ("area_unit", pa.string()), ("fraction", pa.float64()),
    ]),
    # one row per file or array written for other tools (output.vectors, qupath, export,
    # probabilities); features: rows of a polygon file
    "outputs": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("output", pa.string()),
        ("format", pa.string()), ("uri", pa.string()), ("features", pa.int64()),
    ]),
    # `segflow change`: pixels going from class_a in mask A to class_b in mask B
    "change": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("image_id_a", pa.string()),
        ("image_id_b", pa.string()), ("class_a", pa.int64()), ("name_a", pa.string()),
        ("class_b", pa.int64()), ("name_b", pa.string()), ("pixels", pa.int64()),
        ("area", pa.float64()), ("area_unit", pa.string()),
    ]),
}


def table_dir(root: str, table: str) -> str:
    return OutputRoot(root).table(table)


def new_run(run_id: str, source: str, cfg: JobConfig) -> dict[str, Any]:
    """A ``runs`` row as a run starts (the modality from the name until a reader opens the
    file); the run fills in the rest."""
    bids = entities(source) or {}
    return {"run_id": run_id, "image_id": image_id(source), "source_uri": source,
            "modality": modality_of(source, cfg.input), "model": cfg.model.kind,
            "config_hash": cfg.output_hash(), "started_at": datetime.now(UTC),
            "subject": bids.get("subject"), "session": bids.get("session"),
            "acquisition": bids.get("acquisition"), "bids_run": bids.get("run")}


def record_failed(root: str, run: dict[str, Any], reason: str, seconds: float) -> None:
    """The ``failed`` runs row of ``run`` (one line of ``reason``), the one thing a failed run
    leaves in the catalog; a full disk that refuses even it raises OSError."""
    run.update(status="failed", error=" ".join(reason.split()), finished_at=datetime.now(UTC),
               seconds=seconds)
    write_rows(root, "runs", run["run_id"], [run])


def write_rows(root: str, table: str, run_id: str, rows: list[dict[str, Any]]) -> str:
    """Write one run's rows of ``table`` as ``<run_id>.parquet``; returns its URI."""
    schema = SCHEMAS[table]
    for row in rows:  # a NaN in the catalog poisons every sum over it: refuse it here
        bad = [k for k in schema.names if isinstance(row.get(k), float)
               and not math.isfinite(row[k])]
        if bad:
            raise ValueError(f"{table} row of {row.get('image_id')}: {', '.join(bad)} "
                             "not finite")
    data = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows],
                                schema=schema)
    final = f"{table_dir(root, table)}/{run_id}.parquet"
    with staged(final) as path:
        pq.write_table(data, path)
    return final


#: tables a run writes besides ``runs``, in the order they are written
RESULT_TABLES = ("class_stats", "instances", "object_measurements", "region_objects", "metrics",
                 "instance_metrics", "confusion", "zone_stats", "outputs", "change")


def write_table(root: str, table: str, run: dict[str, Any], data: pa.Table) -> str:
    """Write one run's rows of ``table`` given as Arrow columns (a table too large for one
    Python object per row: ``object_measurements``); NaN is null there already."""
    n = len(data)
    data = data.append_column("run_id", pa.array([run["run_id"]] * n, pa.string())) \
        .append_column("image_id", pa.array([run["image_id"]] * n, pa.string()))
    data = data.select(SCHEMAS[table].names).cast(SCHEMAS[table])
    final = f"{table_dir(root, table)}/{run['run_id']}.parquet"
    with staged(final) as path:
        pq.write_table(data, path)
    return final


def record_run(root: str, run: dict[str, Any],
               results: dict[str, list[dict[str, Any]] | pa.Table | None]) -> None:
    """Append one run's rows (``results`` by table name: rows, or Arrow columns); the ``runs``
    row goes last, so a run row means all of the run's rows are in."""
    keys = {"run_id": run["run_id"], "image_id": run["image_id"]}
    for table in RESULT_TABLES:
        rows = results.get(table)
        if isinstance(rows, pa.Table):
            if len(rows):
                write_table(root, table, run, rows)
        elif rows:
            write_rows(root, table, run["run_id"], [{**r, **keys} for r in rows])
    crash_point("catalog")
    write_rows(root, "runs", run["run_id"], [run])
