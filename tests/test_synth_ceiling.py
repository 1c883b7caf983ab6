"""benchmarks/synth_ceiling.py: the truth-only scores on a hand-made truth file."""

import math

import pytest

from lungcad.synth import malignancy_logit



@pytest.fixture(scope="module")
def ceiling(benchmark_script):
    return benchmark_script("synth_ceiling")


def _nodule(d, shape, density):
    return {"diameter_mm": d, "shape": shape, "density": density}


def test_patient_truth_takes_the_most_malignant_nodule_and_hides_calcium(ceiling):
    truth = {"sources": {"lidc-idri": {"patients": [
        # The large calcified nodule is the largest; the small spiculated one the most malignant.
        {"patient_id": "P1", "nodules": [_nodule(20.0, "smooth", "calcified"), _nodule(8.0, "spiculated", "solid")]},
    ]}}}
    row = ceiling.patient_truth(truth).loc["lidc-idri/P1"]
    assert row["true_diameter"] == 20.0
    spiculated = malignancy_logit(8.0, "spiculated", "solid")
    calcified_as_solid = malignancy_logit(20.0, "smooth", "solid")
    assert malignancy_logit(20.0, "smooth", "calcified") < spiculated < calcified_as_solid
    assert row["noise_free_logit"] == pytest.approx(spiculated)
    assert row["noise_free_logit_visible"] == pytest.approx(calcified_as_solid)
    # The fitted oracle sees the largest nodule, with its calcium invisible.
    assert row["log_diameter"] == pytest.approx(math.log(20.0))
    assert (row["shape"], row["density"]) == ("smooth", "solid")
    design = ceiling._design(ceiling.patient_truth(truth))
    assert design.tolist() == [[math.log(20.0), 0.0, 0.0, 0.0, 0.0]]


def _frame(ceiling, n=60, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    shapes = ["smooth", "lobulated", "spiculated"]
    densities = ["solid", "part-solid", "ground-glass"]
    truth = {"sources": {"lidc-idri": {"patients": [
        {"patient_id": f"P{i}", "nodules": [_nodule(float(rng.uniform(4, 30)), shapes[i % 3], densities[(i // 3) % 3])]}
        for i in range(n)]}}}
    return ceiling.patient_truth(truth), rng


def _sigmoid(x):
    import numpy as np

    return 1.0 / (1.0 + np.exp(-x))


def test_score_content_separates_a_size_only_score_from_one_that_sees_morphology(ceiling):
    import numpy as np

    frame, rng = _frame(ceiling, n=300)
    size_logit = 2.0 * frame["log_diameter"].to_numpy()
    noise = rng.normal(0.0, 0.3, len(frame))
    # The morphology term is the model's: spiculated minus smooth is 1.3 - (-0.5).
    row = frame.loc["lidc-idri/P2"]
    assert (row["shape"], row["density"]) == ("spiculated", "solid")
    assert row["morphology_term"] == pytest.approx(1.8)

    sees = ceiling.score_content(frame, _sigmoid(size_logit - 5.0 + frame["morphology_term"].to_numpy() + noise))
    assert sees["n"] == len(frame)
    assert sees["r2_size_morphology"] > sees["r2_size"] + 0.2
    assert sees["f_p"] < 1e-6
    assert sees["partial_r_morphology"] > 0.8 and sees["partial_r_ci"][0] > 0.6

    size_only = ceiling.score_content(frame, _sigmoid(size_logit - 5.0 + noise))
    assert size_only["r2_size"] > 0.8
    assert size_only["f_p"] > 0.01
    lo, hi = size_only["partial_r_ci"]
    assert abs(size_only["partial_r_morphology"]) < 0.2 and lo < size_only["partial_r_morphology"] < hi
    assert hi - lo == pytest.approx(2 * 1.96 / np.sqrt(len(frame) - 4), abs=0.02)  # Fisher z near r = 0
