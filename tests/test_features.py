"""The seven-channel classifier input (lungcad.features) on hand-made discs of known size and place."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lungcad.errors import InputError
from lungcad.features import (
    CHANNELS,
    MASK_CHANNELS,
    SIZE_CHANNEL,
    SIZE_SCALE_MM,
    batch_classifier_input,
    classifier_input,
    equivalent_diameter_mm,
    nodule_geometry,
    resize_bilinear,
    seven_channels,
    size_value,
)

GLOBAL_IMAGE, GLOBAL_MASK, CONTEXT, DISTANCE, EDGES, ZOOM_TEXTURE, ZOOM_SHAPE = range(7)


def disc(shape, centre, radius):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def textured_slice(shape, seed=0):
    """A noisy slice with a bright disc-shaped 'nodule' texture drawn on it later by the caller."""
    return np.random.default_rng(seed).integers(0, 120, size=shape, dtype=np.uint8)


def centroid(channel):
    rows, cols = np.nonzero(channel > 0.5)
    return rows.mean(), cols.mean()


@pytest.fixture
def slice_with_disc():
    shape, centre, radius = (256, 256), (100, 150), 12
    mask = disc(shape, centre, radius)
    image = textured_slice(shape)
    image[mask] = 220
    return image, mask, centre, radius


def test_shapes_dtype_and_range(slice_with_disc):
    image, mask, _, _ = slice_with_disc
    out = seven_channels(image, mask)
    assert len(CHANNELS) == 7
    assert out.shape == (7, 224, 224) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    # every channel carries information for a slice with a nodule
    assert all(out[c].max() > 0 for c in range(7))


def test_out_size_and_crop_arguments(slice_with_disc):
    image, mask, _, _ = slice_with_disc
    assert seven_channels(image, mask, out_size=96, crop=32).shape == (7, 96, 96)


def test_global_image_is_the_resized_slice(slice_with_disc):
    image, mask, _, _ = slice_with_disc
    out = seven_channels(image, mask)
    expected = cv2.resize(image.astype(np.float32) / 255, (224, 224), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(out[GLOBAL_IMAGE], expected, atol=1e-5)


def test_global_mask_area_scales_with_the_resize(slice_with_disc):
    image, mask, centre, radius = slice_with_disc
    out = seven_channels(image, mask)
    assert set(np.unique(out[GLOBAL_MASK])) == {0.0, 1.0}
    scale = 224 / 256
    expected_area = np.pi * (radius * scale) ** 2
    assert out[GLOBAL_MASK].sum() == pytest.approx(expected_area, rel=0.1)
    row, col = centroid(out[GLOBAL_MASK])
    # pixel-centre mapping: output pixel i samples input (i + 0.5) / scale - 0.5
    assert row == pytest.approx((centre[0] + 0.5) * scale - 0.5, abs=1.0)
    assert col == pytest.approx((centre[1] + 0.5) * scale - 0.5, abs=1.0)


def test_crops_are_centred_on_the_nodule(slice_with_disc):
    image, mask, centre, radius = slice_with_disc
    geom = nodule_geometry(mask, crop=64)
    assert geom.centre == centre and not geom.empty
    # context side: max(2 * crop, 2.5 * diameter) = max(128, 62.5)
    assert geom.context_box == (centre[0] - 64, centre[1] - 64, 128)
    assert geom.zoom_box == (centre[0] - 32, centre[1] - 32, 64)

    out = seven_channels(image, mask)
    row, col = centroid(out[ZOOM_SHAPE])
    assert row == pytest.approx(111.5, abs=2) and col == pytest.approx(111.5, abs=2)
    # the 64-px zoom magnifies 224/64 = 3.5x: the disc's diameter grows accordingly
    diameter = (out[ZOOM_SHAPE][:, 112] > 0.5).sum()
    assert diameter == pytest.approx((2 * radius + 1) * 3.5, rel=0.1)
    # the zoomed texture shows the bright nodule where the zoomed shape is
    inside = out[ZOOM_TEXTURE][out[ZOOM_SHAPE] > 0.9].mean()
    outside = out[ZOOM_TEXTURE][out[ZOOM_SHAPE] < 0.1].mean()
    assert inside == pytest.approx(220 / 255, abs=0.02) and outside < 0.5


def test_context_window_grows_with_a_large_nodule():
    shape, centre, radius = (512, 512), (256, 256), 40  # diameter 81 -> side ceil(2.5 * 81) = 203
    geom = nodule_geometry(disc(shape, centre, radius), crop=64)
    assert geom.context_box[2] == 203
    top, left, side = geom.context_box
    assert abs(top + side / 2 - centre[0]) <= 1 and abs(left + side / 2 - centre[1]) <= 1


def test_largest_component_sets_the_centre():
    shape = (200, 200)
    mask = disc(shape, (150, 60), 10) | disc(shape, (30, 30), 2)  # nodule + a stray speck
    assert nodule_geometry(mask).centre == (150, 60)


def test_distance_transform_peaks_at_the_disc_centre(slice_with_disc):
    image, mask, _, radius = slice_with_disc
    out = seven_channels(image, mask)
    dist = out[DISTANCE]
    assert dist.max() == pytest.approx(1.0, abs=1e-6)
    peak = np.unravel_index(np.argmax(dist), dist.shape)
    # the context window (128 px) is centred on the disc: its centre maps to ~111.5 at 224
    assert abs(peak[0] - 111.5) <= 2 and abs(peak[1] - 111.5) <= 2
    # zero outside the nodule, increasing towards the centre
    context_mask = dist > 0
    assert context_mask.sum() == pytest.approx(np.pi * (radius * 224 / 128) ** 2, rel=0.15)
    assert dist[112, 112] > dist[112, 112 + 10] > dist[112, 112 + 15]


def test_edge_map_highlights_the_nodule_boundary():
    shape, centre, radius = (256, 256), (128, 128), 15
    mask = disc(shape, centre, radius)
    image = np.full(shape, 40, np.uint8)
    image[mask] = 200  # a flat slice with one bright disc: edges only on its rim
    out = seven_channels(image, mask)
    edges = out[EDGES]
    assert edges.max() == pytest.approx(1.0, abs=1e-6)
    assert edges[112, 112] == 0.0  # flat inside the disc
    assert edges[5, 5] == 0.0  # flat far outside
    rim = int(round(112 + radius * 224 / 128))  # the rim at 224 / 128 magnification
    assert edges[112, rim - 3 : rim + 4].max() > 0.5


def test_empty_mask_fallback():
    image = textured_slice((180, 240), seed=3)
    empty = np.zeros(image.shape, np.uint8)
    geom = nodule_geometry(empty)
    assert geom.empty and geom.centre == (90, 120)
    assert geom.context_box == (90 - 64, 120 - 64, 128)
    out = seven_channels(image, empty)
    for c in MASK_CHANNELS:
        assert not out[c].any(), CHANNELS[c]
    assert MASK_CHANNELS == (GLOBAL_MASK, DISTANCE, ZOOM_SHAPE)
    assert np.isfinite(out).all()
    for c in (GLOBAL_IMAGE, CONTEXT, EDGES, ZOOM_TEXTURE):
        assert out[c].max() > 0, CHANNELS[c]
    # the zoomed texture is the image-centre 64 px square, magnified
    expected = cv2.resize(
        image[58:122, 88:152].astype(np.float32) / 255, (224, 224), interpolation=cv2.INTER_LINEAR
    )
    np.testing.assert_allclose(out[ZOOM_TEXTURE], expected, atol=1e-5)


def test_border_nodule_crops_are_shifted_inside():
    shape = (256, 256)
    mask = disc(shape, (3, 250), 10)  # cut by the top and right edges
    image = textured_slice(shape, seed=5)
    image[mask] = 230
    geom = nodule_geometry(mask)
    top, left, side = geom.zoom_box
    assert (top, left, side) == (0, 256 - 64, 64)  # shifted, not shrunk
    ctop, cleft, cside = geom.context_box
    assert (ctop, cleft, cside) == (0, 256 - 128, 128)
    out = seven_channels(image, mask)
    assert out.shape == (7, 224, 224) and np.isfinite(out).all()
    # the nodule sits in the top-right corner of the zoom, not in its centre
    row, col = centroid(out[ZOOM_SHAPE])
    assert row < 40 and col > 180
    # no zero padding: the zoomed texture is the image's own corner
    expected = cv2.resize(image[0:64, 192:256].astype(np.float32) / 255, (224, 224))
    np.testing.assert_allclose(out[ZOOM_TEXTURE], expected, atol=1e-5)
    # the image edge counts as the nodule boundary, so the distance is small at the cut
    assert out[DISTANCE][0, 223] < 0.2


def test_image_smaller_than_the_context_window_is_zero_padded():
    shape = (100, 100)
    image = np.full(shape, 255, np.uint8)
    mask = disc(shape, (50, 50), 5)
    geom = nodule_geometry(mask, crop=64)
    assert geom.context_box == (-14, -14, 128)
    out = seven_channels(image, mask)
    assert out[CONTEXT][0, 0] == 0.0 and out[CONTEXT][112, 112] == 1.0


def test_non_square_input():
    shape, centre = (200, 256), (60, 200)
    mask = disc(shape, centre, 8)
    image = textured_slice(shape, seed=7)
    out = seven_channels(image, mask)
    assert out.shape == (7, 224, 224)
    row, col = centroid(out[GLOBAL_MASK])
    assert row == pytest.approx((centre[0] + 0.5) * 224 / 200 - 0.5, abs=1.0)
    assert col == pytest.approx((centre[1] + 0.5) * 224 / 256 - 0.5, abs=1.0)
    row, col = centroid(out[ZOOM_SHAPE])
    assert abs(row - 111.5) <= 2 and abs(col - 111.5) <= 2


def test_deterministic_and_mask_dtype_independent(slice_with_disc):
    image, mask, _, _ = slice_with_disc
    first = seven_channels(image, mask)
    np.testing.assert_array_equal(first, seven_channels(image.copy(), mask.copy()))
    np.testing.assert_array_equal(first, seven_channels(image, mask.astype(np.uint8) * 255))


def test_batch_matches_single_calls(slice_with_disc):
    image, mask, _, _ = slice_with_disc
    other = textured_slice((200, 256), seed=9)
    other_mask = disc(other.shape, (150, 40), 6)
    batch = batch_classifier_input([image, other], [mask, other_mask])
    assert batch.shape == (2, 7, 224, 224)
    np.testing.assert_array_equal(batch[1], seven_channels(other, other_mask))


def test_resize_matches_opencv_bilinear():
    rng = np.random.default_rng(11)
    for shape in [(64, 64), (512, 512), (200, 256)]:
        a = rng.random(shape).astype(np.float32)
        expected = cv2.resize(a, (224, 224), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(resize_bilinear(a, 224), expected, atol=1e-5)


@pytest.mark.parametrize(
    "image, mask",
    [
        (np.zeros((64, 64), np.float32), np.zeros((64, 64), bool)),  # not a uint8 lung-window slice
        (np.zeros((2, 64, 64), np.uint8), np.zeros((2, 64, 64), bool)),  # not 2-D
        (np.zeros((64, 64), np.uint8), np.zeros((64, 32), bool)),  # shape mismatch
    ],
)
def test_bad_inputs_raise(image, mask):
    with pytest.raises(InputError):
        seven_channels(image, mask)


def test_size_plane_holds_the_measured_diameter(slice_with_disc):
    """With a pixel spacing, channel 7 is the equivalent diameter of the largest component, encoded."""
    image, mask, _, _ = slice_with_disc
    mask = mask.copy()
    mask[5:7, 5:7] = True  # a 4-pixel speck elsewhere: not the nodule the crops centre on
    area = int(disc((256, 256), (100, 150), 12).sum())
    out = classifier_input(image, mask, out_size=64, crop=32, spacing_yx=(0.7, 0.8))
    assert out.shape == (8, 64, 64)
    np.testing.assert_array_equal(out[:7], seven_channels(image, mask, out_size=64, crop=32))
    diameter = 2 * np.sqrt(area * 0.7 * 0.8 / np.pi)  # about 18 mm
    assert equivalent_diameter_mm(area, (0.7, 0.8)) == pytest.approx(diameter)
    expected = np.log1p(diameter / 10) / np.log1p(SIZE_SCALE_MM / 10)
    np.testing.assert_allclose(out[SIZE_CHANNEL], expected, rtol=1e-6)
    # worked values of the encoding: 0 mm -> 0, 10 mm -> ln 2 / ln 11, capped at 1
    assert size_value(0.0) == 0.0
    assert size_value(10.0) == pytest.approx(np.log(2) / np.log(11))
    assert size_value(250.0) == 1.0
    # twice the spacing, twice the diameter: the plane grows
    coarser = classifier_input(image, mask, out_size=64, crop=32, spacing_yx=(1.4, 1.6))
    assert coarser[SIZE_CHANNEL, 0, 0] > out[SIZE_CHANNEL, 0, 0]
    # an empty mask has size 0; a bad spacing is refused
    empty = classifier_input(image, np.zeros_like(mask), out_size=64, crop=32, spacing_yx=(0.7, 0.8))
    assert not empty[SIZE_CHANNEL].any()
    with pytest.raises(InputError, match="spacing"):
        classifier_input(image, mask, spacing_yx=(0.0, 0.8))


def test_batch_input_with_spacings(slice_with_disc):
    image, mask, _, _ = slice_with_disc
    out = batch_classifier_input([image, image], [mask, mask], out_size=32, crop=16, spacings=[(1, 1), (2, 2)])
    assert out.shape == (2, 8, 32, 32) and out[1, 7, 0, 0] > out[0, 7, 0, 0]
    with pytest.raises(InputError, match="spacings"):
        batch_classifier_input([image], [mask], spacings=[(1, 1), (1, 1)])
