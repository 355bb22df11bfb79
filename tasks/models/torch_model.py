"""What every torch-backed method shares: device, per-worker module cache, input preparation,
tiled inference, mixed precision, the class-table check and safe weight loading.

A subclass only says how to build its module (``build``) and, when it knows them, its receptive
field and stride (``geometry``). The model object that travels to Dask workers holds the weights
path and the build arguments, never the module: each worker process builds it once per device.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import threading
import warnings
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from segflow.tasks.config import ClassSpec, JobConfig, class_table
from segflow.tasks.errors import UserError, first_line
from segflow.tasks.models.augment import augmented, views
from segflow.tasks.models.base import InputSpec, SegmentationModel, label_dtype
from segflow.tasks.models.card import ModelCard, check_bands, read_card
from segflow.tasks.models.intensity import Intensity
from segflow.tasks.models.params import ModelParams
from segflow.tasks.models.sizing import (
    auto_sizes,
    bytes_per_cell,
    memory_budget,
    worker_threads_and_limit,
)
from segflow.tasks.models.tiling import blended_scores, predict_blended, predict_tiled

if TYPE_CHECKING:
    from distributed import Client

    from segflow.tasks.sources.base import SourceBase

_CACHE: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()
#: normalisations computed over the whole input: a tile's output then depends on the whole tile
GLOBAL_NORMS = {"InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "GroupNorm", "LayerNorm"}


class TilingWarning(UserWarning):
    """Tiled output cannot equal a whole-image pass, whatever the halo."""


_TORCH_DTYPES = {np.dtype(t) for t in ("uint8", "int8", "int16", "int32", "int64", "float16",
                                         "float32", "float64", "bool")}
_PINNED = threading.local()


def pick_device(gpu: str) -> str:
    """``cuda:i`` on a GPU host (worker ``i`` of a LocalCluster on GPU ``i mod n``, so one
    worker per GPU spreads over them; dask-cuda pins each worker to one visible device)."""
    if gpu == "off" or not torch.cuda.is_available():
        return "cpu"
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        name = 0
    index = name if isinstance(name, int) else 0
    return f"cuda:{index % torch.cuda.device_count()}"


def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the GPU has it (no overflow, no loss scaling), else float16."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` on ``device``; to CUDA through this thread's reused pinned buffer, copied
    asynchronously (the stream orders the copy before the kernels that read it)."""
    host = torch.from_numpy(array)
    if device.type != "cuda":
        return host
    buffer = getattr(_PINNED, "buffer", None)
    if buffer is None or buffer.numel() < host.nbytes:
        buffer = torch.empty(host.nbytes, dtype=torch.uint8, pin_memory=True)
        _PINNED.buffer = buffer
    torch.cuda.current_stream(device).synchronize()  # the last copy out of it has finished
    staged = buffer[:host.nbytes].view(host.dtype).view(host.shape)
    staged.copy_(host)
    return staged.to(device, non_blocking=True)


