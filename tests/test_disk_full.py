"""Disk full: an output root on a 1 MiB tmpfs. The run that fills it fails with one line, its
store stays incomplete, and what the root held before is untouched."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import zarr
from rasterio.transform import from_origin

from segflow.flows.cli import main
from segflow.tasks.catalog.query import run_query
from segflow.tasks.sources.identity import image_id
from tests.conftest import write_geotiff


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only: mount needs CAP_SYS_ADMIN)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_one_line_and_damages_nothing(small_disk, rgb_tif, tmp_path,
                                                       dask_address, capsys):
    root = small_disk / "out"
    common = ["--out", str(root), "--scheduler", dask_address, "--set", "tiling.chunk=512"]
    assert main(["segment", str(rgb_tif), *common, "--set", "model.kind=otsu"]) == 0
    capsys.readouterr()
    first = root / "masks" / f"{image_id(str(rgb_tif))}.zarr"
    before = zarr.open_array(str(first), path="0", mode="r")[:]
    catalog_before = {p: p.read_bytes() for p in (root / "catalog").rglob("*.parquet")}

    # random pixels: a mask that compresses to far more than the space left
    noise = np.random.default_rng(0).integers(0, 255, (1, 2048, 2048), dtype=np.uint8)
    big = write_geotiff(tmp_path / "noise.tif", noise, "EPSG:32633",
                        from_origin(500000, 4000000, 10, 10))
    assert main(["segment", str(big), *common, "--set", "model.kind=threshold",
                 "--set", "model.params.value=127"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0], lines
    assert lines[0].startswith("segflow: error: ") and "Error:" not in lines[0]

    store = root / "masks" / f"{image_id(str(big))}.zarr"
    if store.exists():
        assert zarr.open_group(str(store), mode="r").attrs["segflow"]["complete"] is False
    # what was there before is intact: its mask, its files, its catalog rows
    assert zarr.open_group(str(first), mode="r").attrs["segflow"]["complete"] is True
    np.testing.assert_array_equal(zarr.open_array(str(first), path="0", mode="r")[:], before)
    assert all(p.read_bytes() == data for p, data in catalog_before.items())
    runs = run_query(str(root), "select source_uri, status from runs").to_pylist()
    assert {"source_uri": str(rgb_tif), "status": "succeeded"} in runs
    assert all(r["status"] == "failed" for r in runs if r["source_uri"] == str(big))

    # space again (a bigger disk): the re-run resumes and completes
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    assert main(["segment", str(big), *common, "--set", "model.kind=threshold",
                 "--set", "model.params.value=127"]) == 0, capsys.readouterr().err
    np.testing.assert_array_equal(zarr.open_array(str(store), path="0", mode="r")[:],
                                  (noise[0] > 127).astype(np.uint8))
