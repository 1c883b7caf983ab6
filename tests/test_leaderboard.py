"""Leaderboard from hand-written metrics.json files."""

import json

import pytest

from lungcad.errors import LungcadError
from lungcad.leaderboard import leaderboard


def _seg_run(path, arch, val_dice, test_dice, nodule_dice):
    path.mkdir()
    (path / "model.json").write_text(json.dumps({"task": "segmentation", "arch": arch}))
    metrics = {
        "task": "segmentation",
        "results": {
            "val": {"dice_all": val_dice},
            "test": {
                "dice_all": test_dice, "dice_nodule": nodule_dice, "iou_nodule": 0.5, "fp_rate_empty": 0.125,
                "dice_3d": 0.61, "n_patients": 12, "ci": {"dice_nodule": [nodule_dice - 0.1, nodule_dice + 0.05]},
            },
        },
    }
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def _cls_run(path, arch, auc, **model_json):
    path.mkdir()
    (path / "model.json").write_text(json.dumps({"task": "classification", "arch": arch, **model_json}))
    metrics = {
        "task": "classification",
        "results": {
            "test": {
                "headline": "predicted_masks",
                "predicted_masks": {"accuracy": 0.75, "f1": 0.8, "auc": auc, "n": 20,
                                    "ci": {"accuracy": [0.55, 0.9], "auc": [auc - 0.1, min(1.0, auc + 0.1)]}},
                "baseline_diameter": {"auc": 0.66, "auc_ci": [0.4, 0.9]},
                "vs_baseline": {"p": 0.0004},
                "baseline_measured_diameter": {"auc": 0.61, "auc_ci": [0.4, 0.8]},
                "vs_baseline_measured": {"p": 0.0312},
            }
        },
    }
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_segmentation_rows_ranked_with_paper_names(tmp_path):
    light = _seg_run(tmp_path / "r_light", "lightunet", 0.97, 0.9732, 0.70)
    unar = _seg_run(tmp_path / "r_unar", "unar", 0.984, 0.9827, 0.80)
    text = leaderboard([light, unar])
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| Model | Validation Dice | Test Dice")
    assert lines[1].startswith("| UNAR | 0.9840 | 0.9827 | 0.8000 [0.7000, 0.8500]")
    assert lines[2].startswith("| LightUNet | 0.9700 | 0.9732")
    assert "Classification" not in text


def test_segmentation_ranked_on_nodule_slices_not_on_all_slices(tmp_path):
    # An empty predictor scores high all-slice Dice (every empty slice counts 1) but 0 on nodules.
    empty = _seg_run(tmp_path / "r_empty", "deeplabv3plus", 0.9, 0.95, 0.0)
    real = _seg_run(tmp_path / "r_real", "lightunet", 0.8, 0.85, 0.6)
    lines = [line for line in leaderboard([empty, real]).splitlines() if line.startswith("| ")]
    assert lines[1].startswith("| LightUNet") and lines[2].startswith("| DeepLabV3Plus")


