"""The training engine shared by both tasks (Lightning 2).

- ``SegmentationModule`` / ``ClassificationModule``: loss, optimiser, scheduler and validation
  metrics of each task (segmentation: Dice and IoU per nodule slice; classification: AUC, accuracy
  and F1 at **patient level**, slice probabilities averaged per patient as in the paper).
- ``EpochSampler``: shuffled (or class-weighted, the paper's WeightedRandomSampler) order that depends
  only on (seed, epoch), and one augmentation seed per sample: a resumed run sees the same batches
  as an uninterrupted one.
- ``fit``: builds the ``lightning.Trainer`` (accelerator/devices/strategy ``auto``: DDP when Lightning
  sees several GPUs, ``num_nodes`` for torchrun/SLURM; precision from the preset; deterministic),
  writes ``history.csv`` (one row per epoch), ``checkpoints/last.ckpt`` every epoch (resume),
  the best weights as ``checkpoints/best.safetensors`` + ``model.json`` and ``summary.json``.
- ``ema_decay`` (config): keep an exponential moving average of the weights and BatchNorm statistics
  (Lightning's ``EMAWeightAveraging``). Validation, the best-epoch export, ``last.ckpt``'s weights and
  the final model are then the average; the raw weights ride along in ``last.ckpt`` for ``--resume``.

History epochs are 1-based (``epoch`` = number of finished epochs).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, EMAWeightAveraging
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import LungcadError
from ..io import atomic_path, write_text_atomic
from ..models.run_io import LAST_CKPT, save_run_model
from .losses import BceDiceLoss, build_classification_loss

SEG_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "val_iou", "val_dice_all", "lr")
CLS_COLUMNS = ("epoch", "train_loss", "val_loss", "val_auc", "val_accuracy", "val_f1", "lr")
SUMMARY = "summary.json"


# --------------------------------------------------------------------------- small helpers


def _json_safe(value):
    """NaN/inf are not JSON: write them as null."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data) -> None:
    """Write JSON atomically (temporary name, then rename); NaN becomes null."""
    write_text_atomic(path, json.dumps(_json_safe(data), indent=2, sort_keys=True, default=str) + "\n")


def base_model_json(task: str, arch: str, cfg: dict, in_channels: int, image_size: int, **extra) -> dict:
    """The ``model.json`` fields every run has (what inference needs to rebuild and feed the model);
    ``extra`` adds the task's own fields."""
    from ..ingest.harmonize import WINDOW_HU

    return {
        "task": task,
        "arch": arch,
        "kwargs": dict(cfg.get("model_kwargs") or {}),
        "in_channels": int(in_channels),
        "image_size": int(image_size),
        "window_hu": [int(v) for v in WINDOW_HU],
        "threshold": 0.5,
        **extra,
        "preset": cfg.get("preset"),
        "seed": int(cfg["seed"]),
    }


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) without Lightning's log line."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_precision(precision: str) -> str:
    """``auto``: bf16 (or fp16) mixed precision on CUDA, full precision on CPU."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def loader_settings(cfg: dict) -> dict:
    """DataLoader workers and pinning: few workers on a small CPU machine, pinned memory on CUDA."""
    cuda = torch.cuda.is_available() and cfg.get("accelerator", "auto") in ("auto", "gpu", "cuda")
    workers = cfg.get("num_workers")
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if cuda else 0
    return {"num_workers": int(workers), "pin_memory": cuda, "persistent_workers": int(workers) > 0}


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite a run folder that already holds a run, unless resuming it."""
    if resume:
        return
    if (run_dir / LAST_CKPT).exists() or (run_dir / "model.json").exists():
        raise LungcadError(
            f"{run_dir}: already holds a training run; pass --resume to continue it or choose another --out"
        )


# --------------------------------------------------------------------------- sampling