def worker_torch_threads() -> int:
    """Torch threads per Dask thread, so a worker's threads do not oversubscribe the cores."""
    return max(1, (os.cpu_count() or 1) // worker_threads_and_limit()[0])


def file_digest(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:12]


def weights_file(cfg: JobConfig, source: str) -> str:
    """``model.weights`` as an absolute path to an existing file, or a one-line error."""
    weights = cfg.model.weights
    if not weights:
        raise UserError(source, f"model.kind={cfg.model.kind} needs model.weights (a .pt file)")
    path = Path(weights).expanduser().resolve()
    if not path.is_file():
        raise UserError(weights, "model weights file not found")
    return str(path)


def weights_folder(cfg: JobConfig, source: str, what: str, required: tuple[str, ...]) -> str:
    """``model.weights`` as an absolute path to a folder holding ``required`` (``what`` it is,
    for the one-line errors): the model forms that are folders."""
    kind = cfg.model.kind
    if not cfg.model.weights:
        raise UserError(source, f"model.kind={kind} needs model.weights: {what}")
    folder = Path(cfg.model.weights).expanduser().resolve()
    if not folder.is_dir():
        raise UserError(str(folder), f"not a folder: model.kind={kind} reads {what}")
    for name in required:
        if not (folder / name).exists():
            raise UserError(str(folder), f"holds no {name}: not {what}")
    return str(folder)


def files_digest(files: list[Path]) -> str:
    """One short hash of several weight and config files (a folder form's version)."""
    joined = "".join(file_digest(str(f)) for f in files if f.is_file())
    return hashlib.sha256(joined.encode()).hexdigest()[:12]


def load_state_dict(path: str, nested: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors saved with ``torch.save(module.state_dict(), path)``; never unpickles objects.
    ``nested``: the key under which a checkpoint may hold the state_dict instead
    (``{"model": state_dict}``, as MONAI's CheckpointSaver writes)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on TorchScript zips / pickle protocol
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(path, "holds pickled Python objects, not only tensors; refusing to "
                                 "unpickle them (save module.state_dict() instead)") from exc
    except Exception as exc:  # zip, EOF, key and runtime errors alike
        if "TorchScript" in str(exc):
            raise UserError(path, "is a TorchScript archive, not a state_dict; use "
                                     "model.kind=torchscript") from exc
        raise UserError(path, f"not a torch state_dict file: {first_line(exc)}") from exc
    if nested and isinstance(state, dict) and isinstance(state.get(nested), dict):
        state = state[nested]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise UserError(path, f"holds a {type(state).__name__}, not a state_dict of tensors")
    return state


def fill(module: nn.Module, path: str, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """``module`` with ``state`` loaded, or a one-line error naming the keys that do not fit."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    problems = [f"{len(keys)} {label} (e.g. {keys[0]})" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected),
                 ("shape mismatches, file vs model", shapes)) if keys]
    if problems:
        raise UserError(path, f"weights do not fit {what}: {'; '.join(problems)}")
    module.load_state_dict(state)
    return module.eval()


def cached_module(key: tuple[str, str], device: str,
                  build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` on ``device``, once per worker process and ``key`` (weights, kind, device):
    a worker's threads share one copy of the weights."""
    module: nn.Module = cached(key, device, lambda: build().to(device))
    return module


def cached(key: tuple[str, str], device: str, load: Callable[[], Any]) -> Any:
    """``load()`` once per worker process and ``key`` (weights, ``kind:digest:device``): any
    model object a package builds on ``device`` (a torch module, Cellpose's model, a StarDist
    model), shared by the threads."""
    with _LOCK:
        if key not in _CACHE:
            if device == "cpu":
                torch.set_num_threads(worker_torch_threads())
            _CACHE[key] = load()
        return _CACHE[key]


def global_norms(module: nn.Module) -> set[str]:
    """Names of whole-input normalisation layers (TorchScript keeps them as ``original_name``)."""
    names = {getattr(m, "original_name", type(m).__name__) for _, m in module.named_modules()}
    return names & GLOBAL_NORMS


class TorchModel(SegmentationModel):
    """A torch module run tile by tile on the worker's device (CUDA when present)."""

    accelerated = True
    soft = True
    #: True when the architecture pools over the whole input (e.g. ASPP image pooling)
    global_context: ClassVar[bool] = False

    def __init__(self, classes: list[ClassSpec], params: ModelParams, weights: str,
                 bands: int, ndim: int, intensity: Intensity, cfg: JobConfig,
                 card: ModelCard | None = None) -> None:
        super().__init__(classes, params)
        self.weights, self.bands, self.ndim = weights, bands, ndim
        self.digest = self.digest_of(weights)
        self.intensity, self.card = intensity, card
        self.tta = cfg.model.tta
        self.receptive_field, self.stride = self.geometry(params)
        t = cfg.tiling
        # tiles start on multiples of the stride, so every tile sees the whole image's phase;
        # None: chosen on the worker from the device's memory (sizing.auto_sizes)
        self.tile = None if t.tile == "auto" else -(-t.tile // self.stride) * self.stride
        self.halo = -(-t.halo // self.stride) * self.stride
        self.batch = None if t.batch == "auto" else t.batch
        self.stitch = t.stitch
        self.gpu, self.amp = cfg.cluster.gpu, cfg.model.amp

    @classmethod
    @abstractmethod
    def build(cls, weights: str, params: ModelParams, bands: int, ndim: int,
              classes: int | None) -> nn.Module:
        """The module on CPU in eval mode with its weights; SegflowError if they do not fit.

        ``classes`` is the class count the config states (None when it states none).
        """

    @classmethod
    def geometry(cls, params: ModelParams) -> tuple[int, int]:
        """Receptive field and stride: as ``params`` declares them unless the class knows."""
        return int(getattr(params, "receptive_field", 0)), int(getattr(params, "stride", 1))

    @classmethod
    def weights_path(cls, cfg: JobConfig, source: str) -> str:
        """``model.weights`` resolved: a file here; a folder for the forms that are folders."""
        return weights_file(cfg, source)

    @classmethod
    def digest_of(cls, path: str) -> str:
        """A short hash of the weights, so a changed file is never served from a cache."""
        return file_digest(path)

    @classmethod
    def own_card(cls, path: str, params: ModelParams) -> ModelCard | None:
        """The card the model's own files carry (None: they carry none)."""
        return None

    @classmethod
    def intensity_of(cls, path: str, params: ModelParams, card: ModelCard | None,
                     cfg: JobConfig, spec: InputSpec) -> Intensity:
        """How raw pixels become the model's input: ``model.normalize``, else the card's, else
        integers scaled by their dtype's maximum."""
        norm = cfg.model.normalize or (card.normalize if card else None)
        integer = np.dtype(spec.dtype).kind in "iu"
        scale = float(np.iinfo(spec.dtype).max) if integer and norm is None else None
        return Intensity(normalize=norm, scale=scale)

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> TorchModel:
        path = cls.weights_path(cfg, source)
        params = cls.Params.model_validate(cfg.model.params)
        card = cls.own_card(path, params)
        if cfg.model.card:
            card = (card or ModelCard()).merged(read_card(cfg.model.card))
        if card is not None:  # the band count now; names and pixel size once the input is open
            check_bands(card, spec.bands, None, source, f"{cls.kind}({Path(path).name})")
        intensity = cls.intensity_of(path, params, card, cfg, spec)
        norm = intensity.normalize
        if norm is not None and not len(norm.mean) == len(norm.std) == spec.bands:
            raise UserError(source, f"model.normalize needs {spec.bands} means and stds")
        named = card.classes if card and card.classes else None
        declared = len(cfg.model.classes) or getattr(params, "num_classes", None) or (
            len(named) if named else None)
        module = cls.build(path, params, spec.bands, spec.ndim,
                           int(declared) if declared else None)
        n_classes = cls._probe(module, path, spec, params)
        classes = class_table(cfg.model, named or [f"class_{i}" for i in range(n_classes)])
        if len(classes) != n_classes:
            raise UserError(path, f"model outputs {n_classes} classes, "
                                        f"config names {len(classes)}")
        norms = cls.whole_tile_layers(module)
        if norms or cls.global_context:
            reason = (f"has {', '.join(sorted(norms))} layers" if norms
                      else "pools over the whole tile")
            warnings.warn(f"{Path(path).name}: the model {reason}, so each output depends on the"
                          " whole tile: tiled output cannot equal a whole-image pass whatever "
                          "the halo; prefer tiling.stitch=gaussian with large tiles",
                          TilingWarning, stacklevel=2)
        return cls(classes, params, path, spec.bands, spec.ndim, intensity, cfg, card)

    @classmethod
    def whole_tile_layers(cls, module: nn.Module) -> set[str]:
        """Layers whose output depends on the whole tile (whole-input normalisations)."""
        return global_norms(module)

    @classmethod
    def _probe(cls, module: nn.Module, path: str, spec: InputSpec,
               params: ModelParams) -> int:
        """Output channels for a small zero input: the class count, and a shape check."""
        side = max(32, cls.geometry(params)[1])
        probe = torch.zeros(1, spec.bands, *(side,) * spec.ndim)
        try:
            with torch.inference_mode():
                out = module(probe)
        except Exception as exc:
            raise UserError(path, f"model rejects {spec.bands}-band input: "
                                     f"{first_line(exc)}") from exc
        if out.ndim != spec.ndim + 2 or tuple(out.shape[2:]) != probe.shape[2:]:
            raise UserError(path, f"model maps a {tuple(probe.shape)} input to "
                                     f"{tuple(out.shape)}, not one logit per class and cell")
        return int(out.shape[1])

    def _module(self, device: str) -> nn.Module:
        """The module on ``device``, built once per worker process (and per weights version)."""
        return cached_module((self.weights, f"{type(self).kind}:{self.digest}:{device}"), device,
                             lambda: self.build(self.weights, self.params, self.bands, self.ndim,
                                                len(self.classes)))

    def _sizes(self, module: nn.Module, device: torch.device,
               core: tuple[int, ...]) -> tuple[int, int]:
        """Tile and batch for a chunk core: the config's, or ``auto`` from the device memory."""
        if self.tile is not None and self.batch is not None:
            return self.tile, self.batch
        cell = bytes_per_cell(f"{self.kind}:{self.digest}", module, self.bands, self.ndim,
                              self.stride, device)
        return auto_sizes(core, self.halo, self.stride, cell, memory_budget(device),
                          self.tile, self.batch)

    def _block(self, pixels: np.ndarray, valid: np.ndarray, device: torch.device
               ) -> torch.Tensor:
        """The chunk as normalised float32 on ``device``, nodata cells 0.

        Raw pixels travel (uint8 is a quarter of float32), through a pinned host buffer on
        CUDA so the copy is asynchronous; scaling and normalisation run on the device.
        """
        if pixels.dtype not in _TORCH_DTYPES:  # uint16/uint32: torch cannot cast them on GPU
            pixels = pixels.astype(np.float32)
        x = to_device(np.ascontiguousarray(pixels), device).float()
        mask = to_device(np.ascontiguousarray(valid), device)
        return torch.where(mask, self.intensity.apply(x), 0.0)

    def predict(self, pixels: np.ndarray, valid: np.ndarray,
                core: tuple[slice, ...]) -> np.ndarray:
        return self._infer(pixels, valid, core, scores=False)[0]

    def predict_scores(self, pixels: np.ndarray, valid: np.ndarray,
                       core: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Class ids and softmax probabilities: crop stitching keeps each tile's core, gaussian
        the weighted mean of overlapping tiles; the ids are their argmax."""
        labels, probs = self._infer(pixels, valid, core, scores=True)
        assert probs is not None
        return labels, probs

    def _infer(self, pixels: np.ndarray, valid: np.ndarray, core: tuple[slice, ...],
               scores: bool) -> tuple[np.ndarray, np.ndarray | None]:
        device = torch.device(pick_device(self.gpu))
        module = self._module(str(device))
        # class ids leave the device in the smallest type that holds them
        ids = torch.uint8 if label_dtype(len(self.classes))[0] == np.uint8 else torch.int32
        blend = self.stitch == "gaussian"
        amp = (torch.autocast("cuda", dtype=amp_dtype(device)) if self.amp
               and device.type == "cuda" else contextlib.nullcontext())

        chosen = views(self.tta, self.ndim, self.mirror_axes())

        def run(batch: torch.Tensor) -> torch.Tensor:
            with amp:
                return module(batch)

        def forward(batch: torch.Tensor) -> torch.Tensor:
            if len(chosen) > 1:  # the views' mean softmax, all views in one batch
                probs = augmented(run, batch, chosen, self.stride)
                return probs if blend or scores else probs.argmax(dim=1).to(ids)
            logits = run(batch)
            if blend or scores:  # probabilities to blend or keep; crop keeps only the argmax
                return logits.float().softmax(dim=1)
            return logits.argmax(dim=1).to(ids)

        tile, batch = self._sizes(module, device, tuple(s.stop - s.start for s in core))
        with torch.inference_mode():
            block = self._block(pixels, valid, device)
            if scores:
                stitch = blended_scores if blend else predict_tiled
                probs = stitch(forward, block, core, tile, self.halo, batch)
                return probs.argmax(dim=0).to(ids).cpu().numpy(), probs.cpu().numpy()
            stitch = predict_blended if blend else predict_tiled
            labels = stitch(forward, block, core, tile, self.halo, batch)
            return labels.to(ids).cpu().numpy(), None

    def mirror_axes(self) -> tuple[int, ...] | None:
        """Spatial axes ``tta: flips`` may mirror (None: all); nnU-Net's checkpoint says."""
        return None

    def fit(self, source: SourceBase, client: Client) -> None:
        self.intensity = self.intensity.fitted(source, client)

    def identity(self) -> str:
        tta = f", tta={self.tta}" if self.tta != "none" else ""
        return f"{self.kind}({Path(self.weights).name}@{self.digest}{tta})"

    def fitted(self) -> dict[str, Any]:
        return {**self.intensity.describe(), "tta": self.tta}
