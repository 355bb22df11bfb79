"""Kill -9 half-way, re-run: the same mask as an uninterrupted run, and fewer chunks computed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import zarr
from rasterio.transform import from_origin

from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config
from segflow.tasks.sources.identity import image_id
from tests.conftest import normalized, smooth_noise, write_geotiff

SETTINGS = ["model.kind=torchscript", "model.params.receptive_field=7", "tiling.chunk=128",
            "tiling.tile=128", "tiling.halo=8", "cluster.n_workers=1", "output.pyramid=false"]


def test_resume_after_sigkill(tmp_path, dilated_model, prefect_server, dask_address):
    data = (np.stack([smooth_noise((1024, 1024), s) for s in (4, 5, 6)]) * 255).astype(np.uint8)
    scene = write_geotiff(tmp_path / "scene.tif", data, "EPSG:32633",
                          from_origin(400000, 6000000, 10, 10))
    overrides = SETTINGS + [f"model.weights={dilated_model}", normalized(data)]
    root = tmp_path / "killed"
    store = root / "masks" / f"{image_id(str(scene))}.zarr"

    cmd = [sys.executable, "-m", "segflow.flows.cli", "segment", str(scene), "--out", str(root)]
    for item in overrides:
        cmd += ["--set", item]
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    done = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = int((zarr.open_array(str(store), path="progress", mode="r")[:] > 0).sum())
        except Exception:  # store not created yet
            done = 0
        if done >= 16:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its Dask worker processes
    proc.wait()
    total = 8 * 8
    assert 16 <= done < total
    assert zarr.open_group(str(store), mode="r").attrs["segflow"]["complete"] is False

    cfg = load_config(overrides=overrides).model_dump(mode="json")
    resumed = segment_image(str(scene), str(root), cfg, dask_address)
    fresh = segment_image(str(scene), str(tmp_path / "fresh"), cfg, dask_address)

    assert resumed["chunks_total"] == fresh["chunks_total"] == total
    assert fresh["chunks_computed"] == total
    assert resumed["chunks_computed"] <= total - done  # only what was missing
    mask = zarr.open_array(fresh["output_uri"], path="0", mode="r")[:]
    assert len(np.unique(mask)) >= 2  # a mask of one class would prove nothing
    np.testing.assert_array_equal(
        zarr.open_array(resumed["output_uri"], path="0", mode="r")[:], mask)
    assert zarr.open_group(str(store), mode="r").attrs["segflow"]["complete"] is True

    again = segment_image(str(scene), str(root), cfg, dask_address)
    assert again["reused"] and again["chunks_computed"] == 0
