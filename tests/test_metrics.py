"""Metrics against values worked out by hand."""

import numpy as np
import pandas as pd
import pytest

from lungcad.metrics import (
    classification_summary,
    dice,
    iou,
    overlap_counts,
    patient_aggregate,
    segmentation_summary,
)


def test_dice_iou_small_arrays_by_hand():
    pred = np.array([[1, 1, 0], [0, 0, 0]])
    target = np.array([[1, 0, 0], [1, 0, 0]])
    # |P∩T| = 1, |P| = 2, |T| = 2 -> Dice 2/4, IoU 1/3
    assert dice(pred, target) == pytest.approx(0.5)
    assert iou(pred, target) == pytest.approx(1 / 3)


def test_empty_cases_are_explicit():
    empty = np.zeros((4, 4), bool)
    some = empty.copy()
    some[1, 1] = True
    assert dice(empty, empty) == 1.0
    assert iou(empty, empty) == 1.0
    assert np.isnan(dice(empty, empty, empty=np.nan))
    assert dice(some, empty) == 0.0 and iou(empty, some) == 0.0


def test_per_slice_values_for_a_stack():
    pred = np.zeros((3, 2, 2), bool)
    target = np.zeros((3, 2, 2), bool)
    pred[0] = True  # 4 predicted, 2 true of which both hit: Dice 4/6
    target[0, 0] = True
    target[1, 0, 0] = True  # missed entirely
    # slice 2: both empty
    np.testing.assert_allclose(dice(pred, target), [4 / 6, 0.0, 1.0])
    np.testing.assert_allclose(iou(pred, target), [2 / 4, 0.0, 1.0])
    with pytest.raises(ValueError):
        dice(pred, target[:2])


def _slices(rows):
    df = pd.DataFrame(rows, columns=["patient_id", "series_uid", "dataset", "intersection", "pred_px", "target_px"])
    return df


def test_segmentation_summary_by_hand():
    df = _slices(
        [
            # patient A, series s1: two nodule slices
            ("A", "s1", "d1", 3, 4, 4),  # dice 6/8 = .75, iou 3/5
            ("A", "s1", "d1", 0, 0, 2),  # dice 0, iou 0
            ("A", "s1", "d1", 0, 0, 0),  # empty, correctly empty
            # patient B: one nodule slice, two empty slices (one with a false positive)
            ("B", "s2", "d2", 5, 5, 5),  # dice 1
            ("B", "s2", "d2", 0, 3, 0),  # FP on empty slice: dice 0
            ("B", "s2", "d2", 0, 0, 0),
        ]
    )
    s = segmentation_summary(df)
    assert s["n_slices"] == 6 and s["n_nodule_slices"] == 3 and s["n_empty_slices"] == 3
    assert s["dice_nodule"] == pytest.approx((0.75 + 0 + 1) / 3)
    assert s["iou_nodule"] == pytest.approx((0.6 + 0 + 1) / 3)
    assert s["dice_all"] == pytest.approx((0.75 + 0 + 1 + 1 + 0 + 1) / 6)
    assert s["fp_rate_empty"] == pytest.approx(1 / 3)
    # 3D Dice: A = 2*3/(4+6) = .6 ; B = 2*5/(8+5) = 10/13
    assert s["dice_3d"] == pytest.approx((0.6 + 10 / 13) / 2)
    assert set(s["per_dataset"]) == {"d1", "d2"}
    assert s["per_dataset"]["d2"]["fp_rate_empty"] == pytest.approx(0.5)
    assert s["per_dataset"]["d1"]["dice_nodule"] == pytest.approx(0.375)


