"""Load held: ``segflow watch --once`` over 200 new small images, 4 at a time, on the Prefect
server the tests start: every image processed exactly once, none lost, no failure."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from rasterio.transform import from_origin

from segflow.tasks.catalog.query import run_query
from tests.conftest import write_geotiff

IMAGES = 200


def _watch(folder, root, prefect_server, dask_address) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segflow.flows.cli", "watch", str(folder), "--once",
         "--out", str(root), "--concurrency", "4", "--scheduler", dask_address,
         "--set", "model.kind=threshold", "--set", "model.params.value=100",
         "--set", "output.pyramid=false"],
        env={**os.environ, "PREFECT_API_URL": prefect_server}, capture_output=True, text=True,
        timeout=900)


def test_watch_once_over_200_new_images(tmp_path, prefect_server, dask_address):
    folder = tmp_path / "incoming"
    folder.mkdir()
    rng = np.random.default_rng(0)
    expected = {}
    for i in range(IMAGES):
        data = rng.integers(0, 200, (1, 32, 32), dtype=np.uint8)
        path = write_geotiff(folder / f"tile_{i:03d}.tif", data, "EPSG:32633",
                             from_origin(500000 + 320 * i, 4000000, 10, 10))
        expected[str(path)] = int((data > 100).sum())
    root = tmp_path / "out"

    proc = _watch(folder, root, prefect_server, dask_address)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "database is locked" not in proc.stdout + proc.stderr
    runs = run_query(str(root), "select source_uri, status, count(*) as n from runs "
                                "group by all").to_pylist()
    assert {r["source_uri"] for r in runs} == set(expected)  # none lost
    assert all(r["status"] == "succeeded" and r["n"] == 1 for r in runs)  # each exactly once
    found = run_query(str(root), "select r.source_uri, c.pixels from class_stats c "
                                 "join runs r using (run_id) where c.class_id = 1").to_pylist()
    assert {r["source_uri"]: r["pixels"] for r in found} == expected

    again = _watch(folder, root, prefect_server, dask_address)  # nothing new: nothing done
    assert again.returncode == 0
    assert run_query(str(root), "select count(*) as n from runs").to_pylist() == [{"n": IMAGES}]
