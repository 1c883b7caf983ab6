"""Can a classifier's image embedding see a synthetic nodule's density and shape? A linear probe.

    python benchmarks/synth_probe.py RUN BENCH TRUTH [--random-init] [--crop N] [--input-size N] [--out FILE]

``RUN`` is a classification run trained on ``BENCH``; ``TRUTH`` the ``synth_truth.json`` that
``lungcad synth`` wrote beside the benchmark's raw data. For every patient with an annotated
nodule, the script feeds the patient's core slices on their reference masks through the run's
classifier (``lungcad.inference.SliceClassifier``, the same features as ``evaluate``) and keeps the
input of the final linear layer (the pooled image embedding, before the size prior), averaged over
the slices. A linear probe (standardised logistic regression, class-balanced, C = 1) is fitted
on the training patients and scored on the validation and test patients, for the largest nodule's visible density (solid, part-solid, ground-glass; calcified
looks solid in the lung window) and shape (smooth, lobulated, spiculated), as balanced accuracy.

Two references are probed the same way: the true log diameter (what size alone says) and the
mean gray level inside the reference mask (a one-number density reading, the floor any image
model should reach for density).

``--random-init`` re-initialises the network's weights first: what the architecture and the input
features make visible before any training. ``--crop N`` overrides the run's ``crop`` (the side of
the zoom window; the context window is at least twice that) and ``--input-size N`` the side the
channels are resized to: what another input geometry would show (with ``--random-init``; a trained
network has learned its own). Results are printed and saved as JSON (default
``benchmarks/results/synth_probe_<bench>.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_ceiling import RESULTS, patient_truth, write_result  # noqa: E402

from lungcad.data import classification_items, read_png  # noqa: E402
from lungcad.errors import LungcadError  # noqa: E402
from lungcad.splits import load_splits  # noqa: E402

TARGETS = ("density", "shape")


def embedding_layer(model: torch.nn.Module) -> torch.nn.Linear:
    """The model's final linear layer: the last ``nn.Linear`` that reads more than one feature
    (a fusion model's size prior is a ``Linear(1, 1)``)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.in_features > 1]
    if not linears:
        raise LungcadError(f"{type(model).__name__}: no linear layer to read an embedding from")
    return linears[-1]


class EmbeddingTap:
    """Records the input of ``layer`` at every forward pass (``with EmbeddingTap(layer) as tap``)."""

    def __init__(self, layer: torch.nn.Module):
        self.layer, self.batches, self._hook = layer, [], None

    def __enter__(self) -> "EmbeddingTap":
        self._hook = self.layer.register_forward_hook(
            lambda _m, inputs, _o: self.batches.append(inputs[0].detach().float().cpu().numpy()))
        return self

    def __exit__(self, *exc) -> None:
        self._hook.remove()

    def take(self) -> np.ndarray:
        """The recorded rows since the last ``take``, ``(N, features)``."""
        out = np.concatenate(self.batches) if self.batches else np.zeros((0, self.layer.in_features), np.float32)
        self.batches = []
        return out


def reinitialise(model: torch.nn.Module, seed: int = 0) -> None:
    """Fresh weights for every submodule that can reset itself (the random-init control)."""
    torch.manual_seed(seed)
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()


def probe_scores(features: np.ndarray, labels, train: np.ndarray) -> float:
    """Balanced accuracy on the rows outside ``train`` of a linear probe fitted on ``train``."""
    labels = np.asarray(labels)
    train = np.asarray(train, bool)
    if np.unique(labels[train]).size < 2 or (~train).sum() == 0:
        return float("nan")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000))
    probe.fit(features[train], labels[train])
    return float(balanced_accuracy_score(labels[~train], probe.predict(features[~train])))


def patient_embeddings(classifier, bench: Path, splits: dict) -> pd.DataFrame:
    """Per patient with a reference mask: split, mean embedding over core slices, mean gray inside."""
    tap_layer = embedding_layer(classifier.runner.model)
    rows = []
    with EmbeddingTap(tap_layer) as tap:
        for split in ("train", "val", "test"):
            items = classification_items(bench, splits.get(split, []), mask_source="gt",
                                         min_area_frac=classifier.min_area_frac)
            for pid, group in items.groupby("patient_id"):
                images = [read_png(bench / p) for p in group["image_path"]]
                masks = [read_png(p) > 0 for p in group["mask_file"]]
                spacings = list(zip(group["spacing_row_mm"].astype(float), group["spacing_col_mm"].astype(float)))
                classifier.predict_proba(classifier.features(images, masks, spacings))
                gray = np.mean([im[m].mean() / 255.0 for im, m in zip(images, masks) if m.any()])
                rows.append({"patient_id": pid, "split": split, "embedding": tap.take().mean(axis=0),
                             "mean_gray": float(gray)})
    return pd.DataFrame(rows).set_index("patient_id")


def main() -> None:
    from lungcad.inference import SliceClassifier

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("bench", type=Path)
    ap.add_argument("truth", type=Path)
    ap.add_argument("--random-init", action="store_true", help="re-initialise the network's weights first")
    ap.add_argument("--crop", type=int, default=None, help="override the run's zoom-window side (px)")
    ap.add_argument("--input-size", type=int, default=None, help="override the run's input side (px)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    classifier = SliceClassifier.from_run(a.run, device="cpu")
    if a.crop is not None:
        classifier.model_json["crop"] = int(a.crop)
    if a.input_size is not None:
        classifier.model_json["image_size"] = int(a.input_size)
    if a.random_init:
        reinitialise(classifier.runner.model)
    truth = patient_truth(json.loads(a.truth.read_text()))
    frame = patient_embeddings(classifier, a.bench, load_splits(a.bench)["classification"])
    frame = frame[frame.index.isin(truth.index)].join(truth[["log_diameter", *TARGETS]])
    train = (frame["split"] == "train").to_numpy()
    inputs = {"embedding": np.stack(frame["embedding"].to_list()),
              "log_diameter": frame[["log_diameter"]].to_numpy(float),
              "mean_gray_in_mask": frame[["mean_gray"]].to_numpy(float)}
    result = {"run": str(a.run), "bench": str(a.bench), "crop": classifier.crop, "input_size": classifier.input_size,
              "random_init": a.random_init, "n_train": int(train.sum()), "n_scored": int((~train).sum()),
              "embedding_width": int(inputs["embedding"].shape[1]), "balanced_accuracy": {}}
    print(f"{a.run} on {a.bench.name}{' (random init)' if a.random_init else ''}: crop {classifier.crop}, "
          f"input {classifier.input_size}; probe fitted on {train.sum()} training patients, scored on "
          f"{(~train).sum()} validation and test patients")
    for target in TARGETS:
        labels = frame[target].to_numpy()
        scores = {name: probe_scores(x, labels, train) for name, x in inputs.items()}
        result["balanced_accuracy"][target] = {**scores, "chance": 1.0 / np.unique(labels[train]).size}
        print(f"  {target:8s} " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
              + f" (chance {result['balanced_accuracy'][target]['chance']:.3f})")
    write_result(result, a.out or RESULTS / f"synth_probe_{a.bench.name}.json")


if __name__ == "__main__":
    main()
