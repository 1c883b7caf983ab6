"""``lungcad ingest``: raw collections -> one harmonised benchmark folder (DESIGN.md section 3).

Per source, the adapter discovers its series; each series is loaded (in ``opts.workers``
processes), oriented in-plane, optionally resampled to a common in-plane spacing, lung-windowed
and written as PNG slices (``images/<dataset>/<patient>/<series>_<index>.png``, and ``masks/...``
when the source has masks). Every series leaves a small JSON "done" marker
(``BENCH/.ingest/<source>/<patient>/<series>.json``, written last) holding its manifest rows, so an
interrupted run resumes: series with a marker made under the same settings are not redone, a
series without one is redone from scratch. Then patient labels are unified, patients without a
label are excluded (reported), and ``manifest.csv`` and ``ingest_report.json`` are written.

Choices: all slices of every series go in by default (``opts.slices='lesion'`` keeps mask slices
plus ``opts.lesion_margin`` neighbours); native in-plane spacing is kept unless ``opts.spacing`` is
given (linear for images, nearest for masks); slice order is the reader's (along the slice normal).
The manifest holds the sources of this run only; re-running the same command gives a
byte-identical manifest.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from lungcad.errors import InputError, LungcadError
from lungcad.ingest.base import (Adapter, IngestOptions, LoadedSeries, SeriesTask, Skip)
from lungcad.ingest.harmonize import (canonical_inplane, lung_window, resample_slice,
                                      write_png_atomic, write_text_atomic)
from lungcad.ingest.labels import unify_patient
from lungcad.ingest.manifest import format_float, write_manifest

__all__ = ["ADAPTERS", "Adapter", "IngestOptions", "LoadedSeries", "SeriesTask", "Skip",
           "get_adapter", "run_ingest"]

MARKER_DIR = ".ingest"
REPORT_NAME = "ingest_report.json"
MARKER_SCHEMA = 1

#: source name -> module (under lungcad.ingest) defining its Adapter subclass.
_ADAPTER_MODULES = {
    "lidc-idri": "lidc",
    "luna16": "luna16",
    "msd-lung": "msd",
    "lndb": "lndb",
    "lungct-diagnosis": "lungct_diagnosis",
    "lung-pet-ct-dx": "lung_pet_ct_dx",
}


class _LazyAdapters(Mapping):
    """source name -> Adapter class, importing each adapter module only when first asked for
    (so that one missing or broken adapter module never breaks the others)."""

    def __getitem__(self, name: str) -> type[Adapter]:
        if name not in _ADAPTER_MODULES:
            raise LungcadError(f"unknown source {name!r}; valid sources: {', '.join(_ADAPTER_MODULES)}")
        module_name = f"lungcad.ingest.{_ADAPTER_MODULES[name]}"
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise LungcadError(f"source {name!r} is not available ({module_name}: {exc})") from exc
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Adapter) and getattr(value, "name", "") == name:
                return value
        raise LungcadError(f"{module_name} defines no Adapter subclass named {name!r}")

    def __iter__(self):
        return iter(_ADAPTER_MODULES)

    def __len__(self) -> int:
        return len(_ADAPTER_MODULES)

    def __contains__(self, name) -> bool:
        return name in _ADAPTER_MODULES


ADAPTERS: Mapping[str, type[Adapter]] = _LazyAdapters()


def get_adapter(name: str) -> Adapter:
    """An instance of the adapter of source ``name`` (LungcadError listing valid names otherwise)."""
    return ADAPTERS[name]()


# ----------------------------------------------------------------------------- paths and markers

def safe_name(text: str) -> str:
    """A file/folder name made of [A-Za-z0-9._-] only, so that paths never leave BENCH."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(text)).strip(".")
    return name or "_"


def native_patient_id(task: SeriesTask) -> str:
    """The source's own patient ID (adapters may or may not have prefixed it with the source)."""
    prefix = f"{task.source}/"
    return task.patient_id[len(prefix):] if task.patient_id.startswith(prefix) else task.patient_id


def marker_path(out: Path, task: SeriesTask) -> Path:
    return (Path(out) / MARKER_DIR / safe_name(task.source) / safe_name(native_patient_id(task))
            / f"{safe_name(task.series_uid)}.json")


