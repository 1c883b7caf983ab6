"""LIDC-IDRI: ``LIDC-IDRI/LIDC-IDRI-dddd/<StudyUID>/<SeriesUID>/*.dcm`` + the reader XML.

Deliberate quirks (DATASETS.md 1.2, 2.4), each in one patient: a duplicate z slice (the copy has
the higher InstanceNumber and slightly different pixels: drop it), a missing slice (a gap), and an
XML ROI whose SOP UID / z is not in the series (skip just that ROI).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import LIDC_UID_ROOT, lidc_labels, mixed_cohort_nodules, nodule_truth, patient_rng, series_truth, uid
from .dicom_writer import SeriesOptions, write_series
from .lidc_xml import SliceRef, lidc_xml
from .phantom import Phantom, make_phantom
from .readers import Read, label_slices, random_lung_points, simulate_reads

SOURCE = "lidc-idri"

# Storage variants cycled over patients: (signed, intercept, padding HU, explicit VR).
_STORAGE = [(True, -1024.0, -3024.0, True), (False, -1024.0, None, False),
            (True, 0.0, -2000.0, True), (True, -1024.0, None, False)]


def extra_marks(rng: np.random.Generator, ph: Phantom, reads: list[Read], label_stored: np.ndarray,
                n_readers: int = 4):
    """Per-reader < 3 mm single-point nodules and non-nodule loci as (k, row, col) triples."""
    def to_krc(p):
        z, y, x = np.round(ph.world_to_index(p)).astype(int)
        if label_stored is not ph.label:  # flipped storage
            y, x = ph.hu.shape[1] - 1 - y, ph.hu.shape[2] - 1 - x
        return int(z), int(y), int(x)

    points = [to_krc(p) for p in random_lung_points(rng, ph, 3)]
    small, non = {}, {}
    if points:
        seen = rng.random(n_readers) < 0.6  # one small nodule marked by some readers
        small = {r: [points[0]] for r in range(n_readers) if seen[r]}
    for r in range(n_readers):
        non[r] = [points[i] for i in range(1, len(points)) if rng.random() < 0.5]
    return small, non


def _quirk_owner(quirk: int, patients: int) -> int:
    return quirk % patients


def write_lidc(out: Path, patients: int, seed: int, size: int, n_slices: int, progress=None) -> list[dict]:
    root = out / SOURCE / "LIDC-IDRI"
    records = []
    for i in range(patients):
        rng = patient_rng(seed, SOURCE, i)
        pid = f"LIDC-IDRI-{i + 1:04d}"
        spacing_z = float(rng.choice([1.25, 1.5, 2.0, 2.5]))
        ph = make_phantom(rng, size=size, n_slices=n_slices, spacing_z=spacing_z,
                          nodules=mixed_cohort_nodules(rng, want_malignant=(i % 2 == 0)))
        reads = simulate_reads(rng, ph.nodules, 4, rule="lidc")
        small, non = extra_marks(rng, ph, reads, ph.label)
        study_uid = uid(LIDC_UID_ROOT, seed, SOURCE, i, "study")
        series_uid = uid(LIDC_UID_ROOT, seed, SOURCE, i, "series")
        signed, intercept, pad, explicit = _STORAGE[i % len(_STORAGE)]
        nz = ph.hu.shape[0]
        nodule_slices = set(label_slices(ph.label > 0))
        quirks = []
        duplicate = drop = None
        if _quirk_owner(0, patients) == i:
            duplicate = nz // 2
            quirks.append({"duplicate_slice_index": duplicate})
        if _quirk_owner(1, patients) == i:
            free = [k for k in range(2, nz - 2) if k not in nodule_slices and k != duplicate]
            if free:
                drop = free[len(free) // 3]
                quirks.append({"missing_slice_index": drop})
        opt = SeriesOptions(patient_id=pid, study_uid=study_uid, series_uid=series_uid, uid_prefix=LIDC_UID_ROOT,
                            signed=signed, intercept=intercept, padding_hu=pad, descending=True,
                            explicit_vr=explicit, manufacturer="GE MEDICAL SYSTEMS", model="LightSpeed Plus",
                            series_number=3000566 + i, drop_slices=(drop,) if drop is not None else (),
                            duplicate_slice=duplicate, file_name=lambda inst, z, n: f"{z:.6f}.dcm",
                            extra={"StudyTime": "", "SeriesDescription": ""})
        folder = root / pid / study_uid / series_uid
        written = write_series(folder, ph.hu, ph.spacing, ph.origin, opt)
        slices: list[SliceRef | None] = [None] * nz
        for w in written:
            if not w.duplicate:
                slices[w.index] = SliceRef(w.z, w.sop_uid)
        bogus = None
        if _quirk_owner(2, patients) == i and reads:
            z_bad = float(ph.origin[2] + (nz + 10) * ph.spacing[2])
            bogus = SliceRef(z_bad, uid(LIDC_UID_ROOT, seed, SOURCE, i, "missing-sop"))
            quirks.append({"xml_roi_not_in_series": {"z": z_bad, "sop_uid": bogus.sop_uid}})
        xml = lidc_xml(series_uid, study_uid, uid(LIDC_UID_ROOT, seed, SOURCE, i, "xml") + ".0",
                       -421198203 + i, slices, ph.label, reads, small, non, bogus_roi=bogus)
        (folder / f"{69 + i}.xml").write_text(xml, encoding="utf-8")

        ratings, paper, median = lidc_labels(reads, [n.id for n in ph.nodules])
        z_values = [ph.origin[2] + k * ph.spacing[2] for k in range(nz)]
        records.append({
            "patient_id": pid, "label": paper, "label_median_rule": median,
            "storage": {"signed": signed, "intercept": intercept, "padding_hu": pad, "explicit_vr": explicit},
            "series": [series_truth(series_uid, folder, out, ph, ph.origin, (1, 0, 0, 0, 1, 0, 0, 0, 1),
                                    study_uid=study_uid, xml=(folder / f"{69 + i}.xml").relative_to(out).as_posix(),
                                    n_files=len(written))],
            "nodules": nodule_truth(ph, ph.label, z_values, {
                nid: {"reader_ratings": rs, "n_readers": len(rs)} for nid, rs in ratings.items()}),
            "quirks": quirks,
        })
        if progress:
            progress.update(1)
    return records
