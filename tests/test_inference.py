"""SliceSegmenter / SliceClassifier: pre/post-processing, backends (torch, ONNX, bf16), run checks."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch

from lungcad.errors import LungcadError
from lungcad.export_onnx import export_onnx
from lungcad.features import FEATURES_VERSION
from lungcad.inference import SliceClassifier, SliceSegmenter
from lungcad.models import create_classifier, create_segmenter, save_run_model

SIZE = 64


def disc_images(rng: np.random.Generator, n: int, height: int = SIZE, width: int = SIZE):
    """Bright discs (nodule-like, about 0 HU) on a dark noisy background (lung, about -900 HU)."""
    yy, xx = np.mgrid[:height, :width]
    images = rng.normal(64, 12, (n, height, width))
    masks = np.zeros((n, height, width), bool)
    for i in range(n):
        for _ in range(int(rng.integers(1, 3))):
            cy, cx = rng.uniform(10, height - 10), rng.uniform(10, width - 10)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(3, 8) ** 2
            images[i][disc] = rng.uniform(170, 250)
            masks[i] |= disc
    return np.clip(images, 0, 255).astype(np.uint8), masks


def train_disc_segmenter(run_dir, steps: int = 50, seed: int = 0):
    """A LightUNet trained a few steps to find bright discs: non-trivial masks for tests."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = create_segmenter("lightunet")
    optim = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        images, masks = disc_images(rng, 8)
        x = torch.from_numpy(images / 255.0).float()[:, None]
        y = torch.from_numpy(masks).float()[:, None]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        optim.zero_grad()
        loss.backward()
        optim.step()
    save_run_model(run_dir, model.eval(), {"task": "segmentation", "arch": "lightunet", "kwargs": {},
                                           "in_channels": 1, "image_size": SIZE,
                                           "window_hu": [-1200, 0], "threshold": 0.5})
    return run_dir


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    return train_disc_segmenter(tmp_path_factory.mktemp("seg-run"))


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cls-run")
    torch.manual_seed(0)
    save_run_model(run, create_classifier("mobilenetv3-large"),
                   {"task": "classification", "arch": "mobilenetv3-large", "kwargs": {},
                    "features_version": FEATURES_VERSION,
                    "in_channels": 7, "image_size": 64, "crop": 32, "window_hu": [-1200, 0]})
    return run


def test_segmenter_finds_discs_at_any_input_size(seg_run):
    # 96x80 input: resized to the model's 64x64 and back, so masks must still land on the discs.
    images, truth = disc_images(np.random.default_rng(1), 4, 96, 80)
    seg = SliceSegmenter.from_run(seg_run, batch_size=3)
    proba = seg.predict_proba(images)
    assert proba.shape == images.shape and proba.dtype == np.float32
    assert proba.min() >= 0.0 and proba.max() <= 1.0
    assert dice(seg.predict_masks(images), truth) > 0.7


def test_threshold_comes_from_model_json(seg_run):
    images, _ = disc_images(np.random.default_rng(2), 2)
    seg = SliceSegmenter.from_run(seg_run)
    proba = seg.predict_proba(images)
    seg.model_json = {**seg.model_json, "threshold": 0.9}
    np.testing.assert_array_equal(seg.predict_masks(images), proba >= 0.9)


def test_onnx_backend_matches_torch(seg_run):
    images, _ = disc_images(np.random.default_rng(3), 6)
    torch_seg = SliceSegmenter.from_run(seg_run, backend="torch")
    onnx_seg = SliceSegmenter.from_run(seg_run, backend="onnx")
    for roi in (None, (8, 40, 16, 60)):
        p_torch = torch_seg.predict_proba(images, roi=roi)
        p_onnx = onnx_seg.predict_proba(images, roi=roi)
        assert np.abs(p_torch - p_onnx).max() <= 1e-3
        masks = p_torch >= 0.5
        assert masks.any()
        assert dice(masks, p_onnx >= 0.5) >= 0.99


