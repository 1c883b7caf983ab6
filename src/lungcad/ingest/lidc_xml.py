"""LIDC-IDRI radiologist read files (XML): parsing, grouping readers' marks, contour filling.

Format: DATASETS.md section 2.4. One file per CT series with up to four ``readingSession``s (one
per radiologist); each ``unblindedReadNodule`` has optional ``characteristics`` (absent for
nodules < 3 mm) and one ``roi`` per slice with the contour as ``edgeMap`` pixel points
(xCoord = column, yCoord = row). ``inclusion`` FALSE marks a hole.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lungcad.errors import InputError

_NAMESPACE = re.compile(r'\sxmlns="[^"]*"')
CHARACTERISTICS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin",
                   "lobulation", "spiculation", "texture", "malignancy")


@dataclass
class Roi:
    """One contour of one reader on one slice."""

    z: float | None               # imageZposition (mm)
    sop_uid: str | None           # imageSOP_UID
    inclusion: bool               # False: a hole to subtract
    points: np.ndarray            # (N, 2) int, columns (x = column, y = row) in pixels


@dataclass
class ReaderNodule:
    """One reader's mark of one nodule."""

    reader: str
    nodule_id: str
    malignancy: int | None
    characteristics: dict
    rois: list[Roi] = field(default_factory=list)

    @property
    def has_contour(self) -> bool:
        """False for the < 3 mm class, whose rois are single centroid points."""
        return any(len(r.points) > 1 for r in self.rois)

    def points_mm(self, pixel_spacing: float) -> np.ndarray:
        """All contour points as (x mm, y mm, z mm) rows, relative to pixel (0, 0)."""
        rows = [np.column_stack([r.points * pixel_spacing, np.full(len(r.points), r.z)])
                for r in self.rois if r.z is not None and len(r.points)]
        return np.concatenate(rows).astype(float) if rows else np.empty((0, 3))


@dataclass
class ReaderSession:
    reader: str
    nodules: list[ReaderNodule] = field(default_factory=list)


@dataclass
class LidcRead:
    """A parsed read file."""

    path: str
    series_uid: str | None
    study_uid: str | None
    readers: list[ReaderSession] = field(default_factory=list)

    @property
    def nodules(self) -> list[ReaderNodule]:
        return [n for s in self.readers for n in s.nodules]


def _root_without_namespace(path: Path) -> ET.Element:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        return ET.fromstring(_NAMESPACE.sub("", text, count=1))
    except (OSError, ET.ParseError) as exc:
        raise InputError(f"{path}: not a readable LIDC XML file ({exc})") from None


def _int_or_none(text: str | None) -> int | None:
    try:
        value = int(float(text.strip()))
    except (AttributeError, ValueError):
        return None
    return value


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text.strip())
    except (AttributeError, ValueError):
        return None


def _parse_roi(element: ET.Element) -> Roi:
    points = [(_int_or_none(e.findtext("xCoord")), _int_or_none(e.findtext("yCoord")))
              for e in element.findall("edgeMap")]
    points = np.array([p for p in points if None not in p], dtype=np.int32).reshape(-1, 2)
    inclusion = (element.findtext("inclusion") or "TRUE").strip().upper() != "FALSE"
    sop = (element.findtext("imageSOP_UID") or "").strip() or None
    return Roi(_float_or_none(element.findtext("imageZposition")), sop, inclusion, points)


def _parse_nodule(element: ET.Element, reader: str) -> ReaderNodule:
    chars = {}
    block = element.find("characteristics")
    if block is not None:
        for name in CHARACTERISTICS:
            value = _int_or_none(block.findtext(name))
            if value:  # 0 or empty means "not rated" (pylidc's small-nodule convention)
                chars[name] = value
    return ReaderNodule(reader=reader,
                        nodule_id=(element.findtext("noduleID") or "").strip(),
                        malignancy=chars.get("malignancy"),
                        characteristics=chars,
                        rois=[_parse_roi(r) for r in element.findall("roi")])


