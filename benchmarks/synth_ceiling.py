"""How much a synthetic benchmark lets any classifier gain over nodule size.

    python benchmarks/synth_ceiling.py BENCH TRUTH [--split test] [--run RUN] [--out FILE]
    python benchmarks/synth_ceiling.py COHORT TRUTH --split external [--fit BENCH TRUTH] [--run DIR]

``TRUTH`` is the ``synth_truth.json`` that ``lungcad synth`` wrote beside the raw data of
``BENCH``. The phantom draws each nodule's malignancy from a logistic model of its diameter, shape
and density plus noise (``lungcad.synth.phantom``), and a patient is malignant when any nodule is
(cancer-cohort tumours always are). On the patients of ``--split`` (``splits.json``,
classification) with a label in the manifest, the script prints the patient-level AUC and DeLong
95% interval of:

* ``true_diameter``: the largest true diameter;
* ``noise_free_logit``: the phantom's own malignancy logit without its noise, the most malignant
  nodule's; an upper bound for any model, as it knows the coefficients;
* ``noise_free_logit_visible``: the same with calcified nodules scored as solid ones. In the
  paper's lung window (-1200..0 HU) calcium (350-700 HU) and solid tissue (15-45 HU) both clip to
  white, so no image model can see calcification;
* ``oracle_fitted``: a logistic regression on the true log diameter, shape and visible density of
  each patient's largest nodule, fitted on the training patients: what a model that perceived the
  morphology perfectly could learn from this training set;
* with ``--run``, the run's own patient scores on the same patients (``predictions.csv``: the
  measured-diameter baseline and the headline), and their DeLong p against ``true_diameter``;
* with ``--run``, what the network's own score carries (``score_content``): for its patient
  probability on ground-truth and on predicted masks, the R² of its logit on the true log diameter
  alone and with the largest nodule's visible shape and density added (F test of the addition), and
  the partial correlation, given the log diameter, of its logit with the phantom's morphology term
  (the shape and visible density coefficients of the malignancy model) with a Fisher 95% interval.
  A network that learned only size shows no R² gain and a partial correlation near 0; one that
  learned the phantom's morphology, a positive one.

With ``--split external`` BENCH is a cohort that ``lungcad evaluate RUN --bench COHORT --external``
scored: every labelled patient of it counts (no ``splits.json``), ``--run`` is the folder that
evaluation wrote (``RUN/external/<cohort>/``), and the fitted oracle is fitted on the training
patients of ``--fit BENCH TRUTH`` (the run's own benchmark), or left out without it.

Results are printed and saved as JSON (default ``benchmarks/results/synth_ceiling_<bench>.json``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps
from sklearn.linear_model import LogisticRegression

from lungcad.baseline import patient_labels
from lungcad.data import read_manifest
from lungcad.patient_head import image_logit
from lungcad.splits import load_splits
from lungcad.stats import delong_ci, delong_test
from lungcad.synth import malignancy_logit
from lungcad.synth.phantom import SHAPES

VISIBLE_DENSITIES = ("solid", "part-solid", "ground-glass")  # calcified looks solid in the lung window


def _visible(density: str) -> str:
    return "solid" if density == "calcified" else density


def patient_truth(truth: dict) -> pd.DataFrame:
    """One row per synthetic patient: the scores above that need only the truth file."""
    rows = []
    for source, block in truth["sources"].items():
        for p in block["patients"]:
            nods = p["nodules"]
            largest = max(nods, key=lambda n: n["diameter_mm"])
            rows.append({
                "patient_id": f"{source}/{p['patient_id']}",
                "true_diameter": max(n["diameter_mm"] for n in nods),
                "noise_free_logit": max(malignancy_logit(n["diameter_mm"], n["shape"], n["density"]) for n in nods),
                "noise_free_logit_visible": max(malignancy_logit(n["diameter_mm"], n["shape"], _visible(n["density"]))
                                                for n in nods),
                "log_diameter": math.log(largest["diameter_mm"]),
                "shape": largest["shape"], "density": _visible(largest["density"]),
                # The malignancy model's non-size terms for the largest nodule, as an image shows it.
                "morphology_term": (malignancy_logit(10.0, largest["shape"], _visible(largest["density"]))
                                    - malignancy_logit(10.0, "smooth", "solid")),
            })
    return pd.DataFrame(rows).set_index("patient_id")


def _design(frame: pd.DataFrame) -> np.ndarray:
    cols = [frame["log_diameter"].to_numpy()]
    cols += [(frame["shape"] == s).to_numpy(float) for s in SHAPES[1:]]
    cols += [(frame["density"] == d).to_numpy(float) for d in VISIBLE_DENSITIES[1:]]
    return np.column_stack(cols)


def _residual(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """What is left of ``y`` after its least-squares fit on ``x`` with an intercept."""
    design = np.column_stack([np.ones(len(y)), x])
    return y - design @ np.linalg.lstsq(design, y, rcond=None)[0]


def _r2(resid: np.ndarray, y: np.ndarray) -> float:
    """R² of a fit of ``y`` whose residual is ``resid``."""
    return 1.0 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum())


def score_content(frame: pd.DataFrame, prob) -> dict:
    """How much of a score's logit is size and how much the phantom's visible morphology.

    ``frame``: rows of :func:`patient_truth`; ``prob``: the score (a probability) of each row.
    Returns the R² of ``logit(prob)`` on the log diameter (``r2_size``) and on the full design of
    the fitted oracle (``r2_size_morphology``), the F test of the added shape and density columns,
    and the partial correlation of the logit with ``morphology_term`` given the log diameter, with
    its Fisher-z 95% interval.
    """
    z = image_logit(prob)
    size = frame[["log_diameter"]].to_numpy(float)
    full = _design(frame)
    n, k_full, k_size = len(z), full.shape[1] + 1, 2  # parameters, with the intercept
    a = _residual(size, z)  # the logit beyond size: for R² and the partial correlation alike
    r2_size, r2_full = _r2(a, z), _r2(_residual(full, z), z)
    q = k_full - k_size
    f = ((r2_full - r2_size) / q) / max((1.0 - r2_full) / (n - k_full), 1e-12)
    b = _residual(size, frame["morphology_term"].to_numpy(float))
    denom = math.sqrt(float(a @ a) * float(b @ b))
    r = float(a @ b) / denom if denom > 0 else float("nan")
    half = 1.96 / math.sqrt(max(n - 4, 1))  # Fisher z, one covariate partialled out
    zr = math.atanh(max(min(r, 0.999999), -0.999999))
    return {"n": int(n), "r2_size": r2_size, "r2_size_morphology": r2_full,
            "f": float(f), "f_p": float(sps.f.sf(f, q, n - k_full)),
            "partial_r_morphology": r, "partial_r_ci": [math.tanh(zr - half), math.tanh(zr + half)]}


RESULTS = Path(__file__).parent / "results"


def write_result(result: dict, out: Path) -> None:
    """Save a script's result as JSON (creating the folder) and say where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path)
    ap.add_argument("truth", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--run", type=Path, default=None, help="an evaluated classification run on BENCH")
    ap.add_argument("--fit", nargs=2, type=Path, default=None, metavar=("BENCH", "TRUTH"),
                    help="with --split external: the benchmark (and its truth) whose training patients fit the oracle")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    def labelled(bench: Path, truth: pd.DataFrame, split: str) -> pd.DataFrame:
        """The truth rows of ``split``'s labelled patients (``external``: all of them)."""
        labels = patient_labels(read_manifest(bench).dropna(subset=["label"]))  # unlabelled: not scored
        members = labels.index if split == "external" else load_splits(bench)["classification"][split]
        ids = [p for p in members if p in labels.index and p in truth.index]
        return truth.loc[ids].assign(label=labels.loc[ids].to_numpy())

    truth = patient_truth(json.loads(a.truth.read_text()))
    evalset = labelled(a.bench, truth, a.split)
    if a.split != "external":
        train = labelled(a.bench, truth, "train")
    elif a.fit:
        train = labelled(a.fit[0], patient_truth(json.loads(a.fit[1].read_text())), "train")
    else:
        train = None
    scores = ["true_diameter", "noise_free_logit", "noise_free_logit_visible"]
    if train is not None:
        fit = LogisticRegression().fit(_design(train), train["label"])
        evalset = evalset.assign(oracle_fitted=fit.decision_function(_design(evalset)))
        scores.append("oracle_fitted")
    if a.run is not None:
        pred = pd.read_csv(a.run / "predictions.csv")
        pred = pred[pred["split"] == a.split]
        headline = json.loads((a.run / "metrics.json").read_text())["results"][a.split]["headline"]
        for masks in ("baseline_measured_diameter", headline):
            col = pred[pred["masks"] == masks].set_index("patient_id")["prob"]
            if col.empty:  # e.g. a run scored on reference masks only has no measured diameter
                continue
            evalset[masks] = col.reindex(evalset.index)
            scores.append(masks)
        evalset = evalset.dropna(subset=scores)

    y = evalset["label"].to_numpy(int)
    n_train = 0 if train is None else int(len(train))
    result = {"bench": str(a.bench), "split": a.split, "n_patients": int(len(y)), "n_malignant": int(y.sum()),
              "n_train": n_train, "auc": {}}
    print(f"{a.bench.name} {a.split}: {len(y)} patients ({int(y.sum())} malignant); oracle fitted on "
          f"{n_train} training patients")
    for name in scores:
        auc, low, high = delong_ci(y, evalset[name].to_numpy(float))
        vs = delong_test(y, evalset[name].to_numpy(float), evalset["true_diameter"].to_numpy(float))
        result["auc"][name] = {"auc": auc, "ci": [low, high], "vs_true_diameter": vs}
        print(f"  {name:28s} AUC {auc:.4f} [{low:.4f}, {high:.4f}]  vs true diameter {vs['diff']:+.4f} "
              f"(p = {vs['p']:.3f})")
    if a.run is not None:
        result["score_content"] = {}
        for masks in ("gt_masks", "predicted_masks"):  # the network alone, on each kind of mask
            col = pred[pred["masks"] == masks].set_index("patient_id")["prob"]
            rows = truth.loc[[p for p in col.index if p in truth.index]]
            if len(rows) < 10:
                continue
            c = score_content(rows, col.reindex(rows.index).to_numpy(float))
            result["score_content"][masks] = c
            lo, hi = c["partial_r_ci"]
            print(f"  network on {masks:16s} {c['n']} patients: R² size {c['r2_size']:.3f}, with morphology "
                  f"{c['r2_size_morphology']:.3f} (F p = {c['f_p']:.3f}); partial r with the morphology term "
                  f"{c['partial_r_morphology']:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    write_result(result, a.out or RESULTS / f"synth_ceiling_{a.bench.name}.json")


if __name__ == "__main__":
    main()
