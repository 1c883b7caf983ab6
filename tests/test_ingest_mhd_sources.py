"""Ingest adapters for the MetaImage/NIfTI sources: luna16, msd-lung, lndb.

Fixtures are tiny, format-faithful trees (DATASETS.md section 8) written here by hand, with the
geometry spelled out explicitly (not through lungcad.io) so that a wrong world<->index formula in
the adapters shows up as a mask that misses the nodule.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lungcad.errors import InputError
from lungcad.ingest.base import IngestOptions
from lungcad.ingest.lndb import LndbAdapter, finding_label
from lungcad.ingest.luna16 import Luna16Adapter
from lungcad.ingest.msd import MsdLungAdapter
from lungcad.io import world_to_index

UID_ROOT = "1.3.6.1.4.1.14519.5.2.1.6279.6001."
NODULE_HU, AIR_HU = 40, -1000
SHAPE_ZYX = (16, 32, 32)
SPACING = (0.7, 0.7, 2.5)


# ----------------------------------------------------------------------------- fixture writers

def write_mhd(path: Path, array_zyx: np.ndarray, spacing, origin, transform_matrix, element="MET_SHORT"):
    """A MetaImage as a scanner export would write it: header text + little-endian raw (x fastest)."""
    dtype = {"MET_SHORT": "<i2", "MET_UCHAR": "u1"}[element]
    path.parent.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = array_zyx.shape
    path.write_text(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        "CompressedData = False\n"
        f"TransformMatrix = {' '.join(str(v) for v in transform_matrix)}\n"
        f"Offset = {' '.join(str(v) for v in origin)}\nCenterOfRotation = 0 0 0\n"
        f"AnatomicalOrientation = RAI\nElementSpacing = {' '.join(str(v) for v in spacing)}\n"
        f"DimSize = {nx} {ny} {nz}\nElementType = {element}\nElementDataFile = {path.stem}.raw\n")
    np.ascontiguousarray(array_zyx, dtype=dtype).tofile(path.with_suffix(".raw"))


def ball_in_world(world_of_index, centre_xyz, diameter_mm, shape=SHAPE_ZYX):
    """Bool (z, y, x) ball around a world point, with ``world_of_index(k, j, i) -> (x, y, z)`` given by the test."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    x, y, z = world_of_index(k, j, i)
    dist2 = (x - centre_xyz[0]) ** 2 + (y - centre_xyz[1]) ** 2 + (z - centre_xyz[2]) ** 2
    return dist2 <= (diameter_mm / 2) ** 2


def ct_with(ball: np.ndarray) -> np.ndarray:
    return np.where(ball, NODULE_HU, AIR_HU).astype(np.int16)


def lidc_xml(series_uid: str, sessions: list[list[dict]]) -> str:
    """An LIDC read file; each session is a list of nodules {malignancy, rois: [(z_mm, [(x, y), ...])]}."""
    body = []
    for s, nodules in enumerate(sessions):
        marks = []
        for n, nodule in enumerate(nodules):
            chars = ""
            if nodule.get("malignancy"):
                chars = ("<characteristics><subtlety>5</subtlety><internalStructure>1</internalStructure>"
                         "<calcification>6</calcification><sphericity>4</sphericity><margin>4</margin>"
                         "<lobulation>2</lobulation><spiculation>1</spiculation><texture>5</texture>"
                         f"<malignancy>{nodule['malignancy']}</malignancy></characteristics>")
            rois = "".join(
                f"<roi><imageZposition>{z:.6f}</imageZposition><imageSOP_UID>1.2.3.{s}.{n}</imageSOP_UID>"
                "<inclusion>TRUE</inclusion>"
                + "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in points)
                + "</roi>" for z, points in nodule["rois"])
            marks.append(f"<unblindedReadNodule><noduleID>Nodule {n + 1:03d}</noduleID>{chars}{rois}"
                         "</unblindedReadNodule>")
        marks.append("<nonNodule><nonNoduleID>NN1</nonNoduleID><imageZposition>-5.0</imageZposition>"
                     "<imageSOP_UID>1.2.3</imageSOP_UID><locus><xCoord>3</xCoord><yCoord>4</yCoord></locus>"
                     "</nonNodule>")
        body.append(f"<readingSession><annotationVersion>3.12</annotationVersion>"
                    f"<servicingRadiologistID>reader-{s}</servicingRadiologistID>{''.join(marks)}"
                    "</readingSession>")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<LidcReadMessage uid="1.2" xmlns="http://www.nih.gov">'
            f"<ResponseHeader><Version>1.8.1</Version><SeriesInstanceUid>{series_uid}</SeriesInstanceUid>"
            "<StudyInstanceUID>1.2.9</StudyInstanceUID></ResponseHeader>" + "".join(body) + "</LidcReadMessage>")


