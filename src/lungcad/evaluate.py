"""``lungcad evaluate RUN``: honest, patient-level evaluation of a trained run on its benchmark.

The run folder says what to evaluate: ``model.json`` (task, model), ``config.yaml`` (the benchmark,
key ``bench``) and ``splits.json`` (the split the run was trained with). Nothing from training is
needed in memory.

Segmentation
    Every slice with a mask (``mask_source`` gt or box) of the split's segmentation patients is
    predicted (streamed series by series, so a split never sits in memory) and reduced to pixel
    counts; ``lungcad.metrics.segmentation_summary`` gives Dice/IoU on nodule slices and on all
    slices, the false-positive rate on nodule-free slices and per-patient 3D Dice, overall and per
    dataset, each with a 95% patient-bootstrap interval. The per-slice counts and Dice go to
    ``predictions.csv`` (one row per slice and split): which slices a model misses.

Classification
    Slice probabilities are averaged per patient (the paper) and thresholded at 0.5. Two mask
    sources when available:

    - ``gt_masks``: the slices with a non-empty reference mask (``data.classification_items``);
    - ``predicted_masks`` (the headline, what a user gets): every slice of the split's patients is
      segmented by the segmentation run, and the slices with a non-empty predicted mask are
      classified. A patient with no predicted nodule at all gets probability 0 ("nothing found" is a
      benign call) and is counted in ``n_no_nodule_found``; it is not silently dropped.

    - ``size_head`` (the headline when the run has ``patient_head.json``, see
      ``lungcad.patient_head``): the network's patient probability on the predicted masks and the
      patient's largest measured diameter, weighed by the logistic regression that
      :func:`fit_patient_head` fitted on the validation patients (so its validation figures are
      in-sample; test is clean). Needs the segmentation run's stored predicted masks.

    AUC has a DeLong interval, the other metrics patient-bootstrap intervals. The size baseline
    (``lungcad.baseline``: logistic regression on the largest nodule diameter, fitted on the run's
    training patients) is evaluated on the same split and compared with the model by DeLong's test.
    On ``train``/``val`` the segmenter has seen the patients (``segmenter_saw_patients``), so
    predicted-mask results there are optimistic; ``test`` is clean.

External cohort (``external=True``, ``lungcad evaluate RUN --bench COHORT --external``)
    Every labelled patient of a benchmark the run never saw is the one split ``external``, segmented
    now; the baselines keep their fit on the run's own training patients and the size head its
    weights, so nothing is fitted on the cohort. Results go to ``RUN/external/<cohort>/``. A
    ``--bench`` without ``--external`` must hold the run's own series (patient IDs repeat across
    benchmarks, so the run's split would pick namesakes of its training patients).

Outputs: ``RUN/metrics.json`` (or ``out``), ``RUN/metrics.md``, ``predictions.csv`` beside the
metrics file (per-patient probabilities, or per-slice segmentation counts), and figures in
``RUN/figures/``.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .errors import LungcadError
from .ingest.manifest import OUTLINE_MASK_SOURCES
from .io import write_text_atomic
from .metrics import (
    classification_summary,
    dice_from_counts,
    iou_from_counts,
    overlap_counts,
    patient_aggregate,
    patient_dice_3d,
    segmentation_summary,
)
from .patient_head import PatientHead
from .stats import bootstrap_ci, delong_ci, delong_test

SPLITS = ("train", "val", "test")
EXTERNAL = "external"  # the one split of a cohort the run never saw (evaluate_run(external=True))
BOOTSTRAP_SEED = 42
SEG_CI_METRICS = ("dice_nodule", "iou_nodule", "dice_all", "iou_all", "fp_rate_empty")
CLS_CI_METRICS = ("accuracy", "f1", "sensitivity", "specificity")
SERIES_CHUNK = 32  # slices segmented per call (bounded memory for long series)


# --------------------------------------------------------------------------- run folder


def _resolve_bench(run: Path, bench) -> Path:
    if bench is None:
        config = run / "config.yaml"
        if not config.is_file():
            raise LungcadError(f"{run}: no config.yaml to find the benchmark; pass --bench BENCH")
        from .config import read_yaml

        bench = read_yaml(config).get("bench")
        if not bench:
            raise LungcadError(f"{config}: no 'bench' key; pass --bench BENCH")
    bench = Path(bench)
    if not (bench / "manifest.csv").is_file():
        raise LungcadError(f"{bench}: not a benchmark folder (no manifest.csv)")
    return bench


def _run_splits(run: Path, bench: Path) -> dict:
    """The split the run was trained with (``RUN/splits.json``), else the benchmark's."""
    from .splits import check_splits, load_splits

    path = run / "splits.json"
    if not path.is_file():
        return load_splits(bench)
    try:
        splits = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LungcadError(f"{path}: invalid JSON ({exc})") from exc
    check_splits(splits, path)
    return splits


def _split_names(split: str) -> list[str]:
    """``all``, one split, or a comma list such as ``val,test`` (the leaderboard's two columns)."""
    if split == "all":
        return list(SPLITS)
    names = [s.strip() for s in split.split(",") if s.strip()]
    unknown = [s for s in names if s not in SPLITS]
    if unknown or not names:
        raise LungcadError(f"unknown split {split!r}; use train, val, test, all or a comma list like val,test")
    return [s for s in SPLITS if s in names]


def _json_ready(value):
    """numpy -> builtins, nan/inf -> None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _progress(iterable, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="series", leave=False, file=sys.stderr)


def _series_groups(rows: pd.DataFrame):
    """Rows grouped per (patient, series) in slice order."""
    rows = rows.sort_values(["patient_id", "series_uid", "slice_index"], kind="stable")
    return list(rows.groupby(["patient_id", "series_uid"], sort=True))


def _load_stack(bench: Path, paths) -> list[np.ndarray]:
    from .data import read_png

    return [read_png(bench / p) for p in paths]


# --------------------------------------------------------------------------- segmentation


def segmentation_rows(manifest: pd.DataFrame, splits: dict, split: str) -> pd.DataFrame:
    """Slices with a voxel mask of the split's segmentation patients (image paths for ``unit=slice``)."""
    items = set(splits["segmentation"][split])
    masked = manifest[manifest["mask_source"].isin(OUTLINE_MASK_SOURCES) & (manifest["mask_path"] != "")]
    key = "image_path" if splits.get("unit") == "slice" else "patient_id"
    return masked[masked[key].isin(items)]


