"""Synthetic chest-CT phantoms: anatomy, vessels, nodules and a noisy malignancy model.

Everything is vectorised numpy; the volume is built in slabs of slices so that a 512x512x300
phantom stays within a few hundred MB and a few seconds.  Geometry follows the LPS/ITK frame with
an identity direction: ``world = origin + spacing * (x, y, z index)``; arrays are (z, y, x).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

HU_MIN, HU_MAX = -1024, 3071  # storable range of 12-bit CT with intercept -1024
SHAPES = ("smooth", "lobulated", "spiculated")
DENSITIES = ("solid", "part-solid", "ground-glass", "calcified")

# Logistic malignancy model on morphology.  Coefficients were tuned (see tests) so that diameter
# alone reaches an AUC of roughly 0.8 and no feature set separates the classes perfectly.
_MAL_INTERCEPT = -0.9
_MAL_LOG_DIAMETER = 2.6  # per unit of ln(diameter / 10 mm)
_MAL_SHAPE = {"smooth": -0.5, "lobulated": 0.4, "spiculated": 1.3}
_MAL_DENSITY = {"solid": 0.3, "part-solid": 0.8, "ground-glass": -0.4, "calcified": -2.5}
_MAL_NOISE_SD = 0.8
# How far a shape reaches beyond its nominal radius (lobes, spikes): keeps nodules apart.
_REACH = {"smooth": 1.15, "lobulated": 1.4, "spiculated": 2.2}


@dataclass
class NoduleSpec:
    """One nodule as drawn in the phantom (ground truth)."""

    id: int  # value of this nodule in Phantom.label
    center_mm: tuple[float, float, float]  # world (x, y, z), LPS
    diameter_mm: float  # nominal diameter of the underlying sphere
    shape: str  # smooth | lobulated | spiculated
    density: str  # solid | part-solid | ground-glass | calcified
    malignant: int  # 0/1, drawn from the logistic model (or forced for tumours)
    malignancy: int  # consensus rating 1-5 (reader ratings are drawn around it)
    characteristics: dict = field(default_factory=dict)  # LIDC characteristic consensus values
    tumour: bool = False  # the index tumour of a cancer cohort

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Phantom:
    """A synthetic CT: HU volume, nodule label map and geometry (identity direction)."""

    hu: np.ndarray  # (z, y, x) int16
    label: np.ndarray  # (z, y, x) uint8, NoduleSpec.id per voxel as a reader outlines it (reader_outline)
    nodules: list[NoduleSpec]
    spacing: tuple[float, float, float]  # (x, y, z) mm
    origin: tuple[float, float, float]  # (x, y, z) world mm of voxel (0, 0, 0)
    lung: np.ndarray | None = None  # (z, y, x) bool lung parenchyma mask

    def world_to_index(self, xyz) -> np.ndarray:
        """World (x, y, z) mm -> continuous array index (z, y, x)."""
        ijk = (np.asarray(xyz, float) - np.asarray(self.origin)) / np.asarray(self.spacing)
        return ijk[::-1]

    def index_to_world(self, zyx) -> np.ndarray:
        """Array index (z, y, x) -> world (x, y, z) mm."""
        return np.asarray(self.origin) + np.asarray(zyx, float)[::-1] * np.asarray(self.spacing)


# ---------------------------------------------------------------------------------------------
# Malignancy model and nodule parameters
# ---------------------------------------------------------------------------------------------


def malignancy_logit(diameter_mm: float, shape: str, density: str) -> float:
    """Noise-free log-odds of malignancy for a nodule's morphology."""
    return (
        _MAL_INTERCEPT
        + _MAL_LOG_DIAMETER * math.log(diameter_mm / 10.0)
        + _MAL_SHAPE[shape]
        + _MAL_DENSITY[density]
    )


def draw_nodule_params(rng: np.random.Generator, tumour: bool = False) -> dict:
    """Random morphology and malignancy of one nodule (a cancer cohort's tumour when ``tumour``)."""
    if tumour:
        diameter = float(rng.uniform(14.0, 34.0))
        shape = str(rng.choice(SHAPES, p=[0.1, 0.4, 0.5]))
        density = str(rng.choice(DENSITIES, p=[0.75, 0.2, 0.05, 0.0]))
        malignant = 1
    else:
        diameter = float(np.exp(rng.uniform(math.log(4.0), math.log(30.0))))
        shape = str(rng.choice(SHAPES, p=[0.5, 0.3, 0.2]))
        density = str(rng.choice(DENSITIES, p=[0.55, 0.15, 0.15, 0.15]))
        logit = malignancy_logit(diameter, shape, density) + rng.normal(0.0, _MAL_NOISE_SD)
        malignant = int(rng.random() < 1.0 / (1.0 + math.exp(-logit)))
    return {"diameter_mm": diameter, "shape": shape, "density": density,
            "malignant": malignant, "tumour": tumour}