def square_contours(i_c: float, j_c: float, ks, z_of_k, half: int = 3):
    """Reader contours: a square of pixel points (x = column i, y = row j) around (i_c, j_c) on slices ks."""
    i0, j0 = int(round(i_c)), int(round(j_c))
    square = [(i0 - half, j0 - half), (i0 + half, j0 - half), (i0 + half, j0 + half), (i0 - half, j0 + half)]
    return [(z_of_k(k), square) for k in ks]


# ----------------------------------------------------------------------------- LUNA16 fixture

# Scan A: identity direction.  Scan B: TransformMatrix -1 0 0 0 -1 0 0 0 1 (x and y flipped).
# Scan C: rotated, TransformMatrix 0 1 0 -1 0 0 0 0 1: index axis i points along world +y and j
# along world -x (the file stores the matrix transposed w.r.t. sitk's GetDirection, DATASETS 1.1).
ORIGIN_A, ORIGIN_B, ORIGIN_C = (-11.2, -11.2, -20.0), (11.2, 11.2, -20.0), (11.2, -11.2, -20.0)


def world_a(k, j, i):
    return ORIGIN_A[0] + SPACING[0] * i, ORIGIN_A[1] + SPACING[1] * j, ORIGIN_A[2] + SPACING[2] * k


def world_b(k, j, i):
    return ORIGIN_B[0] - SPACING[0] * i, ORIGIN_B[1] - SPACING[1] * j, ORIGIN_B[2] + SPACING[2] * k


def world_c(k, j, i):
    return ORIGIN_C[0] - SPACING[1] * j, ORIGIN_C[1] + SPACING[0] * i, ORIGIN_C[2] + SPACING[2] * k


def make_luna16(root: Path, ratings_a=(3, 4, 2), ratings_b=(3, 3, 4)) -> dict:
    """Four scans (A identity, B flipped, C rotated, D no nodule) + annotations.csv + LIDC XML for A, B."""
    uids = {name: f"{UID_ROOT}{n}00000000000000000000000000{n}" for n, name in enumerate("ABCD", 1)}
    truth = {  # world centre (mm) and diameter; k = 8 in every scan
        "A": ((-5.6, 4.2, 0.0), 6.0, world_a, ORIGIN_A, (1, 0, 0, 0, 1, 0, 0, 0, 1)),
        "B": ((4.9, -4.2, 0.0), 6.0, world_b, ORIGIN_B, (-1, 0, 0, 0, -1, 0, 0, 0, 1)),
        "C": ((-3.5, 2.8, 0.0), 6.0, world_c, ORIGIN_C, (0, 1, 0, -1, 0, 0, 0, 0, 1)),
    }
    rows = ["seriesuid,coordX,coordY,coordZ,diameter_mm"]
    for name, (centre, diameter, world_of, origin, matrix) in truth.items():
        write_mhd(root / "subset0" / f"{uids[name]}.mhd", ct_with(ball_in_world(world_of, centre, diameter)),
                  SPACING, origin, matrix)
        rows.append(f"{uids[name]},{centre[0]},{centre[1]},{centre[2]},{diameter}")
    write_mhd(root / "subset1" / f"{uids['D']}.mhd", np.full(SHAPE_ZYX, AIR_HU, np.int16), SPACING, ORIGIN_A,
              (1, 0, 0, 0, 1, 0, 0, 0, 1))
    (root / "annotations.csv").write_text("\n".join(rows) + "\n")

    # Reader pixel coordinates = the scan's own (i, j) index of the centre, z = world z of slice k.
    pixel = {"A": ((-5.6 - ORIGIN_A[0]) / 0.7, (4.2 - ORIGIN_A[1]) / 0.7),   # (8, 22)
             "B": ((ORIGIN_B[0] - 4.9) / 0.7, (ORIGIN_B[1] + 4.2) / 0.7)}   # (9, 22)
    xml_dir = root / "tcia-lidc-xml" / "185"
    xml_dir.mkdir(parents=True)
    for n, (name, ratings) in enumerate((("A", ratings_a), ("B", ratings_b))):
        i_c, j_c = pixel[name]
        marks = [[{"malignancy": r, "rois": square_contours(i_c, j_c, (7, 8, 9), lambda k: -20.0 + 2.5 * k)}]
                 for r in ratings]
        # Fourth reader: only a < 3 mm mark (one point, no characteristics) elsewhere.
        marks.append([{"rois": [(-5.0, [(2, 2)])]}])
        # A rated nodule far from the annotation must not count.
        marks[0].append({"malignancy": 5, "rois": square_contours(28, 28, (2,), lambda k: -20.0 + 2.5 * k, 1)})
        (xml_dir / f"{n:03d}.xml").write_text(lidc_xml(uids[name], marks))
    return {"uids": uids, "truth": truth}


