"""Losses against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lungcad.train.losses import BceDiceLoss, ComboLoss, FocalLoss, SoftDiceLoss


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def logits_of(probabilities) -> torch.Tensor:
    return torch.tensor(probabilities, dtype=torch.float64).logit()


def test_soft_dice_on_a_2x2_prediction():
    # p = [[0.9, 0.2], [0.6, 0.1]], target = [[1, 0], [1, 0]]
    # |P∩G| = 0.9 + 0.6 = 1.5; |P| = 1.8; |G| = 2; Dice = (2*1.5 + 1) / (1.8 + 2 + 1) = 4 / 4.8
    logits = logits_of([[[[0.9, 0.2], [0.6, 0.1]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    assert SoftDiceLoss()(logits, target).item() == pytest.approx(1 - 4 / 4.8, abs=1e-6)


def test_soft_dice_is_averaged_per_sample():
    # Sample 1 as above (loss 1 - 4/4.8); sample 2: all p = 0.5 on an empty target:
    # Dice = (0 + 1) / (2 + 0 + 1) = 1/3. Per-sample mean differs from the pooled batch Dice.
    logits = torch.stack([logits_of([[[0.9, 0.2], [0.6, 0.1]]]), logits_of([[[0.5, 0.5], [0.5, 0.5]]])])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    expected = ((1 - 4 / 4.8) + (1 - 1 / 3)) / 2
    assert SoftDiceLoss()(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_soft_dice_of_empty_prediction_and_target_is_zero_loss():
    logits = torch.full((1, 1, 4, 4), -50.0)
    assert SoftDiceLoss()(logits, torch.zeros(1, 1, 4, 4)).item() == pytest.approx(0.0, abs=1e-6)


def test_bce_dice_weights_the_two_terms():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.7).float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    dice = SoftDiceLoss()(logits, target)
    assert BceDiceLoss()(logits, target).item() == pytest.approx((0.52 * bce + 0.48 * dice).item(), rel=1e-6)


def test_focal_loss_by_hand():
    # p = 0.9, y = 1, alpha = 0.56, gamma = 2: -0.56 * (1 - 0.9)^2 * ln(0.9)
    expected = -0.56 * 0.1**2 * math.log(0.9)
    loss = FocalLoss(alpha=0.56, gamma=2.0)(torch.tensor([logit(0.9)]), torch.tensor([1.0]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_focal_label_smoothing_moves_the_target_towards_one_half():
    # s = 0.1: y = 1 -> 0.95. The negative term now counts with weight (1 - 0.56) * 0.05.
    p = 0.9
    y = 0.95
    expected = -(0.56 * y * (1 - p) ** 2 * math.log(p) + 0.44 * (1 - y) * p**2 * math.log(1 - p))
    loss = FocalLoss(alpha=0.56, gamma=2.0, label_smoothing=0.1)(torch.tensor([logit(p)]), torch.tensor([1.0]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert loss.item() > FocalLoss(alpha=0.56, gamma=2.0)(torch.tensor([logit(p)]), torch.tensor([1.0])).item()


def test_focal_with_gamma_0_and_alpha_half_is_half_bce():
    torch.manual_seed(1)
    logits, target = torch.randn(16), (torch.rand(16) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    assert FocalLoss(alpha=0.5, gamma=0.0)(logits, target).item() == pytest.approx(0.5 * bce.item(), rel=1e-6)


def test_focal_accepts_b_by_1_logits_and_down_weights_easy_examples():
    easy = FocalLoss(alpha=0.5, gamma=2.0)(torch.tensor([[logit(0.95)]]), torch.tensor([1.0]))
    hard = FocalLoss(alpha=0.5, gamma=2.0)(torch.tensor([[logit(0.3)]]), torch.tensor([1.0]))
    bce_ratio = math.log(0.3) / math.log(0.95)
    assert hard.item() / easy.item() > bce_ratio  # focusing: hard examples weigh more than under BCE


def test_combo_is_weighted_focal_plus_smoothed_bce():
    torch.manual_seed(2)
    logits, target = torch.randn(8), (torch.rand(8) > 0.5).float()
    focal = FocalLoss(alpha=0.25, gamma=2.0, label_smoothing=0.05)(logits, target)
    bce = F.binary_cross_entropy_with_logits(logits, target * 0.95 + 0.025)
    combo = ComboLoss(focal_weight=0.7, bce_weight=0.3, alpha=0.25, gamma=2.0, label_smoothing=0.05)
    assert combo(logits, target).item() == pytest.approx((0.7 * focal + 0.3 * bce).item(), rel=1e-6)


def test_losses_accept_soft_mixup_targets():
    logits = torch.tensor([0.3, -1.2])
    target = torch.tensor([0.7, 0.2])
    for loss in (FocalLoss(0.25, 2.0, 0.05), ComboLoss()):
        value = loss(logits, target)
        assert torch.isfinite(value) and value.item() > 0


def test_soft_dice_skip_leaves_empty_samples_to_bce():
    # Same batch as test_soft_dice_is_averaged_per_sample: with empty="skip" only sample 1 counts.
    logits = torch.stack([logits_of([[[0.9, 0.2], [0.6, 0.1]]]), logits_of([[[0.5, 0.5], [0.5, 0.5]]])])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    assert SoftDiceLoss(empty="skip")(logits, target).item() == pytest.approx(1 - 4 / 4.8, abs=1e-6)
    # A batch without any foreground has no Dice term at all.
    assert SoftDiceLoss(empty="skip")(logits, torch.zeros_like(target)).item() == 0.0
    with pytest.raises(ValueError, match="skip"):
        SoftDiceLoss(empty="sometimes")
