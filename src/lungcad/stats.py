"""Confidence intervals and tests: patient bootstrap and DeLong's method for AUC.

- ``bootstrap_ci`` resamples *groups* (patients), never rows (slices): slices of one patient are
  correlated, so resampling slices would give intervals that are too narrow.
- DeLong (DeLong, DeLong & Clarke-Pearson 1988) with the fast midrank algorithm of Sun & Xu (2014):
  with m positives X and n negatives Y, the placement values are
  ``V10_i = mean_j psi(X_i, Y_j)`` and ``V01_j = mean_i psi(X_i, Y_j)`` (psi = 1, 1/2, 0 for
  >, =, <), computed from midranks; AUC = mean(V10) and ``Var(AUC) = S10/m + S01/n`` with S10, S01
  the sample (co)variances (ddof=1) of the placement values. Functions return ``nan`` when one
  class is absent (AUC is undefined), so per-dataset breakdowns of single-class cohorts do not fail.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import norm, rankdata


def _percentile_interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def _percentile_intervals(values: np.ndarray, alpha: float):
    """Per-column intervals for vector-valued metrics: ``(low array, high array)``."""
    bounds = [_percentile_interval(values[:, k], alpha) for k in range(values.shape[1])]
    return np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])


def bootstrap_ci(
    metric_fn: Callable[..., float],
    groups,
    *arrays,
    n: int = 2000,
    seed: int = 42,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric_fn(*arrays)``, resampling whole groups.

    ``groups`` gives each row's group (patient id); ``arrays`` are row-aligned arrays. Each of the
    ``n`` resamples draws as many groups as there are, with replacement, and passes all rows of
    the drawn groups (a group drawn twice appears twice) to ``metric_fn``. Resamples where the
    metric is not finite (e.g. AUC of a single class) are dropped; ``(nan, nan)`` if none is left.
    Returns ``(low, high)`` at level ``1 - alpha``. Deterministic for a given ``seed``.

    ``metric_fn`` may return a 1-D array of several metrics (one resampling for all of them); the
    result is then ``(low array, high array)``, column by column.
    """
    groups = np.asarray(groups)
    arrays = [np.asarray(a) for a in arrays]
    if any(len(a) != len(groups) for a in arrays):
        raise ValueError("every array must have one entry per row of groups")
    if len(groups) == 0:
        return float("nan"), float("nan")
    # Rows sorted by group, so that group g owns rows order[start[g] : start[g] + size[g]].
    _, codes = np.unique(groups, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    size = np.bincount(codes)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    n_groups = size.size
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        drawn = rng.integers(0, n_groups, size=n_groups)
        lengths = size[drawn]
        total = int(lengths.sum())
        # Vectorised concatenation of the drawn groups' row ranges.
        offsets = np.repeat(start[drawn] - (np.cumsum(lengths) - lengths), lengths)
        rows = order[offsets + np.arange(total)]
        values.append(metric_fn(*(a[rows] for a in arrays)))
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 2:
        return _percentile_intervals(values, alpha)
    return _percentile_interval(values, alpha)


def _split_classes(y, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[None]
    if scores.shape[1] != y.size:
        raise ValueError(f"{y.size} labels but {scores.shape[1]} scores")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return scores[:, y == 1], scores[:, y == 0]


def placement_values(y, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fast DeLong placement values for k score vectors (shape (k, N) or (N,)).

    Returns ``(auc (k,), V10 (k, m), V01 (k, n))``. Uses midranks: with Tz the midrank of a score
    among all, Tx among positives and Ty among negatives, ``V10 = (Tz - Tx) / n`` and
    ``V01 = 1 - (Tz - Ty) / m``.
    """
    pos, neg = _split_classes(y, scores)
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        k = pos.shape[0]
        return np.full(k, np.nan), np.empty((k, m)), np.empty((k, n))
    combined = np.concatenate([pos, neg], axis=1)
    tz = rankdata(combined, axis=1)  # midranks (average method)
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return v10.mean(axis=1), v10, v01


def _delong_covariance(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    m, n = v10.shape[1], v01.shape[1]
    if m < 2 or n < 2:  # a sample variance needs two members of each class
        return np.full((v10.shape[0], v10.shape[0]), np.nan)
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return s10 / m + s01 / n


def delong_auc_variance(y, scores) -> tuple[float, float]:
    """AUC and its DeLong variance for one score vector: ``(auc, var)``; nan when undefined."""
    auc, v10, v01 = placement_values(y, scores)
    if not np.isfinite(auc[0]):
        return float("nan"), float("nan")
    return float(auc[0]), float(_delong_covariance(v10, v01)[0, 0])


def delong_ci(y, scores, alpha: float = 0.05, method: str = "normal") -> tuple[float, float, float]:
    """AUC with a DeLong ``1 - alpha`` confidence interval: ``(auc, low, high)``.

    ``method="normal"`` (default, as R's pROC): ``auc ± z * se``, clipped to [0, 1].
    ``method="logit"``: the interval is built on logit(AUC) with the delta-method standard error
    ``se / (auc (1 - auc))`` and mapped back, which keeps it inside (0, 1) and is less optimistic
    near 1; when AUC is exactly 0 or 1 the logit is undefined and the normal interval is used.
    With zero variance (perfect separation) the interval collapses to the point.
    """
    if method not in ("normal", "logit"):
        raise ValueError(f"unknown method {method!r}; use 'normal' or 'logit'")
    auc, var = delong_auc_variance(y, scores)
    if not (np.isfinite(auc) and np.isfinite(var)):
        return auc, float("nan"), float("nan")
    z = norm.ppf(1 - alpha / 2)
    se = float(np.sqrt(max(var, 0.0)))
    if method == "logit" and 0.0 < auc < 1.0:
        centre = np.log(auc / (1 - auc))
        half = z * se / (auc * (1 - auc))
        low, high = 1 / (1 + np.exp(-(centre - half))), 1 / (1 + np.exp(-(centre + half)))
    else:
        low, high = auc - z * se, auc + z * se
    return auc, float(np.clip(low, 0.0, 1.0)), float(np.clip(high, 0.0, 1.0))


def delong_test(y, scores_a, scores_b) -> dict:
    """DeLong test of two correlated ROC curves (two score vectors on the same cases).

    Returns ``{"auc_a", "auc_b", "diff", "se", "z", "p"}`` (two-sided p). When the variance of
    the difference is zero ``z = 0, p = 1`` if the AUCs are equal and ``z = ±inf, p = 0``
    otherwise. Identical score vectors give ``z = 0, p = 1`` even when the variance cannot be
    estimated (a class with one member); ``nan`` everywhere when a class is absent.
    """
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"score vectors differ in shape: {a.shape} vs {b.shape}")
    auc, v10, v01 = placement_values(y, np.stack([a, b]))
    nan = float("nan")
    if not np.isfinite(auc).all():
        return {"auc_a": nan, "auc_b": nan, "diff": nan, "se": nan, "z": nan, "p": nan}
    diff = float(auc[0] - auc[1])
    if np.array_equal(a, b):  # the same curve twice: no difference, whatever the sample size
        return {"auc_a": float(auc[0]), "auc_b": float(auc[1]), "diff": 0.0, "se": 0.0, "z": 0.0, "p": 1.0}
    cov = _delong_covariance(v10, v01)
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    return {"auc_a": float(auc[0]), "auc_b": float(auc[1]), "diff": diff, **_normal_test(diff, var)}


def _normal_test(estimate: float, var: float) -> dict:
    """``{"se", "z", "p"}`` of a two-sided normal test of ``estimate`` against 0. A zero variance
    gives ``z = 0, p = 1`` for a zero estimate and ``z = ±inf, p = 0`` otherwise; nan when unknown."""
    nan = float("nan")
    if not np.isfinite(var):
        return {"se": nan, "z": nan, "p": nan}
    if var <= 1e-15:
        z = 0.0 if abs(estimate) < 1e-12 else float(np.sign(estimate) * np.inf)
        return {"se": 0.0, "z": z, "p": 1.0 if z == 0.0 else 0.0}
    se = float(np.sqrt(var))
    z = estimate / se
    return {"se": se, "z": float(z), "p": float(2 * norm.sf(abs(z)))}


def pooled_difference(diffs, ses, alpha: float = 0.05) -> dict:
    """Fixed-effect (inverse-variance) pooling of differences measured on independent samples.

    Each benchmark of a synthetic study is a new draw of patients, and one test split of 70
    patients gives an AUC difference with a standard error of about 0.04. Pooling the DeLong
    differences of several independent benchmarks, each weighed by ``1 / se**2``, estimates the
    common difference with a standard error of ``1 / sqrt(sum of weights)``. Cochran's Q and
    ``I2 = max(0, (Q - (k - 1)) / Q)`` say whether the benchmarks disagree more than chance allows
    (then the common difference is a poor summary). Entries with a non-finite or zero ``se`` are
    left out. Returns ``{"k", "diff", "se", "ci", "z", "p", "q", "i2"}`` (``nan`` when none is left).
    """
    d = np.asarray(diffs, dtype=np.float64)
    s = np.asarray(ses, dtype=np.float64)
    if d.shape != s.shape:
        raise ValueError(f"diffs and ses differ in shape: {d.shape} vs {s.shape}")
    keep = np.isfinite(d) & np.isfinite(s) & (s > 0)
    d, s = d[keep], s[keep]
    nan = float("nan")
    if not d.size:
        return {"k": 0, "diff": nan, "se": nan, "ci": [nan, nan], "z": nan, "p": nan, "q": nan, "i2": nan}
    w = 1.0 / s**2
    diff = float(np.sum(w * d) / np.sum(w))
    se = float(1.0 / np.sqrt(np.sum(w)))
    z = diff / se
    half = float(norm.ppf(1 - alpha / 2)) * se
    q = float(np.sum(w * (d - diff) ** 2))
    i2 = max(0.0, (q - (d.size - 1)) / q) if q > 0 else 0.0
    return {"k": int(d.size), "diff": diff, "se": se, "ci": [diff - half, diff + half], "z": float(z),
            "p": float(2 * norm.sf(abs(z))), "q": q, "i2": float(i2)}


def delong_contrast(y, scores, weights, alpha: float = 0.05) -> dict:
    """A weighted sum of correlated AUCs measured on the same cases, with DeLong's covariance.

    ``scores`` (k, N) holds k score vectors on one set of N cases, ``weights`` (k,) the contrast:
    ``[1, -1]`` is :func:`delong_test`'s difference; ``[1/K, -1/K, 1/K, -1/K, ...]`` the mean over
    K models, each scored against its own baseline, on one shared test cohort. Such models are not
    independent samples (:func:`pooled_difference` would be too confident): the cases are the
    same, and the covariance of all k AUCs carries that. Returns ``{"estimate", "se", "ci", "z",
    "p"}`` (two-sided, against 0); ``nan`` when a class is absent or has one member.
    """
    w = np.asarray(weights, dtype=np.float64)
    auc, v10, v01 = placement_values(y, scores)
    if w.shape != auc.shape:
        raise ValueError(f"{auc.size} score vectors but {w.size} weights")
    nan = float("nan")
    if not np.isfinite(auc).all():
        return {"estimate": nan, "se": nan, "ci": [nan, nan], "z": nan, "p": nan}
    estimate = float(w @ auc)
    test = _normal_test(estimate, float(w @ _delong_covariance(v10, v01) @ w))
    half = float(norm.ppf(1 - alpha / 2)) * test["se"]
    return {"estimate": estimate, "se": test["se"], "ci": [estimate - half, estimate + half], "z": test["z"],
            "p": test["p"]}
