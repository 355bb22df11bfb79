"""segmentation_models_pytorch networks (Unet, FPN, DeepLabV3+, ...) from a state_dict.

Params: ``arch`` (an ``smp.create_model`` architecture, default Unet), ``encoder`` (default
resnet34), ``num_classes`` when ``model.classes`` is empty, ``receptive_field`` as you know it
(the encoders reach hundreds of pixels; default 0, so the flow cannot warn: prefer
``tiling.stitch: gaussian``). Weights: the ``state_dict`` of the model built with
``encoder_weights=None, in_channels=<bands>, classes=N``. Inputs are zero-padded on their high
side to a multiple of 32 (the encoders' stride) and cropped back. smp is optional (not in the
test extra) and imported only here.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from segflow.tasks.errors import UserError, first_line
from segflow.tasks.models.params import ModelParams, SMPParams
from segflow.tasks.models.torch_model import TorchModel, fill, load_state_dict
from segflow.tasks.models.torchvision_models import import_torchvision

STRIDE = 32


class Padded(nn.Module):
    """smp encoders need sides divisible by their stride; pad high sides, crop the output."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        logits = self.net(F.pad(x, [0, -w % STRIDE, 0, -h % STRIDE]))
        return logits[..., :h, :w]


class SMPModel(TorchModel):
    """An smp network; any band count (the first convolution takes ``in_channels``)."""

    kind = "smp"
    Params = SMPParams

    @classmethod
    def geometry(cls, params: ModelParams) -> tuple[int, int]:
        assert isinstance(params, SMPParams)
        return params.receptive_field, STRIDE

    @classmethod
    def build(cls, weights: str, params: ModelParams, bands: int, ndim: int,
              classes: int | None) -> nn.Module:
        assert isinstance(params, SMPParams)
        if ndim != 2 or not classes:
            raise UserError(weights, "smp networks are 2-D and need model.classes or "
                                        "model.params.num_classes")
        try:
            import_torchvision()  # smp imports it; this also works with a CPU-only torch
            import segmentation_models_pytorch as smp
        except ImportError as exc:
            raise UserError(weights, "model.kind=smp needs segmentation-models-pytorch "
                                        "(pip install 'segflow[smp]')") from exc
        arch, encoder = params.arch, params.encoder
        try:
            net = smp.create_model(arch, encoder_name=encoder, encoder_weights=None,
                                   in_channels=bands, classes=classes)
        except Exception as exc:  # smp raises KeyError/ValueError for unknown names
            raise UserError(weights, f"smp cannot build {arch}/{encoder}: "
                                        f"{first_line(exc)}") from exc
        fill(net, weights, load_state_dict(weights), f"smp {arch}/{encoder} ({classes} classes)")
        return Padded(net).eval()
