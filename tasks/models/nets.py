"""The project's U-Net (Ronneberger et al. 2015), 2-D or 3-D, built so that tiling is exact.

BatchNorm (in eval mode a fixed per-channel affine map) keeps every output cell a function of a
bounded neighbourhood; InstanceNorm would make it depend on the whole tile. Inputs of any size
are zero-padded on their high side to a multiple of the stride and the output is cropped back,
so a tile on the image border sees exactly what a whole-image pass sees there.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

_LAYERS = {
    2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ConvTranspose2d),
    3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.ConvTranspose3d),
}


def unet_receptive_field(depth: int) -> int:
    """Radius in input cells of the context one output cell depends on, for any cell phase.

    Level ``l`` (cells 2**l wide) has two 3x3 convolutions in the encoder and two in the
    decoder (2**l each), the bottom level two; a 2x max-pool and the 2x transposed convolution
    that undoes it together reach at most 2**l - 1 cells further (the pooled cell's width).
    Verified against autograd in tests/test_deep_models.py.
    """
    convs = sum(4 * 2**level for level in range(depth)) + 2 * 2**depth
    phase = sum(2**level for level in range(depth))
    return convs + phase


class UNet(nn.Module):
    """Encoder-decoder with skip connections: ``depth`` poolings, ``base * 2**level`` channels."""

    def __init__(self, in_channels: int, classes: int, dims: int = 2, base: int = 16,
                 depth: int = 3) -> None:
        super().__init__()
        conv, norm, pool, up = _LAYERS[dims]

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(conv(cin, cout, 3, padding=1, bias=False), norm(cout),
                                 nn.ReLU(inplace=True),
                                 conv(cout, cout, 3, padding=1, bias=False), norm(cout),
                                 nn.ReLU(inplace=True))

        widths = [base * 2**level for level in range(depth + 1)]
        self.depth = depth
        self.encoders = nn.ModuleList(
            block(cin, cout) for cin, cout in zip([in_channels, *widths[:-2]], widths[:-1]))
        self.pool = pool(2)
        self.bottom = block(widths[-2], widths[-1])
        self.ups = nn.ModuleList(up(widths[i + 1], widths[i], 2, stride=2)
                                 for i in reversed(range(depth)))
        self.decoders = nn.ModuleList(block(2 * widths[i], widths[i])
                                      for i in reversed(range(depth)))
        self.head = conv(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        step = 2**self.depth
        pad: list[int] = []
        for n in reversed(size):  # F.pad lists the last axis first: (low, high) per axis
            pad += [0, -n % step]
        x = F.pad(x, pad)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = decoder(torch.cat([up(x), skip], dim=1))
        logits = self.head(x)
        return logits[(..., *(slice(0, n) for n in size))]
