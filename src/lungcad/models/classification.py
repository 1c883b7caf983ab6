"""The malignancy classifier zoo: eleven architectures over the seven-channel input.

One explicit registry ``CLASSIFIERS`` and one factory ``create_classifier`` (smp's habit). The
eight timm backbones take the seven channels through timm's ``in_chans`` (which builds, or with
``pretrained=True`` adapts, the stem convolution); the three fusion models of ``fusion.py`` route
channel groups to their own streams. Every model maps ``(B, in_chans, 224, 224)`` to logits
``(B, num_classes)``.

``freeze_encoder`` implements the paper's "encoder frozen for the first N epochs" (Table 5) for
every registered model.
"""

from __future__ import annotations

from collections.abc import Callable

import timm
from torch import nn

from ..features import SIZE_CHANNEL
from .common import drop_none, load_weights, unknown_arch_error
from .fusion import FUSION_BACKBONES, HYPERFUSION_BACKBONE, NoduleFusionNet, NoduleHyperFusionNet

IMAGE_SIZE = 224  # Table 5: input size of the multi-channel classifiers

# Our architecture name -> the exact timm model it builds.
TIMM_NAMES = {
    "efficientnet-b3": "efficientnet_b3",
    "maxvit-tiny": "maxvit_tiny_tf_224",
    "maxvit-large": "maxvit_large_tf_224",
    "vit-small": "vit_small_patch16_224",
    "convnext-tiny": "convnext_tiny",
    "efficientnetv2-s": "tf_efficientnetv2_s",
    "coatnet-0": "coatnet_0_rw_224",
    "mobilenetv3-large": "mobilenetv3_large_100",
}
# Transformer-style models are built for a fixed input size (position tables, window partitions).
FIXED_SIZE = {"maxvit-tiny", "maxvit-large", "vit-small", "coatnet-0"}

# Backbones of the fusion models (see fusion.py).
FUSION_TIMM_NAMES = {
    "nodulefusionnet-b0": FUSION_BACKBONES["b0"],
    "nodulefusionnet-v2": FUSION_BACKBONES["v2"],
    "nodule-hyperfusionnet": HYPERFUSION_BACKBONE,
}

# With the nodule_size plane in the input (``size_input``), these read it at their head
# (``size_channel``); a timm model takes it as one more input plane.
SIZE_HEAD = {arch: SIZE_CHANNEL for arch in FUSION_TIMM_NAMES}

# Base learning rates per training phase. Table 5 gives 3e-4 (phase 1) and 2e-4 (phase 2) as
# examples of "model-specific" rates; the lower rates for the attention models are our choice
# (the usual fine-tuning rates for ViT/MaxViT/CoAtNet with AdamW), not the paper's.
_CNN_LR = {1: 3e-4, 2: 2e-4}
_ATTENTION_LR = {1: 1e-4, 2: 5e-5}


def _timm_builder(arch: str) -> Callable[..., nn.Module]:
    timm_name = TIMM_NAMES[arch]

    def build(in_chans: int = 7, num_classes: int = 1, pretrained: bool = False, **kwargs) -> nn.Module:
        if arch in FIXED_SIZE:
            kwargs.setdefault("img_size", IMAGE_SIZE)
        return timm.create_model(
            timm_name, pretrained=pretrained, in_chans=in_chans, num_classes=num_classes, **kwargs
        )

    build.__doc__ = f"timm ``{timm_name}`` with ``in_chans`` input channels."
    return build


def _fusion_builder(cls: type[nn.Module], backbone: str) -> Callable[..., nn.Module]:
    def build(in_chans: int = 7, num_classes: int = 1, pretrained: bool = False, **kwargs) -> nn.Module:
        kwargs.setdefault("backbone", backbone)
        return cls(in_chans=in_chans, num_classes=num_classes, pretrained=pretrained, **kwargs)

    build.__doc__ = f"{cls.__name__} on ``{backbone}`` streams."
    return build


CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {
    **{arch: _timm_builder(arch) for arch in TIMM_NAMES},
    "nodulefusionnet-b0": _fusion_builder(NoduleFusionNet, FUSION_TIMM_NAMES["nodulefusionnet-b0"]),
    "nodulefusionnet-v2": _fusion_builder(NoduleFusionNet, FUSION_TIMM_NAMES["nodulefusionnet-v2"]),
    "nodule-hyperfusionnet": _fusion_builder(NoduleHyperFusionNet, FUSION_TIMM_NAMES["nodule-hyperfusionnet"]),
}

