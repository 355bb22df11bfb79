"""SQL over the catalog with DuckDB: every catalog table is a view of its Parquet folder.

ROOT is a local path or any fsspec URL (s3://bucket/results): pyarrow reads the Parquet files
through fsspec with the same settings as the rest of segflow (runtime/storage.py), so no DuckDB
extension (httpfs) is needed, and an offline or custom-endpoint S3 works the same way.

Python API, for notebooks and downstream analytics::

    import segflow
    # a pandas DataFrame
    df = segflow.query_frame("s3://bucket/results", "select * from class_stats")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads

from segflow.tasks.catalog.tables import SCHEMAS, table_dir
from segflow.tasks.runtime.storage import filesystem

if TYPE_CHECKING:
    import pandas as pd


def connect(root: str) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per catalog table (empty tables when none written)."""
    con = duckdb.connect()
    for table, schema in SCHEMAS.items():
        fs, folder = filesystem(table_dir(root, table))
        fs.invalidate_cache(folder)  # runs elsewhere append files: list the folder afresh
        files = sorted(fs.glob(f"{folder}/*.parquet")) if fs.exists(folder) else []
        source = (pads.dataset(files, schema=schema, filesystem=fs, format="parquet")
                  if files else pa.Table.from_pylist([], schema=schema))
        con.register(table, source)
    return con


def run_query(root: str, sql: str) -> pa.Table:
    """Run ``sql`` against the catalog under ``root`` and return an Arrow table."""
    return connect(root).sql(sql).fetch_arrow_table()


def query_frame(root: str, sql: str) -> pd.DataFrame:
    """Run ``sql`` against the catalog under ``root`` (tables ``runs``, ``class_stats``,
    ``instances``, ``metrics``, ``confusion``) and return a pandas DataFrame."""
    return run_query(root, sql).to_pandas()
