"""Whole-scan prediction speed on this machine: torch eager vs ONNX Runtime, with and without the
lung-region restriction, bf16 autocast and int8 (dynamic) ONNX quantization.

    python benchmarks/predict_speed.py [--size 512] [--slices 300] [--archs lightunet]
                                       [--seg-run RUN] [--skip-full] [--out FILE]

The scan is a synthetic chest phantom (``make_phantom(size, n_slices)``). Each configuration runs
``Predictor.predict`` on it (windowing, lung region, slice-wise segmentation, components, all
timed) and reports seconds per scan and slices per second (scan slices / seconds).

Models: by default each ``--archs`` segmenter with random weights and its output bias set to -1e4,
so that the masks are empty as on a healthy scan (random logits reach +-150: a small shift is not enough) (the network's compute does not depend on its
weights; a random model's masks would make the component stage measure noise). ``--seg-run`` uses
a trained run instead. Classification is timed apart on 32 nodule slices (a typical count), since
with random weights the number of "nodules" is meaningless.

Accuracy cost of the lung restriction: ``gt_coverage`` is the fraction of the phantom's nodule
voxels that lie inside the segmented region (slices x box); voxels outside are lost for sure,
inside it the network sees the same pixels at the same scale. With ``--seg-run`` the Dice between
the masks predicted with and without the restriction is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lungcad.inference import SliceClassifier, SliceSegmenter, _OnnxRunner
from lungcad.io import Volume
from lungcad.models import create_classifier, create_segmenter, save_run_model
from lungcad.predict import PredictOptions, Predictor
from lungcad.synth.phantom import make_phantom

RESULTS = Path(__file__).resolve().parent / "results" / "predict_speed.json"


def quiet_bias(model: torch.nn.Module, value: float = -1e4) -> torch.nn.Module:
    """Set the bias of the last convolution (the logits) so random weights give empty masks."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    if last.bias is None:
        last.bias = torch.nn.Parameter(torch.zeros(last.out_channels))
    with torch.no_grad():
        last.bias.fill_(value)
    return model


def make_seg_run(root: Path, arch: str, image_size: int) -> Path:
    run = root / f"seg-{arch}"
    torch.manual_seed(0)
    save_run_model(run, quiet_bias(create_segmenter(arch)),
                   {"task": "segmentation", "arch": arch, "kwargs": {}, "in_channels": 1,
                    "image_size": image_size, "window_hu": [-1200, 0], "threshold": 0.5})
    return run


