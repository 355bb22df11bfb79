"""An nnU-Net v2 trained folder (``dataset.json``, ``plans.json``, ``fold_N/checkpoint_final
.pth``) run with nnU-Net's own network classes (``dynamic_network_architectures``) and its
normalisation, but segflow's tiling and stitching in place of nnU-Net's Gaussian sliding window.

- Network: the configuration's ``architecture`` from the plans (nnU-Net >= 2.4), its classes
  imported only from ``dynamic_network_architectures`` and ``torch.nn``; deep supervision off.
  A 2-D configuration on a volume runs slice by slice along nnU-Net's first axis.
- Axes: the volume reaches the network in nnU-Net's order: reversed to SimpleITK's (z, y, x)
  when the plans read images with SimpleITK, then ``transpose_forward``.
- Normalisation: the plans' scheme per channel: ``ZScoreNormalization`` fitted over the whole
  volume (nnU-Net's per-case mean and std, never per tile; over non-zero voxels with
  ``use_mask_for_norm``), ``CTNormalization`` clipped to the dataset's 0.5/99.5 percentiles
  with its mean and std, ``RescaleTo01Normalization``, ``RGBTo01Normalization``,
  ``NoNormalization``. nnU-Net computes the z-score after cropping to the non-zero bounding
  box, so the statistics differ slightly where the volume has a zero margin.
- Spacing: the configuration's, checked through the card (segflow does not resample volumes).
- Folds: ``params.folds`` are averaged (their softmax), as nnU-Net ensembles folds.
- Checkpoints are read with ``weights_only``; a trained one's log holds NumPy scalars, which
  are allowed by type; anything else is refused unless ``model.trust_checkpoint: true``.

nnU-Net's networks use InstanceNorm, whose output depends on the whole tile: they warn that
tiled output cannot equal a whole-volume pass (use large tiles and ``tiling.stitch:
gaussian``, nnU-Net's own choice; tests/test_nnunet_monai.py measures the difference).
"""

from __future__ import annotations

import math
import pickle
import pydoc
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from segflow.tasks.config import ClassSpec, JobConfig, Normalize
from segflow.tasks.errors import UserError, first_line
from segflow.tasks.models.base import InputSpec
from segflow.tasks.models.card import ModelCard, card_from_json
from segflow.tasks.models.intensity import Intensity
from segflow.tasks.models.params import ModelParams, NnUNetParams
from segflow.tasks.models.torch_model import TorchModel, files_digest, fill, weights_folder
from segflow.tasks.models.vision_ops import import_torchvision
from segflow.tasks.sources.base import needs

