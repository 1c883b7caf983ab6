"""The interface between the ingest framework and one adapter per source collection.

An adapter knows one collection's native layout and label convention. It *discovers* the series
of a raw tree (cheap: headers and annotation files only) and *loads* one series at a time into a
:class:`LoadedSeries` (HU volume, optional nodule mask, labels). Everything else (windowing,
PNG writing, resume, manifest, report) is the framework's job in ``lungcad.ingest``.

``load`` runs in worker processes, so a :class:`SeriesTask` must be picklable and self-contained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lungcad.errors import LungcadError

LABEL_RULES = ("paper", "median")
LNDB_MALIGNANCY_SOURCES = ("chars", "allNods")
LNDB_AGGREGATIONS = ("mean", "any", "majority")
SLICE_SELECTIONS = ("all", "lesion")
MASK_SOURCES = ("gt", "box", "none")


@dataclass
class IngestOptions:
    """Settings of one ingest run; recorded in ingest_report.json and in every resume marker.

    label_rule: LIDC/LUNA16 nodule rule, 'paper' (>= 3 readers rate >= 3) or 'median'.
    consensus: fraction of the readers who marked a nodule whose contour must include a pixel.
    spacing: common in-plane pixel spacing in mm; None keeps each series' native spacing.
    workers: processes loading series in parallel (1 = in the calling process).
    lidc_xml: folder of LIDC XML read files (for luna16, or lidc-idri when the XML is not
        beside the DICOM files); searched recursively.
    lndb_malignancy_source / lndb_threshold / lndb_agg: LNDb rating source ('chars' =
        chars_trainNodules.csv, 'allNods' = allNods.csv), malignant when rating > threshold,
        and how several readers' ratings of one nodule combine ('mean', 'any', 'majority').
    slices: 'all' slices of every series, or 'lesion' = slices with mask pixels plus
        ``lesion_margin`` neighbours on each side (sources without masks keep all slices).
    petct_annotations: Lung-PET-CT-Dx ``Annotation/`` folder when it is not found beside the
        DICOM tree (see lung_pet_ct_dx.py).
    """

    label_rule: str = "paper"
    consensus: float = 0.5
    spacing: float | None = None
    workers: int = 1
    lidc_xml: Path | None = None
    lndb_malignancy_source: str = "chars"
    lndb_threshold: float = 3
    lndb_agg: str = "mean"
    slices: str = "all"
    lesion_margin: int = 2
    petct_annotations: Path | None = None

    def __post_init__(self):
        _check_choice("label_rule", self.label_rule, LABEL_RULES)
        _check_choice("lndb_malignancy_source", self.lndb_malignancy_source, LNDB_MALIGNANCY_SOURCES)
        _check_choice("lndb_agg", self.lndb_agg, LNDB_AGGREGATIONS)
        _check_choice("slices", self.slices, SLICE_SELECTIONS)
        if not 0 < float(self.consensus) <= 1:
            raise LungcadError(f"consensus must be in (0, 1], got {self.consensus}")
        if self.spacing is not None and float(self.spacing) <= 0:
            raise LungcadError(f"spacing must be a positive number of mm, got {self.spacing}")
        if int(self.workers) < 1:
            raise LungcadError(f"workers must be >= 1, got {self.workers}")
        if int(self.lesion_margin) < 0:
            raise LungcadError(f"lesion_margin must be >= 0, got {self.lesion_margin}")
        self.lidc_xml = Path(self.lidc_xml) if self.lidc_xml else None
        self.petct_annotations = Path(self.petct_annotations) if self.petct_annotations else None

    def to_json(self) -> dict:
        """Plain-JSON form (paths as strings) for the report and the resume markers."""
        out = dataclasses.asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}

    def output_fingerprint(self) -> dict:
        """The settings that change what is written for a series (workers does not)."""
        out = self.to_json()
        out.pop("workers")
        return out


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise LungcadError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


@dataclass
class SeriesTask:
    """One series to load. ``patient_id`` is the source's own ID (e.g. 'LIDC-IDRI-0001'); the
    framework prefixes it with the source name. ``payload`` holds whatever the adapter's
    ``load`` needs (file lists, annotation paths...) and must be picklable."""

    source: str
    patient_id: str
    series_uid: str
    payload: dict = field(default_factory=dict)


@dataclass
class Skip:
    """An item left out, with the reason; goes into ingest_report.json."""

    source: str
    item: str
    reason: str


@dataclass
class LoadedSeries:
    """One series ready for harmonisation.

    volume: ``lungcad.io.Volume`` in HU, array (z, y, x).
    mask: (z, y, x) bool nodule mask, None when the source has none (then mask_source='none').
    mask_source: 'gt' (contours), 'box' (filled bounding boxes) or 'none'.
    patient_label: 0/1 after the source's rule over this series; None = unknown/excluded.
    nodule_label: per-slice nodule-level label, shape (z,), int, -1 where unknown/no nodule;
        None when the source has no nodule-level label.
    notes: quirks met while loading (missing slices, odd labels...), short strings.
    """

    volume: object
    mask: np.ndarray | None
    mask_source: str
    patient_label: int | None
    nodule_label: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.mask_source not in MASK_SOURCES:
            raise ValueError(f"mask_source must be one of {MASK_SOURCES}, got {self.mask_source!r}")
        if self.mask is not None and self.mask_source == "none":
            raise ValueError("a mask was given with mask_source='none'")
        if self.mask is None and self.mask_source != "none":
            raise ValueError(f"mask_source={self.mask_source!r} but no mask")


class Adapter:
    """Base class of the per-source adapters (registered in ``lungcad.ingest.ADAPTERS``)."""

    name: str = ""

    def discover(self, root: Path, opts: IngestOptions) -> tuple[list[SeriesTask], list[Skip]]:
        """Find the series under ``root`` (cheap: headers/annotations only). Items that cannot
        become a series (orphan annotations, non-CT series...) are returned as skips."""
        raise NotImplementedError

    def load(self, task: SeriesTask, opts: IngestOptions) -> LoadedSeries:
        """Read one series with its annotations; may raise ``InputError`` (the series is then
        skipped and reported, the batch goes on)."""
        raise NotImplementedError

    def skip(self, item, reason: str) -> Skip:
        """Convenience: a Skip of this source."""
        return Skip(self.name, str(item), reason)