def predict_overlaps(segmenter, bench: Path, rows: pd.DataFrame, progress: bool = False) -> pd.DataFrame:
    """Per-slice pixel counts of the segmenter's masks against the reference masks."""
    from .data import read_png

    records = []
    groups = _series_groups(rows)
    for _, group in _progress(groups, progress, "segmenting", len(groups)):
        images = _load_stack(bench, group["image_path"])
        predicted = segmenter.predict_series_masks(images, SERIES_CHUNK)
        targets = [read_png(bench / p) > 0 for p in group["mask_path"]]
        for (_, row), pred, target in zip(group.iterrows(), predicted, targets):
            if target.shape != pred.shape:
                raise LungcadError(f"{bench / row['mask_path']}: mask shape {target.shape} differs from its image")
            counts = overlap_counts(pred, target)
            records.append({
                "patient_id": row["patient_id"], "dataset": row["dataset"], "series_uid": row["series_uid"],
                "slice_index": int(row["slice_index"]), "image_path": row["image_path"],
                "pixel_area_mm2": float(row["spacing_row_mm"]) * float(row["spacing_col_mm"]),
                **{k: int(v[0]) for k, v in counts.items()},
            })
    columns = ["patient_id", "dataset", "series_uid", "slice_index", "image_path", "pixel_area_mm2",
               "intersection", "pred_px", "target_px"]
    return pd.DataFrame.from_records(records, columns=columns)


def _slice_metrics(inter, pred, target) -> np.ndarray:
    """The slice-level segmentation metrics of ``SEG_CI_METRICS``, as one vector (for the bootstrap)."""
    d = dice_from_counts(inter, pred, target)
    j = iou_from_counts(inter, pred, target)
    nodule = target > 0

    def mean(x):
        return x.mean() if x.size else np.nan

    return np.array([mean(d[nodule]), mean(j[nodule]), mean(d), mean(j), mean(pred[~nodule] > 0)])


def _segmentation_ci(slices: pd.DataFrame, n_boot: int) -> dict:
    if slices.empty:
        return {}
    low, high = bootstrap_ci(
        _slice_metrics, slices["patient_id"].to_numpy(), slices["intersection"].to_numpy(),
        slices["pred_px"].to_numpy(), slices["target_px"].to_numpy(), n=n_boot, seed=BOOTSTRAP_SEED,
    )
    ci = {name: [lo, hi] for name, lo, hi in zip(SEG_CI_METRICS, low, high)}
    per_patient = patient_dice_3d(slices)
    ci["dice_3d"] = list(bootstrap_ci(np.mean, per_patient.index.to_numpy(), per_patient.to_numpy(),
                                      n=n_boot, seed=BOOTSTRAP_SEED))
    return ci


def segmentation_report(slices: pd.DataFrame, n_boot: int = 2000) -> dict:
    """``segmentation_summary`` with 95% patient-bootstrap intervals, overall and per dataset."""
    report = segmentation_summary(slices)
    report["ci"] = _segmentation_ci(slices, n_boot)
    for name, group in slices.groupby("dataset", sort=True):
        report["per_dataset"][str(name)]["ci"] = _segmentation_ci(group, n_boot)
    return report


def _evaluate_segmentation(run: Path, bench: Path, manifest, splits, names, device, progress, n_boot,
                           tta=None, min_peak=None) -> tuple[dict, pd.DataFrame, "SliceSegmenter"]:
    """Per-split segmentation reports, the per-slice pixel counts behind them (with ``split`` and
    ``dice`` columns), and the segmenter (its test-time augmentation and component filter) they were
    predicted with."""
    from .inference import SliceSegmenter

    segmenter = SliceSegmenter.from_run(run, device=device).with_options(tta, min_peak)
    results, frames = {}, []
    for split in names:
        rows = segmentation_rows(manifest, splits, split)
        if rows.empty:
            results[split] = {"n_slices": 0, "note": "no slice with a mask in this split"}
            continue
        slices = predict_overlaps(segmenter, bench, rows, progress)
        results[split] = segmentation_report(slices, n_boot)
        # the slice-level view behind the means: which slices a model misses
        dice = dice_from_counts(slices["intersection"], slices["pred_px"], slices["target_px"])
        frames.append(slices.assign(split=split, dice=dice))
    return results, (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), segmenter


# --------------------------------------------------------------------------- classification


def _classify_slices(classifier, images, masks, rows: pd.DataFrame) -> np.ndarray:
    """Probabilities of slices with their masks; ``rows`` are their manifest rows (pixel spacing)."""
    spacings = list(zip(rows["spacing_row_mm"].astype(float), rows["spacing_col_mm"].astype(float)))
    probs = []
    for start in range(0, len(images), SERIES_CHUNK):
        part = slice(start, start + SERIES_CHUNK)
        probs.append(classifier.predict_proba(classifier.features(images[part], masks[part], spacings[part])))
    return np.concatenate(probs) if probs else np.zeros(0, np.float32)


def _slice_frame(rows: pd.DataFrame, probs) -> pd.DataFrame:
    frame = rows[["patient_id", "dataset", "series_uid", "slice_index", "label"]].copy()
    frame["label"] = frame["label"].astype(int)
    frame["prob"] = np.asarray(probs, dtype=float)
    return frame


def gt_mask_probabilities(classifier, bench: Path, patients, progress: bool = False) -> pd.DataFrame:
    """Slice probabilities on the reference masks (slices whose mask is not empty)."""
    from .data import classification_items, read_png

    items = classification_items(bench, patients, mask_source="gt", min_area_frac=classifier.min_area_frac)
    frames = []
    groups = _series_groups(items)
    for _, group in _progress(groups, progress, "classifying (gt masks)", len(groups)):
        images = _load_stack(bench, group["image_path"])
        masks = [read_png(p) > 0 for p in group["mask_file"]]
        frames.append(_slice_frame(group, _classify_slices(classifier, images, masks, group)))
    return pd.concat(frames, ignore_index=True) if frames else _slice_frame(items, [])


