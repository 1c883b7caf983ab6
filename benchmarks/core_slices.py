"""Do the predicted-mask slices a classifier reads show the patient's nodule?

    python benchmarks/core_slices.py SEGRUN [--split val,test] [--min-area-frac 0.5] [--out FILE]

On predicted masks, ``lungcad evaluate`` scores a patient by the mean over its *core slices*: the
slices whose predicted mask covers at least ``min_area_frac`` of the patient's largest (the `cpu`
preset: 0.5), and the seven-channel features centre each slice on its largest 8-connected
component (``lungcad.features``). A false positive (a vessel cross-section, a junction) that is
larger than the nodule therefore becomes what the classifier looks at. For the patients of
``--split`` with reference outlines, this script reads the segmentation run's stored predicted
masks (``SEGRUN/predicted_masks``, out of fold where its model saw the patient) and counts the core
slices whose largest component touches the reference mask, and the patients with none.

Results are printed and saved as JSON (default ``benchmarks/results/core_slices_<segrun>.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from lungcad.config import read_yaml
from lungcad.data import core_slices, predicted_mask_path, read_manifest, read_png
from lungcad.features import largest_component
from lungcad.ingest.manifest import OUTLINE_MASK_SOURCES

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script, also when a test imports this one
from synth_ceiling import RESULTS, write_result  # noqa: E402


def slice_table(bench: Path, pred_dir: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """One row per slice with a predicted nodule: its area and whether its largest component
    touches the reference mask."""
    records = []
    for _, row in rows.iterrows():
        predicted = read_png(predicted_mask_path(pred_dir, row["image_path"])) > 0
        if not predicted.any():
            continue
        reference = read_png(bench / row["mask_path"]) > 0 if row["mask_path"] else np.zeros_like(predicted)
        labels, label = largest_component(predicted)  # the component the features centre on
        records.append({"patient_id": row["patient_id"], "label": int(row["label"]), "dataset": row["dataset"],
                        "area_px": int(predicted.sum()),
                        "on_nodule": bool(((labels == label) & reference).any())})
    return pd.DataFrame.from_records(records, columns=["patient_id", "label", "dataset", "area_px", "on_nodule"])


def summarise(slices: pd.DataFrame, min_area_frac: float) -> dict:
    """Core slices on the nodule, overall, per label and per patient."""
    core = slices[core_slices(slices["patient_id"], slices["area_px"], min_area_frac)]
    per_patient = core.groupby("patient_id").agg(share=("on_nodule", "mean"), label=("label", "first"))
    return {"patients": int(len(per_patient)), "core_slices": int(len(core)),
            "share_on_nodule": float(core["on_nodule"].mean()) if len(core) else float("nan"),
            "patients_with_none_on_nodule": int((per_patient["share"] == 0).sum()),
            "share_on_nodule_by_label": {str(k): float(v) for k, v in core.groupby("label")["on_nodule"].mean().items()},
            "patients_by_label": {str(k): int(len(g)) for k, g in per_patient.groupby("label")},
            "patients_with_none_by_label": {str(k): int((g["share"] == 0).sum())
                                            for k, g in per_patient.groupby("label")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seg_run", type=Path)
    ap.add_argument("--bench", type=Path, default=None, help="default: the run's config.yaml")
    ap.add_argument("--split", default="val,test")
    ap.add_argument("--min-area-frac", type=float, default=0.5, help="the classifier's (cpu preset: 0.5)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    bench = a.bench or Path(read_yaml(a.seg_run / "config.yaml")["bench"])
    splits = json.loads((a.seg_run / "splits.json").read_text())["classification"]
    patients = {p for name in a.split.split(",") for p in splits[name.strip()]}
    manifest = read_manifest(bench)
    rows = manifest[manifest["patient_id"].isin(patients) & manifest["label"].notna()
                    & manifest["mask_source"].isin(OUTLINE_MASK_SOURCES)]
    result = {"seg_run": str(a.seg_run), "bench": str(bench), "split": a.split, "min_area_frac": a.min_area_frac,
              **summarise(slice_table(bench, a.seg_run / "predicted_masks", rows), a.min_area_frac)}
    print(f"{a.seg_run} ({a.split}): {result['patients']} patients with outlines and a predicted nodule, "
          f"{result['core_slices']} core slices; largest component on the nodule in "
          f"{result['share_on_nodule']:.1%} (by label {result['share_on_nodule_by_label']}); "
          f"patients with no core slice on their nodule: {result['patients_with_none_on_nodule']} "
          f"(by label {result['patients_with_none_by_label']} of {result['patients_by_label']})")
    write_result(result, a.out or RESULTS / f"core_slices_{a.seg_run.name}.json")


if __name__ == "__main__":
    main()
