"""Inference chunks go to workers that offer a ``GPU`` resource; other work runs anywhere.

A CPU host cannot show CUDA, but Dask resources are a scheduling constraint that works on any
host, so the routing itself is tested for real: one worker advertises ``GPU=1``, one does not.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from distributed import Client, LocalCluster, get_task_stream

from segflow.flows.segment import segment_image
from segflow.tasks.config import load_config


def _is_chunk(task: dict) -> bool:
    """An inference task: flows/segment.py keys them ``chunk-<image>-<index>``."""
    return isinstance(task["key"], str) and task["key"].startswith("chunk-")


@pytest.fixture(scope="module")
def mixed_cluster():
    """A scheduler with one plain worker process and one started by hand with ``GPU=1``,
    shared by this module's tests (each watches its own task stream)."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as client:
        gpu_worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
             "--resources", "GPU=1", "--nthreads", "1", "--no-dashboard", "--name", "gpu"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client.wait_for_workers(2, timeout=60)
            yield cluster.scheduler_address, client
        finally:
            gpu_worker.terminate()
            gpu_worker.wait(30)


def test_torch_chunks_land_on_gpu_workers_only(mixed_cluster, rgb_tif, dilated_model, tmp_path):
    address, client = mixed_cluster
    gpu = next(a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()
               if w.get("resources", {}).get("GPU"))
    cfg = load_config(overrides=["model.kind=torchscript", f"model.weights={dilated_model}",
                                 "tiling.chunk=256", "tiling.halo=8", "tiling.tile=128"])
    with get_task_stream(client) as stream:
        result = segment_image(str(rgb_tif), str(tmp_path / "out"),
                               cfg.model_dump(mode="json"), address)
        time.sleep(0.5)  # the stream is filled by the scheduler a beat after tasks end
    chunk_workers = {t["worker"] for t in stream.data if _is_chunk(t)}
    assert result["status"] == "succeeded" and result["chunks_total"] == 12
    assert chunk_workers == {gpu}
    other = {t["worker"] for t in stream.data if not _is_chunk(t)}
    assert len(other) == 2  # reading, statistics and pyramids use every worker


def test_classical_chunks_use_every_worker(mixed_cluster, rgb_tif, tmp_path):
    address, client = mixed_cluster
    cfg = load_config(overrides=["model.kind=otsu", "tiling.chunk=128", "tiling.halo=0"])
    with get_task_stream(client) as stream:
        segment_image(str(rgb_tif), str(tmp_path / "out"), cfg.model_dump(mode="json"), address)
        time.sleep(0.5)
    assert len({t["worker"] for t in stream.data if _is_chunk(t)}) == 2
