"""Training presets: ``paper`` (the paper's Tables 3-5) and ``cpu`` (a useful model in minutes here).

A preset is a plain dict; ``lungcad.config.resolve`` copies it, fills the architecture-specific
values (``lr: None`` -> the model's default rate) and applies the user's overrides. Every key can be
overridden (``train_segmenter(..., overrides={"batch_size": 4})``; for classification phase keys use
``{"phase1": {"epochs": 3}}`` or the dotted form ``{"phase1.epochs": 3}``).

Keys shared by both tasks:
  seed, deterministic, precision ("auto": bf16/16-mixed on CUDA, 32 on CPU), accelerator, devices,
  num_nodes, strategy, num_workers (None: 0 on CPU, 4 on CUDA), log_every_n_steps,
  ema_decay (None: off; else validation, the exported weights and the final model are an exponential
  moving average of the weights with this decay per optimiser step; the paper uses none).
"""

from __future__ import annotations

import copy

_COMMON = {
    "seed": 42,
    "deterministic": True,
    "precision": "auto",
    "accelerator": "auto",
    "devices": "auto",
    "num_nodes": 1,
    "strategy": "auto",
    "num_workers": None,
    "log_every_n_steps": 10,
    "ema_decay": None,
    "model_kwargs": {},  # architecture options passed to create_segmenter / create_classifier
}

# Segmentation. Table 4 for the paper preset.
#   image_size: slices are resized to this (training, validation and prediction alike).
#   context_slices: k neighbouring slices on each side as extra input channels (2.5D, 2k + 1
#     channels; 0 = the paper's single slice). A small nodule and a vessel seen end-on look alike in
#     one slice; across slices the vessel runs on while the nodule ends.
#   train_crop: train on random windows of that side cut from the resized slice (None: whole slice);
#     nodule_crop_p: probability that the window contains the nodule.
#   negatives: nodule-free slices per nodule slice, drawn from the same series (0: annotated slices
#     only, as the paper's 7,061 annotated slices).
#   max_val_slices: validate on a fixed random subset of this many slices (None: all).
#   small_slice_weight / small_slice_mm: nodule slices whose cross-section's equivalent diameter is
#     below small_slice_mm are drawn small_slice_weight times as often as the others (with
#     replacement, same epoch length; 1.0: uniform, the paper).
#   oof_folds / oof_epochs: out-of-fold models for leakage-free predicted masks (see train/oof.py).
#   tta: test-time augmentation recorded in model.json, used by evaluate, predict and the out-of-fold
#     masks: "flip" averages the slice and its three mirror images (4 passes), "none" one pass
#     (the paper). evaluate/predict --tta overrides it.
#   min_component_peak: recorded in model.json like tta; evaluate, predict and the out-of-fold masks
#     drop each 3D component of a series' mask whose highest probability is below it (None: keep all,
#     the paper). evaluate/predict --min-peak overrides it.
SEGMENTATION = {
    "paper": {
        **_COMMON,
        "image_size": 256,
        "context_slices": 0,
        "train_crop": None,
        "nodule_crop_p": 0.0,
        "negatives": 0.0,
        "batch_size": 8,
        "val_batch_size": 16,
        "epochs": 70,
        "lr": None,  # DEFAULT_LR[arch] (Table 4: 4e-4 UNAR, 1e-4 Res34UNetV2)
        "lr_scale": 1.0,
        "weight_decay": 2e-5,
        "bce_weight": 0.52,
        "dice_weight": 0.48,
        "dice_empty": "include",  # the paper's per-sample soft Dice over every sample
        "plateau_patience": 7,
        "plateau_factor": 0.5,
        "early_stopping_patience": 13,
        "augmentation": "paper",
        "init_prior": None,  # output bias at zero, as the models are built
        "max_train_slices": None,
        "max_val_slices": None,
        "small_slice_weight": 1.0,
        "small_slice_mm": 10.0,
        "oof_folds": 5,
        "oof_epochs": 70,
        "tta": "none",
        "min_component_peak": None,
    },
    "cpu": {
        **_COMMON,
        "image_size": 256,
        # bench20 UNAR (README): two neighbours on each side tell a nodule's end slices from a vessel
        # seen end-on; validation nodule-slice Dice 0.831 -> 0.839, FP rate on empty slices 0.14 -> 0.11
        # (test 0.656 -> 0.801; training seeds 7 and 123: 0.725, 0.716). One neighbour (lr_scale 1.0)
        # left the validation FP rate at 0.77.
        "context_slices": 2,
        "train_crop": 128,
        "nodule_crop_p": 0.5,
        "negatives": 1.0,  # as many nodule-free slices as nodule slices: few false positives on full slices
        "batch_size": 8,
        "val_batch_size": 16,
        "epochs": 14,
        "lr": None,
        # The paper's rate: at 2.5x, 2.5D UNAR's validation Dice collapsed to 0 from epoch 11 (README).
        "lr_scale": 1.0,
        "weight_decay": 2e-5,
        "bce_weight": 0.52,
        "dice_weight": 0.48,
        "dice_empty": "include",
        "plateau_patience": 3,
        "plateau_factor": 0.5,
        "early_stopping_patience": None,
        "augmentation": "light",
        "scale_jitter": False,  # zoom 0.7-1.6x before the crop (augment.scale_jitter); off: no gain measured
        "init_prior": 0.01,  # output bias log(0.01/0.99): skips the "learn the background" epochs
        "max_train_slices": None,
        "max_val_slices": 96,
        "small_slice_weight": 1.0,
        "small_slice_mm": 10.0,
        "oof_folds": 2,
        "oof_epochs": 6,
        # bench20 UNAR, test: nodule-slice Dice 0.58 -> 0.66, FP rate on empty slices 0.44 -> 0.23
        "tta": "flip",
        # Off: on bench20, 0.8 takes UNAR's FP rate on empty slices from 0.14 to 0.00 on validation
        # (0.23 to 0.07 on test) at the same Dice, but costs LightUNet test nodule-slice Dice
        # (0.41 -> 0.37) that its validation does not show (README, Results).
        "min_component_peak": None,
    },
}

