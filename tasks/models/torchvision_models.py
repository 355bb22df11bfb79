"""torchvision's semantic segmentation networks (DeepLabV3, FCN, LRASPP) from a state_dict.

Params: ``arch``, a builder of ``torchvision.models.segmentation`` (deeplabv3_resnet50,
deeplabv3_resnet101, deeplabv3_mobilenet_v3_large, fcn_resnet50, fcn_resnet101,
lraspp_mobilenet_v3_large); ``num_classes`` when ``model.classes`` is empty; ``stride``
(default 1) to align tiles to the backbone's output stride. Weights: the ``state_dict`` of the
model built with ``weights=None, weights_backbone=None, num_classes=N`` (``aux_loss`` off).

These networks pool over the whole input (ASPP image pooling, LRASPP's global branch), so a
tiled mask equals the whole-image one only when one tile covers the image; otherwise use
``tiling.stitch: gaussian`` with generous tiles and halo. torchvision is optional (the
``torchvision`` extra) and imported only here.
"""

from __future__ import annotations

import torch
from torch import nn

from segflow.tasks.errors import UserError
from segflow.tasks.models.params import ModelParams, TorchvisionParams
from segflow.tasks.models.torch_model import TorchModel, fill, load_state_dict
from segflow.tasks.models.vision_ops import import_torchvision


class _Logits(nn.Module):
    """torchvision returns ``{"out": logits, ...}``; segflow wants the logits tensor."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


class TorchvisionModel(TorchModel):
    """A torchvision segmentation network; RGB-style 3-band input unless the weights differ."""

    kind = "torchvision"
    Params = TorchvisionParams
    global_context = True

    @classmethod
    def build(cls, weights: str, params: ModelParams, bands: int, ndim: int,
              classes: int | None) -> nn.Module:
        assert isinstance(params, TorchvisionParams)
        arch = params.arch
        if ndim != 2 or not classes:
            raise UserError(weights, "torchvision networks are 2-D and need model.classes "
                                        "or model.params.num_classes")
        try:
            segmentation = import_torchvision().models.segmentation
        except ImportError as exc:
            raise UserError(weights, str(exc)) from exc
        net = getattr(segmentation, arch)(weights=None, weights_backbone=None,
                                          num_classes=classes)
        fill(net, weights, load_state_dict(weights), f"torchvision {arch} ({classes} classes)")
        return _Logits(net).eval()
