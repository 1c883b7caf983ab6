"""benchmarks/synth_probe.py: the embedding tap, the random-init control and the probe itself."""

import numpy as np
import pytest
import torch

from lungcad.models.fusion import NoduleFusionNet, NoduleHyperFusionNet



@pytest.fixture(scope="module")
def probe(benchmark_script):
    return benchmark_script("synth_probe")


def _input(n=3, seed=0):
    x = torch.rand(n, 8, 64, 64, generator=torch.Generator().manual_seed(seed))
    x[:, 7] = torch.linspace(0.1, 0.7, n)[:, None, None]  # the constant size plane
    return x


@pytest.mark.parametrize("cls", [NoduleHyperFusionNet, NoduleFusionNet])
def test_the_tap_reads_the_image_embedding_in_front_of_the_head_not_the_size_prior(probe, cls):
    torch.manual_seed(0)
    model = cls(in_chans=8, backbone="test_efficientnet", size_channel=7).eval()
    model.size.set_prior(centre=0.4, scale=0.2, weight=2.0, bias=-1.0)
    layer = probe.embedding_layer(model)
    assert layer is not model.size.linear and layer.in_features > 1 and layer.out_features == 1
    layer.reset_parameters()  # the image head starts at zero: give it weights so the check below bites
    x = _input()
    with torch.no_grad(), probe.EmbeddingTap(layer) as tap:
        logits = model(x)
        embedding = tap.take()
        assert tap.take().shape == (0, layer.in_features)  # take() empties the record
    assert embedding.shape == (3, layer.in_features)
    with torch.no_grad():
        head = layer(torch.from_numpy(embedding)) + model.size(x)
    torch.testing.assert_close(head, logits, atol=1e-5, rtol=1e-5)
    # The hook is gone after the block: another pass records nothing.
    with torch.no_grad():
        model(x)
    assert not tap.batches


def test_reinitialise_gives_fresh_weights(probe):
    model = NoduleHyperFusionNet(in_chans=8, backbone="test_efficientnet", size_channel=7)
    before = [p.detach().clone() for p in model.parameters()]
    probe.reinitialise(model, seed=1)
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters()) if b.numel() > 1 and b.std() > 0]
    assert sum(changed) > 0.8 * len(changed)


def test_probe_scores_separable_vs_unrelated_features(probe):
    rng = np.random.default_rng(0)
    labels = np.array(["solid", "part-solid", "ground-glass"] * 60)
    means = {"solid": 1.0, "part-solid": 0.6, "ground-glass": 0.2}
    seen = np.array([[means[y] + rng.normal(0, 0.05)] for y in labels])
    unseen = rng.normal(0, 1, (len(labels), 4))
    train = np.arange(len(labels)) < 120
    assert probe.probe_scores(seen, labels, train) > 0.95
    assert probe.probe_scores(unseen, labels, train) < 0.6
    assert np.isnan(probe.probe_scores(seen, np.array(["solid"] * len(labels)), train))  # one class: no probe
