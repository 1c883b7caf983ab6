"""evaluate_run / compare_runs on a tiny hand-made benchmark, and the plots."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lungcad.errors import LungcadError
from lungcad.features import FEATURES_VERSION

SIZE = 64
# patient -> (dataset, label, nodule radius in px; 0 = no mask at all)
PATIENTS = {
    "dsa/p1": ("dsa", 0, 3), "dsa/p2": ("dsa", 1, 8), "dsa/p3": ("dsa", 0, 4), "dsa/p4": ("dsa", 1, 9),
    "dsb/p5": ("dsb", 0, 3), "dsb/p6": ("dsb", 1, 7), "dsb/p7": ("dsb", 0, 2), "dsb/p8": ("dsb", 1, 10),
    "dsc/p9": ("dsc", 1, 0),
}
SPLITS = {
    "train": ["dsa/p1", "dsa/p2", "dsb/p5", "dsb/p6"],
    "val": ["dsa/p3"],
    "test": ["dsa/p4", "dsb/p7", "dsb/p8", "dsc/p9"],
}
NODULE_SLICES = (1, 2)  # of 4 slices per series


def _disk(radius):
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (yy - 30) ** 2 + (xx - 34) ** 2 <= radius**2


def _write_bench(root: Path, patients: dict, prefix: str, image_of) -> Path:
    """A benchmark folder of ``patients`` (4 slices each, a disc on NODULE_SLICES); ``image_of(mask)``
    draws each slice's image. Series UIDs are ``prefix + name``."""
    rows = []
    for pid, (dataset, label, radius) in patients.items():
        name = pid.split("/")[1]
        for k in range(4):
            mask = _disk(radius) if radius and k in NODULE_SLICES else np.zeros((SIZE, SIZE), bool)
            image_path = f"images/{dataset}/{name}/{prefix}{name}_{k}.png"
            (root / image_path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image_of(mask)).save(root / image_path)
            mask_path, source, area = "", "none", ""
            if radius:
                mask_path = f"masks/{dataset}/{name}/{prefix}{name}_{k}.png"
                (root / mask_path).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(root / mask_path)
                source, area = "gt", int(mask.sum())
            rows.append({"image_path": image_path, "mask_path": mask_path, "patient_id": pid, "label": label,
                         "dataset": dataset, "series_uid": f"{prefix}{name}", "slice_index": k, "z_mm": float(k),
                         "spacing_row_mm": 0.5, "spacing_col_mm": 0.5, "slice_thickness_mm": 1.0,
                         "mask_source": source, "nodule_area_px": area, "split": ""})
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = _write_bench(tmp_path_factory.mktemp("bench"), PATIENTS, "s",
                        lambda mask: rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8))
    seg = {part: [p for p in ids if PATIENTS[p][2]] for part, ids in SPLITS.items()}
    (root / "splits.json").write_text(json.dumps({"seed": 42, "unit": "patient", "classification": SPLITS,
                                                  "segmentation": seg}))
    return root


def _zeroed(model):
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def _seg_run(path, bench, threshold):
    from lungcad.models import create_segmenter, save_run_model

    model = _zeroed(create_segmenter("lightunet", base_channels=4))  # logits 0 -> probability 0.5
    save_run_model(path, model, {"task": "segmentation", "arch": "lightunet", "kwargs": {"base_channels": 4},
                                 "in_channels": 1, "image_size": SIZE, "threshold": threshold})
    (path / "config.yaml").write_text(f"bench: {bench}\n")
    return path


def _cls_run(path, bench, seg_run):
    from lungcad.models import create_classifier, save_run_model

    model = _zeroed(create_classifier("mobilenetv3-large"))  # every slice: probability 0.5
    save_run_model(path, model, {"task": "classification", "arch": "mobilenetv3-large", "kwargs": {},
                                 "features_version": FEATURES_VERSION,
                                 "in_channels": 7, "image_size": 32, "crop": 16, "seg_run": str(seg_run)})
    (path / "config.yaml").write_text(f"bench: {bench}\n")
    return path


