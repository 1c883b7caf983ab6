"""Leaderboards from evaluated run folders: the paper's Table 6 (segmentation) and Table 7 (classification).

Each run must have been evaluated (``RUN/metrics.json``, written by ``lungcad evaluate``); an
evaluation on a cohort the run never saw (``RUN/external/<cohort>/``, ``lungcad evaluate --external``)
is a row of its own, scored on that cohort instead of the test split. The
paper's columns come first, then ours: confidence intervals, Dice on nodule slices only, the
false-positive rate on nodule-free slices, 3D Dice, and the nodule-diameter baseline for classifiers.
Rows are ranked by the headline metric (test Dice over all slices; patient-level test AUC), best
first, runs without a value last.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import LungcadError
from .features import PAPER_CROP
from .io import write_text_atomic
from .stats import pooled_difference

# Architecture names (CLI) -> the paper's display names (Tables 6 and 7).
DISPLAY_NAMES = {
    "unar": "UNAR",
    "res34-unetv2": "Res34UNetV2",
    "segformer": "SegFormer",
    "unetplusplus": "UNetPlusPlus",
    "deeplabv3plus": "DeepLabV3Plus",
    "lightunet": "LightUNet",
    "efficientnet-b3": "EfficientNet-B3",
    "maxvit-tiny": "MaxViT-Tiny",
    "maxvit-large": "MaxViT-Large",
    "vit-small": "ViT-Small",
    "convnext-tiny": "ConvNeXt-Tiny",
    "efficientnetv2-s": "EfficientNetV2-S",
    "coatnet-0": "CoAtNet-0",
    "mobilenetv3-large": "MobileNetV3-Large",
    "nodulefusionnet-b0": "NoduleFusionNet-B0",
    "nodulefusionnet-v2": "NoduleFusionNet-V2",
    "nodule-hyperfusionnet": "NoduleHyperFusionNet",
}

MISSING = "–"


def display_name(arch: str) -> str:
    """The paper's name for an architecture (the CLI name when the paper has none)."""
    return DISPLAY_NAMES.get(arch, arch)


def variant(model_json: dict) -> str:
    """What sets a run apart from its architecture's defaults, from ``model.json``: the model options
    (``kwargs``) and, for a classifier, a crop other than Table 5's, the size input and core-slice
    scoring; "" when there is nothing."""
    parts = [f"{key}={json.dumps(value, separators=(',', ':'))}"
             for key, value in sorted((model_json.get("kwargs") or {}).items()) if key != "size_channel"]
    if model_json.get("task") == "classification" and model_json.get("crop") not in (None, PAPER_CROP):
        parts.append(f"crop {model_json['crop']}")
    if model_json.get("size_input"):
        parts.append("size input")
    if model_json.get("min_area_frac"):
        parts.append(f"core slices {model_json['min_area_frac']:g}")
    return "; ".join(parts)


