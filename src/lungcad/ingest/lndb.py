"""LNDb adapter: ``data*/LNDb-dddd.mhd`` CTs, per-reader masks, reader-merged findings, malignancy.

Findings. ``trainset_csv/trainNodules_gt.csv`` lists every merged finding of a CT with the readers
(``RadID``) and their reader-local finding numbers (``RadFindingID``) it combines (DATASETS.md 4.4).

Masks. ``masks/LNDb-dddd_radR.mhd`` holds reader R's findings, voxel value = that reader's
FindingID. The consensus mask of a merged finding keeps the voxels marked by at least half of the
readers who segmented it (a reader who only placed a centroid, as for nodules < 3 mm, casts no
voxel vote): one reader -> its mask, two -> union, three -> two of three. ``mask_source='gt'``.

Malignancy (DESIGN.md 5, DATASETS.md 4.6). The reader rating ``malignancy`` from
``chars_trainNodules.csv`` joined on (LNDbID, RadID, FindingID) (``opts.lndb_malignancy_source =
'chars'``), or the reader-mean ``Malignancy`` of ``allNods.csv`` (``'allNods'``). 0 means "not
rated" and is left out. A finding is malignant when its ratings exceed ``opts.lndb_threshold``
(3) by ``opts.lndb_agg``: ``mean`` of the ratings > threshold, ``any`` rating > threshold, or
``majority`` = more than half of the ratings > threshold (a tie is benign). A finding without a
rating has no label; the patient label unifies the finding labels. Patient id = ``LNDb-0001``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lungcad.errors import InputError
from lungcad.ingest.base import Adapter, LoadedSeries, SeriesTask, Skip
from lungcad.ingest.labels import unify_patient
from lungcad.ingest.luna16 import load_volume, mhd_problem, read_csv_checked, slice_labels
from lungcad.ingest.msd import grid_mismatch, load_label_map

SOURCE = "lndb"
GT_COLUMNS = ("LNDbID", "RadID", "RadFindingID", "FindingID", "x", "y", "z", "Nodule")
CHARS_COLUMNS = ("LNDbID", "RadID", "FindingID", "malignancy")
ALLNODS_COLUMNS = ("LNDbID", "RadID", "RadFinding", "FindingID", "Malignancy")
CSV_FOLDERS = ("trainset_csv", ".")
_SCAN_NAME = re.compile(r"^LNDb-(\d+)$")


def _ints(value) -> list[int]:
    """``"1,2,3"`` / ``2`` / ``"2.0"`` -> [1, 2, 3] / [2] / [2]."""
    return [int(float(part)) for part in str(value).split(",") if part.strip()]


def _find_csv(root: Path, name: str) -> Path | None:
    for folder in CSV_FOLDERS:
        path = root / folder / name
        if path.is_file():
            return path
    return None


def finding_label(ratings: list, threshold: float = 3, agg: str = "mean") -> int | None:
    """Malignant (1) / benign (0) from one finding's reader ratings; 0 or missing = not rated."""
    rated = [float(r) for r in ratings if r is not None and float(r) > 0]
    if not rated:
        return None
    above = [r > threshold for r in rated]
    if agg == "mean":
        return int(np.mean(rated) > threshold)
    if agg == "any":
        return int(any(above))
    if agg == "majority":
        return int(2 * sum(above) > len(rated))
    raise InputError(f"unknown LNDb aggregation '{agg}' (expected mean, any or majority)")


