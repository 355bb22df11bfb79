"""Shared fixtures: one Prefect server and one Dask LocalCluster for the session, real rasters."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from segflow.tasks.runtime.storage import raster_env

DATA = Path(__file__).parent / "data"
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# run logs stay on the console and in pytest's capture: no test reads them back from the API,
# and shipping each line to the session's Prefect server cost about a tenth of the suite's time
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
# Dask's housekeeping polled less often in every process the tests start (the session's
# cluster idles between tests): the statistical profiler (a sample every 10 ms) off, the event
# loop tick, system and memory monitors each second or two; idle, they cost a tenth of a core
# per test process at their defaults
for _key, _value in (("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED", "False"),
                     ("DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL", "1s"),
                     ("DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL", "2s"),
                     ("DASK_DISTRIBUTED__WORKER__MEMORY__MONITOR_INTERVAL", "1s")):
    os.environ.setdefault(_key, _value)
# a warm `segflow server` of the user's must not run the tests' jobs
os.environ["SEGFLOW_HOME"] = tempfile.mkdtemp(prefix="segflow-home-")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: the longest test files (half a minute or more each on 2 cores), longest first: started first,
#: so that under pytest-xdist (``--dist loadfile``) they overlap with the rest of the suite
#: instead of ending it, and the short files even out both workers at the end
LONGEST_FIRST = ("tests/test_wheel.py", "tests/test_load.py", "tests/test_crash.py",
                 "tests/test_outputs.py", "tests/test_lease.py", "tests/test_s3.py",
                 "tests/test_stac.py", "tests/test_nnunet_monai.py",
                 "tests/test_split.py", "tests/test_distributed.py", "tests/test_corpus.py",
                 "tests/test_deep_models.py", "tests/test_tissue.py", "tests/test_resume.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::")[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)


@pytest.fixture(scope="session", autouse=True)
def s3_endpoint():
    """moto's standalone S3/SQS server on 127.0.0.1, as s3fs's own suite runs it.

    Started before any Dask worker so every worker process inherits the standard AWS variables
    (endpoint and dummy credentials), exactly as a deployed worker gets them.
    """
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                               "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.terminate()
        server.wait(10)


@pytest.fixture
def s3_bucket(s3_endpoint, request) -> str:
    """A fresh, empty bucket on the moto server; yields its name."""
    import re

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-bkt"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session", autouse=True)
def prefect_server(s3_endpoint):
    """One temporary Prefect API for the whole session; yields its URL for subprocesses.

    Flow runs in this process send no heartbeats, as the CLI's and ``segflow.segment_image``'s
    do not (flows/commands.py): Prefect's heartbeat thread sleeps in 1 s steps and each flow
    run waits for it to end, about a second per run of the suite's hundreds."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120), \
            temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def dask_address(s3_endpoint):
    """A real Dask LocalCluster (worker processes), shared by the flow tests."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                      dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="session")
def client(dask_address):
    """One Dask client on the session's LocalCluster, for tests that drive the cluster
    themselves (a model's fit, labelling, polygons, ``client.run``) rather than through a flow."""
    from distributed import Client

    with Client(dask_address, set_as_default=False) as c:
        yield c


@pytest.fixture(autouse=True)
def _process_state_restored():
    """In-process CLI calls (``segflow.flows.cli.main``) set environment defaults for their
    process (``PYTHONWARNINGS=ignore``, Prefect's console level ...) and route warnings to
    logging: undone after each test, so that later tests in this worker, and the subprocesses
    they start, see the session's environment and not a previous test's."""
    import logging

    saved = dict(os.environ)
    yield
    logging.captureWarnings(False)
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def cli(capsys):
    """segflow's CLI run in this process (``segflow.flows.cli.main``): ``cli(*args, env={})``
    returns (exit status, stdout, stderr). For what a command prints, returns and records, on
    the session's Prefect API; what only a fresh process shows (start-up time, signals, its
    whole stderr) is tested with ``python -m segflow.flows.cli`` subprocesses. The process
    defaults ``main`` sets (environment, warnings to logging) are undone after each call."""
    import logging

    from segflow.flows.cli import main

    def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        saved = dict(os.environ)
        os.environ.update(env or {})
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        finally:
            logging.captureWarnings(False)
            os.environ.clear()
            os.environ.update(saved)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def rgb_tif(tmp_path: Path) -> Path:
    """The real Landsat RGB scene (nodata 0 around a rotated footprint), copied per test."""
    dst = tmp_path / "rgb_byte.tif"
    shutil.copy(DATA / "rgb_byte.tif", dst)
    return dst


def write_geotiff(path: Path, data: np.ndarray, crs: str, transform, nodata=None,
                  blocksize: int = 256) -> Path:
    """Write a (bands, h, w) array as a tiled GeoTIFF."""
    bands, height, width = data.shape
    tiled = height >= blocksize and width >= blocksize
    profile = dict(driver="GTiff", width=width, height=height, count=bands, dtype=data.dtype,
                   crs=crs, transform=transform, nodata=nodata, compress="deflate")
    if tiled:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    with raster_env(str(path)), rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def smooth_noise(shape: tuple[int, int], seed: int, scale: int = 16) -> np.ndarray:
    """A smooth random field in [0, 1): texture with regions, so clustering is non-trivial."""
    from scipy.ndimage import zoom

    rng = np.random.default_rng(seed)
    coarse = rng.random((shape[0] // scale + 2, shape[1] // scale + 2))
    field = zoom(coarse, scale, order=3)[: shape[0], : shape[1]]
    return (field - field.min()) / (np.ptp(field) + 1e-9)


@pytest.fixture
def textured_tif(tmp_path: Path) -> Path:
    """A 3-band uint8 scene of 1500x1300 px in UTM, with a nodata corner."""
    bands = np.stack([smooth_noise((1500, 1300), seed) for seed in (1, 2, 3)])
    data = (bands * 250 + 1).astype(np.uint8)
    data[:, :300, :400] = 0
    return write_geotiff(tmp_path / "textured.tif", data, "EPSG:32633",
                         from_origin(500000, 7000000, 10, 10), nodata=0)


class DilatedNet(torch.nn.Module):
    """Stride-1 convolutions with dilations 1, 2, 4: receptive-field radius 1 + 2 + 4 = 7 px."""

    receptive_field = 7

    def __init__(self, bands: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(bands, 16, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, padding=2, dilation=2), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, padding=4, dilation=4), torch.nn.ReLU(),
            torch.nn.Conv2d(16, classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def export_onnx(net: torch.nn.Module, path: Path, bands: int, ndim: int = 2,
                fixed: int | None = None) -> Path:
    """``net`` exported by torch's TorchScript-based ONNX exporter (no onnxscript needed),
    with dynamic batch and sides unless ``fixed`` gives the side."""
    import warnings

    side = fixed or 32
    example = torch.zeros(1, bands, *(side,) * ndim)
    axes = {0: "n", **{2 + i: f"s{i}" for i in range(ndim)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notes
        torch.onnx.export(net, (example,), str(path), dynamo=False, input_names=["image"],
                          output_names=["logits"],
                          dynamic_axes=None if fixed else {"image": axes, "logits": axes})
    return path


def normalized(data: np.ndarray, valid: np.ndarray | None = None) -> str:
    """``model.normalize`` set to the per-band mean and std of ``data`` (bands, ...) over its
    ``valid`` cells. The seeded nets below give one class nearly everywhere on 0..1 input;
    standardised input is split into several, so masks compared in a test prove something."""
    cells = data[:, valid] if valid is not None else data.reshape(len(data), -1)
    cells = cells.astype(np.float64)
    return (f"model.normalize={{mean: {cells.mean(axis=1).tolist()}, "
            f"std: {cells.std(axis=1).tolist()}}}")


def scripted_model(tmp_path_factory, net_class: type[torch.nn.Module], name: str) -> Path:
    """A TorchScript file of ``net_class()`` with fixed random weights (seed 0)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / name
    torch.jit.script(net_class().eval()).save(str(path))
    return path


@pytest.fixture(scope="session")
def dilated_model(tmp_path_factory) -> Path:
    """A TorchScript file of DilatedNet with fixed random weights."""
    return scripted_model(tmp_path_factory, DilatedNet, "dilated.pt")


@pytest.fixture(scope="session")
def head_nii(tmp_path_factory) -> Path:
    """The real T1 volume upsampled 2x (1 mm voxels, 66x82x50) inside 16 voxels of air per side:
    a volume with several chunks, some of them outside the head. Affine adjusted to match.
    Made once per session: tests only read it."""
    import nibabel as nib
    from scipy.ndimage import zoom

    img = nib.load(DATA / "nibabel_anatomical.nii")
    data = zoom(np.asarray(img.dataobj).astype(np.float32), 2, order=1)
    data = np.pad(data, 16).astype(np.int16)
    affine = img.affine.copy()
    affine[:3, :3] /= 2
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, 16.0)
    path = tmp_path_factory.mktemp("head") / "head.nii"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


class DilatedNet3d(torch.nn.Module):
    """Stride-1 3-D convolutions with dilations 1 and 2: receptive-field radius 3 voxels."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv3d(8, 8, 3, padding=2, dilation=2), torch.nn.ReLU(),
            torch.nn.Conv3d(8, classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(scope="session")
def dilated_model_3d(tmp_path_factory) -> Path:
    return scripted_model(tmp_path_factory, DilatedNet3d, "dilated3d.pt")


def write_pyramid_tiff(path: Path, rgb: np.ndarray, mpp: float, levels: int = 3) -> Path:
    """Write an RGB (h, w, 3) uint8 image as a tiled pyramidal TIFF with its pixel size."""
    import tifffile

    per_cm = 1e4 / mpp
    with tifffile.TiffWriter(path) as tif:
        opts = dict(tile=(256, 256), compression="zlib", photometric="rgb")
        tif.write(rgb, subifds=levels - 1, resolution=(per_cm, per_cm), resolutionunit="CENTIMETER",
                  **opts)
        level = rgb
        for _ in range(levels - 1):
            level = level[::2, ::2]
            tif.write(level, subfiletype=1, **opts)
    return path


@pytest.fixture
def sparse_slide(tmp_path: Path) -> Path:
    """Real H&E tissue (the CMU-1 region's level 1, 1484x1110 at 0.998 µm/px) on a 3000x2500
    canvas of glass: 78 % background, a pyramidal tiled TIFF with its pixel size in the
    resolution tags."""
    import tifffile

    tissue = tifffile.imread(DATA / "cmu1_pyramid.tif", level=1)
    rng = np.random.default_rng(0)
    canvas = np.clip(rng.normal(236, 3, (3000, 2500, 3)), 0, 255).astype(np.uint8)
    canvas[750:750 + tissue.shape[0], 600:600 + tissue.shape[1]] = tissue
    return write_pyramid_tiff(tmp_path / "sparse.tif", canvas, mpp=0.998)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No NaN or infinity ever reached a catalog: every numeric column of every table that the
    suite's runs wrote (under this session's temporary folders) is scanned, once, at the end."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller scans all
        return
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or exitstatus not in (0, 1):
        return
    files = list(factory.getbasetemp().glob("**/catalog/*/*.parquet"))
    bad = []
    for path in files:
        table = pq.read_table(path)
        for name, column in zip(table.column_names, table.columns):
            if pa.types.is_floating(column.type) and \
                    pc.all(pc.is_finite(column)).as_py() is False:
                bad.append(f"{path}: {name}")
    print(f"\ncatalog scan: {len(files)} Parquet files written by this session, "
          f"{len(bad)} with non-finite values")
    if bad:
        print("\n".join(bad))
        session.exitstatus = 1

