"""One writer per mask: two runs of one image into one root never mix, locally and on S3."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from rasterio.transform import from_origin

from segflow.tasks.catalog.query import run_query
from segflow.tasks.errors import UserError
from segflow.tasks.mask.lease import Lease, hold
from segflow.tasks.sources.identity import image_id
from tests.conftest import smooth_noise, write_geotiff
from tests.processes import Command

#: two configs whose masks NumPy computes independently: class 1 where band 1 > value
LOW, HIGH = 100, 150


def _scene(folder) -> tuple[str, np.ndarray]:
    data = (np.stack([smooth_noise((512, 512), s) for s in (3, 4, 5)]) * 255).astype(np.uint8)
    path = write_geotiff(folder / "scene.tif", data, "EPSG:32633",
                         from_origin(500000, 4000000, 10, 10))
    return str(path), data[0]


def _cli(scene: str, root: str, value: int, env: dict[str, str], scheduler: str,
         folder: Path) -> Command:
    """``segflow segment`` in a process of its own (forked: the two runs at once are the test,
    not their start-up)."""
    args = ["segment", scene, "--out", root, "--scheduler", scheduler, "--wait", "600",
            "--set", "model.kind=threshold", "--set", f"model.params.value={value}",
            "--set", "tiling.chunk=256", "--set", "output.pyramid=false"]
    return Command(args, env, folder)


def _open(uri: str) -> zarr.Group:
    from segflow.tasks.runtime.storage import zarr_options

    return zarr.open_group(store=uri, mode="r", **zarr_options(uri))


def _check_root(root: str, scene: str, band: np.ndarray, values: list[int]) -> None:
    """Every run succeeded; the store is the last run's, complete, and equal to NumPy's mask
    for its config; every run's class statistics equal NumPy's counts for its own config."""
    runs = run_query(root, "select run_id, status, model, started_at, finished_at from runs "
                           "order by finished_at").to_pylist()
    assert [r["status"] for r in runs] == ["succeeded"] * len(values), runs
    group = _open(f"{root}/masks/{image_id(scene)}.zarr")
    meta = group.attrs["segflow"]
    assert meta["complete"] is True
    last = meta["config"]["model"]["params"]["value"]
    assert last == values[-1]  # the run that took the lease last wrote the store
    np.testing.assert_array_equal(group["0"][:], (band > last).astype(np.uint8))
    counts = run_query(root, "select run_id, list(pixels order by class_id) as n "
                             "from class_stats group by run_id").to_pylist()
    assert sorted(r["n"] for r in counts) == sorted(
        [int((band <= v).sum()), int((band > v).sum())] for v in values)
    # both runs recorded the one store of this image in this root
    outputs = run_query(root, "select distinct output_uri from runs").to_pylist()
    assert outputs == [{"output_uri": f"{root}/masks/{image_id(scene)}.zarr"}]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_configs_of_one_image_never_mix(tmp_path, where, s3_bucket, prefect_server,
                                           dask_address):
    """k-means-then-threshold, as reported: here threshold at 100, then (started while the first
    runs) at 150 into the same root. The second waits for the first's lease."""
    scene, band = _scene(tmp_path)
    root = str(tmp_path / "out") if where == "local" else f"s3://{s3_bucket}/out"
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    first = _cli(scene, root, LOW, env, dask_address, tmp_path / "first")
    store = f"{root}/masks/{image_id(scene)}.zarr"
    deadline = time.monotonic() + 120
    while Lease(store, 1, "probe")._numbers() == [] and time.monotonic() < deadline:
        assert first.poll() is None, first.communicate()
        time.sleep(0.1)
    second = _cli(scene, root, HIGH, env, dask_address, tmp_path / "second")
    for proc in (first, second):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    _check_root(root, scene, band, [LOW, HIGH])


def test_same_config_at_once_resumes_or_reuses(tmp_path, prefect_server, dask_address):
    """Two identical runs started together: one computes, the other waits and reuses it."""
    scene, band = _scene(tmp_path)
    root = str(tmp_path / "out")
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    procs = [_cli(scene, root, LOW, env, dask_address, tmp_path / f"run{i}") for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    _check_root(root, scene, band, [LOW, LOW])
    computed = sorted(int(re.search(r"(\d+) computed this run", out).group(1))
                      for out, _ in outputs)
    assert computed[0] == 0 and computed[1] > 0, computed  # one of them computed nothing


def _claim(folder, number: int, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{number:012d}.json").write_text(json.dumps(fields))


def test_a_live_holder_makes_the_next_run_wait_then_fail_naming_it(tmp_path):
    store = str(tmp_path / "masks" / "x.zarr")
    _claim(tmp_path / "masks" / "x.zarr.lease", 3, run="run-a", host="elsewhere", pid=1,
           expires=time.time() + 3600)
    clock = time.monotonic()
    with pytest.raises(UserError) as info:
        with hold(store, "run-b", seconds=30, wait=1.5):
            pass
    assert 1.5 <= time.monotonic() - clock < 10
    assert "run-a on elsewhere" in info.value.reason and "--wait" in info.value.reason
    assert info.value.source == store


def test_an_expired_claim_lapses_and_is_taken_over(tmp_path):
    store = str(tmp_path / "masks" / "x.zarr")
    folder = tmp_path / "masks" / "x.zarr.lease"
    _claim(folder, 3, run="run-a", host="elsewhere", pid=1, expires=time.time() - 1)
    with hold(store, "run-b", seconds=30, wait=0) as lease:
        assert lease.number == 4
        assert sorted(p.name for p in folder.iterdir()) == ["000000000004.json"]
    assert list(folder.iterdir()) == []  # released


def test_a_sigkilled_holders_lease_lets_the_next_run_proceed(tmp_path, s3_bucket):
    """A holder killed with SIGKILL renews no more: on this host its claim lapses at once (its
    process is gone); elsewhere after ``lease_seconds``. Locally and on S3."""
    for store in (str(tmp_path / "masks" / "x.zarr"), f"s3://{s3_bucket}/masks/x.zarr"):
        code = ("import sys, time\nfrom segflow.tasks.mask.lease import hold\n"
                f"with hold({store!r}, 'victim', seconds=2, wait=0):\n"
                "    print('held', flush=True); time.sleep(600)\n")
        victim = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                  text=True)
        assert victim.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match="victim"):
            with hold(store, "next", seconds=30, wait=0):
                pass
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        with hold(store, "next", seconds=30, wait=5) as lease:
            assert lease.number == 1


def test_a_holder_that_stalled_past_expiry_loses_the_lease(tmp_path):
    store = str(tmp_path / "masks" / "x.zarr")
    stalled = Lease(store, seconds=1, run="slow")
    stalled.acquire(wait=0)
    stalled._stop.set()  # as if its process froze: no renewals
    stalled._renewer.join()
    _claim(tmp_path / "masks" / "x.zarr.lease", stalled.number,
           **{**json.loads((tmp_path / "masks" / "x.zarr.lease" /
                            f"{stalled.number:012d}.json").read_text()),
              "host": "elsewhere", "expires": time.time() - 1})
    with hold(store, "next", seconds=30, wait=0):
        with pytest.raises(Exception, match="lost the write lease"):
            stalled.check()

