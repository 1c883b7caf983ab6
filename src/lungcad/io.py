"""Volumes with geometry: read DICOM series, NIfTI and MetaImage into one ``Volume`` type.

Conventions (as SimpleITK): ``array`` is indexed ``[z, y, x]``; ``spacing`` and ``origin`` are in
``(x, y, z)`` order; ``direction`` is the row-major 3x3 matrix whose *columns* are the world
directions of the index axes i, j, k (``sitk.Image.GetDirection()``). World coordinates are the
DICOM patient frame (LPS), in mm:  ``world = origin + D @ (spacing * (i, j, k))``.

DICOM rules (DATASETS.md 1.2): only CT Image Storage series are read; slices are sorted by their
position along the slice normal (never by file name or InstanceNumber); of two slices at the same
position the one with the lower InstanceNumber is kept; HU = slope * stored + intercept computed in
float (no uint16 overflow); voxels equal to PixelPaddingValue become -1024 HU (air).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from .errors import InputError

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
PADDING_HU = -1024.0
_HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "Modality",
    "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient", "SeriesDescription",
    "SeriesNumber", "Rows", "Columns", "PixelSpacing",
]


@dataclass
class Volume:
    """A 3D image with its geometry. See the module docstring for the conventions."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def with_array(self, array: np.ndarray, **meta) -> "Volume":
        """A volume on the same grid holding another array (e.g. a mask)."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {array.shape} does not match the volume grid {self.shape}")
        return Volume(array, self.spacing, self.origin, self.direction, {**self.meta, **meta})


@dataclass
class DicomSeries:
    """One DICOM series found by a header-only scan; ``files`` are sorted along the slice normal."""

    series_uid: str
    study_uid: str
    patient_id: str
    modality: str
    sop_class_uid: str
    description: str
    folder: Path
    files: list[Path]
    sop_instance_uids: list[str]
    positions: list[float]           # position of each slice along the normal (mm)
    instance_numbers: list[int]
    orientation: tuple[float, ...]   # ImageOrientationPatient (6 floats)
    dropped: list[str] = field(default_factory=list)   # files dropped as duplicate positions

    @property
    def is_ct(self) -> bool:
        return self.modality == "CT" and self.sop_class_uid in (CT_IMAGE_STORAGE, ENHANCED_CT_STORAGE)


# ----------------------------------------------------------------------------- geometry helpers


def world_to_index(volume: Volume, xyz) -> np.ndarray:
    """World point(s) (x, y, z) mm -> continuous array index (k, j, i) = (z, y, x)."""
    pts = np.asarray(xyz, dtype=float)
    flat = np.atleast_2d(pts)
    ijk = (volume.direction_matrix.T @ (flat - np.asarray(volume.origin)).T).T / np.asarray(volume.spacing)
    out = ijk[:, ::-1]
    return out[0] if pts.ndim == 1 else out


def index_to_world(volume: Volume, kji) -> np.ndarray:
    """Array index (k, j, i) = (z, y, x), possibly fractional -> world point (x, y, z) mm."""
    pts = np.asarray(kji, dtype=float)
    ijk = np.atleast_2d(pts)[:, ::-1] * np.asarray(volume.spacing)
    xyz = (volume.direction_matrix @ ijk.T).T + np.asarray(volume.origin)
    return xyz[0] if pts.ndim == 1 else xyz


def volume_to_sitk(volume: Volume) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    img.SetSpacing(tuple(float(s) for s in volume.spacing))
    img.SetOrigin(tuple(float(o) for o in volume.origin))
    img.SetDirection(tuple(float(d) for d in volume.direction))
    return img


def volume_from_sitk(img: sitk.Image, meta: dict | None = None, dtype=None) -> Volume:
    if img.GetDimension() != 3:
        raise InputError(f"{(meta or {}).get('source', 'image')}: expected a 3D image, got {img.GetDimension()}D")
    arr = sitk.GetArrayFromImage(img)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return Volume(arr, tuple(img.GetSpacing()), tuple(img.GetOrigin()), tuple(img.GetDirection()), dict(meta or {}))


# ----------------------------------------------------------------------------- NIfTI / MetaImage


def _read_itk(path: Path, kind: str) -> Volume:
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "rror" in ln or "annot" in ln), first[-1] if first else "")
        raise InputError(f"{path}: unreadable {kind} file ({detail.strip()[:160]})") from None
    return volume_from_sitk(img, {"source": str(path), "kind": kind, "series_uid": _stem(path)}, np.float32)


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def read_nifti(path: str | Path) -> Volume:
    """Read a NIfTI file (.nii / .nii.gz); the affine becomes origin/spacing/direction (LPS, via ITK)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    return _read_itk(path, "nifti")


