"""The catalog: append-only Parquet tables under ``ROOT/catalog/<table>/``, one file per run.

Each run writes its own files (named by run id), so concurrent runs never touch the same
object; a file appears under its final name only when complete (local: rename; object stores:
a PUT is atomic). DuckDB, pandas, Spark and Athena read the folders as tables.
"""

from __future__ import annotations

from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

_TS = pa.timestamp("us", tz="UTC")

SCHEMAS: dict[str, pa.Schema] = {
    "runs": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("source_uri", pa.string()),
        ("source_checksum", pa.string()), ("modality", pa.string()), ("model", pa.string()),
        ("config_hash", pa.string()), ("status", pa.string()), ("error", pa.string()),
        ("started_at", _TS), ("finished_at", _TS), ("seconds", pa.float64()),
        ("chunks_total", pa.int64()), ("chunks_skipped", pa.int64()),
        ("output_uri", pa.string()),
    ]),
    "class_stats": pa.schema([
        ("run_id", pa.string()), ("image_id", pa.string()), ("class_id", pa.int64()),
        ("class_name", pa.string()), ("pixels", pa.int64()), ("area", pa.float64()),
        ("area_unit", pa.string()), ("fraction", pa.float64()),
    ]),
}


def table_dir(root: str, table: str) -> str:
    return f"{root.rstrip('/')}/catalog/{table}"


def write_rows(root: str, table: str, run_id: str, rows: list[dict[str, Any]]) -> str:
    """Write one run's rows of ``table`` as ``<run_id>.parquet``; returns its URI."""
    schema = SCHEMAS[table]
    data = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows],
                                schema=schema)
    fs, folder = fsspec.core.url_to_fs(table_dir(root, table))
    fs.makedirs(folder, exist_ok=True)
    final = f"{folder}/{run_id}.parquet"
    if isinstance(fs, LocalFileSystem):
        partial = f"{folder}/.{run_id}.parquet.partial"
        pq.write_table(data, partial, filesystem=fs)
        fs.mv(partial, final)
    else:
        pq.write_table(data, final, filesystem=fs)
    return final
