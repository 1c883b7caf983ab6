"""Figures for a run folder: training curves (paper Figures 8-10), confusion matrix, ROC curves.

Figures are drawn with ``matplotlib.figure.Figure`` and the Agg canvas directly, never through
``pyplot``: no global backend switch, no figure registry to leak, safe in worker processes and on
machines without a display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from .errors import LungcadError
from .io import atomic_path

# Metric panels per task, as in the paper: Figure 8 (segmentation), Figures 9-10 (classification).
PANELS = {
    "segmentation": ("loss", "dice", "iou"),
    "classification": ("loss", "auc", "accuracy", "f1"),
}


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    """Write the PNG under a temporary name, then rename (never a half-written figure)."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


def _series_for(history: pd.DataFrame, metric: str) -> list[tuple[str, str]]:
    """(label, column) pairs to draw for ``metric``: train_/val_ prefixed columns, or the bare one."""
    found = [(prefix.rstrip("_"), f"{prefix}{metric}") for prefix in ("train_", "val_") if f"{prefix}{metric}" in history]
    if not found and metric in history:
        found = [(metric, metric)]
    return found


def plot_history(history_csv: str | Path, out_dir: str | Path, task: str) -> Path:
    """Draw the training curves of ``history.csv`` into ``out_dir/training_curves.png``.

    Columns ``train_<metric>`` and ``val_<metric>`` are drawn together per panel (loss, Dice, IoU for
    segmentation; loss, AUC, accuracy, F1 for classification). When the history has a ``phase``
    column the phases are drawn one after the other on a running epoch axis, with a dashed line
    where a new phase starts. Returns the path of the PNG.
    """
    if task not in PANELS:
        raise ValueError(f"unknown task {task!r}; use one of {sorted(PANELS)}")
    history_csv = Path(history_csv)
    if not history_csv.is_file():
        raise LungcadError(f"{history_csv}: history file not found")
    history = pd.read_csv(history_csv)
    if history.empty:
        raise LungcadError(f"{history_csv}: history has no rows")
    x = np.arange(1, len(history) + 1)  # running epoch across phases
    starts = []
    if "phase" in history:
        phase = history["phase"].to_numpy()
        starts = [(int(x[i]), phase[i]) for i in range(1, len(phase)) if phase[i] != phase[i - 1]]
    panels = [m for m in PANELS[task] if _series_for(history, m)]
    if not panels:
        raise LungcadError(f"{history_csv}: none of the columns {PANELS[task]} (train_/val_ prefixed) found")
    fig = _new_figure(4.0 * len(panels), 3.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, metric in zip(axes, panels):
        for label, column in _series_for(history, metric):
            ax.plot(x, history[column].to_numpy(dtype=float), marker="o", markersize=3, label=label)
        for epoch, name in starts:
            ax.axvline(epoch - 0.5, color="grey", linestyle="--", linewidth=1)
            ax.text(epoch - 0.5, ax.get_ylim()[1], f" phase {name}", va="top", fontsize=8, color="grey")
        ax.set_title(metric if metric == "loss" else metric.upper() if len(metric) <= 3 else metric.capitalize())
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, Path(out_dir) / "training_curves.png")


def plot_confusion(cm, path: str | Path, labels=("benign", "malignant"), title: str | None = None) -> Path:
    """Draw a confusion matrix (rows = truth, columns = prediction) with counts in the cells."""
    cm = np.asarray(cm, dtype=int)
    fig = _new_figure(3.6, 3.2)
    ax = fig.subplots()
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = cm.max() / 2 if cm.size else 0
    for (i, j), value in np.ndenumerate(cm):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > threshold else "black")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_roc(curves: dict, path: str | Path, title: str | None = None) -> Path:
    """Draw ROC curves: ``curves`` maps a name to ``(y_true, score)``; the AUC goes in the legend.

    Curves whose labels hold a single class are skipped (their ROC is undefined).
    """
    fig = _new_figure(4.0, 4.0)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for name, (y, score) in curves.items():
        y = np.asarray(y).astype(int)
        if np.unique(y).size < 2:
            continue
        fpr, tpr, _ = roc_curve(y, np.asarray(score, dtype=float))
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, score):.3f})")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "single class: ROC undefined", ha="center", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_per_dataset(values: dict[str, float], path: str | Path, metric: str) -> Path:
    """Bar chart of one metric per dataset (``nan`` bars are left empty)."""
    names = list(values)
    fig = _new_figure(max(3.0, 1.0 + 0.9 * len(names)), 3.2)
    ax = fig.subplots()
    ax.bar(names, [values[n] if values[n] is not None else np.nan for n in names], color="tab:blue")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.tick_params(axis="x", rotation=30)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
