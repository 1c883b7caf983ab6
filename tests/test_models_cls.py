"""The classifier zoo: every registered model, encoder freezing, channel routing, ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lungcad.errors import LungcadError
from lungcad.models.classification import (
    CLASSIFIERS,
    DEFAULT_LR,
    TIMM_NAMES,
    create_classifier,
    encoder_parameters,
    freeze_encoder,
    head_parameters,
    is_encoder_frozen,
)
from lungcad.models.fusion import NoduleFusionNet, NoduleHyperFusionNet

SLOW = {"maxvit-large"}  # ~210 M parameters: about 15 s for one forward + backward on one thread
FUSION = {"nodulefusionnet-b0", "nodulefusionnet-v2", "nodule-hyperfusionnet"}
ELEVEN = {
    "efficientnet-b3", "maxvit-tiny", "maxvit-large", "vit-small", "convnext-tiny", "efficientnetv2-s",
    "coatnet-0", "mobilenetv3-large", "nodulefusionnet-b0", "nodulefusionnet-v2", "nodule-hyperfusionnet",
}  # fmt: skip


def batch(n=2, channels=7, seed=0):
    return torch.rand(n, channels, 224, 224, generator=torch.Generator().manual_seed(seed))


def stem_weights(model: nn.Module) -> list[torch.Tensor]:
    """The first convolution's weight of each backbone (one for timm models, one per stream)."""
    backbones = model.encoder_modules() if hasattr(model, "encoder_modules") else [model]
    return [next(p for p in b.parameters() if p.ndim == 4) for b in backbones]


def frozen_batchnorms(model: nn.Module) -> list[nn.Module]:
    encoder = {id(p) for p in encoder_parameters(model)}
    return [
        m for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m.weight) in encoder
    ]  # fmt: skip


def test_registry_has_the_eleven_paper_models():
    assert set(CLASSIFIERS) == ELEVEN
    assert set(DEFAULT_LR) == ELEVEN
    assert DEFAULT_LR["efficientnet-b3"] == {1: 3e-4, 2: 2e-4}  # Table 5's example rates


@pytest.fixture(
    scope="class",
    params=[pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CLASSIFIERS],
)
def built(request):
    torch.manual_seed(0)
    return request.param, create_classifier(request.param)


class TestEveryClassifier:
    def test_forward_backward(self, built):
        name, model = built
        model.train()
        model.zero_grad()
        logits = model(batch())
        assert logits.shape == (2, 1)
        assert torch.isfinite(logits).all()
        logits.sum().backward()
        for weight in stem_weights(model):
            assert weight.grad is not None and weight.grad.abs().sum() > 0
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"{name}: parameters outside the graph: {missing[:5]}"

    def test_freeze_encoder_trains_only_the_head(self, built):
        name, model = built
        try:
            freeze_encoder(model, True)
            model.train()  # a trainer calls this every epoch: frozen BatchNorms must stay in eval
            assert is_encoder_frozen(model)
            head = {id(p) for p in head_parameters(model)}
            trainable = {id(p) for p in model.parameters() if p.requires_grad}
            assert trainable == head and head
            assert len(encoder_parameters(model)) > 0

            norms = frozen_batchnorms(model)
            if name not in {"vit-small", "convnext-tiny"}:  # LayerNorm-only encoders have none
                assert norms, name
            before = [n.running_mean.clone() for n in norms]
            model.zero_grad()
            model(batch(seed=1)).sum().backward()
            for norm, old in zip(norms, before):
                assert torch.equal(norm.running_mean, old)
            assert all(p.grad is None for p in encoder_parameters(model))
            assert all(p.grad is not None for p in head_parameters(model))
        finally:
            freeze_encoder(model, False)
        model.train()
        assert not is_encoder_frozen(model)
        assert all(p.requires_grad for p in model.parameters())
        norms = frozen_batchnorms(model)
        if norms:  # unfrozen again: a training-mode forward moves the statistics
            before = norms[0].running_mean.clone()
            with torch.no_grad():
                model(batch(seed=2))
            assert not torch.equal(norms[0].running_mean, before)