class LiveMasks:
    """Predicted masks computed now by a segmentation run's final model.

    ``external``: the benchmark is a cohort the model never saw (``evaluate_run(external=True)``),
    so no split of it was seen. The mask area of every slice segmented is kept, so the patients'
    measured diameters (:meth:`diameters`) come from the very masks the classifier read."""

    def __init__(self, segmenter, external: bool = False):
        self.segmenter = segmenter
        self.external = external
        self.areas: dict[str, int] = {}  # image_path -> predicted mask pixels

    def saw(self, patient: str, split: str) -> bool:
        # the final model trained on train and chose its epoch on val
        return not self.external and split != "test"

    def masks(self, group: pd.DataFrame, images: list[np.ndarray]) -> list[np.ndarray]:
        masks = self.segmenter.predict_series_masks(images, SERIES_CHUNK)
        self.areas.update(zip(group["image_path"], (int(m.sum()) for m in masks)))
        return masks

    def diameters(self, manifest: pd.DataFrame, patients) -> pd.Series:
        """Largest predicted-mask diameter (mm) of each of ``patients`` (0 where nothing was found);
        only patients this object has segmented."""
        from .baseline import patient_largest_diameter_mm

        rows = manifest[manifest["patient_id"].isin(set(patients)) & manifest["label"].notna()]
        missing = sorted(set(rows.loc[~rows["image_path"].isin(self.areas), "patient_id"]))
        if missing:
            raise LungcadError(f"measured diameters of patients not segmented yet: {', '.join(missing[:5])}")
        return patient_largest_diameter_mm(rows, rows["image_path"].map(self.areas).to_numpy())


class StoredMasks:
    """The predicted masks a segmentation run already wrote (``RUN/predicted_masks``, see
    ``train/oof.py``): out-of-fold for the patients its final model saw, so no patient's masks
    come from a model that trained on it. Reading them is also far cheaper than segmenting again."""

    def __init__(self, seg_run: Path, provenance: dict):
        from .train.oof import MASK_DIR

        self.dir = Path(seg_run) / MASK_DIR
        self.provenance = provenance

    @classmethod
    def from_run(cls, seg_run: Path) -> "StoredMasks | None":
        from .train.oof import PROVENANCE

        path = Path(seg_run) / PROVENANCE
        if not path.is_file():
            return None
        provenance = json.loads(path.read_text())
        return cls(seg_run, provenance) if provenance.get("complete") else None

    def saw(self, patient: str, split: str) -> bool:
        from .train.oof import saw_patient

        return saw_patient(self.provenance, patient)

    def diameters(self, manifest: pd.DataFrame, patients) -> pd.Series:
        """Largest predicted-mask diameter (mm) of each of ``patients`` (0 where nothing was found)."""
        from .baseline import patient_largest_diameter_mm
        from .data import predicted_areas

        rows = manifest[manifest["patient_id"].isin(set(patients)) & manifest["label"].notna()]
        return patient_largest_diameter_mm(rows, predicted_areas(self.dir, rows))

    def masks(self, group: pd.DataFrame, images: list[np.ndarray]) -> list[np.ndarray]:
        from .data import predicted_mask_path, read_png

        out = []
        for path, image in zip(group["image_path"], images):
            stored = predicted_mask_path(self.dir, path)
            if not stored.is_file():
                raise LungcadError(f"{stored}: predicted mask missing; resume the segmentation run (--resume)")
            mask = read_png(stored) > 0
            if mask.shape != image.shape:
                raise LungcadError(f"{stored}: mask shape {mask.shape} differs from its image {image.shape}")
            out.append(mask)
        return out


def predicted_mask_probabilities(classifier, segmenter, bench: Path, manifest: pd.DataFrame, patients,
                                 progress: bool = False) -> pd.DataFrame:
    """Slice probabilities on predicted masks (``segmenter`` is a ``LiveMasks`` or ``StoredMasks``):
    the slices of ``patients`` with a non-empty predicted mask are classified, and the patient's core
    slices kept (``classifier.min_area_frac``)."""
    from .data import core_slices

    rows = manifest[manifest["patient_id"].isin(set(patients)) & manifest["label"].notna()]
    frames = []
    groups = _series_groups(rows)
    for _, group in _progress(groups, progress, "segmenting + classifying", len(groups)):
        images = _load_stack(bench, group["image_path"])
        masks = segmenter.masks(group, images)
        found = [i for i, m in enumerate(masks) if m.any()]
        if found:
            probs = _classify_slices(classifier, [images[i] for i in found], [masks[i] for i in found],
                                     group.iloc[found])
            frame = _slice_frame(group.iloc[found], probs)
            frames.append(frame.assign(area_px=[int(masks[i].sum()) for i in found]))
    if not frames:
        return _slice_frame(rows.iloc[:0], [])
    slices = pd.concat(frames, ignore_index=True)
    # The same core slices as training (a patient's series are pooled, as classification_items does).
    keep = core_slices(slices["patient_id"], slices["area_px"], classifier.min_area_frac)
    return slices[keep].drop(columns="area_px").reset_index(drop=True)


def _patient_labels(manifest: pd.DataFrame, patients) -> pd.DataFrame:
    rows = manifest[manifest["patient_id"].isin(set(patients)) & manifest["label"].notna()]
    grouped = rows.groupby("patient_id", sort=True)
    return pd.DataFrame({"label": grouped["label"].max().astype(int), "dataset": grouped["dataset"].first()})


def _cls_point_metrics(y, p) -> np.ndarray:
    s = classification_summary(y, p)
    return np.array([s[name] for name in CLS_CI_METRICS])


def classification_report(patients: pd.DataFrame, n_boot: int = 2000) -> dict:
    """Patient-level metrics with DeLong (AUC) and patient-bootstrap (others) 95% intervals.

    ``patients`` has one row per patient: ``patient_id, label, prob`` (+ ``dataset``).
    """
    y, p = patients["label"].to_numpy(int), patients["prob"].to_numpy(float)
    report = classification_summary(y, p)
    auc, low, high = delong_ci(y, p)
    ci = {"auc": [low, high]}
    if len(patients):
        lows, highs = bootstrap_ci(_cls_point_metrics, patients["patient_id"].to_numpy(), y, p,
                                   n=n_boot, seed=BOOTSTRAP_SEED)
        ci.update({name: [lo, hi] for name, lo, hi in zip(CLS_CI_METRICS, lows, highs)})
    report["ci"] = ci
    report["ci_methods"] = {"auc": "DeLong (normal, clipped to [0, 1])", "others": f"patient bootstrap, {n_boot} resamples"}
    return report


