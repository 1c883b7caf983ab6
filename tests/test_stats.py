"""Bootstrap and DeLong, checked against independent computations from the definitions."""

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from lungcad.stats import bootstrap_ci, delong_auc_variance, delong_ci, delong_contrast, delong_test, pooled_difference


def _psi(x, y):
    return 1.0 if x > y else 0.5 if x == y else 0.0


def _delong_by_definition(y, scores_list):
    """Placement values by the double loop, covariance S = S10/m + S01/n."""
    y = np.asarray(y)
    v10s, v01s = [], []
    for s in scores_list:
        s = np.asarray(s, float)
        pos, neg = s[y == 1], s[y == 0]
        v10s.append([np.mean([_psi(x, v) for v in neg]) for x in pos])
        v01s.append([np.mean([_psi(x, v) for x in pos]) for v in neg])
    v10, v01 = np.array(v10s), np.array(v01s)
    m, n = v10.shape[1], v01.shape[1]
    return v10.mean(axis=1), np.cov(v10) / m + np.cov(v01) / n


def test_auc_equals_mann_whitney():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60) + 0.3 * y, 1)  # rounding creates ties
    pos, neg = s[y == 1], s[y == 0]
    u = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    auc, _ = delong_auc_variance(y, s)
    assert auc == pytest.approx(u / (len(pos) * len(neg)))
    assert auc == pytest.approx(roc_auc_score(y, s))


def test_delong_variance_hand_case():
    # X (pos) = .9 .6 .4 ; Y (neg) = .6 .2
    # V10 = [1, .75, .5] -> S10 = .0625 ; V01 = [.5, 1] -> S01 = .125
    # var = .0625/3 + .125/2 = 1/12 ; AUC = .75
    y = [1, 1, 1, 0, 0]
    s = [0.9, 0.6, 0.4, 0.6, 0.2]
    auc, var = delong_auc_variance(y, s)
    assert auc == pytest.approx(0.75)
    assert var == pytest.approx(1 / 12)


def test_delong_variance_with_ties_matches_definition():
    rng = np.random.default_rng(3)
    y = np.array([1] * 9 + [0] * 7)
    s = rng.integers(0, 4, y.size).astype(float)  # heavy ties
    auc_ref, cov_ref = _delong_by_definition(y, [s])
    auc, var = delong_auc_variance(y, s)
    assert auc == pytest.approx(auc_ref[0])
    assert var == pytest.approx(float(cov_ref))


def test_delong_test_matches_definition_and_detects_difference():
    rng = np.random.default_rng(5)
    y = np.array([1] * 40 + [0] * 40)
    good = y + rng.normal(0, 0.5, y.size)
    bad = rng.normal(0, 1, y.size)
    aucs, cov = _delong_by_definition(y, [good, bad])
    res = delong_test(y, good, bad)
    assert res["auc_a"] == pytest.approx(aucs[0]) and res["auc_b"] == pytest.approx(aucs[1])
    z_ref = (aucs[0] - aucs[1]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert res["z"] == pytest.approx(z_ref)
    assert res["p"] < 0.001
    assert delong_test(y, bad, good)["z"] == pytest.approx(-res["z"])


def test_delong_test_identical_scores_gives_p_one():
    y = [1, 0, 1, 0, 1, 0]
    s = [0.9, 0.1, 0.5, 0.6, 0.7, 0.3]
    res = delong_test(y, s, s)
    assert res["p"] == 1.0 and res["z"] == 0.0


def test_single_class_gives_nan():
    auc, low, high = delong_ci([1, 1, 1], [0.1, 0.2, 0.3])
    assert np.isnan(auc) and np.isnan(low)
    assert np.isnan(delong_test([0, 0], [1, 2], [2, 1])["p"])


def test_delong_ci_contains_auc_and_is_clipped():
    rng = np.random.default_rng(7)
    y = np.array([1] * 30 + [0] * 30)
    s = y * 0.8 + rng.normal(0, 0.5, y.size)
    for method in ("normal", "logit"):
        auc, low, high = delong_ci(y, s, method=method)
        assert 0.0 <= low < auc < high <= 1.0
    _, var = delong_auc_variance(y, s)
    auc, low, high = delong_ci(y, s)
    assert high - low == pytest.approx(2 * 1.959964 * np.sqrt(var), rel=1e-4)
    # near-perfect separation: the normal interval would pass 1 and is clipped
    s2 = y + rng.normal(0, 0.3, y.size)
    assert delong_ci(y, s2)[2] <= 1.0


def test_bootstrap_resamples_whole_groups():
    groups = np.array(["a", "a", "b", "b", "c", "c", "d"])
    values = np.array([1, 1, 2, 2, 3, 3, 4])

    def groups_kept_whole(v):
        counts = {k: int((v == k).sum()) for k in (1, 2, 3)}
        return float(all(c % 2 == 0 for c in counts.values()))

    assert bootstrap_ci(groups_kept_whole, groups, values, n=200) == (1.0, 1.0)


def test_bootstrap_ci_contains_estimate_and_narrows():
    rng = np.random.default_rng(0)

    def width(n_patients):
        groups = np.repeat(np.arange(n_patients), 3)
        values = np.repeat(rng.normal(0.7, 0.1, n_patients), 3)
        low, high = bootstrap_ci(np.mean, groups, values, n=400, seed=1)
        assert low <= values.mean() <= high
        return high - low

    assert width(400) < width(20) / 2


def test_bootstrap_is_deterministic_and_skips_nan():
    groups = np.arange(30)
    y = np.array([0, 1] * 15)
    s = np.linspace(0, 1, 30)
    a = bootstrap_ci(lambda yy, ss: roc_auc_score(yy, ss) if len(set(yy)) == 2 else np.nan, groups, y, s, n=100)
    b = bootstrap_ci(lambda yy, ss: roc_auc_score(yy, ss) if len(set(yy)) == 2 else np.nan, groups, y, s, n=100)
    assert a == b and np.isfinite(a).all()
    assert np.isnan(bootstrap_ci(lambda v: np.nan, groups, s, n=10)).all()


def test_bootstrap_vector_metric_matches_scalar_runs():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(25), 2)
    x = rng.random(50)
    low, high = bootstrap_ci(lambda v: np.array([v.mean(), v.max()]), groups, x, n=150, seed=3)
    assert (low[0], high[0]) == pytest.approx(bootstrap_ci(np.mean, groups, x, n=150, seed=3))
    assert (low[1], high[1]) == pytest.approx(bootstrap_ci(np.max, groups, x, n=150, seed=3))


