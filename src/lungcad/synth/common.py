"""Helpers shared by the per-dataset writers: seeding, UIDs, MetaImage/NIfTI output, truth records."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from .dicom_writer import derived_uid
from .phantom import Phantom, draw_nodule_params
from .readers import Read, label_slices

LIDC_UID_ROOT = "1.3.6.1.4.1.14519.5.2.1.6279.6001."
FLIP_XY = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def patient_rng(seed: int, source: str, index: int) -> np.random.Generator:
    """One generator per (seed, source, patient): sources and patients never share draws."""
    return np.random.default_rng([int(seed), zlib.crc32(source.encode()), int(index)])


def uid(prefix: str, seed: int, source: str, index: int, *what) -> str:
    return derived_uid(prefix, seed, source, index, *what)


def mixed_cohort_nodules(rng: np.random.Generator, want_malignant: bool, max_tries: int = 200) -> list[dict]:
    """1-3 nodules from the malignancy model, redrawn until the patient's class is the wanted one."""
    params: list[dict] = []
    for _ in range(max_tries):
        params = [draw_nodule_params(rng) for _ in range(int(rng.integers(1, 4)))]
        if any(p["malignant"] for p in params) == want_malignant:
            break
    return params


def stored_geometry(ph: Phantom, flip_xy: bool):
    """(array, label, origin, direction) as written: optionally rotated 180 degrees about z.

    A flipped array starts at the +x/+y corner, so its origin moves there and the direction
    matrix ``diag(-1, -1, 1)`` keeps every voxel at the same world position.
    """
    if not flip_xy:
        return ph.hu, ph.label, ph.origin, IDENTITY
    nz, ny, nx = ph.hu.shape
    origin = (ph.origin[0] + (nx - 1) * ph.spacing[0], ph.origin[1] + (ny - 1) * ph.spacing[1], ph.origin[2])
    return ph.hu[:, ::-1, ::-1], ph.label[:, ::-1, ::-1], origin, FLIP_XY


def write_mhd(path: Path, array: np.ndarray, spacing, origin, direction=IDENTITY) -> None:
    """MetaImage header + uncompressed raw (as LUNA16 / LNDb ship them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection([float(d) for d in direction])
    sitk.WriteImage(img, str(path), useCompression=False)


def write_nifti_gz(path: Path, array_zyx: np.ndarray, affine: np.ndarray) -> None:
    """NIfTI-1 gz with a fixed gzip timestamp so that the bytes are reproducible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.ascontiguousarray(array_zyx.transpose(2, 1, 0)), affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))


def lidc_labels(reads: list[Read], nodule_ids) -> tuple[dict, int, int | None]:
    """Per-nodule reader ratings and the patient label under the paper rule and the median rule.

    Paper rule: a nodule is malignant when at least three readers rate it >= 3.  Median rule:
    median > 3 malignant, < 3 benign, == 3 undecided (the patient is excluded when nothing else decides).
    """
    ratings = {nid: [r.rating for r in reads if r.nodule_id == nid] for nid in nodule_ids}
    paper = int(any(sum(v >= 3 for v in rs) >= 3 for rs in ratings.values()))
    medians = [float(np.median(rs)) for rs in ratings.values() if len(rs) >= 3]
    if any(m > 3 for m in medians):
        median_label: int | None = 1
    elif medians and all(m < 3 for m in medians):
        median_label = 0
    else:
        median_label = None
    return ratings, paper, median_label


def nodule_truth(ph: Phantom, label_stored: np.ndarray, z_values, extra: dict | None = None) -> list[dict]:
    """Truth records of the phantom's nodules with the slices they span in the written volume."""
    out = []
    for nod in ph.nodules:
        slices = label_slices(label_stored == nod.id)
        rec = {k: v for k, v in nod.to_dict().items() if k != "characteristics"}
        rec["center_mm"] = list(nod.center_mm)
        rec["slices"] = slices
        rec["z_mm"] = [round(float(z_values[k]), 4) for k in slices]
        rec["voxels"] = int((label_stored == nod.id).sum())
        rec.update((extra or {}).get(nod.id, {}))
        out.append(rec)
    return out


def series_truth(series_uid: str, path: Path, out_root: Path, ph: Phantom, origin, direction, **more) -> dict:
    nz, ny, nx = ph.hu.shape
    rec = {"series_uid": series_uid, "path": path.relative_to(out_root).as_posix(),
           "shape_zyx": [nz, ny, nx], "spacing_xyz": list(ph.spacing),
           "origin_xyz": [round(float(o), 6) for o in origin], "direction": list(direction)}
    rec.update(more)
    return rec