# Classification: two phases (Table 5). Phase 1 on ground-truth masks, phase 2 on predicted masks.
#   input_size / crop: the seven-channel features (recorded in model.json for prediction).
#   max_slices_per_patient: nodule slices kept per patient (None: all).
#   model_kwargs_by_arch: architecture -> model options this preset gives it (model_kwargs set by the
#     user win); resolved into model_kwargs.
#   min_area_frac: train, validate and evaluate on a patient's core slices only, those whose mask is
#     at least this fraction of the patient's largest (prediction: of the nodule's largest); 0 = every
#     slice with a mask (the paper). Recorded in model.json so evaluation and prediction agree.
#   size_input: add the nodule_size plane (the measured equivalent diameter of the slice's nodule,
#     lungcad.features) as an eighth input channel; the fusion models feed it to a size prior, a
#     logistic regression fitted on the training slices before phase 1 whose logit is added to the
#     image head's (model_kwargs size_channel, filled in), a timm model reads it as one more plane.
#     Recorded in model.json.
#   patient_head: "size" fits the size head after phase 2 (lungcad.patient_head): a logistic
#     regression on the validation patients of the network's patient probability and the largest
#     measured diameter, on the segmentation run's stored predicted masks. Written to
#     RUN/patient_head.json; evaluate reports it as the headline and predict beside its other
#     aggregates. None: the paper's mean over slices.
#   freeze_epochs: encoder frozen for the first N epochs of the phase.
#   scheduler: "warmup_cosine" (LinearLR warm-up then CosineAnnealingLR) | "onecycle".
_PHASE1_PAPER = {
    "epochs": 90,
    "batch_size": 8,
    "val_batch_size": 32,
    "lr": None,  # DEFAULT_LR[arch][phase] (Table 5: e.g. 3e-4 phase 1, 2e-4 phase 2)
    "lr_scale": 1.0,
    "weight_decay": 2e-3,
    "loss": "focal",
    "focal_alpha": 0.56,
    "focal_gamma": 2.0,
    "label_smoothing": 0.1,
    "focal_weight": 1.0,
    "bce_weight": 0.0,
    "scheduler": "warmup_cosine",
    "warmup_epochs": 5,
    "warmup_start_factor": 0.1,
    "pct_start": 0.1,
    "freeze_epochs": 7,
    "accumulate_grad_batches": 1,
    "mixup_alpha": 0.0,
    "early_stopping_patience": None,
}
_PHASE2_PAPER = {
    **_PHASE1_PAPER,
    "loss": "combo",
    "focal_alpha": 0.25,
    "label_smoothing": 0.05,
    "focal_weight": 0.7,
    "bce_weight": 0.3,
    "scheduler": "onecycle",
    "freeze_epochs": 10,
    "accumulate_grad_batches": 4,
    "mixup_alpha": 0.2,
}

