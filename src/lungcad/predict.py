"""End-to-end prediction on a CT scan: nodule masks, nodule measurements, malignancy, outputs.

One ``Predictor`` (nnU-Net's pattern) serves the CLI and the Python API: it is built once from a
segmentation run (and optionally a classification run) and then predicts any number of volumes.
``predict_inputs`` is what ``lungcad predict`` calls: it reads each input (DICOM series folder,
NIfTI, MetaImage), predicts and writes ``OUT/<case>/`` files; a bad input becomes an error entry and
the other inputs are still processed.

Pipeline of ``Predictor.predict`` (the same harmonisation as ingest, so the models see training pixels):

1. ``validate_for_prediction``: at least two slices, regular slice spacing (no missing slice), no
   gantry tilt, an orthonormal direction, Modality CT when the input says.
2. Lung window (``ingest.harmonize.lung_window``: -1200..0 HU -> uint8).
3. Lung region (option ``restrict_to_lung``, on by default): a cheap threshold lung mask, see
   ``lung_region``. Only slices that contain lung (plus a margin) are segmented, and only inside
   the in-plane bounding box of the lungs (plus ``lung_margin_mm``). The crop is taken on the
   model's grid at the model's scale (never rescaled), so a nodule looks the same to the network
   as without the crop. Without lung found, every slice is segmented in full (with a warning).
4. Slice-wise segmentation in batches; probability >= the run's threshold.
5. 3D connected components, 26-connectivity (``scipy.ndimage.label`` with a 3x3x3 structure:
   voxels touching by a face, edge or corner belong to one nodule, so a nodule drawn slightly
   shifted from slice to slice stays one nodule). Components whose highest probability is below
   the run's ``min_component_peak`` (when it sets one), with fewer than ``min_voxels`` (10)
   voxels or with an equivalent-sphere diameter below ``min_diameter_mm`` (3 mm) are dropped.
   Nodules are numbered 1..K by decreasing volume.
6. Per nodule: centroid in world mm (the volume geometry), longest axial diameter (the largest
   over slices of the maximum Feret diameter of the cross-section, measured between pixel
   corners with the pixel spacing), volume in mm3, slices spanned, mean probability inside it.
7. Malignancy (when a classification run is given): the seven-channel features of every slice of
   a nodule, the mask restricted to that nodule; nodule probability = mean over its slices (the
   paper's slice averaging), over its core slices when the classifier was trained on them
   (``min_area_frac`` in its model.json). Patient probability: ``max_over_nodules`` (headline: a
   patient is malignant when any nodule is, the label rule of the benchmark) and
   ``mean_over_slices`` (the paper's patient aggregation, the mean over those nodule slices) are
   both reported. When the classification run has a size head (``patient_head.json``, see
   ``lungcad.patient_head``), ``size_head`` weighs ``mean_over_slices`` against
   ``largest_diameter_mm`` (the largest equivalent-circle diameter of a slice's nodule pixels) as
   ``lungcad evaluate`` does, and is reported beside them.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from .errors import InputError, LungcadError
from .inference import SliceClassifier, SliceSegmenter
from .io import Volume, index_to_world

FORMATS = ("nifti", "dicom-seg", "json", "png", "html")
HEADLINE = "max_over_nodules"
# Lung-region thresholds (HU): body = tissue denser than fat/air mix; lung = aerated parenchyma.
BODY_MIN_HU = -500.0
LUNG_HU = (-950.0, -400.0)
MAX_TILT_DEG = 0.5
_LUNG_GRID = 128   # the lung mask is computed on a grid about this wide (it only finds a box)


@dataclass
class PredictOptions:
    """Prediction settings; the defaults are the documented behaviour of ``lungcad predict``."""

    restrict_to_lung: bool = True
    lung_margin_mm: float = 10.0
    min_voxels: int = 10
    min_diameter_mm: float = 3.0
    batch_size: int = 8
    tta: str | None = None  # test-time augmentation: "flip" | "none"; None = the segmentation run's
    min_component_peak: float | None = None  # component filter (inference.drop_faint_components); None = the run's, 0 = off


@dataclass
class Nodule:
    """One predicted nodule (a 3D connected component of the mask)."""

    id: int
    centroid_mm: tuple[float, float, float]      # world (x, y, z), LPS, mm
    centroid_index: tuple[float, float, float]   # (z, y, x) array index
    diameter_mm: float                           # longest axial diameter
    volume_mm3: float
    slices: list[int]                            # z indices where the nodule has voxels
    largest_slice: int                           # z index of its largest cross-section
    confidence: float                            # mean segmentation probability inside it
    voxels: int
    probability: float | None = None             # malignancy: mean over its slices
    slice_probabilities: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "centroid_mm": [round(v, 3) for v in self.centroid_mm],
            "centroid_index_zyx": [round(v, 3) for v in self.centroid_index],
            "diameter_mm": round(self.diameter_mm, 3),
            "volume_mm3": round(self.volume_mm3, 3),
            "voxels": self.voxels,
            "slices": {"first": min(self.slices), "last": max(self.slices), "count": len(self.slices)},
            "largest_slice": self.largest_slice,
            "confidence": round(self.confidence, 6),
            "probability": None if self.probability is None else round(self.probability, 6),
            "slice_probabilities": [round(p, 6) for p in self.slice_probabilities],
        }


@dataclass
class PredictionResult:
    """What ``Predictor.predict`` returns; ``labels`` lies on the input volume's exact grid."""

    volume: Volume                 # the input (HU and geometry)
    labels: np.ndarray             # (z, y, x) uint8/uint16, nodule id per voxel, 0 = background
    nodules: list[Nodule]
    patient_probability: dict      # max_over_nodules, mean_over_slices, headline, value
    timings: dict[str, float]
    warnings: list[str]
    lung_region: dict              # slices segmented and in-plane box

    @property
    def mask(self) -> Volume:
        """The nodule label map as a ``Volume`` with the input geometry."""
        return self.volume.with_array(self.labels)


