"""Augmentation: masks follow geometry, photometric/dropout leave the mask, seeds reproduce."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from _bench_fixture import disc
from lungcad.augment import apply, build_augmentation, light_augmentation, nodule_crop, paper_augmentation

SIZE = 96


def _slice(center=(30, 60), radius=12):
    mask = disc(SIZE, center, radius)
    image = np.full((SIZE, SIZE), 20, np.uint8)
    image[mask] = 230
    return image, mask.astype(np.uint8)


def _geometric_only(pipeline: A.Compose) -> A.Compose:
    photometric = (A.RandomGamma, A.RandomBrightnessContrast, A.CoarseDropout)
    return A.Compose([t for t in pipeline.transforms if not isinstance(t, photometric)])


@pytest.mark.parametrize("build", [paper_augmentation, light_augmentation])
def test_mask_stays_on_the_bright_disc(build):
    image, mask = _slice()
    pipeline = _geometric_only(build(SIZE)) if build is paper_augmentation else build(SIZE)
    for seed in range(12):
        out_image, out_mask = apply(pipeline, image, mask, seed=seed)
        assert out_image.shape == out_mask.shape == (SIZE, SIZE)
        inside = out_mask > 0
        assert inside.sum() > 50, seed  # the disc is still there
        bright = out_image > 125
        # Nearest (mask) vs linear (image) interpolation may differ on the rim only.
        assert (bright & inside).sum() / inside.sum() > 0.85, seed
        assert (bright & ~inside).sum() / max(1, bright.sum()) < 0.15, seed


def test_photometric_and_dropout_do_not_touch_the_mask():
    image, mask = _slice()
    pipeline = A.Compose([
        A.RandomGamma(gamma_limit=(70, 130), p=1.0),
        A.RandomBrightnessContrast(0.25, 0.25, p=1.0),
        A.CoarseDropout(num_holes_range=(8, 8), hole_height_range=(16, 32), hole_width_range=(16, 32),
                        fill=0, fill_mask=None, p=1.0),
    ])
    out_image, out_mask = apply(pipeline, image, mask, seed=3)
    assert np.array_equal(out_mask, mask)
    assert not np.array_equal(out_image, image)


def test_paper_dropout_keeps_the_mask_target():
    dropout = [t for t in paper_augmentation(SIZE).transforms if isinstance(t, A.CoarseDropout)]
    assert len(dropout) == 1 and dropout[0].fill_mask is None


def test_same_seed_same_output_and_different_seeds_differ():
    image, mask = _slice()
    pipeline = paper_augmentation(SIZE)
    first = apply(pipeline, image, mask, seed=7)
    apply(pipeline, image, mask, seed=99)  # an unrelated draw in between must not matter
    again = apply(pipeline, image, mask, seed=7)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    other = apply(pipeline, image, mask, seed=8)
    assert not np.array_equal(first[0], other[0])


def test_seeded_transforms_draw_independently():
    # albumentations' own set_random_seed gives every child the same stream (flip decisions then
    # always agree); ours must not.
    image = np.arange(SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)  # no symmetry
    pipeline = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    outcomes = set()
    for seed in range(40):
        out, _ = apply(pipeline, image, np.zeros((SIZE, SIZE), np.uint8), seed=seed)
        h = bool(np.array_equal(out, image[:, ::-1]) or np.array_equal(out, image[::-1, ::-1]))
        v = bool(np.array_equal(out, image[::-1, :]) or np.array_equal(out, image[::-1, ::-1]))
        outcomes.add((h, v))
    assert (True, False) in outcomes and (False, True) in outcomes


def test_nodule_crop_keeps_the_nodule_and_crop_size():
    image, mask = _slice(center=(80, 15), radius=5)
    pipeline = build_augmentation("none", SIZE, crop=32, nodule_crop_p=1.0)
    for seed in range(10):
        out_image, out_mask = apply(pipeline, image, mask, seed=seed)
        assert out_image.shape == (32, 32)
        assert out_mask.sum() > 0


def test_unknown_augmentation_name():
    with pytest.raises(ValueError, match="paper"):
        build_augmentation("heavy", SIZE)


def test_nodule_crop_random_when_mask_empty():
    image = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE), dtype=np.uint8)
    out, out_mask = apply(A.Compose([nodule_crop(16, 0.9)]), image, np.zeros_like(image), seed=1)
    assert out.shape == (16, 16) and out_mask.sum() == 0


def test_light_scale_jitter_zooms_both_ways_and_crop_keeps_the_nodule():
    image, mask = _slice(center=(48, 48), radius=10)
    areas = [apply(build_augmentation("light", SIZE, jitter=True), image, mask, seed=s)[1].sum() for s in range(40)]
    base = mask.sum()
    # Zoom out shrinks the disc, zoom in grows it (up to 1.6^2 x the area), the rest keep it.
    assert min(areas) < 0.8 * base and max(areas) > 1.4 * base
    assert max(areas) < 1.6 ** 2 * base * 1.1
    cropped = build_augmentation("light", SIZE, crop=48, nodule_crop_p=1.0, jitter=True)
    for seed in range(10):
        out_image, out_mask = apply(cropped, image, mask, seed=seed)
        assert out_image.shape == (48, 48) and out_mask.sum() > 0


def test_augmentation_keeps_2p5d_channels_together():
    image, mask = _slice()
    stack = np.stack([image, image // 2, image // 4], axis=-1).astype(np.float32) / 255
    out, out_mask = apply(build_augmentation("light", SIZE, crop=48, nodule_crop_p=1.0, jitter=True), stack, mask, seed=3)
    assert out.shape == (48, 48, 3)
    # Every channel went through the same geometry: the channel ratios survive on the disc.
    inside = out_mask > 0
    assert np.allclose(out[..., 1][inside] * 2, out[..., 0][inside], atol=0.02)


def test_classification_pipeline_keeps_the_nodule_size():
    # jitter=False (the default; classification): flips and 90° turns only move the disc.
    image, mask = _slice(center=(48, 48), radius=10)
    pipeline = build_augmentation("light", SIZE, jitter=False)
    assert {int(apply(pipeline, image, mask, seed=s)[1].sum()) for s in range(20)} == {int(mask.sum())}
