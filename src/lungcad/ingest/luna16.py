"""LUNA16 adapter: ``subset*/<seriesuid>.mhd`` scans, nodule spheres from ``annotations.csv``,
malignancy from the LIDC-IDRI reader XML of the same series.

Masks. LUNA16 ships no contours, only a world centre and a diameter per nodule, so the mask is a
ball of that diameter at that world position (``mask_source='gt'``). The LIDC readers' contours
of the same series could give a consensus outline, but matching contours to LUNA16 rows is exactly
as uncertain as matching ratings, so we keep the spheres: simpler, and what LUNA16 itself defines.

Malignancy. LUNA16 has none. Each annotation row is matched to the LIDC reader nodules of the
series (XML from ``opts.lidc_xml`` or ``<root>/tcia-lidc-xml``, selected by ``SeriesInstanceUid``
== mhd stem): a reader nodule's centre is the mean of its contour points, with the XML pixel
coordinates (xCoord = column = index i, yCoord = row = index j) and ``imageZposition`` turned into
world mm through the volume's own geometry (so a flipped TransformMatrix is handled). For every
reader, its nearest rated nodule within ``max(diameter / 2, 3 mm)`` of the annotation centre gives
that reader's rating (DATASETS.md 2.7: the reader centroid must lie inside the LUNA16 sphere);
the ratings go through the LIDC rule (``opts.label_rule``). The XML pixel convention assumes the
.mhd array keeps the DICOM pixel order (as LUNA16's conversion did); only the header direction
differs between scans.

Patient id = seriesuid (LUNA16 carries no patient id). A scan with no annotation rows has no label
and is skipped (reported); a scan whose nodules match no rating gets patient label ``None``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lungcad.errors import InputError
from lungcad.ingest.base import Adapter, LoadedSeries, SeriesTask, Skip
from lungcad.ingest.labels import lidc_nodule_label, unify_patient
from lungcad.ingest.lidc_xml import parse_lidc_xml, read_xml_series_uid
from lungcad.io import Volume, index_to_world, read_volume, world_to_index

SOURCE = "luna16"
ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
# Where the official file sits in the download, in order of preference.
ANNOTATION_LOCATIONS = ("annotations.csv", "evaluationScript/annotations/annotations.csv",
                        "CSVFILES/annotations.csv")
MIN_MATCH_TOLERANCE_MM = 3.0


# --------------------------------------------------------------------------- shared helpers
# (also used by the MSD and LNDb adapters)

def read_csv_checked(path: Path, required: tuple[str, ...], dtype=None) -> pd.DataFrame:
    """Read a CSV by column name; a missing required column is a one-line ``InputError``."""
    try:
        table = pd.read_csv(path, dtype=dtype, skipinitialspace=True)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: cannot read CSV ({exc})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise InputError(f"{path}: missing required column '{missing[0]}' "
                         f"(expected columns: {', '.join(required)})")
    return table


def load_volume(path: Path) -> Volume:
    """``lungcad.io.read_volume``; any reader failure becomes an ``InputError`` naming the file."""
    try:
        return read_volume(path)
    except InputError:
        raise
    except Exception as exc:  # SimpleITK raises bare RuntimeError for garbage headers / short raws
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: unreadable image ({first_line})") from exc


def mhd_problem(mhd: Path) -> str | None:
    """Cheap header check without reading pixels: why this ``.mhd`` cannot load, or ``None``.

    Catches a header without ``ElementDataFile``/``DimSize`` and a missing ``.raw`` so that
    discover can report them; everything subtler (truncated raw) surfaces in ``load``.
    """
    try:
        with open(mhd, "rb") as handle:  # header only: an .mha carries its pixels after it
            text = handle.read(65536).decode("latin-1")
    except OSError as exc:
        return f"cannot read header ({exc.strerror})"
    keys = {}
    for line in text.splitlines():
        key, equals, value = line.partition("=")
        if equals:
            keys[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break  # MetaIO: always the last header line
    if "DimSize" not in keys or "ElementDataFile" not in keys:
        return "not a MetaImage header (no DimSize/ElementDataFile)"
    data_file = keys["ElementDataFile"]
    if data_file != "LOCAL" and not (mhd.parent / data_file).is_file():
        return f"data file {data_file} is missing"
    return None


def paint_ball(mask: np.ndarray, volume: Volume, centre_xyz, diameter_mm: float) -> np.ndarray:
    """Set the voxels of ``mask`` within ``diameter_mm / 2`` of a world point; return their z indices.

    The direction matrix is orthonormal, so a world ball is an axis-aligned ellipsoid in index
    space around the continuous index of the centre (found with the general world->index formula,
    which is what makes flipped or rotated TransformMatrix files land right). The nearest voxel is
    always set, so a nodule smaller than a voxel still has a mask.
    """
    spacing_kji = np.asarray(volume.spacing, float)[::-1]
    centre_kji = np.asarray(world_to_index(volume, tuple(float(c) for c in centre_xyz)), float)
    radius = float(diameter_mm) / 2.0
    shape = np.asarray(mask.shape)
    lo = np.maximum(np.floor(centre_kji - radius / spacing_kji).astype(int), 0)
    hi = np.minimum(np.ceil(centre_kji + radius / spacing_kji).astype(int) + 1, shape)
    painted: set[int] = set()
    if np.all(hi > lo):
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
        dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre_kji, spacing_kji))
        inside = dist2 <= radius ** 2
        region = tuple(slice(a, b) for a, b in zip(lo, hi))
        mask[region] |= inside
        painted.update(int(k) for k in np.nonzero(inside.any(axis=(1, 2)))[0] + lo[0])
    nearest = np.rint(centre_kji).astype(int)
    if np.all(nearest >= 0) and np.all(nearest < shape):
        mask[tuple(nearest)] = True
        painted.add(int(nearest[0]))
    return np.array(sorted(painted), dtype=int)


def slice_labels(depth: int, labelled_slices: list[tuple[np.ndarray, int | None]]) -> np.ndarray:
    """Per-slice nodule label: the highest known label of the nodules on that slice, -1 elsewhere."""
    labels = np.full(depth, -1, dtype=np.int8)
    for ks, label in labelled_slices:
        if label is not None and len(ks):
            labels[ks] = np.maximum(labels[ks], label)
    return labels


# --------------------------------------------------------------------------- LIDC matching

def index_lidc_xml(xml_root: Path) -> dict[str, list[Path]]:
    """Map SeriesInstanceUid -> LIDC XML files under ``xml_root`` (headers only)."""
    found: dict[str, list[Path]] = {}
    for path in sorted(xml_root.rglob("*.xml")):
        uid = read_xml_series_uid(path)
        if uid:
            found.setdefault(uid, []).append(path)
    # pylidc prefers the revised '161-resubmitted' file over its original: do the same.
    for paths in found.values():
        paths.sort(key=lambda p: ("resubmitted" not in p.name.lower(), str(p)))
    return found


def _slice_index_at(volume: Volume, i: np.ndarray, j: np.ndarray, z_mm: float) -> np.ndarray:
    """Continuous k at which voxel (i, j) has world z ``z_mm`` (general direction matrix)."""
    d = volume.direction_matrix
    s = np.asarray(volume.spacing, float)
    o = np.asarray(volume.origin, float)
    dz_dk = d[2, 2] * s[2]
    if abs(dz_dk) < 1e-6:
        raise InputError(f"{volume.meta.get('source', 'scan')}: slices are not axial; "
                         "cannot place LIDC contours")
    return (z_mm - o[2] - d[2, 0] * s[0] * i - d[2, 1] * s[1] * j) / dz_dk


def reader_nodule_centre(volume: Volume, nodule) -> np.ndarray | None:
    """World centre (x, y, z) of one reader nodule: mean of its contour points, or None if none."""
    points = []
    for roi in nodule.rois:
        xy = np.asarray(roi.points, float).reshape(-1, 2)
        if not len(xy) or roi.z is None or not roi.inclusion:
            continue
        k = _slice_index_at(volume, xy[:, 0], xy[:, 1], float(roi.z))
        points.append(np.column_stack([k, xy[:, 1], xy[:, 0]]))  # (k, j=row, i=col)
    if not points:
        return None
    centre_kji = np.concatenate(points).mean(axis=0)
    return np.asarray(index_to_world(volume, tuple(float(c) for c in centre_kji)), float)


def match_tolerance(diameter_mm: float) -> float:
    """How far (mm) a reader's nodule centre may lie from a LUNA16 annotation centre."""
    return max(float(diameter_mm) / 2.0, MIN_MATCH_TOLERANCE_MM)


