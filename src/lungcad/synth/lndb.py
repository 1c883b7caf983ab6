"""LNDb: ``dataN/LNDb-dddd.mhd``, reader masks ``masks/LNDb-dddd_radR.mhd`` (voxel = reader's
FindingID) and the CSVs of DATASETS.md section 4 (challenge + v4 extras).

Reader malignancy ratings are 4-5 for malignant findings and 1-3 for benign ones, so the rule
"rating > 3" gives the same label under mean, any and majority aggregation.  Non-nodules and
< 3 mm nodules get centroids only and all-zero characteristics (malignancy 0 = not rated).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from .common import mixed_cohort_nodules, nodule_truth, patient_rng, series_truth, write_mhd
from .phantom import make_phantom
from .readers import random_lung_points, reader_region, simulate_reads

SOURCE = "lndb"
NON_NODULE_VOLUME = 4 * math.pi * 1.5 ** 3 / 3  # 14.137167, the challenge's convention
CHAR_KEYS = ["calcification", "internalStructure", "lobulation", "malignancy", "margin", "sphericity",
             "spiculation", "subtlety"]
ALLNODS_HEADER = ["LNDbID", "RadID", "RadFinding", "FindingID", "Nodule", "x", "y", "z", "DiamEq_Rad", "Texture",
                  "Calcification", "InternalStructure", "Lobulation", "Malignancy", "Margin", "Sphericity",
                  "Spiculation", "Subtlety", "Lobe", "TextInstanceID", "TextQuestion", "Pos_Text", "Diam_Text",
                  "NodType", "Caract_Text", "Where"]


def lndb_id(index: int) -> int:
    """Non-contiguous ids, as in the real release."""
    return 1 + 3 * index


def _write(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def write_lndb(out: Path, patients: int, seed: int, size: int, n_slices: int, progress=None) -> list[dict]:
    root = out / SOURCE
    nod_rows, gt_rows, char_rows, all_rows, fl_rows, records = [], [], [], [], [], []
    for i in range(patients):
        rng = patient_rng(seed, SOURCE, i)
        lid = lndb_id(i)
        ph = make_phantom(rng, size=size, n_slices=n_slices, spacing_z=float(rng.choice([1.25, 1.5, 2.0])),
                          nodules=mixed_cohort_nodules(rng, want_malignant=(i % 2 == 0)))
        rad_ids = sorted(int(r) for r in rng.choice([1, 2, 3, 4, 5], size=int(rng.integers(2, 4)), replace=False))
        reads = simulate_reads(rng, ph.nodules, len(rad_ids), rule="lndb", miss_rate=0.2)
        voxel_mm3 = float(np.prod(ph.spacing))
        ct = root / f"data{min(i // 3, 5)}" / f"LNDb-{lid:04d}.mhd"
        write_mhd(ct, ph.hu, ph.spacing, ph.origin)

        # findings[key] = list of (rad_id, finding_id, xyz, nodule, volume, text, chars)
        findings: dict = {}
        extra_points = random_lung_points(rng, ph, 2)
        masks = {}
        for r_idx, rad in enumerate(rad_ids):
            mask = np.zeros(ph.hu.shape, np.uint8)
            fid = 0
            for read in (rd for rd in reads if rd.reader == r_idx):
                fid += 1
                region = reader_region(ph.label, read.nodule_id, read.grow)
                mask[region] = fid
                zz, yy, xx = np.nonzero(region)
                xyz = ph.index_to_world((zz.mean(), yy.mean(), xx.mean()))
                chars = {k: float(read.characteristics[k]) for k in CHAR_KEYS}
                text = float(read.characteristics["texture"])
                findings.setdefault(("nod", read.nodule_id), []).append(
                    (rad, fid, xyz, 1, region.sum() * voxel_mm3, text, chars))
            for p_idx, p in enumerate(extra_points):  # p_idx 0: a < 3 mm nodule, others: non-nodules
                if rng.random() < 0.5:
                    continue
                fid += 1
                small = p_idx == 0
                vol = 4 * math.pi * 1.2 ** 3 / 3 if small else NON_NODULE_VOLUME
                findings.setdefault(("pt", p_idx), []).append(
                    (rad, fid, p + rng.normal(0, 0.3, 3), int(small), vol, 4.0 if small else 0.0,
                     {k: 0.0 for k in CHAR_KEYS}))
            masks[rad] = mask
            write_mhd(root / "masks" / f"LNDb-{lid:04d}_rad{rad}.mhd", mask, ph.spacing, ph.origin)

        merged_mal = {}
        for f_new, (key, group) in enumerate(sorted(findings.items(), key=lambda kv: (kv[0][0] != "nod", kv[0][1])), 1):
            for rad, fid, xyz, nodule, vol, text, chars in group:
                nod_rows.append([lid, rad, fid, *(f"{v:.6f}" for v in xyz), nodule, f"{vol:.6f}", f"{text:g}"])
                char_rows.append([f"{float(lid)}", f"{float(rad)}", f"{float(fid)}", *(f"{chars[k]}" for k in CHAR_KEYS)])
            agr = sum(g[3] for g in group)
            center = np.mean([g[2] for g in group], axis=0)
            nodules_only = [g for g in group if g[3]]
            volume = float(np.mean([g[4] for g in nodules_only])) if agr else NON_NODULE_VOLUME
            text = float(np.mean([g[5] for g in nodules_only])) if agr else 0.0
            rad_list = ",".join(str(g[0]) for g in group)
            fid_list = ",".join(str(g[1]) for g in group)
            gt_rows.append([lid, rad_list, fid_list, f_new, *(f"{v:.6f}" for v in center), agr, int(agr > 0),
                            f"{volume:.6f}", text])
            rated = [g[6] for g in group if g[6]["malignancy"] > 0]
            means = {k: (float(np.mean([c[k] for c in rated])) if rated else 0.0) for k in CHAR_KEYS}
            diam = 2 * (3 * volume / (4 * math.pi)) ** (1 / 3)
            all_rows.append([lid, rad_list, fid_list, f_new, ",".join(str(g[3]) for g in group),
                             *(f"{v:.6f}" for v in center), diam, text, means["calcification"],
                             means["internalStructure"], means["lobulation"], means["malignancy"], means["margin"],
                             means["sphericity"], means["spiculation"], means["subtlety"],
                             int(rng.integers(1, 6)), "", "", "", "", "", "", "RadAnnotation"])
            fl_rows.append([lid, f_new, int(agr > 0), volume, text if agr else "", "RadAnnotation"])
            if key[0] == "nod":
                merged_mal[key[1]] = [g[6]["malignancy"] for g in group]
        label = int(any(np.mean(v) > 3 for v in merged_mal.values()))
        z_values = [ph.origin[2] + k * ph.spacing[2] for k in range(ph.hu.shape[0])]
        records.append({
            "patient_id": f"LNDb-{lid:04d}", "lndb_id": lid, "label": label, "rad_ids": rad_ids,
            "series": [series_truth(f"LNDb-{lid:04d}", ct, out, ph, ph.origin, (1, 0, 0, 0, 1, 0, 0, 0, 1),
                                    masks=[(root / "masks" / f"LNDb-{lid:04d}_rad{r}.mhd").relative_to(out).as_posix()
                                           for r in rad_ids])],
            "nodules": nodule_truth(ph, ph.label, z_values, {
                nid: {"reader_ratings": v, "n_readers": len(v)} for nid, v in merged_mal.items()}),
        })
        if progress:
            progress.update(1)

    csv_dir = root / "trainset_csv"
    _write(csv_dir / "trainNodules.csv", ["LNDbID", "RadID", "FindingID", "x", "y", "z", "Nodule", "Volume", "Text"],
           nod_rows)
    _write(csv_dir / "trainNodules_gt.csv", ["LNDbID", "RadID", "RadFindingID", "FindingID", "x", "y", "z",
                                             "AgrLevel", "Nodule", "Volume", "Text"], gt_rows)
    _write(csv_dir / "chars_trainNodules.csv", ["LNDbID", "RadID", "FindingID", *CHAR_KEYS], char_rows)
    _write(csv_dir / "allNods.csv", ALLNODS_HEADER, all_rows)
    _write(csv_dir / "rad2Fleischner.csv", ["LNDbID", "FindingID", "Nodule", "Volume", "Text", "Where"], fl_rows)
    _write(csv_dir / "trainCTs.csv", ["LNDbID"], [[lndb_id(i)] for i in range(patients)])
    folds = [[lndb_id(i) for i in range(patients) if i % 4 == f] for f in range(4)]
    depth = max(len(f) for f in folds)
    _write(csv_dir / "trainFolds.csv", [f"Fold{f}" for f in range(4)],
           [[f[r] for f in folds if r < len(f)] for r in range(depth)])  # ragged: short rows
    return records