def test_bf16_autocast_close_to_fp32(seg_run):
    images, _ = disc_images(np.random.default_rng(4), 4)
    fp32 = SliceSegmenter.from_run(seg_run).predict_masks(images)
    bf16 = SliceSegmenter.from_run(seg_run, precision="bf16").predict_masks(images)
    assert dice(fp32, bf16) >= 0.95


def test_roi_restricts_the_network_to_the_region(seg_run):
    images, truth = disc_images(np.random.default_rng(5), 4, 128, 128)
    yy, xx = np.mgrid[:128, :128]
    corner = (yy - 112) ** 2 + (xx - 112) ** 2 <= 36   # a disc far outside the region
    images[:, corner] = 230
    seg = SliceSegmenter.from_run(seg_run)
    roi = (20, 60, 30, 70)
    full = seg.predict_masks(images)
    cropped = seg.predict_masks(images, roi=roi)
    assert full[:, corner].mean() > 0.5
    # The region grows to sides of 32 model pixels (here <= 32 input pixels more per side);
    # nothing is predicted beyond that, and inside the requested region the masks agree.
    grown = np.zeros((128, 128), bool)
    grown[max(0, 20 - 32):60 + 32, max(0, 30 - 32):70 + 32] = True
    assert not cropped[:, ~grown].any()
    inside = np.zeros((128, 128), bool)
    inside[20:60, 30:70] = True
    assert dice(full[:, inside], cropped[:, inside]) >= 0.95


def test_2p5d_segmenter_reads_neighbours_from_the_stack(tmp_path):
    torch.manual_seed(0)
    model = create_segmenter("lightunet", in_channels=3).eval()
    save_run_model(tmp_path, model, {"task": "segmentation", "arch": "lightunet", "kwargs": {},
                                     "in_channels": 3, "context_slices": 1, "image_size": SIZE,
                                     "window_hu": [-1200, 0], "threshold": 0.5})
    seg = SliceSegmenter.from_run(tmp_path)
    assert seg.context_slices == 1
    stack, _ = disc_images(np.random.default_rng(6), 5)
    full = seg.predict_proba(stack)
    assert full.shape == (5, SIZE, SIZE)
    # Slice 2 sees slices 1, 2, 3; the first slice sees itself twice (clamped), then slice 1.
    with torch.no_grad():
        for index, neighbours in ((2, [1, 2, 3]), (0, [0, 0, 1])):
            x = torch.from_numpy(stack[neighbours].astype(np.float32) / 255.0)[None]
            expected = torch.sigmoid(model(x))[0, 0].numpy()
            np.testing.assert_allclose(full[index], expected, atol=1e-5)
    # ``indices`` predicts a subset with neighbours from the whole stack (chunked callers).
    np.testing.assert_allclose(seg.predict_proba(stack, indices=[2, 4]), full[[2, 4]], atol=1e-6)
    assert np.abs(seg.predict_proba(stack[2:3])[0] - full[2]).max() > 1e-4  # alone, it lacks its neighbours


def test_weights_that_do_not_fit_model_json_are_a_clear_error(tmp_path):
    """A run whose weights come from another build of the architecture (e.g. an older lungcad)."""
    from lungcad.models import load_run_model

    info = {"task": "segmentation", "arch": "lightunet", "kwargs": {}, "in_channels": 1,
            "image_size": SIZE, "window_hu": [-1200, 0], "threshold": 0.5}
    save_run_model(tmp_path, create_segmenter("lightunet", in_channels=3), info)  # model.json says 1 channel
    with pytest.raises(LungcadError, match=r"best\.safetensors: weights do not fit lightunet"):
        load_run_model(tmp_path)