# ----------------------------------------------------------------------------- validation


def validate_for_prediction(volume: Volume) -> list[str]:
    """Raise ``InputError`` when ``volume`` cannot be predicted on; return warnings otherwise.

    Checks what matters for slice-wise prediction and 3D measurements: a CT modality (when the
    input states one), at least two slices, regular slice spacing (no missing slice), no gantry
    tilt and an orthonormal direction matrix.
    """
    source = volume.meta.get("source", "input")
    modality = str(volume.meta.get("modality") or "").upper()
    if modality and modality != "CT":
        raise InputError(f"{source}: modality {modality}, not CT; lungcad predicts on CT only")
    if volume.array.ndim != 3:
        raise InputError(f"{source}: expected a 3D volume, got shape {volume.array.shape}")
    if volume.array.shape[0] < 2:
        raise InputError(f"{source}: a single slice; prediction needs a 3D series of at least 2 slices")
    if not all(np.isfinite(s) and s > 0 for s in volume.spacing):
        raise InputError(f"{source}: invalid voxel spacing {volume.spacing}")
    gaps = list(volume.meta.get("gaps") or [])
    positions = volume.meta.get("z_positions")
    if not gaps and positions is not None and len(positions) > 2:
        steps = np.diff(np.asarray(positions, float))
        median = float(np.median(steps))
        gaps = [int(i) for i in np.nonzero(np.abs(steps - median) > max(1e-3 * abs(median), 0.01))[0]]
    if gaps:
        raise InputError(f"{source}: irregular slice spacing (missing or uneven slices after index "
                         f"{', '.join(map(str, gaps[:5]))}{' ...' if len(gaps) > 5 else ''}); "
                         "resample to a regular grid first")
    tilt = float(volume.meta.get("tilt_deg") or 0.0)
    if tilt > MAX_TILT_DEG:
        raise InputError(f"{source}: gantry tilt of {tilt:.1f} degrees (slices are not stacked along "
                         "their normal); resample to an orthogonal grid first")
    d = volume.direction_matrix
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-3):
        raise InputError(f"{source}: direction matrix is not orthonormal (sheared grid); resample first")
    warnings = []
    if volume.array.shape[0] < 5:
        warnings.append(f"only {volume.array.shape[0]} slices: nodule measurements may be truncated")
    return warnings


