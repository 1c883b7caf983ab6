"""The segmentation zoo: an explicit registry and one factory, ``create_segmenter``.

Every model maps ``(B, in_channels, H, W)`` to logits ``(B, classes, H, W)`` for H, W multiples of 32.

- ``unar``: the paper's UNAR (UNet++ + attention gates + ResNet34d), ours, see ``unar.py``.
- ``res34-unetv2``: ResNet34 + U-Net v2 SDI decoder, ours, see ``unetv2.py``.
- ``segformer``: ``smp.Segformer`` on the ``mit_b0`` Mix Transformer encoder (SegFormer's own
  hierarchical transformer, the smallest variant: about 3.7M parameters); its all-MLP decoder works at
  stride 4 and smp's head upsamples by 4, so the logits are at full resolution.
- ``unetplusplus``: ``smp.UnetPlusPlus`` on ResNet34.
- ``deeplabv3plus``: ``smp.DeepLabV3Plus`` on ResNet34.
- ``lightunet``: a small depthwise-separable U-Net for fast CPU inference, ours, see ``lightunet.py``.

``pretrained=True`` asks the encoder library for ImageNet weights (smp ``encoder_weights="imagenet"``,
timm ``pretrained=True``), which downloads; ``weights=PATH`` loads a local file instead and never
downloads (it takes precedence over ``pretrained``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import segmentation_models_pytorch as smp
from torch import nn

from ..errors import LungcadError
from .common import drop_none, load_weights, unknown_arch_error
from .lightunet import LightUNet
from .unar import UNAR
from .unetv2 import Res34UNetV2

Builder = Callable[..., nn.Module]  # builder(in_channels, classes, pretrained, **kwargs) -> nn.Module


def _smp_builder(cls: type, **defaults) -> Builder:
    """A builder for an smp architecture; ``defaults`` may be overridden by the caller's kwargs."""

    def build(in_channels: int, classes: int, pretrained: bool, **kwargs) -> nn.Module:
        options = {**defaults, **kwargs}
        return cls(
            in_channels=in_channels,
            classes=classes,
            encoder_weights="imagenet" if pretrained else None,
            **options,
        )

    build.__doc__ = f"smp.{cls.__name__} with defaults {defaults}"
    return build


def _build_unar(in_channels: int, classes: int, pretrained: bool, **kwargs) -> nn.Module:
    return UNAR(in_channels=in_channels, classes=classes, pretrained=pretrained, **kwargs)


def _build_res34_unetv2(in_channels: int, classes: int, pretrained: bool, **kwargs) -> nn.Module:
    return Res34UNetV2(in_channels=in_channels, classes=classes, pretrained=pretrained, **kwargs)


def _build_lightunet(in_channels: int, classes: int, pretrained: bool, **kwargs) -> nn.Module:
    if pretrained:
        raise LungcadError("lightunet has no pretrained weights; train it or pass weights=PATH")
    return LightUNet(in_channels=in_channels, classes=classes, **kwargs)


SEGMENTERS: dict[str, Builder] = {
    "unar": _build_unar,
    "res34-unetv2": _build_res34_unetv2,
    "segformer": _smp_builder(smp.Segformer, encoder_name="mit_b0"),
    "unetplusplus": _smp_builder(smp.UnetPlusPlus, encoder_name="resnet34"),
    "deeplabv3plus": _smp_builder(smp.DeepLabV3Plus, encoder_name="resnet34"),
    "lightunet": _build_lightunet,
}

# AdamW learning rates. The paper (Table 4) gives only 4e-4 for UNAR and 1e-4 for Res34UNetV2;
# the other values are our choices (not from the paper): a lower rate for the transformer encoder,
# 3e-4 for the ResNet34 smp models, and a high rate for the small LightUNet trained from scratch.
DEFAULT_LR: dict[str, float] = {
    "unar": 4e-4,
    "res34-unetv2": 1e-4,
    "segformer": 2e-4,
    "unetplusplus": 3e-4,
    "deeplabv3plus": 3e-4,
    "lightunet": 1e-3,
}


def create_segmenter(
    name: str,
    in_channels: int = 1,
    classes: int = 1,
    pretrained: bool = False,
    weights: str | Path | None = None,
    **kwargs,
) -> nn.Module:
    """Build the registered segmenter ``name``.

    Args:
        name: a key of ``SEGMENTERS``.
        in_channels: input channels (1 for a CT slice).
        classes: output logit channels.
        pretrained: ImageNet encoder weights through the encoder library (downloads).
        weights: a local ``.safetensors`` or ``torch.save``'d state dict to load (strict).
        **kwargs: architecture options; ``None`` values are dropped so they never override a default.

    Raises:
        LungcadError: unknown name, invalid options, or a weights file that does not fit the model.
    """
    if name not in SEGMENTERS:
        raise unknown_arch_error("segmenter", name, SEGMENTERS)
    kwargs = drop_none(kwargs)
    try:
        model = SEGMENTERS[name](in_channels, classes, bool(pretrained) and weights is None, **kwargs)
    except TypeError as exc:  # an option the architecture does not take
        raise LungcadError(f"segmenter {name!r}: invalid options {sorted(kwargs)} ({exc})") from exc
    if weights is not None:
        load_weights(model, weights, strict=True)
    return model
