"""LightUNet: a small U-Net of depthwise-separable convolutions for cheap CPU inference.

Not in the paper: it is our fast baseline (a few hundred thousand parameters). Each block is two
depthwise-separable units (depthwise 3x3 + pointwise 1x1 + BatchNorm + ReLU); the very first unit is a
plain 3x3 convolution because a depthwise filter on a one-channel CT slice would be a single kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import check_input_size, init_decoder


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1 + BatchNorm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SeparableBlock(nn.Sequential):
    """Two units; the first is a plain 3x3 convolution when ``plain_first`` (the network's stem)."""

    def __init__(self, in_channels: int, out_channels: int, plain_first: bool = False):
        first = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            )
            if plain_first
            else SeparableConv(in_channels, out_channels)
        )
        super().__init__(first, SeparableConv(out_channels, out_channels))


class LightUNet(nn.Module):
    """U-Net with ``levels`` downsamplings; channels double per level from ``base_channels``.

    Args:
        in_channels: input channels.
        classes: output channels (logits).
        base_channels: width of the full-resolution level.
        levels: number of 2x downsamplings (the bottleneck is at stride ``2**levels``).
    """

    def __init__(self, in_channels: int = 1, classes: int = 1, base_channels: int = 16, levels: int = 4):
        super().__init__()
        widths = [base_channels * 2**i for i in range(levels + 1)]
        self.down = nn.ModuleList(
            SeparableBlock(in_channels if i == 0 else widths[i - 1], width, plain_first=i == 0)
            for i, width in enumerate(widths)
        )
        self.up = nn.ModuleList(
            SeparableBlock(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(levels))
        )
        self.head = nn.Conv2d(base_channels, classes, 1)
        init_decoder(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, 2 ** (len(self.down) - 1))
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], 1))
        return self.head(x)
