"""A newcomer's install: the built wheel, alone in a fresh virtual environment, away from the
repository, runs ``segflow demo`` (its results checked against the masks it wrote), and with a
plug-in package beside it ``segflow segment`` and ``segflow batch``; it installs only
``segflow``, its dependencies come from the test run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import zarr

from segflow.tasks.catalog.query import run_query

REPO = Path(__file__).resolve().parents[1]


#: the wheel's declared requirements that the interpreter cannot satisfy (pip check would also
#: judge unrelated packages, such as the fresh venv's own old setuptools)
UNMET = """
from importlib.metadata import PackageNotFoundError, requires, version
from packaging.requirements import Requirement
unmet = []
for req in map(Requirement, requires("segflow")):
    if req.marker and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        found = version(req.name)
    except PackageNotFoundError:
        found = None
    if found is None or not req.specifier.contains(found, prereleases=True):
        unmet.append(f"{req} ({found})")
print(unmet)
"""


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{args}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)]
    try:  # the test environment's setuptools (the pin in pyproject) saves an isolated build env
        _run([*build, "--no-build-isolation"], dist, dict(os.environ), 600)
    except AssertionError:  # no usable setuptools here: pip's isolated build, as a user's
        _run(build, dist, dict(os.environ), 600)
    [built] = dist.glob("segflow-*.whl")
    return built


def test_the_wheel_holds_one_top_level_package_with_the_demo_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"segflow"}
    for data in ("segflow/configs/landcover.yaml", "segflow/configs/landcover_unet.yaml",
                 "segflow/samples/nc_lsat7_2000_b12345.tif", "segflow/samples/landcover_unet.pt",
                 "segflow/samples/nc_landclass96.tif", "segflow/samples/SOURCES.md"):
        assert data in names
    for stage in ("sources", "plan", "models", "mask", "measure", "catalog", "runtime",
                  "intake", "export"):
        assert f"segflow/tasks/{stage}/__init__.py" in names
    assert sum(zipfile.ZipFile(wheel).getinfo(n).file_size for n in names) < 12e6


@pytest.fixture(scope="module")
def fresh(wheel, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh venv with the wheel alone installed (the demo test runs in it first, the
    plug-in test then adds its package): its bin folder and a newcomer's environment."""
    root = tmp_path_factory.mktemp("fresh")
    env_dir = root / "env"
    venv.create(env_dir, with_pip=False)  # this run's pip installs into it (--python)
    bin_dir = env_dir / "bin"
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("PREFECT_", "AWS_", "VIRTUAL_ENV", "PYTHON"))}  # as a newcomer
    env = {**clean, "PATH": f"{bin_dir}:{clean['PATH']}", "PREFECT_HOME": str(root / "ph")}
    # The dependencies come from this test run's environment, appended to the fresh venv's
    # path by a plain .pth line (so its editable segflow finder is not loaded): `make demo`
    # already installs them from pyproject on a clean machine, and downloading and unpacking
    # torch again here cost three of CI's minutes. The wheel itself installs alone, and every
    # requirement its metadata declares is met by what the fresh interpreter finds.
    site = Path(_run([str(bin_dir / "python"), "-c", "import site; "
                      "print(site.getsitepackages()[0])"], root, env, 60).strip())
    ours = next(p for p in map(Path, sys.path) if p.name == "site-packages" and p.is_dir())
    (site / "zz_shared_deps.pth").write_text(f"{ours}\n")
    _run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install",
          "-q", "--no-deps", str(wheel)],
         root, env, 300)
    return bin_dir, env


