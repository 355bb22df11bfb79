"""``segflow query`` runs SQL over the catalog of several runs."""

from __future__ import annotations

import json

import duckdb
import pytest
import zarr

from segflow.flows.cli import main
from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config


def test_query_over_two_runs_returns_the_right_sums(rgb_tif, textured_tif, tmp_path,
                                                     dask_address, capsys):
    root = str(tmp_path / "out")
    cfg = load_config(overrides=["model.kind=otsu", "tiling.chunk=512"]).model_dump(mode="json")
    expected = {}
    for source in (rgb_tif, textured_tif):
        result = segment_image(str(source), root, cfg, dask_address)
        mask = zarr.open_array(result["output_uri"], path="0", mode="r")[:]
        expected[result["image_id"]] = {
            "foreground": int((mask == 1).sum()), "valid": int((mask != 255).sum())}

    sql = ("select r.image_id, sum(c.pixels) filter (where c.class_name = 'foreground') as fg, "
           "sum(c.pixels) as valid, count(distinct r.run_id) as runs "
           "from runs r join class_stats c using (run_id) "
           "where r.status = 'succeeded' group by r.image_id order by r.image_id")
    capsys.readouterr()  # the runs' own progress lines: only the query's output below
    assert main(["query", sql, "--out", root, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["image_id"]: {"foreground": r["fg"], "valid": r["valid"]} for r in rows} == expected
    assert all(r["runs"] == 1 for r in rows)

    assert main(["query", "select count(*) as n, sum(area) as ha from class_stats "
                 "where area_unit = 'ha'", "--out", root, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == '"n","ha"' and lines[1].startswith("4,")


def test_query_on_empty_root_has_empty_tables(tmp_path, capsys):
    assert main(["query", "select count(*) as n from runs", "--out", str(tmp_path),
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 0}]


def test_bad_sql_is_one_line_error(tmp_path, capsys):
    assert main(["query", "select nope from runs", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segflow: error:")


WRITES_AND_ESCAPES = [
    "COPY (select * from runs) TO '{tmp}/leak.csv'",
    "ATTACH '{tmp}/other.duckdb' AS other",
    "CREATE TABLE stolen AS SELECT * FROM runs",
    "select * from read_csv('/etc/passwd')",
    "select * from '{tmp}/catalog.parquet'",
    "select * from read_text('/etc/hostname')",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "INSTALL httpfs",
    "LOAD httpfs",
    "select 1; DROP VIEW runs",
    "PRAGMA enable_profiling",
]


def test_query_is_read_only(tmp_path, capsys):
    """Only reads of the catalog run: every write, file access, extension or setting change is
    one line and touches nothing. (INSTALL and LOAD reach DuckDB only through run_query's
    statement check and the locked connection: never against an unlocked one.)"""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from segflow.tasks.catalog.query import connect, query_frame
    from segflow.tasks.errors import UserError

    root = tmp_path / "out"
    pq.write_table(pa.table({"secret": [1]}), tmp_path / "catalog.parquet")
    for sql in WRITES_AND_ESCAPES:
        sql = sql.format(tmp=tmp_path)
        assert main(["query", sql, "--out", str(root)]) == 1, sql
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"segflow: error: {root}: query"), (sql, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.parquet"]
    with pytest.raises(UserError):
        query_frame(str(root), "create table x as select 1")
    # the internal connection is locked too
    con = connect(str(root))
    with pytest.raises(duckdb.Error):
        con.execute("SET enable_external_access = true")
    assert query_frame(str(root), "explain select count(*) from runs").shape[0] >= 1
