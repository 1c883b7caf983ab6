"""LIDC-IDRI reader XML (``LidcReadMessage``) in the layout of the real ``69.xml``.

Contours follow the LIDC protocol: ``edgeMap`` points are the ordered ring of pixels just outside
the reader's region (pylidc's ``boolean_mask`` excludes them and recovers the region).  Pixel
coordinates index the stored array: ``xCoord`` = column, ``yCoord`` = row.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

import contourpy
import numpy as np
from scipy import ndimage

from .readers import Read, reader_region

XSI_LOCATION = "http://www.nih.gov  http://troll.rad.med.umich.edu/lidc/LidcReadMessage.xsd"


@dataclass
class SliceRef:
    """A slice that the XML can point at."""

    z: float  # ImagePositionPatient z (mm)
    sop_uid: str


def outer_contours(region2d: np.ndarray) -> list[list[tuple[int, int]]]:
    """Ordered closed rings (x=col, y=row) of pixels just outside each connected part of a 2D mask."""
    rings = []
    parts, n = ndimage.label(region2d, structure=np.ones((3, 3), bool))
    for i in range(1, n + 1):
        part = ndimage.binary_fill_holes(parts == i)
        grown = ndimage.binary_dilation(part)  # 4-connected growth: the ring touches the region
        padded = np.pad(grown, 1).astype(np.float64)
        lines = contourpy.contour_generator(z=padded).lines(0.5)
        if not lines:
            continue
        line = max(lines, key=len)  # the outer boundary
        ring: list[tuple[int, int]] = []
        for x, y in line:
            # Each vertex lies midway between an inside and an outside pixel: keep the inside one.
            cands = {(int(np.floor(x)), int(np.floor(y))), (int(np.ceil(x)), int(np.ceil(y)))}
            px = next((c for c in sorted(cands) if padded[c[1], c[0]] > 0.5), None)
            if px is not None and (not ring or ring[-1] != (px[0] - 1, px[1] - 1)):
                ring.append((px[0] - 1, px[1] - 1))
        if len(ring) > 2 and ring[0] != ring[-1]:
            ring.append(ring[0])
        rings.append(ring)
    return rings


def _header(series_uid: str, study_uid: str, message_uid: str, message_id: int) -> list[str]:
    return [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<LidcReadMessage uid="{message_uid}" xmlns="http://www.nih.gov" '
        f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="{XSI_LOCATION}">',
        "<ResponseHeader>",
        "<Version>1.8.1</Version>",
        f"<MessageId>{message_id}</MessageId>",
        "<DateRequest>2007-11-01</DateRequest>",
        "<TimeRequest>12:30:44</TimeRequest>",
        "<RequestingSite>removed</RequestingSite>",
        "<ServicingSite>removed</ServicingSite>",
        "<TaskDescription>Second unblinded read</TaskDescription>",
        "<CtImageFile>removed</CtImageFile>",
        f"<SeriesInstanceUid>{series_uid}</SeriesInstanceUid>",
        "<DateService>2008-08-18</DateService>",
        "<TimeService>02:05:51</TimeService>",
        "<ResponseDescription>1 - Reading complete</ResponseDescription>",
        f"<StudyInstanceUID>{study_uid}</StudyInstanceUID></ResponseHeader>",
    ]


def _roi(z: float, sop: str, ring) -> list[str]:
    out = ["      <roi>", f"        <imageZposition>{z:.6f} </imageZposition>",
           f"        <imageSOP_UID>{sop}</imageSOP_UID>", "        <inclusion>TRUE</inclusion>"]
    for x, y in ring:
        out += ["        <edgeMap>", f"          <xCoord>{x}</xCoord>", f"          <yCoord>{y}</yCoord>",
                "        </edgeMap>"]
    out.append("      </roi>")
    return out


def lidc_xml(series_uid: str, study_uid: str, message_uid: str, message_id: int,
             slices: list[SliceRef | None], label: np.ndarray, reads: list[Read],
             small_marks: dict[int, list[tuple[int, int, int]]] | None = None,
             non_nodules: dict[int, list[tuple[int, int, int]]] | None = None,
             bogus_roi: SliceRef | None = None, n_readers: int = 4) -> str:
    """The XML text of one CT's reads.

    ``slices[k]`` is the slice at array index k (None = not in the series); ``label`` is the stored
    (z, y, x) label map; ``small_marks`` / ``non_nodules`` map reader -> [(k, row, col)] points;
    ``bogus_roi`` adds to the first nodule read an ROI pointing at a slice that does not exist.
    """
    lines = _header(series_uid, study_uid, message_uid, message_id)
    small_marks, non_nodules = small_marks or {}, non_nodules or {}
    bogus_done = False
    for reader in range(n_readers):
        lines += ["<readingSession>", "    <annotationVersion>3.12</annotationVersion>",
                  f"    <servicingRadiologistID>{escape(f'anon-{reader + 1:02d}')}</servicingRadiologistID>"]
        n_item = 0
        for read in (r for r in reads if r.reader == reader):
            n_item += 1
            lines += ["    <unblindedReadNodule>", f"      <noduleID>Nodule {n_item:03d}</noduleID>",
                      "      <characteristics>"]
            lines += [f"        <{k}>{v}</{k}>" for k, v in read.characteristics.items()]
            lines.append("      </characteristics>")
            region = reader_region(label, read.nodule_id, read.grow)
            first_ring = None
            for k in np.nonzero(region.reshape(region.shape[0], -1).any(axis=1))[0]:
                ref = slices[k] if k < len(slices) else None
                if ref is None:
                    continue
                for ring in outer_contours(region[k]):
                    lines += _roi(ref.z, ref.sop_uid, ring)
                    first_ring = first_ring or ring
            if bogus_roi is not None and not bogus_done and first_ring:
                lines += _roi(bogus_roi.z, bogus_roi.sop_uid, first_ring)
                bogus_done = True
            lines.append("    </unblindedReadNodule>")
        for k, row, col in small_marks.get(reader, []):
            n_item += 1
            ref = slices[k]
            if ref is None:
                continue
            lines += ["    <unblindedReadNodule>", f"      <noduleID>Nodule {n_item:03d}</noduleID>"]
            lines += _roi(ref.z, ref.sop_uid, [(col, row)])
            lines.append("    </unblindedReadNodule>")
        for i, (k, row, col) in enumerate(non_nodules.get(reader, []), start=1):
            ref = slices[k]
            if ref is None:
                continue
            lines += ["    <nonNodule>", f"      <nonNoduleID>_Non-nodule {i:03d}</nonNoduleID>",
                      f"      <imageZposition>{ref.z:.6f} </imageZposition>",
                      f"      <imageSOP_UID>{ref.sop_uid}</imageSOP_UID>",
                      "      <locus>", f"        <xCoord>{col}</xCoord>", f"        <yCoord>{row}</yCoord>",
                      "      </locus>", "    </nonNodule>"]
        lines.append("  </readingSession>")
    lines.append("</LidcReadMessage>")
    return "\n".join(lines) + "\n"
