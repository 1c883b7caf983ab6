"""manifest.csv: one row per slice of the benchmark (DESIGN.md section 3), read and written
deterministically (fixed column order, sorted rows, '\\n' line ends, atomic replace)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from lungcad.errors import LungcadError
from lungcad.ingest.harmonize import write_text_atomic

MANIFEST_NAME = "manifest.csv"
#: The contract columns, in order, then our extras.
CONTRACT_COLUMNS = ("image_path", "mask_path", "patient_id", "label", "dataset", "series_uid",
                    "slice_index", "z_mm", "spacing_row_mm", "spacing_col_mm", "slice_thickness_mm",
                    "mask_source", "nodule_area_px", "split")
EXTRA_COLUMNS = ("nodule_label",)
COLUMNS = CONTRACT_COLUMNS + EXTRA_COLUMNS

#: Slices whose mask gives the nodule's size: the diameter baseline.
MASKED_SOURCES = ("gt", "box")
#: Slices whose mask outlines the nodule: the only ground-truth masks for segmentation (training,
#: Dice) and for classification (phase 1, evaluation on reference masks). A filled bounding box
#: (Lung-PET-CT-Dx) says where a tumour is, not its outline: a segmenter trained on it learns
#: rectangles, a Dice against it measures the rectangle, and a classifier shown rectangles from one
#: all-malignant cohort learns "rectangle = cancer", a cue no predicted mask carries. The paper's
#: segmentation set is voxel masks only (LUNA16 and MSD, section 3.2.3).
OUTLINE_MASK_SOURCES = ("gt",)


def format_float(value: float, decimals: int = 4) -> str:
    """A float as a short, stable string: rounded to ``decimals``, no exponent, no trailing zeros."""
    value = round(float(value), decimals)
    if value == 0:
        value = 0.0  # no '-0'
    return np.format_float_positional(value, trim="-")


def row_sort_key(row: dict) -> tuple:
    return (row["patient_id"], row["series_uid"], int(row["slice_index"]))


def manifest_text(rows: list[dict]) -> str:
    """The CSV text of ``rows`` (dicts keyed by column; missing columns written empty), sorted by
    patient, series and slice index."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in sorted(rows, key=row_sort_key):
        writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in COLUMNS})
    return buffer.getvalue()


def write_manifest(bench: Path, rows: list[dict]) -> Path:
    """Write ``BENCH/manifest.csv`` atomically; returns its path."""
    path = Path(bench) / MANIFEST_NAME
    write_text_atomic(path, manifest_text(rows))
    return path


def read_manifest(bench: Path) -> list[dict]:
    """The manifest rows as dicts of strings. Raises LungcadError when missing or malformed."""
    path = Path(bench) / MANIFEST_NAME
    if not path.is_file():
        raise LungcadError(f"{path}: no manifest (run `lungcad ingest --out {bench}` first)")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in CONTRACT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise LungcadError(f"{path}: not a lungcad manifest (missing column '{missing[0]}')")
        return list(reader)
