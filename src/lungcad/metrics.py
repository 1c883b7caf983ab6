"""Segmentation and classification metrics (numpy; sklearn for the classification scores).

Conventions, stated once because the numbers depend on them:

- ``dice`` / ``iou`` of two empty masks equal ``empty`` (default 1.0: "no nodule, none predicted" is
  a perfect answer). Pass ``empty=np.nan`` to leave such slices out of a ``nanmean``.
- Segmentation results are computed from per-slice pixel counts (intersection, predicted pixels,
  target pixels), so that a whole split never has to sit in memory as masks. A series' 3D Dice is
  the Dice of its stacked slices, which equals the Dice of the summed counts.
- Classification summaries are patient-level in this project: slice probabilities are averaged per
  patient first (``patient_aggregate``; the paper's rule), then thresholded at 0.5.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

COUNT_COLUMNS = ("intersection", "pred_px", "target_px")
#: Nodule-slice size classes by the reference cross-section's equivalent-circle diameter (mm). A
#: mean over nodule slices is dominated by the many small end slices of each nodule; these classes
#: show where the Dice comes from (6 and 8 mm are the Fleischner thresholds; 5 mm is about 4 px at
#: the paper's 256 px).
SIZE_CLASSES_MM = ((0.0, 5.0), (5.0, 10.0), (10.0, 20.0), (20.0, float("inf")))


def _as_bool(a) -> np.ndarray:
    return np.asarray(a).astype(bool)


def overlap_counts(pred, target) -> dict[str, np.ndarray]:
    """Per-slice pixel counts of two (N, H, W) (or (H, W)) binary stacks.

    Returns ``{"intersection", "pred_px", "target_px"}``, each an int64 array of length N
    (length 1 for a single 2D slice).
    """
    pred, target = _as_bool(pred), _as_bool(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    if pred.ndim == 2:
        pred, target = pred[None], target[None]
    axes = tuple(range(1, pred.ndim))
    return {
        "intersection": np.logical_and(pred, target).sum(axis=axes).astype(np.int64),
        "pred_px": pred.sum(axis=axes).astype(np.int64),
        "target_px": target.sum(axis=axes).astype(np.int64),
    }


def dice_from_counts(intersection, pred_px, target_px, empty: float = 1.0) -> np.ndarray:
    """Dice = 2|P∩T| / (|P| + |T|) element-wise; ``empty`` where both masks are empty."""
    inter = np.asarray(intersection, dtype=np.float64)
    denom = np.asarray(pred_px, dtype=np.float64) + np.asarray(target_px, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2.0 * inter / np.where(denom > 0, denom, 1.0), empty)


def iou_from_counts(intersection, pred_px, target_px, empty: float = 1.0) -> np.ndarray:
    """IoU = |P∩T| / |P∪T| element-wise; ``empty`` where both masks are empty."""
    inter = np.asarray(intersection, dtype=np.float64)
    union = np.asarray(pred_px, dtype=np.float64) + np.asarray(target_px, dtype=np.float64) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), empty)


def dice(pred, target, empty: float = 1.0):
    """Dice of two binary masks of any shape; a (N, H, W) stack gives one value per slice.

    A 2D input returns a float. Two empty masks give ``empty`` (default 1.0).
    """
    counts = overlap_counts(pred, target)
    values = dice_from_counts(**counts, empty=empty)
    return float(values[0]) if np.asarray(pred).ndim == 2 else values


def iou(pred, target, empty: float = 1.0):
    """Intersection over union, same conventions as ``dice``."""
    counts = overlap_counts(pred, target)
    values = iou_from_counts(**counts, empty=empty)
    return float(values[0]) if np.asarray(pred).ndim == 2 else values


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else float("nan")


def patient_dice_3d(slices_df: pd.DataFrame, empty: float = 1.0) -> pd.Series:
    """3D Dice per patient: each series' slices are stacked into a volume (summed counts), the
    patient's value is the mean over its series. Indexed by ``patient_id``."""
    keys = ["patient_id", "series_uid"] if "series_uid" in slices_df else ["patient_id"]
    per_series = slices_df.groupby(keys, sort=True)[list(COUNT_COLUMNS)].sum()
    per_series["dice_3d"] = dice_from_counts(
        per_series["intersection"], per_series["pred_px"], per_series["target_px"], empty=empty
    )
    return per_series.groupby(level="patient_id")["dice_3d"].mean()


