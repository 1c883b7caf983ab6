"""benchmarks/synth_ceiling.py: the truth-only scores on a hand-made truth file."""

import importlib.util
import math
from pathlib import Path

import pytest

from lungcad.synth import malignancy_logit

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "synth_ceiling.py"


@pytest.fixture(scope="module")
def ceiling():
    spec = importlib.util.spec_from_file_location("synth_ceiling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
