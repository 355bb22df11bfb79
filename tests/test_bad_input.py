"""Bad input: one clear line on stderr, a non-zero exit, a ``failed`` row, nothing marked done."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import zarr
from rasterio.transform import from_origin

from segflow.flows.segment import segment_image
from segflow.tasks.catalog.query import run_query
from segflow.tasks.config import load_config
from segflow.tasks.errors import SegflowError
from tests.conftest import smooth_noise


def test_non_image_file_fails_cleanly_from_the_cli(tmp_path, prefect_server):
    bad = tmp_path / "notes.tif"
    bad.write_text("this is not an image\n")
    root = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "segflow.flows.cli", "segment", str(bad), "--out", str(root),
         "--set", "model.kind=otsu"],
        env={**os.environ, "PREFECT_API_URL": prefect_server}, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"segflow: error: {bad}: not a readable raster")

    runs = run_query(str(root), "select status, error, source_uri from runs").to_pylist()
    assert len(runs) == 1 and runs[0]["status"] == "failed"
    assert runs[0]["source_uri"] == str(bad) and "not a readable raster" in runs[0]["error"]
    assert not (root / "masks").exists()


def test_truncated_geotiff_fails_mid_run_and_is_not_marked_complete(tmp_path, dask_address):
    data = (np.stack([smooth_noise((1024, 1024), s) for s in (7, 8, 9)]) * 255).astype(np.uint8)
    path = tmp_path / "cut.tif"
    import rasterio

    with rasterio.open(path, "w", driver="GTiff", width=1024, height=1024, count=3,
                       dtype="uint8", crs="EPSG:32633", transform=from_origin(0, 0, 1, 1),
                       tiled=True, blockxsize=256, blockysize=256) as dst:
        dst.write(data)
    size = path.stat().st_size
    with open(path, "r+b") as fh:  # keep the header and the first tiles, lose the rest
        fh.truncate(size // 2)

    root = tmp_path / "out"
    cfg = load_config(overrides=["model.kind=threshold", "model.params.value=100",
                                 "tiling.chunk=256"]).model_dump(mode="json")
    with pytest.raises(SegflowError) as info:
        segment_image(str(path), str(root), cfg, dask_address)
    assert info.value.source == str(path) and "cannot read window" in info.value.reason

    runs = run_query(str(root), "select status, error from runs").to_pylist()
    assert [r["status"] for r in runs] == ["failed"]
    assert runs[0]["error"] == info.value.reason
    stores = list((root / "masks").glob("*.zarr"))
    assert len(stores) == 1
    assert zarr.open_group(str(stores[0]), mode="r").attrs["segflow"]["complete"] is False
    assert run_query(str(root), "select count(*) as n from class_stats").to_pylist() == [{"n": 0}]


def test_unknown_config_key_is_a_clear_error(tmp_path, capsys):
    from segflow.flows.cli import main

    assert main(["segment", str(tmp_path / "x.tif"), "--out", str(tmp_path),
                 "--set", "tiling.chunks=512"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tiling.chunks" in err[0] and "invalid config" in err[0]


def test_errors_survive_the_trip_from_a_worker():
    import pickle

    from segflow.tasks.errors import SegflowError

    err = pickle.loads(pickle.dumps(SegflowError("a.tif", "cannot read\nwindow")))
    assert (err.source, err.reason, str(err)) == ("a.tif", "cannot read window",
                                                  "a.tif: cannot read window")
