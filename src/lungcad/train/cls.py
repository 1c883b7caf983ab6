"""``lungcad train-cls``: the paper's two-phase malignancy classifier training.

Phase 1 trains on ground-truth masks (patients that have them). Phase 2 starts from phase 1's best
weights and fine-tunes on masks predicted by a segmentation run (``SEGRUN/predicted_masks``), refusing
any training or validation patient whose masks come from a model that saw that patient.

Run folder::

    RUN/config.yaml, RUN/splits.json
    RUN/phase1/, RUN/phase2/        each a complete run folder of its phase (history.csv, checkpoints/,
                                    model.json, summary.json, figures/)
    RUN/history.csv                 both phases, with a ``phase`` column (epochs restart at 1)
    RUN/model.json, RUN/checkpoints/best.safetensors    the last phase trained (the final model)
    RUN/mask_provenance.json        with --seg-run: which model predicted each patient's masks
                                    (phase 2 trains on them; phase 1 may validate on them)
    RUN/figures/training_curves.png both phases on one running epoch axis
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from ..augment import build_augmentation
from ..config import resolve, write_yaml
from ..data import ClassificationDataset, classification_items
from ..errors import LungcadError
from ..features import CHANNELS, FEATURES_VERSION
from ..io import atomic_path
from .engine import (
    CLS_COLUMNS, LAST_CKPT, SUMMARY, ClassificationModule, EpochSampler, FitSpec, WithIndex, base_model_json, fit,
    finished_summary, inverse_frequency_weights, plot_training_curves, seed_all, write_json,
)
from .oof import MASK_DIR, read_provenance, saw_patient
from .seg import copy_splits

PHASES = ("1", "2", "both")


def input_channels(cfg: dict) -> int:
    """Channels of the classifier input: the seven, plus the nodule_size plane with ``size_input``."""
    return len(CHANNELS) + bool(cfg.get("size_input"))


def cls_model_json(arch: str, cfg: dict, phase: int, mask_source: str, seg_run) -> dict:
    """``model.json`` of a classification run (``image_size`` = ``input_size``, as inference reads it)."""
    return base_model_json(
        "classification", arch, cfg, input_channels(cfg), cfg["input_size"],
        input_size=int(cfg["input_size"]), crop=int(cfg["crop"]), features_version=FEATURES_VERSION,
        min_area_frac=float(cfg.get("min_area_frac") or 0.0), size_input=bool(cfg.get("size_input")),
        phase=phase, mask_source=mask_source,
        seg_run=str(Path(seg_run).resolve()) if seg_run else None,
    )


def check_mask_provenance(seg_run: Path, patients: dict[str, list[str]]) -> dict:
    """Refuse patients whose predicted masks come from a model that saw them; returns the
    provenance record written to ``RUN/mask_provenance.json``."""
    provenance = read_provenance(seg_run)
    record = {"seg_run": str(Path(seg_run).resolve()), "predicted_masks": str(Path(seg_run).resolve() / MASK_DIR),
              "scheme": provenance.get("scheme", "out-of-fold"), "patients": {}}
    for part, ids in patients.items():
        for patient in ids:
            if saw_patient(provenance, patient):
                model = provenance.get("patients", {}).get(patient, "no model")
                raise LungcadError(
                    f"{Path(seg_run) / 'predicted_masks.json'}: masks of {part} patient {patient} come from "
                    f"{model!r}, a model that saw this patient; phase 2 needs out-of-fold masks"
                )
            name = provenance["patients"][patient]
            record["patients"][patient] = {
                "split": part, "model": name,
                "kind": "final model (never saw the patient)" if name == "final" else "out-of-fold",
            }
    return record


def fit_size_prior(prior, dataset: ClassificationDataset) -> dict:
    """Fit a fusion model's size prior (``models.fusion.SizePrior``) on the training slices.

    A logistic regression of each slice's label on its measured size, class-balanced because the
    sampler balances the classes; the model then starts from "size alone" and its image streams
    learn the rest. Returns what was fitted (recorded in the phase summary).
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    values, labels = dataset.size_values(), dataset.labels.astype(int)
    scale = float(values.std())
    if len(np.unique(labels)) < 2 or scale <= 0:
        return {"fitted": False, "reason": "training slices of one class or of one size"}
    centre = float(values.mean())
    z = ((values - centre) / scale)[:, None]
    fit = LogisticRegression(class_weight="balanced").fit(z, labels)
    weight, bias = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    prior.set_prior(centre, scale, weight, bias)
    return {"fitted": True, "centre": centre, "scale": scale, "weight": weight, "bias": bias,
            "slices": int(len(labels)), "slice_auc": float(roc_auc_score(labels, z[:, 0]))}


