"""``lungcad split``: patient-level, label-stratified train/val/test splits of a benchmark.

Classification: all labelled patients, 80/20 (train+val / test) then 80/20 (train / val),
stratified by label (seed 42 by default). Segmentation: the *same* partition restricted to the
patients that have voxel masks (``mask_source='gt'``; box-annotated patients are classification
only), so that no test patient of one task is a training patient of the other. When no
classification-val patient has a voxel mask, segmentation val is drawn from segmentation train
(noted in ``splits.json``).
``unit='slice'`` reproduces the paper's slice-level segmentation split instead (slices of one
patient end up on both sides: flagged ``"leaky": true``; the lists then hold image paths).

``splits.json`` format: ARCHITECTURE.md. The manifest ``split`` column gets the classification
split of each patient.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from sklearn.model_selection import train_test_split

from lungcad.errors import LungcadError
from lungcad.ingest.harmonize import write_text_atomic
from lungcad.ingest.manifest import OUTLINE_MASK_SOURCES, read_manifest, write_manifest

SPLITS_NAME = "splits.json"
PARTS = ("train", "val", "test")
TASKS = ("classification", "segmentation")
TEST_FRACTION = 0.2
VAL_FRACTION = 0.2


def _two_way(ids: list[str], labels: list[int], fraction: float, seed: int, what: str,
             notes: list[str]) -> tuple[list[str], list[str]]:
    """Split ``ids`` into (rest, held_out) with ``fraction`` held out, stratified by label when
    every class has at least two members and the held-out part can hold every class."""
    if len(ids) < 2:
        notes.append(f"{what}: only {len(ids)} item(s); nothing held out")
        return list(ids), []
    counts = Counter(labels)
    n_held = max(1, int(round(fraction * len(ids))))
    stratify = labels
    if len(counts) < 2 or min(counts.values()) < 2 or n_held < len(counts) or len(ids) - n_held < len(counts):
        stratify = None
        if len(counts) > 1:
            notes.append(f"{what}: a class is too small to stratify ({dict(sorted(counts.items()))}); split unstratified")
    rest, held = train_test_split(ids, test_size=n_held, random_state=seed, shuffle=True, stratify=stratify)
    return sorted(rest), sorted(held)


def _partition(ids: list[str], labels: dict[str, int], seed: int, what: str, notes: list[str]) -> dict:
    ids = sorted(ids)
    rest, test = _two_way(ids, [labels[i] for i in ids], TEST_FRACTION, seed, f"{what} test", notes)
    train, val = _two_way(rest, [labels[i] for i in rest], VAL_FRACTION, seed, f"{what} val", notes)
    return {"train": train, "val": val, "test": test}


def _fill_segmentation_val(segmentation: dict, seed: int, notes: list[str]) -> None:
    """Give the segmenter a validation set when no classification-val patient has a voxel mask.

    Small benchmarks can draw only box- or unannotated patients into classification val. Then some
    segmentation train patients validate the segmenter instead: they stay classification *train*
    patients, so no test patient of one task trains the other (the rule that matters); test is
    never borrowed from.
    """
    train = segmentation["train"]
    if segmentation["val"] or len(train) < 2:
        return
    n_val = max(1, int(round(VAL_FRACTION * len(train))))
    rest, val = train_test_split(train, test_size=n_val, random_state=seed, shuffle=True)
    segmentation["train"], segmentation["val"] = sorted(rest), sorted(val)
    notes.append(f"segmentation val: no classification-val patient has a voxel mask; {n_val} "
                 "segmentation train patient(s) (classification train) validate the segmenter instead")


def make_splits(bench: str | Path, seed: int = 42, unit: str = "patient") -> dict:
    """Split the benchmark ``bench``; writes ``splits.json`` and fills the manifest ``split``
    column atomically. Returns the splits dict."""
    if unit not in ("patient", "slice"):
        raise LungcadError(f"unit must be 'patient' or 'slice', got {unit!r}")
    bench = Path(bench)
    rows = read_manifest(bench)
    labels: dict[str, int] = {}
    with_masks: set[str] = set()
    for row in rows:
        if row["label"] in ("0", "1"):
            labels[row["patient_id"]] = int(row["label"])
        if row["mask_source"] in OUTLINE_MASK_SOURCES and row["mask_path"]:
            with_masks.add(row["patient_id"])
    if not labels:
        raise LungcadError(f"{bench / 'manifest.csv'}: no labelled patient to split")
    notes: list[str] = []
    classification = _partition(list(labels), labels, seed, "classification", notes)
    if unit == "patient":
        segmentation = {part: [p for p in classification[part] if p in with_masks] for part in PARTS}
        _fill_segmentation_val(segmentation, seed, notes)
    else:
        slices = sorted(r["image_path"] for r in rows if r["patient_id"] in with_masks and r["mask_path"])
        slice_label = {r["image_path"]: int(r["label"]) for r in rows if r["label"] in ("0", "1")}
        segmentation = _partition(slices, slice_label, seed, "segmentation (slice)", notes)
    splits = {"seed": int(seed), "unit": unit, "leaky": unit == "slice",
              "classification": classification, "segmentation": segmentation,
              "counts": {task: {part: len(ids[part]) for part in PARTS}
                         for task, ids in (("classification", classification), ("segmentation", segmentation))},
              "notes": notes}
    check_splits(splits, bench / SPLITS_NAME)
    write_text_atomic(bench / SPLITS_NAME, json.dumps(splits, indent=1, sort_keys=True) + "\n")
    split_of = patient_split_map(splits)
    for row in rows:
        row["split"] = split_of.get(row["patient_id"], "")
    write_manifest(bench, rows)
    return splits


def check_splits(splits: dict, where: str | Path = SPLITS_NAME) -> None:
    """Raise LungcadError when the structure is wrong or an item is in two parts of one task."""
    if not isinstance(splits, dict):
        raise LungcadError(f"{where}: not a splits object")
    for task in TASKS:
        parts = splits.get(task)
        if not isinstance(parts, dict) or any(not isinstance(parts.get(p), list) for p in PARTS):
            raise LungcadError(f"{where}: '{task}' must hold train, val and test lists")
        seen: dict[str, str] = {}
        for part in PARTS:
            for item in parts[part]:
                if item in seen:
                    raise LungcadError(f"{where}: {item} is in both '{seen[item]}' and '{part}' of {task}")
                seen[item] = part


def load_splits(bench: str | Path) -> dict:
    """Read and verify ``BENCH/splits.json`` (no patient in two splits of a task)."""
    path = Path(bench) / SPLITS_NAME
    if not path.is_file():
        raise LungcadError(f"{path}: no splits (run `lungcad split {bench}` first)")
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise LungcadError(f"{path}: not valid JSON ({exc})") from None
    check_splits(splits, path)
    return splits


def patient_split_map(splits: dict) -> dict[str, str]:
    """patient_id -> classification split name."""
    return {pid: part for part in PARTS for pid in splits["classification"][part]}
