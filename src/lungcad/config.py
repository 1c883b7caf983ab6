"""Resolved training configuration: preset + architecture defaults + user overrides -> one dict.

``resolve(task, preset, arch, overrides)`` returns a plain, YAML-serialisable dict that holds every
value a run used; ``write_yaml`` saves it as ``RUN/config.yaml`` (atomically), ``read_yaml`` reads it
back. The preset values themselves live in ``lungcad.train.presets``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import yaml

from .errors import LungcadError
from .io import write_text_atomic

TASKS = ("segmentation", "classification")


def _set_dotted(cfg: dict, key: str, value, check: bool = True) -> None:
    """Set ``a.b.c`` in ``cfg``. With ``check`` every part must exist already: ``phase1.epochss``
    is a typo, not a new option."""
    parts = key.split(".")
    node = cfg
    for depth, part in enumerate(parts):
        if check and part not in node:
            where = ".".join(parts[:depth]) or "the configuration"
            raise LungcadError(f"unknown configuration key {key!r}: {where} has no {part!r}; "
                               f"valid: {', '.join(sorted(node))}")
        if depth == len(parts) - 1:
            node[part] = value
            return
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise LungcadError(f"override {key!r}: {part!r} is not a section")


# Sections whose keys are the model's own options, not configuration keys: merged without checking.
FREE_FORM_SECTIONS = ("model_kwargs",)


def apply_overrides(cfg: dict, overrides: Mapping | None, check_keys: bool = True) -> dict:
    """Return a copy of ``cfg`` with ``overrides`` merged in (nested dicts merge; dotted keys allowed).

    An unknown key raises ``LungcadError`` (a typo must not be silently ignored), except inside
    ``FREE_FORM_SECTIONS``.
    """
    out = copy.deepcopy(cfg)
    for key, value in (overrides or {}).items():
        top = key.split(".")[0]
        if check_keys and top not in out:
            raise LungcadError(f"unknown configuration key {key!r}; valid keys: {', '.join(sorted(out))}")
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = apply_overrides(out[key], value, check_keys and key not in FREE_FORM_SECTIONS)
        else:
            _set_dotted(out, key, copy.deepcopy(value), check_keys and top not in FREE_FORM_SECTIONS)
    return out


def _segmentation_defaults(cfg: dict, arch: str) -> None:
    from .models.segmentation import DEFAULT_LR, SEGMENTERS

    if arch not in SEGMENTERS:
        raise LungcadError(f"unknown segmenter architecture {arch!r}; valid names: {', '.join(sorted(SEGMENTERS))}")
    if cfg.get("lr") is None:
        cfg["lr"] = DEFAULT_LR.get(arch, 3e-4) * cfg.get("lr_scale", 1.0)


def _classification_defaults(cfg: dict, arch: str, overrides: Mapping | None) -> None:
    from .models.classification import CLASSIFIERS, DEFAULT_LR, FIXED_SIZE, IMAGE_SIZE, SIZE_HEAD

    if arch not in CLASSIFIERS:
        raise LungcadError(f"unknown classifier architecture {arch!r}; valid names: {', '.join(sorted(CLASSIFIERS))}")
    # Transformer-style models are built for 224 x 224; a smaller preset size cannot feed them.
    if arch in FIXED_SIZE and "input_size" not in (overrides or {}):
        cfg["input_size"] = IMAGE_SIZE
    # The preset's options for this architecture, under the user's own model_kwargs.
    preset_kwargs = (cfg.pop("model_kwargs_by_arch", None) or {}).get(arch) or {}
    cfg["model_kwargs"] = {**copy.deepcopy(preset_kwargs), **(cfg.get("model_kwargs") or {})}
    if cfg.get("size_input") and arch in SIZE_HEAD:
        cfg["model_kwargs"].setdefault("size_channel", SIZE_HEAD[arch])
    for phase in (1, 2):
        section = cfg[f"phase{phase}"]
        if section.get("lr") is None:
            section["lr"] = DEFAULT_LR.get(arch, {1: 3e-4, 2: 2e-4})[phase] * section.get("lr_scale", 1.0)


def resolve(task: str, preset: str, arch: str, overrides: Mapping | None = None) -> dict:
    """The full configuration of a training run.

    Args:
        task: ``segmentation`` or ``classification``.
        preset: ``cpu`` or ``paper`` (see ``lungcad.train.presets``).
        arch: architecture name (fills the model-specific learning rate).
        overrides: values that replace the preset's (``None`` included: e.g. ``train_crop: None``
            trains on whole slices); the CLI passes only the options the user set.
    """
    # Imported here: config sits below train/ in the layering; only this function reads presets.
    from .train.presets import preset as load_preset

    if task not in TASKS:
        raise LungcadError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    cfg = apply_overrides(load_preset(task, preset), overrides)
    if task == "segmentation":
        _segmentation_defaults(cfg, arch)
    else:
        _classification_defaults(cfg, arch, overrides)
    return {"task": task, "preset": preset, "arch": arch, **cfg}


def _plain(value):
    """Convert tuples/paths/numpy scalars to YAML-safe builtins."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def write_yaml(cfg: Mapping, path: str | Path) -> Path:
    """Write ``cfg`` as YAML to ``path`` (temporary name, then rename)."""
    return write_text_atomic(path, yaml.safe_dump(_plain(cfg), sort_keys=False))


def read_yaml(path: str | Path) -> dict:
    """Read a YAML configuration; ``LungcadError`` naming the file when it is missing or invalid."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise LungcadError(f"{path}: configuration file not found") from exc
    except yaml.YAMLError as exc:
        raise LungcadError(f"{path}: invalid YAML ({exc})") from exc
