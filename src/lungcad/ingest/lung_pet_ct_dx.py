"""Lung-PET-CT-Dx adapter (TCIA; DATASETS.md sections 6 and 7).

Layout accepted (``--source lung-pet-ct-dx=ROOT``): ROOT is either the folder holding the NBIA
``manifest-*/`` folder and ``Annotation/``, or the ``manifest-*`` folder itself with
``Annotation/`` beside it (``ROOT/../Annotation``). ``IngestOptions.petct_annotations`` overrides
where ``Annotation/`` is. DICOM series are found by headers anywhere under ROOT; only CT series
are ingested (PET and others are reported skips).

Labels: the patient letter of ``Lung_Dx-<L><digits>`` is the histology (A adenocarcinoma, B small
cell, E large cell, G squamous cell); all are lung cancer, so every patient is malignant (1).

Masks: one PASCAL VOC XML per annotated slice, ``Annotation/<L><digits>/<SOPInstanceUID>.xml``,
mapped to its slice by SOPInstanceUID in whichever CT series holds it. Each box becomes a filled
rectangle (``mask_source='box'``) with xmax/ymax inclusive, clipped to the image, scaled when the
XML ``<size>`` differs from the slice size. A series without any box gets no mask
(``mask_source='none'``) rather than an all-empty one. Box names other than the patient letter
(``Q``, lowercase, empty) are kept and noted. XMLs naming no CT slice (orphans) and unreadable
XMLs are reported skips.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np

from lungcad.errors import InputError
from lungcad.ingest.base import Adapter, IngestOptions, LoadedSeries, SeriesTask, Skip
from lungcad.ingest.lidc import non_ct_skips
from lungcad.io import find_dicom_series, read_dicom_series

HISTOLOGY = {"A": "adenocarcinoma", "B": "small cell carcinoma", "E": "large cell carcinoma",
             "G": "squamous cell carcinoma"}
COHORT_LABEL = 1
_PATIENT = re.compile(r"^Lung_Dx-([A-Za-z])(\d+)$")


def find_annotation_dir(root: Path, opts: IngestOptions) -> Path | None:
    """Where ``Annotation/`` is: the option, ROOT/Annotation, or ROOT/../Annotation."""
    if opts.petct_annotations is not None:
        if not opts.petct_annotations.is_dir():
            raise InputError(f"{opts.petct_annotations}: Lung-PET-CT-Dx annotation folder does not exist")
        return opts.petct_annotations
    for candidate in (root / "Annotation", root.parent / "Annotation"):
        if candidate.is_dir():
            return candidate
    return None


def parse_voc_boxes(path: Path) -> dict:
    """One VOC XML -> {'size': (width, height) or None, 'boxes': [(name, xmin, ymin, xmax, ymax)]}."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise InputError(f"{path}: unreadable annotation XML ({exc})") from None
    size = None
    width, height = root.findtext("size/width"), root.findtext("size/height")
    try:
        size = (int(float(width)), int(float(height)))
    except (TypeError, ValueError):
        pass
    boxes = []
    for obj in root.findall("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        try:
            coords = [int(round(float(box.findtext(t)))) for t in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise InputError(f"{path}: bounding box with missing or non-numeric coordinates") from None
        boxes.append(((obj.findtext("name") or "").strip(), *coords))
    if not boxes:
        raise InputError(f"{path}: no bounding box in the annotation")
    return {"size": size, "boxes": boxes}


class LungPetCtDxAdapter(Adapter):
    name = "lung-pet-ct-dx"

    def discover(self, root: Path, opts: IngestOptions) -> tuple[list[SeriesTask], list[Skip]]:
        root = Path(root)
        all_series = find_dicom_series(root)
        skips = non_ct_skips(self.name, all_series)
        if not all_series:
            skips.append(self.skip(root, "no DICOM series found"))
        ct = [s for s in all_series if s.is_ct]
        where = {uid: s.series_uid for s in ct for uid in s.sop_instance_uids}
        non_ct_uids = {uid for s in all_series if not s.is_ct for uid in s.sop_instance_uids}
        annotations: dict[str, list[dict]] = {s.series_uid: [] for s in ct}
        ann_dir = find_annotation_dir(root, opts)
        if ann_dir is None:
            skips.append(self.skip(root, "no Annotation/ folder found: series ingested without boxes"))
        for path in sorted(ann_dir.rglob("*.xml")) if ann_dir else []:
            uid = path.stem
            if uid not in where:
                what = "a non-CT slice" if uid in non_ct_uids else "no slice found under the root"
                skips.append(self.skip(path, f"orphan annotation: SOPInstanceUID {uid} is {what}"))
                continue
            try:
                parsed = parse_voc_boxes(path)
            except InputError as exc:
                skips.append(self.skip(path, str(exc)))
                continue
            annotations[where[uid]].append({"sop_uid": uid, "path": str(path), "folder": path.parent.name, **parsed})
        tasks = [SeriesTask(self.name, s.patient_id, s.series_uid,
                            {"series": s, "annotations": annotations[s.series_uid]}) for s in ct]
        return tasks, skips

    def load(self, task: SeriesTask, opts: IngestOptions) -> LoadedSeries:
        volume = read_dicom_series(task.payload["series"])
        notes = []
        match = _PATIENT.match(task.patient_id.rsplit("/", 1)[-1])
        letter = match.group(1).upper() if match else ""
        if letter not in HISTOLOGY:
            notes.append(f"patient ID {task.patient_id!r} has no known histology letter; "
                         "labelled malignant as the whole cohort")
        annotations = task.payload.get("annotations") or []
        if not annotations:
            return LoadedSeries(volume, None, "none", COHORT_LABEL, None, notes)
        shape = volume.array.shape
        index = {uid: k for k, uid in enumerate(volume.meta.get("sop_instance_uids") or [])}
        mask = np.zeros(shape, dtype=bool)
        nodule_label = np.full(shape[0], -1, dtype=np.int64)
        odd_names, missing = Counter(), 0
        for ann in annotations:
            k = index.get(ann["sop_uid"])
            if k is None:  # e.g. dropped as a duplicate position
                missing += 1
                continue
            scale_x = scale_y = 1.0
            if ann["size"] and all(ann["size"]) and tuple(ann["size"]) != (shape[2], shape[1]):
                scale_x, scale_y = shape[2] / ann["size"][0], shape[1] / ann["size"][1]
            for name, xmin, ymin, xmax, ymax in ann["boxes"]:
                if name != letter:
                    odd_names[name or "<empty>"] += 1
                x0, x1 = sorted((int(np.floor(xmin * scale_x)), int(np.ceil((xmax + 1) * scale_x))))
                y0, y1 = sorted((int(np.floor(ymin * scale_y)), int(np.ceil((ymax + 1) * scale_y))))
                x0, y0 = max(x0, 0), max(y0, 0)
                x1, y1 = min(x1, shape[2]), min(y1, shape[1])
                if x1 > x0 and y1 > y0:
                    mask[k, y0:y1, x0:x1] = True
                    nodule_label[k] = COHORT_LABEL
        if odd_names:
            notes.append("box labels differing from the patient letter (kept): "
                         + ", ".join(f"{n} x{c}" for n, c in sorted(odd_names.items())))
        if missing:
            notes.append(f"{missing} annotated slice(s) not in the loaded series were skipped")
        return LoadedSeries(volume, mask, "box", COHORT_LABEL, nodule_label, notes)
