"""Tests of lungcad.synth: determinism, format fidelity and geometry of the synthetic trees."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from sklearn.metrics import roc_auc_score

from lungcad.errors import LungcadError
from lungcad.synth import SOURCES, generate, make_phantom
from lungcad.synth.lidc_xml import outer_contours
from lungcad.synth.phantom import draw_nodule_params

REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata"
SMALL = dict(patients=2, size=64, n_slices=16, progress=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    generate(out, seed=7, **SMALL)
    return out, json.loads((out / "synth_truth.json").read_text())


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _patients(truth, source):
    return truth["sources"][source]["patients"]


def test_same_seed_same_bytes_other_seed_differs(tree, tmp_path):
    out, _ = tree
    generate(tmp_path / "a", seed=7, **SMALL)
    generate(tmp_path / "b", seed=8, **SMALL)
    assert _digest(tmp_path / "a") == _digest(out)
    other = _digest(tmp_path / "b")
    assert other.keys() != _digest(out).keys() or other != _digest(out)


def test_every_source_written_with_truth(tree):
    out, truth = tree
    assert set(truth["sources"]) == set(SOURCES)
    for source in SOURCES:
        assert (out / source).is_dir()
        assert len(_patients(truth, source)) == 2
        for p in _patients(truth, source):
            assert p["nodules"], (source, p["patient_id"])
    for source in ("msd-lung", "lungct-diagnosis", "lung-pet-ct-dx"):
        assert all(p["label"] == 1 for p in _patients(truth, source))
    assert sorted(p["label"] for p in _patients(truth, "lidc-idri")) == [0, 1]


def test_unknown_source_is_a_user_error(tmp_path):
    with pytest.raises(LungcadError, match="unknown source"):
        generate(tmp_path, sources=["nope"], **SMALL)


def test_make_phantom_anatomy_and_nodules():
    ph = make_phantom(np.random.default_rng(3), size=96, n_slices=20, nodules=2)
    assert ph.hu.dtype == np.int16 and ph.label.dtype == np.uint8 and ph.hu.shape == (20, 96, 96)
    assert ph.hu[:, 0, 0].mean() < -900  # air in the corner
    assert -900 < np.median(ph.hu[ph.lung]) < -750  # aerated lung
    assert ph.hu.max() > 300  # bone
    ids = sorted(set(np.unique(ph.label)) - {0})
    assert ids == [n.id for n in ph.nodules]
    for nod in ph.nodules:
        z, y, x = np.round(ph.world_to_index(nod.center_mm)).astype(int)
        assert ph.label[z, y, x] == nod.id
        assert 3.0 <= nod.diameter_mm <= 30.0


def test_malignancy_tracks_diameter_but_not_perfectly():
    rng = np.random.default_rng(0)
    params = [draw_nodule_params(rng) for _ in range(3000)]
    y = np.array([p["malignant"] for p in params])
    d = np.array([p["diameter_mm"] for p in params])
    assert 0.25 < y.mean() < 0.6
    auc = roc_auc_score(y, d)
    assert 0.7 < auc < 0.9
    # Even the noise-free model score cannot separate the classes.
    from lungcad.synth.phantom import malignancy_logit
    score = [malignancy_logit(p["diameter_mm"], p["shape"], p["density"]) for p in params]
    assert roc_auc_score(y, score) < 0.95


def _series_files(folder: Path):
    return sorted(folder.glob("*.dcm"))


def test_lidc_dicom_tags_and_hu(tree):
    out, truth = tree
    p = _patients(truth, "lidc-idri")[0]
    folder = out / p["series"][0]["path"]
    files = _series_files(folder)
    ds = [pydicom.dcmread(f) for f in files]
    for d in ds:
        assert d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and d.Modality == "CT"
        assert d.SeriesInstanceUID == p["series"][0]["series_uid"] and d.PatientID == p["patient_id"]
        assert d.SamplesPerPixel == 1 and d.PhotometricInterpretation == "MONOCHROME2"
        assert [float(v) for v in d.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    # Patient 0 carries the duplicate-slice quirk: two files share one position.
    z = [float(d.ImagePositionPatient[2]) for d in ds]
    dup = [d for d in ds if z.count(float(d.ImagePositionPatient[2])) == 2]
    assert len(dup) == 2 and p["quirks"]
    # The duplicate is the later instance; the slice it shadows has the lower InstanceNumber.
    first, second = sorted(dup, key=lambda d: int(d.InstanceNumber))
    assert int(second.InstanceNumber) == len(files)
    assert not np.array_equal(first.pixel_array, second.pixel_array)


@pytest.mark.parametrize("signed,intercept,padding", [(True, -1024.0, -3024.0), (False, -1024.0, None),
                                                      (True, 0.0, -2000.0), (False, -1024.0, -1024.0)])
def test_dicom_writer_roundtrip_gives_the_phantom(tmp_path, signed, intercept, padding):
    from lungcad.synth.dicom_writer import SeriesOptions, write_series
    ph = make_phantom(np.random.default_rng(1), size=48, n_slices=8, nodules=1)
    opt = SeriesOptions(patient_id="P1", study_uid="1.2.3", series_uid="1.2.3.4", uid_prefix="1.2.3.",
                        signed=signed, intercept=intercept, padding_hu=padding, descending=True)
    written = write_series(tmp_path, ph.hu, ph.spacing, ph.origin, opt)
    assert [w.instance for w in written] == list(range(1, 9)) and written[0].index == 7
    yy, xx = np.mgrid[0:48, 0:48]
    inside = (yy - 23.5) ** 2 + (xx - 23.5) ** 2 <= 23.5 ** 2
    for w in written:
        ds = pydicom.dcmread(w.path)
        hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(hu[inside], ph.hu[w.index][inside])
        assert float(ds.ImagePositionPatient[2]) == pytest.approx(ph.origin[2] + w.index * ph.spacing[2])
        assert int(ds.PixelRepresentation) == int(signed)
        if padding is not None:
            assert np.all(hu[~inside] == padding) and int(ds.PixelPaddingValue) == ds.pixel_array[0, 0]


def test_lidc_storage_variants_decode_to_same_hu_scale(tree):
    out, truth = tree
    for p in _patients(truth, "lidc-idri"):
        files = _series_files(out / p["series"][0]["path"])
        d = pydicom.dcmread(files[len(files) // 2])
        hu = d.pixel_array.astype(float) * float(d.RescaleSlope) + float(d.RescaleIntercept)
        n = hu.shape[0] // 2
        assert -150 < np.median(hu[n - 3:n + 3, n - 3:n + 3]) < 150  # mediastinum, whatever the storage
        pad = p["storage"]["padding_hu"]
        assert hu.min() >= -1024 or hu.min() == pad
        if pad is not None:
            assert hu[0, 0] == pad and int(d.PixelPaddingValue) == d.pixel_array[0, 0]
    reps = {pydicom.dcmread(_series_files(out / p["series"][0]["path"])[0]).PixelRepresentation
            for p in _patients(truth, "lidc-idri")}
    assert reps == {0, 1}


def _strip_ns(text: str) -> ET.Element:
    return ET.fromstring(re.sub(' xmlns="[^"]+"', "", text, count=1).encode())


def test_lidc_xml_references_series_except_the_deliberate_roi(tmp_path):
    generate(tmp_path, seed=11, patients=3, size=64, n_slices=16, sources=["lidc-idri"], progress=False)
    truth = json.loads((tmp_path / "synth_truth.json").read_text())
    bogus_seen, non_nodules, point_marks = 0, 0, 0
    for p in _patients(truth, "lidc-idri"):
        series = p["series"][0]
        sops = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f
                for f in _series_files(tmp_path / series["path"])}
        root = _strip_ns((tmp_path / series["xml"]).read_text())
        assert root.find("ResponseHeader/SeriesInstanceUid").text == series["series_uid"]
        sessions = root.findall("readingSession")
        assert len(sessions) == 4
        missing = [roi for s in sessions for roi in s.iter("roi") if roi.find("imageSOP_UID").text not in sops]
        bad = [q for q in p["quirks"] if "xml_roi_not_in_series" in q]
        assert len(missing) == len(bad)
        bogus_seen += len(bad)
        for roi in (r for s in sessions for r in s.iter("roi") if r.find("imageSOP_UID").text in sops):
            ds = pydicom.dcmread(sops[roi.find("imageSOP_UID").text], stop_before_pixels=True)
            assert float(roi.find("imageZposition").text) == pytest.approx(float(ds.ImagePositionPatient[2]))
        for nod in (n for s in sessions for n in s.findall("unblindedReadNodule") if n.find("characteristics") is not None):
            assert 1 <= int(nod.find("characteristics/malignancy").text) <= 5
        non_nodules += sum(len(s.findall("nonNodule")) for s in sessions)
        point_marks += sum(1 for s in sessions for n in s.findall("unblindedReadNodule")
                           if n.find("characteristics") is None and len(n.findall("roi/edgeMap")) == 1)
    assert bogus_seen == 1 and non_nodules > 0 and point_marks > 0


def test_outer_contour_encloses_region_exactly_for_convex_shapes():
    yy, xx = np.mgrid[0:40, 0:40]
    region = (yy - 20) ** 2 + (xx - 18) ** 2 <= 49
    (ring,) = outer_contours(region)
    assert ring[0] == ring[-1]
    pts = np.array(ring)
    assert not region[pts[:, 1], pts[:, 0]].any()  # the ring lies outside the region
    steps = np.abs(np.diff(pts, axis=0)).max(axis=1)
    assert steps.max() == 1  # ordered, connected
    from scipy import ndimage
    ring_img = np.zeros_like(region)
    ring_img[pts[:, 1], pts[:, 0]] = True
    assert np.array_equal(ndimage.binary_fill_holes(ring_img) & ~ring_img, region)


def test_luna16_flipped_mhd_world_coordinates_hit_the_nodule(tree):
    out, truth = tree
    flipped = [p for p in _patients(truth, "luna16") if p["series"][0]["flipped"]]
    assert flipped
    header = (out / flipped[0]["series"][0]["path"]).read_text()
    assert "TransformMatrix = -1 0 0 0 -1 0 0 0 1" in header
    rows = list(csv.DictReader((out / "luna16" / "annotations.csv").open()))
    hits = 0
    for p in _patients(truth, "luna16"):
        mhd = out / p["series"][0]["path"]
        img = sitk.ReadImage(str(mhd))
        o, s = np.array(img.GetOrigin()), np.array(img.GetSpacing())
        D = np.array(img.GetDirection()).reshape(3, 3)
        for nod in (n for n in p["nodules"] if n["in_annotations_csv"]):
            row = next(r for r in rows if r["seriesuid"] == p["patient_id"]
                       and abs(float(r["coordX"]) - nod["center_mm"][0]) < 1e-3)
            world = np.array([float(row[c]) for c in ("coordX", "coordY", "coordZ")])
            i, j, k = np.round((D.T @ (world - o)) / s).astype(int)  # DATASETS.md 1.1
            assert k in nod["slices"]
            arr = sitk.GetArrayFromImage(img)
            assert arr[k, j, i] > -400 or nod["density"] in ("ground-glass", "part-solid")
            hits += 1
    assert hits >= 1
    seriesuids = (out / "luna16" / "evaluationScript" / "annotations" / "seriesuids.csv").read_text().split()
    assert seriesuids == [p["patient_id"] for p in _patients(truth, "luna16")]
    xml = sorted((out / "luna16" / "tcia-lidc-xml" / "185").glob("*.xml"))
    assert {_strip_ns(x.read_text()).find("ResponseHeader/SeriesInstanceUid").text for x in xml} == set(seriesuids)


def test_luna16_flipped_scan_label_matches_phantom_via_sitk(tmp_path):
    """SimpleITK maps a nodule centre to a slice it spans, and column 0 of the rotated array is the +x side."""
    generate(tmp_path, seed=5, patients=2, size=64, n_slices=16, sources=["luna16"], progress=False)
    truth = json.loads((tmp_path / "synth_truth.json").read_text())
    p = next(p for p in _patients(truth, "luna16") if p["series"][0]["flipped"])
    img = sitk.ReadImage(str(tmp_path / p["series"][0]["path"]))
    nod = p["nodules"][0]
    idx = img.TransformPhysicalPointToIndex(nod["center_mm"])
    assert idx[2] in nod["slices"]
    # The rotated array stores +x at column 0: the world x of column 0 is the largest.
    assert img.TransformIndexToPhysicalPoint((0, 0, 0))[0] > img.TransformIndexToPhysicalPoint((10, 0, 0))[0]


def test_msd_label_aligns_with_image_under_affine(tree):
    out, truth = tree
    task = out / "msd-lung" / "Task06_Lung"
    meta = json.loads((task / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "cancer"} and "relase" in meta
    assert all(isinstance(t, str) for t in meta["test"])
    trained = [p for p in _patients(truth, "msd-lung") if p["has_mask"]]
    assert trained and len(meta["training"]) == len(trained)
    for p in trained:
        img = nib.load(out / p["series"][0]["path"])
        lab = nib.load(out / p["series"][0]["label_path"])
        assert np.allclose(img.affine, lab.affine) and not np.allclose(img.affine, np.eye(4))
        data = np.asarray(lab.dataobj)
        assert data.dtype == np.uint8 and set(np.unique(data)) <= {0, 1}
        c = p["nodules"][0]["center_mm"]
        ras = np.array([-c[0], -c[1], c[2], 1.0])
        i, j, k = np.round(np.linalg.inv(img.affine) @ ras)[:3].astype(int)
        assert data[i, j, k] == 1
        hu = np.asarray(img.dataobj)
        assert hu[data == 1].mean() > hu[data == 0].mean() + 300 or hu[data == 1].mean() > -300


def test_msd_case_numbers_stay_unique_beyond_the_real_task():
    """A draw larger than Task06's 63 training / 33 test cases gets new numbers, not repeats (which
    wrote two patients to one file); smaller draws keep the real numbers they always had."""
    from lungcad.synth.msd import TEST_IDS, TRAIN_IDS, case_numbers

    train, test = case_numbers(75, 25)
    assert len(set(train + test)) == 100
    assert train[:63] == TRAIN_IDS and test == TEST_IDS[:25] and train[63:] == list(range(97, 109))
    train, test = case_numbers(63, 40)
    assert test[:33] == TEST_IDS and test[33:] == list(range(97, 104))
    assert case_numbers(45, 15) == (TRAIN_IDS[:45], TEST_IDS[:15])


def test_lndb_masks_and_csvs_agree(tree):
    out, truth = tree
    csv_dir = out / "lndb" / "trainset_csv"
    nodules = list(csv.DictReader((csv_dir / "trainNodules.csv").open()))
    chars = list(csv.DictReader((csv_dir / "chars_trainNodules.csv").open()))
    gt = list(csv.DictReader((csv_dir / "trainNodules_gt.csv").open()))
    assert list(gt[0])[:4] == ["LNDbID", "RadID", "RadFindingID", "FindingID"]
    assert any(float(r["malignancy"]) == 0 for r in chars) and any(float(r["malignancy"]) > 3 for r in chars)
    assert len((csv_dir / "allNods.csv").read_text().splitlines()[0].split(",")) == 26
    for p in _patients(truth, "lndb"):
        lid = p["lndb_id"]
        for r in (r for r in nodules if int(r["LNDbID"]) == lid and r["Nodule"] == "1" and float(r["Volume"]) > 20):
            mask = sitk.ReadImage(str(out / "lndb" / "masks" / f"LNDb-{lid:04d}_rad{r['RadID']}.mhd"))
            arr = sitk.GetArrayFromImage(mask)
            x, y, z = mask.TransformPhysicalPointToIndex([float(r[c]) for c in "xyz"])
            assert arr[z, y, x] == int(r["FindingID"])
        means = [np.mean(n["reader_ratings"]) for n in p["nodules"] if n.get("reader_ratings")]
        assert p["label"] == int(any(m > 3 for m in means))


def test_lung_pet_ct_dx_layout_boxes_and_quirks(tree):
    out, truth = tree
    root = out / "lung-pet-ct-dx"
    meta = list(csv.DictReader(next(root.glob("manifest-*/metadata.csv")).open()))
    assert {m["Modality"] for m in meta} == {"CT", "PT"}
    sops, names = {}, []
    for p in _patients(truth, "lung-pet-ct-dx"):
        assert re.fullmatch(r"Lung_Dx-[ABEG]\d{4}", p["patient_id"])
        for s in p["series"]:
            files = sorted((out / s["path"]).glob("1-*.dcm"), key=lambda f: int(f.stem.split("-")[1]))
            z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
            assert z == sorted(z, reverse=True)  # InstanceNumber runs head to foot
            for f in files:
                sops[pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID] = f
        for xml in (root / "Annotation" / p["patient_id"].split("-")[1]).glob("*.xml"):
            names.append(ET.parse(xml).getroot().find("object/name").text)
    xmls = list((root / "Annotation").rglob("*.xml"))
    orphans = [x for x in xmls if x.stem not in sops]
    assert len(orphans) == 1 and "Q" in names and any(n.islower() for n in names)
    box = next(x for x in xmls if x.stem in sops)
    ds = pydicom.dcmread(sops[box.stem])
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    b = {k: int(ET.parse(box).getroot().find(f"object/bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")}
    assert hu[b["ymin"]:b["ymax"] + 1, b["xmin"]:b["xmax"] + 1].max() > -300


@pytest.mark.skipif(not (REAL / "Lung-PET-CT-Dx").is_dir(), reason="../shared/realdata not available")
def test_voc_xml_matches_the_real_file_layout(tree):
    out, _ = tree
    real = next((REAL / "Lung-PET-CT-Dx" / "Annotation").rglob("*.xml")).read_text()
    ours = next((out / "lung-pet-ct-dx" / "Annotation").rglob("*.xml")).read_text()
    strip = lambda t: re.sub(r">[^<]*<", "><", re.sub(r"<(name|width|height|xmin|ymin|xmax|ymax)>[^<]*", r"<\1>", t))
    assert strip(ours) == strip(real)
    assert [len(l) - len(l.lstrip()) for l in ours.splitlines()] == [len(l) - len(l.lstrip()) for l in real.splitlines()]


def test_nbia_folder_names_and_metadata_locations(tree):
    out, truth = tree
    for source, coll in (("lungct-diagnosis", "LungCT-Diagnosis"), ("lung-pet-ct-dx", "Lung-PET-CT-Dx")):
        manifest = next((out / source).glob("manifest-*"))
        rows = list(csv.DictReader((manifest / "metadata.csv").open()))
        for r in rows:
            folder = manifest / r["File Location"]
            assert folder.is_dir() and len(list(folder.glob("*.dcm"))) == int(r["Number of Images"])
            study, series = folder.parent.name, folder.name
            assert study.endswith(r["Study UID"][-5:]) and series.endswith(r["Series UID"][-5:])
            assert re.fullmatch(r"\d+\.000000-.+-\d{5}", series)
            assert r["Collection"] == coll


def test_reader_outline_keeps_parts_touching_the_body_on_each_slice():
    from lungcad.synth.phantom import reader_outline

    mask = np.zeros((3, 12, 12), bool)
    body = np.zeros_like(mask)
    mask[0, 2:6, 2:6] = body[0, 3:5, 3:5] = True  # body slice: the nodule ...
    mask[0, 5:7, 6:9] = True  # ... with a spicule attached in-plane (kept)
    mask[0, 9:11, 9:11] = True  # and a fragment cut off in-plane (dropped)
    mask[1, 4:6, 4:6] = True  # a spicule's cross-section above the body (dropped)
    out = reader_outline(mask, body)
    expected = np.zeros_like(mask)
    expected[0, 2:6, 2:6] = expected[0, 5:7, 6:9] = True
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(reader_outline(mask, mask), mask)  # no spicules: unchanged
