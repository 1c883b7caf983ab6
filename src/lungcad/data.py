"""Datasets over a benchmark folder (DESIGN.md section 3) for both training tasks.

Segmentation
    ``segmentation_items(bench, patients, negatives)`` picks the slices of series that have voxel
    masks (``mask_source`` gt; boxes are no outline, see ``OUTLINE_MASK_SOURCES``): every slice with a nodule plus ``negatives`` nodule-free slices per
    nodule slice, drawn at random (fixed seed) from the same series. ``negatives=0`` keeps annotated
    slices only, as the paper's 7,061 annotated slices.
    ``SegmentationDataset`` yields ``(image (C,S,S) float in [0,1], mask (1,S,S) float {0,1})``; slices
    are resized to ``image_size`` exactly as ``lungcad.inference.SliceSegmenter`` resizes them
    (bilinear on the float image), masks with nearest neighbour. ``C = 2 k + 1`` with
    ``context_slices = k`` (2.5D input): the slice and its ``k`` neighbours on each side in the
    series' slice order, clamped at the series ends (``neighbour_indices``), exactly as the inferer
    stacks a volume.

Classification
    ``classification_items(bench, patients, mask_source, pred_mask_dir)`` picks the slices whose mask
    (ground truth: voxel outlines only, box-annotated patients have none; or predicted under ``pred_mask_dir/<dataset>/<patient>/<series>_<index>.png``)
    is not empty, with the patient label. A patient whose predicted masks are all empty has nothing
    for the classifier to look at: it is left out, and listed in ``items.attrs["dropped_patients"]``.
    ``ClassificationDataset`` yields ``(features (7 or 8,S,S) float, label float)``; the augmentation runs on
    the slice and its mask *before* the seven channels are computed, so all channels stay consistent.

Dataset keys: an integer index, or ``(index, seed)`` from the training samplers of
``lungcad.train.engine``; the seed fixes that sample's augmentation.
Decoded PNGs are kept in a small in-memory LRU cache (CPU time is the scarce resource here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .augment import apply
from .errors import LungcadError
from .ingest.manifest import OUTLINE_MASK_SOURCES

MANIFEST_COLUMNS = (
    "image_path", "mask_path", "patient_id", "label", "dataset", "series_uid", "slice_index",
    "z_mm", "spacing_row_mm", "spacing_col_mm", "slice_thickness_mm", "mask_source",
    "nodule_area_px", "split",
)
PNG_CACHE_SIZE = 1024  # decoded slices kept per process (256 x 256 uint8: 64 kB each)


# --------------------------------------------------------------------------- manifest and PNGs


def read_manifest(bench: str | Path) -> pd.DataFrame:
    """Read ``BENCH/manifest.csv`` and check its contract columns.

    Raises ``LungcadError`` naming the file when it is missing, unreadable, lacks a column or lists
    a slice twice.
    """
    path = Path(bench) / "manifest.csv"
    if not path.is_file():
        raise LungcadError(f"{path}: no manifest; run `lungcad ingest` to build the benchmark")
    try:
        frame = pd.read_csv(path, dtype={"patient_id": str, "series_uid": str, "image_path": str,
                                         "mask_path": str, "dataset": str, "mask_source": str,
                                         "split": str}, keep_default_na=False, na_values={
            "label": [""], "nodule_area_px": [""], "slice_index": [""]})
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise LungcadError(f"{path}: unreadable CSV ({exc})") from exc
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise LungcadError(f"{path}: missing column {missing[0]!r} (expected {', '.join(MANIFEST_COLUMNS)})")
    # Per-slice tables (predicted masks' areas.csv) are keyed on image_path. Ingests before the
    # "series listed twice" fix could write a series twice; the same slice twice would weigh its
    # patient double in training and break those lookups.
    repeated = frame["image_path"].duplicated()
    if repeated.any():
        first = frame.loc[repeated, "image_path"].iloc[0]
        raise LungcadError(f"{path}: {int(repeated.sum())} rows repeat a slice listed before (first: {first}); "
                           "run `lungcad ingest` again (a series a source lists twice is ingested once) "
                           "or drop the repeated rows")
    frame["nodule_area_px"] = pd.to_numeric(frame["nodule_area_px"], errors="coerce").fillna(0).astype(int)
    frame["slice_index"] = pd.to_numeric(frame["slice_index"], errors="coerce").fillna(-1).astype(int)
    return frame


@lru_cache(maxsize=PNG_CACHE_SIZE)
def _read_png_cached(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise LungcadError(f"{path}: missing or unreadable PNG")
    if image.ndim == 3:  # a colour PNG: keep one channel (all channels are equal for our slices)
        image = image[..., 0]
    if image.dtype != np.uint8:
        raise LungcadError(f"{path}: expected an 8-bit PNG, got {image.dtype}")
    image.setflags(write=False)  # shared through the cache: nobody may modify it
    return image


def read_png(path: str | Path) -> np.ndarray:
    """A uint8 (H, W) PNG (cached, read-only: copy before modifying)."""
    return _read_png_cached(str(path))


def _mask_or_empty(path: str | Path | None, shape: tuple[int, int]) -> np.ndarray:
    if path is None or str(path) in ("", "nan"):
        return np.zeros(shape, np.uint8)
    mask = read_png(path)
    if mask.shape != shape:
        raise LungcadError(f"{path}: mask shape {mask.shape} differs from its image {shape}")
    return mask


def neighbour_indices(n: int, k: int, indices=None) -> np.ndarray:
    """Stack positions of the 2.5D input of each slice: ``(len(indices), 2k + 1)``, clamped to ``[0, n)``.

    Row ``i`` is ``[j - k, ..., j, ..., j + k]`` for ``j = indices[i]`` (all slices by default); the
    centre column is the slice itself. Clamping repeats the first/last slice at the series ends.
    """
    positions = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
    return np.clip(positions[:, None] + np.arange(-k, k + 1)[None, :], 0, max(n - 1, 0))


def _key(key) -> tuple[int, int | None]:
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return int(key), None


# --------------------------------------------------------------------------- segmentation


def segmentation_items(
    bench: str | Path, patients: Iterable[str], negatives: float = 0.25, seed: int = 42
) -> pd.DataFrame:
    """Slices of ``patients`` with masks: nodule slices + ``negatives`` nodule-free ones per nodule slice.

    Nodule-free slices come from the same series as the nodule slices (a random draw with ``seed``);
    a series without any nodule slice contributes none.
    """
    manifest = read_manifest(bench)
    wanted = set(patients)
    rows = manifest[manifest["patient_id"].isin(wanted) & manifest["mask_source"].isin(OUTLINE_MASK_SOURCES)]
    positive = rows[rows["nodule_area_px"] > 0]
    picked = [positive]
    if negatives > 0:
        rng = np.random.default_rng(seed)
        empty = rows[rows["nodule_area_px"] <= 0]
        for series_uid, count in positive.groupby("series_uid").size().items():
            pool = empty[empty["series_uid"] == series_uid]
            take = min(len(pool), int(round(count * negatives)))
            if take:
                picked.append(pool.iloc[np.sort(rng.choice(len(pool), size=take, replace=False))])
    items = pd.concat(picked).sort_values(["patient_id", "series_uid", "slice_index"], kind="stable")
    return items.reset_index(drop=True)


def resize_image(image_u8: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W) -> float32 (size, size) in [0, 1], bilinear as ``lungcad.inference``."""
    x = torch.from_numpy(np.ascontiguousarray(image_u8, dtype=np.float32))[None, None] / 255.0
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x[0, 0].numpy()


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A binary mask resized with nearest neighbour: uint8 {0, 1} (size, size)."""
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    if binary.shape != (size, size):
        binary = cv2.resize(binary, (size, size), interpolation=cv2.INTER_NEAREST)
    return binary


class SegmentationDataset(Dataset):
    """``(image (1,S,S) float in [0,1], mask (1,S,S) float)`` for each row of ``items``.

    ``S`` is ``image_size``, or the transform's output size when it crops.
    """

    def __init__(self, items: pd.DataFrame, bench: str | Path, image_size: int = 256,
                 transform=None, context_slices: int = 0):
        self.items = items.reset_index(drop=True)
        self.bench = Path(bench)
        self.image_size = int(image_size)
        self.transform = transform
        self.context_slices = int(context_slices)
        self._series: dict[str, list[str]] = {}
        self._position: dict[str, int] = {}
        if self.context_slices > 0:
            self._index_series()

    def _index_series(self) -> None:
        """Every slice of the items' series in slice order (neighbours need not be items themselves)."""
        manifest = read_manifest(self.bench)
        wanted = set(self.items["series_uid"])
        rows = manifest[manifest["series_uid"].isin(wanted)].sort_values(["series_uid", "slice_index"], kind="stable")
        for series_uid, group in rows.groupby("series_uid", sort=False):
            paths = group["image_path"].tolist()
            self._series[series_uid] = paths
            self._position.update({path: i for i, path in enumerate(paths)})

    def _stack_paths(self, row) -> list[str]:
        paths = self._series[row["series_uid"]]
        centre = self._position[row["image_path"]]
        return [paths[i] for i in neighbour_indices(len(paths), self.context_slices, [centre])[0]]

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The resized slice (float32 (S, S), or (S, S, C) with context slices) and mask (uint8 {0,1})
        of row ``index``, before augmentation."""
        row = self.items.iloc[index]
        image = read_png(self.bench / row["image_path"])
        mask_path = self.bench / row["mask_path"] if row["mask_path"] else None
        mask = _mask_or_empty(mask_path, image.shape)
        if self.context_slices == 0:
            return resize_image(image, self.image_size), resize_mask(mask, self.image_size)
        channels = []
        for path in self._stack_paths(row):
            neighbour = read_png(self.bench / path)
            if neighbour.shape != image.shape:
                raise LungcadError(f"{self.bench / path}: slice shape {neighbour.shape} differs from its "
                                   f"series neighbour {row['image_path']} {image.shape}")
            channels.append(resize_image(neighbour, self.image_size))
        return np.stack(channels, axis=-1), resize_mask(mask, self.image_size)

    def __getitem__(self, key):
        index, seed = _key(key)
        image, mask = self.load(index)
        image, mask = apply(self.transform, image, mask, seed)
        image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        image = image.permute(2, 0, 1).contiguous() if image.ndim == 3 else image[None]
        mask = torch.from_numpy(np.ascontiguousarray(mask > 0, dtype=np.float32))[None]
        return image.clamp_(0.0, 1.0), mask


# --------------------------------------------------------------------------- classification


def predicted_mask_path(pred_mask_dir: str | Path, image_path: str) -> Path:
    """``images/<dataset>/<patient>/<name>.png`` -> ``PRED/<dataset>/<patient>/<name>.png``."""
    relative = Path(image_path)
    if relative.parts and relative.parts[0] == "images":
        relative = Path(*relative.parts[1:])
    return Path(pred_mask_dir) / relative


def predicted_areas(pred_mask_dir: str | Path, rows: pd.DataFrame) -> np.ndarray:
    """Foreground pixel count of the predicted mask of each row (``areas.csv`` if present)."""
    pred_mask_dir = Path(pred_mask_dir)
    table = pred_mask_dir / "areas.csv"
    if table.is_file():
        areas = pd.read_csv(table, dtype={"image_path": str}).set_index("image_path")["area_px"]
        # A run made on a benchmark that listed a slice twice (before ingest's fix) repeats its row.
        areas = areas[~areas.index.duplicated()]
        found = rows["image_path"].map(areas)
        if not found.isna().any():
            return found.to_numpy(dtype=np.int64)
    out = np.zeros(len(rows), np.int64)
    for i, image_path in enumerate(rows["image_path"]):
        path = predicted_mask_path(pred_mask_dir, image_path)
        if not path.is_file():
            raise LungcadError(f"{path}: predicted mask missing (expected one per benchmark slice)")
        out[i] = int(np.count_nonzero(read_png(path)))
    return out


def core_slices(groups, area_px, min_area_frac: float) -> np.ndarray:
    """Boolean keep-mask: slices whose mask area is at least ``min_area_frac`` of the largest in their
    group (patient or nodule). Drops the end slices of a nodule and small blobs beside a large one;
    0 keeps every slice."""
    area = pd.Series(np.asarray(area_px, np.float64), index=pd.RangeIndex(len(area_px)))
    if not min_area_frac or area.empty:
        return np.ones(len(area), bool)
    if not 0.0 <= float(min_area_frac) <= 1.0:
        raise LungcadError(f"min_area_frac must lie in [0, 1], got {min_area_frac}")
    largest = area.groupby(np.asarray(groups)).transform("max")
    return (area >= float(min_area_frac) * largest).to_numpy()


def classification_items(
    bench: str | Path,
    patients: Iterable[str],
    mask_source: str = "gt",
    pred_mask_dir: str | Path | None = None,
    max_slices_per_patient: int | None = None,
    seed: int = 42,
    min_area_frac: float = 0.0,
) -> pd.DataFrame:
    """Slices of ``patients`` whose nodule mask is not empty, with the patient label.

    Columns: the manifest's, plus ``mask_file`` (absolute path of the mask used) and ``area_px``.
    ``min_area_frac`` keeps only the slices whose mask covers at least that fraction of the patient's
    largest mask (:func:`core_slices`; 0 keeps every slice, as the paper). ``max_slices_per_patient``
    then keeps a random subset (fixed ``seed``) of each patient's slices.
    With predicted masks, patients on whom the segmenter found nothing are listed in
    ``items.attrs["dropped_patients"]`` and their labels in ``items.attrs["dropped_labels"]``.
    """
    if mask_source not in ("gt", "predicted"):
        raise LungcadError(f"mask_source must be 'gt' or 'predicted', got {mask_source!r}")
    bench = Path(bench)
    manifest = read_manifest(bench)
    rows = manifest[manifest["patient_id"].isin(set(patients))].copy()
    rows = rows[rows["label"].notna()]
    if mask_source == "gt":
        rows = rows[rows["mask_source"].isin(OUTLINE_MASK_SOURCES) & (rows["nodule_area_px"] > 0)].copy()
        rows["mask_file"] = [str(bench / p) for p in rows["mask_path"]]
        rows["area_px"] = rows["nodule_area_px"]
        dropped_labels: dict[str, int] = {}
    else:
        if pred_mask_dir is None:
            raise LungcadError("classification on predicted masks needs pred_mask_dir (a segmentation run's predicted_masks)")
        rows["area_px"] = predicted_areas(pred_mask_dir, rows)
        rows["mask_file"] = [str(predicted_mask_path(pred_mask_dir, p)) for p in rows["image_path"]]
        labels = rows.groupby("patient_id")["label"].max()
        rows = rows[rows["area_px"] > 0].copy()
        dropped_labels = {p: int(labels[p]) for p in sorted(set(labels.index) - set(rows["patient_id"]))}
    rows = rows[core_slices(rows["patient_id"], rows["area_px"], min_area_frac)]
    if max_slices_per_patient:
        rng = np.random.default_rng(seed)
        keep = []
        for _, group in rows.groupby("patient_id", sort=True):
            if len(group) > max_slices_per_patient:
                group = group.iloc[np.sort(rng.choice(len(group), max_slices_per_patient, replace=False))]
            keep.append(group)
        rows = pd.concat(keep) if keep else rows.iloc[:0]
    rows["label"] = rows["label"].astype(int)
    items = rows.sort_values(["patient_id", "series_uid", "slice_index"], kind="stable").reset_index(drop=True)
    items.attrs["dropped_labels"] = dropped_labels  # predicted masks: labels of patients with no nodule found
    items.attrs["dropped_patients"] = sorted(dropped_labels)
    return items


class ClassificationDataset(Dataset):
    """``(features (C,S,S) float32, label float)`` for each row of ``items`` (S = ``input_size``).

    ``C`` is 7, or 8 with ``size_input``: the ``nodule_size`` plane measured with the row's pixel
    spacing (``spacing_row_mm``, ``spacing_col_mm``) on the mask the features see.

    ``transform``: an albumentations pipeline, or a callable ``(height, width) -> pipeline`` for
    pipelines that need the slice size (``paper_augmentation``); applied to the native-size slice and
    its mask before ``lungcad.features.classifier_input``.
    """

    def __init__(self, items: pd.DataFrame, bench: str | Path, input_size: int = 224, crop: int = 64,
                 transform: Callable | None = None, size_input: bool = False):
        self.items = items.reset_index(drop=True)
        self.size_input = bool(size_input)
        self.bench = Path(bench)
        self.input_size = int(input_size)
        self.crop = int(crop)
        self.transform = transform
        self._pipelines: dict[tuple[int, int], object] = {}
        self.labels = self.items["label"].to_numpy(dtype=np.float32)

    def __len__(self) -> int:
        return len(self.items)

    def _pipeline(self, shape: tuple[int, int]):
        if self.transform is None or hasattr(self.transform, "transforms"):
            return self.transform
        if shape not in self._pipelines:
            self._pipelines[shape] = self.transform(shape)
        return self._pipelines[shape]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The native slice (uint8) and its mask (uint8 {0,1}) of row ``index``."""
        row = self.items.iloc[index]
        image = read_png(self.bench / row["image_path"])
        mask = _mask_or_empty(row["mask_file"], image.shape)
        return image, (mask > 0).astype(np.uint8)

    def size_values(self) -> np.ndarray:
        """The ``nodule_size`` value of each row's own mask, unaugmented (0 for a row without a mask).

        What ``lungcad train-cls`` fits the fusion models' size prior on; reads the masks only.
        """
        from .features import equivalent_diameter_mm, nodule_geometry, size_value

        values = np.zeros(len(self.items), np.float64)
        for index, row in enumerate(self.items.itertuples(index=False)):
            path = row.mask_file
            if path is None or str(path) in ("", "nan"):
                continue
            area = nodule_geometry(read_png(path)).area_px
            values[index] = size_value(equivalent_diameter_mm(area, (float(row.spacing_row_mm),
                                                                     float(row.spacing_col_mm))))
        return values

    def __getitem__(self, key):
        from .features import classifier_input

        index, seed = _key(key)
        image, mask = self.load(index)
        image, mask = apply(self._pipeline(image.shape), image, mask, seed)
        spacing = None
        if self.size_input:
            row = self.items.iloc[index]
            spacing = (float(row["spacing_row_mm"]), float(row["spacing_col_mm"]))
        features = classifier_input(np.ascontiguousarray(image), np.ascontiguousarray(mask),
                                    out_size=self.input_size, crop=self.crop, spacing_yx=spacing)
        return torch.from_numpy(features), torch.tensor(self.labels[index])
