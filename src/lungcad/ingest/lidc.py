"""LIDC-IDRI adapter: DICOM CT series + the radiologists' XML read file of each series.

Discovery: every CT series under the root (header scan); its read file is an ``*.xml`` in the
series folder whose ``SeriesInstanceUid`` matches, or one from ``opts.lidc_xml`` (searched
recursively). Series without a read file and read files without a series are reported skips.

Loading: the readers' marks are grouped per physical nodule (``cluster_nodules``), each reader's
contours are filled onto the slices they name (by SOPInstanceUID, else by imageZposition within
a quarter of the slice spacing), and the nodule mask is the consensus: pixels inside the contours
of at least ``opts.consensus`` of the readers who marked that nodule (with contours). Nodule labels
follow ``opts.label_rule``; the series' patient label is their unification. Contours on slices
absent from the series are skipped with a note.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from lungcad.errors import InputError
from lungcad.ingest.base import Adapter, IngestOptions, LoadedSeries, SeriesTask, Skip
from lungcad.ingest.labels import lidc_nodule_label, unify_patient
from lungcad.ingest.lidc_xml import (Roi, cluster_nodules, parse_lidc_xml, rasterize_rois,
                                     read_xml_series_uid)
from lungcad.io import find_dicom_series, read_dicom_series


def index_xml_files(paths) -> dict[str, list[Path]]:
    """SeriesInstanceUid -> read files (sorted; a '...resubmitted...' revision first, as pylidc)."""
    index: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(paths):
        uid = read_xml_series_uid(path)
        if uid:
            index[uid].append(Path(path))
    for uid in index:
        index[uid].sort(key=lambda p: ("resubmitted" not in p.name, str(p)))
    return dict(index)


def non_ct_skips(source: str, series_list) -> list[Skip]:
    """A skip for every series that is not CT Image Storage (PET, X-ray, SEG, SR...)."""
    return [Skip(source, f"{s.patient_id} series {s.series_uid}",
                 f"modality {s.modality or '?'} (SOP class {s.sop_class_uid or '?'}): only CT series are ingested")
            for s in series_list if not s.is_ct]


class LidcAdapter(Adapter):
    name = "lidc-idri"

    def discover(self, root: Path, opts: IngestOptions) -> tuple[list[SeriesTask], list[Skip]]:
        root = Path(root)
        all_series = find_dicom_series(root)
        skips = non_ct_skips(self.name, all_series)
        xml_root = opts.lidc_xml or root
        if opts.lidc_xml is not None and not Path(opts.lidc_xml).exists():
            raise InputError(f"{opts.lidc_xml}: LIDC XML folder does not exist")
        xml_index = index_xml_files(Path(xml_root).rglob("*.xml"))
        tasks, used = [], set()
        for series in (s for s in all_series if s.is_ct):
            candidates = xml_index.get(series.series_uid, [])
            if not candidates:
                skips.append(self.skip(f"{series.patient_id} series {series.series_uid}",
                                       "no radiologist XML read file for this series"))
                continue
            used.add(series.series_uid)
            tasks.append(SeriesTask(self.name, series.patient_id, series.series_uid,
                                    {"series": series, "xml": str(candidates[0])}))
        for uid, paths in sorted(xml_index.items()):
            if uid not in used and not any(s.series_uid == uid for s in all_series):
                for path in paths:
                    skips.append(self.skip(path, f"orphan XML: series {uid} not found under {root}"))
        if not all_series:
            skips.append(self.skip(root, "no DICOM series found"))
        return tasks, skips

    def load(self, task: SeriesTask, opts: IngestOptions) -> LoadedSeries:
        volume = read_dicom_series(task.payload["series"])
        read = parse_lidc_xml(task.payload["xml"])
        shape = volume.array.shape
        pixel_spacing = float(volume.spacing[0])
        locate = _SliceLocator(volume)
        mask = np.zeros(shape, dtype=bool)
        nodule_label = np.full(shape[0], -1, dtype=np.int64)
        labels, notes, missing = [], [], 0
        for cluster in cluster_nodules(read, pixel_spacing=pixel_spacing):
            label = lidc_nodule_label([m.malignancy for m in cluster], opts.label_rule)
            labels.append(label)
            contoured = [m for m in cluster if m.has_contour]
            if not contoured:
                continue
            votes: dict[int, np.ndarray] = {}
            for mark in contoured:
                by_slice: dict[int, list[Roi]] = defaultdict(list)
                for roi in mark.rois:
                    k = locate(roi)
                    if k is None:
                        missing += 1
                    else:
                        by_slice[k].append(roi)
                for k, rois in by_slice.items():
                    votes.setdefault(k, np.zeros(shape[1:], dtype=np.int16))
                    votes[k] += rasterize_rois(rois, shape[1:])
            needed = opts.consensus * len(contoured) - 1e-9
            for k, count in votes.items():
                consensus = count >= needed
                if consensus.any():
                    mask[k] |= consensus
                    if label is not None:
                        nodule_label[k] = max(nodule_label[k], label)
        if missing:
            notes.append(f"{missing} contour(s) on slices not in this series were skipped")
        return LoadedSeries(volume, mask, "gt", unify_patient(labels), nodule_label, notes)


class _SliceLocator:
    """Slice index of an ROI: by SOPInstanceUID, else by z position within a tolerance."""

    def __init__(self, volume):
        self.by_uid = {uid: k for k, uid in enumerate(volume.meta.get("sop_instance_uids") or [])}
        positions = volume.meta.get("z_positions")
        if positions is None:
            positions = [volume.origin[2] + volume.spacing[2] * k for k in range(volume.array.shape[0])]
        self.z = np.asarray(positions, dtype=float)
        self.tolerance = min(0.5, 0.25 * float(volume.spacing[2]))

    def __call__(self, roi: Roi) -> int | None:
        if roi.sop_uid and roi.sop_uid in self.by_uid:
            return self.by_uid[roi.sop_uid]
        if roi.z is None or not len(self.z):
            return None
        k = int(np.argmin(np.abs(self.z - roi.z)))
        return k if abs(self.z[k] - roi.z) <= self.tolerance else None
