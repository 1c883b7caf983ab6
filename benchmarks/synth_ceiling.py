"""How much a synthetic benchmark lets any classifier gain over nodule size.

    python benchmarks/synth_ceiling.py BENCH TRUTH [--split test] [--run RUN] [--out FILE]

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
  measured-diameter baseline and the headline), and their DeLong p against ``true_diameter``.

Results are printed and saved as JSON (default ``benchmarks/results/synth_ceiling_<bench>.json``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from lungcad.baseline import patient_labels
from lungcad.data import read_manifest
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
            })
    return pd.DataFrame(rows).set_index("patient_id")


def _design(frame: pd.DataFrame) -> np.ndarray:
    cols = [frame["log_diameter"].to_numpy()]
    cols += [(frame["shape"] == s).to_numpy(float) for s in SHAPES[1:]]
    cols += [(frame["density"] == d).to_numpy(float) for d in VISIBLE_DENSITIES[1:]]
    return np.column_stack(cols)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path)
    ap.add_argument("truth", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--run", type=Path, default=None, help="an evaluated classification run on BENCH")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    truth = patient_truth(json.loads(a.truth.read_text()))
    splits = load_splits(a.bench)["classification"]
    manifest = read_manifest(a.bench)
    labels = patient_labels(manifest.dropna(subset=["label"]))  # unlabelled patients are not scored

    def labelled(split):
        ids = [p for p in splits[split] if p in labels.index and p in truth.index]
        return truth.loc[ids].assign(label=labels.loc[ids].to_numpy())

    train, evalset = labelled("train"), labelled(a.split)
    fit = LogisticRegression().fit(_design(train), train["label"])
    evalset = evalset.assign(oracle_fitted=fit.decision_function(_design(evalset)))
    scores = ["true_diameter", "noise_free_logit", "noise_free_logit_visible", "oracle_fitted"]
    if a.run is not None:
        pred = pd.read_csv(a.run / "predictions.csv")
        pred = pred[pred["split"] == a.split]
        headline = json.loads((a.run / "metrics.json").read_text())["results"][a.split]["headline"]
        for masks in ("baseline_measured_diameter", headline):
            col = pred[pred["masks"] == masks].set_index("patient_id")["prob"]
            evalset[masks] = col.reindex(evalset.index)
            scores.append(masks)
        evalset = evalset.dropna(subset=scores)

    y = evalset["label"].to_numpy(int)
    result = {"bench": str(a.bench), "split": a.split, "n_patients": int(len(y)), "n_malignant": int(y.sum()),
              "n_train": int(len(train)), "auc": {}}
    print(f"{a.bench.name} {a.split}: {len(y)} patients ({int(y.sum())} malignant); oracle fitted on "
          f"{len(train)} training patients")
    for name in scores:
        auc, low, high = delong_ci(y, evalset[name].to_numpy(float))
        vs = delong_test(y, evalset[name].to_numpy(float), evalset["true_diameter"].to_numpy(float))
        result["auc"][name] = {"auc": auc, "ci": [low, high], "vs_true_diameter": vs}
        print(f"  {name:28s} AUC {auc:.4f} [{low:.4f}, {high:.4f}]  vs true diameter {vs['diff']:+.4f} "
              f"(p = {vs['p']:.3f})")
    out = a.out or Path(__file__).parent / "results" / f"synth_ceiling_{a.bench.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
