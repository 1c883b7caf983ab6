"""Exports of lungcad: ONNX models, DICOM SEG and prediction reports.

One import point for the CLI and users; each part lives in its own module:

- ``export_onnx.py``: ``export_onnx(run_dir, out_path, opset=17)`` with an ONNX Runtime check.
- ``dicom_seg.py``: ``write_dicom_seg(result, path)`` (highdicom, BINARY, "Lung nodule").
- ``report.py``: ``write_outputs`` and the report.json / report.png / report.html writers.
"""

from .dicom_seg import build_dicom_seg, write_dicom_seg
from .export_onnx import export_onnx, export_onnx_bytes
from .report import build_report, load_schema, render_html, render_montage_png, write_outputs

__all__ = [
    "build_dicom_seg",
    "build_report",
    "export_onnx",
    "export_onnx_bytes",
    "load_schema",
    "render_html",
    "render_montage_png",
    "write_dicom_seg",
    "write_outputs",
]
