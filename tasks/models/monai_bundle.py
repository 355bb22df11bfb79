"""A local MONAI bundle folder: the network its config defines (``network_def`` in
the bundle's ``inference.json``, built by ``monai.bundle.ConfigParser``), weights from
``models/model.pt`` (a state_dict, ``weights_only``), and its per-voxel preprocessing.

Of the bundle's ``preprocessing`` transforms segflow applies the intensity ones, per voxel:
``ScaleIntensityRanged`` (fixed window), ``NormalizeIntensityd`` (given, or the volume's own
mean/std fitted over the whole volume, not per tile; ``nonzero`` honoured) and
``ScaleIntensityd`` (the volume's min/max, fitted globally). ``Spacingd``'s ``pixdim`` becomes
the card's pixel size (segflow does not resample volumes: a mismatch is refused);
loading, channel and type transforms are segflow's reader's job; orientation is left as the
reader presents the volume. Any other transform is refused in one line, never skipped
silently. ``metadata.json`` gives the band count and the class names (``channel_def``).

A bundle's config is code (``_target_`` classes, ``$`` expressions): only the network
definition and the items it references are evaluated, as ``monai.bundle`` itself does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from segflow.tasks.config import JobConfig, Normalize
from segflow.tasks.errors import UserError, first_line
from segflow.tasks.models.base import InputSpec
from segflow.tasks.models.card import ModelCard, card_from_json
from segflow.tasks.models.intensity import Intensity
from segflow.tasks.models.params import ModelParams, MonaiBundleParams
from segflow.tasks.models.torch_model import (
    TorchModel,
    files_digest,
    fill,
    load_state_dict,
    weights_folder,
)
from segflow.tasks.models.vision_ops import import_torchvision
from segflow.tasks.sources.base import needs

#: transforms that only load, add a channel axis or change types: the reader's job
PASS = {"LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureChannelFirst", "EnsureTyped",
        "EnsureType", "ToTensord", "ToTensor", "CastToTyped", "Orientationd", "Orientation",
        "Compose", "AddChanneld"}
SPACING = {"Spacingd", "Spacing"}


def _parser(folder: Path, params: MonaiBundleParams) -> Any:
    import_torchvision()  # it imports torchvision, whose PyPI build needs segflow's shim
    bundle = needs("monai.bundle", "monai", str(folder), "model.kind=monai_bundle models")
    parser = bundle.ConfigParser()
    config = folder / "configs" / params.config
    if not config.is_file():
        raise UserError(str(folder), f"holds no configs/{params.config} (model.params.config)")
    try:
        parser.read_config(str(config))
        meta = folder / "configs" / "metadata.json"
        if meta.is_file():
            parser.read_meta(str(meta))
    except Exception as exc:
        raise UserError(str(config), f"not a MONAI bundle config: {first_line(exc)}") from None
    return parser


def _transforms(parser: Any) -> list[dict[str, Any]]:
    """The raw (unevaluated) preprocessing transforms: ``preprocessing#transforms``."""
    if "preprocessing" not in parser:
        return []
    raw = parser.get("preprocessing#transforms")
    if not isinstance(raw, list):
        raise UserError("preprocessing", "the bundle builds its transform list with an "
                                         "expression: segflow reads a literal list only")
    return [t for t in raw if isinstance(t, dict)]


def _value(parser: Any, index: int, key: str, default: Any) -> Any:
    """A transform argument, references and expressions evaluated by MONAI."""
    item = f"preprocessing#transforms#{index}#{key}"
    return parser.get_parsed_content(item) if item in parser else default


