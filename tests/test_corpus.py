"""A bad-input corpus (tests/corpus.py) through the real CLI: every bad file is one stderr line
naming it, a ``failed`` row and no store marked complete; every odd but valid file is segmented
right; the good image in the same batch is unaffected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
import zarr
from pyproj import Geod
from skimage.filters import threshold_otsu

from segflow.flows.cli import main
from segflow.tasks.catalog.query import run_query
from segflow.tasks.sources.identity import image_id
from tests import corpus

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def batch(tmp_path_factory, prefect_server, dask_address):
    """The whole corpus plus a good image, one ``segflow batch`` run (a process of its own)."""
    folder = tmp_path_factory.mktemp("corpus")
    paths = corpus.build(folder / "in", DATA / "rgb_byte.tif")
    root = folder / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "segflow.flows.cli", "batch", str(folder / "in"), "--out",
         str(root), "--set", "model.kind=otsu", "--scheduler", dask_address],
        env={**os.environ, "PREFECT_API_URL": prefect_server}, capture_output=True, text=True,
        timeout=600)
    runs = {r["source_uri"]: r for r in run_query(str(root), "select * from runs").to_pylist()}
    return paths, root, proc, runs


def _stats(root: Path, source: Path) -> dict[int, dict]:
    rows = run_query(str(root), f"select c.* from class_stats c join runs r using (run_id) "
                                f"where r.source_uri = '{source}'").to_pylist()
    return {r["class_id"]: r for r in rows}


def _mask(root: Path, source: Path) -> np.ndarray:
    return zarr.open_array(str(root / "masks" / f"{image_id(str(source))}.zarr"), path="0",
                           mode="r")[:]


def test_every_bad_file_is_one_line_a_failed_row_and_nothing_complete(batch):
    paths, root, proc, runs = batch
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    failing = {name: words for name, _, words in corpus.FAILING}
    failing[corpus.EMPTY_ZARR] = "not a readable Zarr"
    # nothing but the error lines: no warnings, no tracebacks
    assert len(lines) == len(failing), proc.stderr
    for name, words in failing.items():
        path = paths[name]
        [line] = [ln for ln in lines if ln.startswith(f"segflow: error: {path}: ")]
        assert words in line, line
        row = runs[str(path)]
        assert row["status"] == "failed" and row["error"] == line.split(f"{path}: ", 1)[1]
        store = root / "masks" / f"{image_id(str(path))}.zarr"
        if store.exists():  # the truncated files fail mid-run: their store is never complete
            assert zarr.open_group(str(store), mode="r").attrs["segflow"]["complete"] is False
    assert len(runs) == len(paths) >= 25  # every file of the batch has its row: none dropped


def test_the_good_image_in_the_same_batch_is_unaffected(batch):
    paths, root, _, runs = batch
    good = paths["good.tif"]
    assert runs[str(good)]["status"] == "succeeded"
    with rasterio.open(good) as ds:
        band, valid = ds.read(1), (ds.read_masks() > 0).any(axis=0)  # GDAL: any band valid
    t = threshold_otsu(band[valid])
    expected = np.where(valid, band > t, 255).astype(np.uint8)
    np.testing.assert_array_equal(_mask(root, good), expected)


def test_odd_but_valid_files_are_segmented_right(batch):
    paths, root, _, runs = batch
    for name, _ in corpus.ODD:
        assert runs[str(paths[name])]["status"] == "succeeded", (name, runs[str(paths[name])])
    # constant and single-pixel images: one class (background), nothing else
    assert (_mask(root, paths["constant.tif"]) == 0).all()
    assert _mask(root, paths["one_pixel.tif"]).tolist() == [[0]]
    # NaN and ±inf cells are nodata; the finite ones are thresholded
    with rasterio.open(paths["nan_and_inf.tif"]) as ds:
        band = ds.read(1)
    mask = _mask(root, paths["nan_and_inf.tif"])
    finite = np.isfinite(band)
    assert (mask[~finite] == 255).all() and (mask[finite] != 255).all()
    assert _stats(root, paths["nan_and_inf.tif"])[0]["pixels"] + \
        _stats(root, paths["nan_and_inf.tif"])[1]["pixels"] == finite.sum()
    # no CRS: areas in pixels
    assert {r["area_unit"] for r in _stats(root, paths["no_crs.tif"]).values()} == {"px"}
    # a rotated projected grid: each cell is |det| = 100 m²
    rotated = _stats(root, paths["rotated.tif"])
    assert sum(r["area"] for r in rotated.values()) == pytest.approx(300 * 300 * 100 / 1e4)
    # across the antimeridian (179.5° E to 180.5° E): the footprint's geodesic area
    # (its top and bottom follow parallels: densified, so geodesic edges do not bow off them)
    west, north, size = 179.5, -16.0, 0.005 * 200
    along = np.linspace(west, west + size, 2001)
    lons = [*along, *along[::-1]]
    lats = [north] * len(along) + [north - size] * len(along)
    footprint_m2 = abs(Geod(ellps="WGS84").polygon_area_perimeter(lons, lats)[0])
    across = _stats(root, paths["antimeridian.tif"])
    assert sum(r["area"] for r in across.values()) == pytest.approx(footprint_m2 / 1e4, rel=1e-6)
    # 300 bands, a unicode name with spaces, a 4-D NIfTI: segmented like any other
    assert _mask(root, paths["many_bands.tif"]).shape == (64, 64)
    assert _mask(root, paths["ünï cödé and space.tif"]).shape == (300, 300)
    assert _mask(root, paths["four_d.nii.gz"]).shape == (16, 16, 8)


def test_4d_nifti_bands_select_the_fourth_axis(batch, dask_address, capsys):
    paths, root, _, _ = batch
    source = paths["four_d.nii.gz"]
    out = root.parent / "bands"
    assert main(["segment", str(source), "--out", str(out), "--set", "model.kind=otsu",
                 "--set", "input.bands=[3]", "--scheduler", dask_address]) == 0
    channel = np.asarray(nib.load(source).dataobj)[..., 2]
    expected = (channel > threshold_otsu(channel)).astype(np.uint8)
    np.testing.assert_array_equal(_mask(out, source), expected)


def _one_line(capsys, *args: str) -> str:
    assert main(list(args)) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_paths_and_configs_that_are_wrong(batch, tmp_path, dask_address, capsys):
    paths, _, _, _ = batch
    good = str(paths["good.tif"])
    out = str(tmp_path / "out")
    common = ["--out", out, "--scheduler", dask_address, "--set", "model.kind=otsu"]
    missing = str(tmp_path / "nope.tif")
    assert _one_line(capsys, "segment", missing, *common).startswith(f"segflow: error: {missing}")
    folder = tmp_path / "a_folder.tif"
    folder.mkdir()
    assert str(folder) in _one_line(capsys, "segment", str(folder), *common)
    failed = run_query(out, "select source_uri, status from runs").to_pylist()
    assert {(r["source_uri"], r["status"]) for r in failed} == {(missing, "failed"),
                                                                (str(folder), "failed")}
    for setting, key in [("tiling.halo=600", "tiling.halo"), ("tiling.chunks=5", "tiling.chunks"),
                         ("tiling.tile=4", "tiling.tile"), ("input.bands=[]", "input.bands"),
                         ("input.max_pixels=1000", "input.max_pixels"),
                         ("input.bands=[9]", "band 9")]:
        line = _one_line(capsys, "segment", good, *common, "--set", "tiling.chunk=512",
                         "--set", setting)
        assert key in line, (setting, line)
    # weights that are a pickle whose loading would run code: refused, the code never runs
    weights = tmp_path / "evil.pt"
    corpus.pickled_weights(weights)
    line = _one_line(capsys, "segment", good, *common, "--set", "model.kind=torchscript",
                     "--set", f"model.weights={weights}")
    assert str(weights) in line and (tmp_path / "must-survive").is_dir()


def test_one_file_one_image_id_however_it_is_spelled(batch, dask_address, monkeypatch,
                                                    capsys):
    """``in/x.tif``, ``./in/x.tif``, ``in/../in/x.tif`` and the absolute path: one image."""
    paths, root, _, _ = batch
    good = paths["good.tif"]
    monkeypatch.chdir(good.parent.parent)
    spellings = ["in/good.tif", "./in/good.tif", "in/../in/good.tif", str(good)]
    for spelling in spellings:
        assert main(["segment", spelling, "--out", str(root), "--set", "model.kind=otsu",
                     "--scheduler", dask_address]) == 0
        assert f"{image_id(str(good))} " in capsys.readouterr().out
    uris = run_query(str(root), "select distinct source_uri, image_id from runs "
                                "where source_uri like '%good.tif'").to_pylist()
    assert uris == [{"source_uri": str(good), "image_id": image_id(str(good))}]


def test_a_huge_chunk_is_clipped_to_the_image(batch, tmp_path, dask_address, capsys):
    paths, _, _, _ = batch
    assert main(["segment", str(paths["constant.tif"]), "--out", str(tmp_path),
                 "--set", "model.kind=otsu", "--set", "tiling.chunk=1000000000",
                 "--scheduler", dask_address]) == 0
    assert "1 total" in capsys.readouterr().out


def test_unwritten_blocks_of_a_sparse_geotiff_are_never_read(tmp_path, dask_address):
    """A 8192² sparse GeoTIFF with one written 1500² patch: the plan knows from the block
    offsets alone which chunks hold nothing (no pixel read), they are nodata, and the patch is
    segmented right."""
    from rasterio.windows import Window

    from segflow.flows.segment import segment_image
    from segflow.tasks.config import load_config
    from segflow.tasks.plan.job import plan_job

    path = tmp_path / "sparse.tif"
    patch = np.random.default_rng(1).integers(1, 255, (1500, 1500), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=8192, height=8192, count=1,
                       dtype="uint8", nodata=0, crs="EPSG:32633",
                       transform=rasterio.transform.from_origin(0, 0, 1, 1), tiled=True,
                       blockxsize=512, blockysize=512, sparse_ok=True) as dst:
        dst.write(patch, 1, window=Window(1000, 2000, 1500, 1500))
    cfg = load_config(overrides=["model.kind=threshold", "model.params.value=127",
                                 "tiling.chunk=1024", "output.pyramid=false"])
    job = plan_job(str(path), str(tmp_path / "out"), cfg)
    # the patch spans rows 2000-3500 and columns 1000-2500: chunks (1..3, 0..2) hold data
    held = {(r, c) for r in range(1, 4) for c in range(0, 3)}
    assert job.unwritten == {c.index for c in job.plan.chunks} - held
    result = segment_image(str(path), str(tmp_path / "out"), cfg.model_dump(mode="json"),
                           dask_address)
    assert result["chunks_skipped"] == 64 - len(held)
    expected = np.full((8192, 8192), 255, np.uint8)
    expected[2000:3500, 1000:2500] = patch > 127
    np.testing.assert_array_equal(_mask(tmp_path / "out", path), expected)
