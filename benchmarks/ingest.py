"""Ingest throughput against a floor measured in the same run.

    python benchmarks/ingest.py [--raw RAW] [--patients 4] [--size 256] [--workers 2] [--out FILE]

Without ``--raw``, a synthetic tree of the DICOM-based sources is generated first
(``lungcad.synth.generate``; not timed). Then, on the same CT slices:

* ingest: ``run_ingest`` into a fresh benchmark folder (discovery, reading, masks, labels, PNGs,
  markers, manifest, report), in slices per second;
* floor: for every CT slice file only ``pydicom.dcmread`` + ``pixel_array`` + lung window + PNG
  write (same PNG settings), with the same number of worker processes.

The goal is ingest within 2x of the floor. Results are printed and saved as JSON (default
benchmarks/results/ingest.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pydicom

from lungcad.ingest import IngestOptions, run_ingest
from lungcad.ingest.harmonize import lung_window, write_png_atomic
from lungcad.io import find_dicom_series

DICOM_SOURCES = ("lidc-idri", "lungct-diagnosis", "lung-pet-ct-dx")


def _floor_chunk(args) -> int:
    """Read, window and write a PNG for each file: the least any ingest must do."""
    files, out = args
    for i, path in enumerate(files):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        write_png_atomic(Path(out) / f"{Path(path).parent.name}_{i}_{Path(path).stem}.png", lung_window(hu))
    return len(files)


def measure_floor(files: list[Path], out: Path, workers: int) -> float:
    """Seconds to process ``files`` with ``workers`` processes (files split in equal chunks)."""
    out.mkdir(parents=True, exist_ok=True)
    chunks = [([str(f) for f in files[i::workers]], str(out / f"w{i}")) for i in range(workers)]
    start = time.perf_counter()
    if workers == 1:
        _floor_chunk(chunks[0])
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_floor_chunk, chunks))
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, help="raw tree with one folder per source (default: generate a synthetic one)")
    parser.add_argument("--sources", default=",".join(DICOM_SOURCES), help="comma-separated DICOM sources under RAW")
    parser.add_argument("--patients", type=int, default=4, help="synthetic patients per source")
    parser.add_argument("--size", type=int, default=256, help="synthetic slice size")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ingest.json")
    args = parser.parse_args(argv)
    sources = [s for s in args.sources.split(",") if s]

    work = Path(tempfile.mkdtemp(prefix="lungcad-bench-ingest-"))
    try:
        raw = args.raw
        if raw is None:
            from lungcad.synth import generate
            raw = work / "raw"
            generate(raw, patients=args.patients, seed=42, size=args.size, sources=sources, progress=False)
        roots = {s: raw / s for s in sources if (raw / s).exists()}
        ct_files = [f for root in roots.values() for s in find_dicom_series(root) if s.is_ct for f in s.files]

        start = time.perf_counter()
        report = run_ingest(roots, work / "bench", IngestOptions(workers=args.workers), progress=False)
        ingest_s = time.perf_counter() - start
        slices = report["totals"]["slices"]
        floor_s = measure_floor(ct_files, work / "floor", args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {"sources": sorted(roots), "workers": args.workers, "ct_slice_files": len(ct_files),
              "ingested_slices": slices, "ingest_seconds": round(ingest_s, 3),
              "ingest_slices_per_s": round(slices / ingest_s, 1),
              "floor_seconds": round(floor_s, 3), "floor_slices_per_s": round(len(ct_files) / floor_s, 1),
              "ingest_over_floor_time": round((ingest_s / max(slices, 1)) / (floor_s / max(len(ct_files), 1)), 2),
              "goal": "ingest_over_floor_time <= 2",
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "synthetic": args.raw is None, "patients_per_source": args.patients if args.raw is None else None,
              "size": args.size if args.raw is None else None}
    print(f"ingest: {result['ingest_slices_per_s']} slices/s ({slices} slices, {ingest_s:.2f} s, {args.workers} workers)")
    print(f"floor:  {result['floor_slices_per_s']} slices/s ({len(ct_files)} slices, {floor_s:.2f} s)")
    print(f"ingest time per slice / floor time per slice = {result['ingest_over_floor_time']} (goal <= 2)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
