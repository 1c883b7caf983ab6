"""Our fusion classifiers over the seven feature channels: NoduleFusionNet and NoduleHyperFusionNet.

Both take the full ``(B, 7, H, W)`` tensor of ``lungcad.features`` (channel order ``CHANNELS``)
and route channel groups to separate timm backbones, so they are interchangeable with the timm
classifiers. The paper describes them in words only (section 3.4.2, Figure 7); where it is silent
the choice below is ours and is marked "ours".

NoduleHyperFusionNet (paper: dual stream, EfficientNetV2 backbones, multi-stage features, channel
attention fusion at every stage, no cross-attention, aggregation, final conv block, GeM, linear head):

* global stream: channel 0 (global image) replicated to 3 channels, as the paper says;
  local stream: channels 2, 3, 4 (context crop, distance transform, edge map). Channels 1, 5 and 6
  are not used by this model (the paper lists no others).
* backbone ``tf_efficientnetv2_s``, ``features_only`` stages ``out_indices=(1, 2, 3, 4)``
  (strides 4-32); the two streams do not share weights (ours: they see different content).
* fusion at each stage (ours, selective-kernel style): global average pool both maps, concatenate,
  a two-layer bottleneck produces a logit per channel per stream, a softmax across the two streams
  turns them into weights, and the fused map is the weighted sum ``a_g * g + a_l * l``.
* aggregation (ours): each fused stage -> 1x1 conv-BN-SiLU to ``fusion_width`` channels ->
  average-pooled (fixed factor = stride ratio) to the coarsest stage's grid -> concatenated; then the final 3x3 conv-BN-SiLU
  block, GeM pooling (learnable p, init 3), dropout and a linear head.

Both take an optional ``size_channel`` (ours, off by default): the index of the constant
``nodule_size`` plane of ``lungcad.features.classifier_input``. Its value feeds a *size prior*, a
logistic regression on the measured size inside the network whose logit is added to the image
head's (``SizePrior``). ``lungcad train-cls`` fits it on the training slices before phase 1 and
the image head starts at zero, so training starts from "size alone" and the streams learn what size
does not explain. (Concatenating the standardised size to the 256 pooled image features instead
left it unused: its head weight stayed at 0.015-0.03, level with any image feature, in the two
357-patient runs of the README.)

NoduleFusionNet (paper: "multi-scale feature fusion from diverse input channels"; nothing more):

* three streams, one per scale of the seven channels (ours): global (channels 0, 1: slice and
  mask), local (2, 3, 4: context crop, distance, edges) and zoom (5, 6: zoomed texture and shape).
  Each stream is its own backbone whose stem takes the group's channel count through timm's
  ``in_chans`` (equivalent to zero-padding the group to 3 channels, but pretrained kernels are
  adapted by timm instead of meeting a dead channel). No weight sharing (ours: the scales differ).
* each stream is average-pooled and projected to ``embed_dim`` (Linear-LayerNorm-SiLU); an
  attention score per stream (tanh-gated, as in attention MIL) is softmaxed across the streams and
  the fused embedding is the weighted sum, followed by a two-layer MLP head with dropout.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LungcadError

HYPERFUSION_BACKBONE = "tf_efficientnetv2_s"
FUSION_BACKBONES = {"b0": "efficientnet_b0", "v2": "tf_efficientnetv2_b0"}


def _check_channels(in_chans: int, groups: Sequence[Sequence[int]], model: str) -> None:
    used = [c for group in groups for c in group]
    if not used or min(used) < 0 or max(used) >= in_chans:
        raise LungcadError(
            f"{model}: channel groups {tuple(map(tuple, groups))} do not fit an input of {in_chans} channels"
        )


class SizePrior(nn.Module):
    """Malignancy logit from the ``size_channel`` plane alone: ``w * (v - centre) / scale + b``, ``(B, 1)``.

    ``v`` is the plane's value (it is constant). ``centre`` and ``scale`` are buffers (saved with the
    weights): by default the value's middle and spread over 5-30 mm nodules, refitted with the prior
    by ``set_prior``. Built with ``w = b = 0``, so an unfitted model ignores size until trained.
    """

    def __init__(self, channel: int):
        super().__init__()
        self.channel = int(channel)
        self.register_buffer("centre", torch.tensor(0.4))
        self.register_buffer("scale", torch.tensor(0.1))
        self.linear = nn.Linear(1, 1)
        _zero_init(self.linear)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """The size value of each sample, ``(B, 1)``: one pixel of the constant plane.

        Not the plane's mean: float32 sums over thousands of pixels differ between torch and ONNX
        Runtime by about 1e-5, which the prior's ``w / scale`` (about 10) would amplify."""
        return x[:, self.channel, :1, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((self.value(x) - self.centre) / self.scale)

    @torch.no_grad()
    def set_prior(self, centre: float, scale: float, weight: float, bias: float) -> None:
        """Install a fitted logistic regression on the standardised value (``train/cls.py``)."""
        if not scale > 0:
            raise LungcadError(f"size prior: scale must be positive, got {scale}")
        self.centre.fill_(float(centre))
        self.scale.fill_(float(scale))
        self.linear.weight.fill_(float(weight))
        self.linear.bias.fill_(float(bias))


def _size_prior(in_chans: int, size_channel: int | None, groups: Sequence[Sequence[int]], model: str):
    """``SizePrior`` for ``size_channel`` (None: no size input); refuses a channel the streams read."""
    if size_channel is None:
        return None
    if not 0 <= int(size_channel) < in_chans or int(size_channel) in {c for g in groups for c in g}:
        raise LungcadError(f"{model}: size_channel {size_channel} must be one of the {in_chans} input channels "
                           "and not one a stream reads")
    return SizePrior(int(size_channel))


def _zero_init(layer: nn.Linear) -> None:
    """Zero weights and bias: an unfitted prior, or the image head beside a prior (the untrained
    model is then the prior)."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)


def _plus_size(logits: torch.Tensor, size: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return logits if size is None else logits + size(x)


def _select(x: torch.Tensor, channels: tuple[int, ...]) -> torch.Tensor:
    """The given channels of ``x``; a contiguous run is a slice (cheaper, and a plain Slice in ONNX)."""
    first = channels[0]
    if channels == tuple(range(first, first + len(channels))):
        return x[:, first : first + len(channels)]
    return x[:, list(channels)]


class GeM(nn.Module):
    """Generalised-mean pooling with a learnable exponent ``p`` (Radenovic et al.)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3))
        return pooled.pow(1.0 / self.p)