def read_findings(gt_csv: Path) -> dict[int, list[dict]]:
    """Merged findings per LNDbID from trainNodules_gt.csv."""
    table = read_csv_checked(gt_csv, GT_COLUMNS, dtype={"RadID": str, "RadFindingID": str})
    findings: dict[int, list[dict]] = {}
    for row in table.to_dict("records"):
        try:
            rads, rad_findings = _ints(row["RadID"]), _ints(row["RadFindingID"])
            finding = {"finding_id": int(float(row["FindingID"])), "nodule": int(float(row["Nodule"])),
                       "xyz": [float(row["x"]), float(row["y"]), float(row["z"])],
                       "pairs": list(zip(rads, rad_findings))}
        except (TypeError, ValueError) as exc:
            raise InputError(f"{gt_csv}: bad value in row {row} ({exc})") from exc
        if len(rads) != len(rad_findings):
            raise InputError(f"{gt_csv}: RadID {row['RadID']!r} and RadFindingID "
                             f"{row['RadFindingID']!r} differ in length")
        findings.setdefault(int(float(row["LNDbID"])), []).append(finding)
    return findings


def read_reader_ratings(chars_csv: Path) -> dict[tuple[int, int, int], float]:
    """(LNDbID, RadID, reader FindingID) -> malignancy rating (0 = not rated)."""
    table = read_csv_checked(chars_csv, CHARS_COLUMNS)
    return {(int(r.LNDbID), int(r.RadID), int(r.FindingID)): float(r.malignancy)
            for r in table[list(CHARS_COLUMNS)].dropna().itertuples(index=False)}


def read_mean_ratings(allnods_csv: Path) -> dict[tuple[int, frozenset], float]:
    """(LNDbID, {(RadID, RadFinding)}) -> reader-mean Malignancy from allNods.csv.

    Keyed by the reader pairs rather than FindingID because allNods also holds text-report-only
    findings, so its numbering need not follow trainNodules_gt.csv.
    """
    table = read_csv_checked(allnods_csv, ALLNODS_COLUMNS, dtype={"RadID": str, "RadFinding": str})
    ratings = {}
    for row in table.to_dict("records"):
        try:
            pairs = frozenset(zip(_ints(row["RadID"]), _ints(row["RadFinding"])))
            value = float(row["Malignancy"])
        except (TypeError, ValueError):
            continue  # text-report-only rows have no reader ids
        if pairs and not np.isnan(value):
            ratings[(int(float(row["LNDbID"])), pairs)] = value
    return ratings