def read_mhd(path: str | Path) -> Volume:
    """Read a MetaImage (.mhd + raw, or .mha); TransformMatrix is honoured (it is the transposed direction)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.suffix.lower() == ".mhd":
        header = _read_mhd_header(path)
        data_file = header.get("ElementDataFile")
        if data_file is None:
            raise InputError(f"{path}: MetaImage header has no ElementDataFile line")
        if data_file != "LOCAL" and not (path.parent / data_file).is_file():
            raise InputError(f"{path}: data file {data_file} named by ElementDataFile is missing")
    return _read_itk(path, "metaimage")


def _read_mhd_header(path: Path) -> dict:
    header = {}
    try:
        text = path.read_bytes()[:65536].decode("latin-1")
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    for line in text.splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            header[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
    return header


# ----------------------------------------------------------------------------- DICOM


def _iter_files(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith((".xml", ".csv", ".json", ".txt", ".png", ".jpg", ".zip", ".md")):
                continue
            yield Path(dirpath) / name


def _normal(iop) -> np.ndarray:
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:6], float)
    return np.cross(row, col)


def find_dicom_series(root: str | Path, ct_only: bool = False) -> list[DicomSeries]:
    """Scan ``root`` (recursively) for DICOM files, reading headers only, and group them by series.

    Non-DICOM files are ignored. Slices are sorted along the slice normal; of two slices at the same
    position the one with the lower InstanceNumber is kept (pylidc's rule) and the other is listed in
    ``dropped``. With ``ct_only`` only CT Image Storage series are returned.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    groups: dict[str, list] = {}
    for path in _iter_files(root) if root.is_dir() else [root]:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, AttributeError):
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid or "SOPInstanceUID" not in ds:
            continue
        groups.setdefault(uid, []).append((path, ds))
    series = [_make_series(uid, items) for uid, items in groups.items()]
    series = [s for s in series if s is not None and (s.is_ct or not ct_only)]
    return sorted(series, key=lambda s: (s.patient_id, s.series_uid))


def _make_series(uid: str, items: list) -> DicomSeries | None:
    first = items[0][1]
    iop = first.get("ImageOrientationPatient")
    iop = tuple(float(v) for v in iop) if iop is not None and len(iop) == 6 else (1, 0, 0, 0, 1, 0)
    normal = _normal(iop)
    rows = []
    for path, ds in items:
        ipp = ds.get("ImagePositionPatient")
        pos = float(np.dot(np.asarray(ipp, float), normal)) if ipp is not None and len(ipp) == 3 else float("nan")
        inst = ds.get("InstanceNumber")
        inst = int(inst) if inst not in (None, "") else 0
        rows.append((pos, inst, str(path), path, str(ds.SOPInstanceUID)))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    kept, dropped = [], []
    for row in rows:
        if kept and abs(row[0] - kept[-1][0]) < 1e-3:
            dropped.append(str(row[3]))     # same position: the lower InstanceNumber (sorted first) wins
            continue
        kept.append(row)
    folders = {r[3].parent for r in kept}
    folder = folders.pop() if len(folders) == 1 else Path(os.path.commonpath([str(f) for f in folders]))
    return DicomSeries(
        series_uid=uid,
        study_uid=str(first.get("StudyInstanceUID", "")),
        patient_id=str(first.get("PatientID", "")),
        modality=str(first.get("Modality", "")),
        sop_class_uid=str(first.get("SOPClassUID", "")),
        description=str(first.get("SeriesDescription", "")),
        folder=folder,
        files=[r[3] for r in kept],
        sop_instance_uids=[r[4] for r in kept],
        positions=[r[0] for r in kept],
        instance_numbers=[r[1] for r in kept],
        orientation=iop,
        dropped=dropped,
    )


def _slice_hu(ds, path: Path) -> np.ndarray:
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for truncated / unsupported pixel data
        raise InputError(f"{path}: cannot decode pixel data ({type(exc).__name__}: {str(exc)[:120]})") from None
    if stored.ndim != 2:
        raise InputError(f"{path}: expected a single-frame 2D slice, got pixel array of shape {stored.shape}")
    hu = stored.astype(np.float32)     # float before rescale: no uint16 overflow
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    hu = hu * slope + intercept
    pad = ds.get("PixelPaddingValue")
    if pad is not None:
        pad = int(pad)
        if int(ds.get("PixelRepresentation", 0)) == 1 and pad > 32767:
            pad -= 65536                 # the tag is stored unsigned (US) even for signed pixels
        hu[stored == pad] = PADDING_HU
    return hu


