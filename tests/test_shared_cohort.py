"""benchmarks/shared_cohort.py: runs scored on one cohort, against their baselines and on average."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungcad.stats import delong_test

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "shared_cohort.py"


def _evaluation(folder: Path, bench: str, y, head, measured, annotated=None):
    """A minimal external evaluation folder: metrics.json (headline size_head) and predictions.csv."""
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"bench": bench, "results": {"external": {"headline": "size_head"}}}))
    ids = [f"p{i:03d}" for i in range(len(y))]
    rows = [pd.DataFrame({"patient_id": ids, "label": y, "prob": s, "split": "external", "masks": m})
            for m, s in (("size_head", head), ("predicted_masks", head), ("gt_masks", head),
                         ("baseline_measured_diameter", measured))]
    if annotated is not None:  # only some patients have an annotated diameter
        rows.append(pd.DataFrame({"patient_id": ids[::2], "label": y[::2], "prob": annotated[::2],
                                  "split": "external", "masks": "baseline_diameter"}))
    pd.concat(rows).to_csv(folder / "predictions.csv", index=False)
    return folder


def test_mean_over_runs_on_one_cohort(tmp_path):
    rng = np.random.default_rng(2)
    y = np.array([1] * 60 + [0] * 50)
    size = y + rng.normal(0, 1.0, y.size)
    heads = [size + 0.5 * y + rng.normal(0, 0.6, y.size) for _ in range(2)]
    folders = [_evaluation(tmp_path / f"r{i}", "/c/X1", y, h, size, annotated=size) for i, h in enumerate(heads)]
    out = tmp_path / "out.json"
    done = subprocess.run([sys.executable, str(SCRIPT), *map(str, folders), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())["comparisons"]
    measured = result["headline - baseline_measured_diameter"]
    each = [delong_test(y, h, size)["diff"] for h in heads]
    assert [measured["per_run"][str(f)]["diff"] for f in folders] == pytest.approx(each)
    assert measured["mean"]["estimate"] == pytest.approx(np.mean(each))
    assert measured["mean"]["n_common"] == 110 and measured["mean"]["ci"][0] > 0
    # the annotated baseline covers every other patient: compared there only
    assert result["headline - baseline_diameter"]["mean"]["n_common"] == 55
    assert result["network on reference masks - baseline_diameter"]["mean"]["n_common"] == 55
    # runs scored on two different cohorts are refused (their patient IDs would be matched by name)
    other = _evaluation(tmp_path / "elsewhere", "/c/X2", y, heads[0], size)
    refused = subprocess.run([sys.executable, str(SCRIPT), str(folders[0]), str(other), "--out", str(out)],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "different cohorts" in refused.stderr