def test_segmentation_run_all_foreground(bench, tmp_path):
    from lungcad.evaluate import evaluate_run

    run = _seg_run(tmp_path / "seg", bench, threshold=0.4)  # 0.5 >= 0.4: every pixel is foreground
    m = evaluate_run(run, split="all", progress=False, quiet=True, n_boot=50)
    assert (run / "metrics.json").is_file() and (run / "metrics.md").is_file()
    assert json.loads((run / "metrics.json").read_text())["results"]["test"]["n_slices"] == 12
    test = m["results"]["test"]  # p4 (r=9), p7 (r=2), p8 (r=10); p9 has no mask
    areas = [int(_disk(r).sum()) for r in (9, 2, 10)]
    dices = [2 * a / (SIZE * SIZE + a) for a in areas]
    assert test["n_patients"] == 3 and test["n_nodule_slices"] == 6
    assert test["dice_nodule"] == pytest.approx(np.mean(dices))
    assert test["dice_all"] == pytest.approx(np.mean(dices) / 2)  # empty slices score 0
    assert test["fp_rate_empty"] == 1.0
    # 3D: two nodule slices + two empty all-foreground slices per series
    dice3d = [2 * 2 * a / (4 * SIZE * SIZE + 2 * a) for a in areas]
    assert test["dice_3d"] == pytest.approx(np.mean(dice3d))
    low, high = test["ci"]["dice_nodule"]
    assert low <= test["dice_nodule"] <= high
    assert set(test["per_dataset"]) == {"dsa", "dsb"}
    assert sum(v["n_slices"] for v in test["by_size"].values()) == 6
    assert "| **test** |" in (run / "metrics.md").read_text().split("Cross-section")[1]
    assert m["results"]["val"]["n_patients"] == 1 and "train" in m["results"]
    assert m["test_dice_all"] == pytest.approx(test["dice_all"])
    assert m["min_component_peak"] is None  # model.json without the key: no component filter
    slices = pd.read_csv(run / "predictions.csv")  # the per-slice rows behind the means
    assert sorted(slices["split"].unique()) == ["test", "train", "val"]
    test_slices = slices[slices["split"] == "test"]
    assert len(test_slices) == 12 and (test_slices["pred_px"] == SIZE * SIZE).all()
    nodule = test_slices[test_slices["target_px"] > 0]
    assert sorted(nodule["dice"].round(12).unique()) == sorted(np.round(dices, 12))
    assert nodule["dice"].mean() == pytest.approx(test["dice_nodule"])
    # --min-peak: every component of this constant-0.5 model peaks at 0.5
    out = tmp_path / "peak" / "m.json"
    same = evaluate_run(run, split="test", out=out, progress=False, quiet=True, n_boot=20, min_peak=0.5)
    assert same["results"]["test"]["dice_nodule"] == pytest.approx(test["dice_nodule"])
    gone = evaluate_run(run, split="test", out=out, progress=False, quiet=True, n_boot=20, min_peak=0.9)
    assert gone["min_component_peak"] == 0.9
    assert gone["results"]["test"]["dice_nodule"] == 0.0 and gone["results"]["test"]["fp_rate_empty"] == 0.0
    assert "peak probability below 0.9 removed" in out.with_suffix(".md").read_text()


