"""Export a run's model to ONNX and check it against PyTorch with ONNX Runtime.

The graph has one input ``input`` (float32, NCHW) and one output ``logits``. The batch axis is
dynamic for every model; segmenters also get dynamic height and width (multiples of 32), which
prediction uses to run only on the lung region. The run's ``model.json`` travels inside the file
as the ONNX metadata property ``lungcad_model_json``, so an exported file is self-describing.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import LungcadError
from .inference import ONNX_META_KEY
from .io import write_bytes_atomic

DEFAULT_OPSET = 17


def _example_input(info: dict, batch: int = 2, side: int | None = None) -> torch.Tensor:
    channels = int(info.get("in_channels", 1 if info["task"] == "segmentation" else 7))
    size = side or int(info.get("image_size", 256 if info["task"] == "segmentation" else 224))
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(0))


def _export_to_proto(model: torch.nn.Module, info: dict, opset: int, dynamo: bool):
    """Trace ``model`` into an ``onnx.ModelProto`` with the model.json attached."""
    import onnx

    example = _example_input(info)
    spatial = info["task"] == "segmentation"
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The tracer warns about Python-side shape arithmetic that is constant for our models.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)  # "legacy exporter" notice
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=1024)
            shapes = {0: batch}
            if spatial:
                shapes.update({2: 32 * torch.export.Dim("h32", min=1, max=64),
                               3: 32 * torch.export.Dim("w32", min=1, max=64)})
            program = torch.onnx.export(model, (example,), None, input_names=["input"],
                                        output_names=["logits"], opset_version=opset,
                                        dynamic_shapes=({**shapes},), dynamo=True,
                                        verbose=False)
            proto = program.model_proto
        else:
            axes = {0: "batch", 2: "height", 3: "width"} if spatial else {0: "batch"}
            torch.onnx.export(model, (example,), buffer, input_names=["input"],
                              output_names=["logits"], opset_version=opset,
                              dynamic_axes={"input": axes, "logits": {0: "batch"}}, dynamo=False)
            proto = onnx.load_from_string(buffer.getvalue())
    meta = proto.metadata_props.add()
    meta.key, meta.value = ONNX_META_KEY, json.dumps(info, sort_keys=True)
    return proto


def export_onnx_bytes(run_dir: str | Path, opset: int = DEFAULT_OPSET, dynamo: bool = False) -> bytes:
    """The run's model as serialized ONNX bytes (used by ``--backend onnx`` without a file)."""
    from .models import load_run_model

    model, info = load_run_model(run_dir)
    return _export_to_proto(model, info, opset, dynamo).SerializeToString()


def _compare(model: torch.nn.Module, onnx_bytes: bytes, x: torch.Tensor) -> tuple[float, float]:
    """(max |onnx - torch|, max |torch|) of the logits on ``x``."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        want = model(x).float().numpy()
    return float(np.max(np.abs(got.reshape(want.shape) - want))), float(np.max(np.abs(want)))


def export_onnx(run_dir: str | Path, out_path: str | Path, opset: int = DEFAULT_OPSET,
                dynamo: bool = False, check: bool = True) -> dict:
    """Export ``RUN``'s best model to ``out_path`` (written atomically) and verify it.

    Returns a summary: path, task, arch, opset (as requested; the dynamo exporter may write a
    newer one), exporter, input shape, ``max_abs_diff`` between ONNX Runtime and PyTorch logits on
    a random batch (and, for segmenters, at a second spatial size to exercise the dynamic axes)
    and ``max_abs_logit``, the scale that difference is relative to.
    """
    from .models import load_run_model

    model, info = load_run_model(run_dir)
    try:
        proto = _export_to_proto(model, info, opset, dynamo)
    except Exception as exc:  # exporter failures are long; keep the first line for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LungcadError(f"{run_dir}: ONNX export of {info.get('arch')} failed ({first})") from exc
    data = proto.SerializeToString()
    summary = {
        "path": str(out_path), "task": info["task"], "arch": info.get("arch"), "opset": opset,
        "exporter": "dynamo" if dynamo else "torchscript", "bytes": len(data),
        "input_shape": list(_example_input(info).shape),
    }
    if check:
        checks = [_compare(model, data, _example_input(info, batch=3))]
        if info["task"] == "segmentation":
            side = max(32, int(info.get("image_size", 256)) // 2 // 32 * 32)
            checks.append(_compare(model, data, _example_input(info, batch=1, side=side)))
        summary["max_abs_diff"] = max(c[0] for c in checks)
        summary["max_abs_logit"] = max(c[1] for c in checks)
    write_bytes_atomic(out_path, data)
    return summary
