"""Hand-worked cases of the label rules (DESIGN.md section 5)."""

import pytest

from lungcad.errors import LungcadError
from lungcad.ingest.labels import lidc_nodule_label, unify_patient


@pytest.mark.parametrize("ratings, expected", [
    ((3, 4, 2), 0),        # only two readers rate >= 3
    ((3, 3, 4), 1),        # three readers rate >= 3 (3 counts: the paper's lenient rule)
    ((5, 5, 5, 4), 1),
    ((2, 2, 1, 1), 0),
    ((3, 3, 3, 1), 1),
    ((5, 5), 0),           # two readers can never reach three votes
    ((4,), 0),
    ((5, None, 4, 3), 1),  # a reader without a rating does not vote
])
def test_paper_rule(ratings, expected):
    assert lidc_nodule_label(ratings, "paper") == expected


@pytest.mark.parametrize("ratings, expected", [
    ((3, 4, 2), None),     # median 3: indeterminate, excluded
    ((3, 3, 4), None),     # median 3
    ((5, 5, 5, 4), 1),     # median 5
    ((3, 4, 4, 5), 1),     # median 4
    ((1, 2, 2, 3), 0),     # median 2
    ((2, 4), None),        # median of an even count: (2 + 4) / 2 = 3
    ((2, 5), 1),           # median 3.5
    ((1, 4), 0),           # median 2.5
])
def test_median_rule(ratings, expected):
    assert lidc_nodule_label(ratings, "median") == expected


def test_rules_disagree_on_indeterminate_nodules():
    # (3, 3, 4): malignant for the paper, excluded for the median rule
    assert lidc_nodule_label([3, 3, 4], "paper") == 1
    assert lidc_nodule_label([3, 3, 4], "median") is None


@pytest.mark.parametrize("rule", ["paper", "median"])
def test_unrated_nodule_has_no_label(rule):
    assert lidc_nodule_label([], rule) is None
    assert lidc_nodule_label([None, None], rule) is None


def test_unknown_rule_is_a_user_error():
    with pytest.raises(LungcadError, match="mean"):
        lidc_nodule_label([3, 4], "mean")


@pytest.mark.parametrize("labels, expected", [
    ([0, 0, 1], 1),
    ([0, None, 0], 0),
    ([None, None], None),
    ([], None),
    ([1], 1),
    ([-1, 0], 0),          # -1 = unknown (per-slice convention)
    ([-1, None], None),
])
def test_unify_patient(labels, expected):
    assert unify_patient(labels) == expected