def loaded_by_name(adapter, root, opts):
    tasks, skips = adapter.discover(root, opts)
    return {t.patient_id: (t, adapter.load(t, opts)) for t in tasks}, skips


def assert_mask_on_nodule(loaded, centre_xyz):
    """At the true world centre the mask is set and the CT is nodule-like; far away it is not."""
    k, j, i = np.rint(world_to_index(loaded.volume, centre_xyz)).astype(int)
    assert loaded.mask.shape == loaded.volume.array.shape
    assert loaded.mask[k, j, i]
    assert loaded.volume.array[k, j, i] > -100
    # The mask covers the ball and little else: every mask voxel is nodule-dense.
    assert np.all(loaded.volume.array[loaded.mask] > -100)
    assert loaded.mask.sum() >= 0.5 * (loaded.volume.array > -100).sum()


# ----------------------------------------------------------------------------- LUNA16 tests

def test_luna16_masks_land_on_nodules_in_identity_flipped_and_rotated_scans(tmp_path):
    fx = make_luna16(tmp_path)
    loaded, skips = loaded_by_name(Luna16Adapter(), tmp_path, IngestOptions())
    for name in "ABC":
        task, series = loaded[fx["uids"][name]]
        assert task.series_uid == fx["uids"][name]
        assert series.mask_source == "gt"
        assert_mask_on_nodule(series, fx["truth"][name][0])
        assert series.nodule_label is not None and series.nodule_label.shape == (SHAPE_ZYX[0],)
    # Scan D has no annotation row: skipped, with a reason saying why.
    assert [s.item for s in skips] == [f"subset1/{fx['uids']['D']}.mhd"]
    assert "no nodule" in skips[0].reason


def test_luna16_labels_follow_lidc_rule_after_position_matching(tmp_path):
    fx = make_luna16(tmp_path)
    loaded, _ = loaded_by_name(Luna16Adapter(), tmp_path, IngestOptions(label_rule="paper"))
    uid = fx["uids"]
    # (3, 4, 2): only two readers rate >= 3 -> benign.  The far rating 5 is not matched.
    assert loaded[uid["A"]][1].patient_label == 0
    # (3, 3, 4) in the flipped scan: three readers >= 3 -> malignant (needs the flip to match).
    assert loaded[uid["B"]][1].patient_label == 1
    k_b = int(round(world_to_index(loaded[uid["B"]][1].volume, fx["truth"]["B"][0])[0]))
    assert loaded[uid["B"]][1].nodule_label[k_b] == 1
    assert loaded[uid["B"]][1].nodule_label[0] == -1
    # Scan C has no LIDC XML: nodules but no rating -> label unknown (excluded), with a note.
    assert loaded[uid["C"]][1].patient_label is None
    assert any("no LIDC XML" in note for note in loaded[uid["C"]][1].notes)


def test_luna16_median_rule(tmp_path):
    fx = make_luna16(tmp_path, ratings_a=(4, 4, 5), ratings_b=(2, 3, 4))
    loaded, _ = loaded_by_name(Luna16Adapter(), tmp_path, IngestOptions(label_rule="median"))
    assert loaded[fx["uids"]["A"]][1].patient_label == 1      # median 4 > 3
    assert loaded[fx["uids"]["B"]][1].patient_label is None   # median 3 -> excluded


