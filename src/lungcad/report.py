"""Writers of ``lungcad predict`` outputs for one case: mask.nii.gz, seg.dcm, report.json/png/html.

Every file is written under a temporary name in the case folder and renamed into place, so an
interrupted run never leaves a half-written file under its final name. ``report.json`` is written
last and lists the other outputs; its schema is ``schemas/report.schema.json`` (schema_version 1).

``mask.nii.gz`` is a label map on the input's exact grid (size, spacing, origin, direction copied
from the input volume): uint8 (uint16 beyond 255 nodules), 0 = background, k = nodule ``id`` k of
report.json. ``mask > 0`` is the binary nodule mask.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__
from .io import write_bytes_atomic
from .predict import HEADLINE, PredictionResult

DISCLAIMER = "Research software, not a medical device: not for clinical use or diagnosis."
SCHEMA_PATH = Path(__file__).with_name("schemas") / "report.schema.json"
SCHEMA_VERSION = 1
MASK_ENCODING = "label map on the input grid: 0 background, k = nodule id k (uint8, uint16 beyond 255)"
_MONTAGE_MAX = 12
_FILES = {"nifti": "mask.nii.gz", "dicom-seg": "seg.dcm", "json": "report.json",
          "png": "report.png", "html": "report.html"}


def write_mask_nifti(result: PredictionResult, path: Path) -> Path:
    """The nodule label map as NIfTI with the input's geometry (via SimpleITK)."""
    from .io import write_volume

    return write_volume(result.mask, path)


def build_report(result: PredictionResult, models: dict, options: dict, input_path: Path,
                 outputs: dict[str, str]) -> dict:
    """The report.json document (see ``schemas/report.schema.json``)."""
    v = result.volume
    nz, ny, nx = v.array.shape
    kind = v.meta.get("kind") or "unknown"
    patient = result.patient_probability
    return {
        "schema_version": SCHEMA_VERSION,
        "lungcad_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": {
            "path": str(input_path), "kind": kind if kind in ("dicom", "nifti", "metaimage") else "unknown",
            "series_uid": v.meta.get("series_uid"), "patient_id": v.meta.get("patient_id") or None,
            "size_xyz": [int(nx), int(ny), int(nz)],
            "spacing_xyz": [float(s) for s in v.spacing], "origin_xyz": [float(o) for o in v.origin],
            "direction": [float(d) for d in v.direction],
        },
        "models": models,
        "options": options,
        "lung_region": result.lung_region,
        "nodules": [n.to_dict() for n in result.nodules],
        "patient": {
            "headline": HEADLINE,
            "probability": _round(patient.get("value")),
            "max_over_nodules": _round(patient.get("max_over_nodules")),
            "mean_over_slices": _round(patient.get("mean_over_slices")),
            "largest_diameter_mm": _round(patient.get("largest_diameter_mm")),
            "size_head": _round(patient.get("size_head")),
        },
        "timings_s": dict(result.timings),
        "warnings": list(result.warnings),
        "outputs": outputs,
        "mask_encoding": MASK_ENCODING,
        "disclaimer": DISCLAIMER,
    }


def _round(value):
    return None if value is None else round(float(value), 6)