def _model_cell(metrics: dict) -> str:
    name = display_name(metrics.get("arch", "?"))
    return f"{name} ({metrics['_variant']})" if metrics.get("_variant") else name


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _num(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if _finite(value) else MISSING


def _with_ci(value, ci, digits: int = 4) -> str:
    if not _finite(value):
        return MISSING
    if ci and len(ci) == 2 and all(_finite(c) for c in ci):
        return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return f"{value:.{digits}f}"


def _p_value(p) -> str:
    if not _finite(p):
        return MISSING
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _read_json(path: Path, run: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LungcadError(f"{path}: invalid JSON ({exc})") from exc
    except OSError as exc:
        raise LungcadError(f"{run}: cannot read {what} ({exc})") from exc


def load_run_metrics(run: str | Path) -> dict:
    """``RUN/metrics.json`` with ``arch``/``task`` filled from ``RUN/model.json`` when missing."""
    run = Path(run)
    metrics_path = run / "metrics.json"
    if not metrics_path.is_file():
        raise LungcadError(f"{run}: no metrics.json; run `lungcad evaluate {run}` first")
    metrics = _read_json(metrics_path, run, "metrics.json")
    model_json = _model_json_path(run, metrics)
    if model_json.is_file():
        info = _read_json(model_json, run, "model.json")
        metrics.setdefault("arch", info.get("arch"))
        metrics.setdefault("task", info.get("task"))
        metrics["_variant"] = variant(info)
    if metrics.get("task") not in ("segmentation", "classification"):
        raise LungcadError(f"{metrics_path}: unknown task {metrics.get('task')!r}")
    metrics["_run"] = str(run)  # as given: runs of one name from two benchmarks stay apart
    return metrics


def _model_json_path(folder: Path, metrics: dict) -> Path:
    """The run's ``model.json``; an external evaluation's folder has none: the run it names
    (``external.run_dir``), else the default layout ``RUN/external/<cohort>/``."""
    external = metrics.get("external")
    if (folder / "model.json").is_file() or not isinstance(external, dict):
        return folder / "model.json"
    return Path(external["run_dir"]) / "model.json" if external.get("run_dir") else folder.parent.parent / "model.json"


def _split(metrics: dict, name: str) -> dict:
    return (metrics.get("results") or {}).get(name) or {}


def _scored(metrics: dict) -> dict:
    """The results a row reports: the test split, or an external evaluation's one split (its cohort)."""
    return _split(metrics, str(metrics.get("split")) if metrics.get("external") else "test")


EXTERNAL_NOTE = (" Rows of an external evaluation (Run .../external/<cohort>, `lungcad evaluate --external`) "
                 "report every labelled patient of that cohort, which the run never saw, in place of the test split.")


def _external_note(runs_metrics: list[dict]) -> str:
    return EXTERNAL_NOTE if any(m.get("external") for m in runs_metrics) else ""


def _rank(rows: list[tuple[float, list[str]]]) -> list[list[str]]:
    """Sort by key, best first; rows without a finite key go last in their given order."""
    ranked = sorted((r for r in rows if _finite(r[0])), key=lambda r: -r[0])
    return [cells for _, cells in ranked] + [cells for key, cells in rows if not _finite(key)]


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def segmentation_table(runs_metrics: list[dict]) -> str:
    """Table 6 plus our columns, from the metrics of evaluated segmentation runs."""
    header = [
        "Model", "Validation Dice", "Test Dice", "Test Dice, nodule slices [95% CI]", "Test IoU, nodule slices",
        "FP rate, empty slices", "Test 3D Dice", "Test patients", "Run",
    ]
    rows = []
    for m in runs_metrics:
        val, test = _split(m, "val"), _scored(m)
        ci = test.get("ci") or {}
        cells = [
            _model_cell(m),
            _num(val.get("dice_all")),
            _num(test.get("dice_all")),
            _with_ci(test.get("dice_nodule"), ci.get("dice_nodule")),
            _num(test.get("iou_nodule")),
            _num(test.get("fp_rate_empty")),
            _num(test.get("dice_3d")),
            str(test.get("n_patients", MISSING)),
            m["_run"],
        ]
        # Ranked on nodule slices: all-slice Dice rewards a model that predicts nothing.
        rows.append((test.get("dice_nodule"), cells))
    note = (
        "Dice over all evaluated slices (an empty prediction on an empty slice scores 1) for the paper's "
        "columns; nodule slices = slices with a nodule in the reference mask. Ranked by test Dice on "
        "nodule slices. 95% CIs: patient bootstrap."
    ) + _external_note(runs_metrics)
    return "### Segmentation (Table 6)\n\n" + _markdown(header, _rank(rows)) + "\n\n" + note + "\n"


def _classification_cells(m: dict) -> tuple[float, list[str]]:
    test = _scored(m)
    headline = test.get("headline")
    result = test.get(headline) or {}
    ci = result.get("ci") or {}
    baseline = test.get("baseline_diameter") or {}
    versus = test.get("vs_baseline") or {}
    cells = [
        _model_cell(m),
        _with_ci(result.get("accuracy"), ci.get("accuracy")),
        _with_ci(result.get("f1"), ci.get("f1")),
        _with_ci(result.get("auc"), ci.get("auc")),
        _with_ci(baseline.get("auc"), baseline.get("auc_ci")),
        _p_value(versus.get("p")),
        _measured_baseline_cell(test),
        _masks_cell(test, headline),
        str(result.get("n", MISSING)),
        m["_run"],
    ]
    return result.get("auc"), cells


def _masks_cell(test: dict, headline: str | None) -> str:
    """Which masks the headline used; with the size head, the network alone's AUC beside it."""
    if headline == "size_head":
        network = (test.get("predicted_masks") or {}).get("auc")
        return "predicted + size head" + (f" (network alone {network:.4f})" if network is not None else "")
    return {"predicted_masks": "predicted", "gt_masks": "ground truth"}.get(headline, MISSING)


def _measured_baseline_cell(test: dict) -> str:
    """AUC of the diameter measured on the predicted masks, and p of the model against it."""
    baseline = test.get("baseline_measured_diameter") or {}
    if baseline.get("auc") is None:
        return MISSING
    return f"{baseline['auc']:.4f} (p = {_p_value((test.get('vs_baseline_measured') or {}).get('p'))})"


def classification_table(runs_metrics: list[dict]) -> str:
    """Table 7 plus our columns, from the metrics of evaluated classification runs."""
    header = [
        "Model", "Accuracy [95% CI]", "F1 Score [95% CI]", "AUC [95% CI]", "Diameter baseline AUC",
        "p vs baseline", "Measured-diameter baseline AUC", "Masks", "Test patients", "Run",
    ]
    rows = [_classification_cells(m) for m in runs_metrics]
    note = (
        "Patient level (mean of slice probabilities, threshold 0.5; core slices: only the slices whose mask is "
        "at least that fraction of the patient's largest) on the test split. AUC CIs: DeLong; "
        "accuracy and F1 CIs: patient bootstrap. Baseline: logistic regression on the largest nodule "
        "diameter (annotated masks); p: DeLong test of the two correlated ROC curves. Measured-diameter "
        "baseline: the same regression on the diameter measured on the segmenter's predicted masks "
        "(no annotation needed), with the model's p against it. Size head (the cpu preset): the network's "
        "patient probability and the measured diameter weighed by a logistic regression fitted on the "
        "validation patients (lungcad.patient_head)."
    ) + _external_note(runs_metrics)
    return "### Classification (Table 7)\n\n" + _markdown(header, _rank(rows)) + "\n\n" + note + "\n"


# The DeLong tests that evaluate stores for the headline against each baseline (metrics.json keys).
POOLED_COMPARISONS = (
    ("vs_baseline_measured", "measured-diameter baseline"),
    ("vs_baseline", "annotated-diameter baseline"),
)


def _signed(value: float, digits: int = 4) -> str:
    return f"{value:+.{digits}f}"


def pooled_table(runs_metrics: list[dict]) -> str:
    """Each model's test-AUC difference to the diameter baselines, pooled over independent benchmarks.

    One test split of about 70 patients measures an AUC difference with a standard error near 0.04,
    as large as the differences in question; several benchmarks drawn with other seeds are
    independent samples. Per model (the Model column of Table 7) and headline (``size_head`` or the
    network alone, ``predicted_masks``), the first run given on each benchmark (``metrics.json``
    ``bench``) counts; further runs on a benchmark already counted
    (other training seeds, the same test patients) are named and left out, as they are not
    independent; so are runs whose ``metrics.json`` names no benchmark. An external evaluation counts
    on the cohort it scored (its ``bench``), so one run evaluated on several independent cohorts
    pools too, and a cohort that is also another run's own benchmark counts once. Pooling is fixed-effect,
    inverse-variance (:func:`lungcad.stats.pooled_difference`). Empty when no model has runs on
    two benchmarks.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for m in runs_metrics:  # runs with and without the size head are two models here
        headline = str(_scored(m).get("headline") or MISSING)
        groups.setdefault((_model_cell(m), headline), []).append(m)
    rows, repeated, unknown = [], [], []
    for (model, headline), ms in groups.items():
        counted, seen = [], set()
        for m in ms:
            bench = m.get("bench")
            if not bench:  # independence cannot be judged
                unknown.append(m["_run"])
            elif str(bench) in seen:
                repeated.append(m["_run"])
            else:
                seen.add(str(bench))
                counted.append(m)
        if len(counted) < 2:
            continue
        for key, label in POOLED_COMPARISONS:
            tests = [(_scored(m).get(key) or {}, m) for m in counted]
            tests = [(t, m) for t, m in tests if _finite(t.get("diff")) and _finite(t.get("se"))]
            pooled = pooled_difference([t["diff"] for t, _ in tests], [t["se"] for t, _ in tests])
            if pooled["k"] < 2:
                continue
            ci = pooled["ci"]
            each = ", ".join(f"{Path(str(m['bench'])).name} {_signed(t['diff'], 3)}"
                             for t, m in tests)
            rows.append([model, f"{headline} - {label}", str(pooled["k"]),
                         f"{_signed(pooled['diff'])} [{_signed(ci[0])}, {_signed(ci[1])}]",
                         _p_value(pooled["p"]), f"{100 * pooled['i2']:.0f}%", each])
    if not rows:
        return ""
    header = ["Model", "Test AUC difference", "Benchmarks", "Pooled difference [95% CI]", "p", "I²",
              "Per benchmark"]
    note = ("Fixed-effect, inverse-variance pooling of the DeLong differences of independent benchmarks "
            "(one run per benchmark, model and headline); I²: the share of the spread between benchmarks beyond chance.")
    if repeated:
        note += " Left out (a benchmark already counted for the model): " + ", ".join(repeated) + "."
    if unknown:
        note += " Left out (no benchmark in metrics.json): " + ", ".join(unknown) + "."
    return "### Pooled over benchmarks\n\n" + _markdown(header, rows) + "\n\n" + note + "\n"


def leaderboard(runs, out: str | Path | None = None) -> str:
    """Markdown leaderboard of evaluated runs: one table per task present. Writes ``out`` if given."""
    runs = list(runs)
    if not runs:
        raise LungcadError("leaderboard: give at least one run folder")
    metrics = [load_run_metrics(r) for r in runs]
    tables = []
    seg = [m for m in metrics if m["task"] == "segmentation"]
    cls = [m for m in metrics if m["task"] == "classification"]
    if seg:
        tables.append(segmentation_table(seg))
    if cls:
        tables.append(classification_table(cls))
        pooled = pooled_table(cls)
        if pooled:
            tables.append(pooled)
    text = "\n".join(tables)
    if out is not None:
        write_text_atomic(out, text)
    return text
