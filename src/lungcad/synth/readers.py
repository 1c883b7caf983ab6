"""Simulated radiologist reads: who marked which nodule, their ratings and their outlines.

Ratings are drawn so that the source's label rule reproduces the latent class: for LIDC a malignant
nodule gets >= 3 readers rating >= 3 (the paper rule) and a benign one at most two; for LNDb a
malignant finding gets ratings 4-5 and a benign one 1-3 (rule "rating > 3").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .phantom import NoduleSpec, Phantom

_SCALES = {"subtlety": 5, "internalStructure": 4, "calcification": 6, "sphericity": 5, "margin": 5,
           "lobulation": 5, "spiculation": 5, "texture": 5, "malignancy": 5}


@dataclass
class Read:
    """One reader's mark of one phantom nodule."""

    reader: int  # 0-based reader index
    nodule_id: int  # Phantom label value
    rating: int  # malignancy 1-5
    grow: int  # outline perturbation: -1 erode, 0 exact, +1 dilate (in-plane, one pixel)
    characteristics: dict


def _ratings(rng: np.random.Generator, nod: NoduleSpec, n: int, rule: str) -> list[int]:
    r = np.clip(nod.malignancy + rng.choice([-1, 0, 1], size=n, p=[0.2, 0.6, 0.2]), 1, 5)
    if rule == "lndb":
        return [int(v) for v in (np.clip(r, 4, 5) if nod.malignant else np.clip(r, 1, 3))]
    if nod.malignant:
        return [int(v) for v in np.clip(r, 3, 5)]
    r = np.clip(r, 1, 3)
    for i in np.nonzero(r == 3)[0][2:]:  # at most two readers may say 'indeterminate'
        r[i] = 2
    return [int(v) for v in r]


def simulate_reads(rng: np.random.Generator, nodules: list[NoduleSpec], n_readers: int = 4,
                   rule: str = "lidc", miss_rate: float = 0.25) -> list[Read]:
    """Reads of every nodule; benign nodules are missed by some readers, malignant ones by at most one."""
    reads = []
    for nod in nodules:
        seen = rng.random(n_readers) >= (miss_rate * 0.4 if nod.malignant else miss_rate)
        if nod.malignant and n_readers >= 4 and seen.sum() < n_readers - 1:
            seen[:] = True
        if not seen.any():
            seen[int(rng.integers(n_readers))] = True
        readers = np.nonzero(seen)[0]
        ratings = _ratings(rng, nod, len(readers), rule)
        for reader, rating in zip(readers, ratings):
            chars = {k: int(np.clip(v + rng.choice([-1, 0, 0, 1]), 1, _SCALES[k]))
                     for k, v in nod.characteristics.items()}
            chars["malignancy"] = rating
            grow = int(rng.choice([-1, 0, 1], p=[0.2, 0.5, 0.3])) if nod.diameter_mm > 6 else int(rng.choice([0, 1]))
            reads.append(Read(int(reader), nod.id, rating, grow, chars))
    return reads


def reader_region(label: np.ndarray, nodule_id: int, grow: int) -> np.ndarray:
    """The reader's (z, y, x) region: the true mask grown or shrunk by one pixel in-plane."""
    mask = label == nodule_id
    if grow == 0 or not mask.any():
        return mask
    structure = np.zeros((1, 3, 3), bool)
    structure[0] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    op = ndimage.binary_dilation if grow > 0 else ndimage.binary_erosion
    region = op(mask, structure=structure)
    return region if region.any() else mask


def random_lung_points(rng: np.random.Generator, phantom: Phantom, n: int, avoid_mm: float = 12.0) -> list:
    """World points in the lung, away from every nodule (for non-nodules and < 3 mm marks)."""
    zz, yy, xx = np.nonzero(phantom.lung[:, ::4, ::4])
    points = []
    for _ in range(50 * max(n, 1)):
        if len(points) >= n or zz.size == 0:
            break
        k = int(rng.integers(zz.size))
        p = phantom.index_to_world((zz[k], yy[k] * 4, xx[k] * 4))
        if all(np.linalg.norm(p - np.asarray(nd.center_mm)) > nd.diameter_mm + avoid_mm for nd in phantom.nodules):
            points.append(p)
    return points


def label_slices(mask: np.ndarray) -> list[int]:
    """Array z indices where ``mask`` has voxels."""
    return [int(k) for k in np.nonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0]]

