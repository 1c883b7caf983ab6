"""The ``lungcad`` command line: parse arguments, call one library function, report errors in one line.

Heavy libraries (torch, timm, ...) are imported inside each command so that ``lungcad --help`` and
argument errors stay fast. User errors (``LungcadError``) become ``lungcad: error: <message>`` on
stderr with exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .errors import LungcadError

SOURCES = ("lidc-idri", "luna16", "msd-lung", "lndb", "lungct-diagnosis", "lung-pet-ct-dx")
SEG_ARCHS = ("unar", "res34-unetv2", "segformer", "unetplusplus", "deeplabv3plus", "lightunet")
CLS_ARCHS = (
    "efficientnet-b3", "maxvit-tiny", "maxvit-large", "vit-small", "convnext-tiny", "efficientnetv2-s",
    "coatnet-0", "mobilenetv3-large", "nodulefusionnet-b0", "nodulefusionnet-v2", "nodule-hyperfusionnet",
)


def _source(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    if name not in SOURCES:
        raise argparse.ArgumentTypeError(f"unknown source {name!r}; valid: {', '.join(SOURCES)}")
    return name, Path(folder)


def _inference_options(parser: argparse.ArgumentParser) -> None:
    """``--tta`` and ``--min-peak`` of evaluate and predict. The choices are inference.TTA_FLIPS's
    keys, written out here so that building the parser does not import torch."""
    parser.add_argument("--tta", choices=("flip", "none"), default=None,
                        help="segmentation test-time augmentation (default: the segmentation run's model.json)")
    parser.add_argument("--min-peak", type=float, default=None, metavar="P",
                        help="drop predicted 3D components whose highest probability is below P; 0 keeps all "
                             "(default: min_component_peak of the segmentation run's model.json)")


def _overrides(pairs: list[str] | None) -> dict:
    """``--set key=value`` pairs; values parsed as JSON when possible (numbers, booleans, lists)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise LungcadError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- commands


def cmd_synth(a):
    from .synth import generate

    summary = generate(a.out, patients=a.patients, seed=a.seed, size=a.size, n_slices=a.slices,
                       sources=a.sources or None)
    print(f"synthetic raw trees written to {a.out}")
    for source in summary.get("sources", {}) if isinstance(summary, dict) else []:
        print(f"  --source {source}={Path(a.out) / source}")


def cmd_ingest(a):
    from .ingest import IngestOptions, run_ingest

    sources = dict(a.source)
    opts = IngestOptions(workers=a.workers, label_rule=a.label_rule, consensus=a.consensus, spacing=a.spacing,
                         lidc_xml=a.lidc_xml, slices=a.slices, petct_annotations=a.petct_annotations,
                         lndb_malignancy_source=a.lndb_malignancy, lndb_agg=a.lndb_agg)
    report = run_ingest(sources, Path(a.out), opts, progress=not a.quiet)
    totals = report.get("totals", {})
    print(f"benchmark written to {a.out}: {json.dumps(totals)}")
    skipped = sum(len(s.get("skipped", [])) for s in report.get("sources", {}).values())
    if skipped:
        print(f"{skipped} item(s) skipped; reasons in {Path(a.out) / 'ingest_report.json'}")


def cmd_split(a):
    from .splits import make_splits

    splits = make_splits(Path(a.bench), seed=a.seed, unit=a.unit)
    for task in ("classification", "segmentation"):
        if task in splits:
            sizes = {k: len(v) for k, v in splits[task].items()}
            print(f"{task}: {sizes}")


def cmd_train_seg(a):
    from .train.seg import train_segmenter

    summary = train_segmenter(Path(a.bench), a.arch, Path(a.out), preset=a.preset, epochs=a.epochs, resume=a.resume,
                              pretrained=a.pretrained, weights=a.weights, devices=a.devices,
                              overrides=_overrides(a.set), oof_folds=a.oof_folds)
    print(json.dumps(summary, indent=2, default=str))


def cmd_train_cls(a):
    from .evaluate import fit_configured_head
    from .train.cls import train_classifier

    summary = train_classifier(Path(a.bench), a.arch, Path(a.out), preset=a.preset, seg_run=a.seg_run,
                               phase=a.phase, epochs=a.epochs, resume=a.resume, pretrained=a.pretrained,
                               weights=a.weights, devices=a.devices, overrides=_overrides(a.set))
    head = fit_configured_head(Path(a.out), bench=Path(a.bench), seg_run=a.seg_run)
    if head is not None:
        summary["patient_head"] = head
    print(json.dumps(summary, indent=2, default=str))


def cmd_evaluate(a):
    from .evaluate import compare_runs, evaluate_run

    if a.external and a.compare:
        raise LungcadError("--external and --compare do not combine; evaluate each run with --external")
    if a.compare:
        result = compare_runs(Path(a.run), Path(a.compare), bench=a.bench, split=a.split)
        print(json.dumps(result, indent=2, default=str))
        return
    evaluate_run(Path(a.run), bench=a.bench, split=a.split, seg_run=a.seg_run, out=a.out, device=a.device,
                 tta=a.tta, min_peak=a.min_peak, external=a.external)


