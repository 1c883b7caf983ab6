"""Write a HU volume as a CT Image Storage series (one file per slice) with pydicom.

The tags are the ones DATASETS.md section 8 lists as required, plus the optional ones that real
LIDC and Lung-PET-CT-Dx files carry.  Storage can be signed or 12-bit unsigned, with or without a
pixel padding value outside the reconstruction circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"  # pydicom's example root; synthetic data only


def derived_uid(prefix: str, *parts) -> str:
    """A UID that depends only on ``parts`` (deterministic across runs and machines)."""
    return str(generate_uid(prefix=prefix, entropy_srcs=[str(p) for p in parts]))


@dataclass
class SeriesOptions:
    """How a series is stored; defaults mimic a real Lung-PET-CT-Dx slice."""

    patient_id: str
    study_uid: str
    series_uid: str
    uid_prefix: str
    frame_uid: str = ""
    signed: bool = False  # PixelRepresentation 1 (int16) or 0 (12-bit unsigned)
    intercept: float = -1024.0
    slope: float = 1.0
    padding_hu: float | None = None  # HU written outside the reconstruction circle (e.g. -2000)
    descending: bool = False  # InstanceNumber 1 = most superior slice (z decreasing)
    explicit_vr: bool = False
    modality: str = "CT"
    manufacturer: str = "SYNTH MEDICAL"
    model: str = "Phantom 64"
    study_date: str = "20000101"
    study_description: str = ""
    series_description: str = ""
    series_number: int = 2
    slice_thickness: float | None = None
    kernel: str = "STANDARD"
    drop_slices: tuple[int, ...] = ()  # array indices not written (a gap)
    duplicate_slice: int | None = None  # array index written twice (same IPP, higher InstanceNumber)
    file_name: Callable[[int, float, int], str] = lambda inst, z, n: f"1-{inst:0{2 if n < 100 else 3}d}.dcm"
    extra: dict = field(default_factory=dict)


@dataclass
class WrittenSlice:
    path: Path
    sop_uid: str
    z: float
    instance: int
    index: int  # array index (z ascending) of the pixels
    duplicate: bool = False


def _stored_values(hu: np.ndarray, opt: SeriesOptions, pad_mask: np.ndarray | None) -> tuple[np.ndarray, int | None]:
    stored = np.round((hu.astype(np.float64) - opt.intercept) / opt.slope)
    pad_stored = None
    if opt.padding_hu is not None:
        pad_stored = int(round((opt.padding_hu - opt.intercept) / opt.slope))
        stored = np.where(pad_mask, pad_stored, stored)
    if opt.signed:
        return np.clip(stored, -32768, 32767).astype("<i2"), pad_stored
    return np.clip(stored, 0, 4095).astype("<u2"), pad_stored


def write_series(folder: Path, hu: np.ndarray, spacing, origin, opt: SeriesOptions) -> list[WrittenSlice]:
    """Write ``hu`` (z, y, x; z ascending from ``origin``) as one DICOM file per slice.

    Returns the written slices (in InstanceNumber order), including a deliberate duplicate.
    """
    folder.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = hu.shape
    sx, sy, sz = spacing
    pad_mask = None
    if opt.padding_hu is not None:
        yy, xx = np.mgrid[0:ny, 0:nx]
        r = min(nx, ny) / 2.0
        pad_mask = (yy - (ny - 1) / 2) ** 2 + (xx - (nx - 1) / 2) ** 2 > (r - 0.5) ** 2
    kept = [k for k in range(nz) if k not in opt.drop_slices]
    order = sorted(kept, reverse=opt.descending)
    jobs = [(k, False) for k in order]
    if opt.duplicate_slice is not None:
        jobs.append((opt.duplicate_slice, True))
    n_files = len(jobs)
    frame_uid = opt.frame_uid or derived_uid(opt.uid_prefix, opt.series_uid, "frame")
    written = []
    for inst, (k, dup) in enumerate(jobs, start=1):
        z = float(origin[2] + k * sz)
        sop = derived_uid(opt.uid_prefix, opt.series_uid, "sop", k, "dup" if dup else "")
        pixels = hu[k]
        if dup:  # a re-acquired copy: same position, slightly different pixels
            pixels = np.clip(pixels.astype(np.int32) + 7, -1024, 3071)
        stored, pad_stored = _stored_values(pixels, opt, pad_mask)
        ds = _slice_dataset(opt, sop, frame_uid, inst, z, origin, spacing, nx, ny, stored, pad_stored)
        name = opt.file_name(inst, z, n_files)
        if dup:
            name = name.replace(".dcm", "-dup.dcm")
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        written.append(WrittenSlice(path, sop, z, inst, k, dup))
    return written


def _slice_dataset(opt, sop, frame_uid, inst, z, origin, spacing, nx, ny, stored, pad_stored):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = PET_IMAGE_STORAGE if opt.modality == "PT" else CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if opt.explicit_vr else ImplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop
    ds.StudyDate = opt.study_date
    ds.SeriesDate = opt.study_date
    ds.StudyTime = "120000"
    ds.Modality = opt.modality
    ds.Manufacturer = opt.manufacturer
    ds.ManufacturerModelName = opt.model
    ds.StudyDescription = opt.study_description
    ds.SeriesDescription = opt.series_description
    ds.PatientName = opt.patient_id
    ds.PatientID = opt.patient_id
    ds.PatientIdentityRemoved = "YES"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = f"{opt.slice_thickness or spacing[2]:.2f}"
    ds.KVP = "120"
    ds.ConvolutionKernel = opt.kernel
    ds.PatientPosition = "FFS"
    ds.StudyInstanceUID = opt.study_uid
    ds.SeriesInstanceUID = opt.series_uid
    ds.StudyID = ""
    ds.SeriesNumber = str(opt.series_number)
    ds.InstanceNumber = str(inst)
    ds.ImagePositionPatient = [f"{origin[0]:.6f}", f"{origin[1]:.6f}", f"{z:.6f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = frame_uid
    ds.SliceLocation = f"{z:.6f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ny
    ds.Columns = nx
    ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # row spacing, column spacing
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if opt.signed else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if opt.signed else 0
    if pad_stored is not None:
        # Encoded with the pixel representation's VR so readers see the right sign.
        ds.add_new(0x00280120, "SS" if opt.signed else "US", pad_stored)
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1600"
    ds.RescaleIntercept = f"{opt.intercept:g}"
    ds.RescaleSlope = f"{opt.slope:g}"
    for key, value in opt.extra.items():
        setattr(ds, key, value)
    ds.PixelData = stored.tobytes()
    return ds


def read_hu(path: Path) -> np.ndarray:
    """Slice HU as float (helper for tests and debugging)."""
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
