"""``lungcad demo``: the whole pipeline on synthetic data, step by step, reusing finished steps.

synth (all five native formats) -> ingest -> split -> train a segmenter (cpu preset, with
out-of-fold masks) -> evaluate -> train a classifier (both phases) -> evaluate -> leaderboard ->
predict on a held-out synthetic scan. Each step leaves its files in ``OUT`` and a marker in
``OUT/.demo/``; a second run skips what is done (training steps resume from their last checkpoint).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .errors import LungcadError

# lightunet: the segmenter that trains in minutes on 2 CPU cores (UNAR needs about 4x the compute;
# `lungcad demo --seg-arch unar` runs it). NoduleHyperFusionNet is the paper's best classifier.
DEFAULTS = {"patients": 4, "seg_arch": "lightunet", "cls_arch": "nodule-hyperfusionnet", "seed": 42}


class _Steps:
    """Run named steps once; a marker file records each finished step."""

    def __init__(self, out: Path, fresh: bool):
        self.marks = out / ".demo"
        self.marks.mkdir(parents=True, exist_ok=True)
        if fresh:
            for f in self.marks.glob("*.done"):
                f.unlink()
        self.n = 0
        self.t0 = time.time()

    def run(self, name: str, title: str, fn):
        self.n += 1
        mark = self.marks / f"{name}.done"
        if mark.exists():
            print(f"[{self.n}] {title}: already done, reusing", flush=True)
            return json.loads(mark.read_text() or "null")
        print(f"\n[{self.n}] {title} ... (elapsed {time.time() - self.t0:.0f} s)", flush=True)
        t = time.time()
        result = fn()
        mark.write_text(json.dumps(result, default=str))
        print(f"[{self.n}] {title}: done in {time.time() - t:.0f} s", flush=True)
        return result


# ``quick``: the same steps on tiny data and one-epoch schedules (tests check the orchestration).
QUICK = {"synth": {"size": 96, "n_slices": 24},
         "seg": {"epochs": 2, "oof_epochs": 2, "image_size": 96, "train_crop": None, "max_val_slices": 16,
                 "init_prior": None, "nodule_crop_p": 0.0},
         "cls": {"phase1.epochs": 1, "phase2.epochs": 1, "max_slices_per_patient": 2}}


def run_demo(out: Path, patients: int | None = None, seg_arch: str | None = None, cls_arch: str | None = None,
             fresh: bool = False, quick: bool = False) -> dict:
    """Run the demo into ``out``; returns the paths of what it wrote."""
    from .evaluate import evaluate_run, fit_configured_head
    from .ingest import IngestOptions, run_ingest
    from .leaderboard import leaderboard
    from .predict import predict_inputs
    from .splits import make_splits
    from .synth import SOURCES, generate
    from .train.cls import train_classifier
    from .train.seg import train_segmenter

    patients = patients or DEFAULTS["patients"]
    seg_arch = seg_arch or DEFAULTS["seg_arch"]
    cls_arch = cls_arch or DEFAULTS["cls_arch"]
    out = Path(out)
    raw, holdout, bench = out / "raw", out / "holdout", out / "bench"
    seg_run, cls_run, pred = out / "runs" / f"seg-{seg_arch}", out / "runs" / f"cls-{cls_arch}", out / "predict"
    steps = _Steps(out, fresh)
    synth_kw = QUICK["synth"] if quick else {}
    seg_over = QUICK["seg"] if quick else None
    cls_over = QUICK["cls"] if quick else None
    print(f"lungcad demo -> {out.resolve()}  (segmenter {seg_arch}, classifier {cls_arch}, {patients} patients/source)")

    steps.run("synth", f"synthesize {patients} patients per source in all native formats -> {raw}",
              lambda: generate(raw, patients=patients, seed=DEFAULTS["seed"], progress=True, **synth_kw) and str(raw))
    # A scan no model sees during training: another seed, a DICOM series in the NBIA layout
    # (LungCT-Diagnosis: no deliberate quirks such as the missing slice of the LIDC phantoms).
    steps.run("holdout", f"synthesize a held-out scan -> {holdout}",
              lambda: generate(holdout, patients=1, seed=DEFAULTS["seed"] + 1000, sources=["lungct-diagnosis"],
                               progress=False, **synth_kw) and str(holdout))
    steps.run("ingest", f"ingest the six sources -> {bench}",
              lambda: run_ingest({s: raw / s for s in SOURCES}, bench, IngestOptions(workers=2), progress=True)["totals"])
    steps.run("split", "patient-level stratified splits", lambda: {
        t: {k: len(v) for k, v in s.items()} for t, s in make_splits(bench, seed=DEFAULTS["seed"]).items()
        if isinstance(s, dict)})
    steps.run("train-seg", f"train {seg_arch} (cpu preset, with out-of-fold masks) -> {seg_run}",
              lambda: train_segmenter(bench, seg_arch, seg_run, preset="cpu", overrides=seg_over,
                                      resume=(seg_run / "checkpoints").exists()))
    steps.run("eval-seg", "evaluate the segmenter (validation and test patients)",
              lambda: _headline(evaluate_run(seg_run, bench=bench, split="val,test")))
    steps.run("train-cls", f"train {cls_arch} (cpu preset, phase 1 GT masks + phase 2 predicted masks) -> {cls_run}",
              lambda: train_classifier(bench, cls_arch, cls_run, preset="cpu", seg_run=seg_run, phase="both",
                                       overrides=cls_over, resume=(cls_run / "checkpoints").exists()))
    steps.run("size-head", "fit the size head on the validation patients (cpu preset)",
              lambda: fit_configured_head(cls_run, bench=bench, seg_run=seg_run))
    steps.run("eval-cls", "evaluate the classifier (patient level)",
              lambda: _headline(evaluate_run(cls_run, bench=bench, split="val,test", seg_run=seg_run)))
    table = leaderboard([seg_run, cls_run], out=out / "leaderboard.md")
    inputs = sorted(p for p in (holdout / "lungct-diagnosis").rglob("*") if p.is_dir() and any(p.glob("*.dcm")))
    if not inputs:
        raise LungcadError(f"{holdout}: the held-out synthetic scan is missing; re-run with --fresh")
    results = steps.run("predict", f"predict on the held-out scan -> {pred}",
                        lambda: predict_inputs(inputs[:1], seg_run=seg_run, cls_run=cls_run, out_dir=pred))
    reports = sorted(pred.rglob("report.html"))
    print("\n" + "=" * 72)
    print(table)
    print("=" * 72)
    print(f"benchmark:    {bench}\nsegmentation: {seg_run}\nclassifier:   {cls_run}\nleaderboard:  {out / 'leaderboard.md'}")
    for r in results or []:
        if r.get("status") != "ok":
            print(f"predict error: {r.get('error')}")
    if reports:
        print(f"report:       {reports[0].resolve()}")
    print(f"total time:   {time.time() - steps.t0:.0f} s")
    return {"bench": str(bench), "seg_run": str(seg_run), "cls_run": str(cls_run),
            "report": str(reports[0]) if reports else None}


def _headline(metrics: dict) -> dict:
    """A small JSON-able extract of evaluate's result for the step marker."""
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str))}