def _with_per_dataset(patients: pd.DataFrame, n_boot: int) -> dict:
    report = classification_report(patients, n_boot)
    if "dataset" in patients:
        report["per_dataset"] = {str(name): classification_report(group, n_boot)
                                 for name, group in patients.groupby("dataset", sort=True)}
    return report


# metrics.json keys of each size baseline, its DeLong test against the model, and its label
BASELINES = (("baseline_diameter", "vs_baseline", "Diameter baseline"),
             ("baseline_measured_diameter", "vs_baseline_measured", "Diameter measured on the predicted masks"))
ANNOTATED_DIAMETER = "largest equivalent-circle nodule diameter (mm) over annotated slices"
MEASURED_DIAMETER = ("largest equivalent-circle nodule diameter (mm) on the segmentation run's stored "
                     "(out-of-fold) predicted masks; 0 where it found nothing")


@dataclass
class FitCohort:
    """The patients the diameter baselines are fitted on: the run's training patients, on the
    run's own benchmark (``manifest``; the evaluated one, or another for an external cohort), with
    their out-of-fold measured diameters (None when the segmentation run stored no masks)."""

    manifest: pd.DataFrame
    patients: list
    measured: pd.Series | None = None


def baseline_report(manifest: pd.DataFrame, fit: FitCohort, model_patients: pd.DataFrame,
                    diameters: pd.Series | None = None) -> tuple[dict, dict, pd.DataFrame]:
    """A diameter baseline fitted on ``fit``, on ``model_patients``' patients, and the DeLong test
    model vs baseline.

    ``diameters``: None for the annotated diameters, or measured ones (``StoredMasks.diameters``);
    the training patients' are then ``fit.measured``.
    """
    from .baseline import DEFAULT_MASK_SOURCES, diameter_baseline

    train_diameters = fit.measured if diameters is not None else None
    try:
        fitted, frame = diameter_baseline(manifest, fit.patients, model_patients["patient_id"], diameters=diameters,
                                          train_manifest=fit.manifest, train_diameters=train_diameters)
    except LungcadError as exc:
        return {"note": str(exc)}, {}, pd.DataFrame(columns=["patient_id", "label", "diameter_mm", "prob"])
    y, p = frame["label"].to_numpy(int), frame["prob"].to_numpy(float)
    auc, low, high = delong_ci(y, p)
    baseline = {"auc": auc, "auc_ci": [low, high], "n_patients": int(len(frame)), "model": fitted.describe()}
    if diameters is None:
        baseline.update(mask_sources=list(DEFAULT_MASK_SOURCES), feature=ANNOTATED_DIAMETER)
    else:
        baseline["feature"] = MEASURED_DIAMETER
    both = model_patients.merge(frame[["patient_id", "prob"]], on="patient_id", suffixes=("_model", "_baseline"))
    test = delong_test(both["label"].to_numpy(int), both["prob_model"], both["prob_baseline"])
    versus = {**test, "n_patients": int(len(both)), "method": "DeLong test, two correlated ROC curves",
              "a": "model", "b": "diameter baseline"}
    return baseline, versus, frame


def _patient_probabilities(slices: pd.DataFrame, labels: pd.DataFrame, fill_missing: bool) -> pd.DataFrame:
    if not len(slices):
        slices = pd.DataFrame(columns=["patient_id", "label", "prob", "dataset"])
    return patient_aggregate(slices, absent=labels if fill_missing else None)


def _resolve_seg_run(info: dict, seg_run) -> Path | None:
    if seg_run is not None:
        seg_run = Path(seg_run)
        if not (seg_run / "model.json").is_file():
            raise LungcadError(f"{seg_run}: not a segmentation run folder (no model.json)")
        return seg_run
    recorded = info.get("seg_run")
    if recorded and (Path(recorded) / "model.json").is_file():
        return Path(recorded)
    return None


def _size_head_frame(head, network: pd.DataFrame, measured: pd.Series) -> pd.DataFrame:
    """The size head's patient probabilities from the network's (``network``, one row per patient)."""
    diameter = measured.reindex(network["patient_id"]).fillna(0.0).to_numpy(float)
    return network.assign(prob=head.predict_proba(network["prob"].to_numpy(float), diameter),
                          diameter_mm=diameter, masks="size_head")