def _read_marker(path: Path, fingerprint: dict) -> dict | None:
    """The marker when it exists, parses and was made under the same output settings."""
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if marker.get("schema") != MARKER_SCHEMA or marker.get("options") != fingerprint:
        return None
    return marker


# ----------------------------------------------------------------------------- one series (worker)

def _slice_z_mm(volume, array_shape) -> list[float]:
    """World z (mm) of each slice's first voxel; from the DICOM positions when the reader kept
    them (exact even across a missing-slice gap), else from the regular grid."""
    d = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    n = array_shape[0]
    positions = volume.meta.get("z_positions") if isinstance(volume.meta, dict) else None
    if positions is not None and len(positions) == n:
        return [float(volume.origin[2] + d[2, 2] * (p - positions[0])) for p in positions]
    return [float(volume.origin[2] + d[2, 2] * volume.spacing[2] * k) for k in range(n)]


def _selected_slices(mask: np.ndarray | None, n: int, opts: IngestOptions) -> list[int]:
    if opts.slices == "all" or mask is None:
        return list(range(n))
    lesion = np.flatnonzero(mask.reshape(n, -1).any(axis=1))
    keep = set()
    for k in lesion:
        keep.update(range(max(0, k - opts.lesion_margin), min(n, k + opts.lesion_margin + 1)))
    return sorted(keep)


def write_series(loaded: LoadedSeries, task: SeriesTask, out: Path, opts: IngestOptions) -> list[dict]:
    """Harmonise one loaded series and write its PNGs; returns its per-slice manifest fields."""
    volume = loaded.volume
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise InputError(f"series {task.series_uid}: expected a 3D volume, got shape {array.shape}")
    mask = None if loaded.mask is None else np.asarray(loaded.mask, dtype=bool)
    if mask is not None and mask.shape != array.shape:
        raise InputError(f"series {task.series_uid}: mask shape {mask.shape} != image shape {array.shape}")
    z_mm = _slice_z_mm(volume, array.shape)
    array, mask, spacing, _, _, _ = canonical_inplane(array, mask, volume.spacing, volume.origin,
                                                     volume.direction)
    thickness = float(volume.meta.get("slice_thickness") or spacing[2])
    row_mm, col_mm = float(spacing[1]), float(spacing[0])
    if opts.spacing:
        row_mm_out = col_mm_out = float(opts.spacing)
        windowed = None
    else:
        row_mm_out, col_mm_out = row_mm, col_mm
        windowed = lung_window(array)  # whole volume at once: fastest
    nodule_label = None if loaded.nodule_label is None else np.asarray(loaded.nodule_label).reshape(-1)

    dataset = safe_name(task.source)
    patient = safe_name(native_patient_id(task))
    stem = safe_name(task.series_uid)
    rows = []
    for k in _selected_slices(mask, array.shape[0], opts):
        if windowed is None:
            image = lung_window(resample_slice(array[k], (row_mm, col_mm), opts.spacing))
            slice_mask = None if mask is None else resample_slice(mask[k], (row_mm, col_mm), opts.spacing, True)
        else:
            image = windowed[k]
            slice_mask = None if mask is None else mask[k]
        relative = f"{dataset}/{patient}/{stem}_{k:04d}.png"
        write_png_atomic(out / "images" / relative, image)
        row = {"image_path": f"images/{relative}", "mask_path": "", "slice_index": str(k),
               "z_mm": format_float(z_mm[k]), "spacing_row_mm": format_float(row_mm_out, 6),
               "spacing_col_mm": format_float(col_mm_out, 6),
               "slice_thickness_mm": format_float(thickness), "nodule_area_px": "",
               "nodule_label": ""}
        if slice_mask is not None:
            write_png_atomic(out / "masks" / relative, slice_mask.astype(np.uint8) * 255)
            row["mask_path"] = f"masks/{relative}"
            row["nodule_area_px"] = str(int(slice_mask.sum()))
        if nodule_label is not None and k < len(nodule_label) and int(nodule_label[k]) >= 0:
            row["nodule_label"] = str(int(nodule_label[k]))
        rows.append(row)
    return rows