def _train_phase(
    bench: Path, arch: str, run_dir: Path, cfg: dict, splits: dict, phase: int, *, seg_run,
    init_weights, pretrained: bool, resume: bool, devices,
) -> dict:
    from ..models import create_classifier

    phase_dir = run_dir / f"phase{phase}"
    phase_cfg = {**cfg[f"phase{phase}"]}
    mask_source = "gt" if phase == 1 else "predicted"
    pred_dir = Path(seg_run) / MASK_DIR if seg_run is not None else None  # ignored for "gt" masks
    finished = finished_summary(phase_dir, int(phase_cfg["epochs"])) if resume else None
    if finished is not None:
        return finished
    seed = int(cfg["seed"])
    parts = splits["classification"]

    def items_of(part: str, source: str):
        return classification_items(bench, parts[part], source, pred_dir, cfg.get("max_slices_per_patient"), seed,
                                    float(cfg.get("min_area_frac") or 0.0))

    items = {part: items_of(part, mask_source) for part in ("train", "val")}
    # No validation slice with this phase's masks: select the epoch on the other kind rather than
    # stop (recorded in the phase summary). Phase 2: a weak segmenter may find nothing on the few
    # validation patients. Phase 1: small benchmarks can draw only box-annotated or unannotated
    # patients into val (predicted masks need --seg-run; the caller checked their provenance).
    fallback = {1: ("predicted", "no validation patient has a ground-truth voxel mask"),
                2: ("gt", "no validation slice had a predicted nodule")}[phase]
    if items["val"].empty and not items["train"].empty and (fallback[0] == "gt" or pred_dir is not None):
        items["val"] = items_of("val", fallback[0])
        phase_cfg["val_masks"] = f"{fallback[0]} ({fallback[1]})"
    for part, frame in items.items():
        if frame.empty:
            hint = ("; pass --seg-run RUN to validate phase 1 on predicted masks"
                    if phase == 1 and part == "val" and seg_run is None else "")
            raise LungcadError(f"{bench}: no {part} slices with {'ground-truth' if phase == 1 else 'predicted'} "
                               f"nodule masks for classification phase {phase}{hint}")
    size, crop = int(cfg["input_size"]), int(cfg["crop"])
    augmentation = cfg["augmentation"]
    size_input = bool(cfg.get("size_input"))
    train_set = ClassificationDataset(items["train"], bench, size, crop,
                                      transform=lambda shape: build_augmentation(augmentation, shape, jitter=False),
                                      size_input=size_input)
    val_set = ClassificationDataset(items["val"], bench, size, crop, transform=None, size_input=size_input)
    labels = items["train"]["label"].to_numpy()
    sampler = EpochSampler(len(train_set), seed=seed,
                           weights=inverse_frequency_weights(labels) if cfg.get("weighted_sampler") else None)
    if init_weights is None and not pretrained and phase_cfg.get("freeze_epochs"):
        # Freezing a randomly initialised encoder would train the head on random features.
        phase_cfg["freeze_epochs"] = 0
        phase_cfg["freeze_note"] = "encoder randomly initialised: not frozen"
    seed_all(seed)
    model = create_classifier(arch, in_chans=input_channels(cfg), pretrained=pretrained and init_weights is None,
                              weights=init_weights, **(cfg.get("model_kwargs") or {}))
    # A fresh fusion model with the size input starts as a size-only logistic regression; loaded
    # weights (phase 2, --weights) bring their fitted prior with them.
    size_prior = None
    if init_weights is None and getattr(model, "size", None) is not None:
        size_prior = fit_size_prior(model.size, train_set)
    # Validation scores patients as `evaluate` does: one on whom the segmenter found nothing is a
    # benign call (probability 0), not left out (empty for ground-truth masks).
    absent = items["val"].attrs.get("dropped_labels", {})
    module = ClassificationModule(model, phase_cfg, items["val"]["patient_id"].to_numpy(),
                                  items["val"]["label"].to_numpy(), absent)
    spec = FitSpec(
        run_dir=phase_dir, cfg=cfg, model_json=cls_model_json(arch, cfg, phase, mask_source, seg_run),
        history_columns=CLS_COLUMNS, monitor="val_auc", epochs=int(phase_cfg["epochs"]),
        batch_size=int(phase_cfg["batch_size"]), val_batch_size=int(phase_cfg["val_batch_size"]),
        train_sampler=sampler, early_stopping_patience=phase_cfg.get("early_stopping_patience"),
        accumulate_grad_batches=int(phase_cfg.get("accumulate_grad_batches") or 1), resume=resume,
        devices=devices,
        extra_summary={"phase": phase, "mask_source": mask_source, "val_masks": phase_cfg.get("val_masks", mask_source),
                       "freeze_epochs": int(phase_cfg.get("freeze_epochs") or 0),
                       **({"freeze_note": phase_cfg["freeze_note"]} if "freeze_note" in phase_cfg else {}),
                       "train_slices": len(items["train"]), "val_slices": len(items["val"]),
                       "train_patients": items["train"]["patient_id"].nunique(),
                       "val_patients": items["val"]["patient_id"].nunique(),
                       "val_patients_no_nodule_found": len(absent),
                       "dropped_patients": {p: items[p].attrs.get("dropped_patients", []) for p in items},
                       **({"size_prior": size_prior} if size_prior is not None else {})},
    )
    return fit(module, train_set, WithIndex(val_set), spec)


