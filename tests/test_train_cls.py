"""Two-phase classification training: run folder, predicted-mask provenance, refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _bench_fixture import build_bench
from lungcad.errors import LungcadError
from lungcad.models import load_run_model
from lungcad.train import train_classifier, train_segmenter

SEG_TINY = {"image_size": 64, "train_crop": None, "batch_size": 4, "val_batch_size": 8, "oof_epochs": 1,
            "init_prior": None}  # from a zero bias a 1-epoch model predicts non-empty masks
CLS_TINY = {"input_size": 64, "crop": 32, "max_slices_per_patient": 2,
            "phase1": {"batch_size": 4}, "phase2": {"batch_size": 4}}
ARCH = "mobilenetv3-large"


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return build_bench(tmp_path_factory.mktemp("bench"), patients=12, slices=5, size=64, masked_patients=10)


@pytest.fixture(scope="module")
def seg_run(bench, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("seg") / "run"
    train_segmenter(bench, "lightunet", run, epochs=1, overrides=SEG_TINY, oof_folds=2)
    return run


def test_two_phase_run_fine_tunes_on_predicted_masks(bench, seg_run, tmp_path):
    run = tmp_path / "cls"
    # with the nodule_size plane (the cpu preset has it), so that its training, validation and
    # model.json are exercised
    summary = train_classifier(bench, ARCH, run, seg_run=seg_run, phase="both", epochs=2,
                               overrides={**CLS_TINY, "size_input": True})
    for name in ("config.yaml", "splits.json", "history.csv", "model.json", "summary.json",
                 "checkpoints/best.safetensors", "mask_provenance.json",
                 "phase1/checkpoints/last.ckpt", "phase2/checkpoints/last.ckpt", "phase2/model.json"):
        assert (run / name).is_file(), name
    assert list((run / "figures").glob("*.png"))
    with (run / "history.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["phase"], r["epoch"]) for r in rows] == [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")]
    info = json.loads((run / "model.json").read_text())
    assert info["phase"] == 2 and info["mask_source"] == "predicted"
    assert info["seg_run"] == str(seg_run.resolve())
    # size_input adds the nodule_size plane to the seven channels
    assert info["in_channels"] == 8 and info["size_input"] is True
    assert info["image_size"] == info["input_size"] == 64 and info["crop"] == 32
    assert info["min_area_frac"] == 0.5   # the cpu preset scores core slices
    phase1 = json.loads((run / "phase1" / "model.json").read_text())
    assert phase1["phase"] == 1 and phase1["mask_source"] == "gt"
    assert summary["phase2"]["mask_source"] == "predicted"
    # every val patient is scored: classified, or a benign call when the segmenter found nothing
    val = set(json.loads((bench / "splits.json").read_text())["classification"]["val"])
    assert summary["phase2"]["val_patients"] + summary["phase2"]["val_patients_no_nodule_found"] == len(val)
    assert summary["phase1"]["val_patients_no_nodule_found"] == 0  # reference masks: nothing to find

    provenance = json.loads((run / "mask_provenance.json").read_text())
    seg_provenance = json.loads((seg_run / "predicted_masks.json").read_text())
    splits = json.loads((bench / "splits.json").read_text())["classification"]
    assert set(provenance["patients"]) == set(splits["train"] + splits["val"])
    for patient, record in provenance["patients"].items():
        model = seg_provenance["models"][record["model"]]
        assert patient not in model["trained_on"]

    # The cpu preset asks for the size head; two validation patients cannot fit it, so the run stays
    # without one and says why (train-cls and the demo call this after training).
    from lungcad.config import read_yaml
    from lungcad.evaluate import fit_configured_head

    assert read_yaml(run / "config.yaml")["patient_head"] == "size"
    (run / "patient_head.json").write_text("{}")  # left from an earlier training: must not survive
    head = fit_configured_head(run)
    assert head["fitted"] is False and "at least 10 val patients" in head["reason"]
    assert not (run / "patient_head.json").exists()

    # The published model reloads and matches phase 2's exported weights.
    model, _ = load_run_model(run)
    phase2_model, _ = load_run_model(run / "phase2")
    x = torch.rand(2, 8, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), phase2_model(x))


def test_phase2_refuses_masks_from_a_model_that_saw_the_patient(bench, seg_run, tmp_path):
    splits = json.loads((bench / "splits.json").read_text())
    seen = next(p for p in splits["classification"]["train"] if p in splits["segmentation"]["train"])
    leaky = tmp_path / "leaky_seg"
    leaky.mkdir()
    provenance = json.loads((seg_run / "predicted_masks.json").read_text())
    provenance["patients"][seen] = "final"  # the final model trained on this patient
    (leaky / "predicted_masks.json").write_text(json.dumps(provenance))
    with pytest.raises(LungcadError, match=f"{seen}.*saw this patient"):
        train_classifier(bench, ARCH, tmp_path / "cls", seg_run=leaky, phase="2", overrides=CLS_TINY)


def test_phase2_without_seg_run_is_a_clear_error(bench, tmp_path):
    with pytest.raises(LungcadError, match="--seg-run"):
        train_classifier(bench, ARCH, tmp_path / "cls", phase="both", overrides=CLS_TINY)


def test_phase2_needs_complete_predicted_masks(bench, tmp_path):
    with pytest.raises(LungcadError, match="predicted_masks.json"):
        train_classifier(bench, ARCH, tmp_path / "cls", seg_run=tmp_path, phase="2", overrides=CLS_TINY)


def test_phase1_only_resume_skips_the_finished_phase(bench, tmp_path):
    run = tmp_path / "cls"
    # the fixture's middle nodule slice only (neighbours: 0.56); the paper's seven channels
    core = {**CLS_TINY, "min_area_frac": 0.6, "size_input": False}
    first = train_classifier(bench, ARCH, run, phase="1", epochs=1, overrides=core)
    assert first["phase1"]["train_slices"] == first["phase1"]["train_patients"]
    assert first["phase1"]["val_slices"] == first["phase1"]["val_patients"]
    ckpt = run / "phase1" / "checkpoints" / "last.ckpt"
    before = ckpt.stat().st_mtime_ns
    summary = train_classifier(bench, ARCH, run, phase="1", epochs=1, overrides=core, resume=True)
    assert ckpt.stat().st_mtime_ns == before
    assert summary["phase1"]["epochs_run"] == 1
    info = json.loads((run / "model.json").read_text())
    assert info["phase"] == 1 and info["mask_source"] == "gt" and info["seg_run"] is None
    assert info["min_area_frac"] == 0.6   # evaluation and prediction score the same slices
    assert info["in_channels"] == 7 and info["size_input"] is False


def test_phase1_validates_on_predicted_masks_when_no_val_patient_has_a_voxel_mask(bench, seg_run, tmp_path):
    import shutil

    from lungcad.ingest.manifest import read_manifest, write_manifest

    copy = tmp_path / "bench"
    shutil.copytree(bench, copy)
    val = set(json.loads((copy / "splits.json").read_text())["classification"]["val"])
    rows = read_manifest(copy)
    for row in rows:  # the val patients become box-free, outline-free (classification-only) patients
        if row["patient_id"] in val:
            row["mask_source"], row["mask_path"] = "none", ""
    write_manifest(copy, rows)
    with pytest.raises(LungcadError, match="no val slices.*--seg-run"):
        train_classifier(copy, ARCH, tmp_path / "no_seg", phase="1", epochs=1, overrides=CLS_TINY)
    summary = train_classifier(copy, ARCH, tmp_path / "cls", seg_run=seg_run, phase="1", epochs=1,
                               overrides=CLS_TINY)
    assert summary["phase1"]["val_masks"].startswith("predicted")
    assert summary["phase1"]["mask_source"] == "gt" and summary["phase1"]["val_patients"] >= 1
    provenance = json.loads((tmp_path / "cls" / "mask_provenance.json").read_text())
    assert set(provenance["patients"]) >= val  # the predicted val masks are accounted for


def test_patient_metrics_count_patients_without_a_found_nodule_as_benign_calls():
    """Worked example: a (0.9, 0.7 -> 0.8, malignant), b (0.2, benign); c malignant, nothing found."""
    import numpy as np

    from lungcad.train.engine import patient_metrics

    proba, labels, patients = np.array([0.9, 0.7, 0.2]), np.array([1, 1, 0]), np.array(["a", "a", "b"])
    assert patient_metrics(proba, labels, patients) == {"val_auc": 1.0, "val_accuracy": 1.0, "val_f1": 1.0}
    with_c = patient_metrics(proba, labels, patients, absent={"c": 1})
    # c enters with probability 0: ranked below b (AUC 1/2), called benign (a miss)
    assert with_c["val_auc"] == pytest.approx(0.5)
    assert with_c["val_accuracy"] == pytest.approx(2 / 3)
    assert with_c["val_f1"] == pytest.approx(2 / 3)


def _phase1_ckpt(run: Path) -> dict:
    return torch.load(run / "phase1" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _unprefixed(state: dict) -> dict:
    return {key.removeprefix("model."): value for key, value in state.items()}


def test_weight_ema_is_exported_checkpointed_and_resumed(bench, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from lungcad.train import engine

    options = {**CLS_TINY, "ema_decay": 0.5}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_classifier(bench, ARCH, straight, phase="1", epochs=2, overrides=options)

    # Interrupt the same run after its first epoch's checkpoint (a changed epoch count would change
    # the cosine schedule, so the stop has to happen inside a 2-epoch run).
    save = engine.LastCheckpoint.on_train_epoch_end

    def save_then_stop(self, trainer, pl_module):
        save(self, trainer, pl_module)
        raise RuntimeError("simulated stop")

    monkeypatch.setattr(engine.LastCheckpoint, "on_train_epoch_end", save_then_stop)
    with pytest.raises(RuntimeError, match="simulated stop"):
        train_classifier(bench, ARCH, resumed, phase="1", epochs=2, overrides=options)
    monkeypatch.undo()

    ckpt = _phase1_ckpt(resumed)
    average, raw = _unprefixed(ckpt["state_dict"]), _unprefixed(ckpt["current_model_state"])
    floats = [key for key, value in average.items() if value.is_floating_point()]
    assert any(not torch.allclose(average[key], raw[key]) for key in floats)  # averaging did something
    best = load_file(resumed / "phase1" / "checkpoints" / "best.safetensors")
    assert best.keys() == average.keys()
    for key in floats:  # the exported model is the average that validation scored, not the raw weights
        assert torch.equal(best[key], average[key]), key

    train_classifier(bench, ARCH, resumed, phase="1", epochs=2, overrides=options, resume=True)
    a, b = _phase1_ckpt(straight), _phase1_ckpt(resumed)
    for part in ("state_dict", "current_model_state"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.allclose(a[part][key].float(), b[part][key].float(), atol=1e-6), (part, key)

    # The last-epoch snapshot of a classification run takes the published phase's last.ckpt.
    from lungcad.models.run_io import snapshot_last_epoch

    info = snapshot_last_epoch(resumed, tmp_path / "resumed-last")
    assert info["weights_from"] == {"run": str(resumed.resolve()), "checkpoint": "phase1/checkpoints/last.ckpt",
                                    "epoch": 2}
    snapshot = load_file(tmp_path / "resumed-last" / "checkpoints" / "best.safetensors")
    average = _unprefixed(b["state_dict"])
    assert snapshot.keys() == average.keys()
    for key in floats:
        assert torch.equal(snapshot[key], average[key]), key


def test_fusion_model_with_size_input_starts_from_a_size_prior_fitted_on_the_training_slices(bench, tmp_path):
    """The fixture's malignant nodules are the larger ones: the fitted prior ranks slices by size."""
    run = tmp_path / "cls"
    summary = train_classifier(bench, "nodulefusionnet-b0", run, phase="1", epochs=1,
                               overrides={**CLS_TINY, "size_input": True,
                                          "model_kwargs.backbone": "test_efficientnet"})
    prior = summary["phase1"]["size_prior"]
    assert prior["fitted"] is True and prior["weight"] > 0
    assert prior["slice_auc"] == 1.0 and prior["slices"] == summary["phase1"]["train_slices"]
    model, info = load_run_model(run)
    assert info["kwargs"]["size_channel"] == 7
    # the standardisation is a fitted constant, saved with the weights
    assert float(model.size.centre) == pytest.approx(prior["centre"])
    assert float(model.size.scale) == pytest.approx(prior["scale"])


