"""``lungcad demo --quick``: every step of the pipeline runs and a second run reuses what is done."""

from __future__ import annotations

import json

import pytest

from lungcad.cli import main


@pytest.mark.slow
def test_quick_demo_runs_every_step_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--patients", "2", "--cls-arch", "mobilenetv3-large"]) == 0
    first = capsys.readouterr().out
    assert "report:" in first and "leaderboard:" in first
    for step in ("synth", "holdout", "ingest", "split", "train-seg", "eval-seg", "train-cls", "size-head", "eval-cls",
                 "predict"):
        assert (out / ".demo" / f"{step}.done").is_file(), step
    assert (out / "bench" / "manifest.csv").is_file()
    assert (out / "runs" / "seg-lightunet" / "predicted_masks.json").is_file()
    provenance = json.loads((out / "runs" / "cls-mobilenetv3-large" / "mask_provenance.json").read_text())
    assert provenance
    reports = list((out / "predict").rglob("report.html"))
    assert len(reports) == 1 and (reports[0].parent / "mask.nii.gz").is_file()
    assert "| " in (out / "leaderboard.md").read_text()
    # second run: nothing is redone
    assert main(["demo", "--out", str(out), "--quick", "--patients", "2", "--cls-arch", "mobilenetv3-large"]) == 0
    second = capsys.readouterr().out
    assert second.count("already done, reusing") == 10
