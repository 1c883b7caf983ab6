"""DICOM-based adapters (lidc-idri, lungct-diagnosis, lung-pet-ct-dx) on tiny hand-made trees,
and bad inputs (truncated DICOM, no CT, XML naming missing slices).

The fixture writers here are imported by test_ingest_core.py as well.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from lungcad.errors import InputError, LungcadError
from lungcad.ingest import IngestOptions, get_adapter, run_ingest

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
SIZE = 32
SPACING = 0.7
DZ = 2.5


def uid(*parts) -> str:
    return str(generate_uid(prefix="1.2.826.0.1.3680043.8.498.", entropy_srcs=[str(p) for p in parts]))


def phantom(n_slices: int = 5, seed: int = 0) -> np.ndarray:
    """HU (z, y, x): air outside a soft-tissue body with lung inside and a +40 HU blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    hu = np.full((n_slices, SIZE, SIZE), -1000.0)
    body = (yy - 16) ** 2 + (xx - 16) ** 2 < 15 ** 2
    lung = (yy - 16) ** 2 + (xx - 16) ** 2 < 12 ** 2
    hu[:, body] = 30
    hu[:, lung] = -850
    hu[1:4, 12:20, 12:20] = 40
    return np.round(hu + rng.normal(0, 5, hu.shape))


def write_series(folder: Path, patient: str, series_uid: str, hu: np.ndarray, z0: float = -100.0,
                 modality: str = "CT", study_uid: str | None = None) -> list[tuple[Path, str, float]]:
    """One file per slice, uint16 with intercept -1024, InstanceNumber 1 = the highest z (as the
    real Lung-PET-CT-Dx series). Returns (path, SOPInstanceUID, z) in array order (z ascending)."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or uid(patient, "study")
    n = hu.shape[0]
    out = []
    for k in range(n):
        z = z0 + k * DZ
        sop = uid(series_uid, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_STORAGE if modality == "CT" else PET_STORAGE
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.PatientID = patient
        ds.Modality = modality
        ds.InstanceNumber = str(n - k)
        ds.ImagePositionPatient = ["-11.2", "-11.2", f"{z:.6f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = [f"{SPACING}", f"{SPACING}"]
        ds.SliceThickness = f"{DZ:.2f}"
        ds.Rows, ds.Columns = SIZE, SIZE
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        ds.PixelData = np.clip(hu[k] + 1024, 0, 4095).astype("<u2").tobytes()
        path = folder / f"1-{n - k:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append((path, sop, z))
    return out


# ----------------------------------------------------------------------------- LIDC fixture

def square(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    """Outline pixels of the square [x0, x1] x [y0, y1], in drawing order."""
    top = [(x, y0) for x in range(x0, x1 + 1)]
    right = [(x1, y) for y in range(y0 + 1, y1 + 1)]
    bottom = [(x, y1) for x in range(x1 - 1, x0 - 1, -1)]
    left = [(x0, y) for y in range(y1 - 1, y0, -1)]
    return top + right + bottom + left


def roi_xml(z: float, sop: str, points, inclusion: str = "TRUE") -> str:
    edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in points)
    return (f"<roi><imageZposition>{z:.6f} </imageZposition><imageSOP_UID>{sop}</imageSOP_UID>"
            f"<inclusion>{inclusion}</inclusion>{edges}</roi>")


def lidc_xml(series_uid: str, sessions: list[list[str]]) -> str:
    """A read file; ``sessions`` = per reader a list of <unblindedReadNodule> strings."""
    body = "".join(f"<readingSession><annotationVersion>3.12</annotationVersion>"
                   f"<servicingRadiologistID>rad{i}</servicingRadiologistID>{''.join(n)}"
                   f"</readingSession>" for i, n in enumerate(sessions))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<LidcReadMessage uid="1.2.3" xmlns="http://www.nih.gov">'
            f"<ResponseHeader><SeriesInstanceUid>{series_uid}</SeriesInstanceUid></ResponseHeader>"
            f"{body}</LidcReadMessage>")


def nodule_xml(nodule_id: str, malignancy: int | None, rois: list[str]) -> str:
    chars = (f"<characteristics><subtlety>5</subtlety><malignancy>{malignancy}</malignancy></characteristics>"
             if malignancy is not None else "")
    return f"<unblindedReadNodule><noduleID>{nodule_id}</noduleID>{chars}{''.join(rois)}</unblindedReadNodule>"


def make_lidc_patient(root: Path, patient: str, ratings=(3, 3, 4), missing_roi: bool = False,
                      seed: int = 0) -> dict:
    """A LIDC-style series (5 slices) + XML: readers 0-2 contour the blob on slices 1-3 with the
    squares [10,20], [11,21], [10,20]; reader 3 marks a < 3 mm nodule elsewhere."""
    series_uid = uid(patient, "series")
    folder = root / patient / uid(patient, "study") / series_uid
    slices = write_series(folder, patient, series_uid, phantom(5, seed))
    boxes = [(10, 10, 20, 20), (11, 11, 21, 21), (10, 10, 20, 20)]
    sessions = []
    for reader, (box, rating) in enumerate(zip(boxes, ratings)):
        rois = [roi_xml(slices[k][2], slices[k][1], square(*box)) for k in (1, 2, 3)]
        if missing_roi and reader == 0:  # a contour on a slice that is not in the series
            rois.append(roi_xml(-200.0, uid("missing"), square(*box)))
        sessions.append([nodule_xml(f"N{reader}", rating, rois)])
    sessions.append([nodule_xml("small", None, [roi_xml(slices[4][2], slices[4][1], [(5, 5)])])])
    (folder / "001.xml").write_text(lidc_xml(series_uid, sessions))
    return {"series_uid": series_uid, "folder": folder, "slices": slices}


# ----------------------------------------------------------------------------- Lung-PET-CT-Dx fixture

VOC = """<annotation verified="no">
  <folder>Unknow</folder>
  <filename>Unknow</filename>
  <path>Unknow</path>
  <source>Unknow<database>Unknown</database>
  </source>
  <size>
    <width>{w}</width>
    <height>{h}</height>
    <depth>1</depth>
  </size>
  <segmented>0</segmented>
  <object>
    <name>{name}</name>
    <pose>Unspecified</pose>
    <truncated>0</truncated>
    <Difficult>0</Difficult>
    <bndbox>
      <xmin>{x0}</xmin>
      <ymin>{y0}</ymin>
      <xmax>{x1}</xmax>
      <ymax>{y1}</ymax>
    </bndbox>
  </object>