class MonaiBundleModel(TorchModel):
    """A MONAI bundle's network through segflow's tiling."""

    kind = "monai_bundle"
    Params = MonaiBundleParams

    @classmethod
    def weights_path(cls, cfg: JobConfig, source: str) -> str:
        return weights_folder(cfg, source, "a MONAI bundle folder (configs/, models/)",
                              ("configs",))

    @classmethod
    def digest_of(cls, path: str) -> str:
        return files_digest(sorted(Path(path).glob("configs/*")) +
                            sorted(Path(path).glob("models/*.pt")))

    @classmethod
    def own_card(cls, path: str, params: ModelParams) -> ModelCard | None:
        assert isinstance(params, MonaiBundleParams)
        folder = Path(path)
        meta = folder / "configs" / "metadata.json"
        fmt = card_from_json(meta).get("network_data_format", {}) if meta.is_file() else {}
        image = (fmt.get("inputs") or {}).get("image") or {}
        pred = (fmt.get("outputs") or {}).get("pred") or {}
        names = pred.get("channel_def") or {}
        classes = ([str(names[k]) for k in sorted(names, key=int)]
                   if len(names) == pred.get("num_channels", len(names)) > 1 else None)
        parser = _parser(folder, params)
        pixdim = None
        for i, t in enumerate(_transforms(parser)):
            if str(t.get("_target_", "")).rsplit(".", 1)[-1] in SPACING:
                pixdim = _value(parser, i, "pixdim", None)
        sizes = [float(v) for v in pixdim] if isinstance(pixdim, list | tuple) else pixdim
        return ModelCard(num_bands=image.get("num_channels"), classes=classes,
                         pixel_size=sizes, unit="mm")

    @classmethod
    def intensity_of(cls, path: str, params: ModelParams, card: ModelCard | None,
                     cfg: JobConfig, spec: InputSpec) -> Intensity:
        assert isinstance(params, MonaiBundleParams)
        parser = _parser(Path(path), params)
        steps = []
        for i, t in enumerate(_transforms(parser)):
            name = str(t.get("_target_", "")).rsplit(".", 1)[-1]
            if name in PASS or name in SPACING:
                continue
            steps.append(_intensity(parser, i, name, spec.bands, path))
        if len(steps) > 1:
            raise UserError(path, "the bundle chains several intensity transforms: segflow "
                                  "applies one (ScaleIntensityRanged, NormalizeIntensityd or "
                                  "ScaleIntensityd)")
        if cfg.model.normalize is not None:
            return Intensity(normalize=cfg.model.normalize)
        return steps[0] if steps else Intensity()

    @classmethod
    def build(cls, weights: str, params: ModelParams, bands: int, ndim: int,
              classes: int | None) -> nn.Module:
        assert isinstance(params, MonaiBundleParams)
        folder = Path(weights)
        parser = _parser(folder, params)
        try:
            net = parser.get_parsed_content(params.network)
        except Exception as exc:
            raise UserError(str(folder / "configs" / params.config),
                            f"cannot build {params.network}: {first_line(exc)}") from None
        if not isinstance(net, nn.Module):
            raise UserError(str(folder / "configs" / params.config),
                            f"{params.network} is not a network")
        file = folder / params.weights
        if not file.is_file():
            raise UserError(str(folder), f"holds no {params.weights} (model.params.weights)")
        state = load_state_dict(str(file), nested="model")
        return fill(net, str(file), state, f"the bundle's {params.network}")


def _intensity(parser: Any, i: int, name: str, bands: int, path: str) -> Intensity:
    """One MONAI intensity transform as segflow's per-voxel steps."""
    if name == "ScaleIntensityRanged":
        a_min, a_max = (float(_value(parser, i, k, None)) for k in ("a_min", "a_max"))
        b_min, b_max = (float(_value(parser, i, k, d)) for k, d in (("b_min", 0.0),
                                                                     ("b_max", 1.0)))
        std = (a_max - a_min) / (b_max - b_min)
        return Intensity(clip=(a_min, a_max) if _value(parser, i, "clip", False) else None,
                         normalize=Normalize(mean=[a_min - b_min * std] * bands,
                                             std=[std] * bands))
    if name == "NormalizeIntensityd":
        nonzero = bool(_value(parser, i, "nonzero", False))
        sub, div = _value(parser, i, "subtrahend", None), _value(parser, i, "divisor", None)
        if sub is not None and div is not None:
            subs = [float(sub)] * bands if isinstance(sub, int | float) else list(sub)
            divs = [float(div)] * bands if isinstance(div, int | float) else list(div)
            return Intensity(normalize=Normalize(mean=subs, std=divs), nonzero=nonzero)
        return Intensity(fit="zscore", nonzero=nonzero)
    if name == "ScaleIntensityd" and _value(parser, i, "factor", None) is None:
        lo, hi = float(_value(parser, i, "minv", 0.0)), float(_value(parser, i, "maxv", 1.0))
        return Intensity(fit="minmax", target=(lo, hi))
    raise UserError(path, f"preprocessing transform {name} is not one segflow applies per "
                          "voxel (ScaleIntensityRanged, NormalizeIntensityd, ScaleIntensityd)")
