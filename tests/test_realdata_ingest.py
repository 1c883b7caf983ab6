"""Ingest of the real TCIA samples in ../shared/realdata (skipped when absent).

Expectations are computed here independently of the adapters: ROI z positions straight from the
XML with ElementTree, SOPInstanceUIDs and HU straight from pydicom.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from lungcad.ingest import IngestOptions, run_ingest

from test_ingest_dicom_sources import own_lung_window, png, read_rows

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
if not REALDATA.is_dir():
    REALDATA = Path("/work/shared/realdata")
LIDC = REALDATA / "LIDC-IDRI"
PETCT = REALDATA / "Lung-PET-CT-Dx"

pytestmark = pytest.mark.skipif(not (LIDC.is_dir() and PETCT.is_dir()),
                                reason=f"real TCIA samples not found at {REALDATA}")


@pytest.fixture(scope="module", params=["paper", "median"])
def bench(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"real-{request.param}")
    report = run_ingest({"lidc-idri": LIDC, "lung-pet-ct-dx": PETCT}, out,
                        IngestOptions(label_rule=request.param, workers=2), progress=False)
    return out, read_rows(out), report


def dicom_by_sop(root: Path) -> dict:
    out = {}
    for path in root.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out[ds.SOPInstanceUID] = (path, ds.SeriesInstanceUID, float(ds.ImagePositionPatient[2]))
    return out


def test_lidc_nodule_on_the_slices_the_readers_contoured(bench):
    out, rows, _ = bench
    lidc = [r for r in rows if r["dataset"] == "lidc-idri"]
    present = {float(r["z_mm"]) for r in lidc}
    xml = next(LIDC.rglob("*.xml"))
    root = ET.fromstring(re.sub(r'\sxmlns="[^"]+"', "", xml.read_text(), count=1))
    readers_at = Counter()
    for session in root.iter("readingSession"):
        zs = {float(roi.findtext("imageZposition")) for nod in session.iter("unblindedReadNodule")
              for roi in nod.iter("roi") if len(roi.findall("edgeMap")) > 1}
        readers_at.update(zs)
    # consensus 0.5 of the 4 readers who contoured the nodule: at least 2 readers on that slice
    expected = {z for z, n in readers_at.items() if n >= 2 and z in present}
    assert expected, "the sample should hold contoured slices"
    marked = {float(r["z_mm"]) for r in lidc if int(r["nodule_area_px"]) > 0}
    assert marked == expected
    assert {r["label"] for r in lidc} == {"1"} and {r["patient_id"] for r in lidc} == {"lidc-idri/LIDC-IDRI-0001"}


def test_lidc_mask_lies_in_lung_inside_the_body(bench):
    out, rows, _ = bench
    by_z = {v[2]: v[0] for v in dicom_by_sop(LIDC).values()}
    for row in (r for r in rows if r["dataset"] == "lidc-idri" and int(r["nodule_area_px"]) > 0):
        ds = pydicom.dcmread(by_z[float(row["z_mm"])])
        hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        mask = png(out, row["mask_path"]) > 0
        ring = ndimage.binary_dilation(mask, iterations=4) & ~ndimage.binary_dilation(mask, iterations=1)
        assert np.median(hu[ring]) < -500, "the nodule should be surrounded by aerated lung"
        tissue, _ = ndimage.label(hu > -500)
        body = ndimage.binary_fill_holes(tissue == np.argmax(np.bincount(tissue.ravel())[1:]) + 1)
        assert not (mask & ~body).any()


def test_petct_boxes_on_their_slices_in_both_series(bench):
    out, rows, _ = bench
    sops = dicom_by_sop(PETCT)
    expected = {}
    for xml in (PETCT / "Annotation").rglob("*.xml"):
        _, series, z = sops[xml.stem]
        box = ET.parse(xml).getroot().find("object/bndbox")
        x0, y0, x1, y1 = (int(box.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
        expected[(series, z)] = (min(x1, 511) - x0 + 1) * (min(y1, 511) - y0 + 1)
    petct = [r for r in rows if r["dataset"] == "lung-pet-ct-dx"]
    got = {(r["series_uid"], float(r["z_mm"])): int(r["nodule_area_px"]) for r in petct
           if int(r["nodule_area_px"]) > 0}
    assert got == expected
    assert len({s for s, _ in got}) == 2
    assert {r["label"] for r in petct} == {"1"} and {r["mask_source"] for r in petct} == {"box"}


def test_png_is_the_lung_window_of_pydicom_pixels(bench):
    out, rows, _ = bench
    sops = dicom_by_sop(PETCT)
    by_series_z = {(v[1], v[2]): v[0] for v in sops.values()}
    by_series_z.update({(v[1], v[2]): v[0] for v in dicom_by_sop(LIDC).values()})
    checked = 0
    for row in rows[::9]:
        path = by_series_z[(row["series_uid"], float(row["z_mm"]))]
        np.testing.assert_array_equal(png(out, row["image_path"]), own_lung_window(path))
        checked += 1
    assert checked >= 10


def test_report_counts(bench):
    _, rows, report = bench
    assert report["sources"]["lidc-idri"]["slices"] == 16
    assert report["sources"]["lung-pet-ct-dx"]["series"] == 2
    assert report["sources"]["lung-pet-ct-dx"]["slices"] == 128 == sum(r["dataset"] == "lung-pet-ct-dx" for r in rows)
    assert report["totals"]["patients"] == 2
