"""Load held: ``segflow watch --once`` over 200 new small images, 4 at a time, on the Prefect
server the tests start: every image processed exactly once, none lost, no failure. The command
runs in this process (``flows.cli.main``): the load is on the Prefect server and the cluster,
not on a process boundary."""

from __future__ import annotations

import numpy as np
from rasterio.transform import from_origin

from segflow.tasks.catalog.query import run_query
from tests.conftest import write_geotiff

IMAGES = 200


def _watch(cli, folder, root, dask_address) -> tuple[int, str, str]:
    return cli("watch", folder, "--once", "--out", root, "--concurrency", "4",
               "--scheduler", dask_address, "--set", "model.kind=threshold",
               "--set", "model.params.value=100", "--set", "output.pyramid=false")


def test_watch_once_over_200_new_images(tmp_path, cli, dask_address):
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

    code, stdout, stderr = _watch(cli, folder, root, dask_address)
    assert code == 0, stderr[-2000:]
    assert "database is locked" not in stdout + stderr
    runs = run_query(str(root), "select source_uri, status, count(*) as n from runs "
                                "group by all").to_pylist()
    assert {r["source_uri"] for r in runs} == set(expected)  # none lost
    assert all(r["status"] == "succeeded" and r["n"] == 1 for r in runs)  # each exactly once
    found = run_query(str(root), "select r.source_uri, c.pixels from class_stats c "
                                 "join runs r using (run_id) where c.class_id = 1").to_pylist()
    assert {r["source_uri"]: r["pixels"] for r in found} == expected

    again = _watch(cli, folder, root, dask_address)  # nothing new: nothing done
    assert again[0] == 0
    assert run_query(str(root), "select count(*) as n from runs").to_pylist() == [{"n": IMAGES}]
