"""MSD Task06_Lung adapter: ``dataset.json`` + NIfTI images and tumour labels.

Every case is a lung-cancer patient (label 1). Training cases (``imagesTr`` + ``labelsTr``) get the
tumour mask ``label > 0`` (``mask_source='gt'``); test cases (``imagesTs``) have no label map
(``mask_source='none'``) but are still cancer patients. Geometry comes from the NIfTI affine
through ``lungcad.io.read_volume`` (so non-identity affines are honoured); an image and its label
must share one grid (size, spacing, origin, direction), otherwise the case is skipped.
Patient id = case name (``lung_001``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungcad.errors import InputError
from lungcad.ingest.base import Adapter, LoadedSeries, SeriesTask, Skip
from lungcad.ingest.luna16 import load_volume, slice_labels
from lungcad.io import Volume, volume_from_sitk

SOURCE = "msd-lung"
TASK_FOLDER = "Task06_Lung"
# Grid agreement tolerances: spacing relative, origin as a fraction of the smallest voxel side,
# direction absolute.
SPACING_RTOL = 1e-4
ORIGIN_TOL_VOXELS = 1e-2
DIRECTION_ATOL = 1e-4


def case_name(path: str) -> str:
    """``./imagesTr/lung_001.nii.gz`` -> ``lung_001``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_label_map(path: Path) -> Volume:
    """A label image (NIfTI or MetaImage) in its stored integer type, not widened to float32 like
    CT volumes: a reader mask of a 512x512x300 CT stays at 75 MB. ``InputError`` if unreadable."""
    if not Path(path).is_file():
        raise InputError(f"{path}: file not found")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "rror" in ln or "annot" in ln), lines[-1] if lines else "")
        raise InputError(f"{path}: unreadable label image ({detail[:160]})") from None
    return volume_from_sitk(image, {"source": str(path)})


def grid_mismatch(image: Volume, label: Volume) -> str | None:
    """Why ``label`` is not on ``image``'s grid, or ``None`` when they agree."""
    if image.array.shape != label.array.shape:
        return f"size {image.array.shape[::-1]} vs label {label.array.shape[::-1]} (x, y, z)"
    spacing = np.asarray(image.spacing, float)
    if not np.allclose(spacing, label.spacing, rtol=SPACING_RTOL, atol=0):
        return f"spacing {tuple(image.spacing)} vs label {tuple(label.spacing)}"
    if np.any(np.abs(np.subtract(image.origin, label.origin)) > ORIGIN_TOL_VOXELS * spacing.min()):
        return f"origin {tuple(image.origin)} vs label {tuple(label.origin)}"
    if not np.allclose(image.direction, label.direction, atol=DIRECTION_ATOL, rtol=0):
        return f"direction {tuple(image.direction)} vs label {tuple(label.direction)}"
    return None


def find_task_folder(root: Path) -> Path:
    """The folder holding ``dataset.json``: ``root`` itself or ``root/Task06_Lung``."""
    for folder in (root, root / TASK_FOLDER):
        if (folder / "dataset.json").is_file():
            return folder
    raise InputError(f"{root}: no dataset.json (looked in {root} and {root / TASK_FOLDER})")


class MsdLungAdapter(Adapter):
    """``lungcad ingest --source msd-lung=DIR``: MSD Task06_Lung, all patients malignant."""

    name = SOURCE

    def discover(self, root: Path, opts) -> tuple[list[SeriesTask], list[Skip]]:
        task_dir = find_task_folder(Path(root))
        spec_path = task_dir / "dataset.json"
        try:
            spec = json.loads(spec_path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{spec_path}: unreadable dataset.json ({exc})") from exc
        if not isinstance(spec, dict) or "training" not in spec:
            raise InputError(f"{spec_path}: missing required key 'training'")

        cases: list[tuple[str, str | None]] = []
        for entry in spec.get("training") or []:
            if not isinstance(entry, dict) or "image" not in entry:
                raise InputError(f"{spec_path}: a 'training' entry has no 'image' key: {entry!r}")
            cases.append((entry["image"], entry.get("label")))
        for entry in spec.get("test") or []:
            # MSD writes test cases as plain strings; tolerate {"image": ...} too.
            cases.append((entry["image"] if isinstance(entry, dict) else entry, None))

        tasks, skips = [], []
        for image_rel, label_rel in cases:
            name = case_name(image_rel)
            if name.startswith("._"):
                continue  # macOS AppleDouble junk, not a case
            image = task_dir / image_rel
            label = task_dir / label_rel if label_rel else None
            missing = [p for p in (image, label) if p is not None and not p.is_file()]
            if missing:
                skips.append(Skip(SOURCE, image_rel, f"file not found: {missing[0]}"))
                continue
            tasks.append(SeriesTask(SOURCE, name, name, {
                "image": str(image), "label": str(label) if label else None}))
        return tasks, skips

    def load(self, task: SeriesTask, opts) -> LoadedSeries:
        volume = load_volume(Path(task.payload["image"]))
        label_path = task.payload.get("label")
        if not label_path:
            return LoadedSeries(volume=volume, mask=None, mask_source="none", patient_label=1,
                                nodule_label=None, notes=["test case: no label map"])
        label = load_label_map(Path(label_path))
        problem = grid_mismatch(volume, label)
        if problem:
            raise InputError(f"{label_path}: label grid differs from its image: {problem}")
        mask = np.asarray(label.array) > 0
        assert mask.shape == volume.array.shape, "mask and volume must share one grid"
        tumour_slices = np.nonzero(mask.any(axis=(1, 2)))[0]
        notes = [] if len(tumour_slices) else ["label map is empty"]
        return LoadedSeries(volume=volume, mask=mask, mask_source="gt", patient_label=1,
                            nodule_label=slice_labels(mask.shape[0], [(tumour_slices, 1)]),
                            notes=notes)
