"""A user's TorchScript segmentation model: float32 NCHW (NCDHW for volumes) in, logits out.

The scripted file carries its own architecture, so segflow cannot know its receptive field or
stride: ``params.receptive_field`` and ``params.stride`` state them (default 0 and 1).
"""

from __future__ import annotations

import torch
from torch import nn

from segflow.tasks.errors import UserError, first_line
from segflow.tasks.models.params import ModelParams, TorchScriptParams
from segflow.tasks.models.torch_model import TorchModel


class TorchScriptModel(TorchModel):
    """Runs a TorchScript file tile by tile (``torch.jit.load``: code and tensors, no pickle)."""

    kind = "torchscript"
    Params = TorchScriptParams

    @classmethod
    def build(cls, weights: str, params: ModelParams, bands: int, ndim: int,
              classes: int | None) -> nn.Module:
        try:
            return torch.jit.load(weights, map_location="cpu").eval()
        except Exception as exc:  # torch raises RuntimeError/ValueError/zip errors alike
            raise UserError(weights, f"not a TorchScript model: {first_line(exc)}") from exc
