"""The project's U-Net (tasks/models/nets.py) from a state_dict: 2-D images or 3-D volumes.

Params: ``dims`` 2 or 3 (default: the input's spatial axes), ``base`` channels at full
resolution (default 16), ``depth`` poolings (default 3), ``num_classes`` when ``model.classes``
is empty. Receptive field: 7 * 2**depth - 5 cells (51 at depth 3, 23 at
depth 2); stride 2**depth. With BatchNorm (local in eval mode) and halo >= receptive field, the
mask does not depend on the chunk or tile size.
"""

from __future__ import annotations

from torch import nn

from segflow.tasks.errors import UserError
from segflow.tasks.models.nets import UNet, unet_receptive_field
from segflow.tasks.models.params import ModelParams, UNetParams
from segflow.tasks.models.torch_model import TorchModel, fill, load_state_dict


class UNetModel(TorchModel):
    """A U-Net whose architecture is ``model.params`` and whose weights are a state_dict."""

    kind = "unet"
    Params = UNetParams

    @classmethod
    def geometry(cls, params: ModelParams) -> tuple[int, int]:
        assert isinstance(params, UNetParams)
        return unet_receptive_field(params.depth), 2**params.depth

    @classmethod
    def build(cls, weights: str, params: ModelParams, bands: int, ndim: int,
              classes: int | None) -> nn.Module:
        assert isinstance(params, UNetParams)
        dims = params.dims or ndim
        if dims != ndim:
            raise UserError(weights, f"params.dims={dims} but the input has {ndim} axes")
        if not classes:
            raise UserError(weights, "unet needs model.classes or model.params.num_classes")
        base, depth = params.base, params.depth
        net = UNet(bands, classes, dims=dims, base=base, depth=depth)
        what = f"a {dims}-D unet (bands={bands}, classes={classes}, base={base}, depth={depth})"
        return fill(net, weights, load_state_dict(weights), what)
