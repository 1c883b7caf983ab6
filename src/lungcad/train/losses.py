"""Training losses of the paper (Tables 4 and 5), all on raw logits.

- ``SoftDiceLoss``: 1 - soft Dice of sigmoid probabilities, smooth = 1, computed **per sample** and
  averaged over the batch (so a small nodule counts as much as a large one). ``empty="include"``
  (the paper's loss as written) also averages samples with an empty target, where the smoothing term
  makes any predicted mass cost ``P / (P + 1)``: a strong pull towards predicting nothing, which
  costs recall on small nodules. ``empty="skip"`` averages only samples with a nodule and leaves
  empty ones to the BCE term.
- ``BceDiceLoss``: 0.52 x BCEWithLogits + 0.48 x SoftDice (segmentation, Table 4).
- ``FocalLoss``: binary focal loss with label smoothing (classification phase 1, Table 5).
- ``ComboLoss``: 0.7 x focal + 0.3 x BCE (classification phase 2, Table 5).

Targets may be soft (in [0, 1]): mixup and label smoothing produce such targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _flat_logits(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Classifier logits come as (B,) or (B, 1); bring logits and targets to (B,) float."""
    return logits.reshape(-1).float(), target.reshape(-1).float()


class SoftDiceLoss(nn.Module):
    """1 - (2 |P∩G| + s) / (|P| + |G| + s) per sample on sigmoid probabilities, mean over the batch.

    ``empty``: ``"include"`` averages every sample; ``"skip"`` only those whose target has
    foreground (the loss is 0 for a batch without any).
    """

    def __init__(self, smooth: float = 1.0, empty: str = "include"):
        super().__init__()
        if empty not in ("include", "skip"):
            raise ValueError(f"empty must be 'include' or 'skip', got {empty!r}")
        self.smooth = smooth
        self.empty = empty

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        proba = torch.sigmoid(logits.float()).flatten(1)
        target = target.float().flatten(1)
        intersection = (proba * target).sum(dim=1)
        total = proba.sum(dim=1) + target.sum(dim=1)
        dice = (2 * intersection + self.smooth) / (total + self.smooth)
        if self.empty == "skip":
            keep = target.sum(dim=1) > 0
            return (1 - dice[keep]).sum() / keep.sum().clamp(min=1)
        return (1 - dice).mean()


class BceDiceLoss(nn.Module):
    """Weighted sum of pixel BCE (with logits) and per-sample soft Dice (paper: 0.52 / 0.48)."""

    def __init__(self, bce_weight: float = 0.52, dice_weight: float = 0.48, smooth: float = 1.0,
                 dice_empty: str = "include"):
        super().__init__()
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.dice = SoftDiceLoss(smooth, empty=dice_empty)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        return self.bce_weight * bce + self.dice_weight * self.dice(logits, target)


def smooth_labels(target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Binary label smoothing towards 0.5: y -> y (1 - s) + 0.5 s."""
    return target * (1 - smoothing) + 0.5 * smoothing


class FocalLoss(nn.Module):
    """Binary focal loss on logits, mean over the batch.

    ``FL = -[alpha y (1-p)^gamma log p + (1-alpha) (1-y) p^gamma log(1-p)]`` with the (possibly
    smoothed or soft) target ``y``: ``alpha`` weights the positive (malignant) class. With
    ``gamma = 0`` and ``alpha = 0.5`` it is half the binary cross-entropy.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, label_smoothing: float = 0.0):
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = _flat_logits(logits, target)
        target = smooth_labels(target, self.label_smoothing)
        log_p = F.logsigmoid(logits)  # log p, numerically stable
        log_not_p = F.logsigmoid(-logits)  # log (1 - p)
        p = log_p.exp()
        positive = self.alpha * target * (1 - p).pow(self.gamma) * log_p
        negative = (1 - self.alpha) * (1 - target) * p.pow(self.gamma) * log_not_p
        return -(positive + negative).mean()


class ComboLoss(nn.Module):
    """``focal_weight`` x FocalLoss + ``bce_weight`` x BCE, both on the smoothed target (Table 5)."""

    def __init__(
        self,
        focal_weight: float = 0.7,
        bce_weight: float = 0.3,
        alpha: float = 0.25,
        gamma: float = 2.0,
        label_smoothing: float = 0.05,
    ):
        super().__init__()
        self.focal_weight = focal_weight
        self.bce_weight = bce_weight
        self.label_smoothing = label_smoothing
        self.focal = FocalLoss(alpha=alpha, gamma=gamma, label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat_logits, flat_target = _flat_logits(logits, target)
        bce = F.binary_cross_entropy_with_logits(
            flat_logits, smooth_labels(flat_target, self.label_smoothing)
        )
        return self.focal_weight * self.focal(logits, target) + self.bce_weight * bce


def build_classification_loss(cfg: dict) -> nn.Module:
    """The loss named in a classification phase config (``loss: focal | combo``)."""
    name = cfg["loss"]
    if name == "focal":
        return FocalLoss(cfg["focal_alpha"], cfg["focal_gamma"], cfg["label_smoothing"])
    if name == "combo":
        return ComboLoss(
            cfg["focal_weight"], cfg["bce_weight"], cfg["focal_alpha"], cfg["focal_gamma"],
            cfg["label_smoothing"],
        )
    raise ValueError(f"unknown classification loss {name!r} (focal, combo)")