def test_stale_model_onnx_is_not_used(tmp_path):
    run = tmp_path / "run"
    torch.manual_seed(1)
    info = {"task": "segmentation", "arch": "lightunet", "kwargs": {}, "in_channels": 1,
            "image_size": SIZE, "window_hu": [-1200, 0], "threshold": 0.5}
    save_run_model(run, create_segmenter("lightunet"), info)
    export_onnx(run, run / "model.onnx", check=False)
    old = time.time() - 100
    os.utime(run / "model.onnx", (old, old))
    torch.manual_seed(2)
    save_run_model(run, create_segmenter("lightunet"), info)  # the run trained further
    images, _ = disc_images(np.random.default_rng(6), 2)
    p_torch = SliceSegmenter.from_run(run).predict_proba(images)
    p_onnx = SliceSegmenter.from_run(run, backend="onnx").predict_proba(images)
    assert np.abs(p_torch - p_onnx).max() <= 1e-3


def test_classifier_reads_input_size_and_crop_and_agrees_across_backends(cls_run):
    clf = SliceClassifier.from_run(cls_run, batch_size=2)
    assert (clf.input_size, clf.crop) == (64, 32)
    feats = np.random.default_rng(7).random((5, 7, 64, 64), dtype=np.float32)
    p = clf.predict_proba(feats)
    assert p.shape == (5,) and p.dtype == np.float32
    assert ((p >= 0) & (p <= 1)).all()
    # Batching must not change the answer, nor must the runtime.
    one_by_one = np.concatenate([clf.predict_proba(feats[i:i + 1]) for i in range(5)])
    np.testing.assert_allclose(p, one_by_one, atol=1e-5)
    p_onnx = SliceClassifier.from_run(cls_run, backend="onnx").predict_proba(feats)
    assert np.abs(p - p_onnx).max() <= 1e-3


def test_classifier_trained_on_other_features_is_refused(cls_run, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(cls_run, other)
    info = json.loads((other / "model.json").read_text())
    info["features_version"] = FEATURES_VERSION + 1
    (other / "model.json").write_text(json.dumps(info))
    with pytest.raises(LungcadError, match=f"features version {FEATURES_VERSION + 1}.*retrain"):
        SliceClassifier.from_run(other)
    del info["features_version"]  # runs from before the field existed computed version 1
    (other / "model.json").write_text(json.dumps(info))
    assert SliceClassifier.from_run(other).crop == 32


def test_wrong_task_and_bad_options_are_clear_errors(seg_run, cls_run, tmp_path):
    with pytest.raises(LungcadError, match="segmentation run"):
        SliceClassifier.from_run(seg_run)
    with pytest.raises(LungcadError, match="classification run"):
        SliceSegmenter.from_run(cls_run)
    with pytest.raises(LungcadError, match="backend"):
        SliceSegmenter.from_run(seg_run, backend="tensorrt")
    with pytest.raises(LungcadError, match="fp32"):
        SliceSegmenter.from_run(seg_run, backend="onnx", precision="bf16")
    with pytest.raises(LungcadError, match="model.json"):
        SliceSegmenter.from_run(tmp_path)


def test_flip_tta_averages_the_mirror_images():
    """With ``tta="flip"`` the probabilities are the mean over the four mirror images, so they are
    equivariant under those flips; one pass of an untrained model is not."""
    from lungcad.inference import SliceSegmenter, check_tta
    from lungcad.models import create_segmenter

    torch.manual_seed(0)
    model = create_segmenter("lightunet", in_channels=1).eval()

    def runner(batch):
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).numpy()

    info = {"task": "segmentation", "image_size": 64, "in_channels": 1, "threshold": 0.5}
    plain = SliceSegmenter(runner, info)
    assert plain.tta == "none"
    flip = plain.with_options(tta="flip")
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64)).astype(np.uint8)
    mirrored = np.ascontiguousarray(images[:, ::-1, :])
    p, pm = flip.predict_proba(images), flip.predict_proba(mirrored)
    np.testing.assert_allclose(pm[:, ::-1, :], p, atol=1e-5)
    assert np.abs(plain.predict_proba(mirrored)[:, ::-1, :] - plain.predict_proba(images)).max() > 1e-3
    # the mean of the four single passes, by hand
    mean = sum(np.flip(plain.predict_proba(np.ascontiguousarray(np.flip(images, a))), a)
               for a in ((), (2,), (1,), (1, 2))) / 4
    np.testing.assert_allclose(p, mean, atol=1e-5)
    assert plain.with_options(tta=None) is plain
    with pytest.raises(LungcadError, match="unknown test-time augmentation"):
        check_tta("rotate")