def test_luna16_xml_from_option_folder(tmp_path):
    fx = make_luna16(tmp_path / "luna")
    moved = tmp_path / "elsewhere"
    (tmp_path / "luna" / "tcia-lidc-xml").rename(moved)
    loaded, _ = loaded_by_name(Luna16Adapter(), tmp_path / "luna", IngestOptions(lidc_xml=moved))
    assert loaded[fx["uids"]["B"]][1].patient_label == 1


def test_luna16_annotations_without_diameter_is_a_clear_error(tmp_path):
    make_luna16(tmp_path)
    csv = tmp_path / "annotations.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(",".join(line.split(",")[:4]) for line in lines) + "\n")
    with pytest.raises(InputError) as err:
        Luna16Adapter().discover(tmp_path, IngestOptions())
    message = str(err.value)
    assert "annotations.csv" in message and "diameter_mm" in message and "\n" not in message


def test_luna16_unreadable_scans_are_skipped_or_raise_naming_the_file(tmp_path):
    fx = make_luna16(tmp_path)
    uid = fx["uids"]
    (tmp_path / "subset0" / f"{uid['A']}.mhd").write_text("this is not a MetaImage header\n")
    (tmp_path / "subset0" / f"{uid['B']}.raw").unlink()
    raw_c = tmp_path / "subset0" / f"{uid['C']}.raw"
    raw_c.write_bytes(raw_c.read_bytes()[:1000])  # truncated
    adapter = Luna16Adapter()
    tasks, skips = adapter.discover(tmp_path, IngestOptions())
    reasons = {Path(s.item).stem: s.reason for s in skips}
    assert "MetaImage" in reasons[uid["A"]]
    assert "missing" in reasons[uid["B"]]
    (task_c,) = [t for t in tasks if t.patient_id == uid["C"]]
    with pytest.raises(InputError, match=f"{uid['C']}.mhd"):
        adapter.load(task_c, IngestOptions())


# ----------------------------------------------------------------------------- MSD fixture + tests

# RAS affine with positive x/y steps: in ITK's LPS frame the direction is diag(-1, -1, 1), so
# only a reader that honours the affine puts the tumour at the right world position.
MSD_AFFINE = np.array([[0.8, 0, 0, -12.0],
                       [0, 0.8, 0, -10.0],
                       [0, 0, 2.5, -30.0],
                       [0, 0, 0, 1]])
MSD_TUMOUR_IJK = (12, 18, 7)  # nibabel (i, j, k)


