"""lungcad: lung-nodule CT analysis (harmonized benchmark, segmentation, malignancy classification)."""

__version__ = "0.1.0"
