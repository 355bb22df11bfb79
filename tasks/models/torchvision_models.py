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

import sys
from types import ModuleType
from typing import Any

import torch
from torch import nn

from segflow.tasks.errors import UserError
from segflow.tasks.models.torch_model import TorchModel, fill, load_state_dict

ARCHS = ("deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large",
         "fcn_resnet50", "fcn_resnet101", "lraspp_mobilenet_v3_large")

_STUBS: list[torch.library.Library] = []


def import_torchvision() -> ModuleType:
    """``torchvision``, also from a CUDA torchvision wheel next to a CPU-only torch.

    That pairing cannot load torchvision's C++ ops, and torchvision's import then fails while
    registering a meta kernel for ``nms`` (pytorch/vision#9085). The segmentation networks use
    none of those ops, so declaring the two missing op schemas lets the import finish; calling
    ``nms`` would still fail loudly. No torchvision release guards this itself.
    """
    try:
        import torchvision
    except ModuleNotFoundError as exc:
        raise ImportError("model.kind=torchvision needs torchvision "
                          "(pip install 'segflow[torchvision]')") from exc
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        stubs = torch.library.Library("torchvision", "FRAGMENT")
        stubs.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        stubs.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _STUBS.append(stubs)  # a Library unregisters its ops when garbage-collected
        import torchvision
    return torchvision


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
    global_context = True

    @classmethod
    def build(cls, weights: str, params: dict[str, Any], bands: int, ndim: int,
              classes: int | None) -> nn.Module:
        arch = params.get("arch")
        if arch not in ARCHS:
            raise UserError(weights, f"params.arch must be one of {', '.join(ARCHS)}")
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
