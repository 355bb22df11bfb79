"""segflow on a real multi-process Dask cluster: a ``dask scheduler`` and ``dask worker`` OS
processes on 127.0.0.1, reached through ``--scheduler``, give the mask of a local run, also when
a worker dies mid-run; clusters made from a spec (dask-jobqueue) render real job scripts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from distributed import Client, get_task_stream
from rasterio.transform import from_origin

from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config
from segflow.tasks.errors import SegflowError
from segflow.tasks.runtime.cluster import spec_cluster
from segflow.tasks.sources.identity import image_id
from tests.conftest import normalized, smooth_noise, write_geotiff

ROOT = Path(__file__).parents[1]
WAIT = 60  # seconds: generous bounds for process start-up on a loaded CI machine


def _is_chunk(task: dict) -> bool:
    """An inference task: flows/segment.py keys them ``chunk-<image>-<index>``."""
    return isinstance(task["key"], str) and task["key"].startswith("chunk-")


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, str]:
    """A 3-band 768² uint8 scene (36 chunks of 128²) with a nodata corner, and the
    ``model.normalize`` key standardising it."""
    bands = np.stack([smooth_noise((768, 768), seed) for seed in (4, 5, 6)])
    data = (bands * 250 + 1).astype(np.uint8)
    data[:, :150, :150] = 0
    path = write_geotiff(tmp_path_factory.mktemp("scene") / "scene.tif", data, "EPSG:32633",
                         from_origin(500000, 7000000, 10, 10), nodata=0)
    return path, normalized(data, data[0] > 0)


@pytest.fixture(scope="module")
def job(dilated_model, scene) -> dict[str, Any]:
    """The TorchScript net with a halo covering its receptive field (7 px): seams are exact."""
    cfg = load_config(overrides=["model.kind=torchscript", f"model.weights={dilated_model}",
                                 "model.params.receptive_field=7", "tiling.chunk=128",
                                 "tiling.halo=8", "tiling.tile=144", "output.pyramid=false",
                                 scene[1]])
    return cfg.model_dump(mode="json")


def _mask(result: dict[str, Any]) -> np.ndarray:
    return zarr.open_array(result["output_uri"], path="0", mode="r")[:]


@pytest.fixture(scope="module")
def local_mask(scene, job, dask_address, tmp_path_factory) -> np.ndarray:
    """The reference: the same job on the session's in-process-started LocalCluster."""
    result = segment_image(str(scene[0]), str(tmp_path_factory.mktemp("local")), job,
                           dask_address)
    mask = _mask(result)
    assert len(np.unique(mask[mask != 255])) >= 2  # a mask of one class would prove nothing
    return mask


