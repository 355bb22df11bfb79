"""SQL over the catalog with DuckDB: every catalog table is a view of its Parquet folder."""

from __future__ import annotations

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.dataset as pads

from tasks.catalog import SCHEMAS, table_dir


def connect(root: str) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per catalog table (empty tables when none written)."""
    con = duckdb.connect()
    for table, schema in SCHEMAS.items():
        fs, folder = fsspec.core.url_to_fs(table_dir(root, table))
        files = sorted(fs.glob(f"{folder}/*.parquet")) if fs.exists(folder) else []
        source = (pads.dataset(files, schema=schema, filesystem=fs, format="parquet")
                  if files else pa.Table.from_pylist([], schema=schema))
        con.register(table, source)
    return con


def run_query(root: str, sql: str) -> pa.Table:
    """Run ``sql`` against the catalog under ``root`` and return an Arrow table."""
    return connect(root).sql(sql).fetch_arrow_table()
