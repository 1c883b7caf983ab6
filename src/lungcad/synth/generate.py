"""Write every source's synthetic tree under one folder, plus ``synth_truth.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from ..errors import LungcadError
from .lidc import write_lidc
from .lndb import write_lndb
from .luna16 import write_luna16
from .msd import write_msd
from .tcia import write_lung_pet_ct_dx, write_lungct_diagnosis

SOURCES = ("lidc-idri", "luna16", "msd-lung", "lndb", "lungct-diagnosis", "lung-pet-ct-dx")
_WRITERS = {"lidc-idri": write_lidc, "luna16": write_luna16, "msd-lung": write_msd, "lndb": write_lndb,
            "lungct-diagnosis": write_lungct_diagnosis, "lung-pet-ct-dx": write_lung_pet_ct_dx}
TRUTH_FILE = "synth_truth.json"


def generate(out: Path, patients: int = 4, seed: int = 42, size: int = 256, n_slices: int = 48,
             sources: Sequence[str] | None = None, progress: bool = True) -> dict:
    """Write ``OUT/<source>/...`` in each dataset's native layout and ``OUT/synth_truth.json``.

    Deterministic: the same arguments give the same bytes.  Returns a summary
    ``{"out", "seed", "sources": {source: {"patients", "malignant"}}}``.
    """
    out = Path(out)
    sources = list(SOURCES if sources is None else sources)
    unknown = [s for s in sources if s not in _WRITERS]
    if unknown:
        raise LungcadError(f"synth: unknown source(s) {', '.join(unknown)}; valid: {', '.join(SOURCES)}")
    if patients < 1:
        raise LungcadError(f"synth: --patients must be >= 1 (got {patients})")
    if size < 32 or n_slices < 8:
        raise LungcadError(f"synth: size must be >= 32 and n_slices >= 8 (got {size}, {n_slices})")
    out.mkdir(parents=True, exist_ok=True)
    truth = {"seed": seed, "size": size, "n_slices": n_slices, "patients_per_source": patients,
             "conventions": {
                 "center_mm": "world (x, y, z) mm, LPS/ITK frame",
                 "slices": "array indices k (z ascending) of the written volume spanned by the nodule label",
                 "lidc_contours": "edgeMap = ordered ring of pixels just outside the reader region (pylidc excludes them)",
                 "label": "patient label under the source's default rule (paper rule for LIDC/LUNA16, "
                          "reader-mean malignancy > 3 for LNDb, 1 for cancer cohorts)"},
             "sources": {}}
    bar = tqdm(total=patients * len(sources), desc="synth", unit="patient", disable=not progress)
    try:
        for source in sources:
            records = _WRITERS[source](out, patients, seed, size, n_slices, progress=bar)
            truth["sources"][source] = {"root": source, "patients": records}
    finally:
        bar.close()
    (out / TRUTH_FILE).write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
    return {"out": str(out), "seed": seed, "truth": str(out / TRUTH_FILE),
            "sources": {s: {"patients": len(v["patients"]),
                            "malignant": sum(1 for p in v["patients"] if p["label"] == 1)}
                        for s, v in truth["sources"].items()}}