def test_dice_by_cross_section_size():
    df = _slices(
        [
            ("A", "s1", "d", 3, 4, 4),  # 4 px x 1 mm2: diameter 2.26 mm -> "0-5 mm", dice .75
            ("A", "s1", "d", 0, 0, 4),  # same class, missed: dice 0
            ("A", "s1", "d", 40, 50, 50),  # 50 mm2: 7.98 mm -> "5-10 mm", dice .8
            ("A", "s1", "d", 0, 3, 0),  # empty slice: in no class
        ]
    )
    assert "by_size" not in segmentation_summary(df)  # needs the pixel area
    df["pixel_area_mm2"] = 1.0
    by_size = segmentation_summary(df)["by_size"]
    assert list(by_size) == ["0-5 mm", "5-10 mm"]
    assert by_size["0-5 mm"] == {"n_slices": 2, "dice_nodule": pytest.approx(0.375), "missed": 0.5}
    assert by_size["5-10 mm"]["dice_nodule"] == pytest.approx(0.8)
    df["pixel_area_mm2"] = 8.0  # the same pixels, 8x the area: 4 px -> 6.4 mm, 50 px -> 22.6 mm
    assert list(segmentation_summary(df)["by_size"]) == ["5-10 mm", ">= 20 mm"]


def test_3d_dice_stacks_per_series_then_averages():
    df = _slices(
        [
            ("A", "s1", "d", 1, 1, 1),  # series s1: dice 1
            ("A", "s2", "d", 0, 1, 1),  # series s2: dice 0
        ]
    )
    assert segmentation_summary(df)["dice_3d"] == pytest.approx(0.5)


def test_overlap_counts_matches_manual():
    rng = np.random.default_rng(0)
    p = rng.random((5, 8, 8)) > 0.5
    t = rng.random((5, 8, 8)) > 0.5
    c = overlap_counts(p, t)
    assert c["intersection"][2] == int((p[2] & t[2]).sum())
    assert c["pred_px"][4] == int(p[4].sum())


def test_classification_summary_by_hand():
    y = [1, 1, 1, 0, 0]
    prob = [0.9, 0.6, 0.4, 0.55, 0.1]
    s = classification_summary(y, prob)
    # predictions: 1 1 0 1 0 -> TP 2, FN 1, FP 1, TN 1
    assert s["confusion_matrix"] == [[1, 1], [1, 2]]
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["sensitivity"] == pytest.approx(2 / 3)
    assert s["specificity"] == pytest.approx(1 / 2)
    assert s["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # AUC: pairs (pos, neg): .9>.55,.9>.1,.6>.55,.6>.1,.4<.55,.4>.1 -> 5/6
    assert s["auc"] == pytest.approx(5 / 6)
    single = classification_summary([1, 1], [0.2, 0.8])
    assert np.isnan(single["auc"]) and np.isnan(single["specificity"])


def test_patient_aggregate_means_slices():
    df = pd.DataFrame(
        {
            "patient_id": ["b", "a", "a", "b", "b"],
            "label": [0, 1, 1, 0, 0],
            "prob": [0.1, 0.8, 0.4, 0.4, 0.7],
            "dataset": ["x", "y", "y", "x", "x"],
        }
    )
    out = patient_aggregate(df)
    assert list(out["patient_id"]) == ["a", "b"]
    np.testing.assert_allclose(out["prob"], [0.6, 0.4])
    assert list(out["n_slices"]) == [2, 3]
    assert list(out["label"]) == [1, 0] and list(out["dataset"]) == ["y", "x"]
    np.testing.assert_allclose(patient_aggregate(df, how="max")["prob"], [0.8, 0.7])
    bad = df.assign(label=[0, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="a"):
        patient_aggregate(bad)
    # patients that must be scored without a slice ("no nodule found") join with probability 0
    absent = pd.DataFrame({"label": [1, 0], "dataset": ["z", "x"]}, index=["c", "b"])
    filled = patient_aggregate(df, absent=absent)
    assert list(filled["patient_id"]) == ["a", "b", "c"]  # b has slices: kept as aggregated
    np.testing.assert_allclose(filled["prob"], [0.6, 0.4, 0.0])
    assert list(filled["n_slices"]) == [2, 3, 0] and list(filled["label"]) == [1, 0, 1]
    assert list(filled["dataset"]) == ["y", "x", "z"]
