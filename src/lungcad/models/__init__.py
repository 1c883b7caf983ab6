"""Model zoo: explicit registries of segmenters and classifiers, and run-folder (de)serialisation.

``create_segmenter`` / ``create_classifier`` build any registered architecture with random weights;
``save_run_model`` / ``load_run_model`` write and read ``model.json`` + ``checkpoints/best.safetensors``
so that prediction and evaluation need only the run folder.
"""

from .classification import CLASSIFIERS, create_classifier
from .run_io import load_run_model, save_run_model
from .segmentation import SEGMENTERS, create_segmenter

__all__ = [
    "CLASSIFIERS",
    "SEGMENTERS",
    "create_classifier",
    "create_segmenter",
    "load_run_model",
    "save_run_model",
]