DEFAULT_LR: dict[str, dict[int, float]] = {
    arch: dict(_ATTENTION_LR if arch in FIXED_SIZE else _CNN_LR) for arch in CLASSIFIERS
}


def create_classifier(
    name: str,
    in_chans: int = 7,
    num_classes: int = 1,
    pretrained: bool = False,
    weights: str | None = None,
    drop_rate: float | None = None,
    **kwargs,
) -> nn.Module:
    """Build the registered classifier ``name``; it returns logits ``(B, num_classes)``.

    ``pretrained=True`` asks timm for ImageNet weights (its own download; never done by default).
    ``weights`` is a local state-dict file (safetensors or torch) loaded strictly after building.
    Keyword arguments that are ``None`` are dropped, so a CLI default never overrides a model's.
    """
    if name not in CLASSIFIERS:
        raise unknown_arch_error("classifier", name, CLASSIFIERS)
    kwargs = drop_none({**kwargs, "drop_rate": drop_rate})
    model = CLASSIFIERS[name](
        in_chans=in_chans, num_classes=num_classes, pretrained=bool(pretrained) and weights is None, **kwargs
    )
    if weights is not None:
        load_weights(model, weights)
    return model


# ---------------------------------------------------------------------------------------------
# encoder freezing (Table 5: "Encoder Freeze: first 7 / 10 epochs")


def head_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that stay trainable while the encoder is frozen.

    Fusion models name their encoder (``encoder_modules()``): everything else (fusion blocks, final
    block, head) is new and trains. For timm models the head is ``model.head`` when it is a module
    that contains the classifier (ConvNeXt, MaxViT, CoAtNet keep a norm/pre-logits there), else
    ``get_classifier()`` alone (EfficientNet, MobileNetV3, ViT).
    """
    if hasattr(model, "encoder_modules"):
        encoder_params = {id(p) for m in model.encoder_modules() for p in m.parameters()}
        return [
            m
            for m in model.children()
            if not any(id(p) in encoder_params for p in m.parameters())
        ]
    classifier = model.get_classifier()
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module) and any(m is classifier for m in head.modules()):
        return [head]
    return [classifier]


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of ``head_modules(model)``."""
    return [p for m in head_modules(model) for p in m.parameters()]


def encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter that is not a head parameter."""
    head = {id(p) for p in head_parameters(model)}
    return [p for p in model.parameters() if id(p) not in head]


def _encoder_norms(model: nn.Module) -> list[nn.Module]:
    head = {id(m) for h in head_modules(model) for m in h.modules()}
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in head
    ]


def _keep_frozen_norms_in_eval(model: nn.Module, inputs) -> None:
    # model.train() puts every BatchNorm back in training mode; undo it for the frozen ones before
    # each forward so their running statistics stay those of the (pretrained) encoder.
    if model.training:
        for norm in model._lungcad_frozen_norms:
            norm.eval()


def freeze_encoder(model: nn.Module, frozen: bool = True) -> nn.Module:
    """Freeze (or unfreeze) everything but the head of a registered classifier; returns ``model``.

    Frozen: encoder parameters get ``requires_grad=False`` and the encoder's BatchNorm layers run
    in eval mode, even after ``model.train()`` (a forward pre-hook re-applies it), so neither their
    weights nor their running statistics change. Unfrozen: everything trains again.
    """
    handle = getattr(model, "_lungcad_freeze_hook", None)
    if handle is not None:
        handle.remove()
        model._lungcad_freeze_hook = None
    for p in encoder_parameters(model):
        p.requires_grad_(not frozen)
    for p in head_parameters(model):
        p.requires_grad_(True)
    norms = _encoder_norms(model)
    if frozen:
        model._lungcad_frozen_norms = norms
        model._lungcad_freeze_hook = model.register_forward_pre_hook(_keep_frozen_norms_in_eval)
        for norm in norms:
            norm.eval()
    else:
        model._lungcad_frozen_norms = []
        for norm in norms:
            norm.train(model.training)
    return model


def is_encoder_frozen(model: nn.Module) -> bool:
    """True while ``freeze_encoder(model)`` is in effect."""
    return getattr(model, "_lungcad_freeze_hook", None) is not None


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "CLASSIFIERS",
    "DEFAULT_LR",
    "FIXED_SIZE",
    "IMAGE_SIZE",
    "TIMM_NAMES",
    "count_parameters",
    "create_classifier",
    "encoder_parameters",
    "freeze_encoder",
    "head_modules",
    "head_parameters",
    "is_encoder_frozen",
]
