"""The seven-channel classifier input built from one lung-window slice and its nodule mask.

Paper section 3.2.5: global image, global mask, context crop, distance transform, edge map, zoomed
texture and zoomed shape, each resized to ``out_size`` and stacked. The paper names the channels but
not how they are computed; the choices below are ours and are the single definition shared by
training (``data.py``) and prediction (``predict.py``), so both see identical inputs. Numpy + scipy
only (no torch, no OpenCV).

Geometry (all in pixels of the input slice):

* **Centre**: the centroid of the largest 8-connected mask component, rounded to the nearest
  pixel. The largest component, not the whole mask, so that a stray speck of a predicted mask
  does not pull the crops away from the nodule. The mask channels still show every component.
* **Context window**: a square of side ``max(2 * crop, min(ceil(2.5 * L), longest image side))``
  where ``L`` is the longest bounding-box side of that component, centred on the centre.
* **Zoom window**: a square of side ``crop`` (64 px, Table 5) on the same centre.
* A window that would leave the image is *shifted* back inside (never shrunk), so a nodule
  touching the border sits off-centre in its crops, against the image edge. Only along an axis
  where the image is smaller than the window is it padded with zeros (the image is then centred).
* **Empty mask**: the windows are centred on the image centre and the context side is
  ``2 * crop``; the mask-derived channels (global mask, distance transform, zoomed shape) are zero.

Channels (float32, all in [0, 1]):

0. ``global_image``: the slice resized to ``out_size`` / 255.
1. ``global_mask``: the mask resized bilinearly, then thresholded at 0.5 (so the area scales with
   the resize instead of nearest-neighbour's aliasing); {0, 1}.
2. ``context_crop``: the image in the context window, resized.
3. ``distance_transform``: Euclidean distance from each mask pixel to the nearest background
   pixel (pixels outside the image count as background: the mask ends at the image edge), read in
   the context window, divided by its maximum in that window; zero outside the mask. (A fixed
   divisor that keeps the absolute size, ``crop / 2``, was tried: no gain for any model measured,
   see the README.)
4. ``edge_map``: Sobel gradient magnitude of the context-window image (computed at native
   resolution, before resizing), resized, then divided by its maximum. Image edges only: the mask
   boundary is already carried by channels 3 and 6. (Normalising after the resize makes the
   maximum exactly 1 whatever the sampling grid.)
5. ``zoomed_texture``: the image in the zoom window, resized.
6. ``zoomed_shape``: the mask in the zoom window, resized (bilinear, not thresholded, so partial
   pixels at the boundary keep their coverage).

Optional eighth channel (``classifier_input`` with ``spacing_yx``; ours, not the paper's):

7. ``nodule_size``: a constant plane holding the equivalent-circle diameter ``d`` (mm) of the largest
   mask component, ``2 sqrt(area_px * row_mm * col_mm / pi)``, encoded as
   ``min(1, ln(1 + d / 10 mm) / ln(1 + SIZE_SCALE_MM / 10 mm))``: 0 for an empty mask, 0.29 at
   10 mm, 1 from 100 mm. Every channel above is in pixels; after the resize to ``out_size`` the
   physical size of a nodule is only implicit (a 5 mm and a 10 mm nodule differ by a few pixels at
   64 px). Size is the strongest single predictor of malignancy (Fleischner, Brock), so a model can
   be handed it explicitly; the fusion models feed this channel to a size prior whose logit is
   added to their image head's (``size_channel``, ``models.fusion.SizePrior``), a timm model reads
   it as one more input plane.

All resizes use one bilinear helper with pixel-centre alignment (OpenCV ``INTER_LINEAR``
semantics, no antialiasing), written with numpy so it is deterministic and fast.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .errors import InputError

CHANNELS = (
    "global_image",
    "global_mask",
    "context_crop",
    "distance_transform",
    "edge_map",
    "zoomed_texture",
    "zoomed_shape",
)
# Recorded in a classifier's model.json; a model trained on other features is refused at load.
# Bump it with any change to the channels. 1: as documented above (runs without the field are 1).
FEATURES_VERSION = 1
SIZE_CHANNEL = len(CHANNELS)  # index of the optional nodule_size channel (classifier_input)
SIZE_SCALE_MM = 100.0  # diameter encoded as 1 (larger ones too)
MASK_CHANNELS = (1, 3, 6)  # channels derived from the mask alone: all zero for an empty mask
PAPER_CROP = 64  # Table 5's nodule crop size: the zoom-window side when none is given
CONTEXT_FACTOR = 2.5  # context window side relative to the nodule's longest bounding-box side

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class NoduleGeometry:
    """Where the crops of one slice are taken: ``(top, left, side)`` windows in input pixels."""

    centre: tuple[int, int]  # (row, col)
    context_box: tuple[int, int, int]
    zoom_box: tuple[int, int, int]
    empty: bool  # True when the mask has no foreground pixel
    area_px: int = 0  # pixels of the largest component (0 when empty)


# ---------------------------------------------------------------------------------------------
# resizing and windows


@functools.lru_cache(maxsize=64)
def _axis_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of 1-D linear interpolation from ``n_in`` to ``n_out`` samples."""
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    x = np.clip(x, 0.0, n_in - 1)
    lo = np.floor(x).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    weight = (x - lo).astype(np.float32)
    return lo, hi, weight