def _consensus_rating(rng: np.random.Generator, malignant: int) -> int:
    """Consensus malignancy rating 1-5 consistent with the latent class (3 is 'indeterminate')."""
    if malignant:
        return int(rng.choice([3, 4, 5], p=[0.15, 0.45, 0.40]))
    return int(rng.choice([1, 2, 3], p=[0.40, 0.45, 0.15]))


def _characteristics(rng: np.random.Generator, p: dict, rating: int) -> dict:
    """LIDC characteristic consensus values that agree with the drawn morphology."""
    shape, density, d = p["shape"], p["density"], p["diameter_mm"]
    spic = {"smooth": 1, "lobulated": int(rng.integers(1, 3)), "spiculated": int(rng.integers(3, 6))}
    lob = {"smooth": 1, "lobulated": int(rng.integers(3, 6)), "spiculated": int(rng.integers(2, 4))}
    texture = {"solid": 5, "part-solid": 3, "ground-glass": 1, "calcified": 5}[density]
    return {
        "subtlety": int(np.clip(round(2 + d / 8), 1, 5)),
        "internalStructure": 1,
        "calcification": int(rng.choice([3, 5])) if density == "calcified" else 6,
        "sphericity": int(rng.integers(3, 6)) if shape != "spiculated" else int(rng.integers(2, 4)),
        "margin": int(rng.integers(4, 6)) if shape == "smooth" else int(rng.integers(1, 4)),
        "lobulation": lob[shape],
        "spiculation": spic[shape],
        "texture": texture,
        "malignancy": rating,
    }


# ---------------------------------------------------------------------------------------------
# Anatomy
# ---------------------------------------------------------------------------------------------


def _smooth_field(rng: np.random.Generator, nz: int, ny: int, nx: int, rank: int = 4):
    """Low-frequency texture as a sum of separable products of random 1D sinusoid mixes."""
    def wave(n: int) -> np.ndarray:
        s = np.linspace(0.0, 1.0, n, dtype=np.float32)
        out = np.zeros(n, np.float32)
        for freq in (1.0, 2.0, 3.5):
            out += np.float32(rng.normal() / freq) * np.sin(
                np.float32(2 * np.pi * freq) * s + np.float32(rng.uniform(0, 2 * np.pi)))
        return out

    return [(wave(nz), wave(ny), wave(nx)) for _ in range(rank)]


def _anatomy_params(rng: np.random.Generator) -> dict:
    return {
        "a": rng.uniform(140, 165),  # body semi-axis x (mm)
        "b": rng.uniform(95, 118),  # body semi-axis y (mm)
        "cx": rng.uniform(-8, 8), "cy": rng.uniform(-12, 4),  # body centre (mm)
        "fat": rng.uniform(8, 20), "muscle": rng.uniform(8, 14),
        "lung_hu": rng.uniform(-875, -835),
        "wobble": rng.uniform(0, 2 * np.pi, size=2),
        "rib_period": rng.uniform(22, 30), "rib_phase": rng.uniform(0, 30),
        "heart_hu": rng.uniform(35, 50),
    }