def match_ratings(volume: Volume, annotations: list[dict], reader_nodules: list) -> list[list[int]]:
    """Per annotation, the malignancy ratings of the readers whose nodule lies on it.

    Each rated reader nodule goes to its nearest annotation (if within tolerance); each reader then
    contributes at most one rating per annotation, from its nodule closest to that annotation.
    """
    centres = np.array([[a["x"], a["y"], a["z"]] for a in annotations], float).reshape(-1, 3)
    tolerances = np.array([match_tolerance(a["diameter_mm"]) for a in annotations])
    best: dict[tuple[int, object], tuple[float, int]] = {}  # (annotation, reader) -> (dist, rating)
    for nodule in reader_nodules:
        rating = getattr(nodule, "malignancy", None)
        if rating is None or not 1 <= int(rating) <= 5:
            continue  # small (<3 mm) nodules carry no characteristics
        centre = reader_nodule_centre(volume, nodule)
        if centre is None or not len(centres):
            continue
        dists = np.linalg.norm(centres - centre, axis=1)
        a = int(np.argmin(dists))
        if dists[a] > tolerances[a]:
            continue
        key = (a, nodule.reader)
        if key not in best or dists[a] < best[key][0]:
            best[key] = (float(dists[a]), int(rating))
    ratings: list[list[int]] = [[] for _ in annotations]
    for (a, _reader), (_dist, rating) in sorted(best.items(), key=lambda kv: str(kv[0])):
        ratings[a].append(rating)
    return ratings


