"""Leakage-free predicted masks for classification phase 2 (ARCHITECTURE.md, "Predicted masks").

The segmentation train + val patients are cut into ``K`` patient-level folds. Fold model ``k`` trains
on the other folds and never sees fold ``k``; it predicts the masks of fold ``k``. Every other patient
of the benchmark (segmentation test patients, patients without masks) gets masks from the final
model, which never saw them. Fold models train as the final model does, for ``oof_epochs``: a
patient-level inner validation split of their own training patients (``INNER_VAL_FRACTION``) drives
the plateau scheduler and picks the exported epoch, so the held-out fold steers nothing. (Exporting
the last epoch instead left a fold model that collapsed to "no nodule anywhere" at epoch 2 with
nothing to fall back on: all 90 held-out patients of one synth benchmark got empty masks.) The
held-out Dice in the summary is measured afterwards on the masks written for the held-out fold.

Written into the segmentation run folder:

    oof/fold-<k>/                     each fold model's own run folder (resumable)
    predicted_masks/<dataset>/<patient>/<series>_<index>.png    uint8 {0,255}, one per benchmark slice
    predicted_masks/areas.csv         image_path, patient_id, area_px (foreground pixels)
    predicted_masks.json              provenance: per patient the model that produced its masks, and
                                      per model the patients it trained / was validated on
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..data import predicted_mask_path, read_manifest, read_png
from ..errors import LungcadError
from ..io import atomic_path
from ..metrics import dice
from .engine import write_json

PROVENANCE = "predicted_masks.json"
MASK_DIR = "predicted_masks"
FLUSH_EVERY = 20  # patients between progress writes
INNER_VAL_FRACTION = 0.2  # of a fold model's training patients, for its own epoch selection


def patient_folds(patients: list[str], k: int, seed: int = 42) -> list[list[str]]:
    """``k`` disjoint, near-equal patient folds (shuffled with ``seed``; each list sorted)."""
    if k < 2:
        raise LungcadError(f"out-of-fold masks need at least 2 folds, got {k}")
    unique = sorted(set(patients))
    if len(unique) < k:
        raise LungcadError(f"out-of-fold masks: {len(unique)} segmentation patients cannot fill {k} folds")
    order = np.random.default_rng(seed).permutation(len(unique))
    return [sorted(unique[i] for i in order[f::k]) for f in range(k)]


def inner_split(patients: list[str], seed: int) -> tuple[list[str], list[str]]:
    """(train, val) patients of a fold model: ``INNER_VAL_FRACTION`` held out for epoch selection.

    With a single patient there is nothing to hold out: it validates on its training patient.
    """
    unique = sorted(set(patients))
    if len(unique) < 2:
        return unique, unique
    n_val = max(1, int(round(INNER_VAL_FRACTION * len(unique))))
    order = np.random.default_rng(seed).permutation(len(unique))
    val = sorted(unique[i] for i in order[:n_val])
    return sorted(set(unique) - set(val)), val


def _write_png(path: Path, mask: np.ndarray) -> None:
    with atomic_path(path, suffix=".png") as tmp:  # cv2 picks the format from the extension
        if not cv2.imwrite(str(tmp), np.where(mask, 255, 0).astype(np.uint8)):
            raise LungcadError(f"{path}: cannot write predicted mask")


def _predict_patient(segmenter, bench: Path, out_dir: Path, rows: pd.DataFrame) -> list[dict]:
    """Predict and write the masks of one patient's slices; returns the areas table rows."""
    areas = []
    for _, series in rows.groupby("series_uid", sort=False):
        series = series.sort_values("slice_index", kind="stable")  # stack order: 2.5D neighbours
        images = [read_png(bench / p) for p in series["image_path"]]
        for image_path, mask in zip(series["image_path"], segmenter.predict_series_masks(images)):
            _write_png(predicted_mask_path(out_dir, image_path), mask)
            areas.append({"image_path": image_path, "patient_id": series["patient_id"].iloc[0],
                          "area_px": int(mask.sum())})
    return areas


