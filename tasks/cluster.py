"""Where the chunk work runs: an existing Dask scheduler, or a LocalCluster sized to the machine."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from distributed import LocalCluster

from tasks.config import ClusterConfig


def local_size(cfg: ClusterConfig) -> tuple[int, int]:
    """Workers and threads per worker: one process per 4 cores, threads filling the rest.

    Fewer, fatter workers share one copy of a model and one set of torch threads per process.
    """
    cores = os.cpu_count() or 1
    workers = cfg.n_workers or max(1, cores // 4)
    threads = cfg.threads_per_worker or max(1, cores // workers)
    return workers, threads


@contextmanager
def dask_cluster(cfg: ClusterConfig, address: str | None = None) -> Iterator[str]:
    """Yield a scheduler address: ``address``/``cfg.address`` as given, else a LocalCluster's."""
    given = address or cfg.address
    if given:
        yield given
        return
    workers, threads = local_size(cfg)
    with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                      dashboard_address=None, silence_logs=logging.CRITICAL) as cluster:
        yield cluster.scheduler_address
