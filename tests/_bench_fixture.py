"""A tiny benchmark folder for training tests (DESIGN.md section 3), built without synth/ingest.

Each patient has one series of ``slices`` square slices of ``size`` pixels: a noisy dark lung field
with a bright disc (the nodule) on the middle slices. Malignant patients get a larger, brighter disc
so that a classifier can learn the label. ``masked_patients`` patients have ground-truth masks
(``mask_source=gt``); the others have none (``mask_source=none``), like LungCT-Diagnosis.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lungcad.ingest.manifest import write_manifest
from lungcad.splits import make_splits

DATASET = "lidc-idri"


def disc(size: int, center: tuple[int, int], radius: float) -> np.ndarray:
    """Boolean disc of ``radius`` pixels around ``center`` (row, col)."""
    yy, xx = np.mgrid[:size, :size]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def build_bench(root: Path, patients: int = 12, slices: int = 5, size: int = 64,
                masked_patients: int | None = None, seed: int = 0) -> Path:
    """Write a benchmark under ``root`` (manifest.csv, images/, masks/, splits.json); returns it."""
    rng = np.random.default_rng(seed)
    bench = Path(root)
    masked_patients = patients if masked_patients is None else masked_patients
    rows = []
    for p in range(patients):
        name = f"P{p:03d}"
        patient_id = f"{DATASET}/{name}"
        label = p % 2
        series = f"1.2.3.{p}"
        has_masks = p < masked_patients
        center = (int(rng.integers(size // 4, 3 * size // 4)), int(rng.integers(size // 4, 3 * size // 4)))
        for k in range(slices):
            nodule_here = 0 < k < slices - 1
            radius = (size / 8 if label else size / 14) * (1.0 if k == slices // 2 else 0.75)
            mask = disc(size, center, radius) if nodule_here else np.zeros((size, size), bool)
            image = rng.normal(40, 8, (size, size))
            image[mask] = 200 + 30 * label + rng.normal(0, 5, int(mask.sum()))
            image_rel = f"images/{DATASET}/{name}/{series}_{k:04d}.png"
            (bench / image_rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(bench / image_rel), np.clip(image, 0, 255).astype(np.uint8))
            mask_rel = ""
            if has_masks:
                mask_rel = f"masks/{DATASET}/{name}/{series}_{k:04d}.png"
                (bench / mask_rel).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(bench / mask_rel), mask.astype(np.uint8) * 255)
            rows.append({
                "image_path": image_rel, "mask_path": mask_rel, "patient_id": patient_id,
                "label": label, "dataset": DATASET, "series_uid": series, "slice_index": k,
                "z_mm": float(k), "spacing_row_mm": 0.7, "spacing_col_mm": 0.7,
                "slice_thickness_mm": 1.0, "mask_source": "gt" if has_masks else "none",
                "nodule_area_px": int(mask.sum()) if has_masks else "", "split": "",
                "nodule_label": "",
            })
    write_manifest(bench, rows)
    make_splits(bench, seed=42)
    return bench