def resize_bilinear(array: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a 2-D array to ``size`` (int for square, or ``(rows, cols)``); float32 out."""
    rows, cols = (size, size) if isinstance(size, int) else size
    a = np.asarray(array, dtype=np.float32)
    lo, hi, w = _axis_taps(a.shape[0], rows)
    a = a[lo] * (1.0 - w)[:, None] + a[hi] * w[:, None]
    lo, hi, w = _axis_taps(a.shape[1], cols)
    return a[:, lo] * (1.0 - w) + a[:, hi] * w


def _axis_start(centre: int, side: int, n: int) -> int:
    """First index of a window of ``side`` around ``centre``, shifted to stay inside ``[0, n)``."""
    if n <= side:  # the image is smaller: centre it in the window (zero padding both sides)
        return -((side - n) // 2)
    return int(np.clip(centre - side // 2, 0, n - side))


def _window_box(centre: tuple[int, int], side: int, shape: tuple[int, int]) -> tuple[int, int, int]:
    return (_axis_start(centre[0], side, shape[0]), _axis_start(centre[1], side, shape[1]), side)


def extract_window(array: np.ndarray, box: tuple[int, int, int]) -> np.ndarray:
    """The ``(top, left, side)`` square of a 2-D array; parts outside the array are zero."""
    top, left, side = box
    out = np.zeros((side, side), dtype=array.dtype)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + side, array.shape[0]), min(left + side, array.shape[1])
    if r1 > r0 and c1 > c0:
        out[r0 - top : r1 - top, c0 - left : c1 - left] = array[r0:r1, c0:c1]
    return out


# ---------------------------------------------------------------------------------------------
# geometry


def largest_component(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The 8-connected component labels of ``mask`` and the label of its largest component, the one
    the crops centre on (ties: the first in raster order; 0 for an empty mask)."""
    labels, count = ndimage.label(np.asarray(mask) > 0, structure=_EIGHT_CONNECTED)
    if count == 0:
        return labels, 0
    return labels, int(np.argmax(np.bincount(labels.ravel())[1:])) + 1


def nodule_geometry(mask: np.ndarray, crop: int = PAPER_CROP) -> NoduleGeometry:
    """Centre and crop windows of the largest mask component (see the module docstring)."""
    shape = np.shape(mask)
    labels, label = largest_component(mask)
    if label == 0:
        centre = (shape[0] // 2, shape[1] // 2)
        return NoduleGeometry(
            centre, _window_box(centre, 2 * crop, shape), _window_box(centre, crop, shape), True
        )
    box = ndimage.find_objects(labels, max_label=label)[label - 1]
    rows, cols = np.nonzero(labels[box] == label)  # within the component's bounding box: fast
    rows, cols = rows + box[0].start, cols + box[1].start
    # floor(x + 0.5): round half up, not numpy's half-to-even, so the rule is easy to state.
    centre = (int(np.floor(rows.mean() + 0.5)), int(np.floor(cols.mean() + 0.5)))
    extent = max(box[0].stop - box[0].start, box[1].stop - box[1].start)
    # The 2.5x part is capped at the image's longest side; the 2 * crop minimum always holds.
    context_side = max(2 * crop, min(math.ceil(CONTEXT_FACTOR * extent), max(shape)))
    return NoduleGeometry(
        centre, _window_box(centre, context_side, shape), _window_box(centre, crop, shape), False, int(rows.size)
    )


def _inside_distance(mask: np.ndarray) -> np.ndarray:
    """Distance of each mask pixel to the nearest background pixel (0 outside the mask).

    Computed on the mask's bounding box plus a one-pixel zero border: the nearest background pixel
    of any mask pixel lies in that box, and the border makes the image edge count as background.
    """
    dist = np.zeros(mask.shape, dtype=np.float32)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return dist
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    padded = np.pad(mask[r0:r1, c0:c1], 1)
    dist[r0:r1, c0:c1] = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    return dist


def _normalise_by_max(array: np.ndarray) -> np.ndarray:
    peak = float(array.max()) if array.size else 0.0
    return array / peak if peak > 0 else np.zeros_like(array)


# ---------------------------------------------------------------------------------------------
# public API


def _check_inputs(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 2:
        raise InputError(f"classifier input: image must be 2-D (H, W), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise InputError(
            f"classifier input: image must be a uint8 lung-window slice, got dtype {image.dtype}"
        )
    if mask.shape != image.shape:
        raise InputError(f"classifier input: mask shape {mask.shape} differs from image shape {image.shape}")
    return image, mask > 0


def equivalent_diameter_mm(area_px: float, spacing_yx) -> float:
    """Diameter (mm) of the circle with the area of ``area_px`` pixels of ``spacing_yx`` (row, col) mm."""
    row_mm, col_mm = (float(v) for v in spacing_yx)
    if not (row_mm > 0 and col_mm > 0):
        raise InputError(f"pixel spacing must be positive, got {tuple(spacing_yx)}")
    return 2.0 * math.sqrt(float(area_px) * row_mm * col_mm / math.pi)


def size_value(diameter_mm: float) -> float:
    """The ``nodule_size`` channel's value for a diameter in mm (see the module docstring)."""
    return float(min(1.0, math.log1p(max(float(diameter_mm), 0.0) / 10.0) / math.log1p(SIZE_SCALE_MM / 10.0)))


def classifier_input(
    image: np.ndarray, mask: np.ndarray, out_size: int = 224, crop: int = PAPER_CROP, spacing_yx=None
) -> np.ndarray:
    """The classifier input of one slice: float32 ``(7, out_size, out_size)`` in [0, 1], or
    ``(8, ...)`` with the ``nodule_size`` plane when ``spacing_yx`` (row, col mm) is given.

    ``image`` is a uint8 lung-window slice (H, W); ``mask`` the nodule mask of the same shape
    (bool or integer, nonzero = nodule). Channel order is ``CHANNELS`` (then ``nodule_size``).
    """
    image, mask = _check_inputs(image, mask)
    geom = nodule_geometry(mask, crop)
    img = image.astype(np.float32) / 255.0
    maskf = mask.astype(np.float32)

    context = extract_window(img, geom.context_box)
    distance = extract_window(_inside_distance(mask), geom.context_box)
    edges = np.hypot(
        ndimage.sobel(context, axis=0, mode="nearest"), ndimage.sobel(context, axis=1, mode="nearest")
    )
    channels = [
        resize_bilinear(img, out_size),
        (resize_bilinear(maskf, out_size) >= 0.5).astype(np.float32),
        resize_bilinear(context, out_size),
        _normalise_by_max(resize_bilinear(distance, out_size)),
        _normalise_by_max(resize_bilinear(edges, out_size)),
        resize_bilinear(extract_window(img, geom.zoom_box), out_size),
        resize_bilinear(extract_window(maskf, geom.zoom_box), out_size),
    ]
    if spacing_yx is not None:
        value = size_value(equivalent_diameter_mm(geom.area_px, spacing_yx))
        channels.append(np.full((out_size, out_size), value, np.float32))
    out = np.stack(channels).astype(np.float32, copy=False)
    # Interpolation is convex, so values stay in [0, 1] up to float rounding; clip that away.
    return np.clip(out, 0.0, 1.0, out=out)


def seven_channels(image: np.ndarray, mask: np.ndarray, out_size: int = 224, crop: int = PAPER_CROP) -> np.ndarray:
    """The paper's seven channels of one slice (``classifier_input`` without the size plane)."""
    return classifier_input(image, mask, out_size, crop)


def batch_classifier_input(images, masks, out_size: int = 224, crop: int = PAPER_CROP, spacings=None) -> np.ndarray:
    """``classifier_input`` for each (image, mask) pair; float32 ``(N, C, out_size, out_size)``.

    ``images`` and ``masks`` are sequences (or ``(N, H, W)`` arrays) of equal length; slices may
    differ in size from one pair to the next. ``spacings``: None (seven channels) or one
    ``(row, col)`` mm pair per slice (eight channels).
    """
    if len(images) != len(masks):
        raise InputError(f"batch_classifier_input: {len(images)} images but {len(masks)} masks")
    if spacings is not None and len(spacings) != len(images):
        raise InputError(f"batch_classifier_input: {len(images)} images but {len(spacings)} spacings")
    channels = len(CHANNELS) + (spacings is not None)
    out = np.empty((len(images), channels, out_size, out_size), dtype=np.float32)
    for i, (image, mask) in enumerate(zip(images, masks)):
        out[i] = classifier_input(image, mask, out_size, crop, None if spacings is None else spacings[i])
    return out
