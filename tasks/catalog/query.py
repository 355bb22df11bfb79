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
from segflow.tasks.errors import UserError, first_line
from segflow.tasks.runtime.storage import filesystem

if TYPE_CHECKING:
    import pandas as pd


#: what a catalog query may be: reads only
READ_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
#: set before any SQL runs: DuckDB would otherwise fetch extensions from the internet on demand
_NO_EXTENSIONS: dict[str, str | bool | int | float | list[str]] = {
    "autoinstall_known_extensions": False, "autoload_known_extensions": False}


def connect(root: str) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection with one view per catalog table (empty tables when none
    written).

    Once the views are registered, the connection loses all access outside them: no files
    (COPY, ATTACH, read_csv, a path in FROM), no extensions, and its configuration is locked,
    so no statement can give that access back.
    """
    con = duckdb.connect(config=_NO_EXTENSIONS)
    for table, schema in SCHEMAS.items():
        fs, folder = filesystem(table_dir(root, table))
        fs.invalidate_cache(folder)  # runs elsewhere append files: list the folder afresh
        files = sorted(fs.glob(f"{folder}/*.parquet")) if fs.exists(folder) else []
        source = (pads.dataset(files, schema=schema, filesystem=fs, format="parquet")
                  if files else pa.Table.from_pylist([], schema=schema))
        if table == "runs":
            con.register(table, source)
            continue
        # a run's result rows count once its runs row exists (written last): a run killed
        # between the two leaves files that no query sees
        con.register(f"_{table}_files", source)
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM _{table}_files "
                    "WHERE run_id IN (SELECT run_id FROM runs)")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def run_query(root: str, sql: str) -> pa.Table:
    """Run ``sql`` (SELECT or EXPLAIN statements only) against the catalog under ``root`` and
    return an Arrow table of the last statement's result."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise UserError(root, f"query: {first_line(exc)}") from exc
    refused = [s.type.name for s in statements if s.type not in READ_STATEMENTS]
    if refused or not statements:
        raise UserError(root, "query: the catalog is read-only; only SELECT (and EXPLAIN) "
                              f"statements run, not {', '.join(refused) or 'an empty query'}")
    try:
        return connect(root).sql(sql).fetch_arrow_table()
    except duckdb.Error as exc:
        raise UserError(root, f"query: {first_line(exc)}") from exc


def query_frame(root: str, sql: str) -> pd.DataFrame:
    """Run ``sql`` against the catalog under ``root`` (tables ``runs``, ``class_stats``,
    ``instances``, ``metrics``, ``confusion``) and return a pandas DataFrame."""
    return run_query(root, sql).to_pandas()