class LndbAdapter(Adapter):
    """``lungcad ingest --source lndb=DIR``: LNDb CTs with consensus masks and malignancy."""

    name = SOURCE

    def discover(self, root: Path, opts) -> tuple[list[SeriesTask], list[Skip]]:
        root = Path(root)
        scans = sorted(p for p in root.glob("data*/LNDb-*.mhd") if _SCAN_NAME.match(p.stem))
        if not scans:
            raise InputError(f"{root}: no LNDb scans (expected data*/LNDb-dddd.mhd)")
        gt_csv = _find_csv(root, "trainNodules_gt.csv")
        if gt_csv is None:
            raise InputError(f"{root}: trainset_csv/trainNodules_gt.csv not found")
        findings = read_findings(gt_csv)
        source = getattr(opts, "lndb_malignancy_source", "chars")
        rating_csv, reader_ratings, mean_ratings = None, {}, {}
        if source == "allNods":
            rating_csv = _find_csv(root, "allNods.csv")
            mean_ratings = read_mean_ratings(rating_csv) if rating_csv else {}
        elif source == "chars":
            rating_csv = _find_csv(root, "chars_trainNodules.csv")
            reader_ratings = read_reader_ratings(rating_csv) if rating_csv else {}
        else:
            raise InputError(f"unknown lndb_malignancy_source '{source}' (expected chars or allNods)")
        rating_name = "allNods.csv" if source == "allNods" else "chars_trainNodules.csv"

        tasks, skips = [], []
        for mhd in scans:
            item = str(mhd.relative_to(root))
            lndb_id = int(_SCAN_NAME.match(mhd.stem).group(1))
            problem = mhd_problem(mhd)
            if problem:
                skips.append(Skip(SOURCE, item, problem))
                continue
            if lndb_id not in findings:
                skips.append(Skip(SOURCE, item, f"no finding in {gt_csv.name} (test CT?): no label"))
                continue
            case_findings = []
            for finding in findings[lndb_id]:
                if source == "allNods":
                    mean = mean_ratings.get((lndb_id, frozenset(finding["pairs"])))
                    ratings = [] if mean is None else [mean]
                else:
                    ratings = [reader_ratings.get((lndb_id, rad, rf)) for rad, rf in finding["pairs"]]
                case_findings.append({**finding, "ratings": ratings})
            readers = sorted({rad for f in case_findings for rad, _ in f["pairs"]})
            masks = {rad: str(root / "masks" / f"{mhd.stem}_rad{rad}.mhd") for rad in readers}
            tasks.append(SeriesTask(SOURCE, mhd.stem, mhd.stem, {
                "mhd": str(mhd), "findings": case_findings, "masks": masks,
                "rating_source": source, "rating_csv": str(rating_csv) if rating_csv else None,
                "rating_name": rating_name}))
        return tasks, skips

    def load(self, task: SeriesTask, opts) -> LoadedSeries:
        volume = load_volume(Path(task.payload["mhd"]))
        notes: list[str] = []
        reader_masks = self._reader_masks(task.payload["masks"], volume, notes)
        threshold = float(getattr(opts, "lndb_threshold", 3))
        agg = getattr(opts, "lndb_agg", "mean")
        if task.payload["rating_csv"] is None:
            notes.append(f"{task.payload['rating_name']} not found: malignancy unknown")
        elif task.payload["rating_source"] == "allNods" and agg != "mean":
            notes.append(f"allNods.csv holds reader means only: lndb_agg '{agg}' acts as 'mean'")

        mask = np.zeros(volume.array.shape, dtype=bool)
        labels, per_slice = [], []
        for finding in task.payload["findings"]:
            label = finding_label(finding["ratings"], threshold, agg)
            labels.append(label)
            consensus = self._consensus(finding["pairs"], reader_masks)
            if consensus is not None:
                mask |= consensus
                per_slice.append((np.nonzero(consensus.any(axis=(1, 2)))[0], label))
            notes.append(f"finding {finding['finding_id']}: readers {[p[0] for p in finding['pairs']]}, "
                         f"ratings {finding['ratings']} -> label {label}"
                         + ("" if consensus is not None else ", no segmentation"))

        assert mask.shape == volume.array.shape, "mask and volume must share one grid"
        return LoadedSeries(volume=volume, mask=mask, mask_source="gt",
                            patient_label=unify_patient(labels),
                            nodule_label=slice_labels(mask.shape[0], per_slice), notes=notes)

    @staticmethod
    def _reader_masks(paths: dict, volume, notes: list[str]) -> dict[int, np.ndarray]:
        """Label map (voxel = FindingID) of every reader whose mask file exists, on the CT grid."""
        masks = {}
        for rad, path in paths.items():
            path = Path(path)
            if not path.is_file():
                notes.append(f"reader {rad}: mask {path.name} missing")
                continue
            reader = load_label_map(path)
            problem = grid_mismatch(volume, reader)
            if problem:
                raise InputError(f"{path}: mask grid differs from its CT: {problem}")
            masks[int(rad)] = np.asarray(reader.array)
        return masks

    @staticmethod
    def _consensus(pairs, reader_masks: dict[int, np.ndarray]) -> np.ndarray | None:
        """Voxels marked by at least half of the readers who segmented this finding; None if nobody did."""
        votes, voters = None, 0
        for rad, rad_finding in pairs:
            if rad not in reader_masks:
                continue
            marked = reader_masks[rad] == rad_finding
            if not marked.any():
                continue  # centroid-only mark (nodule < 3 mm or non-nodule)
            votes = marked.astype(np.int16) if votes is None else votes + marked
            voters += 1
        return None if votes is None else 2 * votes >= voters
