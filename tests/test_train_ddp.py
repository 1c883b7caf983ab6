"""Data-parallel training through Lightning's standard DDP strategy, run for real: two CPU processes
(gloo), launched the way a multi-GPU user launches them (``--devices 2``, Lightning starts the
second process from the same command line)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _bench_fixture import build_bench

pytestmark = pytest.mark.slow


def test_two_process_ddp_run_validates_every_slice_once(tmp_path):
    bench = build_bench(tmp_path / "bench", patients=8, slices=5, size=64)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lungcad.cli", "train-seg", str(bench), "--arch", "lightunet", "--out", str(run),
           "--epochs", "1", "--devices", "2", "--oof-folds", "0",
           "--set", "accelerator=cpu", "--set", "strategy=ddp", "--set", "image_size=64",
           "--set", "train_crop=null", "--set", "batch_size=4",
           "--set", "init_prior=null"]   # from a zero bias the one-epoch model marks pixels: a Dice above 0
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["best_epoch"] == 1
    assert summary["val_items"] % 2 == 1   # an odd count: the distributed sampler pads one rank
    for name in ("model.json", "checkpoints/best.safetensors", "checkpoints/last.ckpt", "config.yaml"):
        assert (run / name).is_file(), name
    with (run / "history.csv").open(newline="") as handle:
        (row,) = list(csv.DictReader(handle))

    # The Dice gathered from both processes equals a single-process evaluation of the same weights
    # on the same patients: every validation slice counted once, the padded repeat dropped.
    from lungcad.evaluate import evaluate_run

    # (one pass, as validation during training: the cpu preset's flip TTA is for evaluate/predict)
    metrics = evaluate_run(run, split="val", progress=False, quiet=True, n_boot=10, tta="none")
    val = metrics["results"]["val"]
    assert 0.0 < val["dice_nodule"] < 1.0
    assert float(row["val_dice"]) == pytest.approx(val["dice_nodule"], rel=1e-5)
    assert float(row["val_iou"]) == pytest.approx(val["iou_nodule"], rel=1e-5)
    assert summary["val_items"] == val["n_slices"]   # validation saw every slice of the val patients
    assert float(row["val_dice_all"]) == pytest.approx(val["dice_all"], rel=1e-5)
