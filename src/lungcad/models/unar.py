"""UNAR: UNet++ nested decoder with an attention gate on every skip, on a ResNet34d encoder.

The paper (section 3.4.1, Figure 2) describes UNAR as UNet++ [Zhou et al. 2018] whose skip connections
each pass through an attention gate [Oktay et al. 2018, Attention U-Net] on a ResNet34d backbone.

Nodes follow UNet++ notation: ``X[i][0]`` is the encoder feature at level ``i`` (stride ``2**(i+1)``)
and, for ``j >= 1``::

    X[i][j] = ConvBlock(concat(gate(X[i][0], g), ..., gate(X[i][j-1], g), up(g)))   with g = X[i+1][j-1]

so every dense skip ``X[i][k] -> X[i][j]`` is rescaled by its own ``AttentionGate`` driven by the
coarser node. The last node of the top row, ``X[0][L-1]`` (stride 2), is upsampled to the input
resolution, refined by one more ``ConvBlock`` and mapped to ``classes`` logits by a 1x1 convolution.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .common import check_input_size, init_decoder

DEFAULT_DECODER_CHANNELS = (32, 64, 128, 256)  # nested-node width per level, finest first
DEFAULT_FINAL_CHANNELS = 16


def upsample_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour upsampling of ``x`` to the spatial size of ``ref`` (deterministic on GPU too)."""
    return F.interpolate(x, size=ref.shape[-2:], mode="nearest")


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by BatchNorm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class AttentionGate(nn.Module):
    """Additive attention gate of Attention U-Net.

    The skip features ``x`` and the gating signal ``g`` (from a coarser node) are projected by 1x1
    convolutions to ``inter_channels``; the projected gate is upsampled to the skip's size, the two are
    added, passed through ReLU and a 1x1 convolution to one channel, and a sigmoid gives the per-pixel
    coefficient in (0, 1) that rescales ``x``. Projecting before upsampling is cheaper and equivalent
    (a 1x1 convolution commutes with nearest upsampling).
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int | None = None):
        super().__init__()
        inter_channels = inter_channels or max(skip_channels // 2, 8)
        self.skip_proj = nn.Sequential(
            nn.Conv2d(skip_channels, inter_channels, 1, bias=False), nn.BatchNorm2d(inter_channels)
        )
        self.gate_proj = nn.Sequential(
            nn.Conv2d(gate_channels, inter_channels, 1, bias=False), nn.BatchNorm2d(inter_channels)
        )
        self.psi = nn.Sequential(nn.Conv2d(inter_channels, 1, 1), nn.BatchNorm2d(1))

    def coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The attention map ``(B, 1, H, W)`` in (0, 1) for skip ``x`` under gate ``g``."""
        gate = upsample_to(self.gate_proj(g), x)
        return torch.sigmoid(self.psi(F.relu(self.skip_proj(x) + gate)))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * self.coefficients(x, g)


