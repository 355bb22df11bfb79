"""The project's U-Net (tasks/models/nets.py) from a state_dict: 2-D images or 3-D volumes.

Params: ``dims`` 2 or 3 (default: the input's spatial axes), ``base`` channels at full
resolution (default 16), ``depth`` poolings (default 3), ``num_classes`` when ``model.classes``
is empty. Receptive field: 7 * 2**depth - 5 cells (51 at depth 3, 23 at
depth 2); stride 2**depth. With BatchNorm (local in eval mode) and halo >= receptive field, the
mask does not depend on the chunk or tile size.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from segflow.tasks.errors import UserError
from segflow.tasks.models.nets import UNet, unet_receptive_field
from segflow.tasks.models.torch_model import TorchModel, fill, load_state_dict


def _arch(params: dict[str, Any]) -> tuple[int, int]:
    return int(params.get("base", 16)), int(params.get("depth", 3))


class UNetModel(TorchModel):
    """A U-Net whose architecture is ``model.params`` and whose weights are a state_dict."""

    kind = "unet"

    @classmethod
    def geometry(cls, params: dict[str, Any]) -> tuple[int, int]:
        depth = _arch(params)[1]
        return unet_receptive_field(depth), 2**depth

    @classmethod
    def build(cls, weights: str, params: dict[str, Any], bands: int, ndim: int,
              classes: int | None) -> nn.Module:
        dims = int(params.get("dims", ndim))
        if dims != ndim:
            raise UserError(weights, f"params.dims={dims} but the input has {ndim} axes")
        if not classes:
            raise UserError(weights, "unet needs model.classes or model.params.num_classes")
        base, depth = _arch(params)
        net = UNet(bands, classes, dims=dims, base=base, depth=depth)
        what = f"a {dims}-D unet (bands={bands}, classes={classes}, base={base}, depth={depth})"
        return fill(net, weights, load_state_dict(weights), what)
