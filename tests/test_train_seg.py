"""Segmentation training: run folder contents, resume, reload, out-of-fold predicted masks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from _bench_fixture import build_bench
from lungcad.data import read_manifest
from lungcad.errors import LungcadError
from lungcad.models import create_segmenter, load_run_model
from lungcad.train import train_segmenter
from lungcad.train.oof import inner_split

# Tiny and fast: 64-pixel slices, the small LightUNet, whole slices (no crop), light augmentation.
TINY = {"image_size": 64, "train_crop": None, "batch_size": 4, "val_batch_size": 8, "oof_epochs": 1}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return build_bench(tmp_path_factory.mktemp("bench"), patients=12, slices=5, size=64, masked_patients=10)


def _history(run: Path) -> list[dict]:
    with (run / "history.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _ckpt_model_state(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


def test_two_epoch_run_writes_complete_run_folder(bench, tmp_path):
    run = tmp_path / "run"
    summary = train_segmenter(bench, "lightunet", run, preset="cpu", epochs=2, overrides=TINY, oof_folds=0)
    for name in ("config.yaml", "splits.json", "history.csv", "model.json", "summary.json",
                 "checkpoints/best.safetensors", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    assert list((run / "figures").glob("*.png"))
    rows = _history(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for column in ("train_loss", "val_loss", "val_dice", "val_iou", "lr"):
        assert np.isfinite(float(rows[0][column])), column
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["epochs"] == 2 and config["image_size"] == 64 and config["arch"] == "lightunet"
    assert json.loads((run / "splits.json").read_text()) == json.loads((bench / "splits.json").read_text())
    info = json.loads((run / "model.json").read_text())
    assert info["task"] == "segmentation" and info["arch"] == "lightunet"
    assert info["image_size"] == 64 and info["window_hu"] == [-1200, 0] and info["threshold"] == 0.5
    assert info["tta"] == "flip"  # the cpu preset's test-time augmentation, read by every inferer
    assert info["min_component_peak"] is None  # no component filter in the cpu preset
    best = max(float(r["val_dice"]) for r in rows)
    assert summary["best_val_dice"] == pytest.approx(best)
    assert summary["best_epoch"] == 1 + [float(r["val_dice"]) for r in rows].index(best)


def test_existing_run_is_not_overwritten_without_resume(bench, tmp_path):
    run = tmp_path / "run"
    train_segmenter(bench, "lightunet", run, epochs=1, overrides=TINY, oof_folds=0)
    with pytest.raises(LungcadError, match="--resume"):
        train_segmenter(bench, "lightunet", run, epochs=1, overrides=TINY, oof_folds=0)


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(bench, tmp_path):
    options = {**TINY, "train_crop": 32}  # random crops and flips: augmentation must replay exactly
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_segmenter(bench, "lightunet", straight, epochs=2, overrides=options, oof_folds=0)
    train_segmenter(bench, "lightunet", resumed, epochs=1, overrides=options, oof_folds=0)

    # After one epoch, the exported best model is the last one: reloading it gives the same outputs
    # as the weights held in the training checkpoint.
    model, info = load_run_model(resumed)
    channels = int(info["in_channels"])  # 2k + 1 with the preset's context slices
    reference = create_segmenter("lightunet", in_channels=channels).eval()
    reference.load_state_dict(_ckpt_model_state(resumed))
    x = torch.rand(2, channels, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-6)

    train_segmenter(bench, "lightunet", resumed, epochs=2, overrides=options, oof_folds=0, resume=True)
    a, b = _ckpt_model_state(straight), _ckpt_model_state(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
    rows_a, rows_b = _history(straight), _history(resumed)
    assert [r["epoch"] for r in rows_b] == ["1", "2"]
    for ra, rb in zip(rows_a, rows_b):
        assert float(ra["train_loss"]) == pytest.approx(float(rb["train_loss"]), abs=1e-6)
        assert float(ra["val_dice"]) == pytest.approx(float(rb["val_dice"]), abs=1e-6)


def test_out_of_fold_masks_cover_every_slice_without_leakage(bench, tmp_path):
    run = tmp_path / "run"
    summary = train_segmenter(bench, "lightunet", run, epochs=1, overrides=TINY, oof_folds=2)
    splits = json.loads((bench / "splits.json").read_text())["segmentation"]
    provenance = json.loads((run / "predicted_masks.json").read_text())
    assert provenance["complete"] is True and provenance["folds"] == 2
    manifest = read_manifest(bench)
    assert set(provenance["patients"]) == set(manifest["patient_id"])
    for patient, name in provenance["patients"].items():
        model = provenance["models"][name]
        assert patient not in model["trained_on"]
        assert patient not in model.get("validated_on", [])
        if patient in splits["train"] + splits["val"]:
            assert name.startswith("fold-")
        else:
            assert name == "final"
    for image_path in manifest["image_path"]:
        mask = run / "predicted_masks" / Path(image_path).relative_to("images")
        assert mask.is_file(), mask
    areas = (run / "predicted_masks" / "areas.csv").read_text().splitlines()
    assert len(areas) == len(manifest) + 1
    assert summary["oof"]["folds"] == 2
    # per model, the patients on whom it found nothing (from the areas it wrote)
    table = pd.read_csv(run / "predicted_masks" / "areas.csv", dtype={"patient_id": str})
    found = set(table.loc[table["area_px"] > 0, "patient_id"])
    expected = {name: sum(1 for p, n in provenance["patients"].items() if n == name and p not in found)
                for name in set(provenance["patients"].values())}
    assert summary["oof"]["patients_without_predicted_nodule"] == expected
    # Fold models pick their epoch on an inner split of their own training patients, never on the
    # held-out fold; the held-out Dice is measured on the masks written for that fold.
    for name, fold in summary["oof"]["fold_models"].items():
        model = provenance["models"][name]
        assert model["validated_on"] and not set(model["validated_on"]) & set(model["trained_on"])
        assert not set(model["validated_on"]) & set(model["held_out"])
        assert 0.0 <= fold["held_out_dice"] <= 1.0 and fold["best_epoch"] >= 1

    # Resuming a finished run retrains nothing: the fold checkpoints stay untouched.
    fold_ckpt = run / "oof" / "fold-0" / "checkpoints" / "last.ckpt"
    before = fold_ckpt.stat().st_mtime_ns
    train_segmenter(bench, "lightunet", run, epochs=1, overrides=TINY, oof_folds=2, resume=True)
    assert fold_ckpt.stat().st_mtime_ns == before


def test_unknown_override_key_is_refused(bench, tmp_path):
    with pytest.raises(LungcadError, match="unknown configuration key"):
        train_segmenter(bench, "lightunet", tmp_path / "run", overrides={"batchsize": 2})


def test_output_prior_sets_the_last_one_channel_bias():
    from lungcad.train.seg import set_output_prior

    model = create_segmenter("lightunet", in_channels=1)
    assert set_output_prior(model, 0.01)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 1][-1]
    assert torch.allclose(last.bias, torch.full_like(last.bias, float(np.log(0.01 / 0.99))))
    assert not set_output_prior(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3)), 0.01)


def test_last_epoch_snapshot_is_a_run_with_the_last_checkpoint_weights(bench, tmp_path, capsys):
    from lungcad.cli import main

    run, last = tmp_path / "run", tmp_path / "run-last"
    train_segmenter(bench, "lightunet", run, epochs=2, overrides=TINY, oof_folds=0)
    assert main(["last-epoch", str(run), "--out", str(last)]) == 0

    model, info = load_run_model(last)
    assert info["weights_from"]["epoch"] == 2 and info["weights_from"]["checkpoint"] == "checkpoints/last.ckpt"
    assert info["arch"] == "lightunet" and info["image_size"] == 64
    channels = int(info["in_channels"])
    reference = create_segmenter("lightunet", in_channels=channels).eval()
    reference.load_state_dict(_ckpt_model_state(run))
    x = torch.rand(2, channels, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-6)
    assert (last / "splits.json").read_text() == (run / "splits.json").read_text()
    assert not (last / "checkpoints" / "last.ckpt").exists()  # not a resumable training run

    capsys.readouterr()
    assert main(["last-epoch", str(run), "--out", str(last)]) == 2  # nothing already written is replaced
    assert f"{last}: already exists" in capsys.readouterr().err
    (run / "checkpoints" / "last.ckpt").unlink()
    assert main(["last-epoch", str(run), "--out", str(tmp_path / "other")]) == 2
    assert "last.ckpt: missing training checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_inner_split_holds_out_a_fifth_of_the_fold_patients():
    patients = [f"p{i:02d}" for i in range(10)]
    train, val = inner_split(patients + patients[:3], seed=1)  # duplicates count once
    assert len(val) == 2 and sorted(train + val) == patients and not set(train) & set(val)
    assert inner_split(patients, seed=1) == (train, val)  # seeded
    assert inner_split(patients, seed=2) != (train, val)
    assert inner_split(["only"], seed=0) == (["only"], ["only"])


def test_small_slice_weights_favour_small_cross_sections():
    """Nodule slices under ``below_mm`` (equivalent diameter from area and spacing) get the weight;
    larger nodule slices and nodule-free slices 1; weight 1 means the uniform sampler."""
    from lungcad.train.engine import EpochSampler
    from lungcad.train.seg import small_slice_weights

    # 0.5 mm pixels: 100 px = 25 mm2 -> 5.6 mm; 400 px -> 11.3 mm; at 1 mm pixels 100 px -> 11.3 mm
    items = pd.DataFrame({"nodule_area_px": [100, 400, 0, 100],
                          "spacing_row_mm": [0.5, 0.5, 0.5, 1.0], "spacing_col_mm": [0.5, 0.5, 0.5, 1.0]})
    np.testing.assert_array_equal(small_slice_weights(items, 3.0, 10.0), [3.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(small_slice_weights(items, 3.0, 12.0), [3.0, 3.0, 1.0, 3.0])
    assert small_slice_weights(items, 1.0, 10.0) is None
    with pytest.raises(LungcadError, match="small_slice_weight"):
        small_slice_weights(items, 0.0, 10.0)
    # the sampler draws the small slice about three times as often as each other slice
    sampler = EpochSampler(4, seed=0, weights=small_slice_weights(items, 3.0, 10.0), num_samples=6000)
    counts = np.bincount([i for i, _ in sampler], minlength=4)
    assert counts[0] / counts[1:].mean() == pytest.approx(3.0, rel=0.1)
