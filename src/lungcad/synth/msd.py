"""MSD Task06_Lung: ``dataset.json``, ``imagesTr``/``labelsTr`` (uint8 {0,1}) and ``imagesTs``.

Images are stored with an RAS affine ``diag(-sx, -sy, sz)`` (the LPS phantom seen from NIfTI), so
the affine is not the identity; image and label share it.  An AppleDouble ``._lung_*.nii.gz``
junk file sits in ``imagesTr`` as macOS-made archives leave them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .common import nodule_truth, patient_rng, write_nifti_gz
from .phantom import make_phantom

SOURCE = "msd-lung"
TRAIN_IDS = [1, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 20, 22, 23, 25, 26, 27, 28, 29, 31, 33, 34, 36, 37, 38,
             41, 42, 43, 44, 45, 46, 47, 48, 49, 51, 53, 54, 55, 57, 58, 59, 61, 62, 64, 65, 66, 69, 70, 71,
             73, 74, 75, 78, 79, 80, 81, 83, 84, 86, 92, 93, 95, 96]
TEST_IDS = [k for k in range(1, 97) if k not in TRAIN_IDS]


def case_numbers(n_train: int, n_test: int) -> tuple[list[int], list[int]]:
    """Case numbers of the training and test cases: the real Task06 ones while they last, then new
    ones from 97 up (the real task ends at lung_096), so no two patients share a file."""
    extra = iter(range(max(TRAIN_IDS + TEST_IDS) + 1, 10**6))
    train = TRAIN_IDS[:n_train] + [next(extra) for _ in range(n_train - len(TRAIN_IDS))]
    test = TEST_IDS[:n_test] + [next(extra) for _ in range(n_test - len(TEST_IDS))]
    return train, test


def ras_affine(spacing, origin_lps) -> np.ndarray:
    """Voxel (i, j, k) -> RAS mm for an LPS grid with identity direction."""
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = [-origin_lps[0], -origin_lps[1], origin_lps[2]]
    return aff


def write_msd(out: Path, patients: int, seed: int, size: int, n_slices: int, progress=None) -> list[dict]:
    task = out / SOURCE / "Task06_Lung"
    n_train = patients if patients < 2 else patients - max(1, patients // 4)
    training, test, records = [], [], []
    train_numbers, test_numbers = case_numbers(n_train, patients - n_train)
    for i in range(patients):
        rng = patient_rng(seed, SOURCE, i)
        is_train = i < n_train
        case = f"lung_{(train_numbers[i] if is_train else test_numbers[i - n_train]):03d}"
        ph = make_phantom(rng, size=size, n_slices=n_slices, spacing_z=float(rng.choice([1.5, 2.5])),
                          nodules=[{"tumour": True}])
        affine = ras_affine(ph.spacing, ph.origin)
        image = task / ("imagesTr" if is_train else "imagesTs") / f"{case}.nii.gz"
        write_nifti_gz(image, ph.hu, affine)
        entry = {"image": f"./{image.parent.name}/{image.name}"}
        rec = {"patient_id": case, "label": 1, "series": [{
            "series_uid": case, "path": image.relative_to(out).as_posix(), "shape_zyx": list(ph.hu.shape),
            "spacing_xyz": list(ph.spacing), "origin_xyz": list(ph.origin), "affine": affine.tolist()}]}
        tumour = np.isin(ph.label, [n.id for n in ph.nodules if n.tumour]).astype(np.uint8)
        if is_train:
            label = task / "labelsTr" / f"{case}.nii.gz"
            write_nifti_gz(label, tumour, affine)
            entry["label"] = f"./labelsTr/{case}.nii.gz"
            rec["series"][0]["label_path"] = label.relative_to(out).as_posix()
            training.append(entry)
        else:
            test.append(entry["image"])
        z_values = [ph.origin[2] + k * ph.spacing[2] for k in range(ph.hu.shape[0])]
        rec["nodules"] = nodule_truth(ph, ph.label, z_values)
        rec["has_mask"] = is_train
        records.append(rec)
        if progress:
            progress.update(1)
    (task / "imagesTr").mkdir(parents=True, exist_ok=True)
    (task / "imagesTr" / "._lung_001.nii.gz").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    dataset = {"name": "Lung", "description": "Lung and cancer segmentation",
               "reference": "The Cancer Imaging Archive", "licence": "CC-BY-SA 4.0",
               "relase": "1.0 04/05/2018", "tensorImageSize": "3D", "modality": {"0": "CT"},
               "labels": {"0": "background", "1": "cancer"}, "numTraining": len(training),
               "numTest": len(test), "training": training, "test": test}
    (task / "dataset.json").write_text(json.dumps(dataset, indent=4) + "\n")
    return records
