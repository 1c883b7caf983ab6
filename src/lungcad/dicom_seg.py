"""DICOM Segmentation (SEG) of the predicted nodules, referencing the source CT series.

Built with highdicom: a BINARY segmentation with one segment "Lung nodule" (SNOMED CT property
category 49755003 "Morphologically Abnormal Structure", type 27925004 "Nodule"), algorithm type
AUTOMATIC identified as lungcad. Frame k is the mask of array slice k, whose source image is the
k-th file of the series in array order (``volume.meta['files']``, sorted along the slice normal by
``lungcad.io``), so every frame references the SOP instance it was predicted on. Empty frames are
omitted (highdicom's default), except when there is no nodule at all: then every frame is kept so
that the file still states "nothing found" for the whole series.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import __version__
from .errors import LungcadError
from .io import atomic_path
from .predict import PredictionResult

SEGMENT_LABEL = "Lung nodule"
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                 "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")


def _source_datasets(files: list[str]):
    import pydicom

    # Pixel data are not needed: highdicom reads geometry and identifiers from the headers.
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    for ds in datasets:
        # Type 2 patient/study attributes that the SEG copies: present but possibly empty.
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    return datasets


def build_dicom_seg(result: PredictionResult):
    """The ``highdicom.seg.Segmentation`` dataset of ``result`` (a DICOM input)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    volume = result.volume
    files = volume.meta.get("files")
    if volume.meta.get("kind") != "dicom" or not files:
        raise LungcadError(f"{volume.meta.get('source', 'input')}: DICOM SEG needs a DICOM series input")
    if len(files) != result.labels.shape[0]:
        raise LungcadError(f"{volume.meta.get('source')}: {len(files)} source files for "
                           f"{result.labels.shape[0]} slices; cannot reference them one to one")
    sources = _source_datasets(files)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="lungcad", version=__version__, family=codes.cid7162.ArtificialIntelligence)
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    frames = (result.labels > 0).astype(np.uint8)
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=9901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="lungcad",
        manufacturer_model_name="lungcad predict",
        software_versions=__version__,
        device_serial_number="none",
        content_description="Predicted lung nodules (research software, not a medical device)",
        content_label="NODULES",
        omit_empty_frames=bool(frames.any()),
    )


def write_dicom_seg(result: PredictionResult, path: Path) -> Path:
    """Write ``seg.dcm`` atomically (temporary name, then rename)."""
    seg = build_dicom_seg(result)
    path = Path(path)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path