def cmd_leaderboard(a):
    from .leaderboard import leaderboard

    print(leaderboard([Path(r) for r in a.runs], out=a.out))


def cmd_predict(a):
    from .predict import PredictOptions, predict_inputs

    formats = tuple(f.strip() for f in a.format.split(",") if f.strip())
    results = predict_inputs([Path(p) for p in a.inputs], seg_run=Path(a.seg_run),
                             cls_run=Path(a.cls_run) if a.cls_run else None, out_dir=Path(a.out), formats=formats,
                             backend=a.backend, device=a.device, progress=not a.quiet,
                             options=PredictOptions(tta=a.tta, min_component_peak=a.min_peak))
    failed = [r for r in results if r.get("status") != "ok"]
    for r in results:
        if r.get("status") == "ok":
            print(f"{r.get('input')}: {r.get('summary', 'ok')} -> {r.get('out_dir')}")
    for r in failed:
        print(f"lungcad: error: {r.get('error')}", file=sys.stderr)
    if failed:
        raise SystemExit(1 if len(failed) < len(results) else 2)


def cmd_export_onnx(a):
    from .export import export_onnx

    info = export_onnx(Path(a.run), Path(a.out), opset=a.opset)
    print(json.dumps(info, indent=2, default=str))


def cmd_last_epoch(a):
    from .models.run_io import snapshot_last_epoch

    info = snapshot_last_epoch(Path(a.run), Path(a.out))
    print(f"{a.out}: {info['arch']} weights of epoch {info['weights_from']['epoch']} "
          f"({info['weights_from']['checkpoint']}); evaluate, predict or export it like any run")


