"""Where the chunk work runs: an existing Dask scheduler, a LocalCluster sized to the machine
(dask-cuda's LocalCUDACluster on a GPU host), or a cluster made from a spec by dask-jobqueue
(SLURM, PBS) or the Dask Kubernetes operator. Those three libraries are optional extras,
imported only when a config asks for them."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from importlib import import_module
from importlib.util import find_spec
from typing import Any, TypeVar

import dask
from dask.typing import Key
from distributed import Client, Future, LocalCluster, as_completed
from distributed.deploy import Cluster

from segflow.tasks.config import ClusterConfig, read_yaml
from segflow.tasks.errors import UserError, first_line

T = TypeVar("T")

# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which switches off glibc's
# dynamic mmap threshold: every torch activation above 128 KiB is then mmap'd and page-faulted
# again on every layer, halving CPU inference speed (BENCHMARKS.md §2). Keep freed heap instead,
# and no mmap at all (above 32 MiB glibc would mmap regardless of the threshold, and the auto
# tile's activations are bigger), in one arena (a thread's own arena is an mmap'd heap of at
# most 64 MiB, so big blocks would be mmap'd anyway: 7.2 s vs 3.8 s per 1056² forward with two
# threads); glibc reads these at process start, so they must be the nanny's pre-spawn
# environment.
# For workers started by hand: DASK_CONFIG=infra/dask (infra/dask/segflow-workers.yaml).
WORKER_MALLOC = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": "100000000000",
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": "33554432",
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_MAX_": "0",
    "distributed.nanny.pre-spawn-environ.MALLOC_ARENA_MAX": "1",
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


#: cluster.kind -> (module, class, the segflow extra that installs it)
SPEC_CLUSTERS = {
    "slurm": ("dask_jobqueue", "SLURMCluster", "hpc"),
    "pbs": ("dask_jobqueue", "PBSCluster", "hpc"),
    "kubernetes": ("dask_kubernetes.operator", "KubeCluster", "kubernetes"),
}


def broadcast(client: Client, value: Any) -> Any:
    """``value`` sent to every worker once (a future tasks take instead of a copy each), under
    a key of its own: content-hashed keys are shared by clients that scatter equal values (two
    images with equal row areas), and one client's release then loses the other's data."""
    if value is None:
        return None
    [future] = client.scatter([value], broadcast=True, hash=False)
    return future


def windowed(client: Client, submit: Callable[[T], Future], items: Iterable[T],
             window: int) -> Generator[tuple[T, Any], None, None]:
    """(item, result) of ``submit(item)`` for every item, in completion order, with at most
    ``window`` tasks in flight: the client and the scheduler hold a window, never a whole
    image's tasks or results. A failed task, or the caller leaving the loop (close the
    generator, e.g. with ``contextlib.closing``), cancels the tasks still in flight."""
    todo = iter(items)
    item_of: dict[Key, T] = {}

    def add(item: T) -> Future:
        future = submit(item)
        item_of[future.key] = item
        return future

    running = as_completed([add(item) for item in itertools.islice(todo, window)],
                           loop=client.loop)
    try:
        for future in running:
            result = future.result()
            item = item_of.pop(future.key)
            following = next(todo, None)
            if following is not None:
                running.add(add(following))
            yield item, result
    finally:
        client.cancel(list(running.futures))


def _optional(module: str, extra: str) -> Any:
    try:
        return import_module(module)
    except ImportError as exc:
        raise UserError("cluster", f"{module} is not installed: pip install "
                                      f"'segflow[{extra}]' ({first_line(exc)})") from exc


def _read_spec(path: str | None) -> dict[str, Any]:
    return read_yaml(path, "cluster spec") if path else {}


def spec_cluster(cfg: ClusterConfig) -> Cluster:
    """The cluster ``cfg.spec`` describes, with no workers asked for yet.

    slurm/pbs: the spec's keys are the keyword arguments of dask_jobqueue.SLURMCluster /
    PBSCluster (cores, memory, queue, walltime, job_extra_directives, worker_extra_args, ...);
    kubernetes: the spec is a DaskCluster resource, created through the Dask operator.
    """
    module, name, extra = SPEC_CLUSTERS[cfg.kind]
    make = getattr(_optional(module, extra), name)
    spec = _read_spec(cfg.spec)
    try:
        if cfg.kind == "kubernetes":
            return make(custom_cluster_spec=spec) if spec else make()
        return make(**{"scheduler_options": {"dashboard_address": ":0"}, **spec})
    except (TypeError, ValueError) as exc:
        raise UserError(cfg.spec or "cluster", f"{name}: {first_line(exc)}") from exc


def cuda_cluster(cfg: ClusterConfig) -> Cluster:
    """One worker per GPU, pinned to its device by dask-cuda, each offering ``GPU=1``.

    ``cfg.cuda`` passes dask-cuda's own options: ``device_memory_limit`` (spill device to host
    memory above it), ``memory_limit`` (spill host memory to disk), ``rmm_pool_size``. Only GPU
    hosts with the ``gpu`` extra get here; the CPU-only CI host never runs this branch.
    """
    from dask_cuda import LocalCUDACluster

    return LocalCUDACluster(threads_per_worker=cfg.threads_per_worker or 1,
                            resources={"GPU": 1}, dashboard_address=":0",
                            silence_logs=logging.CRITICAL, **cfg.cuda)


def local_cluster(cfg: ClusterConfig) -> Cluster:
    """LocalCUDACluster on a GPU host that has dask-cuda, else a LocalCluster of processes.

    Without dask-cuda a GPU host gets one worker per GPU, each offering one ``GPU`` resource;
    worker ``i`` runs its models on GPU ``i mod n`` (torch_model.pick_device).
    """
    gpus = cuda_devices() if cfg.gpu != "off" else 0
    if gpus and find_spec("dask_cuda"):
        return cuda_cluster(cfg)
    workers, threads = local_size(cfg)
    if gpus and cfg.n_workers is None:  # one worker per GPU: worker i uses GPU i mod n; two
        workers, threads = gpus, cfg.threads_per_worker or 2  # lanes, each reading ahead
    gpu = {"resources": {"GPU": 1}} if gpus else {}
    return LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                        dashboard_address=":0", silence_logs=logging.CRITICAL, **gpu)


def _request_workers(cluster: Cluster, cfg: ClusterConfig) -> None:
    """Ask for the configured jobs/workers and wait until one has joined (an HPC queue may take
    a while: the run waits for it, as a job submitted by hand would)."""
    if cfg.adapt_max:
        cluster.adapt(minimum=cfg.scale or 0, maximum=cfg.adapt_max)
    elif cfg.scale is not None or cfg.kind != "kubernetes":
        cluster.scale(cfg.scale if cfg.scale is not None else 1)
    with Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(1)


_CLIENTS: dict[str, Client] = {}
_CLIENTS_LOCK = threading.Lock()


def client_for(address: str) -> Client:
    """This process's one Client of the scheduler at ``address``, made on first use.

    A Client costs a connection and a handshake (~0.1-0.3 s); a run's stages and a batch's
    concurrent images share one (Clients are thread-safe) instead of making one per stage.
    Futures stay each caller's own: nothing is shared but the connection."""
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(address)
        if client is None or client.status not in ("running", "connecting", "newly-created"):
            client = _CLIENTS[address] = Client(address, set_as_default=False)
        return client


def _forget_client(address: str) -> None:
    """Close the shared Client of a scheduler that is going away."""
    with _CLIENTS_LOCK:
        client = _CLIENTS.pop(address, None)
    if client is not None:
        client.close()


@contextmanager
def dask_cluster(cfg: ClusterConfig, address: str | None = None) -> Iterator[str]:
    """Yield a scheduler address: ``address``/``cfg.address`` as given, else that of a cluster of
    ``cfg.kind`` started for this run and closed after it."""
    given = address or cfg.address
    if given:
        yield given
        return
    if cfg.kind != "local":
        with spec_cluster(cfg) as cluster:
            _request_workers(cluster, cfg)
            try:
                yield cluster.scheduler_address
            finally:
                _forget_client(cluster.scheduler_address)
        return
    with dask.config.set(WORKER_MALLOC), local_cluster(cfg) as cluster:
        try:
            yield cluster.scheduler_address
        finally:
            _forget_client(cluster.scheduler_address)
