"""Res34-UNetV2: a ResNet34 encoder with a U-Net v2 decoder (Peng et al. 2023, "U-Net v2: rethinking
the skip connections of U-Net for medical image segmentation").

U-Net v2 replaces each plain skip connection by Semantics and Detail Infusion (SDI): the skip of
level ``i`` is built from *all* encoder levels, so it carries both the semantics of the deep levels and
the detail of the shallow ones. For every target level ``i``:

1. each encoder feature ``f_j`` is refined by channel then spatial attention (CBAM style) and projected
   to a common width ``c`` by a 1x1 convolution (done once per encoder level);
2. each ``f_j`` is resized to the resolution of level ``i`` (average pooling when finer, bilinear
   upsampling when coarser, identity when equal) and smoothed by its own 3x3 convolution;
3. the resized maps are combined by Hadamard (element-wise) product.

A simple decoder then goes from the deepest level upwards: upsample, add the SDI skip, ConvBlock.

Where we simplified or adapted (the original uses a PVT encoder with four levels):
- all five ResNet levels (strides 2 to 32) take part, so the stride-2 stem feature feeds SDI too;
- the 3x3 smoothing conv is followed by BatchNorm, so every factor of the product is normalised and
  the product of five factors stays in float16 range under mixed precision;
- one output head at the input resolution, without the original's deep supervision.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .common import check_input_size, init_decoder
from .unar import ConvBlock

DEFAULT_SDI_CHANNELS = 32


class ChannelAttention(nn.Module):
    """CBAM channel attention: a shared MLP on the global average- and max-pooled features."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        peak = self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: a 7x7 convolution on the channel-wise mean and max maps."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.conv(stats))


class SDI(nn.Module):
    """Semantics and Detail Infusion for one target level: resize, smooth, Hadamard product."""

    def __init__(self, channels: int, num_levels: int, target_level: int):
        super().__init__()
        self.target_level = target_level
        self.smooth = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
            for _ in range(num_levels)
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        target = features[self.target_level]
        out = None
        for level, (feature, smooth) in enumerate(zip(features, self.smooth)):
            if level < self.target_level:  # finer: exact average pooling (sizes are multiples of 32)
                factor = 2 ** (self.target_level - level)
                feature = F.avg_pool2d(feature, factor)
            elif level > self.target_level:  # coarser
                feature = F.interpolate(feature, size=target.shape[-2:], mode="bilinear", align_corners=False)
            feature = smooth(feature)
            out = feature if out is None else out * feature
        return out


class UNetV2Decoder(nn.Module):
    """SDI skips for every level, then upsample-add-ConvBlock from the deepest level upwards.

    Args:
        encoder_channels: channels of the encoder features, finest first; their strides must double
            from one level to the next.
        channels: the common width ``c`` of the SDI features and of the decoder.
    """

    def __init__(self, encoder_channels: list[int] | tuple[int, ...], channels: int = DEFAULT_SDI_CHANNELS):
        super().__init__()
        levels = len(encoder_channels)
        self.attention = nn.ModuleList(
            nn.Sequential(ChannelAttention(ch), SpatialAttention()) for ch in encoder_channels
        )
        self.project = nn.ModuleList(
            nn.Sequential(nn.Conv2d(ch, channels, 1, bias=False), nn.BatchNorm2d(channels))
            for ch in encoder_channels
        )
        self.sdi = nn.ModuleList(SDI(channels, levels, target) for target in range(levels))
        self.blocks = nn.ModuleList(ConvBlock(channels, channels) for _ in range(levels))
        self.out_channels = channels
        init_decoder(self)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Return the decoded map at the finest encoder level's resolution."""
        projected = [proj(att(f)) for f, att, proj in zip(features, self.attention, self.project)]
        skips = [sdi(projected) for sdi in self.sdi]
        x = self.blocks[-1](skips[-1])
        for skip, block in zip(reversed(skips[:-1]), reversed(self.blocks[:-1])):
            x = block(F.interpolate(x, size=skip.shape[-2:], mode="nearest") + skip)
        return x


class Res34UNetV2(nn.Module):
    """ResNet34 encoder (timm ``features_only``) with the U-Net v2 SDI decoder.

    Args:
        in_channels: input channels (timm adapts the stem).
        classes: output channels (logits).
        pretrained: ask timm for its ImageNet encoder weights (downloads; never in tests).
        encoder_name: timm model with ``features_only`` support (default ``resnet34``).
        channels: the common SDI/decoder width.
    """

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 1,
        pretrained: bool = False,
        encoder_name: str = "resnet34",
        channels: int = DEFAULT_SDI_CHANNELS,
    ):
        super().__init__()
        self.encoder = timm.create_model(
            encoder_name, features_only=True, pretrained=pretrained, in_chans=in_channels
        )
        self.decoder = UNetV2Decoder(self.encoder.feature_info.channels(), channels)
        self.head = nn.Conv2d(channels, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x)
        decoded = self.decoder(self.encoder(x))
        return F.interpolate(self.head(decoded), size=x.shape[-2:], mode="bilinear", align_corners=False)
