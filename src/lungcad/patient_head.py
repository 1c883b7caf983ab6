"""The size head: a patient-level logistic regression on the classifier's score and the nodule size.

Ours, not the paper's. The paper scores a patient by the mean of its slice probabilities. Nodule
size is the strongest single predictor of malignancy (Fleischner, Brock), and a slice classifier
sees it only through crops that are scaled to the nodule. So the image model's score and the
patient's largest measured diameter are two pieces of evidence. The size head weighs them with
two coefficients fitted on the validation patients (never the training patients, whose scores the
network has fitted, and never the test patients):

    P(malignant) = sigmoid(b + w_image * z(logit(p)) + w_size * z(size_value(d)))

- ``p``: the network's patient probability as ``lungcad evaluate`` computes it (the mean over the
  patient's core slices on the predicted masks), clipped to [1e-4, 1 - 1e-4] before the logit;
- ``d``: the patient's largest equivalent-circle diameter (mm) on the same predicted masks, the
  feature of the measured-diameter baseline, encoded as the ``nodule_size`` plane encodes it
  (``lungcad.features.size_value``, log scale);
- ``z``: standardisation with the validation patients' mean and standard deviation.

A patient on whom the segmenter found nothing has no score to weigh: probability 0, as for the
network alone (a benign call). When the image score carries nothing beyond size, the fitted weight
of the image term is small and the head falls back towards the diameter; the README reports the
network, the head and the diameter side by side.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import LungcadError

HEAD_FILE = "patient_head.json"
FEATURES = ("image_logit", "size_value")
MIN_PATIENTS = 10  # fewer validation patients with a nodule (or one class): no head
_CLIP = 1e-4


def image_logit(prob) -> np.ndarray:
    """Logit of the network's patient probability, clipped away from 0 and 1."""
    p = np.clip(np.asarray(prob, dtype=np.float64), _CLIP, 1.0 - _CLIP)
    return np.log(p / (1.0 - p))


def size_values(diameter_mm) -> np.ndarray:
    """``features.size_value`` of each diameter (mm)."""
    from .features import size_value

    return np.array([size_value(d) for d in np.asarray(diameter_mm, dtype=np.float64)], dtype=np.float64)


@dataclass
class PatientHead:
    """A fitted size head (see the module docstring). ``describe()`` is what ``patient_head.json`` holds."""

    mean: list[float]
    scale: list[float]
    coef: list[float]  # image, size (per standard deviation)
    intercept: float
    n_patients: int
    n_malignant: int
    fitted_on: str = "val"

    @classmethod
    def fit(cls, prob, diameter_mm, labels, fitted_on: str = "val") -> "PatientHead":
        """Fit on patients with a predicted nodule: their network probability, diameter and label."""
        from sklearn.linear_model import LogisticRegression

        x = np.column_stack([image_logit(prob), size_values(diameter_mm)])
        y = np.asarray(labels).astype(int)
        if len(y) != len(x):
            raise LungcadError(f"size head: {len(x)} patients but {len(y)} labels")
        if len(y) < MIN_PATIENTS or np.unique(y).size < 2:
            raise LungcadError(f"size head: needs at least {MIN_PATIENTS} {fitted_on} patients with a predicted "
                               f"nodule and both classes; got {len(y)} ({int(y.sum())} malignant)")
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)  # a constant feature gets weight 0 anyway
        fit = LogisticRegression().fit((x - mean) / scale, y)
        return cls(mean=[float(v) for v in mean], scale=[float(v) for v in scale],
                   coef=[float(v) for v in fit.coef_[0]], intercept=float(fit.intercept_[0]),
                   n_patients=int(len(y)), n_malignant=int(y.sum()), fitted_on=fitted_on)

    def predict_proba(self, prob, diameter_mm) -> np.ndarray:
        """Patient probabilities; a patient with ``diameter_mm`` 0 (no nodule found) gets 0."""
        diameter = np.asarray(diameter_mm, dtype=np.float64)
        x = np.column_stack([image_logit(prob), size_values(diameter)])
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        logit = self.intercept + z @ np.asarray(self.coef)
        out = 1.0 / (1.0 + np.exp(-logit))
        return np.where(diameter > 0, out, 0.0)

    def describe(self) -> dict:
        return {"features": list(FEATURES), **asdict(self),
                "formula": "sigmoid(intercept + coef . (x - mean) / scale), x = [logit(p), size_value(d)]"}

    def save(self, run_dir: str | Path, extra: dict | None = None) -> Path:
        from .io import write_text_atomic

        path = Path(run_dir) / HEAD_FILE
        write_text_atomic(path, json.dumps({**self.describe(), **(extra or {})}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> "PatientHead | None":
        """The run's head, or None when it has none."""
        path = Path(run_dir) / HEAD_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            head = cls(**{k: data[k] for k in ("mean", "scale", "coef", "intercept", "n_patients",
                                               "n_malignant", "fitted_on")})
        except (ValueError, KeyError, TypeError) as exc:
            raise LungcadError(f"{path}: not a size head ({exc})") from exc
        values = [*head.mean, *head.scale, *head.coef, head.intercept]
        if len(head.coef) != len(FEATURES) or not all(math.isfinite(v) for v in values):
            raise LungcadError(f"{path}: needs {len(FEATURES)} finite coefficients, got {head.coef}")
        return head