class EpochSampler(Sampler):
    """Yields ``(index, sample_seed)`` keys in an order fixed by ``(seed, epoch)``.

    ``weights`` (optional): draw ``num_samples`` indices with replacement with these probabilities
    (``torch.utils.data.WeightedRandomSampler`` semantics); otherwise a permutation (``shuffle``) or
    the natural order. Lightning calls ``set_epoch`` at the start of every epoch.
    """

    def __init__(self, size: int, seed: int = 42, shuffle: bool = True, weights=None,
                 num_samples: int | None = None):
        self.size = int(size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.num_samples = int(num_samples or size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples if self.weights is not None else self.size

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is not None:
            order = rng.choice(self.size, size=self.num_samples, replace=True,
                               p=self.weights / self.weights.sum())
        elif self.shuffle:
            order = rng.permutation(self.size)
        else:
            order = np.arange(self.size)
        seeds = rng.integers(0, 2**31 - 1, size=len(order))
        return iter([(int(i), int(s)) for i, s in zip(order, seeds)])


def inverse_frequency_weights(labels) -> np.ndarray:
    """Per-sample weight = 1 / (count of its class) (the paper's WeightedRandomSampler)."""
    labels = np.asarray(labels).astype(int)
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    return 1.0 / counts[labels]


class WithIndex(Dataset):
    """Wrap a dataset so that items become ``(*item, index)``: lets validation group by patient."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return (*self.dataset[index], index)


# --------------------------------------------------------------------------- Lightning modules


def _gather_cat(module: L.LightningModule, chunks: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-step tensors and gather them from every process (DDP)."""
    local = torch.cat(chunks) if chunks else torch.zeros(0, device=module.device)
    if module.trainer is not None and module.trainer.world_size > 1:
        local = module.all_gather(local).reshape(-1, *local.shape[1:])
    return local.detach().cpu()


def _gather_once(module: L.LightningModule, values: list[torch.Tensor],
                 index: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Gather per-step ``values`` and their dataset ``index`` from every process, one row per item:
    DDP's sampler pads the ranks to equal length with repeats. Returns ``(index, values)`` sorted by
    index (empty arrays when nothing was validated)."""
    gathered = _gather_cat(module, values).numpy()
    index = _gather_cat(module, index).numpy().astype(int)
    index, first = np.unique(index, return_index=True)
    return index, gathered[first]


class SegmentationModule(L.LightningModule):
    """Segmentation: BCE + soft Dice loss, AdamW, ReduceLROnPlateau on the validation Dice."""

    def __init__(self, model: torch.nn.Module, cfg: dict):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.loss = BceDiceLoss(cfg["bce_weight"], cfg["dice_weight"],
                                dice_empty=cfg.get("dice_empty", "include"))
        self._counts: list[torch.Tensor] = []
        self._index: list[torch.Tensor] = []

    def forward(self, x):
        return self.model(x)

    def on_fit_start(self):
        # NHWC convolutions are markedly faster on CPU (oneDNN); CUDA keeps the default layout.
        self._channels_last = self.device.type == "cpu"
        if self._channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _layout(self, images):
        if getattr(self, "_channels_last", False):
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def training_step(self, batch, batch_idx):
        images, masks = batch
        loss = self.loss(self.model(self._layout(images)), masks)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch, batch_idx):
        images, masks, index = batch  # the validation set is wrapped in WithIndex
        logits = self.model(self._layout(images))
        self.log("val_loss", self.loss(logits, masks), on_epoch=True, prog_bar=True,
                 batch_size=len(images), sync_dist=True)
        pred = (logits > 0).float().flatten(1)  # sigmoid(logit) >= 0.5
        target = masks.flatten(1)
        self._counts.append(torch.stack([(pred * target).sum(1), pred.sum(1), target.sum(1)], dim=1))
        self._index.append(index)

    def on_validation_epoch_start(self):
        self._counts, self._index = [], []

    def on_validation_epoch_end(self):
        from ..metrics import dice_from_counts, iou_from_counts

        _, counts = _gather_once(self, self._counts, self._index)  # each slice once under DDP
        counts = counts.astype(np.float64)
        self._counts, self._index = [], []
        if len(counts) == 0:
            return
        inter, pred, target = counts[:, 0], counts[:, 1], counts[:, 2]
        dice = dice_from_counts(inter, pred, target)
        iou = iou_from_counts(inter, pred, target)
        nodule = target > 0
        # Dice on nodule slices is the headline (DESIGN.md section 5); 0 when the split has none.
        self.log("val_dice", float(dice[nodule].mean()) if nodule.any() else 0.0, prog_bar=True)
        self.log("val_iou", float(iou[nodule].mean()) if nodule.any() else 0.0)
        self.log("val_dice_all", float(dice.mean()))

    def configure_optimizers(self):
        cfg = self.cfg
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", patience=cfg["plateau_patience"], factor=cfg["plateau_factor"]
        )
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": plateau, "monitor": "val_dice", "interval": "epoch"}}


def patient_metrics(proba: np.ndarray, labels: np.ndarray, patients: np.ndarray,
                    absent: dict | None = None) -> dict:
    """AUC, accuracy and F1 (threshold 0.5) after averaging slice probabilities per patient.

    ``absent`` maps patients with no slice to classify (the segmenter found no nodule) to their
    label; they count with probability 0, a benign call, as in ``lungcad evaluate``.
    """
    import pandas as pd

    from ..metrics import classification_summary, patient_aggregate

    slices = pd.DataFrame({"patient_id": patients, "label": np.asarray(labels).round().astype(int), "prob": proba})
    per_patient = patient_aggregate(slices, absent=pd.DataFrame({"label": pd.Series(absent or {}, dtype=int)}))
    summary = classification_summary(per_patient["label"], per_patient["prob"])
    return {"val_auc": summary["auc"], "val_accuracy": summary["accuracy"], "val_f1": summary["f1"]}


class ClassificationModule(L.LightningModule):
    """One classification phase: focal/combo loss, AdamW, warm-up + cosine or OneCycle, mixup,
    encoder frozen for the first ``freeze_epochs`` epochs; patient-level validation metrics."""

    def __init__(self, model: torch.nn.Module, phase_cfg: dict, val_patients, val_labels,
                 val_absent: dict | None = None):
        super().__init__()
        self.model = model
        self.cfg = phase_cfg
        self.loss = build_classification_loss(phase_cfg)
        self.val_patients = np.asarray(val_patients)
        self.val_labels = np.asarray(val_labels, dtype=np.float64)
        self.val_absent = dict(val_absent or {})  # patient -> label, no predicted nodule: probability 0
        self._proba: list[torch.Tensor] = []
        self._index: list[torch.Tensor] = []

    def forward(self, x):
        return self.model(x).reshape(len(x), -1)[:, 0]

    def on_train_epoch_start(self):
        from ..models.classification import freeze_encoder

        freeze_encoder(self.model, self.current_epoch < int(self.cfg.get("freeze_epochs") or 0))

    def training_step(self, batch, batch_idx):
        x, y = batch
        alpha = float(self.cfg.get("mixup_alpha") or 0.0)
        if alpha > 0 and len(x) > 1:
            # Mixup on inputs and (soft) targets; NumPy/torch RNGs are re-seeded every epoch.
            lam = float(np.random.beta(alpha, alpha))
            perm = torch.randperm(len(x), device=x.device)
            x = lam * x + (1 - lam) * x[perm]
            y = lam * y + (1 - lam) * y[perm]
        loss = self.loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def on_validation_epoch_start(self):
        self._proba, self._index = [], []

    def validation_step(self, batch, batch_idx):
        x, y, index = batch
        logits = self(x)
        self.log("val_loss", self.loss(logits, y), on_epoch=True, prog_bar=True, batch_size=len(x),
                 sync_dist=True)
        self._proba.append(torch.sigmoid(logits.float()))
        self._index.append(index)

    def on_validation_epoch_end(self):
        index, proba = _gather_once(self, self._proba, self._index)  # one prediction per slice under DDP
        self._proba, self._index = [], []
        if len(index) == 0:
            return
        metrics = patient_metrics(proba, self.val_labels[index], self.val_patients[index], self.val_absent)
        for name, value in metrics.items():
            self.log(name, value, prog_bar=name == "val_auc")

    def configure_optimizers(self):
        cfg = self.cfg
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        epochs = int(cfg["epochs"])
        if cfg["scheduler"] == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=cfg["lr"], total_steps=max(1, int(self.trainer.estimated_stepping_batches)),
                pct_start=cfg["pct_start"],
            )
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        if cfg["scheduler"] != "warmup_cosine":
            raise LungcadError(f"unknown scheduler {cfg['scheduler']!r} (warmup_cosine, onecycle)")
        warmup = min(int(cfg["warmup_epochs"]), max(0, epochs - 1))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs - warmup))
        if warmup == 0:
            scheduler = cosine
        else:
            linear = torch.optim.lr_scheduler.LinearLR(
                optimizer, start_factor=cfg["warmup_start_factor"], total_iters=warmup
            )
            scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


# --------------------------------------------------------------------------- callbacks


def _metric(trainer: L.Trainer, name: str) -> float:
    value = trainer.callback_metrics.get(name)
    return float("nan") if value is None else float(value)


class EpochSeed(Callback):
    """Re-seed every RNG at the start of each epoch from ``(seed, epoch)``: dropout, mixup and any
    other random draw of an epoch are the same whether or not the run was resumed.

    Also sets the epoch of our sampler directly: under DDP Lightning wraps it in a distributed
    sampler and only tells the wrapper about the new epoch.
    """

    def __init__(self, seed: int, sampler: EpochSampler | None = None):
        self.seed = int(seed)
        self.sampler = sampler

    def on_train_epoch_start(self, trainer, pl_module):
        seed_all(self.seed * 1000 + trainer.current_epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(trainer.current_epoch)


class HistoryWriter(Callback):
    """Writes ``history.csv``: one row per finished epoch (``columns``), rewritten atomically."""

    def __init__(self, path: Path, columns):
        self.path = Path(path)
        self.columns = tuple(columns)
        self.rows: list[dict] | None = None

    def on_fit_start(self, trainer, pl_module):
        self.rows = None  # read lazily: the epoch counter is restored after on_fit_start

    def _load_previous(self, epochs_done: int) -> list[dict]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as handle:  # resumed: keep the rows of the epochs done
            return [r for r in csv.DictReader(handle) if int(r["epoch"]) <= epochs_done]

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        if self.rows is None:
            self.rows = self._load_previous(trainer.current_epoch)
        row = {"epoch": trainer.current_epoch + 1,
               "lr": trainer.optimizers[0].param_groups[0]["lr"]}
        for column in self.columns:
            if column not in row:
                row[column] = _metric(trainer, column)
        self.rows.append(row)
        if trainer.is_global_zero:
            with atomic_path(self.path) as tmp, tmp.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(self.rows)


class WeightEMA(EMAWeightAveraging):
    """Lightning's EMA of the weights (and BatchNorm buffers), updated after every optimiser step."""

    def averaged_module(self) -> L.LightningModule:
        """The averaged copy of the LightningModule (what validation just scored)."""
        if self._average_model is None:  # created by Lightning in setup("fit")
            raise LungcadError("WeightEMA: no averaged model outside fit")
        return self._average_model.module


class BestExporter(Callback):
    """Exports the model as ``checkpoints/best.safetensors`` + ``model.json`` when ``monitor`` improves
    (or every epoch with ``select_best=False``: the last epoch's weights are kept).

    With ``ema`` the exported weights are the average, the weights validation scored (Lightning swaps
    them in for validation only; at ``on_train_epoch_end`` the module holds the raw weights again).
    """

    def __init__(self, run_dir: Path, model_json: dict, monitor: str, mode: str = "max",
                 select_best: bool = True, ema: WeightEMA | None = None):
        self.ema = ema
        self.run_dir = Path(run_dir)
        self.model_json = model_json
        self.monitor = monitor
        self.sign = 1.0 if mode == "max" else -1.0
        self.select_best = select_best
        self.best = float("nan")
        self.best_epoch = 0

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict):
        self.best = float(state_dict["best"])
        self.best_epoch = int(state_dict["best_epoch"])

    def _improves(self, value: float) -> bool:
        if not self.select_best or self.best_epoch == 0:
            return True
        if math.isnan(value):
            return False
        return math.isnan(self.best) or self.sign * value > self.sign * self.best

    def on_train_epoch_end(self, trainer, pl_module):
        value = _metric(trainer, self.monitor)
        if not self._improves(value):
            return
        self.best, self.best_epoch = value, trainer.current_epoch + 1
        if trainer.is_global_zero:
            source = self.ema.averaged_module() if self.ema is not None else pl_module
            save_run_model(self.run_dir, source.model, self.model_json)
        trainer.strategy.barrier()


class LastCheckpoint(Callback):
    """Saves ``checkpoints/last.ckpt`` (full training state) at the end of every epoch.

    Registered after the other callbacks so that their states in the checkpoint are up to date.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer, pl_module):
        # Every rank calls save_checkpoint with the same temporary path (it is collective; sharded
        # strategies write from every rank), so the name must not depend on the process: not
        # io.atomic_path, whose temporary name carries the pid. Rank zero renames it into place.
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # full state: optimizer, schedulers, loops
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier()


# --------------------------------------------------------------------------- fit


@dataclass
class FitSpec:
    """What ``fit`` needs beyond the module and datasets."""

    run_dir: Path
    cfg: dict  # devices, precision, seed, workers ... (the resolved config)
    model_json: dict
    history_columns: tuple
    monitor: str
    epochs: int
    batch_size: int
    val_batch_size: int
    train_sampler: Sampler | None = None
    mode: str = "max"
    select_best: bool = True
    early_stopping_patience: int | None = None
    accumulate_grad_batches: int = 1
    resume: bool = False
    devices: object = None
    extra_summary: dict = field(default_factory=dict)


def _trainer(spec: FitSpec, callbacks: list[Callback], train_batches: int) -> L.Trainer:
    cfg = spec.cfg
    precision = resolve_precision(cfg.get("precision", "auto"))
    deterministic = bool(cfg.get("deterministic", True))
    if deterministic and torch.cuda.is_available():
        deterministic = "warn"  # some CUDA kernels (e.g. interpolation backward) lack a deterministic version
    return L.Trainer(
        accelerator=cfg.get("accelerator", "auto"),
        devices=spec.devices if spec.devices is not None else cfg.get("devices", "auto"),
        num_nodes=int(cfg.get("num_nodes", 1)),
        strategy=cfg.get("strategy", "auto"),
        precision=precision,
        max_epochs=int(spec.epochs),
        deterministic=deterministic,
        benchmark=False,
        logger=False,  # history.csv is written by HistoryWriter; no logger service, no network
        enable_checkpointing=False,  # LastCheckpoint + BestExporter write the run folder
        callbacks=callbacks,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(int(cfg.get("log_every_n_steps", 10)), train_batches)),
        enable_progress_bar=True,
        enable_model_summary=False,
        accumulate_grad_batches=int(spec.accumulate_grad_batches),
        default_root_dir=str(spec.run_dir),
    )


def fit(module: L.LightningModule, train_set: Dataset, val_set: Dataset, spec: FitSpec) -> dict:
    """Train ``module`` and write the run folder; returns (and writes) ``summary.json``."""
    run_dir = Path(spec.run_dir)
    finished = finished_summary(run_dir, spec.epochs) if spec.resume else None
    if finished is not None:  # resuming a run that already finished: nothing to train
        return finished
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    seed = int(spec.cfg.get("seed", 42))
    sampler = spec.train_sampler or EpochSampler(len(train_set), seed=seed, shuffle=True)
    loader_kw = loader_settings(spec.cfg)
    train_loader = DataLoader(train_set, batch_size=spec.batch_size, sampler=sampler, drop_last=False, **loader_kw)
    val_loader = DataLoader(val_set, batch_size=spec.val_batch_size, shuffle=False, **loader_kw)
    history = HistoryWriter(run_dir / "history.csv", spec.history_columns)
    ema_decay = spec.cfg.get("ema_decay")
    ema = WeightEMA(decay=float(ema_decay)) if ema_decay else None
    best = BestExporter(run_dir, spec.model_json, spec.monitor, spec.mode, spec.select_best, ema=ema)
    callbacks: list[Callback] = [EpochSeed(seed, sampler if isinstance(sampler, EpochSampler) else None),
                                 history, best, *([ema] if ema is not None else [])]
    if spec.early_stopping_patience:
        callbacks.append(EarlyStopping(spec.monitor, mode=spec.mode, patience=int(spec.early_stopping_patience),
                                       check_on_train_epoch_end=True))
    callbacks.append(LastCheckpoint(run_dir / LAST_CKPT))
    trainer = _trainer(spec, callbacks, max(1, len(train_loader)))
    ckpt_path = run_dir / LAST_CKPT
    # Lightning switches torch's deterministic mode on for the whole process: restore it afterwards.
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        trainer.fit(module, train_loader, val_loader,
                    ckpt_path=str(ckpt_path) if spec.resume and ckpt_path.is_file() else None,
                    weights_only=True)  # DESIGN.md section 8: no pickle from disk
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=warn_only)
    summary = {
        "best_epoch": best.best_epoch,
        f"best_{spec.monitor}": best.best,
        "epochs_run": trainer.current_epoch,
        "epochs": int(spec.epochs),
        "stopped_early": trainer.current_epoch < int(spec.epochs),
        "train_items": len(train_set),
        "val_items": len(val_set),
        "run_dir": str(run_dir),
        **spec.extra_summary,
    }
    if trainer.is_global_zero:
        write_json(run_dir / SUMMARY, summary)
        plot_training_curves(run_dir / "history.csv", run_dir / "figures", spec.model_json["task"])
    return summary


def finished_summary(run_dir: Path, epochs: int) -> dict | None:
    """The summary of a run in ``run_dir`` that finished ``epochs`` epochs (or stopped early), else None."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file() or not (Path(run_dir) / "model.json").is_file():
        return None
    summary = json.loads(path.read_text())
    if summary.get("stopped_early") and summary.get("epochs") == epochs:
        return summary
    return summary if int(summary.get("epochs_run", 0)) >= int(epochs) else None


def plot_training_curves(history_csv: Path, out_dir: Path, task: str) -> None:
    """Draw ``figures/training_curves.png`` from the history (paper Figures 8-10)."""
    from ..plots import plot_history

    if Path(history_csv).is_file():
        plot_history(history_csv, out_dir, task)
