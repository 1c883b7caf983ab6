"""benchmarks/core_slices.py: which core slices on predicted masks show the patient's nodule."""


import numpy as np
import pandas as pd
import pytest
from PIL import Image



@pytest.fixture(scope="module")
def core(benchmark_script):
    return benchmark_script("core_slices")


def _square(y, x, side, size=32):
    mask = np.zeros((size, size), bool)
    mask[y:y + side, x:x + side] = True
    return mask


def test_a_false_positive_larger_than_the_nodule_is_what_the_core_slices_show(core, tmp_path):
    # (patient, label): per slice, the reference nodule and the predicted mask (None: empty).
    nodule = _square(4, 4, 4)
    cases = {
        "a": (1, [(nodule, nodule | _square(20, 20, 2)), (nodule, nodule)]),       # found, speck beside it
        "b": (0, [(nodule, nodule | _square(20, 20, 6)), (nodule, _square(20, 20, 6))]),  # a larger vessel
        "c": (0, [(nodule, None), (nodule, _square(4, 4, 2))]),                      # only a small bit of it
    }
    rows = []
    for pid, (label, slices) in cases.items():
        for k, (reference, predicted) in enumerate(slices):
            image = f"images/ds/{pid}/s{k}.png"
            mask = f"masks/ds/{pid}/s{k}.png"
            for folder, path, array in (("bench", mask, reference),
                                        ("pred", image.replace("images/", ""), predicted)):
                (tmp_path / folder / path).parent.mkdir(parents=True, exist_ok=True)
                data = np.zeros((32, 32), bool) if array is None else array
                Image.fromarray(data.astype(np.uint8) * 255).save(tmp_path / folder / path)
            rows.append({"patient_id": pid, "label": label, "dataset": "ds", "image_path": image, "mask_path": mask})
    table = core.slice_table(tmp_path / "bench", tmp_path / "pred", pd.DataFrame(rows))
    assert list(table["on_nodule"]) == [True, True, False, False, True]      # c's empty slice is not a row
    summary = core.summarise(table, 0.5)
    # a: both slices (20 and 16 px) are core, both on the nodule. b: the 52 px and 36 px slices are core
    # and their largest component is the 36 px vessel. c: one slice.
    assert summary["core_slices"] == 5 and summary["share_on_nodule"] == pytest.approx(3 / 5)
    assert summary["patients_with_none_on_nodule"] == 1 and summary["patients_with_none_by_label"] == {"0": 1, "1": 0}
    assert summary["patients_by_label"] == {"0": 2, "1": 1}
    assert core.summarise(table, 0.9)["core_slices"] == 3       # a's 16 px and b's 36 px slices drop out