def cmd_demo(a):
    from .demo import run_demo

    run_demo(Path(a.out), patients=a.patients, seg_arch=a.seg_arch, cls_arch=a.cls_arch, fresh=a.fresh, quick=a.quick)


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lungcad", description=(
        "Lung-nodule CT analysis: a harmonized benchmark from five public CT collections, segmentation and "
        "malignancy-classification model zoos, and end-to-end prediction on new scans. Research software, "
        "not a medical device."))
    p.add_argument("--version", action="version", version=f"lungcad {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="write synthetic chest-CT phantoms in every dataset's native layout")
    s.add_argument("--out", required=True, type=Path, help="output folder (one subfolder per source)")
    s.add_argument("--patients", type=int, default=4, help="patients per source (default 4)")
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--size", type=int, default=256, help="in-plane size in pixels (real scans: 512)")
    s.add_argument("--slices", type=int, default=48, help="slices per scan")
    s.add_argument("--sources", nargs="*", choices=SOURCES, help="only these sources (default: all)")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("ingest", help="harmonize native datasets into one benchmark folder")
    s.add_argument("--source", action="append", type=_source, required=True, metavar="NAME=DIR",
                   help=f"a dataset and its folder; NAME is one of {', '.join(SOURCES)} (repeatable)")
    s.add_argument("--out", required=True, type=Path, help="benchmark folder (created; re-running resumes)")
    s.add_argument("--workers", type=int, default=1, help="parallel processes (one series each)")
    s.add_argument("--label-rule", choices=("paper", "median"), default="paper",
                   help="LIDC malignancy rule: paper (>= 3 readers rate >= 3) or median (> 3 malignant, < 3 benign, = 3 excluded)")
    s.add_argument("--consensus", type=float, default=0.5, help="LIDC: fraction of readers that must include a pixel")
    s.add_argument("--spacing", type=float, default=None, help="resample in-plane to this spacing in mm (default: native)")
    s.add_argument("--lidc-xml", type=Path, default=None, help="LIDC XML folder for LUNA16 malignancy (default: LUNA16/tcia-lidc-xml)")
    s.add_argument("--petct-annotations", type=Path, default=None,
                   help="Lung-PET-CT-Dx Annotation/ folder (default: beside manifest-*/)")
    s.add_argument("--lndb-malignancy", choices=("chars", "allNods"), default="chars",
                   help="LNDb ratings from chars_trainNodules.csv (per reader) or allNods.csv (reader mean)")
    s.add_argument("--lndb-agg", choices=("mean", "any", "majority"), default="mean",
                   help="LNDb: how readers' ratings > 3 combine per finding")
    s.add_argument("--slices", choices=("all", "lesion"), default="all",
                   help="all slices (default) or only slices with a mask plus a small margin")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("split", help="patient-level stratified train/val/test splits (splits.json)")
    s.add_argument("bench", type=Path)
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--unit", choices=("patient", "slice"), default="patient",
                   help="slice reproduces the paper's (leaky) slice-level segmentation split")
    s.set_defaults(func=cmd_split)

    for name, archs, helptext in (("train-seg", SEG_ARCHS, "train a nodule segmenter"),
                                  ("train-cls", CLS_ARCHS, "train a malignancy classifier (two phases)")):
        s = sub.add_parser(name, help=helptext, description=f"{helptext}. Architectures: {', '.join(archs)}.")
        s.add_argument("bench", type=Path)
        s.add_argument("--arch", required=True, choices=archs, metavar="ARCH", help=", ".join(archs))
        s.add_argument("--out", required=True, type=Path, help="run folder")
        s.add_argument("--preset", choices=("cpu", "paper"), default="cpu",
                       help="cpu: small and fast on a laptop; paper: the paper's recipe (needs a GPU)")
        s.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
        s.add_argument("--resume", action="store_true", help="continue an interrupted run from last.ckpt")
        s.add_argument("--pretrained", action="store_true", help="ImageNet encoder weights via the library's download")
        s.add_argument("--weights", type=Path, default=None, help="initial weights from a local file")
        s.add_argument("--devices", default=None, help="Lightning devices (e.g. 1, 4, auto)")
        s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config value")
        if name == "train-seg":
            s.add_argument("--oof-folds", type=int, default=None,
                           help="also train K fold models for leakage-free predicted masks (classification phase 2)")
            s.set_defaults(func=cmd_train_seg)
        else:
            s.add_argument("--seg-run", type=Path, default=None, help="segmentation run whose predicted masks phase 2 uses")
            s.add_argument("--phase", choices=("1", "2", "both"), default="both")
            s.set_defaults(func=cmd_train_cls)

    s = sub.add_parser("evaluate", help="metrics with confidence intervals for a run (metrics.json)")
    s.add_argument("run", type=Path)
    s.add_argument("--bench", type=Path, default=None, help="benchmark (default: the one the run was trained on)")
    s.add_argument("--split", default="all", help="test, val, train, all (default) or a comma list like val,test")
    s.add_argument("--seg-run", type=Path, default=None, help="segmenter for predicted masks (classification runs)")
    s.add_argument("--compare", type=Path, default=None, help="second classification run: DeLong test between the two")
    s.add_argument("--external", action="store_true",
                   help="--bench is a cohort the run never saw: evaluate all its patients (split 'external'), "
                        "segmenting them now; baselines stay fitted on the run's own training patients. "
                        "Writes RUN/external/<bench name>/metrics.json unless --out")
    s.add_argument("--out", type=Path, default=None, help="metrics file (default RUN/metrics.json)")
    s.add_argument("--device", default="cpu")
    _inference_options(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("leaderboard", help="paper-style Markdown tables (Table 6 / Table 7) for evaluated runs",
                       description="Table 6 / Table 7 for evaluated runs. Classifiers run on two or more "
                                   "benchmarks also get their test-AUC difference to the diameter baselines "
                                   "pooled over the benchmarks (one run per benchmark, model and headline).")
    s.add_argument("runs", nargs="+", type=Path)
    s.add_argument("--out", type=Path, default=None)
    s.set_defaults(func=cmd_leaderboard)

    s = sub.add_parser("predict", help="nodules, malignancy, DICOM SEG and a report for CT scans")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM series folder, .nii/.nii.gz or .mhd")
    s.add_argument("--seg-run", required=True, type=Path)
    s.add_argument("--cls-run", type=Path, default=None)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--format", default="nifti,dicom-seg,json,png,html", help="comma list of outputs")
    s.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    s.add_argument("--device", default="cpu")
    s.add_argument("--quiet", action="store_true")
    _inference_options(s)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("export-onnx", help="export a run's model to ONNX (checked against torch)")
    s.add_argument("run", type=Path)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--opset", type=int, default=17)
    s.set_defaults(func=cmd_export_onnx)

    s = sub.add_parser("last-epoch", help="a run folder holding a run's last-epoch weights instead of its best epoch's")
    s.add_argument("run", type=Path)
    s.add_argument("--out", required=True, type=Path, help="new run folder (must not exist)")
    s.set_defaults(func=cmd_last_epoch)

    s = sub.add_parser("demo", help="the whole pipeline on synthetic data (about 15 minutes on 2 CPU cores)")
    s.add_argument("--out", type=Path, default=Path("demo_out"))
    s.add_argument("--patients", type=int, default=None, help="patients per source (default: the demo's)")
    s.add_argument("--seg-arch", default=None, choices=SEG_ARCHS)
    s.add_argument("--cls-arch", default=None, choices=CLS_ARCHS)
    s.add_argument("--fresh", action="store_true", help="start over instead of reusing finished steps")
    s.add_argument("--quick", action="store_true", help="tiny data and one-epoch schedules: checks the plumbing in a minute")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except LungcadError as exc:
        print(f"lungcad: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lungcad: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