def classify_split(bench: Path, manifest, splits, split, classifier, segmenter, progress,
                   n_boot, fit: FitCohort, head=None) -> tuple[dict, pd.DataFrame]:
    """Evaluate one split of a classification run; returns (results, per-patient predictions).

    ``fit``: where the diameter baselines are fitted. ``head``: the run's ``PatientHead`` (None:
    the network's mean is the headline)."""
    patients = splits["classification"][split]
    labels = _patient_labels(manifest, patients)
    result: dict = {"n_patients_in_split": len(patients)}
    predictions = []
    sources = {"gt_masks": None}
    if segmenter is not None:
        sources["predicted_masks"] = segmenter
    for name in sources:
        if name == "gt_masks":
            slices = gt_mask_probabilities(classifier, bench, patients, progress)
        else:
            slices = predicted_mask_probabilities(classifier, segmenter, bench, manifest, patients, progress)
        fill = name == "predicted_masks"
        per_patient = _patient_probabilities(slices, labels, fill_missing=fill)
        if per_patient.empty:
            result[name] = {"n": 0, "note": "no patient with a usable mask in this split"}
            continue
        report = _with_per_dataset(per_patient, n_boot)
        report["n_slices"] = int(len(slices))
        if fill:
            report["n_no_nodule_found"] = int((per_patient["n_slices"] == 0).sum())
            report["segmenter_saw_patients"] = any(segmenter.saw(p, split) for p in patients)
            report["mask_origin"] = type(segmenter).__name__
        result[name] = report
        predictions.append(per_patient.assign(split=split, masks=name))
    usable = [n for n in ("predicted_masks", "gt_masks") if result.get(n, {}).get("n")]
    result["headline"] = usable[0] if usable else None
    # Measured diameters of the split's patients on the masks the classifier read: stored masks
    # (out of fold), or live ones of a cohort the segmenter never saw (external).
    measurable = bool(usable) and usable[0] == "predicted_masks" and (
        isinstance(segmenter, StoredMasks) or (isinstance(segmenter, LiveMasks) and segmenter.external))
    measured = segmenter.diameters(manifest, patients) if measurable else None
    if head is not None and measurable:
        network = next(p for p in predictions if p["masks"].iloc[0] == "predicted_masks")
        frame = _size_head_frame(head, network, measured)
        report = _with_per_dataset(frame, n_boot)
        report.update(n_no_nodule_found=int((frame["n_slices"] == 0).sum()), head=head.describe(),
                      in_sample=split == head.fitted_on)
        versus = delong_test(frame["label"].to_numpy(int), frame["prob"].to_numpy(float),
                             network["prob"].to_numpy(float))
        result["size_head"] = report
        result["vs_network"] = {**versus, "n_patients": int(len(frame)), "method": "DeLong test, two correlated "
                                "ROC curves", "a": "size head", "b": "network alone (mean over slices)"}
        predictions.append(frame.drop(columns="diameter_mm"))
        result["headline"] = "size_head"
    elif head is not None:
        result["size_head"] = {"note": "the size head needs the segmentation run's stored predicted masks"}
    if usable:
        headline = next(p for p in predictions if p["masks"].iloc[0] == result["headline"])
        baseline, versus, frame = baseline_report(manifest, fit, headline)
        result["baseline_diameter"], result["vs_baseline"] = baseline, {**versus, "masks": result["headline"]}
        if len(frame):
            predictions.append(frame.assign(split=split, masks="baseline_diameter"))
        if measurable and fit.measured is not None:
            # The deployable size baseline: the same masks as the model, so no annotation is used.
            # Fitted on the training patients' stored masks (out of fold, unseen by their model).
            baseline, versus, frame = baseline_report(manifest, fit, headline, diameters=measured)
            result["baseline_measured_diameter"] = baseline
            result["vs_baseline_measured"] = {**versus, "masks": result["headline"]}
            if len(frame):
                predictions.append(frame.assign(split=split, masks="baseline_measured_diameter"))
        elif usable[0] == "predicted_masks":
            result["baseline_measured_diameter"] = {
                "note": "needs the segmentation run's stored predicted masks (train-seg writes them, out of "
                        "fold for its training patients); masks segmented now have none for the training patients"}
    return result, (pd.concat(predictions, ignore_index=True) if predictions else pd.DataFrame())


def _evaluate_classification(run, bench, manifest, splits, names, info, seg_run, device, progress, n_boot,
                             tta=None, min_peak=None, own: tuple[Path, pd.DataFrame] | None = None):
    """``own``: ``bench`` is an external cohort, and this is the benchmark the run trained on and its
    manifest (its training patients fit the diameter baselines; the segmenter runs live on the cohort)."""
    from .inference import SliceClassifier, SliceSegmenter

    classifier = SliceClassifier.from_run(run, device=device)
    seg_path = _resolve_seg_run(info, seg_run)
    segmenter = stored = None
    if seg_path:
        stored = StoredMasks.from_run(seg_path)
        if stored is not None and own is None:
            segmenter = stored
        else:
            segmenter = LiveMasks(SliceSegmenter.from_run(seg_path, device=device).with_options(tta, min_peak),
                                  external=own is not None)
    # The baselines' training patients, once for every split: the run's own, with their out-of-fold sizes.
    fit_manifest, train = (manifest, splits["classification"]["train"]) if own is None else (
        own[1], _run_splits(run, own[0])["classification"]["train"])
    fit = FitCohort(fit_manifest, train, stored.diameters(fit_manifest, train) if stored else None)
    head = PatientHead.load(run)
    results, predictions = {}, []
    for split in names:
        results[split], frame = classify_split(bench, manifest, splits, split, classifier, segmenter,
                                               progress, n_boot, fit, head)
        predictions.append(frame)
    return results, pd.concat(predictions, ignore_index=True), seg_path


def fit_patient_head(run, bench=None, seg_run=None, device: str = "cpu", progress: bool = False) -> dict:
    """Fit the size head of classification run ``run`` on its validation patients; write
    ``RUN/patient_head.json`` and return what it holds (see ``lungcad.patient_head``).

    The features are those ``evaluate`` computes on the segmentation run's stored predicted masks
    (out of fold for the validation patients): the network's patient probability and the largest
    measured diameter. Patients with no predicted nodule are left out of the fit (they score 0).
    """
    from .data import read_manifest
    from .inference import SliceClassifier
    from .models.run_io import read_model_json

    run = Path(run)
    info = read_model_json(run)
    if info.get("task") != "classification":
        raise LungcadError(f"{run}: the size head belongs to a classification run")
    bench = _resolve_bench(run, bench)
    seg_path = _resolve_seg_run(info, seg_run)
    segmenter = StoredMasks.from_run(seg_path) if seg_path else None
    if segmenter is None:
        raise LungcadError(f"{run}: the size head is fitted on the stored predicted masks of the run's segmentation "
                           f"run ({seg_path or 'none recorded'}); train it with out-of-fold masks (train-seg)")
    splits, manifest = _run_splits(run, bench), read_manifest(bench)
    patients = splits["classification"]["val"]
    classifier = SliceClassifier.from_run(run, device=device)
    slices = predicted_mask_probabilities(classifier, segmenter, bench, manifest, patients, progress)
    network = _patient_probabilities(slices, _patient_labels(manifest, patients), fill_missing=True)
    measured = segmenter.diameters(manifest, patients).reindex(network["patient_id"]).fillna(0.0)
    found = (network["n_slices"].to_numpy() > 0) & (measured.to_numpy() > 0)
    y, prob, diameter = (network["label"].to_numpy(int)[found], network["prob"].to_numpy(float)[found],
                         measured.to_numpy(float)[found])
    head = PatientHead.fit(prob, diameter, y)
    auc = {"network": delong_ci(y, prob)[0], "measured_diameter": delong_ci(y, diameter)[0],
           "size_head": delong_ci(y, head.predict_proba(prob, diameter))[0]}
    extra = {"seg_run": str(seg_path), "val_patients": len(patients),
             "val_patients_no_nodule_found": int((~found).sum()), "val_auc_in_sample": auc}
    head.save(run, extra)
    return {**head.describe(), **extra}


