"""Tests of the segmentation zoo: every registered model, the factory, and the UNAR specifics."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lungcad.errors import LungcadError
from lungcad.models.common import drop_none, load_weights
from lungcad.models.segmentation import DEFAULT_LR, SEGMENTERS, create_segmenter
from lungcad.models.unar import UNAR, AttentionGate

SIZE = 64


def calibrate(model: nn.Module, in_channels: int = 1, seed: int = 0) -> nn.Module:
    """Give BatchNorm realistic running statistics, then switch to eval mode.

    An untrained model in eval mode uses unit running statistics, under which deep decoders output
    almost a constant; comparing such outputs would make the determinism, weights and ONNX tests weak.
    """
    for layer in model.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average over the calibration batches
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(2, in_channels, SIZE, SIZE, generator=generator))
    return model.eval()


def state_to_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(params=sorted(SEGMENTERS))
def arch(request) -> str:
    return request.param


class TestEverySegmenter:
    """Behaviour every registered architecture must have (one parametrized class over the registry)."""

    @pytest.mark.parametrize("in_channels", [1, 3])
    def test_forward_backward_reaches_first_layer(self, arch, in_channels):
        torch.manual_seed(0)
        model = create_segmenter(arch, in_channels=in_channels).train()
        x = torch.randn(2, in_channels, SIZE, SIZE)
        logits = model(x)
        assert logits.shape == (2, 1, SIZE, SIZE)
        assert torch.isfinite(logits).all()
        logits.float().pow(2).mean().backward()
        name, first = next((n, p) for n, p in model.named_parameters() if p.requires_grad)
        assert first.shape[1] == in_channels, f"{name} is not the input layer"
        assert first.grad is not None and first.grad.abs().sum() > 0, f"no gradient reaches {name}"

    def test_non_square_input_and_several_classes(self, arch):
        model = create_segmenter(arch, classes=2).eval()
        with torch.no_grad():
            logits = model(torch.randn(1, 1, SIZE, SIZE + 32))
        assert logits.shape == (1, 2, SIZE, SIZE + 32)

    def test_mixed_precision_forward_backward(self, arch):
        # CPU autocast (bfloat16) exercises the same dtype paths as CUDA float16 autocast.
        model = create_segmenter(arch).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(torch.randn(2, 1, SIZE, SIZE))
        assert logits.shape == (2, 1, SIZE, SIZE) and torch.isfinite(logits).all()
        logits.float().mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    def test_eval_mode_is_deterministic(self, arch):
        model = calibrate(create_segmenter(arch))
        x = torch.randn(2, 1, SIZE, SIZE)
        with torch.no_grad():
            first, second = model(x), model(x)
        assert first.std() > 0, "calibrated model outputs a constant"
        assert torch.equal(first, second)

    def test_none_kwargs_are_dropped(self, arch):
        default = create_segmenter(arch)
        with_none = create_segmenter(arch, not_an_option=None, encoder_depth=None, decoder_channels=None)
        assert n_params(with_none) == n_params(default)

    def test_weights_file_round_trip(self, arch, tmp_path):
        torch.manual_seed(1)
        source = calibrate(create_segmenter(arch))
        path = tmp_path / "weights.safetensors"
        save_file(state_to_cpu(source), str(path))
        torch.manual_seed(2)
        fresh = create_segmenter(arch).eval()
        loaded = create_segmenter(arch, weights=path).eval()
        x = torch.randn(1, 1, SIZE, SIZE)
        with torch.no_grad():
            expected = source(x)
            assert not torch.allclose(fresh(x), expected), "two random models agree: test is vacuous"
            assert torch.equal(loaded(x), expected)

    def test_has_a_default_learning_rate(self, arch):
        assert 0 < DEFAULT_LR[arch] < 1e-2

    def test_onnx_export_matches_onnxruntime(self, arch, tmp_path):
        ort = pytest.importorskip("onnxruntime")
        model = calibrate(create_segmenter(arch))
        path = tmp_path / f"{arch}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings from the libraries' shape checks
            torch.onnx.export(
                model,
                torch.randn(1, 1, SIZE, SIZE),
                str(path),
                dynamo=False,
                opset_version=17,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            )
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = torch.randn(3, 1, SIZE, SIZE)  # another batch size than at export: the axis is dynamic
        (onnx_logits,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            torch_logits = model(x).numpy()
        assert onnx_logits.shape == (3, 1, SIZE, SIZE)
        np.testing.assert_allclose(onnx_logits, torch_logits, rtol=1e-4, atol=1e-4)


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(LungcadError) as info:
        create_segmenter("unet-of-dreams")
    message = str(info.value)
    assert "unet-of-dreams" in message
    for name in SEGMENTERS:
        assert name in message


def test_invalid_option_is_a_lungcad_error():
    with pytest.raises(LungcadError, match="lightunet"):
        create_segmenter("lightunet", not_an_option=3)


def test_none_does_not_override_a_given_default():
    default = create_segmenter("unetplusplus")
    shallow = create_segmenter("unetplusplus", encoder_depth=3, decoder_channels=(64, 32, 16))
    dropped = create_segmenter("unetplusplus", encoder_depth=None)
    assert n_params(shallow) < n_params(default)
    assert n_params(dropped) == n_params(default)


def test_lightunet_has_no_pretrained_weights_to_download():
    with pytest.raises(LungcadError, match="weights=PATH"):
        create_segmenter("lightunet", pretrained=True)


def test_lightunet_is_small():
    assert n_params(create_segmenter("lightunet")) < 1_000_000


@pytest.mark.parametrize("arch", ["unar", "res34-unetv2", "lightunet"])
def test_our_models_reject_unsupported_sizes(arch):
    model = create_segmenter(arch).eval()
    with pytest.raises(LungcadError, match="multiples of"):
        model(torch.randn(1, 1, SIZE, SIZE + 8))


# --- weights files -------------------------------------------------------------------------------


def test_mismatching_weights_file_names_the_file_and_keys(tmp_path):
    path = tmp_path / "light.safetensors"
    save_file(state_to_cpu(create_segmenter("lightunet")), str(path))
    with pytest.raises(LungcadError) as info:
        create_segmenter("unar", weights=path)
    message = str(info.value)
    assert str(path) in message and "missing keys" in message and "unexpected keys" in message


def test_weights_file_with_a_missing_key(tmp_path):
    state = state_to_cpu(create_segmenter("lightunet"))
    removed = sorted(state)[0]
    del state[removed]
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(LungcadError, match=f"missing keys: {removed}"):
        create_segmenter("lightunet", weights=path)
    # Not strict: the missing key keeps the model's own value, the others are loaded.
    target = create_segmenter("lightunet")
    before = target.state_dict()[removed].clone()
    load_weights(target, path, strict=False)
    assert torch.equal(target.state_dict()[removed], before)
    assert torch.equal(target.state_dict()["head.weight"], state["head.weight"])


def test_weights_file_with_wrong_shapes_fails_even_when_not_strict(tmp_path):
    state = state_to_cpu(create_segmenter("lightunet", classes=2))
    path = tmp_path / "two_classes.safetensors"
    save_file(state, str(path))
    with pytest.raises(LungcadError, match="wrong shapes: head"):
        load_weights(create_segmenter("lightunet"), path, strict=False)


def test_torch_save_weights_are_loaded_with_weights_only(tmp_path):
    torch.manual_seed(3)
    source = calibrate(create_segmenter("lightunet"))
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": source.state_dict()}, path)  # Lightning-style nesting is unwrapped
    loaded = create_segmenter("lightunet", weights=path).eval()
    x = torch.randn(1, 1, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


@pytest.mark.parametrize("content", [b"", b"not a weights file"])
def test_unreadable_weights_file(tmp_path, content):
    for suffix in (".safetensors", ".pt"):
        path = tmp_path / f"broken{suffix}"
        path.write_bytes(content)
        with pytest.raises(LungcadError, match="broken"):
            create_segmenter("lightunet", weights=path)
    with pytest.raises(LungcadError, match="not found"):
        create_segmenter("lightunet", weights=tmp_path / "absent.safetensors")


def test_drop_none():
    assert drop_none({"a": None, "b": 0, "c": False, "d": "x"}) == {"b": 0, "c": False, "d": "x"}


# --- UNAR specifics ------------------------------------------------------------------------------


def test_unar_has_one_attention_gate_per_nested_skip_and_uses_them_all():
    model = create_segmenter("unar").eval()
    levels = len(model.encoder.feature_info.channels())
    assert levels == 5
    # UNet++ grid: column j (1..L-1) holds L-j nodes, each receiving j dense skips.
    expected = sum(j * (levels - j) for j in range(1, levels))
    gates = [m for m in model.modules() if isinstance(m, AttentionGate)]
    assert len(gates) == expected == 20
    calls = []
    hooks = [gate.register_forward_hook(lambda *_: calls.append(1)) for gate in gates]
    with torch.no_grad():
        model(torch.randn(1, 1, SIZE, SIZE))
    for hook in hooks:
        hook.remove()
    assert len(calls) == expected


def test_attention_gate_rescales_skip_by_coefficients_in_unit_interval():
    gate = AttentionGate(skip_channels=8, gate_channels=16).eval()
    skip, coarse = torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        alpha = gate.coefficients(skip, coarse)
        out = gate(skip, coarse)
    assert alpha.shape == (2, 1, 16, 16)
    assert ((alpha > 0) & (alpha < 1)).all()
    assert torch.allclose(out, skip * alpha)
    # The gate depends on the coarse signal, not only on the skip.
    with torch.no_grad():
        assert not torch.allclose(gate.coefficients(skip, torch.randn(2, 16, 8, 8)), alpha)


def test_unar_encoder_is_resnet_d():
    model = create_segmenter("unar")
    downsampling = [
        m
        for m in model.encoder.modules()
        if getattr(m, "downsample", None) is not None and hasattr(m, "conv1")
    ]
    assert len(downsampling) == 3  # first block of layer2, layer3, layer4
    for block in downsampling:
        # ResNet-D: the 3x3 conv strides, the 1x1 shortcut conv does not, an average pool does.
        assert block.conv1.kernel_size == (3, 3) and block.conv1.stride == (2, 2)
        pool, conv = block.downsample[0], block.downsample[1]
        assert isinstance(pool, nn.AvgPool2d)
        assert isinstance(conv, nn.Conv2d) and conv.stride == (1, 1)
    # ResNet-D (like -C) also has the deep stem: three 3x3 convolutions instead of one 7x7.
    stem_convs = [m for m in model.encoder.conv1.modules() if isinstance(m, nn.Conv2d)]
    assert len(stem_convs) == 3 and all(c.kernel_size == (3, 3) for c in stem_convs)


def test_unar_deep_supervision_heads():
    model = UNAR(deep_supervision=True).eval()
    x = torch.randn(1, 1, SIZE, SIZE)
    with torch.no_grad():
        heads = model.forward_heads(x)
        mean = model(x)
    assert len(heads) == 4  # X[0][1], X[0][2], X[0][3] and the main head after X[0][4]
    assert all(h.shape == (1, 1, SIZE, SIZE) for h in heads)
    assert torch.allclose(mean, torch.stack(heads).mean(0))
    assert n_params(model) > n_params(UNAR())


def test_pretrained_asks_timm_and_a_weights_file_takes_precedence(monkeypatch, tmp_path):
    import timm

    real_create_model = timm.create_model
    asked = []

    def recording_create_model(*args, **kwargs):
        asked.append(kwargs.get("pretrained"))
        return real_create_model(*args, **{**kwargs, "pretrained": False})  # never download in tests

    monkeypatch.setattr(timm, "create_model", recording_create_model)
    source = create_segmenter("unar", pretrained=True)
    path = tmp_path / "unar.safetensors"
    save_file(state_to_cpu(source), str(path))
    create_segmenter("unar", pretrained=True, weights=path)
    create_segmenter("res34-unetv2")
    assert asked == [True, False, False]
