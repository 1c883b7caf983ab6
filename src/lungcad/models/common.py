"""Helpers shared by the segmentation and classification zoos.

- ``drop_none``: a CLI default of ``None`` must never override a model default (timm's habit).
- ``load_weights``: load a local ``weights=PATH`` file (safetensors or a ``torch.save``'d state dict,
  read with ``weights_only=True``) and fail with one clear line listing the mismatching keys.
- ``unknown_arch_error``: the error for an unregistered architecture, listing the valid names.
- ``adapt_first_conv``: make a 3-channel first convolution accept ``in_channels`` inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import LungcadError

_MAX_KEYS_SHOWN = 8


def drop_none(kwargs: Mapping) -> dict:
    """Return a copy of ``kwargs`` without the entries whose value is ``None``."""
    return {key: value for key, value in kwargs.items() if value is not None}


def unknown_arch_error(kind: str, name: str, valid: Iterable[str]) -> LungcadError:
    """The error for an unknown architecture ``name`` of ``kind`` ("segmenter", "classifier")."""
    return LungcadError(f"unknown {kind} architecture {name!r}; valid names: {', '.join(sorted(valid))}")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise LungcadError(f"{path}: cannot read safetensors weights ({exc})") from exc
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and format errors all mean "not a weights file"
        raise LungcadError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    # Lightning-style checkpoints keep the weights under "state_dict".
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LungcadError(f"{path}: not a state dict of tensors")
    return dict(state)


def _short_list(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    more = len(keys) - _MAX_KEYS_SHOWN
    return shown + (f" (+{more} more)" if more > 0 else "")


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load the local weights file ``path`` into ``model`` (in place) and return ``model``.

    ``strict=True`` requires the file's keys and shapes to match the model exactly; a mismatch raises
    ``LungcadError`` naming the file and the missing / unexpected / wrongly shaped keys.
    With ``strict=False`` missing and unexpected keys are ignored, but shapes must still agree.
    """
    path = Path(path)
    if not path.is_file():
        raise LungcadError(f"{path}: weights file not found")
    state = _read_state_dict(path)
    own = model.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    wrong_shape = {k for k in set(own) & set(state) if own[k].shape != state[k].shape}
    problems = []
    if strict and missing:
        problems.append(f"missing keys: {_short_list(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {_short_list(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shapes: {_short_list(wrong_shape)}")
    if problems:
        raise LungcadError(
            f"{path}: weights do not match {type(model).__name__} ({'; '.join(problems)})"
        )
    model.load_state_dict(state, strict=strict)
    return model


def adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """Return a copy of ``conv`` that takes ``in_channels`` inputs.

    Pretrained RGB kernels are reused: for one channel they are summed, for more they are repeated
    and rescaled so that the activation magnitude stays about the same (as timm's ``adapt_input_conv``).
    """
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        weight = conv.weight
        if in_channels == 1:
            new.weight.copy_(weight.sum(dim=1, keepdim=True))
        else:
            repeats = -(-in_channels // weight.shape[1])
            tiled = weight.repeat(1, repeats, 1, 1)[:, :in_channels]
            new.weight.copy_(tiled * (weight.shape[1] / in_channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def check_input_size(x: torch.Tensor, multiple: int = 32) -> None:
    """Raise ``LungcadError`` when the height or width of ``x`` is not a multiple of ``multiple``.

    Skipped while tracing (ONNX export), where shapes are fixed by the example input anyway.
    """
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return
    height, width = x.shape[-2:]
    if height % multiple or width % multiple:
        raise LungcadError(
            f"input of size {height}x{width}: height and width must be multiples of {multiple}"
        )


def init_decoder(module: nn.Module) -> None:
    """He initialisation for the convolutions of a hand-written decoder (as smp's ``initialize_decoder``).

    PyTorch's default conv init shrinks activations at every conv + ReLU, so that an untrained deep
    decoder in eval mode (BatchNorm with unit running statistics) outputs nearly a constant.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
