"""Resolved training configuration: preset, architecture defaults and user overrides."""

from __future__ import annotations

import pytest

from lungcad.config import read_yaml, resolve, write_yaml
from lungcad.errors import LungcadError
from lungcad.models.classification import DEFAULT_LR


def test_overrides_merge_into_sections_and_unknown_keys_are_refused():
    cfg = resolve("classification", "cpu", "nodulefusionnet-b0", {"phase1.epochs": 2, "phase2": {"batch_size": 4}})
    assert cfg["phase1"]["epochs"] == 2 and cfg["phase2"]["batch_size"] == 4
    assert cfg["phase2"]["epochs"] == resolve("classification", "cpu", "nodulefusionnet-b0")["phase2"]["epochs"]
    with pytest.raises(LungcadError, match="unknown configuration key 'epoch'"):
        resolve("segmentation", "cpu", "unar", {"epoch": 3})
    with pytest.raises(LungcadError, match="unknown configuration key 'epochss'"):
        resolve("classification", "cpu", "nodulefusionnet-b0", {"phase1": {"epochss": 2}})
    with pytest.raises(LungcadError, match="unknown configuration key 'phase1.epochss': phase1 has no 'epochss'"):
        resolve("classification", "cpu", "nodulefusionnet-b0", {"phase1.epochss": 2})


def test_learning_rate_is_the_architecture_default_times_the_preset_scale():
    cpu = resolve("classification", "cpu", "nodule-hyperfusionnet")
    paper = resolve("classification", "paper", "nodule-hyperfusionnet")
    assert paper["phase1"]["lr"] == pytest.approx(DEFAULT_LR["nodule-hyperfusionnet"][1])
    assert cpu["phase1"]["lr"] == pytest.approx(DEFAULT_LR["nodule-hyperfusionnet"][1] * cpu["phase1"]["lr_scale"])
    assert resolve("classification", "cpu", "nodule-hyperfusionnet", {"phase1.lr": 1e-5})["phase1"]["lr"] == 1e-5


def test_model_options_are_free_form_in_either_override_form():
    # model_kwargs holds the model's own options: no configuration-key check inside it.
    nested = resolve("classification", "cpu", "nodule-hyperfusionnet",
                     {"model_kwargs": {"global_channels": [1], "fusion_width": 64}})
    dotted = resolve("classification", "cpu", "nodule-hyperfusionnet",
                     {"model_kwargs.global_channels": [1], "model_kwargs.fusion_width": 64})
    assert nested["model_kwargs"] == dotted["model_kwargs"] == {"global_channels": [1], "fusion_width": 64}
    assert resolve("classification", "cpu", "nodule-hyperfusionnet")["model_kwargs"] == {}


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = resolve("classification", "cpu", "nodule-hyperfusionnet")
    path = write_yaml(cfg, tmp_path / "config.yaml")
    assert read_yaml(path) == cfg