def _summary_one(df: pd.DataFrame, empty: float) -> dict:
    d = dice_from_counts(df["intersection"], df["pred_px"], df["target_px"], empty=empty)
    j = iou_from_counts(df["intersection"], df["pred_px"], df["target_px"], empty=empty)
    has_nodule = df["target_px"].to_numpy() > 0
    predicted_any = df["pred_px"].to_numpy() > 0
    n_empty = int((~has_nodule).sum())
    return {
        "n_patients": int(df["patient_id"].nunique()),
        "n_slices": int(len(df)),
        "n_nodule_slices": int(has_nodule.sum()),
        "n_empty_slices": n_empty,
        "dice_nodule": _nanmean(d[has_nodule]),
        "iou_nodule": _nanmean(j[has_nodule]),
        "dice_all": _nanmean(d),
        "iou_all": _nanmean(j),
        "fp_rate_empty": float(predicted_any[~has_nodule].mean()) if n_empty else float("nan"),
        "dice_3d": _nanmean(patient_dice_3d(df, empty=empty).to_numpy()),
    }


def cross_section_diameter_mm(target_px, pixel_area_mm2) -> np.ndarray:
    """Equivalent-circle diameter ``2 sqrt(area / pi)`` of the reference cross-section, in mm."""
    area = np.asarray(target_px, dtype=np.float64) * np.asarray(pixel_area_mm2, dtype=np.float64)
    return 2.0 * np.sqrt(area / np.pi)


def size_class_label(low: float, high: float) -> str:
    return f">= {low:g} mm" if np.isinf(high) else f"{low:g}-{high:g} mm"


def dice_by_size(slices_df: pd.DataFrame) -> dict:
    """Nodule-slice Dice per size class (``SIZE_CLASSES_MM``): ``{label: {n_slices, dice_nodule,
    missed}}``, ``missed`` being the fraction of those slices with no predicted pixel at all. Needs a
    ``pixel_area_mm2`` column; classes without a slice are left out."""
    nodule = slices_df[slices_df["target_px"] > 0]
    diameter = cross_section_diameter_mm(nodule["target_px"], nodule["pixel_area_mm2"])
    d = dice_from_counts(nodule["intersection"], nodule["pred_px"], nodule["target_px"])
    out = {}
    for low, high in SIZE_CLASSES_MM:
        inside = (diameter >= low) & (diameter < high)
        if inside.any():
            out[size_class_label(low, high)] = {
                "n_slices": int(inside.sum()),
                "dice_nodule": float(d[inside].mean()),
                "missed": float((nodule["pred_px"].to_numpy()[inside] == 0).mean()),
            }
    return out


def segmentation_summary(slices_df: pd.DataFrame, empty: float = 1.0, by_dataset: bool = True) -> dict:
    """Summarise per-slice counts into the segmentation report.

    ``slices_df`` has one row per slice with ``patient_id``, ``intersection``, ``pred_px``,
    ``target_px`` and optionally ``series_uid`` and ``dataset``. Returns:

    - ``dice_nodule`` / ``iou_nodule``: mean over slices that contain a nodule (target not empty);
    - ``dice_all`` / ``iou_all``: mean over all slices (empty-empty slices count as ``empty``);
    - ``fp_rate_empty``: fraction of nodule-free slices with at least one predicted pixel;
    - ``dice_3d``: mean over patients of the patient's 3D Dice (``patient_dice_3d``);
    - counts, and ``per_dataset`` with the same keys for each dataset (when the column exists);
    - ``by_size``: ``dice_by_size`` (when a ``pixel_area_mm2`` column exists).
    """
    missing = [c for c in ("patient_id", *COUNT_COLUMNS) if c not in slices_df]
    if missing:
        raise ValueError(f"slices_df lacks columns {missing}")
    summary = _summary_one(slices_df, empty)
    if "pixel_area_mm2" in slices_df:
        summary["by_size"] = dice_by_size(slices_df)
    if by_dataset and "dataset" in slices_df:
        summary["per_dataset"] = {
            str(name): _summary_one(group, empty) for name, group in slices_df.groupby("dataset", sort=True)
        }
    return summary