def _anatomy_slab(X, Y, t, zmm, p):
    """HU (without vessels, nodules, noise) and lung mask for a slab of slices.

    X, Y: (1, 1, nx) / (1, ny, 1) mm relative to the body centre; t: (c, 1, 1) in [0, 1] from the
    first (inferior) to the last (superior) slice; zmm: (c, 1, 1) world z.
    """
    a, b = p["a"], p["b"]
    r_xy = np.sqrt(X * X + Y * Y)
    rb = np.sqrt((X / a) ** 2 + (Y / b) ** 2)
    depth = (1.0 - rb) * r_xy / np.maximum(rb, 1e-3)  # mm from the skin along the ray
    theta = np.arctan2(Y, X)

    hu = np.full(np.broadcast_shapes(X.shape, Y.shape, t.shape), -1000.0, np.float32)
    body = rb <= 1.0
    hu = np.where(body, np.float32(40.0), hu)  # mediastinum / inner soft tissue
    hu = np.where(body & (depth < p["fat"] + p["muscle"] + 2), np.float32(45.0), hu)  # muscle
    hu = np.where(body & (depth < p["fat"] + 2), np.float32(-100.0), hu)  # subcutaneous fat
    hu = np.where(body & (depth < 2.0), np.float32(20.0), hu)  # skin

    # Couch under the patient (posterior = +y in LPS).
    table = (Y > b + 12) & (Y < b + 19) & (np.abs(X) < 0.8 * a)
    hu = np.where(table, np.float32(-250.0), hu)

    # Lungs: two ellipses that shrink toward the apex, with a wobbly outline.
    scale = (1.0 - 0.5 * t ** 2) * (1.0 - 0.35 * np.clip((0.12 - t) / 0.12, 0, 1))
    lung = np.zeros(hu.shape, bool)
    for side, (cxf, axf, byf) in enumerate(((-0.45, 0.33, 0.64), (0.45, 0.30, 0.62))):
        lx, ly = X - cxf * a, Y + 0.04 * b
        ang = np.arctan2(ly, lx)
        wob = 1.0 + 0.05 * np.sin(3 * ang + p["wobble"][side]) + 0.03 * np.cos(5 * ang)
        rl = np.sqrt((lx / (axf * a * scale)) ** 2 + (ly / (byf * b * scale)) ** 2)
        lung |= rl < wob
    # Heart (lower slices, patient left = +x, anterior = -y) and spine carve the lungs.
    hs = np.clip(1.0 - 1.5 * t, 0, 1)
    heart = ((X - 0.12 * a) / (0.32 * a * hs + 1e-3)) ** 2 + ((Y + 0.18 * b) / (0.38 * b * hs + 1e-3)) ** 2 < 1
    sy = 0.62 * b
    spine_zone = (np.abs(X) < 32) & (Y > sy - 25)
    lung &= ~heart & ~spine_zone & body & (depth > p["fat"] + p["muscle"] + 6)
    hu = np.where(lung, np.float32(p["lung_hu"]), hu)
    hu = np.where(heart, np.float32(p["heart_hu"]), hu)

    # Trachea in the upper slices.
    trachea = (t > 0.6) & (((X) ** 2 + (Y + 0.12 * b) ** 2) < 8.0 ** 2)
    hu = np.where(trachea, np.float32(-990.0), hu)

    # Spine: vertebral body (cancellous + cortex), canal, posterior arch.
    rv = np.sqrt(X ** 2 + (Y - sy) ** 2)
    hu = np.where(rv < 16, np.float32(260.0), hu)
    hu = np.where((rv >= 14) & (rv < 16.5), np.float32(750.0), hu)
    rc = np.sqrt(X ** 2 + (Y - sy - 24) ** 2)
    hu = np.where((rc >= 7) & (rc < 11), np.float32(550.0), hu)
    hu = np.where(rc < 7, np.float32(25.0), hu)

    # Ribs: oblique bands in the chest wall; sternum at the front.
    wall = p["fat"] + 0.4 * p["muscle"]
    band = body & (depth > wall) & (depth < wall + 7)
    phase = ((zmm + p["rib_phase"] + 18.0 * np.cos(theta)) / p["rib_period"]) % 1.0
    ribs = band & (phase < 0.32) & (np.abs(X) > 25)
    sternum = band & (np.abs(X) < 14) & (Y < 0)
    bone_hu = np.float32(420.0) + np.float32(450.0) * (np.abs(phase - 0.16) > 0.11)  # cortex rim
    hu = np.where(ribs, bone_hu, hu)
    hu = np.where(sternum, np.float32(380.0), hu)
    return hu, lung


# ---------------------------------------------------------------------------------------------
# Vessels
# ---------------------------------------------------------------------------------------------


