"""The size baseline: logistic regression on the patient's largest nodule diameter.

Nodule size is the strongest single clinical predictor of malignancy (Fleischner, Brock), so a
deep classifier is only interesting if it beats it. A patient's diameter is the largest
equivalent-circle diameter over their annotated slices, in millimetres:
``d = 2 * sqrt(area_mm2 / pi)`` with ``area_mm2 = nodule_area_px * spacing_row_mm * spacing_col_mm``
(the manifest's columns; pixels need not be square). Patients without any annotated nodule pixel
have no diameter and are left out of the baseline (reported as counts, never imputed).

The same logistic regression on the diameter *measured on a segmenter's predicted masks*
(:func:`patient_largest_diameter_mm` over predicted areas) is the deployable size baseline: it
needs no annotation, so it compares a classifier with what the segmentation stage alone already
says. There a patient on whom the segmenter found nothing has diameter 0 (a measurement, not a gap).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from .errors import LungcadError
from .ingest.manifest import MASKED_SOURCES as DEFAULT_MASK_SOURCES


def patient_max_diameter_mm(manifest: pd.DataFrame, mask_sources=DEFAULT_MASK_SOURCES) -> pd.Series:
    """Largest equivalent-circle nodule diameter (mm) per patient, from the manifest's mask areas.

    Only slices whose ``mask_source`` is in ``mask_sources`` and with ``nodule_area_px > 0`` count.
    Returns a float Series indexed by ``patient_id`` (patients without such a slice are absent).
    """
    needed = ("patient_id", "nodule_area_px", "spacing_row_mm", "spacing_col_mm", "mask_source")
    missing = [c for c in needed if c not in manifest]
    if missing:
        raise LungcadError(f"manifest lacks columns needed by the diameter baseline: {missing}")
    rows = manifest[manifest["mask_source"].isin(mask_sources)]
    area = pd.to_numeric(rows["nodule_area_px"], errors="coerce").fillna(0.0)
    return patient_largest_diameter_mm(rows[area > 0], area[area > 0])


def patient_largest_diameter_mm(rows: pd.DataFrame, area_px) -> pd.Series:
    """Largest equivalent-circle diameter (mm) per patient, ``2 sqrt(area_mm2 / pi)`` over ``rows``.

    ``rows``: manifest rows; ``area_px``: a pixel count aligned with them (the annotated area, or
    the foreground of each row's predicted mask). Every patient of ``rows`` is present, with 0.0
    where no row has a pixel: on predicted masks, the segmenter found nothing.
    """
    area_mm2 = np.asarray(area_px, np.float64) * rows["spacing_row_mm"].astype(float) * rows["spacing_col_mm"].astype(float)
    diameter = 2.0 * np.sqrt(area_mm2 / np.pi)
    return diameter.groupby(rows["patient_id"]).max().rename("diameter_mm")


@dataclass
class DiameterBaseline:
    """A fitted one-feature logistic regression ``P(malignant | diameter_mm)``."""

    model: LogisticRegression | None
    constant: float | None = None  # training prevalence, used when the training set had one class

    @classmethod
    def fit(cls, diameter_mm, labels) -> "DiameterBaseline":
        """Fit on training patients; with a single class the prediction is that class's prevalence."""
        x = np.asarray(diameter_mm, dtype=np.float64).reshape(-1, 1)
        y = np.asarray(labels).astype(int)
        if x.shape[0] == 0:
            raise LungcadError("diameter baseline: no training patient has a nodule diameter")
        if np.unique(y).size < 2:
            return cls(model=None, constant=float(y.mean()))
        return cls(model=LogisticRegression().fit(x, y))

    def predict_proba(self, diameter_mm) -> np.ndarray:
        x = np.asarray(diameter_mm, dtype=np.float64).reshape(-1, 1)
        if self.model is None:
            return np.full(x.shape[0], self.constant)
        return self.model.predict_proba(x)[:, 1]

    def describe(self) -> dict:
        if self.model is None:
            return {"constant": self.constant}
        return {"coef_per_mm": float(self.model.coef_[0, 0]), "intercept": float(self.model.intercept_[0])}


def patient_labels(manifest: pd.DataFrame) -> pd.Series:
    """One label per patient (labels are patient-level in the benchmark)."""
    return manifest.groupby("patient_id")["label"].max().astype(int)


def diameter_baseline(
    manifest: pd.DataFrame, train_patients, eval_patients, mask_sources=DEFAULT_MASK_SOURCES,
    diameters: pd.Series | None = None, train_manifest: pd.DataFrame | None = None,
    train_diameters: pd.Series | None = None,
) -> tuple[DiameterBaseline, pd.DataFrame]:
    """Fit on ``train_patients`` and predict ``eval_patients``.

    ``diameters`` (mm per patient) defaults to the annotated ones (:func:`patient_max_diameter_mm`);
    pass :func:`patient_largest_diameter_mm` of predicted areas for the baseline on predicted masks.
    ``train_manifest`` is the training patients' benchmark when it is not ``manifest`` (an external
    cohort is evaluated with the baseline fitted on the run's own training patients); their
    diameters are then ``train_diameters``, or the annotated ones of ``train_manifest`` when None.
    Returns the fitted baseline and a frame ``patient_id, label, diameter_mm, prob`` for the
    evaluation patients that have a diameter (sorted by patient_id).
    """
    if diameters is None:
        diameters = patient_max_diameter_mm(manifest, mask_sources)
    if train_manifest is None:
        train_manifest, train_diameters = manifest, diameters
    elif train_diameters is None:
        train_diameters = patient_max_diameter_mm(train_manifest, mask_sources)
    labels, train_labels = patient_labels(manifest), patient_labels(train_manifest)
    train = [p for p in train_patients if p in train_diameters.index]
    baseline = DiameterBaseline.fit(train_diameters.loc[train].to_numpy(), train_labels.loc[train].to_numpy())
    evaluated = sorted(p for p in eval_patients if p in diameters.index)
    frame = pd.DataFrame(
        {
            "patient_id": evaluated,
            "label": labels.loc[evaluated].to_numpy(),
            "diameter_mm": diameters.loc[evaluated].to_numpy(),
        }
    )
    frame["prob"] = baseline.predict_proba(frame["diameter_mm"]) if len(frame) else []
    return baseline, frame
