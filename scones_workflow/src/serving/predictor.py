"""Serve the exported model with ONNX Runtime: image bytes -> class probabilities. Imports no torch.

The .onnx file is the whole model (`model.export` writes it): the graph takes a uint8 N x 3 x H x W
RGB batch of any size and resizes, normalises and (optionally) flips inside; class names and the
input contract are in its metadata. This module only decodes the request (`common.images.load_image`,
which refuses non-images, truncated files and decompression bombs with a message) and runs it.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from common.images import load_image
from common.serving import ModelFileError, OnnxModel, load_onnx

PROJECT_DIR = Path(__file__).resolve().parents[2]
MODEL_NAME = "scones_classifier.onnx"
COMMITTED_MODEL = PROJECT_DIR / "models" / MODEL_NAME  # the run of record's model, committed
CONTAINER_MODEL = Path("/opt/ml/model/model.onnx")     # where SageMaker unpacks model.tar.gz


def default_model() -> Path:
    """$SCONES_MODEL, else the container's /opt/ml/model/model.onnx when it exists, else the committed model."""
    if os.environ.get("SCONES_MODEL"):
        return Path(os.environ["SCONES_MODEL"])
    return CONTAINER_MODEL if CONTAINER_MODEL.is_file() else COMMITTED_MODEL


class Predictor:
    """Image bytes -> [p_bicycle, p_motorcycle]; safe to call from many threads.

    One request is too small to split across cores, so each run uses one ONNX Runtime thread (set on
    the session, not process-wide) and up to `concurrency` runs (default: one per core) go at once;
    ONNX Runtime releases the GIL while it computes, so the runs really are parallel."""

    def __init__(self, model_path: str | Path, *, threads: int = 1, concurrency: int | None = None) -> None:
        path = Path(model_path)
        if path.suffix != ".onnx":
            raise ModelFileError(f"{path}: expected an ONNX model (.onnx) written by `python -m scones_workflow "
                                 f"train`; TorchScript files are no longer served")
        self.model: OnnxModel = load_onnx(path, threads=threads)
        self.class_names = self.model.class_names
        if self.model.input_type != "tensor(uint8)":
            raise ModelFileError(f"{path}: the model takes {self.model.input_type}; the server sends "
                                 f"uint8 N x 3 x H x W images")
        self.path = path
        self.metadata = self.model.metadata
        self._slots = threading.BoundedSemaphore(concurrency or os.cpu_count() or 1)

    def __call__(self, data: bytes) -> list[float]:
        image = load_image(data, name="request body")  # ImageError for anything that is not a valid image
        batch = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)[None])
        with self._slots:
            return self.model.run(batch)[0].tolist()

    def predict_arrays(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Probabilities for decoded images (N x H x W x 3 uint8, one size)."""
        batches = [np.ascontiguousarray(images[i:i + batch_size].transpose(0, 3, 1, 2))
                   for i in range(0, len(images), batch_size)]
        return np.concatenate([self.model.run(b) for b in batches])