def test_segmentation_run_predicting_nothing(bench, tmp_path):
    from lungcad.evaluate import evaluate_run

    run = _seg_run(tmp_path / "seg", bench, threshold=0.6)
    out = tmp_path / "elsewhere" / "m.json"
    m = evaluate_run(run, split="test", out=out, progress=False, quiet=True, n_boot=20)
    assert out.is_file() and not (run / "metrics.json").exists()
    slices = pd.read_csv(out.with_name("m_predictions.csv"))  # beside the metrics file, named after it
    assert len(slices) == 12 and (slices["pred_px"] == 0).all() and set(slices["split"]) == {"test"}
    nodule = slices["target_px"] > 0
    assert (slices.loc[nodule, "dice"] == 0).all() and (slices.loc[~nodule, "dice"] == 1).all()
    test = m["results"]["test"]
    assert test["dice_nodule"] == 0.0 and test["fp_rate_empty"] == 0.0
    assert test["dice_all"] == pytest.approx(0.5)
    # every nodule slice is in a size class, each fully missed
    assert sum(v["n_slices"] for v in test["by_size"].values()) == test["n_nodule_slices"]
    assert all(v["missed"] == 1.0 and v["dice_nodule"] == 0.0 for v in test["by_size"].values())
    assert m["tta"] == "none"  # model.json without the key: one pass
    # --tta replaces the run's test-time augmentation and is recorded (a constant model: same figures)
    flipped = evaluate_run(run, split="test", out=out, progress=False, quiet=True, n_boot=20, tta="flip")
    assert flipped["tta"] == "flip" and flipped["results"]["test"]["dice_nodule"] == 0.0
    assert "Test-time augmentation: flip." in out.with_suffix(".md").read_text()
    assert list(m["results"]) == ["test"]


@pytest.mark.slow
def test_classification_run_with_baseline_and_compare(bench, tmp_path, capsys):
    from lungcad.evaluate import compare_runs, evaluate_run

    seg = _seg_run(tmp_path / "seg", bench, threshold=0.4)
    run = _cls_run(tmp_path / "cls", bench, seg)
    m = evaluate_run(run, split="test", progress=False, n_boot=50)
    assert "# Evaluation of cls" in capsys.readouterr().out
    test = m["results"]["test"]
    assert test["headline"] == "predicted_masks"
    gt, pred = test["gt_masks"], test["predicted_masks"]
    # GT masks: p4, p7, p8 (p9 has none); predicted masks cover p9 too. Every probability is 0.5 -> malignant.
    assert gt["n"] == 3 and pred["n"] == 4
    assert gt["accuracy"] == pytest.approx(2 / 3) and pred["accuracy"] == pytest.approx(3 / 4)
    assert pred["auc"] == pytest.approx(0.5) and gt["confusion_matrix"] == [[0, 1], [0, 2]]
    assert pred["n_no_nodule_found"] == 0 and pred["segmenter_saw_patients"] is False
    assert gt["n_slices"] == 6 and pred["n_slices"] == 16
    # Baseline: larger nodules are malignant in this bench -> perfect ranking on p4, p7, p8.
    assert test["baseline_diameter"]["n_patients"] == 3
    assert test["baseline_diameter"]["auc"] == pytest.approx(1.0)
    assert test["vs_baseline"]["n_patients"] == 3 and test["vs_baseline"]["auc_b"] == pytest.approx(1.0)
    # masks segmented now (no stored out-of-fold masks): no measured-diameter baseline, and it says why
    assert "stored predicted masks" in test["baseline_measured_diameter"]["note"]
    for name in ("confusion_test.png", "roc_test.png"):
        assert (run / "figures" / name).stat().st_size > 0
    predictions = pd.read_csv(run / "predictions.csv")
    assert set(predictions["masks"]) == {"gt_masks", "predicted_masks", "baseline_diameter"}
    same = compare_runs(run, run)
    assert same["p"] == 1.0 and same["n_patients"] == 4
    # a second run never evaluated: compare_runs evaluates it first (GT masks only: no seg run)
    other = _cls_run(tmp_path / "cls2", bench, tmp_path / "no-such-seg-run")
    versus = compare_runs(run, other, masks="gt_masks")
    assert (other / "predictions.csv").is_file() and versus["n_patients"] == 3 and versus["p"] == 1.0