CLASSIFICATION = {
    "paper": {
        **_COMMON,
        "input_size": 224,
        "crop": 64,
        "max_slices_per_patient": None,
        "min_area_frac": 0.0,
        "size_input": False,  # the paper's seven channels
        "patient_head": None,  # the paper's patient score: the mean of the slice probabilities
        "augmentation": "paper",
        "weighted_sampler": True,
        "phase1": _PHASE1_PAPER,
        "phase2": _PHASE2_PAPER,
    },
    "cpu": {
        **_COMMON,
        "input_size": 64,  # 4x cheaper than 128
        # A 16 px zoom window (context window 32 px, or 2.5x the nodule), not Table 5's 64: at a 64 px
        # input the 64 px crop shrinks the context window (>= 128 px) to half resolution, and a 6 mm
        # nodule is 2 px. A linear probe on a randomly initialised NoduleHyperFusionNet then cannot
        # tell ground-glass from solid (balanced accuracy 0.34 on bench65, chance 0.33); at crop 16
        # it reaches 0.64, as the mean gray level inside the mask (0.65) (benchmarks/synth_probe.py).
        # On five synth benchmarks: validation AUC of the size head 0.857 against 0.850 at crop 64,
        # test level (README, Results).
        "crop": 16,
        "max_slices_per_patient": 16,
        # Core slices: NoduleHyperFusionNet on the 352-patient synth benchmark, validation AUC 0.79-0.83
        # against 0.74 on every slice (README, Results); a nodule's end slices look benign.
        "min_area_frac": 0.5,
        # At 64 px the global image is ~5.5 mm per pixel and a nodule a pixel or two: the global stream
        # is given the global mask (location and size) instead. The paper preset keeps the image.
        "model_kwargs_by_arch": {"nodule-hyperfusionnet": {"global_channels": [1]}},
        # The measured size as an input: the fusion models start from a size prior fitted on the
        # training slices (models/fusion.py). NoduleHyperFusionNet on three 357-patient synth
        # benchmarks, test AUC 0.89, 0.80 and 0.71 against 0.79, 0.76 and 0.70 without a usable size
        # input (README, Results); timm models read it as an eighth plane (not measured).
        "size_input": True,
        # After phase 2, a logistic regression on the validation patients weighs the network's patient
        # score against the largest measured diameter (lungcad.patient_head, evaluate.fit_patient_head).
        # bench62/bench64, two seeds each: test AUC +0.001 to +0.024 over the network alone, accuracy
        # at 0.5 e.g. 0.44 -> 0.83; level with the measured-diameter baseline (README, Results).
        "patient_head": "size",
        "augmentation": "light",
        "weighted_sampler": True,
        # From random weights the encoder is never frozen (train/cls.py); with --pretrained or
        # --weights it is frozen for freeze_epochs. A few epochs: longer runs overfit ~100 patients.
        "phase1": {**_PHASE1_PAPER, "epochs": 5, "warmup_epochs": 1, "freeze_epochs": 1,
                   "lr_scale": 3.0},
        "phase2": {**_PHASE2_PAPER, "epochs": 3, "freeze_epochs": 1, "accumulate_grad_batches": 1,
                   "lr_scale": 2.5},
    },
}

PRESETS = {"segmentation": SEGMENTATION, "classification": CLASSIFICATION}


def preset(task: str, name: str) -> dict:
    """A deep copy of preset ``name`` for ``task`` (``segmentation`` | ``classification``)."""
    from ..errors import LungcadError

    if task not in PRESETS:
        raise LungcadError(f"unknown task {task!r}; valid: {', '.join(PRESETS)}")
    if name not in PRESETS[task]:
        raise LungcadError(f"unknown preset {name!r}; valid: {', '.join(PRESETS[task])}")
    return copy.deepcopy(PRESETS[task][name])