def test_hyperfusion_head_includes_fusion_blocks():
    model = create_classifier("nodule-hyperfusionnet")
    head = {id(p) for p in head_parameters(model)}
    for module in (model.fusions, model.projections, model.final_block, model.pool, model.classifier):
        assert all(id(p) in head for p in module.parameters())
    assert not any(id(p) in head for p in model.global_stream.parameters())


def test_unknown_name_lists_valid_names():
    with pytest.raises(LungcadError, match="efficientnet-b3") as info:
        create_classifier("resnet-9000")
    assert "resnet-9000" in str(info.value)


def test_other_in_chans_for_a_timm_model():
    model = create_classifier("mobilenetv3-large", in_chans=3, num_classes=2).eval()
    with torch.no_grad():
        assert model(batch(channels=3)).shape == (2, 2)
    assert model.conv_stem.in_channels == 3


def test_fusion_model_refuses_too_few_channels():
    with pytest.raises(LungcadError, match="channel"):
        create_classifier("nodule-hyperfusionnet", in_chans=3)


def test_none_kwargs_are_dropped_and_others_passed():
    tiny = {"backbone": "test_efficientnet"}
    default = create_classifier("nodulefusionnet-b0", drop_rate=None, embed_dim=None, **tiny)
    assert default.head[0].p == 0.3 and default.num_features == 256  # model defaults survive None
    chosen = create_classifier("nodulefusionnet-b0", drop_rate=0.1, embed_dim=64, **tiny)
    assert chosen.head[0].p == 0.1 and chosen.num_features == 64
    assert create_classifier("mobilenetv3-large", drop_rate=0.5).drop_rate == 0.5
    timm_model = create_classifier("mobilenetv3-large")
    assert TIMM_NAMES["mobilenetv3-large"] == timm_model.pretrained_cfg["architecture"]


def test_local_weights_are_loaded(tmp_path):
    torch.manual_seed(1)
    source = create_classifier("mobilenetv3-large")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    torch.manual_seed(2)
    loaded = create_classifier("mobilenetv3-large", weights=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    with pytest.raises(LungcadError, match="w.safetensors"):
        create_classifier("efficientnet-b3", weights=str(path))


def _perturbed(x: torch.Tensor, channel: int) -> torch.Tensor:
    y = x.clone()
    y[:, channel] = torch.rand(y[:, channel].shape, generator=torch.Generator().manual_seed(99))
    return y


def test_hyperfusion_routes_channels_as_specified():
    """Global stream: channel 0; local stream: channels 2, 3, 4; channels 1, 5, 6 unused."""
    torch.manual_seed(0)
    model = create_classifier("nodule-hyperfusionnet").eval()
    x = batch(seed=3)
    with torch.no_grad():
        reference = model(x)
        for channel in (1, 5, 6):
            assert torch.equal(model(_perturbed(x, channel)), reference), channel
        for channel in (0, 2, 3, 4):
            assert not torch.allclose(model(_perturbed(x, channel)), reference, atol=1e-6), channel


def test_hyperfusion_streams_see_their_channels():
    """The global stream receives channel 0 three times, the local stream channels 2-4 in order."""
    model = NoduleHyperFusionNet(backbone="test_efficientnet").eval()
    seen = {}
    model.global_stream.register_forward_pre_hook(lambda m, args: seen.__setitem__("g", args[0]))
    model.local_stream.register_forward_pre_hook(lambda m, args: seen.__setitem__("l", args[0]))
    x = batch(seed=4)
    with torch.no_grad():
        model(x)
    assert torch.equal(seen["g"], x[:, [0, 0, 0]])
    assert torch.equal(seen["l"], x[:, [2, 3, 4]])


def test_fusionnet_uses_every_channel_in_its_group():
    torch.manual_seed(0)
    model = NoduleFusionNet(backbone="test_efficientnet").eval()
    assert [s.conv_stem.in_channels for s in model.streams] == [2, 3, 2]
    x = batch(seed=5)
    with torch.no_grad():
        reference = model(x)
        for channel in range(7):
            assert not torch.allclose(model(_perturbed(x, channel)), reference, atol=1e-7), channel


@pytest.mark.slow
@pytest.mark.parametrize("name, size_input", [("nodule-hyperfusionnet", False), ("nodule-hyperfusionnet", True),
                                              ("efficientnet-b3", False)])
def test_onnx_export_matches_torch(tmp_path, name, size_input):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    options = {"in_chans": 8, "size_channel": 7} if size_input else {}
    model = create_classifier(name, **options).eval()
    x = batch(n=2, seed=6)
    if size_input:
        x = _with_size_plane(x, [0.2, 0.6])
        model.size.set_prior(centre=0.4, scale=0.2, weight=1.5, bias=-0.3)
        model.get_classifier().reset_parameters()  # the image head starts at zero: give it nn.Linear's init
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        model, (x,), str(path), dynamo=False, opset_version=17,
        input_names=["features"], output_names=["logits"],
        dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}},
    )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (2, 1):  # also a batch size other than the traced one
        with torch.no_grad():
            expected = model(x[:n]).numpy()
        (got,) = session.run(None, {"features": x[:n].numpy()})
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_hyperfusion_accepts_sizes_that_are_not_multiples_of_32():
    model = NoduleHyperFusionNet(backbone="test_efficientnet").eval()
    with torch.no_grad():
        out = model(torch.rand(1, 7, 200, 200))
    assert out.shape == (1, 1) and torch.isfinite(out).all()