def test_missing_bench_and_bad_split_are_clear_errors(bench, tmp_path):
    from lungcad.evaluate import compare_runs, evaluate_run

    run = _seg_run(tmp_path / "seg", bench, threshold=0.4)
    (run / "config.yaml").write_text("preset: cpu\n")
    with pytest.raises(LungcadError, match="config.yaml.*--bench"):
        evaluate_run(run, progress=False, quiet=True)
    with pytest.raises(LungcadError, match="unknown split"):
        evaluate_run(run, bench=bench, split="holdout", progress=False, quiet=True)
    with pytest.raises(LungcadError, match="not a classification run"):
        compare_runs(run, run)


def test_plots_write_png(tmp_path):
    from lungcad.plots import plot_confusion, plot_history, plot_roc

    history = tmp_path / "history.csv"
    pd.DataFrame({"epoch": [1, 2, 3, 4], "phase": [1, 1, 2, 2], "train_loss": [1.0, 0.8, 0.7, 0.6],
                  "val_loss": [1.1, 0.9, 0.8, 0.7], "val_auc": [0.5, 0.6, 0.7, 0.8],
                  "val_accuracy": [0.5, 0.6, 0.6, 0.7], "val_f1": [0.4, 0.5, 0.6, 0.7]}).to_csv(history, index=False)
    for path in (
        plot_history(history, tmp_path / "fig", "classification"),
        plot_confusion([[3, 1], [2, 5]], tmp_path / "cm.png"),
        plot_roc({"a": ([0, 1, 0, 1], [0.1, 0.9, 0.4, 0.6])}, tmp_path / "roc.png"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    seg_history = tmp_path / "seg.csv"
    pd.DataFrame({"train_loss": [1, 0.5], "val_dice": [0.2, 0.4], "val_iou": [0.1, 0.3]}).to_csv(seg_history, index=False)
    assert plot_history(seg_history, tmp_path / "segfig", "segmentation").stat().st_size > 1000
    with pytest.raises(LungcadError, match="none of the columns"):
        plot_history(_only_epoch(tmp_path), tmp_path / "x", "segmentation")


def _only_epoch(tmp_path):
    path = tmp_path / "epochs.csv"
    pd.DataFrame({"epoch": [1, 2]}).to_csv(path, index=False)
    return path


def test_diameter_baseline_by_hand():
    from lungcad.baseline import diameter_baseline, patient_max_diameter_mm

    manifest = pd.DataFrame({
        "patient_id": ["a", "a", "b", "c", "d", "e"],
        "label": [1, 1, 0, 1, 0, 0],
        "nodule_area_px": [100, 400, 50, 0, 30, 900],
        "spacing_row_mm": [0.5, 0.5, 1.0, 1.0, 2.0, 1.0],
        "spacing_col_mm": [2.0, 2.0, 1.0, 1.0, 2.0, 1.0],
        "mask_source": ["gt", "gt", "gt", "gt", "gt", "none"],
    })
    d = patient_max_diameter_mm(manifest)
    # a: 400 px * 1 mm2 -> 2 sqrt(400/pi); b: 50 mm2; d: 30 px * 4 mm2 = 120 mm2; c has no area; e no mask
    assert sorted(d.index) == ["a", "b", "d"]
    assert d["a"] == pytest.approx(2 * np.sqrt(400 / np.pi))
    assert d["d"] == pytest.approx(2 * np.sqrt(120 / np.pi))
    fitted, frame = diameter_baseline(manifest, ["a", "b"], ["a", "b", "c", "d"])
    assert list(frame["patient_id"]) == ["a", "b", "d"]
    assert fitted.describe()["coef_per_mm"] > 0  # the larger nodule is the malignant one
    probs = frame.set_index("patient_id")["prob"]
    assert probs["a"] > probs["d"] > probs["b"]


# stored masks: a disc on slice 1 only, nothing on the other slices; its radius is what the
# segmenter "measured" (p7: nothing found; p8's tumour under-segmented; p9 has no reference)
STORED_RADIUS = {"dsa/p1": 2, "dsa/p2": 7, "dsa/p3": 4, "dsa/p4": 6,
                 "dsb/p5": 3, "dsb/p6": 6, "dsb/p7": 0, "dsb/p8": 3, "dsc/p9": 5}


def _stored_masks(seg, bench):
    """Write STORED_RADIUS's masks as the segmentation run's out-of-fold predicted masks."""
    manifest = pd.read_csv(bench / "manifest.csv")
    for _, row in manifest.iterrows():
        path = seg / "predicted_masks" / Path(row["image_path"]).relative_to("images")
        path.parent.mkdir(parents=True, exist_ok=True)
        radius = STORED_RADIUS[row["patient_id"]]
        mask = _disk(radius) if row["slice_index"] == 1 and radius else np.zeros((SIZE, SIZE), bool)
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    models = {"final": {"trained_on": SPLITS["train"], "validated_on": SPLITS["val"]},
              "fold-0": {"trained_on": ["dsa/p3"], "held_out": SPLITS["train"]}}
    owner = {p: ("final" if p in SPLITS["test"] else "fold-0") for p in PATIENTS}
    (seg / "predicted_masks.json").write_text(json.dumps({"complete": True, "models": models, "patients": owner}))


def test_classification_reads_the_segmentation_runs_stored_out_of_fold_masks(bench, tmp_path):
    """When the segmentation run wrote predicted masks (``train-seg --oof-folds``), evaluate uses
    them instead of segmenting again, and reports whether the model behind a patient's masks saw it."""
    from lungcad.evaluate import evaluate_run

    seg = _seg_run(tmp_path / "seg", bench, threshold=0.4)   # live: every pixel foreground
    run = _cls_run(tmp_path / "cls", bench, seg)
    test_patients = SPLITS["test"]
    _stored_masks(seg, bench)
    m = evaluate_run(run, split="all", progress=False, quiet=True, n_boot=20)
    pred = m["results"]["test"]["predicted_masks"]
    assert "size_head" not in m["aggregation"]                 # no patient_head.json: the network's mean
    assert pred["mask_origin"] == "StoredMasks"
    assert pred["n_slices"] == len(test_patients) - 1        # one stored nodule slice per patient, not 16
    assert pred["n_no_nodule_found"] == 1                     # p7
    assert pred["segmenter_saw_patients"] is False
    # The measured-diameter baseline covers every test patient (p7 at 0 mm, p9 without a reference),
    # the annotated one only those with a reference; measured sizes rank p4 > p9 > p8 > p7 (benign).
    test = m["results"]["test"]
    measured, annotated = test["baseline_measured_diameter"], test["baseline_diameter"]
    assert measured["n_patients"] == 4 and annotated["n_patients"] == 3
    assert measured["auc"] == pytest.approx(1.0) and measured["model"]["coef_per_mm"] > 0
    assert test["vs_baseline_measured"]["n_patients"] == 4
    assert test["vs_baseline_measured"]["auc_b"] == pytest.approx(1.0)
    predictions = pd.read_csv(run / "predictions.csv")
    rows = predictions[(predictions["split"] == "test") & (predictions["masks"] == "baseline_measured_diameter")]
    diameters = rows.set_index("patient_id")["diameter_mm"]
    assert diameters["dsb/p7"] == 0.0
    assert diameters["dsa/p4"] == pytest.approx(2 * np.sqrt(_disk(6).sum() * 0.25 / np.pi))
    assert "Diameter measured on the predicted masks: AUC 1.0000 on 4 patients" in (run / "metrics.md").read_text()
    train = m["results"]["train"]["predicted_masks"]
    assert train["segmenter_saw_patients"] is False           # out-of-fold: the fold model never saw them
    assert m["results"]["val"]["predicted_masks"]["segmenter_saw_patients"] is True   # fold-0 trained on p3


def test_size_head_is_fitted_on_validation_and_becomes_the_headline(bench, tmp_path, monkeypatch):
    """fit_patient_head weighs the network's patient score and the measured diameter on the
    validation patients; evaluate then reports it as the headline beside the network alone."""
    from lungcad.evaluate import evaluate_run, fit_configured_head, fit_patient_head
    from lungcad.features import equivalent_diameter_mm
    from lungcad.patient_head import HEAD_FILE, PatientHead

    seg = _seg_run(tmp_path / "seg", bench, threshold=0.4)
    run = _cls_run(tmp_path / "cls", bench, seg)
    _stored_masks(seg, bench)
    # The benchmark's one validation patient cannot fit two coefficients: a clear error, no file.
    with pytest.raises(LungcadError, match="at least 10 val patients"):
        fit_patient_head(run)
    assert not (run / HEAD_FILE).exists()
    # Without `patient_head: size` in config.yaml (the paper preset) nothing is fitted, and a head
    # left from an earlier training goes with it.
    (run / HEAD_FILE).write_text("{}")
    assert fit_configured_head(run) is None
    assert not (run / HEAD_FILE).exists()
    # A run split with five validation patients (p1, p3, p5 benign and small; p2, p6 malignant and large).
    splits = {"seed": 42, "unit": "patient",
              "segmentation": json.loads((bench / "splits.json").read_text())["segmentation"],
              "classification": {"train": ["dsb/p7", "dsc/p9"],
                                 "val": ["dsa/p1", "dsa/p2", "dsa/p3", "dsb/p5", "dsb/p6"],
                                 "test": ["dsa/p4", "dsb/p8"]}}
    (run / "splits.json").write_text(json.dumps(splits))
    monkeypatch.setattr("lungcad.patient_head.MIN_PATIENTS", 4)
    fitted = fit_patient_head(run)
    head = PatientHead.load(run)
    assert head.n_patients == 5 and head.n_malignant == 2
    assert head.coef[0] == pytest.approx(0.0)     # the zeroed network says 0.5 for everyone: no weight
    assert head.coef[1] > 0                         # larger is more malignant here
    assert fitted["val_auc_in_sample"]["network"] == pytest.approx(0.5)
    assert fitted["val_auc_in_sample"]["size_head"] == pytest.approx(1.0)
    assert fitted["val_auc_in_sample"]["measured_diameter"] == pytest.approx(1.0)
    # The benchmark's own splits again: the head ranks the training patients by measured size.
    (run / "splits.json").unlink()
    m = evaluate_run(run, split="train,test", progress=False, quiet=True, n_boot=20)
    train = m["results"]["train"]
    assert train["headline"] == "size_head"
    assert "headline size_head" in m["aggregation"]
    assert train["size_head"]["auc"] == pytest.approx(1.0) and train["predicted_masks"]["auc"] == pytest.approx(0.5)
    assert train["size_head"]["in_sample"] is False
    assert train["vs_network"]["auc_a"] == pytest.approx(1.0) and train["vs_network"]["auc_b"] == pytest.approx(0.5)
    assert train["vs_baseline_measured"]["masks"] == "size_head"
    assert m["train_auc"] == pytest.approx(1.0)
    predictions = pd.read_csv(run / "predictions.csv")
    rows = predictions[(predictions["split"] == "train") & (predictions["masks"] == "size_head")]
    expected = head.predict_proba([0.5] * 4, [equivalent_diameter_mm(_disk(STORED_RADIUS[p]).sum(), (0.5, 0.5))
                                              for p in rows["patient_id"]])
    np.testing.assert_allclose(rows["prob"].to_numpy(), expected, rtol=1e-6)
    test = m["results"]["test"]                     # p7: nothing found, probability 0 under the head too
    assert test["size_head"]["n_no_nodule_found"] == 1
    p7 = predictions.query("split == 'test' and masks == 'size_head' and patient_id == 'dsb/p7'")
    assert p7["prob"].item() == 0.0
    markdown = (run / "metrics.md").read_text()
    assert "size_head: the network's patient probability and the largest measured diameter" in markdown
    # --compare takes each run's headline, the size head, unless told otherwise
    from lungcad.evaluate import compare_runs

    assert compare_runs(run, run, split="train")["masks_a"] == "size_head"
    assert compare_runs(run, run, split="train", masks="predicted_masks")["auc_a"] == pytest.approx(0.5)


def test_split_lists(bench, tmp_path):
    from lungcad.evaluate import evaluate_run

    run = _seg_run(tmp_path / "seg", bench, threshold=0.6)
    m = evaluate_run(run, split="test,val", progress=False, quiet=True, n_boot=10)
    assert list(m["results"]) == ["val", "test"]
    with pytest.raises(LungcadError, match="unknown split"):
        evaluate_run(run, split="val,nope", progress=False, quiet=True)


def test_predicted_mask_slices_are_cut_to_the_classifier_s_core_slices(bench):
    """A classifier trained on core slices (model.json ``min_area_frac``) is evaluated on the same
    selection: per patient, the slices whose predicted mask is at least that fraction of the largest."""
    from lungcad.evaluate import predicted_mask_probabilities
    from lungcad.inference import SliceClassifier

    class TwoDiscs:  # slice 1: a disc of radius 8; slice 2: radius 3 (area 0.14 of it); others empty
        def masks(self, group, images):
            radius = {1: 8, 2: 3}
            return [_disk(radius[k]) if k in radius else np.zeros((SIZE, SIZE), bool) for k in group["slice_index"]]

    def classifier(frac):
        runner = lambda x: x[:, 1].mean(axis=(1, 2)).astype(np.float32)  # noqa: E731
        return SliceClassifier(runner, {"task": "classification", "arch": "area", "image_size": 32, "crop": 16,
                                        "min_area_frac": frac})

    manifest = pd.read_csv(bench / "manifest.csv")
    patients = SPLITS["test"]
    every = predicted_mask_probabilities(classifier(0.0), TwoDiscs(), bench, manifest, patients)
    core = predicted_mask_probabilities(classifier(0.5), TwoDiscs(), bench, manifest, patients)
    assert (every.groupby("patient_id").size() == 2).all()
    assert (core.groupby("patient_id").size() == 1).all() and (core["slice_index"] == 1).all()
    assert core["prob"].min() > every["prob"].min()   # the small slice scored lowest and is gone


# An external cohort: other series, two patient IDs that repeat the trained benchmark's with other
# labels and sizes, a dataset it never had, and a malignant patient with no visible nodule.
EXTERNAL = {"dsa/p1": ("dsa", 1, 9), "dsa/p2": ("dsa", 0, 3), "dsx/q1": ("dsx", 1, 8),
            "dsx/q2": ("dsx", 0, 2), "dsx/q3": ("dsx", 1, 0)}


def _external_bench(root):
    """Nodules drawn bright (255) on dim noise, so a threshold segments them exactly."""
    rng = np.random.default_rng(1)

    def image_of(mask):
        image = rng.integers(0, 100, (SIZE, SIZE), dtype=np.uint8)
        image[mask] = 255
        return image

    return _write_bench(root, EXTERNAL, "x", image_of)


def test_external_cohort_is_evaluated_whole_with_baselines_fitted_on_the_runs_own_training_patients(
        bench, tmp_path, monkeypatch):
    """``evaluate --external``: every labelled patient of a cohort the run never saw, segmented now;
    the diameter baselines keep their fit on the run's own training patients; nothing of the run's
    own evaluation is touched; and the run's split is refused on another benchmark."""
    import shutil

    from lungcad.baseline import DiameterBaseline
    from lungcad.evaluate import evaluate_run
    from lungcad.features import equivalent_diameter_mm
    from lungcad.inference import SliceSegmenter

    monkeypatch.setattr(SliceSegmenter, "predict_series_masks", lambda self, images, chunk=32: [i > 200 for i in images])
    ext = _external_bench(tmp_path / "cohort")
    seg = _seg_run(tmp_path / "seg", bench, threshold=0.4)
    run = _cls_run(tmp_path / "cls", bench, seg)
    _stored_masks(seg, bench)    # the run's own out-of-fold masks: its training patients' measured sizes

    m = evaluate_run(run, bench=ext, external=True, progress=False, quiet=True, n_boot=20)
    out = run / "external" / "cohort"
    assert json.loads((out / "metrics.json").read_text())["split"] == "external"
    assert (out / "figures" / "roc_external.png").stat().st_size > 0
    assert not (run / "metrics.json").exists() and not (run / "figures").exists()
    assert list(m["results"]) == ["external"] and m["external"]["trained_on"] == str(bench)
    assert m["external"]["run_dir"] == str(run.resolve())  # the leaderboard's way back to model.json
    r = m["results"]["external"]
    assert r["n_patients_in_split"] == 5
    pred = r["predicted_masks"]
    assert pred["mask_origin"] == "LiveMasks" and pred["segmenter_saw_patients"] is False
    assert pred["n"] == 5 and pred["n_no_nodule_found"] == 1           # q3: nothing to find
    assert set(pred["per_dataset"]) == {"dsa", "dsx"}

    def d(radius):
        return equivalent_diameter_mm(_disk(radius).sum(), (0.5, 0.5))

    train_labels = [PATIENTS[p][1] for p in SPLITS["train"]]
    annotated = DiameterBaseline.fit([d(PATIENTS[p][2]) for p in SPLITS["train"]], train_labels)
    measured = DiameterBaseline.fit([d(STORED_RADIUS[p]) for p in SPLITS["train"]], train_labels)
    assert r["baseline_diameter"]["model"] == pytest.approx(annotated.describe())
    assert r["baseline_measured_diameter"]["model"] == pytest.approx(measured.describe())
    # Annotated: the four outlined patients, ranked perfectly. Measured on the live masks: q3
    # (malignant, nothing found) ranks last, so 4 of the 6 pairs are right.
    assert r["baseline_diameter"]["n_patients"] == 4 and r["baseline_diameter"]["auc"] == pytest.approx(1.0)
    assert r["baseline_measured_diameter"]["n_patients"] == 5
    assert r["baseline_measured_diameter"]["auc"] == pytest.approx(4 / 6)
    rows = pd.read_csv(out / "predictions.csv").query("masks == 'baseline_measured_diameter'")
    sizes = rows.set_index("patient_id")["diameter_mm"]
    assert sizes["dsa/p1"] == pytest.approx(d(9)) and sizes["dsx/q3"] == 0.0   # the cohort's p1, not the run's

    with pytest.raises(LungcadError, match="needs --bench"):
        evaluate_run(run, external=True, progress=False, quiet=True)
    with pytest.raises(LungcadError, match="trained on, not an external cohort"):
        evaluate_run(run, bench=bench, external=True, progress=False, quiet=True)
    with pytest.raises(LungcadError, match="not the benchmark .* trained on.*--external"):
        evaluate_run(run, bench=ext, progress=False, quiet=True)
    # The same benchmark moved elsewhere is still the run's own: its split applies.
    moved = shutil.copytree(bench, tmp_path / "moved")
    assert list(evaluate_run(seg, bench=moved, split="test", progress=False, quiet=True, n_boot=5)["results"]) == ["test"]
    # A segmentation run on the cohort: every outlined slice, exactly segmented here.
    s = evaluate_run(seg, bench=ext, external=True, progress=False, quiet=True, n_boot=5)["results"]["external"]
    assert s["dice_nodule"] == pytest.approx(1.0) and (seg / "external" / "cohort" / "metrics.json").is_file()