def _vessel_tree(rng: np.random.Generator, p: dict, z_lo: float, z_hi: float):
    """Branching centre lines from each hilum: list of (start, end, radius) in body mm (x, y, z)."""
    segments = []
    zmid = 0.5 * (z_lo + z_hi)
    for sign in (-1.0, 1.0):
        hilum = np.array([sign * 0.22 * p["a"], -0.02 * p["b"], zmid])
        stack = []
        for _ in range(4):  # main trunks fanning out in all directions
            d = np.array([sign * rng.uniform(0.5, 1.0), rng.uniform(-0.8, 0.8), rng.uniform(-1.0, 1.0)])
            stack.append((hilum, d / np.linalg.norm(d), 4.0, 38.0, 0))
        while stack:
            start, d, radius, length, depth = stack.pop()
            end = start + d * length
            segments.append((start, end, radius))
            if depth >= 5 or radius < 0.6:
                continue
            for _ in range(2):
                nd = d + rng.normal(0, 0.55, 3)
                nd /= np.linalg.norm(nd)
                stack.append((end, nd, radius * 0.72, length * rng.uniform(0.65, 0.85), depth + 1))
    return segments


def _splat_vessels(hu: np.ndarray, lung: np.ndarray, segments, spacing, origin, body_c):
    """Draw tubes as overlapping soft balls along each segment, inside the lungs only."""
    sx, sy, sz = spacing
    step = 0.6 * min(sx, sy, sz)
    w = np.zeros(hu.shape, np.float32)
    stencils: dict = {}
    for start, end, radius in segments:
        n = max(2, int(np.linalg.norm(end - start) / step) + 1)
        pts = np.linspace(start, end, n)
        pts_idx = (pts + np.array([body_c[0], body_c[1], 0.0]) - np.asarray(origin)) / np.asarray(spacing)
        rq = round(max(radius, 0.5), 1)
        if rq not in stencils:
            hz, hy, hx = (int(math.ceil((rq + 1) / s)) for s in (sz, sy, sx))
            gz, gy, gx = np.meshgrid(np.arange(-hz, hz + 1) * sz, np.arange(-hy, hy + 1) * sy,
                                     np.arange(-hx, hx + 1) * sx, indexing="ij")
            dist = np.sqrt(gz ** 2 + gy ** 2 + gx ** 2)
            stencils[rq] = (np.clip(rq + 0.5 - dist, 0, 1).astype(np.float32), (hz, hy, hx))
        st, (hz, hy, hx) = stencils[rq]
        for ix, iy, iz in np.round(pts_idx).astype(int):
            z0, y0, x0 = iz - hz, iy - hy, ix - hx
            z1, y1, x1 = iz + hz + 1, iy + hy + 1, ix + hx + 1
            if z1 <= 0 or y1 <= 0 or x1 <= 0 or z0 >= w.shape[0] or y0 >= w.shape[1] or x0 >= w.shape[2]:
                continue
            cz, cy, cx = max(z0, 0), max(y0, 0), max(x0, 0)
            sub = st[cz - z0: st.shape[0] - max(z1 - w.shape[0], 0),
                     cy - y0: st.shape[1] - max(y1 - w.shape[1], 0),
                     cx - x0: st.shape[2] - max(x1 - w.shape[2], 0)]
            view = w[cz:cz + sub.shape[0], cy:cy + sub.shape[1], cx:cx + sub.shape[2]]
            np.maximum(view, sub, out=view)
    w *= lung
    vessel = w > 0
    hu[vessel] = (hu[vessel] * (1 - w[vessel]) + 40.0 * w[vessel]).astype(hu.dtype)


# ---------------------------------------------------------------------------------------------
# Nodules
# ---------------------------------------------------------------------------------------------


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _place_center(rng, lung, spacing, origin, radius_mm, reach_mm, placed) -> np.ndarray | None:
    """A world centre whose whole (margin-padded) sphere lies in the lung, away from other nodules."""
    zz, yy, xx = np.nonzero(lung[:, ::2, ::2])
    if zz.size == 0:
        return None
    probe = _unit_vectors(np.random.default_rng(0), 64) * (radius_mm + 3.0)
    for _ in range(300):
        k = int(rng.integers(zz.size))
        idx = np.array([xx[k] * 2, yy[k] * 2, zz[k]], float)
        c = np.asarray(origin) + idx * np.asarray(spacing)
        pts = np.round((c + probe - np.asarray(origin)) / np.asarray(spacing)).astype(int)
        inside = ((pts >= 0) & (pts < np.array(lung.shape[::-1]))).all(axis=1)
        if not inside.all() or not lung[pts[:, 2], pts[:, 1], pts[:, 0]].all():
            continue
        if any(np.linalg.norm(c - pc) < reach_mm + pr + 3.0 for pc, pr in placed):
            continue
        return c
    return None


