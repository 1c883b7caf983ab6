"""Write and read a trained model in a run folder: ``model.json`` plus safetensors weights.

``model.json`` holds everything needed to rebuild the network (task, arch, kwargs, input channels,
preprocessing), so ``predict`` and ``evaluate`` never need the training code's state.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import __version__
from ..errors import LungcadError
from ..io import atomic_path, write_text_atomic

WEIGHTS = Path("checkpoints") / "best.safetensors"


def save_run_model(run_dir: str | Path, model: torch.nn.Module, model_json: dict) -> Path:
    """Save ``model``'s weights to ``checkpoints/best.safetensors`` and ``model_json`` to ``model.json``."""
    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    info = {"schema": 1, "lungcad_version": __version__, **model_json}
    if info.get("task") not in ("segmentation", "classification"):
        raise ValueError("model_json['task'] must be 'segmentation' or 'classification'")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    write_text_atomic(run_dir / "model.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
    return run_dir / WEIGHTS


def read_model_json(run_dir: str | Path) -> dict:
    """Read ``RUN/model.json``; a clear error when the folder is not a finished run."""
    path = Path(run_dir) / "model.json"
    if not path.is_file():
        raise LungcadError(f"{run_dir}: not a lungcad run folder (no model.json); train a model first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LungcadError(f"{path}: invalid JSON ({exc})") from exc


def build_from_model_json(info: dict) -> torch.nn.Module:
    """Rebuild the architecture described by ``model.json`` with random weights."""
    from .classification import create_classifier
    from .segmentation import create_segmenter

    kwargs = dict(info.get("kwargs") or {})
    if info["task"] == "segmentation":
        return create_segmenter(info["arch"], in_channels=info.get("in_channels", 1), **kwargs)
    return create_classifier(info["arch"], in_chans=info.get("in_channels", 7), **kwargs)


def load_run_model(run_dir: str | Path, map_location: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model of a run folder and load its best weights; returns ``(model.eval(), model_json)``."""
    info = read_model_json(run_dir)
    weights = Path(run_dir) / WEIGHTS
    if not weights.is_file():
        raise LungcadError(f"{weights}: missing weights file; the run did not finish an epoch")
    model = build_from_model_json(info)
    state = load_file(str(weights), device=map_location)
    model.load_state_dict(state)
    return model.eval(), info
