"""Inferers built once from a run folder: slice segmentation and slice classification.

One object per run (lungmask's inferer, nnU-Net's predictor): the model is loaded (or the ONNX
Runtime session created) once in ``from_run`` and then serves any number of batches. Both
backends share the same pre- and post-processing, so ``--backend onnx`` changes only who runs
the network:

- ``torch``: eager PyTorch under ``torch.inference_mode``; ``precision="bf16"`` runs it under CPU
  autocast (bfloat16 matmuls/convolutions, outputs back to float32).
- ``onnx``: ONNX Runtime on the CPU (intra-op threads = CPU cores). The graph is ``RUN/model.onnx``
  when that file exists and is not older than the weights (written by
  ``lungcad export-onnx RUN --out RUN/model.onnx``), otherwise it is exported in memory from the
  run's weights when the inferer is built.

Segmentation pre-processing matches training: the uint8 lung-window slice is resized to the
model's ``image_size`` (bilinear), scaled to [0, 1], run, passed through a sigmoid (averaged over
the mirror images when the run's ``tta`` is ``"flip"``) and resized back (bilinear) to the input size.
A series' mask is the probability at or above the run's ``threshold``, less the 3D components whose
highest probability stays under the run's ``min_component_peak`` (``drop_faint_components``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .errors import LungcadError
from .features import FEATURES_VERSION

BACKENDS = ("torch", "onnx")
PRECISIONS = ("fp32", "bf16")
ONNX_FILE = "model.onnx"
ONNX_META_KEY = "lungcad_model_json"
# Fully convolutional segmenters need sides divisible by their total stride.
_SIDE_MULTIPLE = 32


def _check_options(backend: str, precision: str) -> None:
    if backend not in BACKENDS:
        raise LungcadError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise LungcadError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if backend == "onnx" and precision != "fp32":
        raise LungcadError("the onnx backend runs fp32 only; use --backend torch for bf16")


def _cpu_threads() -> int:
    return max(1, torch.get_num_threads())


class _TorchRunner:
    """Runs an ``nn.Module`` on float32 numpy batches and returns float32 numpy logits."""

    def __init__(self, model: torch.nn.Module, device: str, precision: str):
        # channels_last: oneDNN's fast layout for (depthwise) convolutions on CPU, ~1.7x here.
        self.model = model.to(device).eval().to(memory_format=torch.channels_last)
        self.device = torch.device(device)
        self.precision = precision

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.precision == "bf16":
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    out = self.model(x)
            else:
                out = self.model(x)
        return out.float().contiguous().cpu().numpy()


class _OnnxRunner:
    """Runs an ONNX Runtime session (CPU) created once."""

    def __init__(self, model_bytes_or_path: bytes | str, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            model_bytes_or_path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        return self.session.run(None, feed)[0]


def _load_run(run_dir: str | Path, task: str, device: str, backend: str, precision: str,
              threads: int | None) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """Build the runner of a run folder for ``backend``; checks the run's task."""
    from .models.run_io import read_model_json

    _check_options(backend, precision)
    run_dir = Path(run_dir)
    info = read_model_json(run_dir)
    if info.get("task") != task:
        raise LungcadError(f"{run_dir}: a {info.get('task')} run, expected a {task} run")
    if backend == "onnx":
        onnx_path = run_dir / ONNX_FILE
        weights = run_dir / "checkpoints" / "best.safetensors"
        # A model.onnx older than the weights is stale (the run was trained further): re-export.
        if onnx_path.is_file() and (not weights.is_file()
                                    or onnx_path.stat().st_mtime >= weights.stat().st_mtime):
            return _OnnxRunner(str(onnx_path), threads), info
        from .export_onnx import export_onnx_bytes

        return _OnnxRunner(export_onnx_bytes(run_dir), threads), info
    from .models import load_run_model

    if threads:
        torch.set_num_threads(threads)
    model, info = load_run_model(run_dir, map_location="cpu")
    return _TorchRunner(model, device, precision), info


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (N, C, H, W) float tensor; a no-op when already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _snap_box(box: tuple[int, int, int, int], size: int) -> tuple[int, int, int, int]:
    """Grow a (y0, y1, x0, x1) box on a ``size`` x ``size`` grid to sides divisible by 32."""
    out = []
    for lo, hi in (box[0:2], box[2:4]):
        side = min(size, max(_SIDE_MULTIPLE, -(-(hi - lo) // _SIDE_MULTIPLE) * _SIDE_MULTIPLE))
        centre = (lo + hi) // 2
        lo = min(max(0, centre - side // 2), size - side)
        out += [lo, lo + side]
    return tuple(out)


# Test-time augmentation: the mirror images averaged (torch.flip dims of a (B, C, H, W) batch).
TTA_FLIPS = {"none": ((),), "flip": ((), (3,), (2,), (2, 3))}


def drop_faint_components(mask: np.ndarray, proba: np.ndarray, min_peak: float | None) -> np.ndarray:
    """``mask`` without its 3D components (26-connected) whose highest ``proba`` is below ``min_peak``.

    A vessel seen end-on or a patch of noise tends to pass the threshold by a little on a few
    slices, a nodule to be nearly certain somewhere (nnU-Net likewise cleans up connected components
    after thresholding). ``None`` or 0 keeps every component. A stack of 2D slices of one series is
    a volume here, so a nodule that spans slices is one component.
    """
    mask = np.asarray(mask, bool)
    if not min_peak or not mask.any():
        return mask
    labels, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))
    peaks = ndimage.maximum(proba, labels, np.arange(1, count + 1))
    keep = np.concatenate([[False], np.asarray(peaks) >= min_peak])
    return keep[labels]


def check_min_peak(value) -> float | None:
    """``value`` as a peak probability in [0, 1] (``None`` stays ``None``), else a clear error."""
    if value is None:
        return None
    try:
        peak = float(value)
    except (TypeError, ValueError):
        peak = float("nan")
    if not 0.0 <= peak <= 1.0:
        raise LungcadError(f"min_component_peak must be a probability in [0, 1], got {value!r}")
    return peak


def check_tta(tta: str) -> str:
    """``tta`` when it names a test-time augmentation, else a clear error."""
    if tta not in TTA_FLIPS:
        raise LungcadError(f"unknown test-time augmentation {tta!r} (choose from {', '.join(TTA_FLIPS)})")
    return tta


@dataclass
class _RunInferer:
    """A model from a run folder, loaded once, behind a numpy-in numpy-out runner (torch or ONNX)."""

    runner: Callable[[np.ndarray], np.ndarray]
    model_json: dict
    batch_size: int = 8
    backend: str = "torch"
    precision: str = "fp32"

    TASK = ""  # model.json task this inferer accepts

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "cpu", backend: str = "torch",
                 precision: str = "fp32", batch_size: int | None = None, threads: int | None = None):
        runner, info = _load_run(run_dir, cls.TASK, device, backend, precision, threads)
        return cls(runner, info, batch_size or cls.batch_size, backend, precision)


@dataclass
class SliceSegmenter(_RunInferer):
    """2D nodule segmenter over uint8 lung-window slices, built once from a segmentation run."""

    TASK = "segmentation"

    @property
    def image_size(self) -> int:
        return int(self.model_json.get("image_size", 256))

    @property
    def threshold(self) -> float:
        return float(self.model_json.get("threshold", 0.5))

    @property
    def in_channels(self) -> int:
        return int(self.model_json.get("in_channels", 1))

    @property
    def context_slices(self) -> int:
        """Neighbours on each side in the 2.5D input (model.json ``context_slices``; 0 = one slice)."""
        return int(self.model_json.get("context_slices", 0))

    @property
    def tta(self) -> str:
        """Test-time augmentation (model.json ``tta``): ``"flip"`` averages the probabilities of the
        slice and its three mirror images (left-right, up-down, both), as nnU-Net's mirroring does;
        ``"none"`` (runs without the key) one pass."""
        return check_tta(self.model_json.get("tta", "none"))

    @property
    def min_component_peak(self) -> float | None:
        """3D components of a series' mask whose highest probability is below this are dropped
        (model.json ``min_component_peak``; ``None``, as in runs without the key, keeps them all)."""
        return check_min_peak(self.model_json.get("min_component_peak"))

    def with_options(self, tta: str | None = None, min_component_peak: float | None = None) -> "SliceSegmenter":
        """This segmenter with its test-time augmentation and/or component filter replaced
        (``None``: unchanged; ``min_component_peak=0`` turns the filter off)."""
        changes = {}
        if tta is not None:
            changes["tta"] = check_tta(tta)
        if min_component_peak is not None:
            changes["min_component_peak"] = check_min_peak(min_component_peak)
        return replace(self, model_json={**self.model_json, **changes}) if changes else self

    def predict_proba(self, images_u8: np.ndarray,
                      roi: tuple[int, int, int, int] | None = None, indices=None) -> np.ndarray:
        """Foreground probability of each pixel: (N, H, W) uint8 -> (M, H, W) float32 in [0, 1].

        ``images_u8`` is a stack of slices in series order: a 2.5D model (``context_slices`` k > 0)
        reads each slice's k neighbours on either side from it (clamped at the ends, as in
        training), so pass the whole series (or enough of it). ``indices`` selects the slices to
        predict (default: all, ``M = N``). ``roi`` = (y0, y1, x0, x1) in input pixels restricts the
        network to that region (grown to multiples of 32 on the model grid, at the model's scale);
        outside it the probability is 0.
        """
        from .data import neighbour_indices

        images_u8 = np.asarray(images_u8)
        if images_u8.ndim != 3:
            raise ValueError(f"expected (N, H, W) slices, got shape {images_u8.shape}")
        n, height, width = images_u8.shape
        stacks = neighbour_indices(n, self.context_slices, indices)  # (M, 2k + 1)
        out = np.zeros((len(stacks), height, width), np.float32)
        size = self.image_size
        box = None
        if roi is not None:
            sy, sx = size / height, size / width
            box = _snap_box((int(np.floor(roi[0] * sy)), int(np.ceil(roi[1] * sy)),
                             int(np.floor(roi[2] * sx)), int(np.ceil(roi[3] * sx))), size)
        for start in range(0, len(stacks), self.batch_size):
            chunk = torch.from_numpy(images_u8[stacks[start:start + self.batch_size]].astype(np.float32))
            x = _resize(chunk / 255.0, (size, size))  # (B, 2k + 1, size, size)
            if box is not None:
                x = x[:, :, box[0]:box[1], box[2]:box[3]]
            if x.shape[1] != self.in_channels:
                x = x.expand(-1, self.in_channels, -1, -1)  # a 1-slice model built with 3 input channels
            proba = self._proba(x)
            if box is not None:
                canvas = torch.zeros((x.shape[0], 1, size, size))
                canvas[:, :, box[0]:box[1], box[2]:box[3]] = proba
                proba = canvas
            out[start:start + len(chunk)] = _resize(proba, (height, width))[:, 0].numpy()
        return np.clip(out, 0.0, 1.0, out=out)

    def _proba(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) model input -> (B, 1, H, W) probabilities, averaged over the TTA mirrors."""
        flips = TTA_FLIPS[self.tta]
        total = None
        for dims in flips:
            xf = torch.flip(x, dims) if dims else x
            logits = torch.from_numpy(self.runner(xf.contiguous().numpy()))
            proba = torch.sigmoid(logits.reshape(x.shape[0], 1, *x.shape[-2:]))
            proba = torch.flip(proba, dims) if dims else proba
            total = proba if total is None else total + proba
        return total / len(flips)

    def predict_masks(self, images_u8: np.ndarray,
                      roi: tuple[int, int, int, int] | None = None, indices=None) -> np.ndarray:
        """Binary nodule masks of single slices: probability >= the run's ``threshold`` (model.json).
        No component filter: that needs the whole series (``masks_from_proba``)."""
        return self.predict_proba(images_u8, roi=roi, indices=indices) >= self.threshold

    def masks_from_proba(self, proba: np.ndarray) -> np.ndarray:
        """The binary mask of a series' probability volume (z, y, x): the threshold, then
        ``drop_faint_components`` with the run's ``min_component_peak``."""
        return drop_faint_components(proba >= self.threshold, proba, self.min_component_peak)

    def predict_series_masks(self, images: list[np.ndarray], chunk: int = 32) -> list[np.ndarray]:
        """Binary masks of one series' slices, given as a list in slice order (sizes may differ).

        Slices of one size form one stack, so a 2.5D model reads its neighbours, and the component
        filter sees whole nodules, across the borders of the ``chunk``-slice calls that bound
        memory on long series (between calls only the mask and, inside it, the probability in
        float16 are kept: 3 bytes a pixel).
        """
        out: list[np.ndarray | None] = [None] * len(images)
        by_shape: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(np.shape(image), []).append(i)
        for positions in by_shape.values():
            stack = np.stack([images[i] for i in positions])
            masks = np.zeros(stack.shape, bool)
            peaks = np.zeros(stack.shape, np.float16)
            for start in range(0, len(positions), chunk):
                rows = slice(start, start + chunk)
                proba = self.predict_proba(stack, indices=np.arange(start, min(start + chunk, len(positions))))
                masks[rows] = proba >= self.threshold
                peaks[rows] = np.where(masks[rows], proba, 0)
            masks = drop_faint_components(masks, peaks, self.min_component_peak)
            for i, mask in zip(positions, masks):
                out[i] = mask
        return out


@dataclass
class SliceClassifier(_RunInferer):
    """Slice-level malignancy classifier over seven-channel features, built once from a run."""

    batch_size: int = 16
    TASK = "classification"

    @classmethod
    def from_run(cls, run_dir: str | Path, *args, **kwargs):
        inferer = super().from_run(run_dir, *args, **kwargs)
        # Runs from before model.json recorded it used version 1.
        version = int(inferer.model_json.get("features_version", 1))
        if version != FEATURES_VERSION:
            raise LungcadError(f"{run_dir}: classifier trained on seven-channel features version {version}, "
                               f"but this lungcad computes version {FEATURES_VERSION} (see lungcad.features); "
                               "retrain it with lungcad train-cls")
        return inferer

    @property
    def input_size(self) -> int:
        """Side of the seven-channel input (model.json ``image_size``)."""
        return int(self.model_json.get("image_size", 224))

    @property
    def crop(self) -> int:
        """Side of the context crop of the seven-channel features (model.json ``crop``)."""
        return int(self.model_json.get("crop", 64))

    @property
    def min_area_frac(self) -> float:
        """Slices scored for a patient or nodule: those whose mask is at least this fraction of its
        largest (model.json ``min_area_frac``; 0, every slice with a mask, for older runs)."""
        return float(self.model_json.get("min_area_frac") or 0.0)

    @property
    def size_input(self) -> bool:
        """Whether the model reads the ``nodule_size`` plane (model.json ``size_input``; older runs: no)."""
        return bool(self.model_json.get("size_input", False))

    def features(self, images, masks, spacings=None) -> np.ndarray:
        """This model's input for slices and their masks: ``(N, 7 or 8, S, S)`` float32.

        ``spacings``: one ``(row, col)`` mm pair per slice; required when the model reads the size
        plane (``size_input``), ignored otherwise.
        """
        from .features import batch_classifier_input

        if self.size_input and spacings is None:
            raise LungcadError("this classifier reads the nodule's measured size: pass each slice's pixel spacing")
        return batch_classifier_input(images, masks, out_size=self.input_size, crop=self.crop,
                                      spacings=spacings if self.size_input else None)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Malignancy probability per slice: (N, C, S, S) float32 (``features``) -> (N,) float32."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 4:
            raise ValueError(f"expected (N, C, S, S) features, got shape {features.shape}")
        out = np.zeros(len(features), np.float32)
        for start in range(0, len(features), self.batch_size):
            logits = self.runner(features[start:start + self.batch_size])
            out[start:start + len(logits)] = _logits_to_proba(np.asarray(logits))
        return out


def _logits_to_proba(logits: np.ndarray) -> np.ndarray:
    """(B,) or (B, 1) -> sigmoid; (B, 2) -> softmax of the malignant class."""
    logits = logits.astype(np.float32)
    if logits.ndim == 2 and logits.shape[1] == 2:
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp[:, 1] / exp.sum(axis=1)
    return 1.0 / (1.0 + np.exp(-logits.reshape(len(logits))))


def describe_backend(inferer: SliceSegmenter | SliceClassifier) -> str:
    """A short label such as ``torch-fp32`` or ``onnx-fp32`` for reports and benchmarks."""
    return f"{inferer.backend}-{inferer.precision}"


def model_json_from_onnx(path: str | Path) -> dict:
    """Read back the model.json stored in an exported ONNX file's metadata."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == ONNX_META_KEY:
            return json.loads(prop.value)
    raise LungcadError(f"{path}: no lungcad model.json in the ONNX metadata")
