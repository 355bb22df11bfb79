"""``segflow batch``: many images, one bad one, a summary, an exit status, and idempotence."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import rasterio
from rasterio.windows import Window

from segflow.flows.batch import run_batch
from segflow.flows.segment import segment_image
from segflow.tasks.catalog.query import run_query
from segflow.tasks.config import load_config
from segflow.tasks.intake.inventory import inventory
from tests.conftest import DATA, write_geotiff

OPTIONS = ["model.kind=otsu", "tiling.chunk=128", "output.pyramid=false"]


def crop(dst: Path, row: int, col: int, size: int = 256) -> Path:
    """A real georeferenced crop of the Landsat RGB scene: different offsets, different bytes."""
    with rasterio.open(DATA / "rgb_byte.tif") as src:
        window = Window(col, row, size, size)
        data = src.read(window=window)
        transform, crs = src.window_transform(window), src.crs
    dst.parent.mkdir(parents=True, exist_ok=True)
    return write_geotiff(dst, data, crs, transform, nodata=0)


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    """Three real scenes and one corrupt one (a TIFF header, then nothing)."""
    folder = tmp_path / "scenes"
    for i, (row, col) in enumerate([(200, 200), (300, 350), (400, 250)]):
        crop(folder / f"scene_{i}.tif", row, col)
    good = (folder / "scene_0.tif").read_bytes()
    (folder / "scene_bad.tif").write_bytes(good[:200])
    return folder


def config() -> dict:
    return load_config(overrides=OPTIONS).model_dump(mode="json")


def test_batch_cli_survives_a_bad_image_and_exits_non_zero(scenes, tmp_path, cli,
                                                          dask_address):
    root = tmp_path / "out"
    code, stdout, stderr = cli("batch", scenes, "--out", root, "--concurrency", "2",
                               "--scheduler", dask_address,
                               *(a for o in OPTIONS for a in ("--set", o)),
                               env={"COLUMNS": "250"})
    assert code == 1, stderr
    bad = scenes / "scene_bad.tif"
    errors = [line for line in stderr.splitlines() if line.startswith("segflow:")]
    assert len(errors) == 1 and errors[0].startswith(f"segflow: error: {bad}: not a readable")
    assert "3 succeeded, 1 failed" in stdout
    for name in ("scene_0.tif", "scene_1.tif", "scene_2.tif", "scene_bad.tif"):
        assert name in stdout
        assert f"segmenting {scenes / name}" in stdout  # the image in hand
    # images done / total as each ends, the bad one among them (found anywhere in a line: two
    # images' threads print, and one's "segmenting" line can land inside another's)
    assert re.findall(r"\[(\d)/4\] ", stdout) == ["1", "2", "3", "4"]
    assert re.search(rf"\[\d/4\] {re.escape(str(bad))}: failed in ", stdout)

    runs = run_query(str(root), "select source_uri, status, error from runs "
                                "order by source_uri").to_pylist()
    assert [(Path(r["source_uri"]).name, r["status"]) for r in runs] == [
        ("scene_0.tif", "succeeded"), ("scene_1.tif", "succeeded"),
        ("scene_2.tif", "succeeded"), ("scene_bad.tif", "failed")]
    assert runs[3]["error"].startswith("not a readable raster")
    assert len(list((root / "masks").glob("*.zarr"))) == 3


def test_second_batch_skips_what_is_done(scenes, tmp_path, dask_address):
    (scenes / "scene_bad.tif").unlink()
    root = str(tmp_path / "out")
    first = run_batch(str(scenes), root, config(), dask_address, concurrency=2)
    assert [r["status"] for r in first] == ["succeeded"] * 3

    again = run_batch(str(scenes), root, config(), dask_address, concurrency=2)
    assert [(Path(r["uri"]).name, r["status"]) for r in again] == [
        (f"scene_{i}.tif", "skipped") for i in range(3)]
    counts = run_query(root, "select status, count(*) as n from runs group by status")
    assert counts.to_pylist() == [{"status": "succeeded", "n": 3}]

    # another config is another result: nothing is skipped
    other = load_config(overrides=[*OPTIONS, "tiling.halo=16"]).model_dump(mode="json")
    one = [str(scenes / "scene_0.tif")]
    assert [r["status"] for r in run_batch(one, root, other, dask_address)] == ["succeeded"]


def test_manifest_lists_sources_relative_to_itself(scenes, tmp_path, dask_address):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "batch.csv").write_text(
        f"uri,note\n../scenes/scene_1.tif,relative\n{scenes / 'scene_2.tif'},absolute\n")
    (lists / "batch.txt").write_text("# nightly\n\n../scenes/scene_0.tif\n")
    assert inventory(str(lists / "batch.csv")) == [str(scenes / "scene_1.tif"),
                                                   str(scenes / "scene_2.tif")]
    root = str(tmp_path / "out")
    rows = run_batch(str(lists / "batch.txt"), root, config(), dask_address)
    assert rows[0]["uri"] == str(scenes / "scene_0.tif") and rows[0]["status"] == "succeeded"
    runs = run_query(root, "select source_uri from runs where status = 'succeeded'")
    assert runs.column("source_uri").to_pylist() == [str(scenes / "scene_0.tif")]


def test_inventory_finds_images_not_stores_inside_them_nor_the_output(tmp_path):
    prefix = tmp_path / "in"
    for name in ("a.tif", "sub/b.TIFF", "sub/c.nii.gz", "vol.zarr/zarr.json",
                 "vol.zarr/0/c/0/0", ".hidden.tif", "notes.txt", "out/masks/x.zarr/zarr.json"):
        (prefix / name).parent.mkdir(parents=True, exist_ok=True)
        (prefix / name).write_bytes(b"x")
    found = inventory(str(prefix), exclude=str(prefix / "out"))
    assert found == [str(prefix / n) for n in ("a.tif", "sub/b.TIFF", "sub/c.nii.gz",
                                               "vol.zarr")]


def test_event_runs_skip_what_is_done(rgb_tif, tmp_path, dask_address):
    """The on-arrival deployment passes ``skip_done``: a repeated event records nothing new,
    while a plain re-run still records its (reused) run."""
    out = str(tmp_path / "out")
    cfg = load_config(overrides=["model.kind=otsu", "tiling.chunk=512"]).model_dump(mode="json")
    first = segment_image(str(rgb_tif), out, cfg, dask_address, skip_done=True)
    again = segment_image(str(rgb_tif), out, cfg, dask_address, skip_done=True)
    assert first["status"] == "succeeded" and again["status"] == "skipped"
    assert run_query(out, "select count(*) as n from runs").to_pylist() == [{"n": 1}]
    plain = segment_image(str(rgb_tif), out, cfg, dask_address)
    assert plain["reused"] and run_query(out, "select count(*) as n from runs"
                                         ).to_pylist() == [{"n": 2}]