#: where a plans file may import a class from: nnU-Net's networks and torch's layers
ALLOWED = ("dynamic_network_architectures.", "torch.nn.")
#: ``model.trust_checkpoint`` of the model being built (``build`` is a classmethod)
_TRUSTED: ContextVar[bool] = ContextVar("trusted", default=False)
#: NumPy types a trained checkpoint's log pickles; data, never code
_NUMPY_SAFE: list[Any] = [np._core.multiarray.scalar, np.dtype, *(
    type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32", "bool"))]


def read_checkpoint(path: Path, trust: bool) -> dict[str, Any]:
    """An nnU-Net checkpoint as a dict, unpickling code only when the user trusts it."""
    if not path.is_file():
        raise UserError(str(path), "checkpoint not found (model.params.folds, "
                                   "model.params.checkpoint)")
    try:
        with torch.serialization.safe_globals(_NUMPY_SAFE):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust:
            raise UserError(str(path), f"holds pickled Python objects beyond tensors and NumPy "
                                       f"scalars ({first_line(exc)}); set "
                                       "model.trust_checkpoint: true only for a checkpoint you "
                                       "trust") from None
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(str(path), f"not an nnU-Net checkpoint: {first_line(exc)}") from None
    if not isinstance(loaded, dict) or "network_weights" not in loaded:
        raise UserError(str(path), "not an nnU-Net checkpoint (no network_weights)")
    return loaded


def configuration(folder: Path, params: NnUNetParams) -> tuple[str, dict[str, Any]]:
    """The configuration's name and its plans (``inherits_from`` resolved)."""
    plans = card_from_json(folder / "plans.json")
    configs = plans.get("configurations") or {}
    name = params.configuration or folder.name.split("__")[-1]
    if name not in configs:
        if params.configuration is None and len(configs) == 1:
            name = next(iter(configs))
        else:
            raise UserError(str(folder), f"model.params.configuration={name!r} is not in "
                                         f"plans.json ({', '.join(configs)})")
    conf, seen = dict(configs[name]), {name}
    while "inherits_from" in conf:
        parent = conf.pop("inherits_from")
        if parent in seen or parent not in configs:
            raise UserError(str(folder), f"configuration {name}: bad inherits_from {parent!r}")
        seen.add(parent)
        conf = {**configs[parent], **conf}
    if "architecture" not in conf:
        raise UserError(str(folder), "plans.json from nnU-Net before 2.4 (no architecture): "
                                     "re-plan the dataset with a current nnU-Net")
    return name, {**conf, "_plans": plans}


def _locate(name: str, folder: Path) -> Any:
    if not name.startswith(ALLOWED):
        raise UserError(str(folder), f"plans.json names {name}: segflow imports only "
                                     f"{' and '.join(ALLOWED)} classes")
    found = pydoc.locate(name)
    if found is None:
        raise UserError(str(folder), f"plans.json names {name}, which is not installed")
    return found


def _labels(dataset: dict[str, Any], folder: Path) -> list[str]:
    labels = dataset.get("labels") or {}
    if any(not isinstance(v, int) for v in labels.values()):
        raise UserError(str(folder), "region-based labels (dataset.json) are not supported: "
                                     "segflow needs one class per output channel")
    return [k for k, _ in sorted(labels.items(), key=lambda kv: kv[1])]


class _NnUNet(nn.Module):
    """The fold networks in nnU-Net's axis order, their mean softmax as log-probabilities."""

    def __init__(self, nets: list[nn.Module], order: list[int], net_dims: int,
                 strides: list[int]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.order, self.net_dims, self.strides = order, net_dims, strides

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = list(range(2, x.ndim))
        perm = [0, 1, *(spatial[a] for a in self.order)]
        y = x.permute(perm)
        shape = y.shape
        if self.net_dims == 2 and y.ndim == 5:  # slices along nnU-Net's first axis
            y = y.transpose(1, 2).reshape(-1, shape[1], *shape[3:])
        sides = y.shape[2:]
        pads = [p for s, st in zip(reversed(sides), reversed(self.strides)) for p in (0, -s % st)]
        y = F.pad(y, pads)
        outs = [net(y) for net in self.nets]
        crop: tuple[slice, ...] = tuple(slice(0, s) for s in sides)
        if len(outs) == 1:
            out = outs[0]
        else:
            mean = torch.stack([o.softmax(dim=1) for o in outs]).mean(dim=0)
            out = torch.log(mean.clamp_min(1e-12))
        out = out[(..., *crop)]
        if self.net_dims == 2 and x.ndim == 5:
            out = out.reshape(shape[0], shape[2], -1, *shape[3:]).transpose(1, 2)
        return out.permute([perm.index(i) for i in range(len(perm))])


class NnUNetModel(TorchModel):
    """An nnU-Net v2 trained folder through segflow's tiling."""

    kind = "nnunet"
    Params = NnUNetParams

    def __init__(self, classes: list[ClassSpec], params: ModelParams, weights: str,
                 bands: int, ndim: int, intensity: Intensity, cfg: JobConfig,
                 card: ModelCard | None = None) -> None:
        super().__init__(classes, params, weights, bands, ndim, intensity, cfg, card)
        assert isinstance(params, NnUNetParams)
        self.trust = cfg.model.trust_checkpoint
        folder = Path(weights)
        checkpoint = read_checkpoint(folder / f"fold_{params.folds[0]}" / params.checkpoint,
                                     self.trust)
        axes = checkpoint.get("inference_allowed_mirroring_axes")
        order = _order(folder, params, ndim)
        self.mirror = None if axes is None else tuple(order[a] for a in axes)

    @classmethod
    def from_config(cls, cfg: JobConfig, spec: InputSpec, source: str) -> TorchModel:
        token = _TRUSTED.set(cfg.model.trust_checkpoint)
        try:
            return super().from_config(cfg, spec, source)
        finally:
            _TRUSTED.reset(token)

    def _module(self, device: str) -> nn.Module:
        token = _TRUSTED.set(self.trust)
        try:
            return super()._module(device)
        finally:
            _TRUSTED.reset(token)

    @classmethod
    def weights_path(cls, cfg: JobConfig, source: str) -> str:
        return weights_folder(cfg, source, "an nnU-Net trained folder (dataset.json, "
                                           "plans.json, fold_0/ ...)",
                              ("dataset.json", "plans.json"))

    @classmethod
    def digest_of(cls, path: str) -> str:
        return files_digest([Path(path) / "plans.json",
                             *sorted(Path(path).glob("fold_*/*.pth"))])

    @classmethod
    def geometry(cls, params: ModelParams) -> tuple[int, int]:
        assert isinstance(params, NnUNetParams)
        return params.receptive_field, 1  # the wrapper pads to the network's own strides

    @classmethod
    def own_card(cls, path: str, params: ModelParams) -> ModelCard | None:
        assert isinstance(params, NnUNetParams)
        folder = Path(path)
        dataset = card_from_json(folder / "dataset.json")
        channels = dataset.get("channel_names") or dataset.get("modality") or {}
        _, conf = configuration(folder, params)
        spacing = conf.get("spacing")
        sizes = None
        if spacing and len(spacing) == 3:
            backward = conf["_plans"].get("transpose_backward", [0, 1, 2])
            ordered = [spacing[a] for a in backward]  # nnU-Net's reader order
            sizes = ordered[::-1] if _sitk(conf) else ordered
        return ModelCard(bands=[str(channels[k]) for k in sorted(channels, key=int)] or None,
                         classes=_labels(dataset, folder), pixel_size=sizes, unit="mm")

    @classmethod
    def intensity_of(cls, path: str, params: ModelParams, card: ModelCard | None,
                     cfg: JobConfig, spec: InputSpec) -> Intensity:
        assert isinstance(params, NnUNetParams)
        if cfg.model.normalize is not None:
            return Intensity(normalize=cfg.model.normalize)
        _, conf = configuration(Path(path), params)
        schemes = set(conf.get("normalization_schemes") or ["NoNormalization"])
        if len(schemes) != 1:
            raise UserError(path, f"channels normalised differently ({', '.join(schemes)}): "
                                  "segflow applies one scheme to all channels")
        scheme = schemes.pop()
        masked = bool((conf.get("use_mask_for_norm") or [False])[0])
        if scheme == "ZScoreNormalization":
            return Intensity(fit="zscore", nonzero=masked)
        if scheme == "CTNormalization":
            props = conf["_plans"]["foreground_intensity_properties_per_channel"]
            p = [props[str(c)] for c in range(spec.bands)]
            return Intensity(clip=(min(q["percentile_00_5"] for q in p),
                                   max(q["percentile_99_5"] for q in p)),
                             normalize=Normalize(mean=[q["mean"] for q in p],
                                                 std=[max(q["std"], 1e-8) for q in p]))
        if scheme == "RescaleTo01Normalization":
            return Intensity(fit="minmax")
        if scheme == "RGBTo01Normalization":
            return Intensity(scale=255.0)
        if scheme == "NoNormalization":
            return Intensity()
        raise UserError(path, f"normalisation {scheme} is not one segflow knows")

    @classmethod
    def build(cls, weights: str, params: ModelParams, bands: int, ndim: int,
              classes: int | None) -> nn.Module:
        assert isinstance(params, NnUNetParams)
        import_torchvision()  # it imports torchvision, whose PyPI build needs segflow's shim
        needs("dynamic_network_architectures", "nnunet", weights, "model.kind=nnunet models")
        folder = Path(weights)
        _, conf = configuration(folder, params)
        arch = conf["architecture"]
        kwargs = dict(arch["arch_kwargs"])
        for key in arch.get("_kw_requires_import", []):
            if kwargs.get(key) is not None:
                kwargs[key] = _locate(kwargs[key], folder)
        net_class = _locate(arch["network_class_name"], folder)
        dataset = card_from_json(folder / "dataset.json")
        n_out = len(_labels(dataset, folder))
        net_dims = len(conf["patch_size"])
        if net_dims > ndim:
            raise UserError(weights, f"a {net_dims}-D configuration on a {ndim}-D input")
        nets = []
        for fold in params.folds:
            state = read_checkpoint(folder / f"fold_{fold}" / params.checkpoint,
                                    _TRUSTED.get())
            net = net_class(input_channels=bands, num_classes=n_out, deep_supervision=False,
                            **kwargs)
            nets.append(fill(net, weights, state["network_weights"],
                             f"nnU-Net {arch['network_class_name'].rsplit('.', 1)[-1]} "
                             f"(fold {fold}, {bands} channels, {n_out} labels)"))
        strides = [math.prod(s[a] if isinstance(s, list) else s for s in kwargs["strides"])
                   for a in range(net_dims)]
        return _NnUNet(nets, _order(folder, params, ndim), net_dims, strides).eval()

    def mirror_axes(self) -> tuple[int, ...] | None:
        return self.mirror


def _sitk(conf: dict[str, Any]) -> bool:
    """The plans read images with SimpleITK, whose arrays are (z, y, x)."""
    return "SimpleITK" in str(conf["_plans"].get("image_reader_writer", "SimpleITKIO"))


def _order(folder: Path, params: NnUNetParams, ndim: int) -> list[int]:
    """For each of nnU-Net's axes, the segflow axis it is (reader order, then transposed)."""
    _, conf = configuration(folder, params)
    reader = list(range(ndim))[::-1] if _sitk(conf) and ndim == 3 else list(range(ndim))
    forward = conf["_plans"].get("transpose_forward", list(range(ndim)))
    return [reader[a] for a in forward] if len(forward) == ndim else reader
