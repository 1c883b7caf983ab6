"""Harmonisation shared by ingest, features and predict: the lung window, in-plane orientation,
optional in-plane resampling and atomic PNG writing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lungcad.io import write_bytes_atomic
from lungcad.io import write_text_atomic as write_text_atomic  # re-exported: ingest, manifest, splits

WINDOW_HU = (-1200.0, 0.0)
# Fast lossless PNG: zlib level 1 with the run-length strategy was the quickest and smallest of
# the settings we measured on CT slices (Pillow level 1, OpenCV default/filtered/huffman/RLE).
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]


def lung_window(hu: np.ndarray) -> np.ndarray:
    """HU -> uint8 with the fixed lung window -1200..0 HU: ``clip((hu+1200)/1200*255, 0, 255)``
    rounded half up, so -1200 HU -> 0 and 0 HU -> 255."""
    low, high = WINDOW_HU
    scaled = np.asarray(hu, dtype=np.float32) - np.float32(low)  # a new array: safe in place below
    scaled *= np.float32(255.0 / (high - low))
    # floor(clip(x, 0, 255) + 0.5) == trunc(clip(x + 0.5, 0.5, 255.5)), with fewer temporaries
    scaled += np.float32(0.5)
    np.clip(scaled, 0.5, 255.5, out=scaled)
    return scaled.astype(np.uint8)


def canonical_inplane(array: np.ndarray, mask: np.ndarray | None, spacing, origin, direction):
    """Reorient (z, y, x) arrays in-plane so that columns run along +world x and rows along
    +world y (the usual radiological display), when the in-plane axes are aligned with the world
    axes. Oblique planes are returned unchanged. Slice order is left as the reader gave it.

    Returns (array, mask, spacing, origin, direction, changed: bool); arrays may be views.
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)  # columns: directions of index x, y, z
    sx, sy, sz = (float(v) for v in spacing)
    o = np.asarray(origin, dtype=float)
    cols = d[:, 0], d[:, 1]
    dominant = [int(np.argmax(np.abs(c))) for c in cols]
    aligned = all(abs(abs(c[a]) - 1) < 1e-3 for c, a in zip(cols, dominant))
    if not aligned or sorted(dominant) != [0, 1]:
        return array, mask, (sx, sy, sz), tuple(o), tuple(direction), False
    changed = False
    if dominant == [1, 0]:  # index x runs along world y: swap the in-plane axes
        array = np.swapaxes(array, 1, 2)
        mask = None if mask is None else np.swapaxes(mask, 1, 2)
        d[:, [0, 1]] = d[:, [1, 0]]
        sx, sy = sy, sx
        changed = True
    # array axis 2 is index x (column), axis 1 is index y (row)
    for axis_index, array_axis, step in ((0, 2, sx), (1, 1, sy)):
        if d[axis_index, axis_index] < 0:
            n = array.shape[array_axis]
            o = o + d[:, axis_index] * step * (n - 1)
            d[:, axis_index] = -d[:, axis_index]
            array = np.flip(array, axis=array_axis)
            mask = None if mask is None else np.flip(mask, axis=array_axis)
            changed = True
    return array, mask, (sx, sy, sz), tuple(o), tuple(float(v) for v in d.ravel()), changed


def resample_slice(image: np.ndarray, spacing_yx: tuple[float, float], target: float,
                   is_mask: bool = False) -> np.ndarray:
    """Resample one 2D slice to ``target`` mm pixels (linear for images, nearest for masks)."""
    rows = max(1, int(round(image.shape[0] * spacing_yx[0] / target)))
    cols = max(1, int(round(image.shape[1] * spacing_yx[1] / target)))
    if (rows, cols) == image.shape:
        return image
    if is_mask:
        out = cv2.resize(image.astype(np.uint8), (cols, rows), interpolation=cv2.INTER_NEAREST)
        return out.astype(bool)
    return cv2.resize(np.ascontiguousarray(image, dtype=np.float32), (cols, rows),
                      interpolation=cv2.INTER_LINEAR)


def write_png_atomic(path: Path, image_u8: np.ndarray) -> None:
    """Write a uint8 2D PNG under a temporary name in the same folder, then rename it into place,
    so that a reader never sees a half-written file."""
    image = np.ascontiguousarray(image_u8, dtype=np.uint8)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D uint8 slice, got shape {image.shape}")
    write_bytes_atomic(path, _encode_png(image))


_EMPTY_PNG: dict[tuple[int, int], bytes] = {}


def _encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a 2D uint8 image; all-zero images (most mask slices) are encoded once per shape."""
    empty = not image.any()
    if empty and image.shape in _EMPTY_PNG:
        return _EMPTY_PNG[image.shape]
    ok, encoded = cv2.imencode(".png", image, _PNG_PARAMS)
    if not ok:
        raise OSError("PNG encoding failed")
    data = encoded.tobytes()
    if empty:
        _EMPTY_PNG[image.shape] = data
    return data