def make_msd(root: Path, label_affine=MSD_AFFINE) -> Path:
    task = root / "Task06_Lung"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in (32, 32, 16)], indexing="ij")
    di, dj, dk = (ii - MSD_TUMOUR_IJK[0]) * 0.8, (jj - MSD_TUMOUR_IJK[1]) * 0.8, (kk - MSD_TUMOUR_IJK[2]) * 2.5
    tumour = di ** 2 + dj ** 2 + dk ** 2 <= 3.5 ** 2
    image = np.where(tumour, NODULE_HU, AIR_HU).astype(np.int16)
    nib.save(nib.Nifti1Image(image, MSD_AFFINE), task / "imagesTr" / "lung_001.nii.gz")
    nib.save(nib.Nifti1Image(tumour.astype(np.uint8), label_affine), task / "labelsTr" / "lung_001.nii.gz")
    nib.save(nib.Nifti1Image(image, MSD_AFFINE), task / "imagesTs" / "lung_002.nii.gz")
    (task / "imagesTr" / "._lung_001.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble junk
    spec = {"name": "Lung", "labels": {"0": "background", "1": "cancer"}, "relase": "1.0 04/05/2018",
            "numTraining": 1, "numTest": 2,
            "training": [{"image": "./imagesTr/lung_001.nii.gz", "label": "./labelsTr/lung_001.nii.gz"}],
            "test": ["./imagesTs/lung_002.nii.gz", "./imagesTs/lung_009.nii.gz"]}
    (task / "dataset.json").write_text(json.dumps(spec))
    return task


def msd_tumour_world_lps():
    x, y, z = (MSD_AFFINE @ np.array([*MSD_TUMOUR_IJK, 1.0]))[:3]
    return (-x, -y, z)  # NIfTI RAS -> ITK/DICOM LPS


def test_msd_training_mask_lands_on_tumour_with_flipped_affine(tmp_path):
    make_msd(tmp_path)
    loaded, skips = loaded_by_name(MsdLungAdapter(), tmp_path, IngestOptions())
    assert set(loaded) == {"lung_001", "lung_002"}
    train = loaded["lung_001"][1]
    assert np.allclose(train.volume.direction, (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert train.mask_source == "gt" and train.patient_label == 1
    assert_mask_on_nodule(train, msd_tumour_world_lps())
    assert train.nodule_label[MSD_TUMOUR_IJK[2]] == 1 and train.nodule_label[0] == -1
    test_case = loaded["lung_002"][1]
    assert test_case.mask is None and test_case.mask_source == "none" and test_case.patient_label == 1
    assert [Path(s.item).name for s in skips] == ["lung_009.nii.gz"]  # listed but absent
    # The task folder itself is accepted as the root too.
    assert {t.patient_id for t in MsdLungAdapter().discover(tmp_path / "Task06_Lung", IngestOptions())[0]} \
        == {"lung_001", "lung_002"}


def test_msd_label_on_another_grid_is_rejected(tmp_path):
    shifted = MSD_AFFINE.copy()
    shifted[0, 3] += 5.0
    make_msd(tmp_path, label_affine=shifted)
    adapter = MsdLungAdapter()
    tasks, _ = adapter.discover(tmp_path, IngestOptions())
    (task,) = [t for t in tasks if t.patient_id == "lung_001"]
    with pytest.raises(InputError, match="origin"):
        adapter.load(task, IngestOptions())


def test_msd_without_dataset_json_or_with_garbage_image(tmp_path):
    with pytest.raises(InputError, match="dataset.json"):
        MsdLungAdapter().discover(tmp_path, IngestOptions())
    task_dir = make_msd(tmp_path)
    (task_dir / "imagesTs" / "lung_002.nii.gz").write_bytes(b"not gzip at all")
    adapter = MsdLungAdapter()
    (task,) = [t for t in adapter.discover(tmp_path, IngestOptions())[0] if t.patient_id == "lung_002"]
    with pytest.raises(InputError, match="lung_002.nii.gz"):
        adapter.load(task, IngestOptions())


# ----------------------------------------------------------------------------- LNDb fixture + tests

LNDB_ORIGIN = (-11.2, -11.2, -20.0)
LNDB_CENTRES = {1: (-2.8, -2.8, 0.0), 2: (5.6, 4.2, -10.0)}  # merged finding -> world centre


def world_lndb(k, j, i):
    return LNDB_ORIGIN[0] + 0.7 * i, LNDB_ORIGIN[1] + 0.7 * j, LNDB_ORIGIN[2] + 2.5 * k


def make_lndb(root: Path, chars_rows=None) -> None:
    """LNDb-0001: finding 1 marked by readers 1, 2, 3 (reader 3 shifted), finding 2 by reader 1 only.
    LNDb-0002: one finding by readers 1 and 2.  LNDb-0003: in no CSV (a test CT)."""
    eye = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    ball1 = ball_in_world(world_lndb, LNDB_CENTRES[1], 6.0)
    ball1_shifted = ball_in_world(world_lndb, (LNDB_CENTRES[1][0] + 2.1, *LNDB_CENTRES[1][1:]), 6.0)
    ball2 = ball_in_world(world_lndb, LNDB_CENTRES[2], 5.0)
    write_mhd(root / "data0" / "LNDb-0001.mhd", ct_with(ball1 | ball1_shifted | ball2), SPACING, LNDB_ORIGIN, eye)
    write_mhd(root / "data1" / "LNDb-0002.mhd", ct_with(ball1), SPACING, LNDB_ORIGIN, eye)
    write_mhd(root / "data1" / "LNDb-0003.mhd", ct_with(ball2), SPACING, LNDB_ORIGIN, eye)
    masks = {  # (CT, reader) -> label map with the reader's own FindingIDs
        (1, 1): ball1 * 1 + ball2 * 2,
        (1, 2): ball1 * 1,
        (1, 3): ball1_shifted * 2,   # reader 3 calls it its finding 2
        (2, 1): ball1 * 1,
        (2, 2): ball1 * 1,
    }
    for (ct, rad), labels in masks.items():
        write_mhd(root / "masks" / f"LNDb-{ct:04d}_rad{rad}.mhd", labels.astype(np.uint8), SPACING, LNDB_ORIGIN,
                  eye, element="MET_UCHAR")
    csv_dir = root / "trainset_csv"
    csv_dir.mkdir()
    (csv_dir / "trainNodules_gt.csv").write_text(
        "LNDbID,RadID,RadFindingID,FindingID,x,y,z,AgrLevel,Nodule,Volume,Text\n"
        '1,"1,2,3","1,1,2",1,-2.1,-2.8,0.0,3,1,113.1,5.0\n'
        "1,1,2,2,5.6,4.2,-10.0,1,1,65.4,4.0\n"
        '2,"1,2","1,1",1,-2.8,-2.8,0.0,2,1,113.1,5.0\n')
    chars_rows = chars_rows or [
        (1, 1, 1, 4), (1, 2, 1, 0), (1, 3, 2, 2),   # finding 1: 4, not rated, 2
        (1, 1, 2, 0),                               # finding 2: not rated
        (2, 1, 1, 0), (2, 2, 1, 4),                 # LNDb-0002: a 0 and a 4
    ]
    lines = ["LNDbID,RadID,FindingID,calcification,internalStructure,lobulation,malignancy,margin,"
             "sphericity,spiculation,subtlety"]
    lines += [f"{a:.1f},{r:.1f},{f:.1f},6.0,1.0,1.0,{m:.1f},4.0,2.0,2.0,5.0" for a, r, f, m in chars_rows]
    (csv_dir / "chars_trainNodules.csv").write_text("\n".join(lines) + "\n")
    (root / "allNods.csv").write_text(
        "LNDbID,RadID,RadFinding,FindingID,Nodule,x,y,z,DiamEq_Rad,Texture,Malignancy,Where\n"
        '1,"1,2,3","1,1,2",1,"1,1,1",-2.1,-2.8,0.0,6.0,5.0,4.5,RadAnnotation\n'
        "1,1,2,2,1,5.6,4.2,-10.0,5.0,4.0,2.0,RadAnnotation\n"
        '1,,,3,,0,0,0,,,,TextReport\n')


def test_lndb_consensus_mask_lands_on_findings(tmp_path):
    make_lndb(tmp_path)
    loaded, skips = loaded_by_name(LndbAdapter(), tmp_path, IngestOptions())
    assert set(loaded) == {"LNDb-0001", "LNDb-0002"}
    assert [Path(s.item).name for s in skips] == ["LNDb-0003.mhd"] and "no label" in skips[0].reason
    ct1 = loaded["LNDb-0001"][1]
    assert_mask_on_nodule(ct1, LNDB_CENTRES[1])
    assert_mask_on_nodule(ct1, LNDB_CENTRES[2])  # single-reader finding: its own mask
    # Voxels only reader 3 (1 of 3 readers) marked are out; voxels of readers 1 + 2 are in.
    ball1 = ball_in_world(world_lndb, LNDB_CENTRES[1], 6.0)
    only3 = ball_in_world(world_lndb, (LNDB_CENTRES[1][0] + 2.1, *LNDB_CENTRES[1][1:]), 6.0) & ~ball1
    assert only3.any() and not ct1.mask[only3].any()
    assert ct1.mask[ball1].all()


@pytest.mark.parametrize("agg, expected_ct1, expected_ct2", [
    ("mean", 0, 1),       # CT1 finding 1: ratings (4, 0, 2) -> 0 dropped, mean 3 is not > 3
    ("any", 1, 1),        # one rating 4 > 3
    ("majority", 0, 1),   # 1 of 2 rated readers > 3: not a majority; CT2 (0, 4) -> 1 of 1
])
def test_lndb_labels_by_aggregation(tmp_path, agg, expected_ct1, expected_ct2):
    make_lndb(tmp_path)
    loaded, _ = loaded_by_name(LndbAdapter(), tmp_path, IngestOptions(lndb_agg=agg))
    assert loaded["LNDb-0001"][1].patient_label == expected_ct1
    assert loaded["LNDb-0002"][1].patient_label == expected_ct2


def test_lndb_finding_rules_by_hand():
    assert finding_label([0, 4]) == 1               # 0 = not rated, left out
    assert finding_label([0, 0]) is None
    assert finding_label([None, 3]) == 0            # 3 is not > 3
    assert finding_label([4, 2], agg="any") == 1
    assert finding_label([4, 4, 1], agg="majority") == 1
    assert finding_label([5, 1], threshold=2) == 1  # mean 3 > 2


def test_lndb_allnods_source(tmp_path):
    make_lndb(tmp_path)
    opts = IngestOptions(lndb_malignancy_source="allNods")
    loaded, _ = loaded_by_name(LndbAdapter(), tmp_path, opts)
    assert loaded["LNDb-0001"][1].patient_label == 1      # reader mean 4.5 > 3
    assert loaded["LNDb-0002"][1].patient_label is None   # not in allNods.csv -> unknown


def test_lndb_csv_missing_column_and_bad_mask(tmp_path):
    make_lndb(tmp_path)
    chars = tmp_path / "trainset_csv" / "chars_trainNodules.csv"
    original = chars.read_text()
    chars.write_text(original.replace("malignancy", "malignance"))
    with pytest.raises(InputError) as err:
        LndbAdapter().discover(tmp_path, IngestOptions())
    assert "chars_trainNodules.csv" in str(err.value) and "'malignancy'" in str(err.value)
    chars.write_text(original)
    # A reader mask on another grid, and a CT with a truncated raw: InputError naming the file.
    write_mhd(tmp_path / "masks" / "LNDb-0002_rad2.mhd", np.zeros((8, 32, 32), np.uint8), SPACING,
              LNDB_ORIGIN, (1, 0, 0, 0, 1, 0, 0, 0, 1), element="MET_UCHAR")
    raw = tmp_path / "data0" / "LNDb-0001.raw"
    raw.write_bytes(raw.read_bytes()[:-10])
    adapter = LndbAdapter()
    tasks = {t.patient_id: t for t in adapter.discover(tmp_path, IngestOptions())[0]}
    with pytest.raises(InputError, match="LNDb-0002_rad2.mhd"):
        adapter.load(tasks["LNDb-0002"], IngestOptions())
    with pytest.raises(InputError, match="LNDb-0001.mhd"):
        adapter.load(tasks["LNDb-0001"], IngestOptions())


# ----------------------------------------------------------------------------- end to end

def test_run_ingest_end_to_end_manifest_rows(tmp_path):
    import pandas as pd

    from lungcad.ingest import run_ingest

    fx = make_luna16(tmp_path / "luna16")
    make_msd(tmp_path / "msd")
    make_lndb(tmp_path / "lndb")
    out = tmp_path / "bench"
    report = run_ingest({"luna16": tmp_path / "luna16", "msd-lung": tmp_path / "msd", "lndb": tmp_path / "lndb"},
                        out, IngestOptions(), progress=False)
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    labels = manifest.groupby("patient_id")["label"].agg(set).to_dict()
    uid = fx["uids"]
    assert labels == {f"luna16/{uid['A']}": {"0"}, f"luna16/{uid['B']}": {"1"},
                      "msd-lung/lung_001": {"1"}, "msd-lung/lung_002": {"1"},
                      "lndb/LNDb-0001": {"0"}, "lndb/LNDb-0002": {"1"}}
    # Every series contributes all its slices; masks exist where the source has them.
    assert (manifest.groupby("patient_id").size() == SHAPE_ZYX[0]).all()
    by_source = manifest.groupby("dataset")["mask_source"].agg(set).to_dict()
    assert by_source == {"luna16": {"gt"}, "msd-lung": {"gt", "none"}, "lndb": {"gt"}}
    flipped = manifest[manifest.patient_id == f"luna16/{uid['B']}"].set_index("slice_index")
    assert int(flipped.loc["8", "nodule_area_px"]) > 0 and flipped.loc["8", "nodule_label"] == "1"
    assert int(flipped.loc["0", "nodule_area_px"]) == 0
    assert (manifest[manifest.patient_id == "msd-lung/lung_002"].mask_path == "").all()
    assert all((out / p).is_file() for p in manifest.image_path)
    # Reported: LUNA16 scan without nodule skipped, scan without ratings excluded, LNDb test CT skipped.
    luna = report["sources"]["luna16"]
    assert any(uid["D"] in s["item"] for s in luna["skipped"])
    assert [e["patient_id"] for e in luna["excluded_patients"]] == [f"luna16/{uid['C']}"]
    assert any("LNDb-0003" in s["item"] for s in report["sources"]["lndb"]["skipped"])


def test_a_case_listed_twice_is_ingested_once_and_reported(tmp_path):
    """A dataset.json with a repeated entry once wrote that case's slices twice into the manifest."""
    import pandas as pd

    from lungcad.ingest import run_ingest

    task = make_msd(tmp_path / "msd")
    spec = json.loads((task / "dataset.json").read_text())
    spec["training"] *= 2
    (task / "dataset.json").write_text(json.dumps(spec))
    report = run_ingest({"msd-lung": tmp_path / "msd"}, tmp_path / "bench", IngestOptions(), progress=False)
    manifest = pd.read_csv(tmp_path / "bench" / "manifest.csv", dtype=str, keep_default_na=False)
    assert not manifest.duplicated(["image_path"]).any()
    assert (manifest.groupby("patient_id").size() == SHAPE_ZYX[0]).all()
    skipped = report["sources"]["msd-lung"]["skipped"]
    assert [s["item"] for s in skipped if "listed twice" in s["reason"]] == ["lung_001 series lung_001"]


# ----------------------------------------------------------------------------- on lungcad.synth trees

SYNTH_SOURCES = {"luna16": Luna16Adapter, "msd-lung": MsdLungAdapter, "lndb": LndbAdapter}


@pytest.fixture(scope="module")
def synth_tree(tmp_path_factory):
    """Three patients per source, small (64 px, 16 slices), with synth_truth.json."""
    from lungcad.synth import TRUTH_FILE, generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, patients=3, seed=42, size=64, n_slices=16, sources=list(SYNTH_SOURCES), progress=False)
    return out, json.loads((out / TRUTH_FILE).read_text())


def nodule_like(hu: float, density: str) -> bool:
    """Denser than aerated lung (about -850 HU); ground-glass nodules sit near -600 HU."""
    return hu > (-750 if density == "ground-glass" else -300)


@pytest.mark.parametrize("source", list(SYNTH_SOURCES))
def test_synth_masks_on_truth_nodules_and_labels_match_truth(synth_tree, source):
    out, truth = synth_tree
    loaded, _ = loaded_by_name(SYNTH_SOURCES[source](), out / source, IngestOptions())
    checked = 0
    for patient in truth["sources"][source]["patients"]:
        if source == "luna16" and not any(n.get("in_annotations_csv") for n in patient["nodules"]):
            assert patient["patient_id"] not in loaded  # no LUNA16 nodule: skipped, no label
            continue
        series = loaded[patient["patient_id"]][1]
        assert series.patient_label == patient["label"], patient["patient_id"]
        if source == "msd-lung" and not patient["has_mask"]:
            assert series.mask is None and series.mask_source == "none"
            continue
        for nodule in patient["nodules"]:
            in_gt = {"luna16": nodule.get("in_annotations_csv"), "msd-lung": nodule.get("tumour"),
                     "lndb": nodule.get("n_readers", 0) > 0}[source]
            if not in_gt:
                continue
            k, j, i = np.rint(world_to_index(series.volume, nodule["center_mm"])).astype(int)
            assert series.mask[k, j, i], (patient["patient_id"], nodule["id"])
            assert nodule_like(series.volume.array[k, j, i], nodule["density"])
            checked += 1
    assert checked >= 2
    if source == "luna16":  # the flipped-TransformMatrix scan was among those checked
        flipped = [p for p in truth["sources"]["luna16"]["patients"] if p["quirks"]]
        assert flipped and any(p["patient_id"] in loaded for p in flipped)


def test_synth_run_ingest_labels_match_truth(synth_tree, tmp_path):
    import pandas as pd

    from lungcad.ingest import run_ingest

    out, truth = synth_tree
    run_ingest({name: out / name for name in SYNTH_SOURCES}, tmp_path / "bench", IngestOptions(), progress=False)
    manifest = pd.read_csv(tmp_path / "bench" / "manifest.csv", dtype=str, keep_default_na=False)
    got = manifest.groupby("patient_id")["label"].agg(set).to_dict()
    expected = {f"{source}/{p['patient_id']}": {str(p["label"])}
                for source in SYNTH_SOURCES for p in truth["sources"][source]["patients"]
                if source != "luna16" or any(n.get("in_annotations_csv") for n in p["nodules"])}
    assert got == expected
    with_mask = manifest[manifest.mask_source == "gt"]
    assert (with_mask.nodule_area_px.astype(int) > 0).any()