def process_series(task: SeriesTask, opts: IngestOptions, out: str) -> dict:
    """Load, harmonise and write one series, then its done marker (last). Never raises: a
    failure comes back as ``{'error': reason}`` so that the batch goes on."""
    out = Path(out)
    try:
        adapter = get_adapter(task.source)
        loaded = adapter.load(task, opts)
        rows = write_series(loaded, task, out, opts)
        notes = list(loaded.notes) + [n for n in (loaded.volume.meta or {}).get("notes", [])
                                      if n not in loaded.notes]
        marker = {"schema": MARKER_SCHEMA, "source": task.source,
                  "patient_id": native_patient_id(task), "series_uid": task.series_uid,
                  "options": opts.output_fingerprint(),
                  "patient_label": None if loaded.patient_label is None else int(loaded.patient_label),
                  "mask_source": loaded.mask_source, "notes": notes, "rows": rows}
        write_text_atomic(marker_path(out, task), json.dumps(marker, indent=1, sort_keys=True))
        return marker
    except LungcadError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # one bad series never stops the batch; the reason is reported
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()}


# ----------------------------------------------------------------------------- the batch

def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="series")


def _task_size(task: SeriesTask) -> int:
    """Number of slice files when the payload tells (DICOM adapters), else 0."""
    series = task.payload.get("series") if isinstance(task.payload, dict) else None
    return len(getattr(series, "files", None) or [])


def _run_tasks(tasks: list[SeriesTask], opts: IngestOptions, out: Path, progress: bool, desc: str):
    """Yield (task, result) for every task, in parallel when opts.workers > 1."""
    if opts.workers <= 1 or len(tasks) <= 1:
        for task in _progress(tasks, len(tasks), desc, progress):
            yield task, process_series(task, opts, str(out))
        return
    # Largest series first, so that one big series does not finish alone at the end.
    tasks = sorted(tasks, key=lambda t: -_task_size(t))
    with ProcessPoolExecutor(max_workers=min(opts.workers, len(tasks))) as pool:
        futures = {pool.submit(process_series, t, opts, str(out)): t for t in tasks}
        for future in _progress(as_completed(futures), len(futures), desc, progress):
            task = futures[future]
            try:
                yield task, future.result()
            except BrokenProcessPool as exc:  # a worker died (out of memory, killed...)
                yield task, {"error": f"worker process died ({exc})"}


def _versions() -> dict:
    import pydicom
    import SimpleITK
    import lungcad
    return {"lungcad": lungcad.__version__, "numpy": np.__version__,
            "SimpleITK": SimpleITK.Version_VersionString(), "pydicom": pydicom.__version__}


def _existing_split_map(out: Path) -> tuple[dict, str | None]:
    """patient -> classification split from an existing splits.json (kept across re-ingests)."""
    if not (out / "splits.json").exists():
        return {}, None
    from lungcad.splits import load_splits, patient_split_map
    try:
        return patient_split_map(load_splits(out)), None
    except LungcadError as exc:
        return {}, f"existing splits.json ignored: {exc}"


def _unique_series(tasks: list[SeriesTask]) -> tuple[list[SeriesTask], list[SeriesTask]]:
    """``tasks`` without repeats of a (patient, series): a source that lists a series twice (an
    index with a duplicated entry) would otherwise write its slices twice into the manifest."""
    seen, unique, repeated = set(), [], []
    for task in tasks:
        key = (task.patient_id, task.series_uid)
        (repeated if key in seen else unique).append(task)
        seen.add(key)
    return unique, repeated