def test_identical_scores_p_one_even_with_one_negative():
    res = delong_test([1, 1, 0], [0.2, 0.9, 0.5], [0.2, 0.9, 0.5])
    assert res["p"] == 1.0
    assert np.isnan(delong_test([1, 1, 0], [0.2, 0.9, 0.5], [0.3, 0.9, 0.5])["p"])


def test_pooled_difference_hand_case():
    # Two benchmarks: 0.10 (se 0.05) and 0.00 (se 0.10). Weights 400 and 100: pooled 0.08,
    # se sqrt(1/500), Q = 400 * 0.02**2 + 100 * 0.08**2 = 0.8 < k - 1, so I2 = 0.
    out = pooled_difference([0.10, 0.00], [0.05, 0.10])
    se = math.sqrt(1 / 500)
    assert out["k"] == 2
    assert out["diff"] == pytest.approx(0.08)
    assert out["se"] == pytest.approx(se)
    assert out["z"] == pytest.approx(0.08 / se)
    assert out["p"] == pytest.approx(2 * norm.sf(0.08 / se))
    assert out["ci"] == pytest.approx([0.08 - 1.959964 * se, 0.08 + 1.959964 * se], abs=1e-6)
    assert out["q"] == pytest.approx(0.8)
    assert out["i2"] == 0.0


def test_pooled_difference_heterogeneity_and_unusable_entries():
    # Opposite differences, equal se 0.01: Q = 2 * 100**2 * 0.1**2 / 1 = 200, I2 = (200 - 1) / 200.
    out = pooled_difference([0.1, -0.1, float("nan"), 0.5], [0.01, 0.01, 0.02, 0.0])
    assert out["k"] == 2  # the nan difference and the zero se are left out
    assert out["diff"] == pytest.approx(0.0, abs=1e-12)
    assert out["q"] == pytest.approx(200.0)
    assert out["i2"] == pytest.approx(199 / 200)
    assert out["p"] == pytest.approx(1.0)
    empty = pooled_difference([float("nan")], [0.1])
    assert empty["k"] == 0 and math.isnan(empty["diff"])
    with pytest.raises(ValueError):
        pooled_difference([0.1, 0.2], [0.1])


def test_delong_contrast_of_models_sharing_one_test_set():
    """The mean over models of (model AUC - its baseline's AUC) on one shared cohort: the covariance of
    all the AUCs from the definition, and the two-score case is delong_test."""
    rng = np.random.default_rng(11)
    y = np.array([1] * 30 + [0] * 25)
    size = y + rng.normal(0, 1.0, y.size)                      # the shared baseline's score
    models = [size + 0.6 * y + rng.normal(0, 0.7, y.size) for _ in range(3)]
    vectors = [v for m in models for v in (m, size)]
    weights = np.array([1, -1] * 3) / 3
    aucs, cov = _delong_by_definition(y, vectors)
    res = delong_contrast(y, np.stack(vectors), weights)
    assert res["estimate"] == pytest.approx(weights @ aucs)
    assert res["se"] == pytest.approx(math.sqrt(weights @ cov @ weights))
    assert res["ci"][0] < res["estimate"] < res["ci"][1] and res["p"] < 0.05
    # Three copies of one model: the same estimate and the same se as that model alone; treated as
    # independent samples (pooled_difference) the se would shrink by sqrt(3).
    one = delong_test(y, models[0], size)
    same = delong_contrast(y, np.stack([models[0], size] * 3), weights)
    assert same["estimate"] == pytest.approx(one["diff"]) and same["se"] == pytest.approx(one["se"])
    assert same["p"] == pytest.approx(one["p"])
    assert pooled_difference([one["diff"]] * 3, [one["se"]] * 3)["se"] == pytest.approx(one["se"] / math.sqrt(3))
    with pytest.raises(ValueError, match="weights"):
        delong_contrast(y, np.stack(vectors), [1, -1])
    assert math.isnan(delong_contrast([1, 1, 1], np.ones((2, 3)), [1, -1])["estimate"])