def _render_nodule(rng, hu, label, spec: NoduleSpec, spacing, origin):
    """Blend one nodule (radially perturbed sphere) into ``hu`` and write its id into ``label``."""
    r0 = spec.diameter_mm / 2.0
    lobes = _unit_vectors(rng, 6)
    lobe_amp = rng.uniform(0.15, 0.3, 6) if spec.shape == "lobulated" else rng.uniform(0.0, 0.06, 6)
    n_spk = int(rng.integers(7, 14)) if spec.shape == "spiculated" else 0
    spikes = _unit_vectors(rng, max(n_spk, 1))
    spike_len = rng.uniform(0.5, 1.1, max(n_spk, 1))
    reach = r0 * (1.0 + lobe_amp.sum() * 0.5 + (spike_len.max() if n_spk else 0.0)) + 2.0

    c_idx = (np.asarray(spec.center_mm) - np.asarray(origin)) / np.asarray(spacing)  # x, y, z
    lo = np.maximum(np.floor(c_idx - reach / np.asarray(spacing)).astype(int), 0)
    hi = np.minimum(np.ceil(c_idx + reach / np.asarray(spacing)).astype(int) + 1, np.array(hu.shape[::-1]))
    if (hi <= lo).any():
        return
    gz, gy, gx = np.meshgrid(*(np.arange(lo[a], hi[a]) * spacing[a] + origin[a] - spec.center_mm[a]
                               for a in (2, 1, 0)), indexing="ij")
    dist = np.sqrt(gx ** 2 + gy ** 2 + gz ** 2) + 1e-6
    u = np.stack([gx, gy, gz], -1) / dist[..., None]
    radius = np.ones_like(dist)
    for v, amp in zip(lobes, lobe_amp):
        radius += amp * np.clip(u @ v, 0, None) ** 4
    body = radius * r0  # the nodule without its spicules
    for v, ln in zip(spikes[:n_spk], spike_len[:n_spk]):
        radius += ln * np.clip(u @ v, 0, None) ** 120
    radius *= r0
    edge = 0.6 * min(spacing)
    weight = np.clip((radius - dist) / edge + 0.5, 0.0, 1.0).astype(np.float32)

    core = dist < 0.45 * radius
    if spec.density == "solid":
        value = np.full(dist.shape, rng.uniform(15, 45), np.float32)
    elif spec.density == "ground-glass":
        value = np.full(dist.shape, rng.uniform(-620, -450), np.float32)
    elif spec.density == "part-solid":
        value = np.where(core, np.float32(rng.uniform(10, 40)), np.float32(rng.uniform(-560, -420)))
    else:  # calcified: diffusely or centrally calcified
        dense = rng.uniform(350, 700)
        value = np.where(core | (rng.random() < 0.5), np.float32(dense), np.float32(60.0))
    sl = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    block = hu[sl].astype(np.float32)
    hu[sl] = np.round(block * (1 - weight) + value * weight).astype(hu.dtype)
    outline = reader_outline(weight >= 0.5, dist <= body)
    label[sl] = np.where(outline, np.uint8(spec.id), label[sl])


def reader_outline(mask: np.ndarray, body: np.ndarray) -> np.ndarray:
    """What a reader outlines of a nodule ``mask`` (z, y, x): on each slice, the in-plane connected
    parts that touch the nodule ``body``.

    Readers contour the nodule slice by slice. A spicule's cross-section on a slice above or below
    the body, or cut off from it in-plane, is a strand of tissue, not part of an outline; it stays in
    the image. Shapes without spicules are unchanged (their mask is their body).
    """
    out = np.zeros_like(mask)
    for k in np.nonzero(mask.any(axis=(1, 2)))[0]:
        parts, _ = ndimage.label(mask[k], structure=np.ones((3, 3), bool))
        touching = np.unique(parts[body[k] & mask[k]])
        out[k] = np.isin(parts, touching[touching > 0])
    return out


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------


