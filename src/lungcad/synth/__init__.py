"""Synthetic chest-CT phantoms written in every dataset's native layout (DATASETS.md).

``generate(out, patients, seed)`` writes LIDC-IDRI, LUNA16, MSD Task06, LNDb, LungCT-Diagnosis
and Lung-PET-CT-Dx trees plus ``synth_truth.json``; ``make_phantom`` builds one volume.
"""

from .generate import SOURCES, TRUTH_FILE, generate
from .phantom import NoduleSpec, Phantom, draw_nodule_params, make_phantom, malignancy_logit

__all__ = ["SOURCES", "TRUTH_FILE", "generate", "make_phantom", "Phantom", "NoduleSpec", "draw_nodule_params",
           "malignancy_logit"]