def _spawn(args: list[str]) -> subprocess.Popen:
    """A ``dask`` CLI process in its own process group (killing the group = losing a node), with
    segflow's worker config (infra/dask: the nanny's malloc environment).

    An in-process nanny (the session's LocalCluster) writes its pre-spawn variables into this
    process's environment, and a nanny lets inherited variables win over its config: drop them,
    as a fresh shell on a worker node would not have them.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["DASK_CONFIG"] = str(ROOT / "infra" / "dask")
    return subprocess.Popen([sys.executable, "-m", *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@dataclass
class DaskProcesses:
    """A ``dask scheduler`` and its ``dask worker`` processes, with a client to watch them."""

    address: str
    client: Client
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)  # address -> process


@pytest.fixture(scope="module")
def dask_processes(tmp_path_factory) -> Iterator[DaskProcesses]:
    """``dask scheduler`` + two ``dask worker --nworkers 1 --nthreads 1``, separate processes,
    started once for this module: the test that kills a worker comes last."""
    file = tmp_path_factory.mktemp("dask") / "scheduler.json"
    scheduler = _spawn(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                        "--scheduler-file", str(file), "--no-dashboard"])
    procs = [scheduler]
    try:
        deadline = time.monotonic() + WAIT
        while not file.exists() and time.monotonic() < deadline and scheduler.poll() is None:
            time.sleep(0.1)
        address = json.loads(file.read_text())["address"]
        for name in ("w1", "w2"):
            procs.append(_spawn(["distributed.cli.dask_worker", address, "--nworkers", "1",
                                 "--nthreads", "1", "--no-dashboard", "--name", name]))
        with Client(address, set_as_default=False, timeout=WAIT) as client:
            client.wait_for_workers(2, timeout=WAIT)
            info = client.scheduler_info(n_workers=-1)["workers"]
            by_name = {w["name"]: a for a, w in info.items()}
            yield DaskProcesses(address, client, {by_name["w1"]: procs[1],
                                                  by_name["w2"]: procs[2]})
    finally:
        for proc in reversed(procs):
            _stop(proc)


def test_scheduler_and_worker_processes_give_the_local_mask(dask_processes, scene, job,
                                                            local_mask, tmp_path):
    client = dask_processes.client
    malloc = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert set(malloc.values()) == {"100000000000"}  # infra/dask reached the hand-started workers
    with get_task_stream(client) as stream:
        result = segment_image(str(scene[0]), str(tmp_path / "out"), job,
                               dask_processes.address)
        time.sleep(0.5)  # the stream is filled by the scheduler a beat after tasks end
    assert result["status"] == "succeeded" and result["chunks_total"] == 36
    chunk_workers = {t["worker"] for t in stream.data if _is_chunk(t)}
    assert chunk_workers == set(dask_processes.workers)  # both processes inferred chunks
    np.testing.assert_array_equal(_mask(result), local_mask)


class _Killer(threading.Thread):
    """Kills one worker's process group (nanny and worker: a lost node) once the run has written
    some chunks but not most, while that worker holds chunk tasks."""

    def __init__(self, cluster: DaskProcesses, victim: str, store: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.victim, self.store = cluster, victim, store
        self.done_at_kill: int | None = None
        self.total = 0

    def _written(self) -> np.ndarray | None:
        try:
            return zarr.open_array(store=self.store, path="progress", mode="r")[:]
        except (FileNotFoundError, KeyError, ValueError):  # not created yet
            return None

    def run(self) -> None:
        deadline = time.monotonic() + 2 * WAIT
        while time.monotonic() < deadline:
            progress = self._written()
            if progress is not None:
                done = int((progress > 0).sum())
                busy = self.cluster.client.processing(workers=[self.victim])[self.victim]
                if 2 <= done <= progress.size // 2 and any("chunk-" in k for k in busy):
                    os.killpg(self.cluster.workers[self.victim].pid, signal.SIGKILL)
                    self.done_at_kill, self.total = done, progress.size
                    return
            time.sleep(0.02)


def test_a_worker_lost_mid_run_does_not_change_the_mask(dask_processes, scene, job,
                                                        local_mask, tmp_path):
    victim = sorted(dask_processes.workers)[0]
    out = tmp_path / "out"
    killer = _Killer(dask_processes, victim,
                     str(out / "masks" / f"{image_id(str(scene[0]))}.zarr"))
    killer.start()
    result = segment_image(str(scene[0]), str(out), job, dask_processes.address)
    killer.join(5)
    assert killer.done_at_kill is not None, "the run ended before a worker could be killed"
    assert killer.done_at_kill < killer.total
    assert dask_processes.workers[victim].wait(WAIT) == -signal.SIGKILL
    assert victim not in dask_processes.client.scheduler_info(n_workers=-1)["workers"]
    assert result["status"] == "succeeded"
    assert result["chunks_computed"] + result["chunks_nodata"] == 36  # each chunk once
    np.testing.assert_array_equal(_mask(result), local_mask)


def test_slurm_spec_renders_a_real_sbatch_script(tmp_path):
    spec = tmp_path / "slurm.yaml"
    spec.write_text("cores: 8\nmemory: 32GB\nprocesses: 1\nqueue: gpu\nwalltime: '02:00:00'\n"
                    "job_extra_directives: ['--gres=gpu:1']\n"
                    "worker_extra_args: ['--resources', 'GPU=1']\n"
                    "job_script_prologue: ['export DASK_CONFIG=infra/dask']\n")
    cfg = load_config(overrides=["cluster.kind=slurm", f"cluster.spec={spec}"]).cluster
    with spec_cluster(cfg) as cluster:
        script = cluster.job_script()
        address = cluster.scheduler_address
    assert "#SBATCH -p gpu" in script and "#SBATCH --gres=gpu:1" in script
    assert "#SBATCH --cpus-per-task=8" in script and "#SBATCH -t 02:00:00" in script
    assert "export DASK_CONFIG=infra/dask" in script
    worker = next(line for line in script.splitlines() if "distributed.cli.dask_worker" in line)
    assert address in worker and "--resources GPU=1" in worker and "--nthreads 8" in worker


def test_a_bad_spec_is_a_one_line_error(tmp_path):
    spec = tmp_path / "slurm.yaml"
    spec.write_text("cores: 8\nmemory: 32GB\nqueues: gpu\n")  # a typo: queue
    cfg = load_config(overrides=["cluster.kind=pbs", f"cluster.spec={spec}"]).cluster
    with pytest.raises(SegflowError) as info:
        spec_cluster(cfg)
    assert "queues" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(find_spec("dask_kubernetes") is not None,
                    reason="dask-kubernetes is installed here")
def test_a_missing_extra_names_it():
    cfg = load_config(overrides=["cluster.kind=kubernetes"]).cluster
    with pytest.raises(SegflowError, match=r"pip install 'segflow\[kubernetes\]'"):
        spec_cluster(cfg)


def test_spec_settings_need_a_spec_kind():
    with pytest.raises(SegflowError, match="cluster: .*spec, scale and adapt_max need kind"):
        load_config(overrides=["cluster.scale=4"])


def test_the_shipped_slurm_spec_renders_one_gpu_worker_per_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its log_directory is relative: keep it out of the checkout
    spec = ROOT / "infra" / "hpc" / "slurm-cluster.yaml"
    cfg = load_config(overrides=["cluster.kind=slurm", f"cluster.spec={spec}"]).cluster
    with spec_cluster(cfg) as cluster:
        script = cluster.job_script()
    assert "#SBATCH --gres=gpu:1" in script and "export DASK_CONFIG=" in script
    worker = next(line for line in script.splitlines() if "distributed.cli.dask_worker" in line)
    assert "--resources GPU=1" in worker and "--nworkers" not in worker  # one process per job
