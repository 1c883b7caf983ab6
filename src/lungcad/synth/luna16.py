"""LUNA16: ``subsetN/<seriesuid>.mhd/.raw``, the CSVs, ``evaluationScript/annotations`` and the
LIDC reader XML of the same scans under ``tcia-lidc-xml/185/NNN.xml``.

Some scans are stored rotated (``TransformMatrix = -1 0 0 0 -1 0 0 0 1``, array starting at the
+x/+y corner) so that only the general world<->index formula of DATASETS.md 1.1 lands on the
nodules.  The XML ``edgeMap`` coordinates index the array as stored (column, row), like a
DICOM series with that orientation.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .common import (LIDC_UID_ROOT, lidc_labels, mixed_cohort_nodules, nodule_truth, patient_rng,
                     series_truth, stored_geometry, uid, write_mhd)
from .lidc import extra_marks
from .lidc_xml import SliceRef, lidc_xml
from .phantom import make_phantom
from .readers import random_lung_points, simulate_reads

SOURCE = "luna16"
ANN_HEADER = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
CAND_HEADER = ["seriesuid", "coordX", "coordY", "coordZ", "class"]


def _fmt(v: float) -> str:
    return f"{v:.6f}".rstrip("0").rstrip(".")


def _write_csv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        if header:
            w.writerow(header)
        w.writerows(rows)


def _candidates(rng, ph, series_uid, annotated, n_pos, n_neg):
    rows = []
    for nod in annotated:
        for _ in range(n_pos):
            c = np.asarray(nod.center_mm) + rng.normal(0, 0.15 * nod.diameter_mm, 3)
            rows.append([series_uid, *(_fmt(v) for v in c), 1])
    for p in random_lung_points(rng, ph, n_neg, avoid_mm=8.0):
        rows.append([series_uid, *(_fmt(v) for v in p), 0])
    return rows


def write_luna16(out: Path, patients: int, seed: int, size: int, n_slices: int, progress=None) -> list[dict]:
    root = out / SOURCE
    ann, excl, cand, cand2, uids, records = [], [], [], [], [], []
    for i in range(patients):
        rng = patient_rng(seed, SOURCE, i)
        spacing_z = float(rng.choice([1.25, 2.0, 2.5]))
        ph = make_phantom(rng, size=size, n_slices=n_slices, spacing_z=spacing_z,
                          nodules=mixed_cohort_nodules(rng, want_malignant=(i % 2 == 1)))
        flipped = i % 2 == 1 or patients == 1
        arr, label, origin, direction = stored_geometry(ph, flipped)
        if i % 3 == 2:  # padding outside the reconstruction circle, as converted from DICOM
            ny, nx = arr.shape[1:]
            yy, xx = np.mgrid[0:ny, 0:nx]
            outside = (yy - (ny - 1) / 2) ** 2 + (xx - (nx - 1) / 2) ** 2 > (min(nx, ny) / 2 - 0.5) ** 2
            arr = np.where(outside[None], np.int16(-3024), arr).astype(np.int16)
        series_uid = uid(LIDC_UID_ROOT, seed, SOURCE, i, "series")
        study_uid = uid(LIDC_UID_ROOT, seed, SOURCE, i, "study")
        uids.append(series_uid)
        mhd = root / f"subset{i // 2}" / f"{series_uid}.mhd"
        write_mhd(mhd, arr, ph.spacing, origin, direction)

        reads = simulate_reads(rng, ph.nodules, 4, rule="lidc")
        small, non = extra_marks(rng, ph, reads, label)
        nz = arr.shape[0]
        z_values = [ph.origin[2] + k * ph.spacing[2] for k in range(nz)]
        slices = [SliceRef(z_values[k], uid(LIDC_UID_ROOT, seed, SOURCE, i, "sop", k)) for k in range(nz)]
        xml_path = root / "tcia-lidc-xml" / "185" / f"{68 + i:03d}.xml"
        xml_path.parent.mkdir(parents=True, exist_ok=True)
        xml_path.write_text(lidc_xml(series_uid, study_uid, uid(LIDC_UID_ROOT, seed, SOURCE, i, "xml") + ".0",
                                     -321198203 + i, slices, label, reads, small, non), encoding="utf-8")

        ratings, paper, median = lidc_labels(reads, [n.id for n in ph.nodules])
        annotated = [n for n in ph.nodules if len(ratings[n.id]) >= 3]
        for nod in ph.nodules:
            row = [series_uid, *(_fmt(v) for v in nod.center_mm), _fmt(nod.diameter_mm)]
            (ann if nod in annotated else excl).append(row)
        for reader_points in (small, non):
            seen = {tuple(p) for pts in reader_points.values() for p in pts}
            for k, row_, col in sorted(seen):
                zyx = (k, row_, col) if not flipped else (k, arr.shape[1] - 1 - row_, arr.shape[2] - 1 - col)
                excl.append([series_uid, *(_fmt(v) for v in ph.index_to_world(zyx)), -1])
        cand += _candidates(rng, ph, series_uid, annotated, 2, 6)
        cand2 += _candidates(rng, ph, series_uid, annotated, 3, 10)
        # Only LUNA nodules (>= 3 readers) count for the patient label, as the ingest matches them.
        luna_label = int(any(sum(v >= 3 for v in ratings[n.id]) >= 3 for n in annotated))
        records.append({
            "patient_id": series_uid, "label": luna_label, "label_all_lidc_nodules": paper,
            "label_median_rule": median,
            "series": [series_truth(series_uid, mhd, out, ph, origin, direction, flipped=flipped,
                                    xml=xml_path.relative_to(out).as_posix(), padded=(i % 3 == 2))],
            "nodules": nodule_truth(ph, label, z_values, {
                n.id: {"reader_ratings": ratings[n.id], "n_readers": len(ratings[n.id]),
                       "in_annotations_csv": n in annotated} for n in ph.nodules}),
            "quirks": [{"flipped_transform": True}] if flipped else [],
        })
        if progress:
            progress.update(1)

    _write_csv(root / "annotations.csv", ANN_HEADER, ann)
    _write_csv(root / "candidates.csv", CAND_HEADER, cand)
    _write_csv(root / "candidates_V2.csv", CAND_HEADER, cand2)
    _write_csv(root / "sampleSubmission.csv", ["seriesuid", "coordX", "coordY", "coordZ", "probability"],
               [r[:4] + ["0.5"] for r in cand])
    ev = root / "evaluationScript" / "annotations"
    _write_csv(ev / "annotations.csv", ANN_HEADER, ann)
    _write_csv(ev / "annotations_excluded.csv", ANN_HEADER, excl)
    _write_csv(ev / "seriesuids.csv", None, [[u] for u in uids])
    return records
