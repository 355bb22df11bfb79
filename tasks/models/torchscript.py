"""A user's TorchScript segmentation model: float32 NCHW (NCDHW for volumes) in, logits out,
argmax class ids.

The scripted module is loaded once per worker process (cached by path and device) and never
pickled with the task; only the path travels. Tiles are batched and run on CUDA when present.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.config import JobConfig, Normalize, class_table
from tasks.errors import SegflowError, first_line
from tasks.models.base import InputSpec, SegmentationModel
from tasks.stitch import predict_tiled

_CACHE: dict[tuple[str, str], torch.jit.ScriptModule] = {}
_LOCK = threading.Lock()


def pick_device(gpu: str) -> str:
    return "cuda" if gpu != "off" and torch.cuda.is_available() else "cpu"


def _worker_threads() -> int:
    """Torch threads per Dask thread, so a worker's threads do not oversubscribe the cores."""
    try:
        from distributed import get_worker

        dask_threads = get_worker().state.nthreads
    except (ImportError, ValueError):
        dask_threads = 1
    return max(1, (os.cpu_count() or 1) // dask_threads)


def load_module(path: str, device: str) -> torch.jit.ScriptModule:
    """The scripted module for ``path`` on ``device``, loaded once per process."""
    key = (path, device)
    with _LOCK:
        if key not in _CACHE:
            if device == "cpu":
                torch.set_num_threads(_worker_threads())
            module = torch.jit.load(path, map_location=device)
            _CACHE[key] = module.eval()
        return _CACHE[key]


def file_digest(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:12]


class TorchScriptModel(SegmentationModel):
    """Runs a TorchScript file tile by tile; ``params.receptive_field``/``stride`` describe it."""

    kind = "torchscript"

    def __init__(self, classes: Any, params: dict[str, Any], weights: str, digest: str,
                 scale: float | None, normalize: Normalize | None, tile: int, halo: int,
                 batch: int, gpu: str) -> None:
        super().__init__(classes, params)
        self.weights = weights
        self.digest = digest
        self.scale = scale
        self.normalize = normalize
        self.tile, self.halo, self.batch, self.gpu = tile, halo, batch, gpu
        self.receptive_field = int(params.get("receptive_field", 0))
        self.stride = int(params.get("stride", 1))

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> TorchScriptModel:
        bands, dtype = spec.bands, spec.dtype
        weights = cfg.model.weights
        if not weights:
            raise SegflowError(source, "model.kind=torchscript needs model.weights (a .pt file)")
        path = str(Path(weights).expanduser().resolve())
        if not Path(path).is_file():
            raise SegflowError(weights, "model weights file not found")
        try:
            module = torch.jit.load(path, map_location="cpu").eval()
        except Exception as exc:  # torch raises RuntimeError/ValueError/zip errors alike
            raise SegflowError(weights, f"not a TorchScript model: {first_line(exc)}") from exc
        norm = cfg.model.normalize
        if norm is not None and not len(norm.mean) == len(norm.std) == bands:
            raise SegflowError(source, f"model.normalize needs {bands} means and stds")
        probe = torch.zeros(1, bands, *(32,) * spec.ndim)
        try:
            with torch.inference_mode():
                n_classes = int(module(probe).shape[1])
        except Exception as exc:
            raise SegflowError(weights,
                               f"model rejects {bands}-band input: {first_line(exc)}") from exc
        classes = class_table(cfg.model, [f"class_{i}" for i in range(n_classes)])
        if len(classes) != n_classes:
            raise SegflowError(weights, f"model outputs {n_classes} classes, "
                                        f"config names {len(classes)}")
        # Integers are scaled by their dtype's maximum unless ``normalize`` is given.
        integer = np.dtype(dtype).kind in "iu"
        scale = float(np.iinfo(dtype).max) if integer and norm is None else None
        t = cfg.tiling
        return cls(classes, dict(cfg.model.params), path, file_digest(path), scale, norm,
                   t.tile, t.halo, t.batch, cfg.cluster.gpu)

    def _prepare(self, pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
        x = pixels.astype(np.float32)
        if self.normalize is not None:
            per_band = (-1,) + (1,) * (x.ndim - 1)
            mean = np.asarray(self.normalize.mean, np.float32).reshape(per_band)
            std = np.asarray(self.normalize.std, np.float32).reshape(per_band)
            x = (x - mean) / std
        elif self.scale:
            x /= self.scale
        x[:, ~valid] = 0.0
        return x

    def predict(self, pixels: np.ndarray, valid: np.ndarray,
                core: tuple[slice, ...]) -> np.ndarray:
        device = pick_device(self.gpu)
        module = load_module(self.weights, device)

        def forward(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                logits = module(torch.from_numpy(batch).to(device))
                return logits.argmax(dim=1).to(torch.uint8).cpu().numpy()

        x = self._prepare(pixels, valid)
        return predict_tiled(forward, x, core, self.tile, self.halo, self.batch)

    def identity(self) -> str:
        return f"torchscript({Path(self.weights).name}@{self.digest})"