def run_ingest(sources: dict[str, Path], out: Path, opts: IngestOptions | None = None,
               progress: bool = True) -> dict:
    """Ingest ``sources`` ({source name: raw root}) into the benchmark folder ``out``.

    Returns the report (also written to ``out/ingest_report.json``). Raises LungcadError for an
    unknown source, a missing root, or when not a single series could be ingested (then the
    previous manifest, if any, is left untouched).
    """
    opts = opts or IngestOptions()
    out = Path(out)
    if not sources:
        raise LungcadError("no source given (use --source NAME=DIR)")
    adapters = {name: get_adapter(name) for name in sources}
    for name, root in sources.items():
        if not Path(root).exists():
            raise InputError(f"{root}: source folder for {name!r} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = opts.output_fingerprint()

    report_sources, markers_by_source = {}, {}
    for name, root in sources.items():
        root = Path(root)
        try:
            tasks, skips = adapters[name].discover(root, opts)
        except LungcadError as exc:
            tasks, skips = [], [Skip(name, str(root), str(exc))]
        except Exception as exc:  # an adapter bug must not lose the other sources
            tasks, skips = [], [Skip(name, str(root), f"discovery failed: {type(exc).__name__}: {exc}")]
        tasks, repeated = _unique_series(tasks)
        skips += [Skip(name, f"{native_patient_id(t)} series {t.series_uid}",
                       "listed twice by the source; ingested once (the first listing)") for t in repeated]
        done, todo = [], []
        for task in tasks:
            marker = _read_marker(marker_path(out, task), fingerprint)
            (done if marker else todo).append(marker or task)
        for task, result in _run_tasks(todo, opts, out, progress, f"ingest {name}"):
            if "error" in result:
                skips.append(Skip(name, f"{native_patient_id(task)} series {task.series_uid}", result["error"]))
            else:
                done.append(result)
        markers_by_source[name] = done
        report_sources[name] = {"root": str(root), "series_discovered": len(tasks),
                                "series_resumed": len(tasks) - len(todo),
                                "skipped": [vars(s) for s in sorted(skips, key=lambda s: (s.item, s.reason))]}

    rows = _unify_and_build_rows(markers_by_source, report_sources)
    report = {"settings": opts.to_json(), "versions": _versions(),
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "sources": report_sources,
              "totals": {"patients": len({r["patient_id"] for r in rows}),
                         "series": len({(r["patient_id"], r["series_uid"]) for r in rows}),
                         "slices": len(rows)}}
    split_map, split_note = _existing_split_map(out)
    for row in rows:
        row["split"] = split_map.get(row["patient_id"], "")
    if split_note:
        report["notes"] = [split_note]
    write_text_atomic(out / REPORT_NAME, json.dumps(report, indent=1, sort_keys=True) + "\n")
    if not rows:
        reasons = "; ".join(f"{s['item']}: {s['reason']}" for src in report_sources.values()
                            for s in src["skipped"][:3])
        raise InputError(f"no series could be ingested ({reasons or 'nothing found'}); "
                         f"see {out / REPORT_NAME}")
    write_manifest(out, rows)
    return report


def _unify_and_build_rows(markers_by_source: dict, report_sources: dict) -> list[dict]:
    """Patient label = unify_patient over its series; unlabelled patients are excluded (and
    reported). Returns the manifest rows of the included patients."""
    rows = []
    for name, markers in markers_by_source.items():
        by_patient = defaultdict(list)
        for marker in markers:
            by_patient[marker["patient_id"]].append(marker)
        labels, excluded, notes = Counter(), [], {}
        n_series = n_slices = 0
        for patient in sorted(by_patient):
            series = sorted(by_patient[patient], key=lambda m: m["series_uid"])
            label = unify_patient(m["patient_label"] for m in series)
            if label is None:
                excluded.append({"patient_id": f"{name}/{patient}",
                                 "reason": "no malignancy label (no rated nodule, or excluded by the label rule)"})
                continue
            labels[str(label)] += 1
            for marker in series:
                n_series += 1
                if marker["notes"]:
                    notes[f"{patient} series {marker['series_uid']}"] = marker["notes"]
                for fields in marker["rows"]:
                    n_slices += 1
                    rows.append({**fields, "patient_id": f"{name}/{patient}", "label": str(label),
                                 "dataset": name, "series_uid": marker["series_uid"],
                                 "mask_source": marker["mask_source"]})
        report_sources[name].update({"patients": sum(labels.values()), "series": n_series,
                                     "slices": n_slices, "labels": dict(sorted(labels.items())),
                                     "excluded_patients": excluded, "notes": notes})
    return rows
