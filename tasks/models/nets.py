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


def segnet_receptive_field(depth: int, convs: int = 2) -> int:
    """SegNet's radius in input cells of the context one output cell depends on, any phase.

    Level ``l`` (cells 2**l wide) has ``convs`` 3x3 convolutions in the encoder and ``convs`` in
    the decoder, each reaching 2**l cells. A 2x2 max-pool and the max-unpool that undoes it
    together reach at most 2**l - 1 cells further (the pooled cell's width less the cell's own):
    the unpooled cell takes its value from the pooled cell over its window, and whether it gets
    it (the argmax index) from the encoder's cells in that same window, which the value already
    depends on. In sum ``2 * convs * (2**depth - 1) + 2**depth - 1``; at the default
    ``convs=2``, ``5 * (2**depth - 1)`` (35 at depth 3). Verified against autograd, and against
    perturbing every input cell beyond it (which also covers the argmax), in
    tests/test_deep_models.py.
    """
    return (2 * convs + 1) * (2**depth - 1)


class SegNet(nn.Module):
    """SegNet (Badrinarayanan et al. 2017), 2-D: ``depth`` encoder stages of ``convs``
    conv-BN-ReLU blocks and a 2x2 max-pool that keeps its argmax indices; the decoder
    max-unpools with those indices, then ``convs`` conv-BN-ReLU blocks; a 1x1 head. Stage
    ``level`` has ``base * 2**level`` channels. Padded like ``UNet`` so that tiling is exact.
    """

    def __init__(self, in_channels: int, classes: int, base: int = 16, depth: int = 3,
                 convs: int = 2) -> None:
        super().__init__()

        def block(chans: list[int]) -> nn.Sequential:
            layers: list[nn.Module] = []
            for cin, cout in zip(chans[:-1], chans[1:]):
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                           nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        widths = [base * 2**level for level in range(depth)]
        self.depth = depth
        self.encoders = nn.ModuleList(block([cin] + [cout] * convs)
                                      for cin, cout in zip([in_channels, *widths[:-1]], widths))
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)
        # the decoder mirrors the encoder: a stage's last convolution narrows to the next one's
        self.decoders = nn.ModuleList(block([widths[i]] * convs + [widths[max(i - 1, 0)]])
                                      for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        step = 2**self.depth
        x = F.pad(x, [0, -size[1] % step, 0, -size[0] % step])  # (low, high), last axis first
        indices = []
        for encoder in self.encoders:
            x, index = self.pool(encoder(x))
            indices.append(index)
        for decoder, index in zip(self.decoders, reversed(indices)):
            x = decoder(self.unpool(x, index))
        logits = self.head(x)
        return logits[..., :size[0], :size[1]]