def fit_configured_head(run, bench=None, seg_run=None, device: str = "cpu") -> dict | None:
    """Fit the size head when the run's ``config.yaml`` asks for it (``patient_head: size``) and
    phase 2 was trained; None otherwise (the paper preset).

    The head is an addition to a trained run: when it cannot be fitted (too few validation patients
    with a predicted nodule, no stored masks) the run stays as it is, without a head, and the
    reason is returned (``fitted: false``) and printed. A head left from an earlier training of the
    run is removed then, so that evaluate and predict never pair it with other weights."""
    from .config import read_yaml
    from .patient_head import HEAD_FILE

    run = Path(run)
    config = read_yaml(run / "config.yaml") if (run / "config.yaml").is_file() else {}
    stale = run / HEAD_FILE
    if config.get("patient_head") != "size" or not (run / "phase2" / "model.json").is_file():
        if stale.is_file():
            stale.unlink()
            print(f"lungcad: {stale}: removed (this training has no size head)", file=sys.stderr)
        return None
    try:
        return {"fitted": True, **fit_patient_head(run, bench=bench, seg_run=seg_run, device=device)}
    except LungcadError as exc:
        stale.unlink(missing_ok=True)
        print(f"lungcad: {run}: no {exc}", file=sys.stderr)
        return {"fitted": False, "reason": str(exc)}


# --------------------------------------------------------------------------- reports and figures


def _fmt(value, ci=None) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    if ci and all(isinstance(c, (int, float)) and math.isfinite(c) for c in ci):
        return f"{value:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"
    return f"{value:.4f}"


def _table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _seg_rows(label: str, r: dict) -> list[str]:
    ci = r.get("ci") or {}
    return [label, str(r.get("n_patients", 0)), str(r.get("n_slices", 0)),
            _fmt(r.get("dice_nodule"), ci.get("dice_nodule")), _fmt(r.get("iou_nodule"), ci.get("iou_nodule")),
            _fmt(r.get("dice_all"), ci.get("dice_all")), _fmt(r.get("iou_all")),
            _fmt(r.get("fp_rate_empty"), ci.get("fp_rate_empty")), _fmt(r.get("dice_3d"), ci.get("dice_3d"))]


def _cls_rows(label: str, r: dict) -> list[str]:
    ci = r.get("ci") or {}
    return [label, str(r.get("n", 0)), _fmt(r.get("accuracy"), ci.get("accuracy")), _fmt(r.get("f1"), ci.get("f1")),
            _fmt(r.get("auc"), ci.get("auc")), _fmt(r.get("sensitivity")), _fmt(r.get("specificity")),
            str(r.get("confusion_matrix", "–"))]


def metrics_markdown(metrics: dict) -> str:
    """A readable Markdown rendering of ``metrics.json``."""
    lines = [f"# Evaluation of {metrics['run']} ({metrics['arch']}, {metrics['task']})", "",
             f"Benchmark: `{metrics['bench']}`. 95% intervals in brackets."
             + (f" Test-time augmentation: {metrics['tta']}." if metrics.get("tta") else "")
             + (f" 3D components with a peak probability below {metrics['min_component_peak']} removed."
                if metrics.get("min_component_peak") else ""), ""]
    if metrics["task"] == "segmentation":
        header = ["Split / dataset", "Patients", "Slices", "Dice (nodule slices)", "IoU (nodule slices)",
                  "Dice (all slices)", "IoU (all)", "FP rate (empty slices)", "3D Dice"]
        rows = []
        for split, r in metrics["results"].items():
            rows.append(_seg_rows(f"**{split}**", r))
            rows += [_seg_rows(f"{split} / {name}", d) for name, d in (r.get("per_dataset") or {}).items()]
        lines += _table(header, rows)
        sized = {split: r["by_size"] for split, r in metrics["results"].items() if r.get("by_size")}
        if sized:
            lines += ["", "Nodule slices by the reference cross-section's equivalent diameter: Dice, and the "
                      "share of slices with no predicted pixel (missed).", ""]
            size_rows = [[f"**{split}**", label, str(v["n_slices"]), _fmt(v["dice_nodule"]), _fmt(v["missed"])]
                         for split, by_size in sized.items() for label, v in by_size.items()]
            lines += _table(["Split", "Cross-section", "Slices", "Dice", "Missed"], size_rows)
    else:
        header = ["Split / masks / dataset", "Patients", "Accuracy", "F1", "AUC", "Sensitivity", "Specificity",
                  "[[TN, FP], [FN, TP]]"]
        for split, r in metrics["results"].items():
            rows = []
            for masks in ("size_head", "predicted_masks", "gt_masks"):
                if masks not in r or not r[masks].get("n"):
                    continue
                star = " (headline)" if masks == r.get("headline") else ""
                rows.append(_cls_rows(f"**{split} / {masks}**{star}", r[masks]))
                rows += [_cls_rows(f"{split} / {masks} / {name}", d) for name, d in (r[masks].get("per_dataset") or {}).items()]
            lines += [f"## {split}", ""] + _table(header, rows) + [""]
            head, v = r.get("size_head") or {}, r.get("vs_network") or {}
            if head.get("n"):
                sample = " (fitted on these patients: in-sample)" if head.get("in_sample") else ""
                lines += [f"size_head: the network's patient probability and the largest measured diameter, "
                          f"weighed by a logistic regression fitted on the {head['head']['fitted_on']} patients"
                          f"{sample}; vs the network alone (DeLong): z = {_fmt(v.get('z'))}, p = {_fmt(v.get('p'))}.",
                          ""]
            for key, versus_key, label in BASELINES:
                b, v = r.get(key) or {}, r.get(versus_key) or {}
                if b.get("n_patients"):
                    lines += [f"{label}: AUC {_fmt(b.get('auc'), b.get('auc_ci'))} on {b['n_patients']} patients; "
                              f"model vs baseline (DeLong, {v.get('n_patients', 0)} patients): "
                              f"z = {_fmt(v.get('z'))}, p = {_fmt(v.get('p'))}.", ""]
    return "\n".join(lines).rstrip() + "\n"