def test_fit_size_prior_is_a_balanced_logistic_regression_on_the_standardised_size():
    from lungcad.models.fusion import SizePrior
    from lungcad.train.cls import fit_size_prior

    class Slices:  # what fit_size_prior reads of a ClassificationDataset
        labels = np.array([0, 0, 0, 0, 0, 0, 1, 1], np.float32)

        def size_values(self):
            return np.array([0.20, 0.25, 0.30, 0.22, 0.35, 0.50, 0.45, 0.60])

    prior = SizePrior(7)
    fitted = fit_size_prior(prior, Slices())
    values = Slices().size_values()
    assert fitted["centre"] == pytest.approx(values.mean()) and fitted["scale"] == pytest.approx(values.std())
    assert fitted["weight"] > 0
    # class-balanced: every malignant slice scores above 0.5 although 6 of the 8 slices are benign
    z = (values - values.mean()) / values.std()
    p = 1 / (1 + np.exp(-(fitted["weight"] * z + fitted["bias"])))
    assert (p[Slices.labels == 1] > 0.5).all()
    # installed in the module: its logit is the fitted regression's
    x = torch.zeros(8, 8, 4, 4)
    x[:, 7] = torch.tensor(values, dtype=torch.float32)[:, None, None]
    with torch.no_grad():
        np.testing.assert_allclose(prior(x)[:, 0].numpy(), fitted["weight"] * z + fitted["bias"], rtol=1e-5, atol=1e-5)
    one_class = type("OneClass", (), {"labels": np.zeros(3, np.float32), "size_values": lambda self: np.ones(3)})()
    assert fit_size_prior(SizePrior(7), one_class)["fitted"] is False
