"""SegNet (Badrinarayanan et al. 2017; tasks/models/nets.py) from a state_dict: 2-D images only.

Params: ``base`` channels at full resolution (default 16), ``depth`` poolings (default 3),
``convs`` convolutions per stage (default 2), ``num_classes`` when ``model.classes`` is empty.
Receptive field: (2 * convs + 1) * (2**depth - 1) cells (35 at the defaults, 15 at depth 2);
stride 2**depth. Max-unpooling places each value at its encoder window's argmax, so an output
cell also depends on that window's cells, all within the same radius. With BatchNorm (local in
eval mode) and halo >= receptive field, the mask does not depend on the chunk or tile size.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from segflow.tasks.errors import UserError
from segflow.tasks.models.nets import SegNet, segnet_receptive_field
from segflow.tasks.models.params import ModelParams, SegNetParams
from segflow.tasks.models.torch_model import TorchModel, fill, load_state_dict


def _arch(params: dict[str, Any]) -> tuple[int, int, int]:
    base, depth, convs = (int(params.get(k, d)) for k, d in
                          (("base", 16), ("depth", 3), ("convs", 2)))
    for name, value in (("base", base), ("depth", depth), ("convs", convs)):
        if value < 1:
            raise UserError("model.params", f"segnet needs {name} >= 1, got {name}={value}")
    return base, depth, convs


class SegNetModel(TorchModel):
    """A SegNet whose architecture is ``model.params`` and whose weights are a state_dict."""

    kind = "segnet"
    Params = SegNetParams

    @classmethod
    def geometry(cls, params: ModelParams) -> tuple[int, int]:
        assert isinstance(params, SegNetParams)
        return segnet_receptive_field(params.depth, params.convs), 2**params.depth

    @classmethod
    def build(cls, weights: str, params: ModelParams, bands: int, ndim: int,
              classes: int | None) -> nn.Module:
        assert isinstance(params, SegNetParams)
        dims = params.dims or ndim
        if dims != 2 or ndim != 2:
            raise UserError(weights, f"segnet is 2-D (params.dims={dims}, the input has "
                                     f"{ndim} axes); use model.kind=unet for volumes")
        if not classes:
            raise UserError(weights, "segnet needs model.classes or model.params.num_classes")
        base, depth, convs = params.base, params.depth, params.convs
        net = SegNet(bands, classes, base=base, depth=depth, convs=convs)
        what = (f"a segnet (bands={bands}, classes={classes}, base={base}, depth={depth}, "
                f"convs={convs})")
        return fill(net, weights, load_state_dict(weights), what)