class UNARDecoder(nn.Module):
    """UNet++ nested decoder with an ``AttentionGate`` on every dense skip connection.

    Args:
        encoder_channels: channels of the encoder features, finest (stride 2) first.
        decoder_channels: width of the nested nodes at each level except the deepest, finest first.
        final_channels: width of the full-resolution block after the top row.
    """

    def __init__(
        self,
        encoder_channels: list[int] | tuple[int, ...],
        decoder_channels: list[int] | tuple[int, ...] = DEFAULT_DECODER_CHANNELS,
        final_channels: int = DEFAULT_FINAL_CHANNELS,
    ):
        super().__init__()
        self.depth = len(encoder_channels)
        if len(decoder_channels) != self.depth - 1:
            raise ValueError(
                f"decoder_channels needs {self.depth - 1} values (one per level but the deepest), "
                f"got {len(decoder_channels)}"
            )
        self.encoder_channels = list(encoder_channels)
        self.decoder_channels = list(decoder_channels)
        self.out_channels = final_channels

        self.nodes = nn.ModuleDict()
        self.gates = nn.ModuleDict()
        for i, j in self.node_order():
            gate_ch = self.node_channels(i + 1, j - 1)
            skip_chs = [self.node_channels(i, k) for k in range(j)]
            for k, skip_ch in enumerate(skip_chs):
                self.gates[self._gate_key(i, j, k)] = AttentionGate(skip_ch, gate_ch)
            self.nodes[self._node_key(i, j)] = ConvBlock(sum(skip_chs) + gate_ch, decoder_channels[i])
        self.final = ConvBlock(decoder_channels[0], final_channels)
        init_decoder(self)

    def node_order(self) -> list[tuple[int, int]]:
        """The nested nodes ``(i, j)``, ``j >= 1``, in an order where every input is computed first."""
        return [(i, j) for j in range(1, self.depth) for i in range(self.depth - j)]

    def node_channels(self, i: int, j: int) -> int:
        return self.encoder_channels[i] if j == 0 else self.decoder_channels[i]

    @property
    def num_skip_connections(self) -> int:
        """Dense skips of the grid: node ``X[i][j]`` receives ``j`` of them."""
        return sum(j for _, j in self.node_order())

    @staticmethod
    def _node_key(i: int, j: int) -> str:
        return f"x_{i}_{j}"

    @staticmethod
    def _gate_key(i: int, j: int, k: int) -> str:
        return f"x_{i}_{k}_to_x_{i}_{j}"

    def forward_grid(self, features: list[torch.Tensor]) -> dict[tuple[int, int], torch.Tensor]:
        """All nodes ``X[i][j]`` of the grid, the encoder features included as ``X[i][0]``."""
        grid = {(i, 0): feature for i, feature in enumerate(features)}
        for i, j in self.node_order():
            gate = grid[(i + 1, j - 1)]
            skips = [self.gates[self._gate_key(i, j, k)](grid[(i, k)], gate) for k in range(j)]
            inputs = torch.cat([*skips, upsample_to(gate, skips[0])], 1)
            grid[(i, j)] = self.nodes[self._node_key(i, j)](inputs)
        return grid

    def finish(self, grid: dict[tuple[int, int], torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        """Upsample the last top-row node ``X[0][L-1]`` to ``out_size`` and refine it."""
        return self.final(F.interpolate(grid[(0, self.depth - 1)], size=out_size, mode="nearest"))

    def forward(self, features: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        """Decode the encoder ``features`` into a full-resolution feature map of size ``out_size``."""
        return self.finish(self.forward_grid(features), out_size)


class UNAR(nn.Module):
    """UNet++ with attention gates on a ResNet34d encoder (the paper's best segmenter).

    Args:
        in_channels: input channels (timm adapts the stem; 1 for CT slices).
        classes: output channels (logits).
        pretrained: ask timm for its ImageNet weights of the encoder (downloads; never in tests).
        encoder_name: any timm model with ``features_only`` support and five feature levels
            (default ``resnet34d``, the paper's choice).
        decoder_channels: nested-node width per level, finest first (one value per level but the deepest).
        final_channels: width of the full-resolution block.
        deep_supervision: add a 1x1 head on every top-row node ``X[0][j]``; ``forward`` then returns the
            mean of all heads' logits (the UNet++ paper's averaged mode) and ``forward_heads`` returns
            the list, for a trainer that wants one loss per head.
    """

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 1,
        pretrained: bool = False,
        encoder_name: str = "resnet34d",
        decoder_channels: tuple[int, ...] = DEFAULT_DECODER_CHANNELS,
        final_channels: int = DEFAULT_FINAL_CHANNELS,
        deep_supervision: bool = False,
    ):
        super().__init__()
        self.encoder = timm.create_model(
            encoder_name, features_only=True, pretrained=pretrained, in_chans=in_channels
        )
        encoder_channels = self.encoder.feature_info.channels()
        self.decoder = UNARDecoder(encoder_channels, tuple(decoder_channels), final_channels)
        self.head = nn.Conv2d(final_channels, classes, 1)
        self.deep_supervision = deep_supervision
        self.aux_heads = None
        if deep_supervision:  # one head per top-row node X[0][j] before the last
            aux_count = self.decoder.depth - 2
            width = decoder_channels[0]
            self.aux_heads = nn.ModuleList(nn.Conv2d(width, classes, 1) for _ in range(aux_count))

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every head at input resolution: the main head last, the auxiliary ones first."""
        check_input_size(x)
        features = self.encoder(x)
        grid = self.decoder.forward_grid(features)
        size = x.shape[-2:]
        main = self.head(self.decoder.finish(grid, size))
        if self.aux_heads is None:
            return [main]
        aux = [
            F.interpolate(head(grid[(0, j)]), size=size, mode="bilinear", align_corners=False)
            for j, head in enumerate(self.aux_heads, start=1)
        ]
        return [*aux, main]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = self.forward_heads(x)
        return heads[0] if len(heads) == 1 else torch.stack(heads).mean(0)
