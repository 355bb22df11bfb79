"""Where the chunk work runs: an existing Dask scheduler, or a LocalCluster sized to the machine."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import dask
from distributed import Client, LocalCluster

from tasks.config import ClusterConfig

# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which switches off glibc's
# dynamic mmap threshold: every torch activation above 128 KiB is then mmap'd and page-faulted
# again on every layer, halving CPU inference speed (BENCHMARKS.md §2). Keep freed heap instead;
# glibc reads these at process start, so they must be the nanny's pre-spawn environment.
# For workers started by hand: DASK_CONFIG=infra/dask (infra/dask/segflow-workers.yaml).
WORKER_MALLOC = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": "100000000000",
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": "33554432",
}


def local_size(cfg: ClusterConfig) -> tuple[int, int]:
    """Workers and threads per worker: one process per 4 cores, threads filling the rest.

    Fewer, fatter workers share one copy of a model and one set of torch threads per process.
    """
    cores = os.cpu_count() or 1
    workers = cfg.n_workers or max(1, cores // 4)
    threads = cfg.threads_per_worker or max(1, cores // workers)
    return workers, threads


def cuda_devices() -> int:
    """GPUs this host shows, asked of nvidia-smi: importing torch on the client costs seconds."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "" or not shutil.which("nvidia-smi"):
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.splitlines())


def inference_resources(client: Client, accelerated: bool) -> dict[str, float] | None:
    """``{"GPU": 1}`` when a model can use a GPU and some worker offers one, so its chunks run
    only there (passed to ``client.map``; graph annotations can be optimised away)."""
    if not accelerated:
        return None
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return {"GPU": 1} if any(w.get("resources", {}).get("GPU") for w in workers) else None


@contextmanager
def dask_cluster(cfg: ClusterConfig, address: str | None = None) -> Iterator[str]:
    """Yield a scheduler address: ``address``/``cfg.address`` as given, else a LocalCluster's.

    On a GPU host every local worker offers one ``GPU`` resource (they share device 0; a host
    with several GPUs is better served by dask-cuda's one-worker-per-GPU cluster, see README).
    """
    given = address or cfg.address
    if given:
        yield given
        return
    workers, threads = local_size(cfg)
    gpu = {"resources": {"GPU": 1}} if cfg.gpu != "off" and cuda_devices() else {}
    with dask.config.set(WORKER_MALLOC), \
            LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                         dashboard_address=":0", silence_logs=logging.CRITICAL, **gpu) as cluster:
        yield cluster.scheduler_address