def quantized_segmenter(run: Path, work: Path, batch: int) -> SliceSegmenter:
    """The run's ONNX graph with int8 dynamic quantization (weights int8, activations on the fly)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from lungcad.export_onnx import export_onnx

    fp32 = work / f"{run.name}.onnx"
    int8 = work / f"{run.name}.int8.onnx"
    export_onnx(run, fp32, check=False)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    base = SliceSegmenter.from_run(run, batch_size=batch)
    return SliceSegmenter(_OnnxRunner(str(int8)), base.model_json, batch, "onnx-int8", "int8")


def time_predict(predictor: Predictor, volume: Volume, repeat: int = 1):
    predictor.predict(Volume(volume.array[:4], volume.spacing, volume.origin))  # warm-up
    best, result = None, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = predictor.predict(volume)
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
    return best, result


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def classifier_speed(arch: str, size: int, n: int = 32) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "cls"
        torch.manual_seed(0)
        save_run_model(run, create_classifier(arch), {"task": "classification", "arch": arch, "kwargs": {},
                                                      "in_channels": 7, "image_size": size, "crop": 64})
        feats = np.random.default_rng(0).random((n, 7, size, size), dtype=np.float32)
        out = {}
        for backend in ("torch", "onnx"):
            clf = SliceClassifier.from_run(run, backend=backend)
            clf.predict_proba(feats[:2])
            start = time.perf_counter()
            clf.predict_proba(feats)
            out[backend] = round(time.perf_counter() - start, 3)
    return {"arch": arch, "slices": n, "seconds": out}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=256, help="model input side")
    parser.add_argument("--archs", nargs="+", default=["lightunet"])
    parser.add_argument("--seg-run", type=Path, default=None, help="a trained segmentation run")
    parser.add_argument("--cls-arch", default="mobilenetv3-large")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--skip-full", action="store_true",
                        help="skip the unrestricted torch/onnx runs (slow for heavy segmenters)")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    phantom = make_phantom(np.random.default_rng(42), size=args.size, n_slices=args.slices, nodules=3)
    volume = Volume(phantom.hu.astype(np.float32), phantom.spacing, phantom.origin,
                    meta={"source": "phantom"})
    print(f"phantom {args.size}x{args.size}x{args.slices} built in {time.perf_counter() - t0:.1f} s")

    report = {
        "scan": {"size": args.size, "slices": args.slices, "spacing": list(phantom.spacing),
                 "nodules": len(phantom.nodules)},
        "machine": {"cpus": threads, "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__},
        "runs": [],
    }
    restricted = PredictOptions(restrict_to_lung=True, batch_size=args.batch)
    full = PredictOptions(restrict_to_lung=False, batch_size=args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs = [args.seg_run] if args.seg_run else [make_seg_run(work, a, args.image_size) for a in args.archs]
        for run in runs:
            configs = [("torch", "fp32", restricted), ("torch", "bf16", restricted),
                       ("onnx", "fp32", restricted)]
            if not args.skip_full:
                configs = [("torch", "fp32", full), ("onnx", "fp32", full)] + configs
            masks = {}
            for backend, precision, options in configs:
                seg = SliceSegmenter.from_run(run, backend=backend, precision=precision,
                                              batch_size=args.batch, threads=threads)
                seconds, result = time_predict(Predictor(seg, options=options), volume)
                name = f"{backend}-{precision}-{'lung' if options.restrict_to_lung else 'full'}"
                masks[name] = result.labels > 0
                report["runs"].append(_entry(run, name, seconds, result, args.slices, phantom))
                print(_line(report["runs"][-1]))
            if not args.no_int8:
                try:
                    seg = quantized_segmenter(run, work, args.batch)
                    seconds, result = time_predict(Predictor(seg, options=restricted), volume)
                    masks["onnx-int8-lung"] = result.labels > 0
                    report["runs"].append(_entry(run, "onnx-int8-lung", seconds, result, args.slices, phantom))
                    print(_line(report["runs"][-1]))
                except Exception as exc:  # noqa: BLE001 - an optional configuration
                    print(f"int8 quantization skipped: {type(exc).__name__}: {exc}")
            if args.seg_run and "torch-fp32-full" in masks:
                report.setdefault("restriction_dice", {})[str(run)] = dice(
                    masks["torch-fp32-full"], masks["torch-fp32-lung"])
        _speedups(report["runs"])
    report["classifier"] = classifier_speed(args.cls_arch, 224)
    print(f"classifier {args.cls_arch} on 32 nodule slices: {report['classifier']['seconds']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {args.out}")
    return report


def _entry(run: Path, name: str, seconds: float, result, n_slices: int, phantom) -> dict:
    region = result.lung_region
    covered = np.zeros(phantom.label.shape, bool)
    y0, y1, x0, x1 = region["box_yx"]
    covered[np.ix_(region["slices"], range(y0, y1), range(x0, x1))] = True
    gt = phantom.label > 0
    return {
        "arch": _arch(run), "config": name, "seconds_per_scan": round(seconds, 2),
        "slices_per_s": round(n_slices / seconds, 2), "stages_s": result.timings,
        "slices_segmented": region["slices_segmented"], "box_yx": region["box_yx"],
        "gt_coverage": round(float(covered[gt].mean()) if gt.any() else 1.0, 4),
    }


def _arch(run: Path) -> str:
    return json.loads((run / "model.json").read_text()).get("arch")


def _speedups(entries: list[dict]) -> None:
    for entry in entries:
        ref = next((e for e in entries if e["arch"] == entry["arch"] and e["config"] == "torch-fp32-full"),
                   None) or next(e for e in entries if e["arch"] == entry["arch"]
                                 and e["config"] == "torch-fp32-lung")
        entry["speedup_vs_" + ref["config"]] = round(ref["seconds_per_scan"] / entry["seconds_per_scan"], 2)


def _line(e: dict) -> str:
    return (f"{e['arch']:>14} {e['config']:<18} {e['seconds_per_scan']:8.1f} s/scan "
            f"{e['slices_per_s']:7.1f} slices/s  segmented {e['slices_segmented']} slices "
            f"box {e['box_yx']}  gt coverage {e['gt_coverage']:.3f}")


if __name__ == "__main__":
    main()
