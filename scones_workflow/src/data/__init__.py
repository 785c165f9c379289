"""The images: staging (DATA_DIR/scones, else CIFAR-100, else a generated stand-in), the `.lst` files
SageMaker's algorithm reads, and the upload to S3.

    staging.py   stage(), load_arrays(), upload(): the entry points (re-exported here)
    lst.py       the .lst format and the PNG folders beside it; CLASSES, SPLITS
    cifar.py     CIFAR-100 download (md5-checked) and extraction of the two classes
    stand_in.py  the offline stand-in: generated drawings in the same layout
"""
from .lst import CLASSES, SPLITS
from .staging import SconesData, load_arrays, open_folder, stage, upload

__all__ = ["CLASSES", "SPLITS", "SconesData", "load_arrays", "open_folder", "stage", "upload"]