def test_drop_faint_components_keeps_components_that_reach_the_peak():
    """A 3D component survives when its highest probability reaches ``min_peak``; voxels that touch
    only by a corner across slices are one component (26-connectivity)."""
    from lungcad.inference import check_min_peak, drop_faint_components

    proba = np.zeros((3, 8, 8), np.float32)
    proba[0, 1, 1], proba[1, 2, 2] = 0.95, 0.6   # one nodule: corner contact across slices
    proba[2, 5:7, 5:7] = 0.7                       # a faint blob: never above 0.7
    mask = proba >= 0.5
    kept = drop_faint_components(mask, proba, 0.8)
    assert kept[0, 1, 1] and kept[1, 2, 2]         # the 0.6 voxel belongs to the 0.95 component
    assert not kept[2].any()
    assert kept.sum() == 2
    np.testing.assert_array_equal(drop_faint_components(mask, proba, 0.7), mask)  # the peak itself counts
    for off in (None, 0, 0.0):
        np.testing.assert_array_equal(drop_faint_components(mask, proba, off), mask)
    assert not drop_faint_components(np.zeros_like(mask), proba, 0.8).any()
    assert check_min_peak(None) is None and check_min_peak("0.8") == 0.8
    for bad in (1.5, -0.1, "high"):
        with pytest.raises(LungcadError, match="min_component_peak"):
            check_min_peak(bad)


def test_series_masks_filter_components_across_chunks():
    """``predict_series_masks`` filters whole-series components, also when a component crosses the
    border between two chunks; the model.json key and ``with_options`` set the filter."""
    # A runner whose logits are the input itself: probability = sigmoid(pixel / 255 scaled).
    def runner(batch):
        return np.log(batch / (1 - batch + 1e-6) + 1e-6)  # logit of the pixel value in [0, 1]

    info = {"task": "segmentation", "image_size": 16, "in_channels": 1, "threshold": 0.5}
    images = np.zeros((6, 16, 16), np.uint8)
    images[1:5, 4:8, 4:8] = 153   # p = 0.6 on slices 1-4 ...
    images[4, 5:7, 5:7] = 242     # ... peaking at 0.95 on slice 4, in the second chunk of 3
    images[1, 11:14, 11:14] = 166  # a separate faint blob, p = 0.65
    plain = SliceSegmenter(runner, info)
    assert plain.min_component_peak is None
    filtered = plain.with_options(min_component_peak=0.9)
    assert filtered.min_component_peak == 0.9 and plain.with_options() is plain
    raw = np.stack(plain.predict_series_masks(list(images), chunk=3))
    kept = np.stack(filtered.predict_series_masks(list(images), chunk=3))
    assert raw[1, 12, 12] and not kept[1, 12, 12]           # the faint blob goes
    np.testing.assert_array_equal(kept[1:5, 4:8, 4:8], raw[1:5, 4:8, 4:8])  # the nodule stays whole
    assert kept[1:5, 4:8, 4:8].all() and kept.sum() == 4 * 16
    again = SliceSegmenter(runner, {**info, "min_component_peak": 0.9})
    np.testing.assert_array_equal(np.stack(again.predict_series_masks(list(images), chunk=3)), kept)
    np.testing.assert_array_equal(np.stack(filtered.with_options(min_component_peak=0).predict_series_masks(
        list(images), chunk=3)), raw)
