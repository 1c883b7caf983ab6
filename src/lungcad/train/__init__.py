"""Training: presets, losses, the Lightning engine and the two task entry points.

``train_segmenter`` (``lungcad train-seg``) and ``train_classifier`` (``lungcad train-cls``) write run
folders as DESIGN.md section 4 describes.
"""

from .cls import train_classifier
from .seg import train_segmenter

__all__ = ["train_classifier", "train_segmenter"]