def _merge_histories(run_dir: Path, phases: list[int]) -> Path:
    """``RUN/history.csv``: the phase histories one after the other, with a ``phase`` column."""
    rows = []
    for phase in phases:
        path = run_dir / f"phase{phase}" / "history.csv"
        if path.is_file():
            with path.open(newline="") as handle:
                rows += [{"phase": phase, **row} for row in csv.DictReader(handle)]
    out = run_dir / "history.csv"
    with atomic_path(out) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=("phase", *CLS_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return out


def _publish(run_dir: Path, phase: int) -> None:
    """Copy the phase's best model to the top of the run folder (weights first, then model.json)."""
    source = run_dir / f"phase{phase}"
    for name in ("checkpoints/best.safetensors", "model.json"):
        with atomic_path(run_dir / name) as tmp:
            shutil.copyfile(source / name, tmp)


def train_classifier(
    bench: str | Path,
    arch: str,
    out: str | Path,
    preset: str = "cpu",
    seg_run: str | Path | None = None,
    phase: str | int = "both",
    epochs: int | None = None,
    resume: bool = False,
    pretrained: bool = False,
    weights: str | Path | None = None,
    devices=None,
    overrides: dict | None = None,
) -> dict:
    """Train classifier ``arch`` on benchmark ``bench`` (two phases); write the run folder ``out``.

    Args:
        seg_run: segmentation run folder with out-of-fold predicted masks (needed for phase 2).
        phase: ``1`` (ground-truth masks), ``2`` (predicted masks; starts from ``out/phase1`` or
            ``weights``) or ``both``.
        epochs: epochs of each phase (overrides the preset's ``phase1.epochs`` and ``phase2.epochs``).
        resume: continue an interrupted run (a finished phase is not retrained).
        pretrained / weights: initial weights of phase 1 (ImageNet via timm, or a local file).

    Returns the summary of the run (also ``out/summary.json``).
    """
    from ..splits import load_splits

    phase = str(phase)
    if phase not in PHASES:
        raise LungcadError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
    bench, run_dir = Path(bench), Path(out)
    overrides = dict(overrides or {})
    if epochs is not None:
        overrides["phase1.epochs"] = overrides["phase2.epochs"] = int(epochs)
    cfg = resolve("classification", preset, arch, overrides)
    phases = [1, 2] if phase == "both" else [int(phase)]
    splits = load_splits(bench)
    provenance = None
    if 2 in phases and seg_run is None:
        raise LungcadError("phase 2 trains on predicted masks: pass --seg-run RUN (a segmentation run "
                           "trained with out-of-fold masks)")
    if seg_run is not None:  # phase 1 may validate on predicted masks too (no gt-masked val patient)
        seg_run = Path(seg_run)
        parts = splits["classification"]
        provenance = check_mask_provenance(seg_run, {"train": parts["train"], "val": parts["val"]})
    for number in phases:  # before writing anything: never clobber a trained phase
        if not resume and (run_dir / f"phase{number}" / LAST_CKPT).exists():
            raise LungcadError(f"{run_dir / f'phase{number}'}: phase {number} already trained here; "
                               "pass --resume to continue it or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_yaml({**cfg, "phase": phase, "seg_run": str(seg_run) if seg_run else None,
                "bench": str(bench.resolve()), "pretrained": bool(pretrained),
                "weights": str(weights) if weights else None}, run_dir / "config.yaml")
    copy_splits(bench, run_dir)
    if provenance is not None:
        write_json(run_dir / "mask_provenance.json", provenance)
    summaries = {}
    for number in phases:
        if number == 1:
            init = weights
        else:
            phase1_best = run_dir / "phase1" / "checkpoints" / "best.safetensors"
            init = phase1_best if phase1_best.is_file() else weights
            if init is None:
                raise LungcadError(f"{phase1_best}: phase 2 starts from phase 1's best weights; "
                                   "train phase 1 first (--phase 1 or both) or pass --weights")
        summaries[f"phase{number}"] = _train_phase(
            bench, arch, run_dir, cfg, splits, number, seg_run=seg_run, init_weights=init,
            pretrained=pretrained, resume=resume, devices=devices,
        )
        _publish(run_dir, number)
    history = _merge_histories(run_dir, [p for p in (1, 2) if (run_dir / f"phase{p}" / "history.csv").is_file()])
    plot_training_curves(history, run_dir / "figures", "classification")
    summary = {"task": "classification", "arch": arch, "preset": preset, "phase": phase,
               "final_phase": phases[-1], **summaries}
    write_json(run_dir / SUMMARY, summary)
    return summary
