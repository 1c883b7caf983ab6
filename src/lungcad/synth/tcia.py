"""TCIA collections in the NBIA Data Retriever layout: LungCT-Diagnosis and Lung-PET-CT-Dx.

``manifest-<ts>/<Collection>/<PatientID>/<study>/<series>/1-NN.dcm`` + ``metadata.csv`` (DATASETS.md
section 7).  Lung-PET-CT-Dx adds PASCAL VOC boxes ``Annotation/<L>dddd/<SOPInstanceUID>.xml`` in
the byte layout of the real files, a second CT series for some patients, PET series (to be
ignored) and three label quirks: one ``Q`` label, one lowercase label and one orphan XML.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import ndimage

from .common import nodule_truth, patient_rng, series_truth, uid
from .dicom_writer import SeriesOptions, write_series
from .phantom import make_phantom

NBIA_HEADER = ["Series UID", "Collection", "3rd Party Analysis", "Data Description URI", "Subject ID", "Study UID",
               "Study Description", "Study Date", "Series Description", "Manufacturer", "Modality", "SOP Class Name",
               "SOP Class UID", "Number of Images", "File Size", "File Location", "Download Timestamp"]
PETCT_ROOT = "1.3.6.1.4.1.14519.5.2.1.6655.2359."
DIAG_ROOT = "1.3.6.1.4.1.14519.5.2.1.4320.5030."
LETTERS = ("A", "B", "E", "G")

VOC_TEMPLATE = """<annotation verified="no">
  <folder>Unknow</folder>
  <filename>Unknow</filename>
  <path>Unknow</path>
  <source>Unknow<database>Unknown</database>
  </source>
  <size>
    <width>{width}</width>
    <height>{height}</height>
    <depth>1</depth>
  </size>
  <segmented>0</segmented>
  <object>
    <name>{name}</name>
    <pose>Unspecified</pose>
    <truncated>0</truncated>
    <Difficult>0</Difficult>
    <bndbox>
      <xmin>{xmin}</xmin>
      <ymin>{ymin}</ymin>
      <xmax>{xmax}</xmax>
      <ymax>{ymax}</ymax>
    </bndbox>
  </object>
