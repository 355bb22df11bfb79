"""A TorchGeo segmentation model for one of its weights enums, with weights from a local file.

``params.weights`` names the enum member (``Unet_Weights.SENTINEL2_2CLASS_FTW``); TorchGeo's
``get_weight`` gives its metadata, from which segflow builds the architecture (U-Net: smp's,
with the member's encoder, band count and classes) and its card: band names, the class names
and the pixel size (``resolution``, m) where the member states them, and the normalisation
its ``transforms`` apply (``Normalize(mean, std)``). ``model.weights`` is the member's file as
downloaded (``torch.hub`` cache, or the URL fetched once by hand): a state_dict read with
``weights_only``; nothing is downloaded. Resizing transforms are not applied (segflow tiles).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from segflow.tasks.config import Normalize
from segflow.tasks.errors import UserError, first_line
from segflow.tasks.models.card import ModelCard
from segflow.tasks.models.params import ModelParams, TorchGeoParams
from segflow.tasks.models.smp_models import STRIDE, Padded
from segflow.tasks.models.torch_model import TorchModel, fill, load_state_dict
from segflow.tasks.models.vision_ops import import_torchvision
from segflow.tasks.sources.base import needs

#: the weights enums of segmentation models, by the builder their architecture needs
BUILDERS = {"Unet_Weights": "unet"}


def weights_member(name: str, where: str) -> Any:
    """The TorchGeo weights enum member ``name``, or a one-line error."""
    import_torchvision()  # torchgeo imports torchvision, whose PyPI build needs segflow's shim
    models = needs("torchgeo.models", "torchgeo", where, "model.kind=torchgeo models")
    try:
        member = models.get_weight(name)
    except Exception as exc:  # torchgeo raises ValueError/KeyError for unknown names
        raise UserError(where, f"model.params.weights={name!r} is not a TorchGeo weights "
                               f"enum member: {first_line(exc)}") from None
    enum = type(member).__name__
    if enum not in BUILDERS or "num_classes" not in member.meta:
        raise UserError(where, f"model.params.weights={name!r} is a {enum} member, not "
                               f"segmentation weights ({', '.join(BUILDERS)})")
    return member


def _normalize(member: Any, bands: int) -> Normalize | None:
    """mean/std of the member's ``Normalize`` transform, per band (broadcast when one)."""
    for module in getattr(member.transforms, "modules", lambda: [member.transforms])():
        mean, std = getattr(module, "mean", None), getattr(module, "std", None)
        if type(module).__name__ == "Normalize" and mean is not None and std is not None:
            mean = [float(v) for v in mean] * (bands if len(mean) == 1 else 1)
            std = [float(v) for v in std] * (bands if len(std) == 1 else 1)
            return Normalize(mean=mean, std=std)
    return None


class TorchGeoModel(TorchModel):
    """TorchGeo's U-Net for a weights enum member, the member's file loaded safely."""

    kind = "torchgeo"
    Params = TorchGeoParams

    @classmethod
    def geometry(cls, params: ModelParams) -> tuple[int, int]:
        assert isinstance(params, TorchGeoParams)
        return params.receptive_field, STRIDE

    @classmethod
    def own_card(cls, path: str, params: ModelParams) -> ModelCard | None:
        assert isinstance(params, TorchGeoParams)
        member = weights_member(params.weights, path)
        meta = member.meta
        bands = meta.get("bands")
        classes = meta.get("classes")
        return ModelCard(
            bands=list(bands) if bands and len(bands) == meta["in_chans"] else None,
            num_bands=meta["in_chans"],
            normalize=_normalize(member, meta["in_chans"]),
            pixel_size=meta.get("resolution"), unit="m",
            classes=list(classes) if classes else None)

    @classmethod
    def build(cls, weights: str, params: ModelParams, bands: int, ndim: int,
              classes: int | None) -> nn.Module:
        assert isinstance(params, TorchGeoParams)
        member = weights_member(params.weights, weights)
        meta = member.meta
        if ndim != 2:
            raise UserError(weights, "TorchGeo segmentation models are 2-D")
        models = needs("torchgeo.models", "torchgeo", weights, "model.kind=torchgeo models")
        builder = getattr(models, BUILDERS[type(member).__name__])
        net = builder(weights=None, classes=meta["num_classes"], in_channels=meta["in_chans"],
                      encoder_name=meta["encoder"], encoder_weights=None)
        what = f"TorchGeo {params.weights} ({meta['encoder']}, {meta['in_chans']} bands)"
        return Padded(fill(net, weights, load_state_dict(weights), what)).eval()
