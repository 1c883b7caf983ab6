"""The size head (lungcad.patient_head): its formula, its fit and its file."""

import json
import math

import numpy as np
import pytest

from lungcad.errors import LungcadError
from lungcad.features import size_value
from lungcad.patient_head import HEAD_FILE, PatientHead, image_logit


def _cohort(n=400, seed=0):
    """Patients whose label depends on size and on an image score that size does not explain."""
    rng = np.random.default_rng(seed)
    diameter = np.exp(rng.uniform(np.log(4), np.log(30), n))
    shape = rng.normal(0, 1, n)                       # what only the image shows
    logit = 2.5 * np.log(diameter / 10) + 1.5 * shape
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    prob = 1 / (1 + np.exp(-(1.5 * shape + rng.normal(0, 0.3, n))))   # the network sees the shape only
    return prob, diameter, label


def test_formula_by_hand():
    head = PatientHead(mean=[0.5, 0.2], scale=[2.0, 0.1], coef=[0.8, 1.5], intercept=-0.3,
                       n_patients=20, n_malignant=10)
    p, d = 0.9, 12.0
    z_image = (math.log(0.9 / 0.1) - 0.5) / 2.0
    z_size = (size_value(12.0) - 0.2) / 0.1
    expected = 1 / (1 + math.exp(-(-0.3 + 0.8 * z_image + 1.5 * z_size)))
    got = head.predict_proba([p, 0.0], [d, 0.0])
    assert got[0] == pytest.approx(expected)
    assert got[1] == 0.0                              # nothing found: a benign call, as for the network
    assert image_logit([0.0, 1.0]) == pytest.approx([math.log(1e-4 / (1 - 1e-4)), math.log((1 - 1e-4) / 1e-4)])


def test_fit_weighs_both_pieces_of_evidence_and_beats_each():
    from sklearn.metrics import roc_auc_score

    prob, diameter, label = _cohort()
    head = PatientHead.fit(prob, diameter, label)
    assert head.coef[0] > 0.5 and head.coef[1] > 0.5   # both informative, both kept
    assert head.n_patients == 400 and head.n_malignant == int(label.sum())
    fresh = _cohort(seed=1)                            # new patients from the same cohort
    auc_head = roc_auc_score(fresh[2], head.predict_proba(fresh[0], fresh[1]))
    assert auc_head > roc_auc_score(fresh[2], fresh[1]) + 0.05    # above diameter alone
    assert auc_head > roc_auc_score(fresh[2], fresh[0]) + 0.05    # above the image alone


def test_an_uninformative_image_score_gets_little_weight():
    prob, diameter, label = _cohort()
    noise = np.random.default_rng(5).random(len(prob))
    head = PatientHead.fit(noise, diameter, label)
    assert abs(head.coef[0]) < 0.3 < head.coef[1]


def test_too_few_patients_or_one_class_is_a_clear_error():
    with pytest.raises(LungcadError, match="at least 10 val patients"):
        PatientHead.fit([0.5] * 5, [10.0] * 5, [0, 1, 0, 1, 0])
    with pytest.raises(LungcadError, match="both classes"):
        PatientHead.fit(np.linspace(0.1, 0.9, 12), np.linspace(5, 20, 12), [1] * 12)


def test_save_and_load_round_trip_and_bad_files(tmp_path):
    prob, diameter, label = _cohort(n=60)
    head = PatientHead.fit(prob, diameter, label)
    path = head.save(tmp_path, {"val_auc_in_sample": {"size_head": 0.9}})
    assert path == tmp_path / HEAD_FILE
    loaded = PatientHead.load(tmp_path)
    assert loaded == head
    np.testing.assert_allclose(loaded.predict_proba(prob, diameter), head.predict_proba(prob, diameter))
    assert json.loads(path.read_text())["val_auc_in_sample"] == {"size_head": 0.9}
    assert PatientHead.load(tmp_path / "elsewhere") is None
    path.write_text(json.dumps({"coef": [1.0]}))
    with pytest.raises(LungcadError, match=HEAD_FILE):
        PatientHead.load(tmp_path)
    data = head.describe()
    data["coef"] = [float("nan"), 1.0]
    path.write_text(json.dumps(data))
    with pytest.raises(LungcadError, match="finite"):
        PatientHead.load(tmp_path)