</annotation>
"""


def make_petct_tree(root: Path, patient: str = "Lung_Dx-A9001") -> dict:
    """manifest-1/Lung-PET-CT-Dx/<patient>/study/{CT, CT, PT} + Annotation/<A9001>/<uid>.xml:
    two boxes in CT 1, one 'Q' box in CT 2, one orphan XML and one XML on a PET slice."""
    base = root / "manifest-1" / "Lung-PET-CT-Dx" / patient / "01-01-2000-NA-Chest-00001"
    study = uid(patient, "study")
    ct1 = write_series(base / "2.000000-5mm-00002", patient, uid(patient, "ct1"), phantom(5, 1), study_uid=study)
    ct2 = write_series(base / "3.000000-5mm-00003", patient, uid(patient, "ct2"), phantom(5, 2), z0=-101.0, study_uid=study)
    pet = write_series(base / "4.000000-PET-00004", patient, uid(patient, "pt"), phantom(3, 3), modality="PT", study_uid=study)
    ann = root / "Annotation" / patient.split("-", 1)[1]
    ann.mkdir(parents=True)
    boxes = {ct1[1][1]: ("A", 10, 12, 19, 20), ct1[2][1]: ("A", 0, 0, 40, 3),  # 2nd box is clipped
             ct2[3][1]: ("Q", 5, 6, 7, 9), uid("orphan"): ("A", 1, 1, 2, 2), pet[0][1]: ("A", 1, 1, 2, 2)}
    for sop, (name, x0, y0, x1, y1) in boxes.items():
        (ann / f"{sop}.xml").write_text(VOC.format(w=SIZE, h=SIZE, name=name, x0=x0, y0=y0, x1=x1, y1=y1))
    return {"ct1": ct1, "ct2": ct2, "pet": pet, "ann": ann,
            "ct1_uid": uid(patient, "ct1"), "ct2_uid": uid(patient, "ct2")}


def read_rows(bench: Path) -> list[dict]:
    with open(bench / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def png(bench: Path, relative: str) -> np.ndarray:
    return np.asarray(Image.open(bench / relative))


def own_lung_window(path: Path) -> np.ndarray:
    """The lung window computed independently from pydicom, as the contract states it."""
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return np.floor(np.clip((hu + 1200) / 1200 * 255, 0, 255) + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- tests: LIDC

@pytest.mark.parametrize("ratings, rule, expected", [
    ((3, 3, 4), "paper", 1), ((3, 4, 2), "paper", 0), ((5, 5, 4), "median", 1), ((1, 2, 2), "median", 0)])
def test_lidc_patient_label_follows_the_rule(tmp_path, ratings, rule, expected):
    make_lidc_patient(tmp_path / "raw", "LIDC-IDRI-9001", ratings)
    run_ingest({"lidc-idri": tmp_path / "raw"}, tmp_path / "bench", IngestOptions(label_rule=rule), progress=False)
    rows = read_rows(tmp_path / "bench")
    assert {r["label"] for r in rows} == {str(expected)}
    assert {r["patient_id"] for r in rows} == {"lidc-idri/LIDC-IDRI-9001"}


def test_lidc_median_three_excludes_the_patient(tmp_path):
    make_lidc_patient(tmp_path / "raw", "LIDC-IDRI-9001", (3, 3, 4))
    make_lidc_patient(tmp_path / "raw", "LIDC-IDRI-9002", (5, 5, 4), seed=1)
    report = run_ingest({"lidc-idri": tmp_path / "raw"}, tmp_path / "bench",
                        IngestOptions(label_rule="median"), progress=False)
    assert {r["patient_id"] for r in read_rows(tmp_path / "bench")} == {"lidc-idri/LIDC-IDRI-9002"}
    excluded = report["sources"]["lidc-idri"]["excluded_patients"]
    assert [e["patient_id"] for e in excluded] == ["lidc-idri/LIDC-IDRI-9001"]


def test_lidc_consensus_mask_on_the_contoured_slices(tmp_path):
    info = make_lidc_patient(tmp_path / "raw", "LIDC-IDRI-9001")
    run_ingest({"lidc-idri": tmp_path / "raw"}, tmp_path / "bench", IngestOptions(), progress=False)
    rows = {int(r["slice_index"]): r for r in read_rows(tmp_path / "bench")}
    assert sorted(k for k, r in rows.items() if int(r["nodule_area_px"]) > 0) == [1, 2, 3]
    for k in (1, 2, 3):
        mask = png(tmp_path / "bench", rows[k]["mask_path"])
        # Interiors (contour excluded): readers 0 and 2 -> [11, 19]^2, reader 1 -> [12, 20]^2.
        # At least 2 of 3 readers: [11, 19]^2 = 81 pixels.
        expected = np.zeros((SIZE, SIZE), np.uint8)
        expected[11:20, 11:20] = 255
        np.testing.assert_array_equal(mask, expected)
        assert rows[k]["nodule_area_px"] == "81"
        assert rows[k]["nodule_label"] == "1"
        assert float(rows[k]["z_mm"]) == pytest.approx(info["slices"][k][2])
    assert rows[0]["nodule_label"] == "" and rows[0]["mask_source"] == "gt"


def test_lidc_consensus_one_keeps_only_unanimous_pixels(tmp_path):
    make_lidc_patient(tmp_path / "raw", "LIDC-IDRI-9001")
    run_ingest({"lidc-idri": tmp_path / "raw"}, tmp_path / "bench", IngestOptions(consensus=1.0), progress=False)
    areas = {int(r["slice_index"]): int(r["nodule_area_px"]) for r in read_rows(tmp_path / "bench")}
    assert areas[2] == 8 * 8  # [12, 19]^2


def test_lidc_xml_naming_missing_slices_is_noted_not_fatal(tmp_path):
    make_lidc_patient(tmp_path / "raw", "LIDC-IDRI-9001", missing_roi=True)
    report = run_ingest({"lidc-idri": tmp_path / "raw"}, tmp_path / "bench", IngestOptions(), progress=False)
    notes = report["sources"]["lidc-idri"]["notes"]
    assert any("not in this series" in n for series_notes in notes.values() for n in series_notes)
    assert len(read_rows(tmp_path / "bench")) == 5


def test_lidc_orphan_xml_and_series_without_xml_are_reported(tmp_path):
    info = make_lidc_patient(tmp_path / "raw", "LIDC-IDRI-9001")
    (tmp_path / "raw" / "stray.xml").write_text(lidc_xml(uid("nowhere"), [[]]))
    bare = tmp_path / "raw" / "LIDC-IDRI-9003" / "s" / "x"
    write_series(bare, "LIDC-IDRI-9003", uid("bare"), phantom(2))
    report = run_ingest({"lidc-idri": tmp_path / "raw"}, tmp_path / "bench", IngestOptions(), progress=False)
    reasons = " | ".join(s["reason"] for s in report["sources"]["lidc-idri"]["skipped"])
    assert "orphan XML" in reasons and "no radiologist XML" in reasons
    assert {r["series_uid"] for r in read_rows(tmp_path / "bench")} == {info["series_uid"]}


def test_lidc_png_is_the_lung_window_of_the_dicom(tmp_path):
    info = make_lidc_patient(tmp_path / "raw", "LIDC-IDRI-9001")
    run_ingest({"lidc-idri": tmp_path / "raw"}, tmp_path / "bench", IngestOptions(), progress=False)
    rows = {int(r["slice_index"]): r for r in read_rows(tmp_path / "bench")}
    for k, (path, _, _) in enumerate(info["slices"]):
        np.testing.assert_array_equal(png(tmp_path / "bench", rows[k]["image_path"]), own_lung_window(path))


# ----------------------------------------------------------------------------- tests: Lung-PET-CT-Dx

def test_petct_boxes_map_to_slices_in_both_series(tmp_path):
    info = make_petct_tree(tmp_path / "raw")
    report = run_ingest({"lung-pet-ct-dx": tmp_path / "raw"}, tmp_path / "bench", IngestOptions(), progress=False)
    rows = read_rows(tmp_path / "bench")
    assert len(rows) == 10 and {r["label"] for r in rows} == {"1"}
    areas = {(r["series_uid"], int(r["slice_index"])): int(r["nodule_area_px"]) for r in rows}
    assert areas[(info["ct1_uid"], 1)] == 10 * 9      # x 10..19, y 12..20 inclusive
    assert areas[(info["ct1_uid"], 2)] == SIZE * 4    # x 0..40 clipped to the image, y 0..3
    assert areas[(info["ct2_uid"], 3)] == 3 * 4       # the 'Q' box is kept
    assert sum(areas.values()) == 90 + 128 + 12
    mask = png(tmp_path / "bench", next(r["mask_path"] for r in rows
                                        if r["series_uid"] == info["ct1_uid"] and r["slice_index"] == "1"))
    assert mask[12:21, 10:20].min() == 255 and mask.sum() == 90 * 255
    src = report["sources"]["lung-pet-ct-dx"]
    reasons = " | ".join(s["reason"] for s in src["skipped"])
    assert "orphan annotation" in reasons and "non-CT slice" in reasons and "modality PT" in reasons
    assert any("Q x1" in n for notes in src["notes"].values() for n in notes)
    assert {r["mask_source"] for r in rows} == {"box"}


def test_petct_root_may_be_the_manifest_folder(tmp_path):
    make_petct_tree(tmp_path / "raw")
    run_ingest({"lung-pet-ct-dx": tmp_path / "raw" / "manifest-1"}, tmp_path / "bench", IngestOptions(), progress=False)
    assert sum(int(r["nodule_area_px"]) for r in read_rows(tmp_path / "bench")) == 90 + 128 + 12


def test_petct_series_without_boxes_has_no_mask(tmp_path):
    info = make_petct_tree(tmp_path / "raw")
    for path in info["ann"].glob("*.xml"):
        if path.stem == info["ct2"][3][1]:
            path.unlink()
    run_ingest({"lung-pet-ct-dx": tmp_path / "raw"}, tmp_path / "bench", IngestOptions(), progress=False)
    ct2_rows = [r for r in read_rows(tmp_path / "bench") if r["series_uid"] == info["ct2_uid"]]
    assert {r["mask_source"] for r in ct2_rows} == {"none"} and {r["mask_path"] for r in ct2_rows} == {""}


# ----------------------------------------------------------------------------- tests: LungCT-Diagnosis

def test_lungct_diagnosis_every_ct_series_is_malignant_without_mask(tmp_path):
    write_series(tmp_path / "raw" / "R_004" / "st" / "s1", "R_004", uid("R_004", 1), phantom(3))
    write_series(tmp_path / "raw" / "R_005" / "st" / "s1", "R_005", uid("R_005", 1), phantom(2))
    write_series(tmp_path / "raw" / "R_005" / "st" / "pt", "R_005", uid("R_005", 2), phantom(2), modality="PT")
    report = run_ingest({"lungct-diagnosis": tmp_path / "raw"}, tmp_path / "bench", IngestOptions(), progress=False)
    rows = read_rows(tmp_path / "bench")
    assert len(rows) == 5
    assert {r["label"] for r in rows} == {"1"} and {r["mask_source"] for r in rows} == {"none"}
    assert {r["mask_path"] for r in rows} == {""} and not (tmp_path / "bench" / "masks").exists()
    assert report["sources"]["lungct-diagnosis"]["labels"] == {"1": 2}
    assert [s["reason"][:11] for s in report["sources"]["lungct-diagnosis"]["skipped"]] == ["modality PT"]


# ----------------------------------------------------------------------------- tests: bad inputs

def test_truncated_dicom_skips_that_series_only(tmp_path):
    bad = write_series(tmp_path / "raw" / "R_001" / "st" / "s1", "R_001", uid("R_001"), phantom(3))
    write_series(tmp_path / "raw" / "R_002" / "st" / "s1", "R_002", uid("R_002"), phantom(3))
    data = bad[1][0].read_bytes()
    bad[1][0].write_bytes(data[: len(data) // 2])
    report = run_ingest({"lungct-diagnosis": tmp_path / "raw"}, tmp_path / "bench", IngestOptions(), progress=False)
    assert {r["patient_id"] for r in read_rows(tmp_path / "bench")} == {"lungct-diagnosis/R_002"}
    (skip,) = report["sources"]["lungct-diagnosis"]["skipped"]
    assert "R_001" in skip["item"] and bad[1][0].name in skip["reason"] and "\n" not in skip["reason"]


@pytest.mark.parametrize("content", ["pet-only", "no-dicom"])
def test_folder_without_ct_is_one_clear_error_and_keeps_the_old_manifest(tmp_path, content):
    good = tmp_path / "good"
    write_series(good / "R_001" / "st" / "s1", "R_001", uid("R_001"), phantom(2))
    bench = tmp_path / "bench"
    run_ingest({"lungct-diagnosis": good}, bench, IngestOptions(), progress=False)
    before = (bench / "manifest.csv").read_bytes()
    bad = tmp_path / "bad"
    if content == "pet-only":
        write_series(bad / "P" / "st" / "pt", "P", uid("P"), phantom(2), modality="PT")
    else:
        (bad / "notes").mkdir(parents=True)
        (bad / "notes" / "readme.txt").write_text("nothing here")
    with pytest.raises(InputError) as err:
        run_ingest({"lungct-diagnosis": bad}, bench, IngestOptions(), progress=False)
    assert "\n" not in str(err.value) and "no series could be ingested" in str(err.value)
    assert (bench / "manifest.csv").read_bytes() == before
    report = json.loads((bench / "ingest_report.json").read_text())
    assert report["sources"]["lungct-diagnosis"]["skipped"]


def test_missing_root_and_unknown_source_are_user_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        run_ingest({"lidc-idri": tmp_path / "nope"}, tmp_path / "bench", IngestOptions(), progress=False)
    with pytest.raises(LungcadError, match="valid sources"):
        run_ingest({"lidc": tmp_path}, tmp_path / "bench", IngestOptions(), progress=False)


def test_adapters_discover_is_cheap_and_picklable(tmp_path):
    import pickle
    make_petct_tree(tmp_path / "raw")
    tasks, _ = get_adapter("lung-pet-ct-dx").discover(tmp_path / "raw", IngestOptions())
    assert len(tasks) == 2
    assert pickle.loads(pickle.dumps(tasks))[0].series_uid == tasks[0].series_uid


# ----------------------------------------------------------------------------- synthetic trees (lungcad.synth)

@pytest.fixture(scope="module")
def synth_tree(tmp_path_factory):
    synth = pytest.importorskip("lungcad.synth")
    if not hasattr(synth, "generate"):
        pytest.skip("lungcad.synth.generate is not available yet")
    out = tmp_path_factory.mktemp("synth")
    synth.generate(out, patients=2, seed=42, size=64, n_slices=16,
                   sources=["lidc-idri", "lungct-diagnosis", "lung-pet-ct-dx"], progress=False)
    return out, json.loads((out / "synth_truth.json").read_text())


@pytest.mark.parametrize("rule, key", [("paper", "label"), ("median", "label_median_rule")])
def test_synth_labels_and_nodule_slices_match_the_truth(synth_tree, tmp_path, rule, key):
    raw, truth = synth_tree
    sources = {s: raw / truth["sources"][s]["root"] for s in ("lidc-idri", "lungct-diagnosis", "lung-pet-ct-dx")}
    run_ingest(sources, tmp_path / "bench", IngestOptions(label_rule=rule), progress=False)
    rows = read_rows(tmp_path / "bench")
    for source in sources:
        for patient in truth["sources"][source]["patients"]:
            pid = f"{source}/{patient['patient_id']}"
            mine = [r for r in rows if r["patient_id"] == pid]
            expected = patient.get(key, patient["label"]) if source == "lidc-idri" else patient["label"]
            if expected is None:
                assert not mine, f"{pid} should be excluded under the {rule} rule"
                continue
            assert {r["label"] for r in mine} == {str(expected)}, pid
            if source == "lidc-idri":
                truth_z = {round(z, 2) for n in patient["nodules"] for z in n["z_mm"]}
                marked = {round(float(r["z_mm"]), 2) for r in mine if int(r["nodule_area_px"]) > 0}
                assert marked <= truth_z and bool(marked) == bool(truth_z), pid
            if source == "lung-pet-ct-dx":
                boxes = {(b["series_uid"], str(b["slice"])): (b["xmax"] - b["xmin"] + 1) * (b["ymax"] - b["ymin"] + 1)
                         for b in patient["boxes"] if not b.get("orphan")}
                got = {(r["series_uid"], r["slice_index"]): int(r["nodule_area_px"]) for r in mine
                       if int(r["nodule_area_px"]) > 0}
                assert got == boxes, pid


def test_lesion_slices_keep_mask_slices_and_neighbours(tmp_path):
    make_lidc_patient(tmp_path / "raw", "LIDC-IDRI-9001")
    make_petct_tree(tmp_path / "pet")
    run_ingest({"lidc-idri": tmp_path / "raw", "lung-pet-ct-dx": tmp_path / "pet"}, tmp_path / "bench",
               IngestOptions(slices="lesion", lesion_margin=0), progress=False)
    rows = read_rows(tmp_path / "bench")
    lidc = sorted(int(r["slice_index"]) for r in rows if r["dataset"] == "lidc-idri")
    assert lidc == [1, 2, 3]  # nodule slices 1-3 of 0-4
    assert all(int(r["nodule_area_px"]) > 0 for r in rows)
    assert len(list((tmp_path / "bench" / "images" / "lidc-idri").rglob("*.png"))) == 3