def read_dicom_series(series: DicomSeries | str | Path) -> Volume:
    """Read one CT series into a ``Volume`` (HU, float32, sorted along the slice normal).

    ``series`` is a ``DicomSeries`` from ``find_dicom_series`` or a folder holding exactly one CT
    series. Irregular slice spacing (a missing slice) is kept as it is and recorded in
    ``meta['gaps']``; the volume spacing is the median spacing (as pylidc).
    """
    if not isinstance(series, DicomSeries):
        folder = Path(series)
        found = [s for s in find_dicom_series(folder) if s.is_ct]
        if not found:
            raise InputError(f"{folder}: no CT image series found (need Modality CT, CT Image Storage)")
        if len(found) > 1:
            raise InputError(f"{folder}: holds {len(found)} CT series; pick one (lungcad handles each separately)")
        series = found[0]
    if not series.is_ct:
        raise InputError(f"{series.folder}: series {series.series_uid} is {series.modality or 'not CT'}, not a CT image series")
    slices, first = [], None
    for path in series.files:
        try:
            ds = pydicom.dcmread(path)
            _ = (ds.Rows, ds.Columns)
        except (InvalidDicomError, OSError, EOFError, ValueError, AttributeError, KeyError) as exc:
            raise InputError(f"{path}: unreadable or truncated DICOM file ({type(exc).__name__})") from None
        if first is None:
            first = ds
        elif (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise InputError(f"{path}: slice size {ds.Rows}x{ds.Columns} differs from the series' {first.Rows}x{first.Columns}")
        slices.append(_slice_hu(ds, path))
    array = np.stack(slices)
    iop = np.asarray(series.orientation, float)
    row_dir, col_dir = iop[:3], iop[3:6]
    normal = _normal(iop)
    ps = [float(v) for v in first.get("PixelSpacing", [1.0, 1.0])]
    positions = np.asarray(series.positions)
    diffs = np.diff(positions)
    dz = float(np.median(diffs)) if len(diffs) else float(first.get("SliceThickness", 1.0) or 1.0)
    gaps = [int(i) for i in np.nonzero(np.abs(diffs - dz) > max(1e-3 * abs(dz), 0.01))[0]] if len(diffs) else []
    ipp0 = np.asarray(pydicom.dcmread(series.files[0], stop_before_pixels=True).ImagePositionPatient, float)
    # Slice direction: the stacking direction given by the sorted positions (along the normal).
    direction = np.column_stack([row_dir, col_dir, normal]).reshape(-1)
    tilt = _stack_tilt(series, normal)
    meta = {
        "source": str(series.folder),
        "kind": "dicom",
        "series_uid": series.series_uid,
        "study_uid": series.study_uid,
        "patient_id": series.patient_id,
        "modality": series.modality,
        "sop_instance_uids": list(series.sop_instance_uids),
        "files": [str(f) for f in series.files],
        "z_positions": [float(p) for p in positions],
        "gaps": gaps,
        "dropped_duplicates": list(series.dropped),
        "slice_thickness": float(first.get("SliceThickness", dz) or dz),
        "tilt_deg": tilt,
        "notes": ([f"dropped {len(series.dropped)} slice(s) at duplicate positions"] if series.dropped else [])
        + ([f"irregular slice spacing after slice index(es) {gaps}"] if gaps else []),
    }
    return Volume(array, (ps[1], ps[0], abs(dz) if dz else 1.0), tuple(float(v) for v in ipp0), tuple(float(v) for v in direction), meta)


def _stack_tilt(series: DicomSeries, normal: np.ndarray) -> float:
    """Angle (degrees) between the slice normal and the line through the first and last IPP."""
    if len(series.files) < 2:
        return 0.0
    a = np.asarray(pydicom.dcmread(series.files[0], stop_before_pixels=True).ImagePositionPatient, float)
    b = np.asarray(pydicom.dcmread(series.files[-1], stop_before_pixels=True).ImagePositionPatient, float)
    step = b - a
    norm = np.linalg.norm(step)
    if norm == 0:
        return 0.0
    cosang = abs(float(np.dot(step / norm, normal)))
    return float(np.degrees(np.arccos(min(1.0, cosang))))


# ----------------------------------------------------------------------------- dispatch / write


def input_kind(path: str | Path) -> str:
    """'dicom' (a folder or a .dcm file), 'nifti' or 'metaimage'; InputError otherwise."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".mhd", ".mha")):
        return "metaimage"
    if name.endswith(".dcm"):
        return "dicom"
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    raise InputError(f"{path}: unsupported input (expected a DICOM series folder, .nii/.nii.gz or .mhd)")


def read_volume(path: str | Path) -> Volume:
    """Read a DICOM series folder, a NIfTI file or a MetaImage into a ``Volume`` (HU, float32)."""
    path = Path(path)
    kind = input_kind(path)
    if kind == "nifti":
        return read_nifti(path)
    if kind == "metaimage":
        return read_mhd(path)
    return read_dicom_series(path.parent if path.is_file() else path)


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically
    (``os.replace``), on error it is removed and the exception re-raised.

    Creates the parent folder. The temporary name is ``.{name}.{pid}.tmp{suffix}`` (the pid: two
    processes never share a temporary file); ``suffix`` is for writers that pick the format from
    the extension (e.g. ``".png"``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # never hide the original error
            pass
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a text file atomically: UTF-8, no newline translation ('\\n' stays '\\n')."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write a binary file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_volume(volume: Volume, path: str | Path, dtype=None) -> Path:
    """Write a volume (.nii.gz, .nii, .mhd, .mha) with its geometry, atomically (temp name + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vol = volume if dtype is None else volume.with_array(volume.array.astype(dtype))
    image = volume_to_sitk(vol)
    if path.suffix.lower() == ".mhd":
        # The header names its .raw sidecar: a renamed temp header would point at the wrong file.
        sitk.WriteImage(image, str(path))
        return path
    # SimpleITK picks the format from the extension: the temporary name keeps it.
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    with atomic_path(path, suffix=suffix) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=path.name.endswith(".gz"))
    return path