def parse_lidc_xml(path: str | Path) -> LidcRead:
    """Parse one LIDC read file. Raises InputError for a file that is not a readable LIDC CT read."""
    root = _root_without_namespace(path)
    if root.tag != "LidcReadMessage":
        raise InputError(f"{path}: not an LIDC CT read file (root element <{root.tag}>)")
    header = root.find("ResponseHeader")
    series_uid = study_uid = None
    if header is not None:
        series_uid = (header.findtext("SeriesInstanceUid") or header.findtext("SeriesInstanceUID") or "").strip() or None
        study_uid = (header.findtext("StudyInstanceUID") or "").strip() or None
    read = LidcRead(str(path), series_uid, study_uid)
    seen = set()
    for index, session in enumerate(root.findall("readingSession")):
        reader = (session.findtext("servicingRadiologistID") or "").strip() or f"reader{index}"
        if reader in seen:  # anonymised IDs may repeat; readers must stay distinct
            reader = f"{reader}#{index}"
        seen.add(reader)
        read.readers.append(ReaderSession(
            reader, [_parse_nodule(n, reader) for n in session.findall("unblindedReadNodule")]))
    return read


def read_xml_series_uid(path: str | Path) -> str | None:
    """The SeriesInstanceUid of a read file, scanning only its header (cheap). None when the
    file is not an LIDC read file or has no series UID."""
    try:
        for _, element in ET.iterparse(str(path), events=("end",)):
            tag = element.tag.rsplit("}", 1)[-1]
            if tag in ("SeriesInstanceUid", "SeriesInstanceUID"):
                return (element.text or "").strip() or None
            if tag == "readingSession":
                return None
    except (OSError, ET.ParseError):
        return None
    return None


def cluster_nodules(read: LidcRead, pixel_spacing: float = 1.0, tol_mm: float = 4.0) -> list[list[ReaderNodule]]:
    """Group the readers' marks of the same physical nodule.

    Greedy and deterministic: marks are taken in order of their mean z; each joins the nearest
    existing group (by centroid) that has no mark of the same reader yet and comes within
    ``tol_mm`` (smallest point-to-point distance, in mm, like pylidc's 'min' metric), else starts
    a new group. So a group holds at most one mark per reader. Groups come out sorted by z, y, x.
    """
    marks = [n for n in read.nodules if len(n.points_mm(pixel_spacing))]
    clouds = {id(m): _subsample(m.points_mm(pixel_spacing)) for m in marks}
    centroid = {id(m): clouds[id(m)].mean(axis=0) for m in marks}
    order = sorted(range(len(marks)), key=lambda i: (centroid[id(marks[i])][2], i))
    groups: list[list[ReaderNodule]] = []
    for i in order:
        mark = marks[i]
        best, best_distance = None, np.inf
        for group in groups:
            if any(other.reader == mark.reader for other in group):
                continue
            gap = min(_min_distance(clouds[id(mark)], clouds[id(o)]) for o in group)
            if gap > tol_mm:
                continue
            centre = np.mean([centroid[id(o)] for o in group], axis=0)
            distance = float(np.linalg.norm(centroid[id(mark)] - centre))
            if distance < best_distance:
                best, best_distance = group, distance
        if best is None:
            groups.append([mark])
        else:
            best.append(mark)

    def sort_key(group):
        centre = np.mean([centroid[id(o)] for o in group], axis=0)
        return (round(centre[2], 3), round(centre[1], 3), round(centre[0], 3))

    return sorted(groups, key=sort_key)


def _min_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest Euclidean distance between two point sets (rows)."""
    return float(np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2).min()))


def _subsample(points: np.ndarray, limit: int = 256) -> np.ndarray:
    """Keep at most ``limit`` points (evenly spaced) so that distance matrices stay small."""
    if len(points) <= limit:
        return points
    return points[np.linspace(0, len(points) - 1, limit).astype(int)]


def rasterize_rois(rois: list[Roi], shape: tuple[int, int], include_contour: bool = False) -> np.ndarray:
    """Fill one reader's contours of one slice onto a (rows, cols) bool grid.

    Included regions are united, then ``inclusion=FALSE`` regions (holes) are subtracted. The
    contour pixels themselves are left out by default (LIDC readers draw the outline just outside
    the nodule; pylidc does the same). Single-point rois (centroid marks) fill nothing.
    """
    keep = np.zeros(shape, dtype=np.uint8)
    holes = np.zeros(shape, dtype=np.uint8)
    for roi in rois:
        if len(roi.points) < 2:
            continue
        target = keep if roi.inclusion else holes
        region = np.zeros(shape, dtype=np.uint8)
        cv2.fillPoly(region, [roi.points.reshape(-1, 1, 2).astype(np.int32)], 1)
        if not include_contour:
            x, y = roi.points[:, 0], roi.points[:, 1]
            inside = (x >= 0) & (x < shape[1]) & (y >= 0) & (y < shape[0])
            region[y[inside], x[inside]] = 0
        target |= region
    return (keep > 0) & ~(holes > 0)