def conv_bn_act(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.SiLU(inplace=True),
    )


class StreamAttentionFusion(nn.Module):
    """Fuse two same-shape feature maps with per-channel weights that sum to one across streams."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(8, channels // reduction)
        self.gate = nn.Sequential(
            nn.Conv2d(2 * channels, hidden, 1),
            nn.SiLU(inplace=True),
            nn.Conv2d(hidden, 2 * channels, 1),
        )
        self.channels = channels

    def forward(self, g: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        squeezed = torch.cat([g.mean(dim=(2, 3), keepdim=True), loc.mean(dim=(2, 3), keepdim=True)], 1)
        logits = self.gate(squeezed).reshape(-1, 2, self.channels, 1, 1)
        weights = logits.softmax(dim=1)
        return weights[:, 0] * g + weights[:, 1] * loc


class NoduleHyperFusionNet(nn.Module):
    """Dual-stream (global / local) EfficientNetV2 classifier with stage-wise channel-attention fusion."""

    def __init__(
        self,
        in_chans: int = 7,
        num_classes: int = 1,
        pretrained: bool = False,
        backbone: str = HYPERFUSION_BACKBONE,
        out_indices: Sequence[int] = (1, 2, 3, 4),
        global_channels: Sequence[int] = (0,),
        local_channels: Sequence[int] = (2, 3, 4),
        fusion_width: int = 128,
        head_width: int = 256,
        drop_rate: float = 0.3,
        size_channel: int | None = None,
    ):
        super().__init__()
        _check_channels(in_chans, (global_channels, local_channels), "nodule-hyperfusionnet")
        self.size = _size_prior(in_chans, size_channel, (global_channels, local_channels), "nodule-hyperfusionnet")
        if len(local_channels) != 3 or len(global_channels) not in (1, 3):
            raise LungcadError("nodule-hyperfusionnet: the local stream takes 3 channels, the global 1 or 3")
        self.global_channels = tuple(global_channels)
        self.local_channels = tuple(local_channels)

        def stream() -> nn.Module:
            return timm.create_model(
                backbone, pretrained=pretrained, features_only=True, out_indices=tuple(out_indices), in_chans=3
            )

        self.global_stream = stream()
        self.local_stream = stream()
        widths = self.global_stream.feature_info.channels()
        reductions = self.global_stream.feature_info.reduction()
        # Fixed pooling factors bring every stage onto the coarsest grid (constant kernels export
        # to ONNX, unlike adaptive pooling to a traced size); ceil_mode matches the backbones'
        # ceil(H / stride) feature sizes when H is not a multiple of the coarsest stride.
        self.pool_factors = tuple(reductions[-1] // r for r in reductions)
        self.fusions = nn.ModuleList(StreamAttentionFusion(c) for c in widths)
        self.projections = nn.ModuleList(conv_bn_act(c, fusion_width, 1) for c in widths)
        self.final_block = conv_bn_act(fusion_width * len(widths), head_width, 3)
        self.pool = GeM()
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(head_width, num_classes)
        if self.size is not None:
            _zero_init(self.classifier)
        self.num_features = head_width

    def encoder_modules(self) -> list[nn.Module]:
        """The backbone streams: what ``freeze_encoder`` freezes (fusion and head stay trainable)."""
        return [self.global_stream, self.local_stream]

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        g = _select(x, self.global_channels)
        if len(self.global_channels) == 1:
            g = g.expand(-1, 3, -1, -1)  # the paper's "global image replicated to 3 channels"
        loc = _select(x, self.local_channels)
        stages = [
            project(fuse(gs, ls))
            for gs, ls, fuse, project in zip(
                self.global_stream(g), self.local_stream(loc), self.fusions, self.projections
            )
        ]
        stages = [
            F.avg_pool2d(s, k, stride=k, ceil_mode=True) if k > 1 else s
            for s, k in zip(stages, self.pool_factors)
        ]
        return self.final_block(torch.cat(stages, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.drop(self.pool(self.forward_features(x)))
        return _plus_size(self.classifier(pooled), self.size, x)


class NoduleFusionNet(nn.Module):
    """Three streams (global / local / zoom channel groups) fused by attention over their embeddings."""

    def __init__(
        self,
        in_chans: int = 7,
        num_classes: int = 1,
        pretrained: bool = False,
        backbone: str = FUSION_BACKBONES["b0"],
        groups: Sequence[Sequence[int]] = ((0, 1), (2, 3, 4), (5, 6)),
        embed_dim: int = 256,
        drop_rate: float = 0.3,
        size_channel: int | None = None,
    ):
        super().__init__()
        _check_channels(in_chans, groups, "nodulefusionnet")
        self.size = _size_prior(in_chans, size_channel, groups, "nodulefusionnet")
        self.groups = tuple(tuple(g) for g in groups)
        self.streams = nn.ModuleList(
            timm.create_model(backbone, pretrained=pretrained, in_chans=len(g), num_classes=0)
            for g in self.groups
        )
        self.embeds = nn.ModuleList(
            nn.Sequential(nn.Linear(s.num_features, embed_dim), nn.LayerNorm(embed_dim), nn.SiLU())
            for s in self.streams
        )
        self.attention = nn.Sequential(nn.Linear(embed_dim, embed_dim // 2), nn.Tanh(), nn.Linear(embed_dim // 2, 1))
        self.head = nn.Sequential(
            nn.Dropout(drop_rate),
            nn.Linear(embed_dim, embed_dim // 2),
            nn.SiLU(),
            nn.Dropout(drop_rate),
            nn.Linear(embed_dim // 2, num_classes),
        )
        if self.size is not None:
            _zero_init(self.head[-1])
        self.num_features = embed_dim

    def encoder_modules(self) -> list[nn.Module]:
        """The backbone streams: what ``freeze_encoder`` freezes (fusion and head stay trainable)."""
        return list(self.streams)

    def get_classifier(self) -> nn.Module:
        return self.head[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        embeddings = torch.stack(
            [embed(stream(_select(x, g))) for g, stream, embed in zip(self.groups, self.streams, self.embeds)],
            dim=1,
        )  # (B, streams, embed_dim)
        weights = self.attention(embeddings).softmax(dim=1)  # (B, streams, 1)
        return (weights * embeddings).sum(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _plus_size(self.head(self.forward_features(x)), self.size, x)