def make_phantom(rng: np.random.Generator, size: int = 256, n_slices: int = 48,
                 spacing_xy: float | None = None, spacing_z: float = 2.5,
                 nodules: int | list | None = None, noise_hu: float = 20.0,
                 slab: int = 16) -> Phantom:
    """Build a chest-CT phantom.

    ``nodules``: None (1-3 random), an int (that many random nodules) or a list of parameter dicts
    (keys of :func:`draw_nodule_params`; missing keys are drawn).  Nodules that cannot be placed
    inside the lung (too large for a small phantom) are shrunk, then dropped.
    """
    if spacing_xy is None:
        spacing_xy = round(350.0 / size * rng.uniform(0.92, 1.08), 6)
    spacing = (float(spacing_xy), float(spacing_xy), float(spacing_z))
    nx = ny = int(size)
    nz = int(n_slices)
    half = (nx - 1) / 2.0 * spacing_xy
    origin = (round(-half + rng.uniform(-10, 10), 4), round(-half + rng.uniform(-20, 5), 4),
              round(rng.uniform(-320, -80), 4))
    p = _anatomy_params(rng)

    x_rel = (origin[0] + np.arange(nx) * spacing[0] - p["cx"]).astype(np.float32)[None, None, :]
    y_rel = (origin[1] + np.arange(ny) * spacing[1] - p["cy"]).astype(np.float32)[None, :, None]
    # Anatomy is described over a nominal 300 mm chest so that thin scans show only part of it.
    z_world = origin[2] + np.arange(nz) * spacing[2]
    span = max(nz - 1, 1) * spacing[2]
    t_all = (0.5 + (np.arange(nz) * spacing[2] - span / 2) / 300.0).astype(np.float32)
    t_all = np.clip(t_all + rng.uniform(-0.15, 0.15), 0, 1)

    texture = _smooth_field(rng, nz, ny, nx)
    hu = np.empty((nz, ny, nx), np.int16)
    lung = np.empty((nz, ny, nx), bool)
    for z0 in range(0, nz, slab):
        z1 = min(z0 + slab, nz)
        t = t_all[z0:z1, None, None]
        zmm = z_world[z0:z1, None, None].astype(np.float32)
        h, lg = _anatomy_slab(x_rel, y_rel, t, zmm, p)
        tex = np.zeros(h.shape, np.float32)
        for fz, fy, fx in texture:
            tex += fz[z0:z1, None, None] * fy[None, :, None] * fx[None, None, :]
        h += np.where(lg, np.float32(25.0) * tex, np.float32(6.0) * tex)
        hu[z0:z1] = np.round(h).astype(np.int16)
        lung[z0:z1] = lg

    segments = _vessel_tree(rng, p, float(z_world[0]), float(z_world[-1]))
    _splat_vessels(hu, lung, segments, spacing, origin, (p["cx"], p["cy"]))

    # Nodules.
    if nodules is None:
        nodules = int(rng.integers(1, 4))
    params = [draw_nodule_params(rng) for _ in range(nodules)] if isinstance(nodules, int) else [
        {**draw_nodule_params(rng, tumour=bool(n.get("tumour", False))), **n} for n in nodules]
    label = np.zeros((nz, ny, nx), np.uint8)
    specs: list[NoduleSpec] = []
    placed: list = []
    for prm in params:
        center = None
        diameter = float(prm["diameter_mm"])
        while center is None and diameter >= 3.0:
            reach = diameter / 2 * _REACH[prm["shape"]]
            center = _place_center(rng, lung, spacing, origin, diameter / 2 * 1.2, reach, placed)
            if center is None:
                diameter *= 0.75
        if center is None:
            continue
        prm = {**prm, "diameter_mm": round(diameter, 3)}
        rating = _consensus_rating(rng, prm["malignant"])
        spec = NoduleSpec(id=len(specs) + 1, center_mm=tuple(round(float(c), 4) for c in center),
                          diameter_mm=prm["diameter_mm"], shape=prm["shape"], density=prm["density"],
                          malignant=int(prm["malignant"]), malignancy=rating,
                          characteristics=_characteristics(rng, prm, rating),
                          tumour=bool(prm.get("tumour", False)))
        _render_nodule(rng, hu, label, spec, spacing, origin)
        if not (label == spec.id).any():
            continue
        specs.append(spec)
        placed.append((np.asarray(center), reach))

    # Acquisition noise, slab by slab to bound memory.
    for z0 in range(0, nz, slab):
        z1 = min(z0 + slab, nz)
        noise = rng.standard_normal((z1 - z0, ny, nx), dtype=np.float32) * np.float32(noise_hu)
        block = hu[z0:z1].astype(np.float32) + noise
        hu[z0:z1] = np.clip(np.round(block), HU_MIN, HU_MAX).astype(np.int16)
    return Phantom(hu=hu, label=label, nodules=specs, spacing=spacing, origin=origin, lung=lung)