def classification_summary(y_true, prob, threshold: float = 0.5) -> dict:
    """Accuracy, F1, AUC, sensitivity, specificity, precision and the confusion matrix.

    ``prob >= threshold`` is called malignant. The confusion matrix is sklearn's layout with labels
    (0, 1): ``[[TN, FP], [FN, TP]]``. AUC is ``nan`` when only one class is present; sensitivity /
    specificity / precision are ``nan`` when their denominator is zero.
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, dtype=np.float64)
    if y.shape != p.shape:
        raise ValueError(f"y_true shape {y.shape} differs from prob shape {p.shape}")
    pred = (p >= threshold).astype(int)
    (tn, fp), (fn, tp) = confusion_matrix(y, pred, labels=[0, 1]) if y.size else ((0, 0), (0, 0))

    def ratio(a, b):
        return float(a / b) if b else float("nan")

    two_classes = np.unique(y).size == 2
    return {
        "n": int(y.size),
        "n_pos": int((y == 1).sum()),
        "n_neg": int((y == 0).sum()),
        "threshold": float(threshold),
        "accuracy": ratio(tp + tn, y.size),
        "f1": float(f1_score(y, pred, labels=[0, 1], zero_division=0.0)) if y.size else float("nan"),
        "auc": float(roc_auc_score(y, p)) if two_classes else float("nan"),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "precision": ratio(tp, tp + fp),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


def patient_aggregate(slice_df: pd.DataFrame, how: str = "mean", prob_col: str = "prob",
                      absent: pd.DataFrame | None = None) -> pd.DataFrame:
    """Aggregate slice probabilities to one row per patient (the paper averages them).

    ``slice_df`` needs ``patient_id``, ``label`` and ``prob_col``; ``dataset`` is carried along when
    present. ``how`` is ``mean`` (the paper), ``median`` or ``max``. A patient whose slices disagree
    on ``label`` is an error (labels are patient-level in the benchmark). Returns columns
    ``patient_id, label, prob, n_slices`` (+ ``dataset``), sorted by ``patient_id``.

    ``absent`` (indexed by patient_id, a ``label`` column, optionally ``dataset``) lists patients
    that must be scored even without a slice: those missing from ``slice_df`` join with probability
    0 and ``n_slices`` 0. Used for predicted masks, where "no nodule found" is a benign call.
    """
    if how not in ("mean", "median", "max"):
        raise ValueError(f"unknown aggregation {how!r}; use mean, median or max")
    missing = [c for c in ("patient_id", "label", prob_col) if c not in slice_df]
    if missing:
        raise ValueError(f"slice_df lacks columns {missing}")
    grouped = slice_df.groupby("patient_id", sort=True)
    conflicting = grouped["label"].nunique()
    if (conflicting > 1).any():
        bad = ", ".join(conflicting[conflicting > 1].index[:5])
        raise ValueError(f"patients with more than one label across slices: {bad}")
    out = pd.DataFrame(
        {
            "label": grouped["label"].first().astype(int),
            "prob": grouped[prob_col].agg(how).astype(float),
            "n_slices": grouped.size(),
        }
    )
    if "dataset" in slice_df:
        out["dataset"] = grouped["dataset"].first()
    out = out.reset_index()
    if absent is not None:
        missing = absent.index.difference(out["patient_id"])
        if len(missing):
            extra = absent.loc[missing].rename_axis("patient_id").reset_index()
            extra = extra.assign(label=extra["label"].astype(int), prob=0.0, n_slices=0)
            out = pd.concat([out, extra], ignore_index=True).sort_values("patient_id").reset_index(drop=True)
    return out
