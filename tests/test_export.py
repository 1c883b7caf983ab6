"""ONNX export (both exporters), DICOM SEG edge cases and the report.json schema."""

from __future__ import annotations

import copy
import json

import highdicom as hd
import jsonschema
import numpy as np
import onnxruntime as ort
import pytest
import torch

from lungcad.errors import LungcadError
from lungcad.export import build_report, export_onnx, load_schema, render_html, write_dicom_seg
from lungcad.features import FEATURES_VERSION
from lungcad.inference import model_json_from_onnx
from lungcad.io import Volume
from lungcad.models import create_classifier, create_segmenter, load_run_model, save_run_model
from lungcad.predict import PredictionResult, Predictor
from lungcad.synth.dicom_writer import SeriesOptions, write_series

SEG_INFO = {"task": "segmentation", "arch": "lightunet", "kwargs": {}, "in_channels": 1,
            "image_size": 64, "window_hu": [-1200, 0], "threshold": 0.5}


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("seg")
    torch.manual_seed(0)
    save_run_model(run, create_segmenter("lightunet"), SEG_INFO)
    return run


def _run_onnx(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _torch(run, x: np.ndarray) -> np.ndarray:
    model, _ = load_run_model(run)
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_segmenter_export_has_dynamic_axes_and_metadata(seg_run, tmp_path, dynamo):
    summary = export_onnx(seg_run, tmp_path / "seg.onnx", dynamo=dynamo)
    assert summary["max_abs_diff"] <= 1e-5 * max(1.0, summary["max_abs_logit"])
    assert summary["exporter"] == ("dynamo" if dynamo else "torchscript")
    stored = model_json_from_onnx(tmp_path / "seg.onnx")
    assert stored["arch"] == "lightunet" and stored["image_size"] == 64
    # Batch and spatial size differ from the export example (2 x 64 x 64).
    x = np.random.default_rng(0).random((5, 1, 96, 128), dtype=np.float32)
    got, want = _run_onnx(tmp_path / "seg.onnx", x), _torch(seg_run, x)
    assert got.shape == (5, 1, 96, 128)
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_classifier_export_has_a_dynamic_batch(tmp_path):
    run = tmp_path / "cls"
    torch.manual_seed(0)
    save_run_model(run, create_classifier("mobilenetv3-large"),
                   {"task": "classification", "arch": "mobilenetv3-large", "kwargs": {},
                    "features_version": FEATURES_VERSION,
                    "in_channels": 7, "image_size": 64, "crop": 32})
    summary = export_onnx(run, tmp_path / "cls.onnx")
    assert summary["task"] == "classification"
    assert summary["max_abs_diff"] <= 1e-5 * max(1.0, summary["max_abs_logit"])
    x = np.random.default_rng(1).random((3, 7, 64, 64), dtype=np.float32)
    want = _torch(run, x).reshape(3)
    np.testing.assert_allclose(_run_onnx(tmp_path / "cls.onnx", x).reshape(3), want,
                               atol=1e-5 * max(1.0, np.abs(want).max()))


def test_export_of_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(LungcadError, match="model.json"):
        export_onnx(tmp_path, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


# ----------------------------------------------------------------------------- DICOM SEG


def _oracle() -> Predictor:
    from lungcad.inference import SliceSegmenter

    runner = lambda x: np.where(x > 0.8, 12.0, -12.0).astype(np.float32)  # noqa: E731
    return Predictor(SliceSegmenter(runner, {**SEG_INFO, "arch": "oracle"}))


def test_seg_without_nodules_keeps_every_frame(tmp_path):
    hu = np.full((5, 24, 24), -900, np.int16)
    opt = SeriesOptions(patient_id="P2", study_uid="1.2.826.0.1.3680043.8.498.20",
                        series_uid="1.2.826.0.1.3680043.8.498.21", uid_prefix="1.2.826.0.1.3680043.8.498.",
                        signed=True)
    written = write_series(tmp_path / "s", hu, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), opt)
    from lungcad.io import read_volume

    result = _oracle().predict(read_volume(tmp_path / "s"))
    assert result.nodules == []
    path = write_dicom_seg(result, tmp_path / "seg.dcm")
    seg = hd.seg.segread(path)
    assert int(seg.NumberOfFrames) == 5
    assert not np.asarray(seg.pixel_array).any()
    referenced = {item.ReferencedSOPInstanceUID
                  for series in seg.ReferencedSeriesSequence for item in series.ReferencedInstanceSequence}
    assert referenced == {w.sop_uid for w in written}


def test_seg_needs_a_dicom_input(tmp_path):
    volume = Volume(np.full((3, 16, 16), -900, np.float32), (1, 1, 1), (0, 0, 0), meta={"kind": "nifti"})
    with pytest.raises(LungcadError, match="DICOM"):
        write_dicom_seg(_oracle().predict(volume), tmp_path / "seg.dcm")


# ----------------------------------------------------------------------------- report.json


def _report(tmp_path) -> tuple[dict, PredictionResult]:
    hu = np.full((6, 32, 32), -900, np.float32)
    hu[2:4, 10:16, 10:16] = 0
    volume = Volume(hu, (0.7, 0.7, 2.0), (1, 2, 3), meta={"kind": "nifti", "series_uid": "scan"})
    predictor = _oracle()
    result = predictor.predict(volume)
    options = {"restrict_to_lung": True, "min_voxels": 10, "min_diameter_mm": 3.0, "connectivity": 26}
    return build_report(result, predictor.describe(), options, tmp_path / "scan.nii.gz", {}), result


def test_report_validates_and_the_schema_is_strict(tmp_path):
    report, result = _report(tmp_path)
    assert len(report["nodules"]) == 1
    schema = load_schema()
    jsonschema.validate(report, schema)
    assert report["input"]["size_xyz"] == [32, 32, 6]
    assert report["patient"]["probability"] is None          # no classifier: no malignancy
    json.dumps(report)                                        # plain JSON types only
    for breaking in (lambda r: r.pop("disclaimer"),
                     lambda r: r["patient"].update(headline="mean"),
                     lambda r: r["nodules"][0].update(probability=1.5),
                     lambda r: r.update(schema_version=2)):
        broken = copy.deepcopy(report)
        breaking(broken)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


def test_html_escapes_the_input_path(tmp_path):
    report, _ = _report(tmp_path)
    report["input"]["path"] = "/data/<script>alert(1)</script>.nii.gz"
    page = render_html(report, None)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "not a medical device" in page