def _reader_nodules(xml_paths: list[str]) -> list:
    """All reader nodules of the first parsable XML of a series (InputError if none parses)."""
    errors = []
    for path in xml_paths:
        try:
            return parse_lidc_xml(Path(path)).nodules
        except InputError as exc:  # a broken copy: try the next one
            errors.append(str(exc))
    raise InputError("; ".join(errors) or "no LIDC XML")


# --------------------------------------------------------------------------- adapter

class Luna16Adapter(Adapter):
    """``lungcad ingest --source luna16=DIR``: LUNA16 scans, sphere masks, LIDC malignancy."""

    name = SOURCE

    def discover(self, root: Path, opts) -> tuple[list[SeriesTask], list[Skip]]:
        root = Path(root)
        annotations = self._annotations(root)
        xml_root = getattr(opts, "lidc_xml", None) or root / "tcia-lidc-xml"
        xml_index = index_lidc_xml(Path(xml_root)) if Path(xml_root).is_dir() else {}
        tasks, skips = [], []
        scans = sorted(root.glob("subset*/*.mhd"))
        if not scans:
            raise InputError(f"{root}: no LUNA16 scans (expected subset*/<seriesuid>.mhd)")
        for mhd in scans:
            uid = mhd.stem
            item = str(mhd.relative_to(root))
            problem = mhd_problem(mhd)
            if problem:
                skips.append(Skip(SOURCE, item, problem))
                continue
            nodules = annotations.get(uid, [])
            if not nodules:
                skips.append(Skip(SOURCE, item, "no nodule in annotations.csv: no malignancy label"))
                continue
            tasks.append(SeriesTask(SOURCE, uid, uid, {
                "mhd": str(mhd), "nodules": nodules,
                "lidc_xml": [str(p) for p in xml_index.get(uid, [])]}))
        return tasks, skips

    @staticmethod
    def _annotations(root: Path) -> dict[str, list[dict]]:
        """annotations.csv rows grouped by seriesuid."""
        for rel in ANNOTATION_LOCATIONS:
            path = root / rel
            if path.is_file():
                break
        else:
            raise InputError(f"{root}: annotations.csv not found "
                             f"(looked for {', '.join(ANNOTATION_LOCATIONS)})")
        table = read_csv_checked(path, ANNOTATION_COLUMNS, dtype={"seriesuid": str})
        grouped: dict[str, list[dict]] = {}
        for row in table.itertuples(index=False):
            try:
                nodule = {"x": float(row.coordX), "y": float(row.coordY), "z": float(row.coordZ),
                          "diameter_mm": float(row.diameter_mm)}
            except (TypeError, ValueError) as exc:
                raise InputError(f"{path}: non-numeric value in row for {row.seriesuid} ({exc})") from exc
            grouped.setdefault(str(row.seriesuid).strip(), []).append(nodule)
        return grouped

    def load(self, task: SeriesTask, opts) -> LoadedSeries:
        mhd = Path(task.payload["mhd"])
        volume = load_volume(mhd)
        nodules = task.payload["nodules"]
        notes: list[str] = []

        ratings = [[] for _ in nodules]
        xml_paths = task.payload.get("lidc_xml", [])
        if not xml_paths:
            notes.append("no LIDC XML for this series: malignancy unknown")
        else:
            if len(xml_paths) > 1:
                notes.append(f"{len(xml_paths)} LIDC XML files for this series; "
                             f"the first readable of {[Path(p).name for p in xml_paths]} is used")
            ratings = match_ratings(volume, nodules, _reader_nodules(xml_paths))

        rule = getattr(opts, "label_rule", "paper")
        mask = np.zeros(volume.array.shape, dtype=bool)
        nodule_labels, per_slice = [], []
        for n, (nodule, nodule_ratings) in enumerate(zip(nodules, ratings), start=1):
            label = lidc_nodule_label(nodule_ratings, rule=rule) if nodule_ratings else None
            if xml_paths and not nodule_ratings:
                notes.append(f"nodule {n}: no LIDC reader rating within "
                             f"{match_tolerance(nodule['diameter_mm']):.1f} mm")
            elif nodule_ratings:
                notes.append(f"nodule {n}: ratings {sorted(nodule_ratings)} -> label {label}")
            ks = paint_ball(mask, volume, (nodule["x"], nodule["y"], nodule["z"]), nodule["diameter_mm"])
            if not len(ks):
                notes.append(f"nodule {n}: centre outside the scan")
            nodule_labels.append(label)
            per_slice.append((ks, label))

        assert mask.shape == volume.array.shape, "mask and volume must share one grid"
        return LoadedSeries(volume=volume, mask=mask, mask_source="gt",
                            patient_label=unify_patient(nodule_labels),
                            nodule_label=slice_labels(mask.shape[0], per_slice), notes=notes)
