"""Several classification runs scored on one shared cohort: each against a baseline, and their mean.

    python benchmarks/shared_cohort.py DIR [DIR ...] [--split external] [--out FILE]

Each ``DIR`` is an evaluated classification run (``metrics.json`` and ``predictions.csv``), or the
folder ``lungcad evaluate RUN --bench COHORT --external`` wrote (``RUN/external/<cohort>/``). For
every run the script compares its headline score on ``--split`` (the size head, else the network
on predicted masks) and the network alone (on predicted masks) with the diameter baselines of the
same evaluation, and the network on the reference masks with the annotated diameter (DeLong
tests), then averages each difference over the runs with :func:`lungcad.stats.delong_contrast`.

Why not ``lungcad leaderboard``'s pooled table: it pools *independent* benchmarks. Runs trained
on different benchmarks but scored on one cohort share their test patients, so their differences
are correlated; the contrast of all their AUCs on the common patients, with DeLong's covariance,
gives the mean difference and an interval that knows this. The mean is over the runs given: what
the recipe gains on this cohort, averaged over the training draws.

Results are printed and saved as JSON (default ``benchmarks/results/shared_cohort_<split>.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from lungcad.stats import delong_contrast, delong_test

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script, also when a test imports this one
from synth_ceiling import RESULTS, write_result  # noqa: E402

BASELINES = ("baseline_measured_diameter", "baseline_diameter")


def run_scores(folder: Path, metrics: dict, split: str) -> tuple[str, pd.DataFrame]:
    """The headline's name and a frame ``patient_id -> label, <masks>...`` of one evaluation
    (``metrics``: its metrics.json)."""
    headline = metrics["results"][split]["headline"]
    pred = pd.read_csv(folder / "predictions.csv")
    pred = pred[pred["split"] == split]
    wide = pred.pivot_table(index="patient_id", columns="masks", values="prob", aggfunc="first")
    labels = pred.groupby("patient_id")["label"].first()
    return headline, wide.assign(label=labels)


def compare(runs: dict[str, tuple[str, pd.DataFrame]], a_of, b: str) -> dict:
    """Each run's score ``a_of(headline)`` minus ``b``, and their mean on the patients every run has."""
    per_run, frames = {}, []
    for name, (headline, frame) in runs.items():
        a = a_of(headline)
        if a not in frame or b not in frame:
            continue
        both = frame[["label", a, b]].dropna()
        t = delong_test(both["label"].to_numpy(int), both[a].to_numpy(float), both[b].to_numpy(float))
        per_run[name] = {"a": a, "n": int(len(both)), **t}
        frames.append(both.rename(columns={a: f"{name}:a", b: f"{name}:b", "label": f"{name}:label"}))
    if not frames:
        return {"per_run": per_run}
    common = pd.concat(frames, axis=1, join="inner")
    labels = common[[c for c in common if c.endswith(":label")]].to_numpy(int)
    if (labels != labels[:, :1]).any():
        raise SystemExit("the runs disagree on a patient's label: not one cohort")
    k = len(frames)
    scores = np.stack([common[f"{name}:{side}"].to_numpy(float) for name in per_run for side in ("a", "b")])
    mean = delong_contrast(labels[:, 0], scores, np.array([1.0, -1.0] * k) / k)
    return {"per_run": per_run, "mean": {**mean, "k": k, "n_common": int(len(common))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", type=Path, nargs="+")
    ap.add_argument("--split", default="external")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    metrics = {f: json.loads((f / "metrics.json").read_text()) for f in a.folders}
    benches = {m.get("bench") for m in metrics.values()}
    if len(benches) != 1:
        raise SystemExit(f"the runs were scored on different cohorts ({', '.join(map(str, benches))}); "
                         "patient IDs repeat across benchmarks, so they cannot be matched")
    runs = {str(f): run_scores(f, m, a.split) for f, m in metrics.items()}
    rows = {"headline": (lambda h: h, BASELINES), "network alone": (lambda h: "predicted_masks", BASELINES),
            # the network on the reference masks, against the diameter of the same outlines
            "network on reference masks": (lambda h: "gt_masks", ("baseline_diameter",))}
    result = {"split": a.split, "runs": list(runs), "comparisons": {}}
    for label, (a_of, baselines) in rows.items():
        for b in baselines:
            key = f"{label} - {b}"
            c = compare(runs, a_of, b)
            result["comparisons"][key] = c
            print(f"{key}:")
            for name, t in c["per_run"].items():
                print(f"  {name}: {t['a']} {t['auc_a']:.4f} vs {t['auc_b']:.4f}, {t['diff']:+.4f} "
                      f"(p = {t['p']:.3f}, {t['n']} patients)")
            if "mean" in c:
                m = c["mean"]
                print(f"  mean over {m['k']} runs, {m['n_common']} common patients: {m['estimate']:+.4f} "
                      f"[{m['ci'][0]:+.4f}, {m['ci'][1]:+.4f}], p = {m['p']:.3g}")
    write_result(result, a.out or RESULTS / f"shared_cohort_{a.split}.json")


if __name__ == "__main__":
    main()