def write_predicted_masks(
    bench: Path, run_dir: Path, arch: str, cfg: dict, splits: dict, *, resume: bool = False,
    pretrained: bool = False, weights=None, devices=None,
) -> dict:
    """Train the fold models (skipping finished ones) and write every slice's predicted mask.

    Returns a short summary (folds, held-out Dice per fold, patients per model).
    """
    from ..inference import SliceSegmenter
    from .seg import fit_segmenter

    bench, run_dir = Path(bench), Path(run_dir)
    seg = splits["segmentation"]
    k = int(cfg["oof_folds"])
    folds = patient_folds(seg["train"] + seg["val"], k, int(cfg["seed"]))
    models = {"final": {"run": ".", "trained_on": sorted(seg["train"]), "validated_on": sorted(seg["val"])}}
    fold_summaries = {}
    model_of: dict[str, str] = {}
    for index, held_out in enumerate(folds):
        name = f"fold-{index}"
        fold_dir = run_dir / "oof" / name
        train_ids, val_ids = inner_split([p for j, fold in enumerate(folds) if j != index for p in fold],
                                         int(cfg["seed"]) + index)
        summary = fit_segmenter(
            bench, arch, fold_dir, cfg, train_ids, val_ids, resume=True, pretrained=pretrained,
            weights=weights, devices=devices, epochs=int(cfg["oof_epochs"]),
            early_stopping_patience=cfg.get("early_stopping_patience"),
        )
        fold_summaries[name] = {"inner_val_dice": summary.get("best_val_dice"),
                                "best_epoch": summary.get("best_epoch"), "patients": len(held_out)}
        models[name] = {"run": f"oof/{name}", "trained_on": train_ids, "validated_on": val_ids,
                        "held_out": held_out}
        model_of.update({p: name for p in held_out})

    manifest = read_manifest(bench)
    out_dir = run_dir / MASK_DIR
    provenance_path = run_dir / PROVENANCE
    done: dict[str, str] = {}
    if resume and provenance_path.is_file():
        import json

        done = json.loads(provenance_path.read_text()).get("patients", {})
    areas_path = out_dir / "areas.csv"
    areas: dict[str, list[dict]] = {}
    if resume and areas_path.is_file():
        for row in pd.read_csv(areas_path, dtype={"patient_id": str}).to_dict("records"):
            areas.setdefault(row["patient_id"], []).append(row)
    segmenters = {}
    patients: dict[str, str] = {}
    for patient, rows in manifest.groupby("patient_id", sort=True):
        name = model_of.get(patient, "final")
        patients[patient] = name
        if done.get(patient) == name and patient in areas and all(
            predicted_mask_path(out_dir, p).is_file() for p in rows["image_path"]
        ):
            continue  # resumed: this patient's masks are already written by the same model
        if name not in segmenters:
            segmenters[name] = SliceSegmenter.from_run(run_dir / models[name]["run"], device="cpu")
        areas[patient] = _predict_patient(segmenters[name], bench, out_dir, rows)
        done[patient] = name
        if len(done) % FLUSH_EVERY == 0:  # progress on disk: a resumed run skips these patients
            _write_areas(areas_path, areas)
            _write_provenance(provenance_path, run_dir, k, models, done, complete=False)
    _write_areas(areas_path, areas)
    _write_provenance(provenance_path, run_dir, k, models, patients, complete=True)
    for name, dice in _held_out_dice(bench, manifest, out_dir, model_of).items():
        fold_summaries[name]["held_out_dice"] = dice
    counts = pd.Series(patients).value_counts().to_dict()
    return {"folds": k, "fold_models": fold_summaries, "patients_per_model": counts,
            "patients_without_predicted_nodule": _empty_patients(patients, areas),
            "masks": str(out_dir), "provenance": str(provenance_path)}


def _empty_patients(patients: dict[str, str], areas: dict[str, list[dict]]) -> dict[str, int]:
    """Per model, its patients with no predicted pixel on any slice: classification phase 2 cannot
    use them, and a fold model that collapsed to predicting nothing shows up here (a short fold
    run at a high rate can: all 90 held-out patients on one 357-patient synth benchmark)."""
    empty = {name: 0 for name in set(patients.values())}
    for patient, name in patients.items():
        if not any(int(row["area_px"]) > 0 for row in areas.get(patient, [])):
            empty[name] += 1
    return dict(sorted(empty.items()))


def _held_out_dice(bench: Path, manifest: pd.DataFrame, out_dir: Path, model_of: dict[str, str]) -> dict:
    """Per fold model, mean Dice over the reference nodule slices of its held-out patients, read
    back from the masks written for them (so a resumed run reports the same figure)."""
    rows = manifest[manifest["patient_id"].isin(model_of) & (manifest["mask_path"] != "")
                    & (manifest["nodule_area_px"] > 0)]
    scores: dict[str, list[float]] = {}
    for patient, image_path, mask_path in rows[["patient_id", "image_path", "mask_path"]].itertuples(index=False):
        pred = read_png(predicted_mask_path(out_dir, image_path)) > 0
        scores.setdefault(model_of[patient], []).append(float(dice(pred, read_png(bench / mask_path) > 0)))
    return {name: round(float(np.mean(values)), 4) for name, values in sorted(scores.items())}


def _write_areas(path: Path, areas: dict[str, list[dict]]) -> None:
    rows = [row for patient in sorted(areas) for row in areas[patient]]
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=["image_path", "patient_id", "area_px"]).to_csv(tmp, index=False)


def _write_provenance(path: Path, run_dir: Path, k: int, models: dict, patients: dict, complete: bool) -> None:
    write_json(path, {"schema": 1, "seg_run": str(run_dir.resolve()), "folds": k,
                      "scheme": "out-of-fold", "complete": complete,
                      "models": models, "patients": dict(sorted(patients.items()))})


def saw_patient(provenance: dict, patient: str) -> bool:
    """True when the model that produced ``patient``'s masks trained or was validated on it
    (or when the provenance does not say which model did)."""
    name = provenance.get("patients", {}).get(patient)
    model = provenance.get("models", {}).get(name)
    if model is None:
        return True
    return patient in set(model.get("trained_on", [])) | set(model.get("validated_on", []))


def read_provenance(seg_run: str | Path) -> dict:
    """``SEGRUN/predicted_masks.json``; a clear error when the run has no complete predicted masks."""
    import json

    path = Path(seg_run) / PROVENANCE
    if not path.is_file():
        raise LungcadError(
            f"{path}: missing; train the segmenter with out-of-fold masks (--oof-folds 2 or more) first"
        )
    try:
        provenance = json.loads(path.read_text())
    except ValueError as exc:
        raise LungcadError(f"{path}: invalid JSON ({exc})") from exc
    if not provenance.get("complete"):
        raise LungcadError(f"{path}: predicted masks are incomplete; resume the segmentation run (--resume)")
    return provenance