def _elsewhere(tmp_path: Path) -> Path:
    """An empty working folder away from the repository."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    return work


@pytest.mark.timeout(900)
def test_a_fresh_venv_runs_the_demo_from_another_directory(fresh, tmp_path, prefect_server):
    bin_dir, env = fresh
    # on the session's Prefect API: a temporary server of its own costs this test a third of
    # its time, and `make demo` (CI's first command) runs the demo with none started
    env = {**env, "PREFECT_API_URL": prefect_server}
    work = _elsewhere(tmp_path)
    unmet = _run([str(bin_dir / "python"), "-c", UNMET], work, env, 120)
    assert unmet.strip() == "[]"

    # nothing generic at the top of site-packages; the public API is there
    probe = ("import importlib.util as u, segflow; "
             "print(u.find_spec('flows'), u.find_spec('tasks'), sorted(segflow.__all__))")
    out = _run([str(bin_dir / "python"), "-c", probe], work, env, 120)
    assert out.strip() == ("None None ['load_config', 'open_mask', 'query_frame', "
                           "'segment_batch', 'segment_image']")

    demo = _run([str(bin_dir / "segflow"), "demo", "--out", "demo-out"], work, env, 900)
    assert "mask:" in demo and "cluster_1" in demo and "developed" in demo and "iou" in demo
    _check_demo(work, "demo-out")



def _check_demo(work: Path, out: str) -> None:
    """The demo's two runs, read back from its catalog and stores: k-means land cover, then
    the bundled U-Net scored against the scene's land-cover map. ``out`` was given relative to
    ``work``, and so are the URIs in the catalog."""
    root = work / out
    for where, kind in ((root, "kmeans"), (root / "unet", "unet")):
        [run] = run_query(str(where), "select status, model, output_uri from runs").to_pylist()
        assert run["status"] == "succeeded" and run["model"].startswith(kind)
        mask = zarr.open_array(str(work / run["output_uri"]), path="0", mode="r")[:]
        stats = run_query(str(where), "select class_id, pixels, area from class_stats"
                          ).to_pylist()
        for row in stats:  # 28.5 m pixels, hectares
            assert row["pixels"] == int((mask == row["class_id"]).sum())
            assert abs(row["area"] - row["pixels"] * 28.5 * 28.5 / 1e4) < 1e-6
        assert sum(r["pixels"] > 0 for r in stats) >= 3  # non-trivial masks
    # whole-scene figures in the catalog, consistent with the hold-out scores the training
    # script recorded
    [scores] = run_query(str(root / "unet"), "select sum(tp) as tp, sum(fp) as fp from metrics"
                         ).to_pylist()
    accuracy = scores["tp"] / (scores["tp"] + scores["fp"])
    trained = json.loads((REPO / "samples" / "landcover_unet.json").read_text())
    assert accuracy > trained["holdout"]["pixel_accuracy"] - 0.05


@pytest.mark.timeout(900)
def test_a_plugin_package_adds_a_reader_and_a_model_kind(fresh, tmp_path, prefect_server):
    """A third-party package (tests/data/plugin: a .npy reader and a ``brighter`` kind, named
    by entry points) installed beside the wheel passes segflow.testing's contracts and runs in
    ``segflow segment`` and ``segflow batch`` with no change to segflow."""
    import numpy as np
    import rasterio

    bin_dir, env = fresh
    work = _elsewhere(tmp_path)
    env = {**env, "PREFECT_API_URL": prefect_server}  # the session's API: no start-up per call
    plugin = Path(shutil.copytree(REPO / "tests" / "data" / "plugin", tmp_path / "plugin"))
    # built as its author would publish it (with this environment's setuptools), installed
    # from its wheel
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", str(tmp_path / "dist"), str(plugin)], plugin, dict(os.environ), 300)
    [built] = (tmp_path / "dist").glob("segflow_npy-*.whl")
    _run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install",
          "-q", "--no-deps", str(built)],
         work, env, 300)
    contracts = _run([str(bin_dir / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                      "tests"], plugin, env, 600)
    assert " passed" in contracts and "failed" not in contracts

    with rasterio.open(REPO / "samples" / "nc_lsat7_2000_b12345.tif") as src:
        scene = src.read([1, 2, 3], window=((0, 200), (0, 300)))
    (work / "in").mkdir()
    np.save(work / "in" / "scene.npy", scene)
    sets = ["--set", "model.kind=brighter", "--set", "model.params.factor=1.1",
            "--set", "tiling.chunk=128"]
    seg = _run([str(bin_dir / "segflow"), "segment", "in/scene.npy", "--out", "seg", *sets],
               work, env, 600)
    assert "bright" in seg
    [run] = run_query(str(work / "seg"), "select status, model, output_uri from runs"
                      ).to_pylist()
    assert run["status"] == "succeeded" and run["model"].startswith("brighter(")
    mask = zarr.open_array(str(work / run["output_uri"]), path="0", mode="r")[:]
    band = scene[0].astype(np.float64)  # the kind's rule, computed here in NumPy
    np.testing.assert_array_equal(mask, (band > 1.1 * band.mean()).astype(mask.dtype))

    batch = _run([str(bin_dir / "segflow"), "batch", "in", "--out", "batch", *sets], work, env,
                 600)
    assert "1 succeeded" in batch
    [row] = run_query(str(work / "batch"), "select sum(pixels) as n from class_stats"
                      ).to_pylist()
    assert row["n"] == band.size
