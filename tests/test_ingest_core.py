"""The ingest framework: lung window, orientation, manifest format, options, adapter registry,
LIDC XML parsing/clustering/filling, determinism and resume after deletion or kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lungcad.errors import LungcadError
from lungcad.ingest import ADAPTERS, IngestOptions, get_adapter, marker_path, run_ingest
from lungcad.ingest.base import Adapter, LoadedSeries
from lungcad.ingest.harmonize import canonical_inplane, lung_window, resample_slice
from lungcad.ingest.lidc_xml import Roi, cluster_nodules, parse_lidc_xml, rasterize_rois
from lungcad.ingest.manifest import COLUMNS, format_float, manifest_text

from test_ingest_dicom_sources import (lidc_xml, nodule_xml, phantom, roi_xml, square, uid,
                                       write_series)

# ----------------------------------------------------------------------------- harmonize


def test_lung_window_fixed_points():
    hu = np.array([-3000, -1200, -600, 0, 40, 1000, -1199.0], dtype=np.float32)
    # -600 -> 127.5 -> rounds half up to 128; -1199 -> 0.2125 -> 0
    np.testing.assert_array_equal(lung_window(hu), [0, 0, 128, 255, 255, 255, 0])
    assert lung_window(hu).dtype == np.uint8


def test_lung_window_matches_the_formula_on_random_values():
    hu = np.random.default_rng(0).uniform(-2000, 500, size=1000)
    expected = np.floor(np.clip((hu + 1200) / 1200 * 255, 0, 255) + 0.5)
    assert np.abs(lung_window(hu).astype(int) - expected).max() <= 1  # float32 vs float64 at .5 edges
    assert np.mean(lung_window(hu) == expected) > 0.99


def world(origin, direction, spacing, kji):
    d = np.asarray(direction, float).reshape(3, 3)
    return np.asarray(origin) + d @ (np.asarray(spacing) * np.asarray(kji[::-1], float))


def test_canonical_inplane_flips_negative_axes_and_keeps_world_positions():
    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    direction, spacing, origin = (-1, 0, 0, 0, -1, 0, 0, 0, 1), (0.5, 0.7, 2.0), (10.0, 20.0, -5.0)
    out, _, new_spacing, new_origin, new_dir, changed = canonical_inplane(array, None, spacing, origin, direction)
    assert changed and new_dir == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    for kji in [(0, 0, 0), (1, 2, 3), (0, 1, 2)]:
        value = array[kji]
        new_kji = tuple(int(v) for v in np.argwhere(out == value)[0])
        np.testing.assert_allclose(world(origin, direction, spacing, kji),
                                   world(new_origin, new_dir, new_spacing, new_kji))


def test_canonical_inplane_swaps_transposed_axes():
    array = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    direction = (0, 1, 0, 1, 0, 0, 0, 0, 1)  # index x runs along world y
    out, _, spacing, _, new_dir, changed = canonical_inplane(array, None, (0.5, 0.7, 2.0), (0, 0, 0), direction)
    assert changed and out.shape == (1, 4, 3) and spacing[:2] == (0.7, 0.5)
    assert new_dir == (1, 0, 0, 0, 1, 0, 0, 0, 1)


def test_resample_slice_to_common_spacing():
    image = np.zeros((10, 20), np.float32)
    assert resample_slice(image, (1.0, 0.5), 1.0).shape == (10, 10)
    mask = np.zeros((10, 20), bool)
    mask[2:4, 4:8] = True
    out = resample_slice(mask, (1.0, 0.5), 1.0, is_mask=True)
    assert out.dtype == bool and out.sum() == 2 * 2


# ----------------------------------------------------------------------------- manifest / options / registry


def test_manifest_columns_follow_the_contract_order():
    assert COLUMNS[:14] == ("image_path", "mask_path", "patient_id", "label", "dataset", "series_uid",
                            "slice_index", "z_mm", "spacing_row_mm", "spacing_col_mm",
                            "slice_thickness_mm", "mask_source", "nodule_area_px", "split")
    assert COLUMNS[14] == "nodule_label"


def test_manifest_rows_sorted_by_patient_series_slice():
    rows = [{"patient_id": "b", "series_uid": "1", "slice_index": "2"},
            {"patient_id": "a", "series_uid": "2", "slice_index": "10"},
            {"patient_id": "a", "series_uid": "2", "slice_index": "9"}]
    lines = manifest_text(rows).splitlines()[1:]
    assert [line.split(",")[6] for line in lines] == ["9", "10", "2"]


def test_format_float_is_short_and_stable():
    assert format_float(-125.0) == "-125"
    assert format_float(0.703125, 6) == "0.703125"
    assert format_float(-0.00001) == "0"


@pytest.mark.parametrize("kwargs", [{"label_rule": "mean"}, {"consensus": 0}, {"consensus": 1.5},
                                    {"spacing": -1}, {"workers": 0}, {"slices": "some"}])
def test_bad_options_are_user_errors(kwargs):
    with pytest.raises(LungcadError):
        IngestOptions(**kwargs)


def test_registry_lists_the_six_sources_and_finds_mine():
    assert set(ADAPTERS) == {"lidc-idri", "luna16", "msd-lung", "lndb", "lungct-diagnosis", "lung-pet-ct-dx"}
    for name in ("lidc-idri", "lungct-diagnosis", "lung-pet-ct-dx"):
        adapter = get_adapter(name)
        assert isinstance(adapter, Adapter) and adapter.name == name
    with pytest.raises(LungcadError, match="valid sources"):
        get_adapter("lidc")


def test_loaded_series_rejects_inconsistent_mask_source():
    with pytest.raises(ValueError):
        LoadedSeries(volume=None, mask=None, mask_source="gt", patient_label=1)


# ----------------------------------------------------------------------------- LIDC XML


def test_parse_lidc_xml_tolerates_missing_characteristics_and_single_points(tmp_path):
    xml = lidc_xml("9.9", [
        [nodule_xml("big", 4, [roi_xml(-10.0, "1.1", square(1, 1, 5, 5)),
                               roi_xml(-10.0, "1.1", square(2, 2, 3, 3), inclusion="FALSE")])],
        [nodule_xml("tiny", None, [roi_xml(-50.0, "1.2", [(7, 8)])])],
    ])
    path = tmp_path / "read.xml"
    path.write_text(xml)
    read = parse_lidc_xml(path)
    assert read.series_uid == "9.9" and [s.reader for s in read.readers] == ["rad0", "rad1"]
    big, tiny = read.nodules
    assert big.malignancy == 4 and big.characteristics["subtlety"] == 5 and big.has_contour
    assert [r.inclusion for r in big.rois] == [True, False]
    assert big.rois[0].z == -10.0 and big.rois[0].sop_uid == "1.1"
    assert tiny.malignancy is None and tiny.characteristics == {} and not tiny.has_contour
    np.testing.assert_array_equal(tiny.rois[0].points, [[7, 8]])


def test_parse_lidc_xml_rejects_garbage(tmp_path):
    path = tmp_path / "bad.xml"
    path.write_text("<LidcReadMessage><unclosed>")
    with pytest.raises(LungcadError, match="bad.xml"):
        parse_lidc_xml(path)


def test_rasterize_fills_the_interior_and_subtracts_holes():
    outer = Roi(0.0, None, True, np.array(square(2, 2, 8, 8)))
    hole = Roi(0.0, None, False, np.array(square(4, 4, 6, 6)))
    filled = rasterize_rois([outer], (12, 12))
    assert filled.sum() == 5 * 5 and filled[3:8, 3:8].all()  # interior 3..7
    with_hole = rasterize_rois([outer, hole], (12, 12))
    assert with_hole.sum() == 25 - 1 and not with_hole[5, 5]  # hole interior = (5, 5)
    assert rasterize_rois([outer], (12, 12), include_contour=True).sum() == 7 * 7
    assert rasterize_rois([Roi(0.0, None, True, np.array([[3, 3]]))], (12, 12)).sum() == 0


def test_cluster_groups_one_mark_per_reader(tmp_path):
    a = [roi_xml(-10.0, "s1", square(10, 10, 14, 14))]
    b = [roi_xml(-10.0, "s1", square(11, 11, 15, 15))]
    far = [roi_xml(-10.0, "s1", square(40, 40, 44, 44))]
    twin = [roi_xml(-12.5, "s2", square(10, 10, 14, 14))]  # same reader, same place: stays apart
    path = tmp_path / "r.xml"
    path.write_text(lidc_xml("1", [[nodule_xml("a", 3, a), nodule_xml("a2", 3, twin)],
                                   [nodule_xml("b", 4, b), nodule_xml("f", 2, far)]]))
    groups = cluster_nodules(parse_lidc_xml(path), pixel_spacing=0.7)
    ids = sorted(sorted(m.nodule_id for m in g) for g in groups)
    assert ids == [["a", "b"], ["a2"], ["f"]] or ids == [["a"], ["a2", "b"], ["f"]]
    for group in groups:
        assert len({m.reader for m in group}) == len(group)


# ----------------------------------------------------------------------------- determinism and resume


def small_tree(root: Path, patients: int = 4) -> Path:
    for p in range(patients):
        pid = f"R_{p:03d}"
        write_series(root / pid / "st" / "s1", pid, uid(pid, 1), phantom(3, seed=p))
    return root


def test_rerun_is_byte_identical_and_reuses_markers(tmp_path):
    raw = small_tree(tmp_path / "raw", 3)
    bench = tmp_path / "bench"
    first = run_ingest({"lungct-diagnosis": raw}, bench, IngestOptions(), progress=False)
    manifest = (bench / "manifest.csv").read_bytes()
    image = next((bench / "images").rglob("*.png"))
    stamp = image.stat().st_mtime_ns
    second = run_ingest({"lungct-diagnosis": raw}, bench, IngestOptions(), progress=False)
    assert (bench / "manifest.csv").read_bytes() == manifest
    assert image.stat().st_mtime_ns == stamp  # not rewritten
    assert first["sources"]["lungct-diagnosis"]["series_resumed"] == 0
    assert second["sources"]["lungct-diagnosis"]["series_resumed"] == 3


def test_changed_settings_redo_the_series(tmp_path):
    raw = small_tree(tmp_path / "raw", 1)
    bench = tmp_path / "bench"
    run_ingest({"lungct-diagnosis": raw}, bench, IngestOptions(), progress=False)
    report = run_ingest({"lungct-diagnosis": raw}, bench, IngestOptions(spacing=1.4), progress=False)
    assert report["sources"]["lungct-diagnosis"]["series_resumed"] == 0
    from test_ingest_dicom_sources import png, read_rows
    rows = read_rows(bench)
    assert {r["spacing_row_mm"] for r in rows} == {"1.4"}
    assert png(bench, rows[0]["image_path"]).shape == (16, 16)  # 32 px * 0.7 mm / 1.4 mm


def test_resume_after_lost_markers_and_half_written_files(tmp_path):
    raw = small_tree(tmp_path / "raw", 3)
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    run_ingest({"lungct-diagnosis": raw}, clean, IngestOptions(), progress=False)
    run_ingest({"lungct-diagnosis": raw}, resumed, IngestOptions(), progress=False)
    tasks, _ = get_adapter("lungct-diagnosis").discover(raw, IngestOptions())
    marker_path(resumed, tasks[0]).unlink()          # as if killed before the marker
    victim = next((resumed / "images").rglob(f"{tasks[0].series_uid}_0001.png"))
    victim.write_bytes(victim.read_bytes()[:20])     # and a half-written PNG
    (resumed / "manifest.csv").unlink()
    run_ingest({"lungct-diagnosis": raw}, resumed, IngestOptions(workers=2), progress=False)
    assert (resumed / "manifest.csv").read_bytes() == (clean / "manifest.csv").read_bytes()
    assert victim.read_bytes() == (clean / victim.relative_to(resumed)).read_bytes()


def test_resume_after_kill_9_gives_the_clean_manifest(tmp_path):
    raw = small_tree(tmp_path / "raw", 12)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    run_ingest({"lungct-diagnosis": raw}, clean, IngestOptions(), progress=False)
    code = ("import sys\nfrom lungcad.ingest import run_ingest, IngestOptions\n"
            f"run_ingest({{'lungct-diagnosis': {str(raw)!r}}}, {str(killed)!r}, IngestOptions(), progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 60
    markers = killed / ".ingest"
    while time.time() < deadline and proc.poll() is None:
        if markers.exists() and sum(1 for _ in markers.rglob("*.json")) >= 2:
            break
        time.sleep(0.005)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "manifest.csv").exists() or proc.returncode == 0
    run_ingest({"lungct-diagnosis": raw}, killed, IngestOptions(), progress=False)
    assert (killed / "manifest.csv").read_bytes() == (clean / "manifest.csv").read_bytes()
