"""Kill anywhere, then re-run: the CLI, in a process of its own, is SIGKILLed at each stage
boundary of a run (a named crash point, tasks/runtime/crash.py); the re-run ends with the mask
of an uninterrupted run, the same catalog rows and every output, the files for other tools
included."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import zarr
from rasterio.transform import from_origin

from segflow.flows.segment import segment_image
from segflow.tasks.catalog.query import run_query
from segflow.tasks.config import load_config
from segflow.tasks.sources.identity import image_id
from tests.conftest import smooth_noise, write_geotiff
from tests.processes import Command

SETTINGS = ["model.kind=otsu", "tiling.chunk=192", "stats.instances=true",
            "output.vectors=true", "output.export=true"]
POINTS = ["open", "fit", "chunks", "pyramid", "quicklook", "measure", "export", "catalog",
          "publish"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dask_address) -> tuple[Path, dict, np.ndarray]:
    folder = tmp_path_factory.mktemp("crash")
    data = (np.stack([smooth_noise((384, 384), s, scale=24) for s in (1, 2, 3)]) * 255
            ).astype(np.uint8)
    scene = write_geotiff(folder / "scene.tif", data, "EPSG:32633",
                          from_origin(500000, 4000000, 10, 10))
    cfg = load_config(overrides=SETTINGS).model_dump(mode="json")
    result = segment_image(str(scene), str(folder / "reference"), cfg, dask_address)
    return scene, result, zarr.open_array(result["output_uri"], path="0", mode="r")[:]


def _counts(root: Path) -> list[tuple]:
    return sorted((r["run_id"], r["class_id"], r["pixels"], r["objects"]) for r in run_query(
        str(root), "select run_id, class_id, pixels, objects from class_stats").to_pylist())


@pytest.fixture(scope="module")
def killed(reference, tmp_path_factory, prefect_server, dask_address) -> dict[str, tuple]:
    """One CLI process per crash point, each into its own root, all started at once (their
    start-up costs overlap); returns point -> (root, exit status, stderr)."""
    scene = reference[0]
    procs = {}
    for point in POINTS:
        root = tmp_path_factory.mktemp(f"killed-{point}") / "out"
        args = ["segment", str(scene), "--out", str(root), "--scheduler", dask_address]
        for item in SETTINGS:
            args += ["--set", item]
        env = {**os.environ, "PREFECT_API_URL": prefect_server, "SEGFLOW_CRASH_AT": point}
        procs[point] = (root, Command(args, env, root.parent / "process"))
    done = {}
    for point, (root, proc) in procs.items():
        _, stderr = proc.communicate(timeout=600)
        done[point] = (root, proc.returncode, stderr)
    return done


@pytest.mark.parametrize("point", POINTS)
def test_killed_at_a_stage_boundary_then_rerun(point, reference, killed, dask_address):
    scene, expected, mask = reference
    root, status, stderr = killed[point]
    store = root / "masks" / f"{image_id(str(scene))}.zarr"
    assert status == -9, stderr  # killed where asked, not finished or failed

    finished = POINTS.index(point) > POINTS.index("quicklook")
    if store.exists():  # never marked complete before every output is in
        complete = zarr.open_group(str(store), mode="r").attrs["segflow"]["complete"]
        assert complete is finished
    else:
        assert not finished
    before = run_query(str(root), "select run_id from runs").to_pylist()
    assert len(before) == (1 if point == "publish" else 0)  # a runs row only once all is in

    cfg = load_config(overrides=SETTINGS).model_dump(mode="json")
    rerun = segment_image(str(scene), str(root), cfg, dask_address)
    np.testing.assert_array_equal(zarr.open_array(str(store), path="0", mode="r")[:], mask)
    group = zarr.open_group(str(store), mode="r")
    assert group.attrs["segflow"]["complete"] is True and "1" in group  # pyramid level 1
    assert (root / "masks" / f"{image_id(str(scene))}.png").stat().st_size > 0
    assert rerun["reused"] is finished

    runs = run_query(str(root), "select run_id, status from runs").to_pylist()
    assert [r["status"] for r in runs] == ["succeeded"] * (2 if point == "publish" else 1)
    assert len({r["run_id"] for r in runs}) == len(runs)  # no run recorded twice
    # every recorded run has the reference's class counts and objects, nothing more
    reference_rows = [(c, n, o) for _, c, n, o in _counts(Path(expected["output_uri"]).parents[1])]
    by_run: dict[str, list] = {}
    for run_id, c, n, o in _counts(root):
        by_run.setdefault(run_id, []).append((c, n, o))
    assert sorted(by_run) == sorted(r["run_id"] for r in runs)
    assert all(rows == reference_rows for rows in by_run.values())
    n_objects = run_query(str(root), "select run_id, count(*) as n from instances "
                                     "group by run_id").to_pylist()
    assert {r["n"] for r in n_objects} == {expected["instances"]}
    # the files for other tools are whole: one polygon per object, the label file readable
    name = image_id(str(scene))
    assert pq.read_table(root / "vectors" / f"{name}.parquet").num_rows == expected["instances"]
    with rasterio.open(root / "exports" / f"{name}.tif") as cog:
        np.testing.assert_array_equal(cog.read(1), mask)