def _with_size_plane(x: torch.Tensor, values) -> torch.Tensor:
    plane = torch.as_tensor(values, dtype=x.dtype)[:, None, None, None].expand(-1, 1, *x.shape[-2:])
    return torch.cat([x, plane], dim=1)


@pytest.mark.parametrize("cls", [NoduleHyperFusionNet, NoduleFusionNet])
def test_size_channel_feeds_a_size_prior_added_to_the_image_logit(cls):
    """With size_channel=7 the plane feeds the size prior only; the image head starts at zero."""
    torch.manual_seed(0)
    model = cls(in_chans=8, backbone="test_efficientnet", size_channel=7)
    x = _with_size_plane(batch(n=4, seed=7), [0.1, 0.3, 0.5, 0.7])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), torch.zeros(4, 1))  # unfitted prior, zero image head
        model.size.set_prior(centre=0.4, scale=0.2, weight=2.0, bias=-1.0)
        expected = 2.0 * (torch.tensor([[0.1], [0.3], [0.5], [0.7]]) - 0.4) / 0.2 - 1.0
        torch.testing.assert_close(model(x), expected)
        bigger = x.clone()
        bigger[:, 7] += 0.2
        # the streams never see the size plane
        assert torch.equal(model.forward_features(bigger), model.forward_features(x))
    model.train()
    model(x).sum().backward()  # both the prior and the (zero) image head learn
    assert model.size.linear.weight.grad.abs().sum() > 0
    head = model.get_classifier()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    # the fitted standardisation is saved with the weights
    state = model.state_dict()
    assert float(state["size.centre"]) == pytest.approx(0.4) and float(state["size.scale"]) == pytest.approx(0.2)
    with pytest.raises(LungcadError, match="scale"):
        model.size.set_prior(centre=0.4, scale=0.0, weight=1.0, bias=0.0)
    # the streams may not read the size channel, and it must exist
    with pytest.raises(LungcadError, match="size_channel"):
        cls(in_chans=8, backbone="test_efficientnet", size_channel=0)
    with pytest.raises(LungcadError, match="size_channel"):
        cls(in_chans=7, backbone="test_efficientnet", size_channel=7)
