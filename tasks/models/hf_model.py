"""A local Hugging Face folder (``config.json`` + ``model.safetensors``; a pickle is never
loaded) run by ``transformers``: semantic models (``AutoModelForSemanticSegmentation``:
SegFormer, UperNet, DPT, BEiT ...) and universal ones (``AutoModelForUniversalSegmentation``:
Mask2Former, MaskFormer, OneFormer) through their semantic output.

Logits at a stride (SegFormer's 1/4) are upsampled bilinearly to the tile, as the image
processors' ``post_process_semantic_segmentation`` does; a universal model's per-class score is
its post-processing's sum over queries (class softmax without the null class times the mask
sigmoid), normalised over classes. Tiles are zero-padded on their high side to a multiple of 32
(the backbones' stride; at least 64) and cropped back. The folder's
``preprocessor_config.json`` gives the normalisation (rescale then mean/std, in raw units),
``id2label`` the class names.
Attention and pyramid pooling see the whole tile: these models warn that tiled output cannot
equal a whole-image pass (``tiling.stitch: gaussian`` with large tiles hides the seams).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from segflow.tasks.config import JobConfig, Normalize
from segflow.tasks.errors import UserError, first_line
from segflow.tasks.models.card import ModelCard, card_from_json
from segflow.tasks.models.params import HFParams, ModelParams
from segflow.tasks.models.torch_model import TorchModel, file_digest, weights_folder
from segflow.tasks.models.vision_ops import import_torchvision
from segflow.tasks.sources.base import needs

#: the backbones' stride: tiles are padded to a multiple of it
PAD = 32
UNIVERSAL = {"mask2former", "maskformer", "oneformer"}


class _Semantic(nn.Module):
    """Per-class logits at the input's size from a semantic or universal HF model."""

    def __init__(self, net: nn.Module, universal: bool) -> None:
        super().__init__()
        self.net, self.universal = net, universal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        # a multiple of the stride, and at least two cells of the coarsest feature map (a
        # group norm over one cell is undefined)
        padded = F.pad(x, [0, max(2 * PAD, w + -w % PAD) - w, 0, max(2 * PAD, h + -h % PAD) - h])
        out = self.net(pixel_values=padded)
        size = padded.shape[2:]
        if not self.universal:
            logits = F.interpolate(out.logits, size=size, mode="bilinear", align_corners=False)
            return logits[..., :h, :w]
        masks = F.interpolate(out.masks_queries_logits, size=size, mode="bilinear",
                              align_corners=False).sigmoid()
        classes = out.class_queries_logits.softmax(dim=-1)[..., :-1]  # no "no object" class
        scores = torch.einsum("bqc,bqhw->bchw", classes, masks)[..., :h, :w]
        return torch.log(scores / scores.sum(dim=1, keepdim=True).clamp_min(1e-12) + 1e-12)


def _folder(cfg: JobConfig, source: str) -> Path:
    folder = Path(weights_folder(cfg, source, "a local Hugging Face folder (config.json, "
                                              "model.safetensors)", ("config.json",)))
    if not (folder / "model.safetensors").is_file():
        pickled = [p.name for p in folder.glob("*.bin")]
        hint = f" (only {', '.join(pickled)}: pickles are never loaded)" if pickled else ""
        raise UserError(str(folder), f"holds no model.safetensors{hint}; save it with "
                                     "save_pretrained() from transformers >= 4.35")
    return folder


def _channels(config: dict[str, Any]) -> int | None:
    for where in (config, config.get("backbone_config") or {}):
        if isinstance(where.get("num_channels"), int):
            return int(where["num_channels"])
    return None


class HFModel(TorchModel):
    """A Hugging Face segmentation model from a local folder, tile by tile."""

    kind = "hf"
    Params = HFParams
    global_context = True

    @classmethod
    def weights_path(cls, cfg: JobConfig, source: str) -> str:
        return str(_folder(cfg, source))

    @classmethod
    def digest_of(cls, path: str) -> str:
        return file_digest(str(Path(path) / "model.safetensors"))

    @classmethod
    def own_card(cls, path: str, params: ModelParams) -> ModelCard | None:
        """Band count from config.json, classes from its ``id2label``, the normalisation from
        preprocessor_config.json in raw units: (raw * rescale - mean) / std."""
        config = card_from_json(Path(path) / "config.json")
        labels = config.get("id2label") or {}
        classes = [str(labels[k]) for k in sorted(labels, key=int)] if labels else None
        norm = None
        processor = Path(path) / "preprocessor_config.json"
        if processor.is_file():
            pre = card_from_json(processor)
            rescale = pre.get("rescale_factor", 1 / 255) if pre.get("do_rescale", True) else 1.0
            mean, std = pre.get("image_mean"), pre.get("image_std")
            if pre.get("do_normalize", True) and mean and std:
                norm = Normalize(mean=[m / rescale for m in mean], std=[s / rescale for s in std])
            elif rescale != 1.0:
                n = _channels(config) or 3
                norm = Normalize(mean=[0.0] * n, std=[1 / rescale] * n)
        return ModelCard(num_bands=_channels(config), classes=classes, normalize=norm)

    @classmethod
    def build(cls, weights: str, params: ModelParams, bands: int, ndim: int,
              classes: int | None) -> nn.Module:
        import_torchvision()  # it imports torchvision, whose PyPI build needs segflow's shim
        transformers = needs("transformers", "hf", weights, "model.kind=hf models")
        if ndim != 2:
            raise UserError(weights, "Hugging Face segmentation models are 2-D")
        config = card_from_json(Path(weights) / "config.json")
        universal = config.get("model_type") in UNIVERSAL
        auto = (transformers.AutoModelForUniversalSegmentation if universal
                else transformers.AutoModelForSemanticSegmentation)
        try:
            net = auto.from_pretrained(weights, local_files_only=True, use_safetensors=True)
        except Exception as exc:  # transformers raises ValueError/OSError/KeyError alike
            raise UserError(weights, f"transformers cannot load it: {first_line(exc)}") from exc
        return _Semantic(net.eval(), universal).eval()
