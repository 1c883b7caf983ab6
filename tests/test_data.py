"""Benchmark datasets: manifest checks, item selection, tensors, augmentation before features."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from _bench_fixture import build_bench
from lungcad.data import (
    ClassificationDataset, SegmentationDataset, classification_items, core_slices, neighbour_indices,
    predicted_areas, predicted_mask_path, read_manifest, read_png, segmentation_items,
)
from lungcad.errors import LungcadError

SLICES = 5  # per patient; slices 1..3 hold the nodule


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return build_bench(tmp_path_factory.mktemp("bench"), patients=6, slices=SLICES, size=64, masked_patients=4)


def _patients(bench: Path) -> list[str]:
    return sorted(read_manifest(bench)["patient_id"].unique())


def test_manifest_missing_column_names_file_and_column(tmp_path, bench):
    frame = pd.read_csv(bench / "manifest.csv").drop(columns=["mask_source"])
    frame.to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(LungcadError, match=r"manifest\.csv.*'mask_source'"):
        read_manifest(tmp_path)


def test_manifest_listing_a_slice_twice_is_refused(tmp_path, bench):
    frame = pd.read_csv(bench / "manifest.csv")
    pd.concat([frame, frame.iloc[[3, 5]]]).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(LungcadError, match=r"manifest\.csv: 2 rows repeat a slice.*" + frame["image_path"].iloc[3]):
        read_manifest(tmp_path)


def test_manifest_missing_file(tmp_path):
    with pytest.raises(LungcadError, match="manifest.csv"):
        read_manifest(tmp_path)


def test_segmentation_items_nodule_slices_and_negatives(bench):
    patients = _patients(bench)
    only_nodules = segmentation_items(bench, patients, negatives=0.0)
    # 4 masked patients x 3 nodule slices; unmasked patients never appear.
    assert len(only_nodules) == 12 and (only_nodules["nodule_area_px"] > 0).all()
    assert set(only_nodules["mask_source"]) == {"gt"}
    with_negatives = segmentation_items(bench, patients, negatives=0.5)
    negatives = with_negatives[with_negatives["nodule_area_px"] == 0]
    # round(3 * 0.5) = 2 nodule-free slices per series (only 2 exist: slices 0 and 4)
    assert len(negatives) == 8
    assert (negatives.groupby("series_uid").size() == 2).all()
    assert segmentation_items(bench, patients[:1], negatives=0.5)["patient_id"].nunique() == 1


def test_segmentation_items_leave_out_box_masks(bench, tmp_path):
    frame = pd.read_csv(bench / "manifest.csv", dtype=str, keep_default_na=False)
    boxed = sorted(frame.loc[frame["mask_source"] == "gt", "patient_id"].unique())[0]
    frame.loc[frame["patient_id"] == boxed, "mask_source"] = "box"
    copy = tmp_path / "bench"
    copy.mkdir()
    frame.to_csv(copy / "manifest.csv", index=False)
    items = segmentation_items(copy, _patients(bench), negatives=0.5)
    assert boxed not in set(items["patient_id"]) and len(items) > 0
    # nor a ground-truth mask for the classifier (a rectangle from an all-malignant cohort is a shortcut)
    gt_items = classification_items(copy, _patients(bench), mask_source="gt")
    assert boxed not in set(gt_items["patient_id"]) and len(gt_items) > 0


def test_segmentation_dataset_tensors_and_resize(bench):
    items = segmentation_items(bench, _patients(bench), negatives=0.0)
    dataset = SegmentationDataset(items, bench, image_size=32)
    image, mask = dataset[0]
    assert image.shape == mask.shape == (1, 32, 32)
    assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.sum() > 0
    assert image[mask > 0].mean() > image[mask == 0].mean() + 0.3  # the mask sits on the bright disc
    # The same key with a seed gives the same augmented sample.
    augmented = SegmentationDataset(items, bench, image_size=32, transform=A.Compose([A.HorizontalFlip(p=0.5)]))
    first, again = augmented[(3, 11)], augmented[(3, 11)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_neighbour_indices_clamp_at_the_series_ends():
    assert neighbour_indices(4, 1).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert neighbour_indices(5, 2, [0, 4]).tolist() == [[0, 0, 0, 1, 2], [2, 3, 4, 4, 4]]
    assert neighbour_indices(1, 1).tolist() == [[0, 0, 0]]
    assert neighbour_indices(3, 0).tolist() == [[0], [1], [2]]


def test_segmentation_dataset_stacks_series_neighbours(bench):
    manifest = read_manifest(bench)
    items = segmentation_items(bench, _patients(bench), negatives=0.0)  # slices 1..3 only
    dataset = SegmentationDataset(items, bench, image_size=64, context_slices=1)
    row = items.iloc[0]
    series = manifest[manifest["series_uid"] == row["series_uid"]].set_index("slice_index")["image_path"]
    image, mask = dataset[0]
    assert image.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
    # Channel c is slice (index - 1 + c) of the same series, read even though it is not an item.
    for c, index in enumerate((row["slice_index"] - 1, row["slice_index"], row["slice_index"] + 1)):
        expected = read_png(bench / series[index]).astype(np.float32) / 255
        assert np.allclose(image[c].numpy(), expected, atol=1e-6), c
    single, _ = SegmentationDataset(items, bench, image_size=64)[0]
    assert torch.equal(single[0], image[1])  # the centre channel is the 2D input


def test_png_cache_returns_read_only_arrays(bench):
    path = bench / read_manifest(bench)["image_path"].iloc[0]
    image = read_png(path)
    assert image.dtype == np.uint8 and read_png(path) is image
    with pytest.raises(ValueError):
        image[0, 0] = 1


def test_missing_png_is_a_clear_error(tmp_path):
    with pytest.raises(LungcadError, match="nothing.png"):
        read_png(tmp_path / "nothing.png")


def test_classification_items_ground_truth(bench):
    items = classification_items(bench, _patients(bench), mask_source="gt")
    assert items["patient_id"].nunique() == 4  # patients without masks have no GT slices
    assert (items["area_px"] > 0).all()
    assert all(Path(f).is_file() for f in items["mask_file"])
    labels = items.groupby("patient_id")["label"].nunique()
    assert (labels == 1).all()
    limited = classification_items(bench, _patients(bench), mask_source="gt", max_slices_per_patient=2)
    assert (limited.groupby("patient_id").size() == 2).all()



def test_core_slices_keep_each_group_s_largest_cross_sections():
    groups = ["a", "a", "a", "b", "b"]
    areas = [10, 40, 19, 5, 5]
    assert core_slices(groups, areas, 0.5).tolist() == [False, True, False, True, True]
    assert core_slices(groups, areas, 0.0).all()
    assert core_slices(groups, areas, 0.25).tolist() == [True, True, True, True, True]
    with pytest.raises(LungcadError, match="min_area_frac"):
        core_slices(groups, areas, 1.5)


def test_classification_items_core_slices(bench):
    # The fixture's nodules: full radius on the middle slice, 0.75 of it (area 0.56) on its neighbours.
    patients = _patients(bench)
    middle = classification_items(bench, patients, mask_source="gt", min_area_frac=0.6)
    assert (middle.groupby("patient_id").size() == 1).all() and (middle["slice_index"] == SLICES // 2).all()
    assert len(classification_items(bench, patients, mask_source="gt", min_area_frac=0.5)) == 4 * 3


def _write_predicted(bench: Path, pred_dir: Path, empty_patient: str) -> None:
    for _, row in read_manifest(bench).iterrows():
        image = read_png(bench / row["image_path"])
        mask = (image > 125) if row["patient_id"] != empty_patient else np.zeros_like(image, bool)
        out = predicted_mask_path(pred_dir, row["image_path"])
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), mask.astype(np.uint8) * 255)


def test_classification_items_predicted_masks(bench, tmp_path):
    patients = _patients(bench)
    pred_dir = tmp_path / "predicted_masks"
    _write_predicted(bench, pred_dir, empty_patient=patients[0])
    items = classification_items(bench, patients, mask_source="predicted", pred_mask_dir=pred_dir)
    # Predicted masks exist for patients without ground truth too; the all-empty patient is left out.
    assert set(items["patient_id"]) == set(patients[1:])
    assert items.attrs["dropped_patients"] == [patients[0]]
    label = int(read_manifest(bench).query("patient_id == @patients[0]")["label"].max())
    assert items.attrs["dropped_labels"] == {patients[0]: label}
    assert all(str(pred_dir) in f for f in items["mask_file"])
    with pytest.raises(LungcadError, match="pred_mask_dir"):
        classification_items(bench, patients, mask_source="predicted")


def test_predicted_areas_read_areas_csv_with_a_repeated_row(bench, tmp_path):
    """areas.csv of a segmentation run made on a benchmark that listed some slices twice (ingests
    before the fix) repeats those rows: same slice, same mask file, same area."""
    patients = _patients(bench)
    pred_dir = tmp_path / "predicted_masks"
    _write_predicted(bench, pred_dir, empty_patient=patients[0])
    rows = read_manifest(bench)
    from_pngs = predicted_areas(pred_dir, rows)           # no areas.csv: counted on the PNGs
    table = pd.DataFrame({"image_path": rows["image_path"], "patient_id": rows["patient_id"],
                          "area_px": from_pngs + 1})       # +1: tells the table from the PNGs
    pd.concat([table, table.iloc[[2]]]).to_csv(pred_dir / "areas.csv", index=False)
    assert from_pngs.sum() > 0
    np.testing.assert_array_equal(predicted_areas(pred_dir, rows), from_pngs + 1)


def test_classification_dataset_augments_before_features(bench):
    items = classification_items(bench, _patients(bench), mask_source="gt")
    plain = ClassificationDataset(items, bench, input_size=32, crop=16)
    features, label = plain[0]
    assert features.shape == (7, 32, 32) and features.dtype == torch.float32
    assert label.item() == items["label"].iloc[0]
    flip = ClassificationDataset(items, bench, input_size=32, crop=16,
                                 transform=lambda shape: A.Compose([A.HorizontalFlip(p=1.0)]))
    flipped, _ = flip[(0, 5)]
    # Global image and global mask flip together: the mask channel still marks the bright pixels.
    assert torch.allclose(flipped[0], torch.flip(features[0], dims=[-1]), atol=1e-5)
    assert torch.equal(flipped[1], torch.flip(features[1], dims=[-1]))
    assert flipped[0][flipped[1] > 0].mean() > flipped[0][flipped[1] == 0].mean() + 0.3