# ----------------------------------------------------------------------------- lung region


def lung_region(hu: np.ndarray, spacing, margin_mm: float = 10.0) -> dict | None:
    """A cheap lung region: which slices to segment and an in-plane box, or None if no lung.

    On an in-plane grid of about 128 px: body = the largest 3D component of voxels above -500 HU,
    holes filled slice by slice (the lungs are holes in the body); lung = voxels of -950..-400 HU
    inside the filled body; its 3D components of at least 10% of the largest are kept (one or
    two lungs). Returned: ``slices`` (sorted z indices with lung, grown by ``margin_mm`` along z)
    and ``box`` (y0, y1, x0, x1) in input pixels (grown by ``margin_mm`` in-plane).
    """
    nz, ny, nx = hu.shape
    step = max(1, max(ny, nx) // _LUNG_GRID)
    small = hu[:, ::step, ::step]
    body = small > BODY_MIN_HU
    labels, count = ndimage.label(body)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    body = labels == (int(np.argmax(sizes)) + 1)
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    filled = ndimage.binary_fill_holes(body, structure=in_plane)
    lung = filled & (small >= LUNG_HU[0]) & (small <= LUNG_HU[1])
    labels, count = ndimage.label(lung)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.nonzero(sizes >= 0.1 * sizes.max())[0] + 1
    lung = np.isin(labels, keep)
    if lung.sum() * step * step * spacing[0] * spacing[1] * spacing[2] < 1000.0:
        return None  # under 1 ml: no lung in this scan (or not a chest scan)
    zs = np.nonzero(lung.any(axis=(1, 2)))[0]
    ys = np.nonzero(lung.any(axis=(0, 2)))[0] * step
    xs = np.nonzero(lung.any(axis=(0, 1)))[0] * step
    mz = int(np.ceil(margin_mm / spacing[2]))
    my, mx = int(np.ceil(margin_mm / spacing[1])) + step, int(np.ceil(margin_mm / spacing[0])) + step
    slices = np.zeros(nz, bool)
    for z in zs:
        slices[max(0, z - mz):z + mz + 1] = True
    box = (max(0, int(ys.min()) - my), min(ny, int(ys.max()) + 1 + my),
           max(0, int(xs.min()) - mx), min(nx, int(xs.max()) + 1 + mx))
    return {"slices": np.nonzero(slices)[0].tolist(), "box": box}


# ----------------------------------------------------------------------------- nodule measurements


def max_feret_mm(section: np.ndarray, spacing_yx: tuple[float, float]) -> float:
    """Maximum Feret diameter (mm) of a 2D binary region, measured between pixel corners.

    A single pixel measures its diagonal; a line of n pixels measures n pixel lengths (plus the
    corner-to-corner slant). Uses the convex hull of the boundary pixels' corners.
    """
    edge = section & ~ndimage.binary_erosion(section)
    yx = np.argwhere(edge).astype(float)
    if len(yx) == 0:
        return 0.0
    corners = (yx[:, None, :] + np.array([[-.5, -.5], [-.5, .5], [.5, -.5], [.5, .5]])[None])
    pts = np.unique(corners.reshape(-1, 2), axis=0) * np.asarray(spacing_yx, float)
    try:
        pts = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):
        pass  # collinear or too few points: use them all
    diffs = pts[:, None, :] - pts[None, :, :]
    return float(np.sqrt((diffs ** 2).sum(-1)).max())


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The smallest box holding every True voxel of a 3D mask, or None when it is empty."""
    zs = np.nonzero(mask.any(axis=(1, 2)))[0]
    if len(zs) == 0:
        return None
    slab = mask[zs[0]:zs[-1] + 1]
    ys = np.nonzero(slab.any(axis=(0, 2)))[0]
    xs = np.nonzero(slab.any(axis=(0, 1)))[0]
    return (slice(int(zs[0]), int(zs[-1]) + 1), slice(int(ys[0]), int(ys[-1]) + 1),
            slice(int(xs[0]), int(xs[-1]) + 1))


def find_nodules(mask: np.ndarray, proba: np.ndarray, volume: Volume,
                 min_voxels: int = 10, min_diameter_mm: float = 3.0) -> tuple[np.ndarray, list[Nodule]]:
    """Label the binary ``mask`` into nodules (26-connectivity) and measure each one.

    Returns ``(labels, nodules)``: labels on the mask's grid, ids 1..K by decreasing volume
    (uint8, uint16 beyond 255 nodules); components too small are removed from ``labels``.
    """
    sx, sy, sz = (float(v) for v in volume.spacing)
    voxel_mm3 = sx * sy * sz
    # Label only inside the mask's bounding box: a scan is mostly empty and labelling the whole
    # grid costs seconds.
    crop = _bounding_box(mask)
    if crop is None:
        return np.zeros(mask.shape, np.uint8), []
    origin = np.array([s.start for s in crop], float)
    components, count = ndimage.label(mask[crop], structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    kept = []
    for cid in range(1, count + 1):
        eq_diameter = (6.0 * sizes[cid] * voxel_mm3 / np.pi) ** (1.0 / 3.0)
        if sizes[cid] >= min_voxels and eq_diameter >= min_diameter_mm:
            kept.append(cid)
    kept.sort(key=lambda c: (-sizes[c], c))
    lut = np.zeros(count + 1, np.uint16 if len(kept) > 255 else np.uint8)
    for new_id, cid in enumerate(kept, start=1):
        lut[cid] = new_id
    labels = np.zeros(mask.shape, lut.dtype)
    labels[crop] = lut[components]
    sub_proba = proba[crop]
    boxes = ndimage.find_objects(components)
    nodules = []
    for new_id, cid in enumerate(kept, start=1):
        box = boxes[cid - 1]
        region = components[box] == cid
        offset = np.array([s.start for s in box], float) + origin
        centroid = np.argwhere(region).mean(axis=0) + offset
        areas = region.sum(axis=(1, 2))
        zs = [int(offset[0] + k) for k in np.nonzero(areas)[0]]
        diameter = max(max_feret_mm(region[k], (sy, sx)) for k in np.nonzero(areas)[0])
        nodules.append(Nodule(
            id=new_id,
            centroid_mm=tuple(float(v) for v in index_to_world(volume, centroid)),
            centroid_index=tuple(float(v) for v in centroid),
            diameter_mm=diameter,
            volume_mm3=float(sizes[cid] * voxel_mm3),
            slices=zs,
            largest_slice=int(offset[0] + int(np.argmax(areas))),
            confidence=float(sub_proba[box][region].mean()),
            voxels=int(sizes[cid]),
        ))
    return labels, nodules


# ----------------------------------------------------------------------------- predictor


def _lung_window(hu: np.ndarray) -> np.ndarray:
    """The ingest lung window (imported here: importing the ingest package loads every adapter)."""
    from .ingest.harmonize import lung_window

    return lung_window(hu)


class _CanonicalView:
    """The in-plane permutation that ``ingest.harmonize.canonical_inplane`` applies to a volume,
    as an index map, so that predictions made in the canonical orientation map back exactly."""

    def __init__(self, volume: Volume):
        from .ingest.harmonize import canonical_inplane

        nz, ny, nx = volume.array.shape
        self.inplane = (ny, nx)
        index = np.arange(ny * nx, dtype=np.int64).reshape(1, ny, nx)
        mapped, _, spacing, _, _, changed = canonical_inplane(index, None, volume.spacing, volume.origin,
                                                              volume.direction)
        self.spacing = spacing
        self.perm = np.ascontiguousarray(mapped[0]) if changed else None

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        if self.perm is None:
            return array
        nz = array.shape[0]
        return array.reshape(nz, -1)[:, self.perm.ravel()].reshape(nz, *self.perm.shape)

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        if self.perm is None:
            return array
        nz = array.shape[0]
        out = np.empty((nz, self.perm.size), array.dtype)
        out[:, self.perm.ravel()] = array.reshape(nz, -1)
        return out.reshape(nz, *self.inplane)


def _largest_diameter_mm(labels: np.ndarray, spacing_xyz) -> float:
    """Largest equivalent-circle diameter (mm) of one axial slice's nodule pixels: the measured
    diameter of ``lungcad.baseline``, on which the size head was fitted."""
    from .features import equivalent_diameter_mm

    area = int((labels > 0).reshape(labels.shape[0], -1).sum(axis=1).max()) if labels.size else 0
    return equivalent_diameter_mm(area, (float(spacing_xyz[1]), float(spacing_xyz[0])))


class Predictor:
    """Segmenter (+ optional classifier) built once; ``predict(volume)`` per scan."""

    def __init__(self, segmenter: SliceSegmenter, classifier: SliceClassifier | None = None,
                 options: PredictOptions | None = None, runs: dict | None = None, head=None):
        self.segmenter = segmenter
        self.classifier = classifier
        self.head = head  # lungcad.patient_head.PatientHead of the classification run, or None
        self.options = options or PredictOptions()
        self.runs = runs or {}
        window = segmenter.model_json.get("window_hu", [-1200, 0])
        if [float(v) for v in window] != [-1200.0, 0.0]:
            raise LungcadError(f"segmentation run uses window {window}; lungcad predicts with -1200..0 HU")

    @classmethod
    def from_runs(cls, seg_run: str | Path, cls_run: str | Path | None = None, device: str = "cpu",
                  backend: str = "torch", precision: str = "fp32",
                  options: PredictOptions | None = None, threads: int | None = None) -> "Predictor":
        options = options or PredictOptions()
        segmenter = SliceSegmenter.from_run(seg_run, device=device, backend=backend,
                                            precision=precision, batch_size=options.batch_size,
                                            threads=threads).with_options(options.tta, options.min_component_peak)
        classifier, head = None, None
        if cls_run is not None:
            from .patient_head import PatientHead

            classifier = SliceClassifier.from_run(cls_run, device=device, backend=backend,
                                                  precision=precision, threads=threads)
            head = PatientHead.load(cls_run)
        runs = {"seg_run": str(seg_run), "cls_run": None if cls_run is None else str(cls_run)}
        return cls(segmenter, classifier, options, runs, head)

    def describe(self) -> dict:
        """Models and backend, for report.json."""
        info = {
            "segmentation": {"run": self.runs.get("seg_run"), "arch": self.segmenter.model_json.get("arch"),
                             "image_size": self.segmenter.image_size,
                             "threshold": self.segmenter.threshold, "tta": self.segmenter.tta,
                             "min_component_peak": self.segmenter.min_component_peak},
            "classification": None,
            "backend": self.segmenter.backend,
            "precision": self.segmenter.precision,
        }
        if self.classifier is not None:
            info["classification"] = {"run": self.runs.get("cls_run"),
                                      "arch": self.classifier.model_json.get("arch"),
                                      "input_size": self.classifier.input_size,
                                      "crop": self.classifier.crop,
                                      "size_head": None if self.head is None else self.head.describe()}
        return info

    def predict(self, volume: Volume) -> PredictionResult:
        """Predict nodules and malignancy on one CT volume (HU, any grid)."""
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name] = round(now - clock, 4)
            clock = now

        warnings = validate_for_prediction(volume)
        # The models were trained on ingest's canonical in-plane orientation: predict there, map back.
        view = _CanonicalView(volume)
        hu = view.to_canonical(volume.array)
        images = _lung_window(hu)
        lap("window")

        nz, ny, nx = hu.shape
        region = lung_region(hu, view.spacing, self.options.lung_margin_mm) \
            if self.options.restrict_to_lung else None
        if self.options.restrict_to_lung and region is None:
            warnings.append("lung region not found; every slice was segmented in full")
        if region is None:
            region = {"slices": list(range(nz)), "box": (0, ny, 0, nx)}
        lap("lung_region")

        proba = np.zeros(hu.shape, np.float32)
        slices = np.asarray(region["slices"], int)
        box = tuple(region["box"])
        roi = None if box == (0, ny, 0, nx) else box
        if len(slices):
            proba[slices] = self.segmenter.predict_proba(images, roi=roi, indices=slices)
        proba = view.from_canonical(proba)
        lap("segmentation")

        labels, nodules = find_nodules(self.segmenter.masks_from_proba(proba), proba, volume,
                                       self.options.min_voxels, self.options.min_diameter_mm)
        lap("components")

        patient = {"max_over_nodules": None, "mean_over_slices": None, "headline": HEADLINE, "value": None}
        if self.classifier is not None and nodules:
            spacing_yx = (float(view.spacing[1]), float(view.spacing[0]))
            all_slices = self._classify(images, view.to_canonical(labels), nodules, spacing_yx)
            patient["max_over_nodules"] = max(n.probability for n in nodules)
            patient["mean_over_slices"] = float(np.mean(all_slices))
            patient["value"] = patient[HEADLINE]
            patient["largest_diameter_mm"] = _largest_diameter_mm(labels, volume.spacing)
            if self.head is not None:
                patient["size_head"] = float(self.head.predict_proba([patient["mean_over_slices"]],
                                                                     [patient["largest_diameter_mm"]])[0])
        elif self.classifier is not None:
            warnings.append("no nodule found: no malignancy probability")
        lap("classification")

        region_info = {"restricted": bool(roi is not None or len(slices) < nz),
                       "slices_segmented": int(len(slices)), "slices_total": int(nz),
                       "box_yx": [int(v) for v in box], "slices": [int(z) for z in slices]}
        return PredictionResult(volume, labels, nodules, patient, timings, warnings, region_info)

    def _classify(self, images: np.ndarray, labels: np.ndarray, nodules: list[Nodule],
                  spacing_yx: tuple[float, float]) -> list[float]:
        """Per-slice malignancy of every nodule; sets each nodule's probability (the mean over its core
        slices, see ``min_area_frac``) and returns the core slices' probabilities. ``spacing_yx``:
        (row, col) mm of the canonical slices (the size plane of a ``size_input`` model)."""
        from .data import core_slices

        owners, feats, areas = [], [], []
        for nodule in nodules:
            for z in nodule.slices:
                mask = labels[z] == nodule.id
                feats.append(self.classifier.features([images[z]], [mask], [spacing_yx])[0])
                owners.append(nodule.id)
                areas.append(int(mask.sum()))
        probs = self.classifier.predict_proba(np.stack(feats))
        owners = np.asarray(owners)
        core = core_slices(owners, areas, self.classifier.min_area_frac)  # the slices the model scores
        for nodule in nodules:
            mine = owners == nodule.id
            nodule.slice_probabilities = [float(p) for p in probs[mine]]
            nodule.probability = float(probs[mine & core].mean())
        return [float(p) for p in probs[core]]


# ----------------------------------------------------------------------------- batch over inputs


def _case_name(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii", ".mhd", ".mha"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _expand_inputs(path: Path) -> list[tuple[str, object]]:
    """One (case, loader) per scan in ``path``: a file, or each CT series of a DICOM folder."""
    from .io import find_dicom_series, input_kind, read_dicom_series, read_volume

    if input_kind(path) != "dicom":
        return [(_case_name(path), lambda: read_volume(path))]
    series = find_dicom_series(path)
    if not series:
        raise InputError(f"{path}: no readable DICOM files found")
    ct = [s for s in series if s.is_ct]
    if not ct:
        found = ", ".join(sorted({s.modality or "?" for s in series}))
        raise InputError(f"{path}: no CT series (found modality {found}); lungcad predicts on CT only")
    if len(ct) == 1:
        return [(_case_name(path), lambda s=ct[0]: read_dicom_series(s))]
    return [(s.series_uid, lambda s=s: read_dicom_series(s)) for s in ct]


def _unique(name: str, used: set[str]) -> str:
    candidate, n = name, 2
    while candidate in used:
        candidate, n = f"{name}_{n}", n + 1
    used.add(candidate)
    return candidate


def predict_inputs(inputs: list[str | Path], seg_run: str | Path, cls_run: str | Path | None,
                   out_dir: str | Path, formats=FORMATS, backend: str = "torch",
                   progress: bool = True, device: str = "cpu", precision: str = "fp32",
                   options: PredictOptions | None = None,
                   predictor: Predictor | None = None) -> list[dict]:
    """Predict every input and write ``OUT/<case>/`` files; one entry per input or series.

    Each entry: ``input``, ``case``, ``status`` (``ok`` | ``error``), ``error`` (one line naming
    the file), ``out_dir``, ``summary`` (one line), ``outputs`` (format -> path), ``nodules``
    (count), ``patient_probability`` and ``warnings``. A bad input
    never stops the others; a bad run folder or format raises ``LungcadError`` before any work.
    """
    from .report import write_outputs

    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise LungcadError(f"unknown output format(s) {', '.join(unknown)}; valid: {', '.join(FORMATS)}")
    predictor = predictor or Predictor.from_runs(seg_run, cls_run, device=device, backend=backend,
                                                 precision=precision, options=options)
    out_dir = Path(out_dir)
    entries: list[dict] = []
    used: set[str] = set()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(inputs), desc="predict", unit="input", file=sys.stderr)
    for raw in inputs:
        path = Path(raw)
        try:
            cases = _expand_inputs(path)
        except Exception as exc:  # noqa: BLE001 - one bad input never stops the batch
            entries.append(_error_entry(path, _case_name(path), exc))
            cases = []
        for case, load in cases:
            case = _unique(case, used)
            try:
                volume = load()
                result = predictor.predict(volume)
                outputs = write_outputs(result, out_dir / case, formats, predictor.describe(), path,
                                        predictor.options)
                entries.append({
                    "input": str(path), "case": case, "status": "ok", "error": None,
                    "out_dir": str(out_dir / case), "summary": _summary(result),
                    "series_uid": volume.meta.get("series_uid"), "outputs": outputs,
                    "nodules": len(result.nodules), "patient_probability": result.patient_probability,
                    "warnings": result.warnings,
                })
            except Exception as exc:  # noqa: BLE001 - reported per input, the batch goes on
                entries.append(_error_entry(path, case, exc))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return entries


def _summary(result: PredictionResult) -> str:
    """One line for the terminal, e.g. ``2 nodules, p(malignant) 0.81 (max over nodules)``."""
    count = len(result.nodules)
    text = f"{count} nodule{'s' if count != 1 else ''}"
    value = result.patient_probability.get("value")
    return text + ("" if value is None else f", p(malignant) {value:.2f} (max over nodules)")


def _error_entry(path: Path, case: str, exc: Exception) -> dict:
    if isinstance(exc, LungcadError):
        message = str(exc)
    else:
        message = f"{path}: unexpected error ({type(exc).__name__}: {str(exc).strip()[:200]})"
    return {"input": str(path), "case": case, "status": "error", "error": message.splitlines()[0],
            "out_dir": None, "summary": None, "series_uid": None, "outputs": {}, "nodules": None, "patient_probability": None,
            "warnings": []}