def test_mixed_runs_give_two_tables_and_file(tmp_path):
    seg = _seg_run(tmp_path / "seg", "unar", 0.9, 0.8, 0.7)
    a = _cls_run(tmp_path / "cls_a", "efficientnet-b3", 0.81)
    b = _cls_run(tmp_path / "cls_b", "nodule-hyperfusionnet", 0.93)
    out = tmp_path / "board" / "leaderboard.md"
    text = leaderboard([a, seg, b], out=out)
    assert out.read_text() == text
    assert text.index("Segmentation") < text.index("Classification")
    cls_part = text[text.index("Classification"):]
    assert cls_part.index("NoduleHyperFusionNet") < cls_part.index("EfficientNet-B3")
    row = next(line for line in cls_part.splitlines() if line.startswith("| NoduleHyperFusionNet"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "0.7500 [0.5500, 0.9000]"
    assert cells[2] == "0.8000"  # no CI given -> value only
    assert cells[3] == "0.9300 [0.8300, 1.0000]"
    assert cells[4] == "0.6600 [0.4000, 0.9000]"
    assert cells[5] == "<0.001" and cells[6] == "0.6100 (p = 0.031)" and cells[7] == "predicted"
    assert cells[-1] == str(b)  # the run folder as given, not only its name


def test_model_column_tells_variants_of_one_architecture_apart(tmp_path):
    plain = _cls_run(tmp_path / "hf", "nodule-hyperfusionnet", 0.70, kwargs={}, min_area_frac=0.0)
    variant = _cls_run(tmp_path / "hf_v", "nodule-hyperfusionnet", 0.89,
                       kwargs={"global_channels": [1]}, min_area_frac=0.5)
    paper_crop = _cls_run(tmp_path / "hf_64", "nodule-hyperfusionnet", 0.60, crop=64)
    small_crop = _cls_run(tmp_path / "hf_16", "nodule-hyperfusionnet", 0.65, crop=16, size_input=True)
    rows = [line for line in leaderboard([plain, variant, paper_crop, small_crop]).splitlines()
            if line.startswith("| Nodule")]
    assert rows[0].startswith("| NoduleHyperFusionNet (global_channels=[1]; core slices 0.5) | ")
    assert rows[1].startswith("| NoduleHyperFusionNet | ")
    assert rows[2].startswith("| NoduleHyperFusionNet (crop 16; size input) | ")
    assert rows[3].startswith("| NoduleHyperFusionNet | ")  # Table 5's 64 px crop is the default


def test_size_head_headline_shows_the_network_alone_beside_it(tmp_path):
    run = _cls_run(tmp_path / "hf", "nodule-hyperfusionnet", 0.7)
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["results"]["test"]
    test["size_head"] = {**test["predicted_masks"], "auc": 0.85, "ci": {"auc": [0.75, 0.95]}}
    test["headline"] = "size_head"
    (run / "metrics.json").write_text(json.dumps(metrics))
    row = next(line for line in leaderboard([run]).splitlines() if "hf" in line and "|" in line)
    assert "0.8500 [0.7500, 0.9500]" in row
    assert "predicted + size head (network alone 0.7000)" in row


def test_unevaluated_run_is_named_in_error(tmp_path):
    run = tmp_path / "not_evaluated"
    run.mkdir()
    (run / "model.json").write_text(json.dumps({"task": "segmentation", "arch": "unar"}))
    with pytest.raises(LungcadError, match="not_evaluated.*lungcad evaluate"):
        leaderboard([run])


def _with_tests(run, bench, measured, annotated=None):
    """Give a hand-made run its benchmark and DeLong (diff, se) against the two baselines."""
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["bench"] = bench
    test = metrics["results"]["test"]
    test["vs_baseline_measured"] = {"diff": measured[0], "se": measured[1], "p": 0.5}
    test["vs_baseline"] = {"diff": annotated[0], "se": annotated[1], "p": 0.5} if annotated else {"p": 0.5}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def _pooled_rows(text):
    part = text.split("### Pooled over benchmarks")[1]
    return [line for line in part.splitlines() if line.startswith("| NoduleHyperFusionNet")]


def test_pooled_table_weighs_independent_benchmarks_and_leaves_out_seeds(tmp_path):
    a = _with_tests(_cls_run(tmp_path / "a", "nodule-hyperfusionnet", 0.8), "/x/bench1", (0.10, 0.05), (0.02, 0.04))
    b = _with_tests(_cls_run(tmp_path / "b", "nodule-hyperfusionnet", 0.8), "/y/bench2", (0.00, 0.10))
    seed = _with_tests(_cls_run(tmp_path / "a-s7", "nodule-hyperfusionnet", 0.8), "/x/bench1", (0.9, 0.01))
    other = _with_tests(_cls_run(tmp_path / "e", "efficientnet-b3", 0.8), "/x/bench1", (0.3, 0.1))
    unknown = _with_tests(_cls_run(tmp_path / "nobench", "nodule-hyperfusionnet", 0.8), "", (0.9, 0.01))
    text = leaderboard([a, b, seed, other, unknown])
    rows = _pooled_rows(text)
    # Measured: weights 400 and 100 give +0.08 (the seed run's +0.9 on bench1 is not counted).
    assert len(rows) == 1, text
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert cells[1] == "predicted_masks - measured-diameter baseline" and cells[2] == "2"
    assert cells[3].startswith("+0.0800 [")
    assert cells[6] == "bench1 +0.100, bench2 +0.000"
    note = text.split("### Pooled over benchmarks")[1]
    assert "already counted for the model): " + str(seed) in note
    assert "no benchmark in metrics.json): " + str(unknown) in note
    # The annotated comparison needs two benchmarks with a difference: only one here, so no row;
    # and EfficientNet-B3 has one benchmark, so no row either.
    assert "EfficientNet-B3" not in text.split("### Pooled over benchmarks")[1]


def test_no_pooled_table_for_runs_on_one_benchmark(tmp_path):
    a = _with_tests(_cls_run(tmp_path / "a", "nodule-hyperfusionnet", 0.8), "/x/bench1", (0.1, 0.05))
    b = _with_tests(_cls_run(tmp_path / "b", "nodule-hyperfusionnet", 0.7), "/x/bench1", (0.0, 0.05))
    assert "Pooled" not in leaderboard([a, b])


def test_pooled_table_keeps_runs_with_and_without_the_size_head_apart(tmp_path):
    a = _with_tests(_cls_run(tmp_path / "a", "nodule-hyperfusionnet", 0.8), "/x/bench1", (0.1, 0.05))
    b = _with_tests(_cls_run(tmp_path / "b", "nodule-hyperfusionnet", 0.8), "/y/bench2", (0.0, 0.05))
    headed = _with_tests(_cls_run(tmp_path / "c", "nodule-hyperfusionnet", 0.8), "/z/bench3", (0.5, 0.05))
    metrics = json.loads((headed / "metrics.json").read_text())
    metrics["results"]["test"]["headline"] = "size_head"
    metrics["results"]["test"]["size_head"] = metrics["results"]["test"]["predicted_masks"]
    (headed / "metrics.json").write_text(json.dumps(metrics))
    rows = _pooled_rows(leaderboard([a, b, headed]))
    # Only the two network-alone runs pool (equal weights: +0.05); the lone size-head run has no row.
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert cells[1].startswith("predicted_masks - ") and cells[3].startswith("+0.0500 [")


def _external(run, cohort, measured, *, layout=True):
    """An evaluation of ``run`` on another cohort, as `evaluate --external` writes it: in
    RUN/external/<cohort>/ (``layout``) or elsewhere, naming the run in ``external.run_dir``."""
    folder = run / "external" / cohort if layout else run.parent / f"{run.name}-{cohort}"
    folder.mkdir(parents=True)
    metrics = json.loads((run / "metrics.json").read_text())
    scored = {**metrics["results"]["test"], "vs_baseline_measured": {"diff": measured[0], "se": measured[1], "p": 0.5}}
    scored["predicted_masks"] = {**scored["predicted_masks"], "n": 300}
    external = {"trained_on": "/x/bench1", **({} if layout else {"run_dir": str(run)})}
    (folder / "metrics.json").write_text(json.dumps({
        "task": "classification", "bench": f"/c/{cohort}", "split": "external", "external": external,
        "results": {"external": scored}}))
    return folder


def test_external_evaluations_are_rows_and_pool_over_their_cohorts(tmp_path):
    run = _with_tests(_cls_run(tmp_path / "big", "nodule-hyperfusionnet", 0.8, crop=16), "/x/bench1", (0.9, 0.01))
    first = _external(run, "cohortA", (0.10, 0.05))
    second = _external(run, "cohortB", (0.00, 0.10), layout=False)
    text = leaderboard([first, second])
    table = text.split("### Pooled over benchmarks")[0]
    rows = [line for line in table.splitlines() if line.startswith("| NoduleHyperFusionNet")]
    # The variant comes from the run's model.json, found by layout or by external.run_dir.
    assert len(rows) == 2 and all("(crop 16)" in r for r in rows), text
    assert all(" 300 |" in r for r in rows)  # the cohort's patients, not the run's test split (20)
    assert "in place of the test split" in table
    cells = [c.strip() for c in _pooled_rows(text)[0].split("|")[1:-1]]
    # The two cohorts pool (weights 400 and 100: +0.08); the run's own test result (+0.9) is not read.
    assert cells[2] == "2" and cells[3].startswith("+0.0800 [") and cells[6] == "cohortA +0.100, cohortB +0.000"


def test_an_external_cohort_that_is_a_counted_benchmark_is_left_out(tmp_path):
    own = _with_tests(_cls_run(tmp_path / "a", "nodule-hyperfusionnet", 0.8), "/c/cohortA", (0.1, 0.05))
    other = _with_tests(_cls_run(tmp_path / "b", "nodule-hyperfusionnet", 0.8), "/y/bench2", (0.0, 0.05))
    overlapping = _external(other, "cohortA", (0.5, 0.01))
    text = leaderboard([own, other, overlapping])
    cells = [c.strip() for c in _pooled_rows(text)[0].split("|")[1:-1]]
    assert cells[2] == "2" and cells[3].startswith("+0.0500 [")
    assert "already counted for the model): " + str(overlapping) in text