def _classification_figures(figures: Path, results: dict, predictions: pd.DataFrame) -> list[str]:
    from .plots import plot_confusion, plot_per_dataset, plot_roc

    written = []
    for split, r in results.items():
        headline = r.get("headline")
        if not headline:
            continue
        written.append(str(plot_confusion(r[headline]["confusion_matrix"], figures / f"confusion_{split}.png",
                                          title=f"{split}, {headline.replace('_', ' ')}")))
        curves = {}
        for masks, label in (("size_head", "model + size head"), ("predicted_masks", "model, predicted masks"),
                             ("gt_masks", "model, GT masks"), ("baseline_diameter", "diameter baseline"),
                             ("baseline_measured_diameter", "measured-diameter baseline")):
            rows = predictions[(predictions["split"] == split) & (predictions["masks"] == masks)]
            if len(rows):
                curves[label] = (rows["label"].to_numpy(int), rows["prob"].to_numpy(float))
        written.append(str(plot_roc(curves, figures / f"roc_{split}.png", title=split)))
        per_dataset = {k: v.get("auc") for k, v in (r[headline].get("per_dataset") or {}).items()}
        if per_dataset:
            written.append(str(plot_per_dataset(per_dataset, figures / f"auc_per_dataset_{split}.png", "AUC")))
    return written


def _segmentation_figures(figures: Path, results: dict) -> list[str]:
    from .plots import plot_per_dataset

    written = []
    for split, r in results.items():
        per_dataset = {k: v.get("dice_nodule") for k, v in (r.get("per_dataset") or {}).items()}
        if per_dataset:
            written.append(str(plot_per_dataset(per_dataset, figures / f"dice_per_dataset_{split}.png",
                                                "Dice (nodule slices)")))
    return written


def _headline_scalars(task: str, results: dict) -> dict:
    """Flat scalars (``test_dice_all``, ``test_auc`` ...) for scripts and the demo's summary."""
    out = {}
    for split, r in results.items():
        if task == "segmentation":
            for key in ("dice_all", "dice_nodule", "iou_nodule", "fp_rate_empty", "dice_3d"):
                if key in r:
                    out[f"{split}_{key}"] = r[key]
        elif r.get("headline"):
            for key in ("accuracy", "f1", "auc"):
                out[f"{split}_{key}"] = r[r["headline"]].get(key)
    return out


# --------------------------------------------------------------------------- entry points


def _is_benchmark(own: Path, bench: Path, manifest: pd.DataFrame, own_manifest: pd.DataFrame | None = None) -> bool:
    """Whether ``bench`` (read as ``manifest``) is the benchmark at ``own``: the same folder, or the
    same series (moved or re-ingested, not another cohort). ``own``'s manifest is read only when the
    folders differ and ``own_manifest`` is not given."""
    from .data import read_manifest

    if own.resolve() == bench.resolve():
        return True
    own_manifest = read_manifest(own) if own_manifest is None else own_manifest
    return set(own_manifest["series_uid"].astype(str)) == set(manifest["series_uid"].astype(str))


def _check_trained_bench(run: Path, bench: Path, manifest: pd.DataFrame) -> None:
    """Refuse to score a run with its own split on a benchmark that is not the one it trained on.

    Patient IDs repeat across benchmarks (every synth draw has LIDC-IDRI-0001, so may two ingests of
    one collection), so the run's split would silently pick "test" patients of another cohort,
    some of them its training patients' namesakes. Another cohort is ``--external``."""
    try:
        own = _resolve_bench(run, None)
    except LungcadError:
        return  # the recorded benchmark is gone (moved): trust --bench
    if not _is_benchmark(own, bench, manifest):
        raise LungcadError(f"{bench}: not the benchmark {run} was trained on ({own}; their series differ). "
                           "To evaluate the run on a cohort it never saw, add --external")


def _external_splits(manifest: pd.DataFrame) -> dict:
    """An external cohort as the one split ``external``: every patient for segmentation (those with
    an outline count), every labelled patient for classification."""
    labelled = sorted(manifest.loc[manifest["label"].notna(), "patient_id"].unique())
    return {"unit": "patient", "segmentation": {EXTERNAL: sorted(manifest["patient_id"].unique())},
            "classification": {EXTERNAL: labelled}}


