"""LungCT-Diagnosis adapter (TCIA, NBIA Data Retriever tree; DATASETS.md sections 5 and 7).

An adenocarcinoma cohort without annotations: every CT series found under the root is ingested
with patient label 1 (malignant) and no mask (``mask_source='none'``). Non-CT series are skipped
and reported. Series are found by reading DICOM headers, never by folder names.
"""

from __future__ import annotations

from pathlib import Path

from lungcad.ingest.base import Adapter, IngestOptions, LoadedSeries, SeriesTask, Skip
from lungcad.ingest.lidc import non_ct_skips
from lungcad.io import find_dicom_series, read_dicom_series

#: Every patient of the collection has lung adenocarcinoma.
COHORT_LABEL = 1


class LungCtDiagnosisAdapter(Adapter):
    name = "lungct-diagnosis"

    def discover(self, root: Path, opts: IngestOptions) -> tuple[list[SeriesTask], list[Skip]]:
        all_series = find_dicom_series(root)
        skips = non_ct_skips(self.name, all_series)
        if not all_series:
            skips.append(self.skip(root, "no DICOM series found"))
        tasks = [SeriesTask(self.name, s.patient_id, s.series_uid, {"series": s})
                 for s in all_series if s.is_ct]
        return tasks, skips

    def load(self, task: SeriesTask, opts: IngestOptions) -> LoadedSeries:
        volume = read_dicom_series(task.payload["series"])
        return LoadedSeries(volume, None, "none", COHORT_LABEL, None, [])
