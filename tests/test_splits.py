"""Patient-level stratified splits: disjoint, stratified, deterministic, checked on load."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lungcad.errors import LungcadError
from lungcad.ingest.manifest import read_manifest, write_manifest
from lungcad.splits import load_splits, make_splits


def fake_bench(tmp_path, n_benign=30, n_malignant=20, slices=3, with_masks=lambda i: i % 2 == 0):
    rows = []
    for i in range(n_benign + n_malignant):
        label = "0" if i < n_benign else "1"
        masked = with_masks(i)
        for k in range(slices):
            rows.append({"image_path": f"images/d/P{i:03d}/s_{k:04d}.png",
                         "mask_path": f"masks/d/P{i:03d}/s_{k:04d}.png" if masked else "",
                         "patient_id": f"d/P{i:03d}", "label": label, "dataset": "d", "series_uid": "s",
                         "slice_index": str(k), "mask_source": "gt" if masked else "none"})
    write_manifest(tmp_path, rows)
    return tmp_path


def test_no_patient_in_two_splits_and_segmentation_follows_classification(tmp_path):
    splits = make_splits(fake_bench(tmp_path), seed=42)
    cls, seg = splits["classification"], splits["segmentation"]
    all_ids = cls["train"] + cls["val"] + cls["test"]
    assert len(all_ids) == len(set(all_ids)) == 50
    assert (len(cls["test"]), len(cls["val"])) == (10, 8)  # 20 % of 50, then 20 % of 40
    for part in ("train", "val", "test"):
        assert set(seg[part]) <= set(cls[part])  # a test patient of one task never trains the other
        assert all(int(p.split("P")[1]) % 2 == 0 for p in seg[part])  # only patients with masks
    assert sum(len(seg[p]) for p in seg) == 25


def test_box_annotated_patients_are_classification_only(tmp_path):
    bench = fake_bench(tmp_path)
    rows = read_manifest(bench)
    boxed = {r["patient_id"] for r in rows if r["mask_source"] == "gt" and int(r["patient_id"][-3:]) % 4 == 0}
    for row in rows:
        if row["patient_id"] in boxed:
            row["mask_source"] = "box"  # a filled rectangle: where the tumour is, not its outline
    write_manifest(bench, rows)
    splits = make_splits(bench)
    seg = [p for part in ("train", "val", "test") for p in splits["segmentation"][part]]
    cls = [p for part in ("train", "val", "test") for p in splits["classification"][part]]
    assert boxed and boxed <= set(cls) and not boxed & set(seg)
    assert len(seg) == 25 - len(boxed)


def test_segmentation_val_borrowed_from_train_when_no_val_patient_has_a_mask(tmp_path):
    bench = fake_bench(tmp_path, n_benign=6, n_malignant=4)
    cls_val = make_splits(bench)["classification"]["val"]
    rows = read_manifest(bench)
    for row in rows:  # masks only outside classification val
        masked = row["patient_id"] not in cls_val
        row["mask_source"] = "gt" if masked else "none"
        row["mask_path"] = row["image_path"].replace("images/", "masks/") if masked else ""
    write_manifest(bench, rows)
    splits = make_splits(bench)
    cls, seg = splits["classification"], splits["segmentation"]
    assert cls["val"] == cls_val and seg["val"]  # same partition; the segmenter still gets a val set
    assert set(seg["val"]) <= set(cls["train"]) and not set(seg["val"]) & set(seg["train"])
    assert set(seg["test"]) == set(cls["test"])  # test is never borrowed from
    assert any("segmentation val" in note for note in splits["notes"])


def test_stratification_is_kept(tmp_path):
    splits = make_splits(fake_bench(tmp_path), seed=42)
    labels = {f"d/P{i:03d}": int(i >= 30) for i in range(50)}
    for part, size in (("test", 10), ("val", 8)):
        malignant = sum(labels[p] for p in splits["classification"][part])
        assert abs(malignant - size * 0.4) <= 1


def test_deterministic_for_a_seed_and_different_for_another(tmp_path):
    bench = fake_bench(tmp_path)
    first = make_splits(bench, seed=42)
    manifest = (bench / "manifest.csv").read_bytes()
    assert make_splits(bench, seed=42) == first
    assert (bench / "manifest.csv").read_bytes() == manifest
    assert make_splits(bench, seed=7)["classification"] != first["classification"]


def test_manifest_split_column_holds_the_classification_split(tmp_path):
    bench = fake_bench(tmp_path)
    splits = make_splits(bench)
    part_of = {p: part for part, ids in splits["classification"].items() for p in ids}
    rows = read_manifest(bench)
    assert all(r["split"] == part_of[r["patient_id"]] for r in rows)
    assert Counter(r["split"] for r in rows)["test"] == 10 * 3


def test_tiny_class_falls_back_to_unstratified_with_a_note(tmp_path):
    splits = make_splits(fake_bench(tmp_path, n_benign=9, n_malignant=1))
    assert any("unstratified" in n for n in splits["notes"])
    ids = sum(splits["classification"].values(), [])
    assert len(ids) == len(set(ids)) == 10


def test_slice_unit_is_flagged_leaky(tmp_path):
    splits = make_splits(fake_bench(tmp_path), unit="slice")
    assert splits["leaky"] is True and splits["unit"] == "slice"
    seg = splits["segmentation"]
    assert sum(len(v) for v in seg.values()) == 25 * 3
    assert all(item.startswith("images/") for v in seg.values() for item in v)
    assert not set(seg["train"]) & set(seg["test"])


def test_load_splits_rejects_a_patient_in_two_splits(tmp_path):
    bench = fake_bench(tmp_path)
    splits = make_splits(bench)
    assert load_splits(bench) == json.loads((bench / "splits.json").read_text())
    splits["classification"]["test"].append(splits["classification"]["train"][0])
    (bench / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(LungcadError, match="in both 'train' and 'test'"):
        load_splits(bench)
    (bench / "splits.json").write_text("{not json")
    with pytest.raises(LungcadError, match="not valid JSON"):
        load_splits(bench)
    (bench / "splits.json").write_text(json.dumps({"classification": {"train": []}}))
    with pytest.raises(LungcadError):
        load_splits(bench)


def test_split_needs_a_manifest(tmp_path):
    with pytest.raises(LungcadError, match="manifest"):
        make_splits(tmp_path)
    with pytest.raises(LungcadError, match="unit"):
        make_splits(fake_bench(tmp_path), unit="series")


def test_reingest_keeps_the_split_column(tmp_path):
    from lungcad.ingest import IngestOptions, run_ingest
    from test_ingest_core import small_tree
    raw, bench = small_tree(tmp_path / "raw", 5), tmp_path / "bench"
    run_ingest({"lungct-diagnosis": raw}, bench, IngestOptions(), progress=False)
    make_splits(bench)
    with_split = (bench / "manifest.csv").read_bytes()
    run_ingest({"lungct-diagnosis": raw}, bench, IngestOptions(), progress=False)
    assert (bench / "manifest.csv").read_bytes() == with_split
    assert {r["split"] for r in read_manifest(bench)} == {"train", "val", "test"}