def evaluate_run(run, bench=None, split: str = "test", seg_run=None, out=None, device: str = "cpu",
                 progress: bool = True, n_boot: int = 2000, quiet: bool = False, tta: str | None = None,
                 min_peak: float | None = None, external: bool = False) -> dict:
    """Evaluate the run folder ``run`` on ``split`` (train, val, test, or all = each reported).

    ``tta`` replaces the segmentation test-time augmentation of the run's ``model.json`` (a
    segmentation run, or the live segmenter of a classification run; stored predicted masks keep
    the augmentation they were written with). ``min_peak`` likewise replaces its component filter
    (``min_component_peak``; 0 turns it off).

    ``external``: ``bench`` is a cohort the run never saw (another collection, a hospital's own
    scans, a new synth draw). Every labelled patient of it is evaluated as the split ``external``
    (``split`` does not apply): predicted masks are segmented now by the segmentation run's final
    model, the diameter baselines and the size head keep what they learned on the run's own
    benchmark (its training patients; the size head its validation patients), and the results go
    to ``RUN/external/<bench folder name>/`` unless ``out`` is given.

    Writes ``metrics.json`` (``RUN/metrics.json`` or ``out``), ``metrics.md`` and
    ``predictions.csv`` beside it (per patient for classification, per slice for segmentation), and
    figures under ``RUN/figures`` (external: beside the metrics); prints the Markdown table unless
    ``quiet``. Returns the metrics dict (as written, nan -> None).
    """
    from .data import read_manifest
    from .models.run_io import read_model_json

    run = Path(run)
    info = read_model_json(run)
    task = info.get("task")
    if task not in ("segmentation", "classification"):
        raise LungcadError(f"{run / 'model.json'}: unknown task {task!r}")
    own_bench = None
    if external:
        if bench is None:
            raise LungcadError("--external needs --bench: the cohort to evaluate the run on")
        bench = _resolve_bench(run, bench)
        manifest = read_manifest(bench)
        if task == "classification":
            own_bench = _resolve_bench(run, None)  # the baselines' training patients
            own_manifest = read_manifest(own_bench)
            if _is_benchmark(own_bench, bench, manifest, own_manifest):
                raise LungcadError(f"{bench}: the benchmark {run} was trained on, not an external cohort")
        splits, names, split = _external_splits(manifest), [EXTERNAL], EXTERNAL
        out = Path(out) if out is not None else run / EXTERNAL / bench.name / "metrics.json"
        figure_dir = out.parent / "figures"
    else:
        explicit = bench is not None
        bench = _resolve_bench(run, bench)
        manifest = read_manifest(bench)
        if explicit:
            _check_trained_bench(run, bench, manifest)
        splits = _run_splits(run, bench)
        names = _split_names(split)
        figure_dir = run / "figures"
    metrics = {"schema": 1, "task": task, "arch": info.get("arch"), "run": run.name, "bench": str(bench),
               "split": split, "splits_unit": splits.get("unit", "patient"), "lungcad_version": __version__}
    if external:
        try:
            trained_on = str(own_bench or _resolve_bench(run, None))
        except LungcadError:
            trained_on = None  # a segmentation run whose benchmark moved: not needed to evaluate it
        metrics["external"] = {"trained_on": trained_on, "run_dir": str(run.resolve()),
                               "note": "a cohort the run never saw: every labelled patient, masks segmented now"}
    predictions = None
    if task == "segmentation":
        results, predictions, segmenter = _evaluate_segmentation(run, bench, manifest, splits, names, device,
                                                                 progress, n_boot, tta, min_peak)
        metrics["tta"], metrics["min_component_peak"] = segmenter.tta, segmenter.min_component_peak
        figures = _segmentation_figures(figure_dir, results)
        metrics["threshold"] = info.get("threshold", 0.5)
    else:
        results, predictions, seg_path = _evaluate_classification(
            run, bench, manifest, splits, names, info, seg_run, device, progress, n_boot, tta, min_peak,
            None if own_bench is None else (own_bench, own_manifest))
        metrics["seg_run"] = str(seg_path) if seg_path else None
        if seg_path is None:
            recorded = info.get("seg_run")
            metrics["notes"] = [f"segmentation run {recorded} recorded in model.json not found: ground-truth masks only"
                                if recorded else "no segmentation run given (--seg-run): ground-truth masks only"]
        metrics["aggregation"] = "mean of slice probabilities per patient, threshold 0.5" + (
            "; headline size_head: that mean and the largest measured diameter, weighed by RUN/patient_head.json"
            if any(r.get("headline") == "size_head" for r in results.values()) else "")
        figures = _classification_figures(figure_dir, results, predictions)
    metrics.update(_headline_scalars(task, results))
    metrics["results"] = results
    metrics["figures"] = figures
    metrics = _json_ready(metrics)

    out = Path(out) if out is not None else run / "metrics.json"
    write_text_atomic(out, json.dumps(metrics, indent=2) + "\n")
    markdown = metrics_markdown(metrics)
    write_text_atomic(out.with_suffix(".md"), markdown)
    if predictions is not None and len(predictions):
        csv_path = out.with_name("predictions.csv" if out.name == "metrics.json" else out.stem + "_predictions.csv")
        write_text_atomic(csv_path, predictions.to_csv(index=False))
    if not quiet:
        print(markdown)
    return metrics


def _run_predictions(run: Path, bench, split: str) -> tuple[Path, pd.DataFrame]:
    """``RUN/predictions.csv``; the run is evaluated first when it has none yet."""
    from .models.run_io import read_model_json

    if read_model_json(run).get("task") != "classification":
        raise LungcadError(f"{run}: not a classification run; --compare needs two classification runs")
    path = run / "predictions.csv"
    if not path.is_file():
        evaluate_run(run, bench=bench, split=split, progress=False, quiet=True)
    if not path.is_file():
        raise LungcadError(f"{run}: evaluation produced no patient predictions (no usable patient in the split)")
    return path, pd.read_csv(path, dtype={"patient_id": str, "split": str, "masks": str})


def compare_runs(run_a, run_b, bench=None, split: str = "test", masks: str | None = None) -> dict:
    """DeLong test between two classification runs on the patients they share.

    Uses each run's ``predictions.csv`` (written by ``evaluate_run``; a run without one is evaluated
    first, on ``bench`` or the benchmark of its config) and each run's headline (the size head,
    else predicted masks, when present) unless ``masks`` names one. ``split='all'`` compares each split
    and returns ``{split: result}``.
    """
    if split == "all":
        return {name: compare_runs(run_a, run_b, bench, name, masks) for name in SPLITS}
    _split_names(split)
    frames = []
    for run in (Path(run_a), Path(run_b)):
        path, table = _run_predictions(run, bench, split)
        table = table[table["split"] == split]
        if table.empty:
            raise LungcadError(f"{path}: no predictions for split {split!r}; evaluate with --split {split} or all")
        chosen = masks
        if chosen is None:  # the headline: the size head, else the network on predicted masks, else gt
            chosen = next((m for m in ("size_head", "predicted_masks") if (table["masks"] == m).any()), "gt_masks")
        table = table[table["masks"] == chosen]
        if table.empty:
            raise LungcadError(f"{path}: no {chosen} predictions for split {split!r}")
        frames.append(table[["patient_id", "label", "prob"]].assign(masks=chosen))
    both = frames[0].merge(frames[1], on="patient_id", suffixes=("_a", "_b"))
    if both.empty:
        raise LungcadError(f"{run_a} and {run_b}: no patient in common on split {split!r}")
    if (both["label_a"] != both["label_b"]).any():
        raise LungcadError(f"{run_a} and {run_b}: the same patient has different labels; "
                           "were they evaluated on the same benchmark?")
    test = delong_test(both["label_a"].to_numpy(int), both["prob_a"], both["prob_b"])
    result = {"run_a": str(run_a), "run_b": str(run_b), "split": split, "n_patients": int(len(both)),
              "masks_a": frames[0]["masks"].iloc[0], "masks_b": frames[1]["masks"].iloc[0],
              "method": "DeLong test, two correlated ROC curves", **test}
    return _json_ready(result)