def render_montage_png(result: PredictionResult) -> bytes:
    """PNG montage: each nodule at its largest cross-section with its outline and probability."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .ingest.harmonize import lung_window

    v = result.volume
    sx, sy = float(v.spacing[0]), float(v.spacing[1])
    nodules = result.nodules[:_MONTAGE_MAX]
    cols = max(1, min(4, len(nodules)))
    rows = max(1, -(-len(nodules) // cols))
    fig = Figure(figsize=(max(4.8, 3.2 * cols), 3.4 * rows), dpi=100)
    FigureCanvasAgg(fig)
    if not nodules:
        ax = fig.add_subplot(1, 1, 1)
        z = v.array.shape[0] // 2
        ax.imshow(lung_window(v.array[z]), cmap="gray", vmin=0, vmax=255, aspect=sy / sx)
        ax.set_title(f"no nodule found (slice {z})", fontsize=9)
        ax.axis("off")
    for index, nodule in enumerate(nodules):
        ax = fig.add_subplot(rows, cols, index + 1)
        z = nodule.largest_slice
        half_mm = max(20.0, 1.5 * nodule.diameter_mm)
        cy, cx = nodule.centroid_index[1], nodule.centroid_index[2]
        hy, hx = int(np.ceil(half_mm / sy)), int(np.ceil(half_mm / sx))
        y0, y1 = max(0, int(cy) - hy), min(v.array.shape[1], int(cy) + hy + 1)
        x0, x1 = max(0, int(cx) - hx), min(v.array.shape[2], int(cx) + hx + 1)
        image = lung_window(v.array[z, y0:y1, x0:x1])
        outline = (result.labels[z, y0:y1, x0:x1] == nodule.id).astype(float)
        extent = (x0 * sx, x1 * sx, y1 * sy, y0 * sy)   # mm, so the panel has true proportions
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, extent=extent)
        if outline.any() and min(outline.shape) > 1:
            # contour's extent spans pixel centres, imshow's spans pixel edges
            ax.contour(outline, levels=[0.5], colors="red", linewidths=1.0, extent=(
                (x0 + 0.5) * sx, (x1 - 0.5) * sx, (y0 + 0.5) * sy, (y1 - 0.5) * sy))
        prob = "n/a" if nodule.probability is None else f"{nodule.probability:.2f}"
        ax.set_title(f"#{nodule.id}  p={prob}  {nodule.diameter_mm:.1f} mm  z={z}", fontsize=9)
        ax.axis("off")
    headline = result.patient_probability.get("value")
    fig.suptitle("lungcad: " + ("patient p(malignant) = n/a" if headline is None
                                else f"patient p(malignant) = {headline:.2f} (max over nodules)"),
                 fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def render_html(report: dict, png: bytes | None) -> str:
    """A short self-contained page: the montage (base64), the nodule table and the disclaimer."""
    esc = html.escape
    rows = []
    for n in report["nodules"]:
        prob = "n/a" if n["probability"] is None else f"{n['probability']:.3f}"
        centroid = ", ".join(f"{c:.1f}" for c in n["centroid_mm"])
        rows.append(f"<tr><td>{n['id']}</td><td>{centroid}</td><td>{n['diameter_mm']:.1f}</td>"
                    f"<td>{n['volume_mm3']:.0f}</td><td>{n['slices']['first']}-{n['slices']['last']}</td>"
                    f"<td>{n['confidence']:.2f}</td><td>{prob}</td></tr>")
    patient = report["patient"]
    headline = "n/a" if patient["probability"] is None else f"{patient['probability']:.3f}"
    mean = "n/a" if patient["mean_over_slices"] is None else f"{patient['mean_over_slices']:.3f}"
    size_head = ("" if patient.get("size_head") is None else
                 f"; size head (that mean and the largest diameter, {patient['largest_diameter_mm']:.1f} mm): "
                 f"{patient['size_head']:.3f}")
    image = ("" if png is None else
             f'<img alt="nodule montage" src="data:image/png;base64,{base64.b64encode(png).decode()}">')
    warnings = "".join(f"<li>{esc(w)}</li>" for w in report["warnings"])
    table = ("<table><tr><th>id</th><th>centroid (x, y, z) mm</th><th>diameter mm</th>"
             "<th>volume mm&sup3;</th><th>slices</th><th>confidence</th><th>p(malignant)</th></tr>"
             + "".join(rows) + "</table>") if rows else "<p>No nodule found.</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lungcad report: {esc(report['input']['path'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:.2em .6em;text-align:right}}img{{max-width:100%}}
.disclaimer{{background:#fee;border:1px solid #c00;padding:.5em}}</style></head><body>
<h1>lungcad prediction</h1>
<p class="disclaimer"><strong>{esc(DISCLAIMER)}</strong></p>
<p>Input: <code>{esc(report['input']['path'])}</code> (series {esc(str(report['input']['series_uid']))})<br>
Segmentation: {esc(str(report['models']['segmentation']['arch']))};
classification: {esc(str((report['models']['classification'] or {}).get('arch')))};
backend: {esc(report['models']['backend'])}</p>
<p>Patient probability of malignancy: <strong>{headline}</strong> (max over nodules, headline);
mean over nodule slices (the paper's aggregation): {mean}{size_head}</p>
{table}
{image}
{('<h2>Warnings</h2><ul>' + warnings + '</ul>') if warnings else ''}
<p>lungcad {esc(report['lungcad_version'])}, {esc(report['created'])}</p>
</body></html>
"""


def write_outputs(result: PredictionResult, case_dir: Path, formats, models: dict,
                  input_path: Path, options=None) -> dict[str, str]:
    """Write the requested ``formats`` for one case; returns format -> file path.

    ``options`` is the ``PredictOptions`` used (or its dict); ``dicom-seg`` is written only when
    the input was a DICOM series (a warning is added otherwise).
    """
    import time

    from .predict import PredictOptions

    start = time.perf_counter()
    case_dir = Path(case_dir)
    case_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    if "nifti" in formats:
        written["nifti"] = str(write_mask_nifti(result, case_dir / _FILES["nifti"]))
    if "dicom-seg" in formats:
        if result.volume.meta.get("kind") == "dicom" and result.volume.meta.get("files"):
            from .dicom_seg import write_dicom_seg

            written["dicom-seg"] = str(write_dicom_seg(result, case_dir / _FILES["dicom-seg"]))
        else:
            result.warnings.append("dicom-seg skipped: the input is not a DICOM series")
    png = None
    if "png" in formats or "html" in formats:
        png = render_montage_png(result)
    if "png" in formats:
        written["png"] = str(write_bytes_atomic(case_dir / _FILES["png"], png))
    if "json" in formats or "html" in formats:
        listed = {fmt: Path(p).name for fmt, p in written.items()}
        for fmt in ("json", "html"):
            if fmt in formats:
                listed[fmt] = _FILES[fmt]
        result.timings["write"] = round(time.perf_counter() - start, 4)
        opts = options if isinstance(options, dict) else _options_dict(options or PredictOptions())
        report = build_report(result, models, opts, input_path, listed)
        if "html" in formats:
            written["html"] = str(write_bytes_atomic(case_dir / _FILES["html"],
                                                     render_html(report, png).encode()))
        if "json" in formats:
            text = json.dumps(report, indent=2) + "\n"
            written["json"] = str(write_bytes_atomic(case_dir / _FILES["json"], text.encode()))
    return written


def _options_dict(options) -> dict:
    return {"restrict_to_lung": options.restrict_to_lung, "lung_margin_mm": options.lung_margin_mm,
            "min_voxels": options.min_voxels, "min_diameter_mm": options.min_diameter_mm,
            "connectivity": 26, "batch_size": options.batch_size}


def load_schema() -> dict:
    """The JSON Schema of report.json."""
    return json.loads(SCHEMA_PATH.read_text())
