"""``tiling.tile: auto`` and ``tiling.batch: auto``: the largest tile the device's memory allows.

Each tile is read with a halo on every side that is computed and thrown away, so a tile of side
t costs ((t + 2h) / t)^ndim of its pixels; small tiles waste most of their compute on context
(1.96x at t = 256 for the demo U-Net's 56 px halo). The auto tile is the chunk's whole core when
it fits the memory budget (no recompute beyond the chunk's own halo), else the largest tile
that does.

Bytes per cell come from one probe forward per model and device in each worker process:

- CUDA: the peak of torch's device allocator over the probe (exact for that model);
- CPU: the sum of every tensor the probe's operators return, seen through a
  ``TorchDispatchMode`` (works for TorchScript too). CPU torch has no allocator statistics; the
  sum frees nothing, so it is an upper bound on the live activations, i.e. the safe side.

Budgets: CPU, half of the lesser of the worker's memory limit and the host's available memory,
shared by the worker's threads; CUDA, 60 % of the device's free memory, shared by the threads
that use it. Nothing here is exact to the byte; it only has to keep a worker inside its memory.
"""

from __future__ import annotations

import math
import threading

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

#: probe side per spatial rank: big enough that per-cell costs dominate fixed ones
PROBE_SIDE = {2: 128, 3: 32}
CPU_SHARE = 0.5
CUDA_SHARE = 0.6

_BYTES: dict[tuple[str, str], float] = {}
_LOCK = threading.Lock()


class _OutputBytes(TorchDispatchMode):
    """Adds up the bytes of every tensor an operator returns while active."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.total += sum(t.nelement() * t.element_size() for t in tree_leaves(out)
                          if isinstance(t, torch.Tensor))
        return out


def _probe_bytes(module: nn.Module, bands: int, ndim: int, stride: int,
                 device: torch.device) -> float:
    side = max(stride, math.ceil(PROBE_SIDE[ndim] / stride) * stride)
    probe = torch.zeros(1, bands, *(side,) * ndim, device=device)
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            module(probe)
            used = torch.cuda.max_memory_allocated(device) - base
        else:
            with _OutputBytes() as counter:
                module(probe)
            used = counter.total
    return max(used, 1) / side ** ndim + 4 * bands  # plus the float input itself


def bytes_per_cell(key: str, module: nn.Module, bands: int, ndim: int, stride: int,
                   device: torch.device) -> float:
    """Memory one input cell costs in a forward pass of ``module``, probed once per process."""
    with _LOCK:
        if (key, str(device)) not in _BYTES:
            _BYTES[key, str(device)] = _probe_bytes(module, bands, ndim, stride, device)
        return _BYTES[key, str(device)]


def worker_threads_and_limit() -> tuple[int, float | None]:
    """This Dask worker's threads and memory limit (1 and None outside a worker)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return 1, None
    return worker.state.nthreads, worker.memory_manager.memory_limit


def memory_budget(device: torch.device) -> float:
    """Bytes one worker thread may spend on a forward pass on ``device``."""
    threads, limit = worker_threads_and_limit()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return CUDA_SHARE * free / threads
    import psutil

    available = psutil.virtual_memory().available
    return CPU_SHARE * min(limit or available, available) / threads


def auto_sizes(core: tuple[int, ...], halo: int, stride: int, cell_bytes: float, budget: float,
               tile: int | None, batch: int | None) -> tuple[int, int]:
    """Tile side and batch for a chunk ``core``: given values are kept, ``None`` is chosen.

    The tile is the largest multiple of the stride whose read window (tile + 2 halo) fits the
    budget, capped at the core's longest side (one tile per chunk); the batch is as many such
    windows as fit, at most the tiles the core holds.
    """
    ndim = len(core)
    if tile is None:
        cells = budget / cell_bytes
        side = int(cells ** (1 / ndim)) - 2 * halo
        widest = math.ceil(max(core) / stride) * stride
        tile = min(widest, max(stride, side // stride * stride))
    if batch is None:
        window = math.prod(min(tile, n) + 2 * halo for n in core)
        tiles = math.prod(math.ceil(n / tile) for n in core)
        batch = max(1, min(tiles, int(budget // (window * cell_bytes))))
    return tile, batch
