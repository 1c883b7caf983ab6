"""``lungcad train-seg``: train one segmenter on a benchmark and write its run folder.

The final model trains on the segmentation ``train`` patients and selects its best epoch on ``val``
(Dice on nodule slices). With ``oof_folds >= 2`` it then trains the out-of-fold models and writes the
leakage-free predicted masks that classification phase 2 reads (``train/oof.py``).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..augment import build_augmentation
from ..config import resolve, write_yaml
from ..data import SegmentationDataset, read_manifest, segmentation_items
from ..errors import LungcadError
from ..inference import check_min_peak, check_tta
from .engine import (
    SEG_COLUMNS, SUMMARY, EpochSampler, FitSpec, SegmentationModule, WithIndex, base_model_json, check_run_dir, fit,
    seed_all, write_json,
)

def context_slices(cfg: dict) -> int:
    """Neighbouring slices on each side in the 2.5D input (0: the paper's single slice)."""
    k = int(cfg.get("context_slices") or 0)
    if k < 0:
        raise LungcadError(f"context_slices must be >= 0, got {k}")
    return k


def seg_model_json(arch: str, cfg: dict) -> dict:
    """``model.json`` of a segmentation run: enough to rebuild the model and preprocess slices."""
    k = context_slices(cfg)
    return base_model_json("segmentation", arch, cfg, 2 * k + 1, cfg["image_size"], context_slices=k,
                           tta=check_tta(cfg.get("tta") or "none"),
                           min_component_peak=check_min_peak(cfg.get("min_component_peak")))


def set_output_prior(model: torch.nn.Module, prior: float) -> bool:
    """Start the output layer at foreground probability ``prior`` (RetinaNet's prior bias init).

    Nodules cover well under 1% of a slice: from a zero bias, the first epochs are spent learning
    "background everywhere". Sets the bias of the last 1-channel convolution; False when none.
    """
    last = None
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.out_channels == 1 and module.bias is not None:
            last = module
    if last is None:
        return False
    with torch.no_grad():
        last.bias.fill_(math.log(prior / (1 - prior)))
    return True


def small_slice_weights(items: pd.DataFrame, weight: float, below_mm: float) -> np.ndarray | None:
    """Sampling weight of each training slice: ``weight`` for a nodule slice whose cross-section's
    equivalent diameter (from ``nodule_area_px`` and the pixel spacing) is below ``below_mm``, 1 for
    every other slice; ``None`` (uniform, the paper) when ``weight`` is 1.

    A nodule's end slices and the smallest nodules are a few pixels across and rare among the
    training slices, while nodule-free slices show many vessels seen end-on that look the same.
    """
    if float(weight) == 1.0:
        return None
    if float(weight) <= 0:
        raise LungcadError(f"small_slice_weight must be > 0, got {weight}")
    area_mm2 = items["nodule_area_px"].to_numpy(float) * items["spacing_row_mm"].to_numpy(float) \
        * items["spacing_col_mm"].to_numpy(float)
    diameter = np.sqrt(4.0 * np.clip(area_mm2, 0, None) / np.pi)
    small = (items["nodule_area_px"].to_numpy(float) > 0) & (diameter < float(below_mm))
    return np.where(small, float(weight), 1.0)


def _items_for(bench: Path, ids: list[str], cfg: dict, unit: str, seed: int) -> pd.DataFrame:
    if unit == "slice":  # the paper's slice-level split: the lists hold image paths
        manifest = read_manifest(bench)
        return manifest[manifest["image_path"].isin(set(ids))].reset_index(drop=True)
    return segmentation_items(bench, ids, negatives=float(cfg["negatives"]), seed=seed)


def fit_segmenter(
    bench: Path, arch: str, run_dir: Path, cfg: dict, train_ids: list[str], val_ids: list[str], *,
    unit: str = "patient", resume: bool = False, pretrained: bool = False, weights=None,
    devices=None, epochs: int | None = None, select_best: bool = True,
    early_stopping_patience: int | None = None,
) -> dict:
    """Train one segmenter on ``train_ids`` (validated on ``val_ids``) into ``run_dir``."""
    from ..models import create_segmenter

    seed = int(cfg["seed"])
    train_items = _items_for(bench, train_ids, cfg, unit, seed)
    val_items = _items_for(bench, val_ids, cfg, unit, seed)
    if cfg.get("max_train_slices") and len(train_items) > cfg["max_train_slices"]:
        train_items = train_items.sample(n=int(cfg["max_train_slices"]), random_state=seed)
    if cfg.get("max_val_slices") and len(val_items) > cfg["max_val_slices"]:
        # A fixed random subset (same seed every epoch): validation is most of an epoch's cost on CPU.
        val_items = val_items.sample(n=int(cfg["max_val_slices"]), random_state=seed).sort_index()
    if train_items.empty:
        raise LungcadError(f"{bench}: no training slices with nodule masks for segmentation")
    if val_items.empty:
        raise LungcadError(f"{bench}: no validation slices with nodule masks for segmentation")
    size = int(cfg["image_size"])
    crop = cfg.get("train_crop")
    crop = int(crop) if crop and int(crop) < size else None  # a window as large as the slice: no crop
    k = context_slices(cfg)
    train_set = SegmentationDataset(
        train_items, bench, size,
        build_augmentation(cfg["augmentation"], size, crop, cfg.get("nodule_crop_p", 0.9),
                           jitter=bool(cfg.get("scale_jitter"))),
        context_slices=k,
    )
    val_set = SegmentationDataset(val_items, bench, size, None, context_slices=k)
    seed_all(seed)  # the same initial weights on every run
    model = create_segmenter(arch, in_channels=2 * k + 1, pretrained=pretrained, weights=weights,
                             **(cfg.get("model_kwargs") or {}))
    if cfg.get("init_prior") and weights is None:
        set_output_prior(model, float(cfg["init_prior"]))
    weights = small_slice_weights(train_items, cfg.get("small_slice_weight", 1.0), cfg.get("small_slice_mm", 10.0))
    sampler = None if weights is None else EpochSampler(len(train_set), seed=seed, weights=weights)
    spec = FitSpec(
        run_dir=run_dir, cfg=cfg, model_json=seg_model_json(arch, cfg), history_columns=SEG_COLUMNS,
        train_sampler=sampler,
        monitor="val_dice", epochs=int(epochs or cfg["epochs"]), batch_size=int(cfg["batch_size"]),
        val_batch_size=int(cfg["val_batch_size"]), select_best=select_best,
        early_stopping_patience=early_stopping_patience, resume=resume, devices=devices,
        extra_summary={"train_patients": len(set(train_items["patient_id"])),
                       "val_patients": len(set(val_items["patient_id"]))},
    )
    return fit(SegmentationModule(model, cfg), train_set, WithIndex(val_set), spec)


def copy_splits(bench: Path, run_dir: Path) -> None:
    """``RUN/splits.json``: the split the run used."""
    shutil.copyfile(bench / "splits.json", run_dir / "splits.json")


def train_segmenter(
    bench: str | Path,
    arch: str,
    out: str | Path,
    preset: str = "cpu",
    epochs: int | None = None,
    resume: bool = False,
    pretrained: bool = False,
    weights: str | Path | None = None,
    devices=None,
    overrides: dict | None = None,
    oof_folds: int | None = None,
) -> dict:
    """Train segmenter ``arch`` on benchmark ``bench``; write the run folder ``out``.

    Args:
        preset: ``cpu`` or ``paper`` (``lungcad.train.presets``); ``overrides`` replace its values.
        epochs: overrides the preset's epoch count (``--epochs``).
        resume: continue from ``out/checkpoints/last.ckpt`` (finished fold models are kept).
        pretrained / weights: ImageNet encoder weights (downloads) / a local weights file.
        devices: Lightning ``devices`` (default: the config's, ``auto``).
        oof_folds: out-of-fold models for phase-2 masks (default: the preset's; < 2 disables).

    Returns the summary (best validation Dice, epochs, paths), also written to ``out/summary.json``.
    """
    from ..splits import load_splits

    bench, run_dir = Path(bench), Path(out)
    overrides = dict(overrides or {})
    if epochs is not None:
        overrides["epochs"] = int(epochs)
    if oof_folds is not None:
        overrides["oof_folds"] = int(oof_folds)
    cfg = resolve("segmentation", preset, arch, overrides)
    splits = load_splits(bench)
    check_run_dir(run_dir, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_yaml({**cfg, "bench": str(bench.resolve()), "pretrained": bool(pretrained),
                "weights": str(weights) if weights else None}, run_dir / "config.yaml")
    copy_splits(bench, run_dir)
    unit = splits.get("unit", "patient")
    parts = splits["segmentation"]
    summary = fit_segmenter(
        bench, arch, run_dir, cfg, parts["train"], parts["val"], unit=unit, resume=resume,
        pretrained=pretrained, weights=weights, devices=devices,
        early_stopping_patience=cfg.get("early_stopping_patience"),
    )
    summary.update({"task": "segmentation", "arch": arch, "preset": preset})
    folds = int(cfg.get("oof_folds") or 0)
    if folds >= 2:
        if unit != "patient":
            summary["oof"] = "skipped: out-of-fold masks need a patient-level split"
        else:
            from .oof import write_predicted_masks

            summary["oof"] = write_predicted_masks(
                bench, run_dir, arch, cfg, splits, resume=resume, pretrained=pretrained,
                weights=weights, devices=devices,
            )
    write_json(run_dir / SUMMARY, summary)
    return summary
