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
    nested = resolve("classification", "paper", "nodule-hyperfusionnet",
                     {"model_kwargs": {"global_channels": [0, 1, 0], "fusion_width": 64}})
    dotted = resolve("classification", "paper", "nodule-hyperfusionnet",
                     {"model_kwargs.global_channels": [0, 1, 0], "model_kwargs.fusion_width": 64})
    assert nested["model_kwargs"] == dotted["model_kwargs"] == {"global_channels": [0, 1, 0], "fusion_width": 64}


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = resolve("classification", "cpu", "nodule-hyperfusionnet")
    path = write_yaml(cfg, tmp_path / "config.yaml")
    assert read_yaml(path) == cfg


def test_preset_model_options_per_architecture_yield_to_the_user_s():
    cpu = resolve("classification", "cpu", "nodule-hyperfusionnet")
    # cpu preset: the global stream sees the mask, and the size plane (channel 7) feeds the size prior
    assert cpu["model_kwargs"] == {"global_channels": [1], "size_channel": 7}
    assert "model_kwargs_by_arch" not in cpu                   # resolved, not carried along
    assert resolve("classification", "paper", "nodule-hyperfusionnet")["model_kwargs"] == {}
    assert resolve("classification", "cpu", "nodulefusionnet-b0")["model_kwargs"] == {"size_channel": 7}
    assert resolve("classification", "cpu", "nodulefusionnet-b0", {"size_input": False})["model_kwargs"] == {}
    mine = resolve("classification", "cpu", "nodule-hyperfusionnet",
                   {"model_kwargs.global_channels": [0], "model_kwargs.drop_rate": 0.1, "size_input": True})
    assert mine["model_kwargs"] == {"global_channels": [0], "drop_rate": 0.1, "size_channel": 7}
    # the preset's dict is not shared with (or changed through) a resolved config
    cpu["model_kwargs"]["global_channels"].append(2)
    assert resolve("classification", "cpu", "nodule-hyperfusionnet")["model_kwargs"]["global_channels"] == [1]


def test_size_input_fills_the_size_channel_of_the_fusion_models_only():
    timm_model = resolve("classification", "cpu", "efficientnet-b3", {"size_input": True})
    assert timm_model["size_input"] is True and "size_channel" not in timm_model["model_kwargs"]  # one more plane
    on = resolve("classification", "cpu", "nodule-hyperfusionnet", {"size_input": True})
    assert on["model_kwargs"]["size_channel"] == 7
    assert resolve("classification", "cpu", "nodule-hyperfusionnet")["size_input"] is True  # the cpu preset
    off = resolve("classification", "cpu", "nodule-hyperfusionnet", {"size_input": False})
    assert off["size_input"] is False and "size_channel" not in off["model_kwargs"]
    assert resolve("classification", "paper", "nodulefusionnet-v2")["size_input"] is False
