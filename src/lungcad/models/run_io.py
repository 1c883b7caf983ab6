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
LAST_CKPT = Path("checkpoints") / "last.ckpt"  # full training state (train/engine.py writes it)


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
    _load_state(model, load_file(str(weights), device=map_location), weights, info)
    return model.eval(), info


def _load_state(model: torch.nn.Module, state: dict, source: Path, info: dict) -> None:
    """Load ``state`` (read from ``source``) into the model that ``info`` (model.json) describes."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # e.g. weights of another lungcad version of the same architecture
        raise LungcadError(f"{source}: weights do not fit {info.get('arch')} as model.json describes it "
                           f"(trained with another lungcad version?): {exc}") from exc


# Provenance that stays true for the last-epoch model (predicted_masks.json does not: those masks
# come from the fold models and the best-epoch model).
_LAST_EPOCH_COPIES = ("config.yaml", "splits.json", "history.csv", "mask_provenance.json")


def last_checkpoint_path(run_dir: str | Path, info: dict) -> Path:
    """The training checkpoint of the run's published model at its last epoch (``info``: its model.json).

    ``RUN/checkpoints/last.ckpt`` (a segmentation run, or one phase folder of a classification run);
    for a classification run folder, the published phase's ``RUN/phaseN/checkpoints/last.ckpt``.
    """
    run_dir = Path(run_dir)
    path = run_dir / LAST_CKPT
    if not path.is_file() and info.get("task") == "classification" and info.get("phase") is not None:
        path = run_dir / f"phase{info['phase']}" / LAST_CKPT
    if not path.is_file():
        raise LungcadError(f"{path}: missing training checkpoint; the run did not finish an epoch")
    return path


def snapshot_last_epoch(run_dir: str | Path, out_dir: str | Path) -> dict:
    """Make ``out_dir`` a run folder whose weights are ``run_dir``'s last epoch instead of its best.

    The model is the one ``last.ckpt`` holds (the weight average when the run used ``ema_decay``);
    ``model.json`` records where it came from (``weights_from``). ``out_dir`` must not exist:
    nothing already written is replaced. Returns the new ``model.json``.
    """
    import shutil

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists():
        raise LungcadError(f"{out_dir}: already exists; choose a new folder for the last-epoch model")
    info = read_model_json(run_dir)
    path = last_checkpoint_path(run_dir, info)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint gets the same clear message
        raise LungcadError(f"{path}: not a readable lungcad training checkpoint ({exc})") from exc
    model = build_from_model_json(info)
    _load_state(model, state, path, info)
    new_info = {key: value for key, value in info.items() if key not in ("schema", "lungcad_version")}
    new_info["weights_from"] = {"run": str(run_dir.resolve()), "checkpoint": str(path.relative_to(run_dir)),
                                "epoch": int(ckpt.get("epoch", -1)) + 1}
    out_dir.mkdir(parents=True)
    for name in _LAST_EPOCH_COPIES:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out_dir / name)
    save_run_model(out_dir, model, new_info)
    return read_model_json(out_dir)