</annotation>"""


def study_folder(date_mdy: str, description: str, study_uid: str) -> str:
    return f"{date_mdy}-NA-{description}-{study_uid[-5:]}"


def series_folder(number: int, description: str, series_uid: str) -> str:
    return f"{number:.6f}-{description or 'NA'}-{series_uid[-5:]}"


def _metadata_row(collection, doi, pid, study_uid, study_desc, date_mdy, series_uid, series_desc, manufacturer,
                  modality, folder: Path, collection_root: Path, n_images) -> list:
    size_mb = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
    sop_name, sop_uid = (("Positron Emission Tomography Image Storage", "1.2.840.10008.5.1.4.1.1.128")
                         if modality == "PT" else ("CT Image Storage", "1.2.840.10008.5.1.4.1.1.2"))
    return [series_uid, collection, "null", doi, pid, study_uid, study_desc, date_mdy, series_desc, manufacturer,
            modality, sop_name, sop_uid, n_images, f"{size_mb:.2f} MB",
            "./" + folder.relative_to(collection_root).as_posix(), "2023-02-03T23:47:38.712"]


def _write_metadata(path: Path, rows) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(NBIA_HEADER)
        w.writerows(rows)


def write_lungct_diagnosis(out: Path, patients: int, seed: int, size: int, n_slices: int, progress=None):
    source, collection = "lungct-diagnosis", "LungCT-Diagnosis"
    manifest = out / source / f"manifest-{1600000000000 + seed}"
    rows, records = [], []
    for i in range(patients):
        rng = patient_rng(seed, source, i)
        pid = f"R_{4 + 3 * i:03d}"
        ph = make_phantom(rng, size=size, n_slices=n_slices, spacing_z=float(rng.choice([2.5, 3.0])),
                          nodules=[{"tumour": True}])
        study_uid = uid(DIAG_ROOT, seed, source, i, "study")
        series_uid = uid(DIAG_ROOT, seed, source, i, "series")
        date = f"{1 + i % 12:02d}-{1 + (7 * i) % 28:02d}-{1999 + i % 8}"
        folder = (manifest / collection / pid / study_folder(date, "CT CHEST W CONTRAST", study_uid)
                  / series_folder(2, "Recon 2 CHEST", series_uid))
        opt = SeriesOptions(patient_id=pid, study_uid=study_uid, series_uid=series_uid, uid_prefix=DIAG_ROOT,
                            signed=False, padding_hu=-1024.0 if i % 2 else None, descending=bool(i % 2),
                            manufacturer="SIEMENS", model="Sensation 16", study_date=date[6:] + date[:2] + date[3:5],
                            study_description="CT CHEST W CONTRAST", series_description="Recon 2 CHEST")
        written = write_series(folder, ph.hu, ph.spacing, ph.origin, opt)
        rows.append(_metadata_row(collection, "https://doi.org/10.7937/K9/TCIA.2015.A6V7JIWX", pid, study_uid,
                                  "CT CHEST W CONTRAST", date, series_uid, "Recon 2 CHEST", "SIEMENS", "CT",
                                  folder, manifest, len(written)))
        z_values = [ph.origin[2] + k * ph.spacing[2] for k in range(ph.hu.shape[0])]
        records.append({"patient_id": pid, "label": 1, "subtype": "adenocarcinoma",
                        "series": [series_truth(series_uid, folder, out, ph, ph.origin, (1, 0, 0, 0, 1, 0, 0, 0, 1),
                                                study_uid=study_uid)],
                        "nodules": nodule_truth(ph, ph.label, z_values)})
        if progress:
            progress.update(1)
    _write_metadata(manifest / "metadata.csv", rows)
    return records


def _pet_volume(ph, size_pet: int) -> tuple[np.ndarray, tuple]:
    """A coarse PET-like uptake map (body background, hot tumour) on a size_pet grid, same FOV."""
    uptake = np.where(ph.hu > -500, 300.0, 20.0) + np.where(ph.label > 0, 2500.0, 0.0)
    factor = size_pet / ph.hu.shape[1]
    pet = ndimage.zoom(uptake, (1, factor, factor), order=1)
    pet = ndimage.gaussian_filter(pet, (0.7, 1.2, 1.2))
    spacing = (ph.spacing[0] / factor, ph.spacing[1] / factor, ph.spacing[2])
    return np.clip(pet, 0, 4095).astype(np.int16), spacing


def write_lung_pet_ct_dx(out: Path, patients: int, seed: int, size: int, n_slices: int, progress=None):
    source, collection = "lung-pet-ct-dx", "Lung-PET-CT-Dx"
    manifest = out / source / f"manifest-{1675442780019 + seed}"
    ann_root = out / source / "Annotation"
    rows, records = [], []
    for i in range(patients):
        rng = patient_rng(seed, source, i)
        letter = LETTERS[i % len(LETTERS)]
        code = f"{letter}{i + 1:04d}"
        pid = f"Lung_Dx-{code}"
        ph = make_phantom(rng, size=size, n_slices=n_slices, spacing_z=5.0, nodules=[{"tumour": True}])
        study_uid = uid(PETCT_ROOT, seed, source, i, "study")
        date = f"04-{1 + (3 * i) % 28:02d}-{2007 + i % 4}"
        study_dir = manifest / collection / pid / study_folder(date, "Chest", study_uid)
        dicom_date = date[6:] + date[:2] + date[3:5]
        n_ct = 2 if i % 2 == 0 else 1
        ct_series = []
        for s in range(n_ct):
            series_uid = uid(PETCT_ROOT, seed, source, i, "series", s)
            folder = study_dir / series_folder(2 + s, "5mm", series_uid)
            opt = SeriesOptions(patient_id=pid, study_uid=study_uid, series_uid=series_uid, uid_prefix=PETCT_ROOT,
                                descending=True, manufacturer="Philips", model="Brilliance16", study_date=dicom_date,
                                study_description="Chest", series_description="5mm", series_number=2 + s,
                                slice_thickness=5.0, kernel="L", extra={"SpacingBetweenSlices": "5"})
            written = write_series(folder, ph.hu, ph.spacing, ph.origin, opt)
            ct_series.append((series_uid, folder, written))
            rows.append(_metadata_row(collection, "https://doi.org/10.7937/TCIA.2020.NNC20461", pid, study_uid,
                                      "Chest", date, series_uid, "5mm", "Philips", "CT", folder, manifest,
                                      len(written)))
        pet_uid = None
        if i % 2 == 1 or patients == 1:
            pet, pet_spacing = _pet_volume(ph, 128)
            pet_uid = uid(PETCT_ROOT, seed, source, i, "pet")
            folder = study_dir / series_folder(4, "PET WB", pet_uid)
            opt = SeriesOptions(patient_id=pid, study_uid=study_uid, series_uid=pet_uid, uid_prefix=PETCT_ROOT,
                                modality="PT", intercept=0.0, slope=1.0, descending=True, manufacturer="Philips",
                                model="GEMINI TF", study_date=dicom_date, study_description="Chest",
                                series_description="PET WB", series_number=4)
            written = write_series(folder, pet, pet_spacing, ph.origin, opt)
            rows.append(_metadata_row(collection, "https://doi.org/10.7937/TCIA.2020.NNC20461", pid, study_uid,
                                      "Chest", date, pet_uid, "PET WB", "Philips", "PT", folder, manifest,
                                      len(written)))

        # VOC boxes on every tumour slice, alternating between the CT series when there are two.
        boxes = []
        tumour = np.isin(ph.label, [n.id for n in ph.nodules if n.tumour])
        ks = [int(k) for k in np.nonzero(tumour.reshape(tumour.shape[0], -1).any(axis=1))[0]]
        for n_box, k in enumerate(ks):
            series_uid, _, written = ct_series[n_box % n_ct]
            sop = next(w.sop_uid for w in written if w.index == k)
            rr, cc = np.nonzero(tumour[k])
            name = letter
            if i == 0 and n_box == 0:
                name = "Q"
            elif i == 1 % patients and n_box == min(1, len(ks) - 1):
                name = letter.lower()
            box = {"xmin": int(cc.min()), "ymin": int(rr.min()), "xmax": int(cc.max()), "ymax": int(rr.max())}
            boxes.append({"sop_uid": sop, "series_uid": series_uid, "slice": k, "name": name, **box})
        if i == 0 and boxes:
            boxes.append({**boxes[-1], "sop_uid": uid(PETCT_ROOT, seed, source, i, "orphan"), "series_uid": None,
                          "slice": None, "name": letter, "orphan": True})
        (ann_root / code).mkdir(parents=True, exist_ok=True)
        for b in boxes:
            xml = VOC_TEMPLATE.format(width=size, height=size, name=b["name"], xmin=b["xmin"], ymin=b["ymin"],
                                      xmax=b["xmax"], ymax=b["ymax"])
            (ann_root / code / f"{b['sop_uid']}.xml").write_text(xml, encoding="utf-8")

        z_values = [ph.origin[2] + k * ph.spacing[2] for k in range(ph.hu.shape[0])]
        records.append({
            "patient_id": pid, "label": 1, "histology_letter": letter,
            "series": [series_truth(su, f, out, ph, ph.origin, (1, 0, 0, 0, 1, 0, 0, 0, 1), study_uid=study_uid)
                       for su, f, _ in ct_series],
            "ignored_series": [pet_uid] if pet_uid else [],
            "boxes": boxes,
            "nodules": nodule_truth(ph, ph.label, z_values)})
        if progress:
            progress.update(1)
    _write_metadata(manifest / "metadata.csv", rows)
    lic = manifest / collection / "LICENSE"
    lic.write_text("License\n\nSynthetic phantom data generated by lungcad (no real patient data).\n")
    return records
