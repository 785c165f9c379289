"""Generated landmark images and a tiny exported predictor, shared by the landmark tests (no network)."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from landmark_classifier.src import data, model, predictor, standin

CLASSES = 3


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> data.LandmarkData:
    """3 classes x (6 train + 2 test) generated scenes in the real dataset's folder layout."""
    root = standin.generate(tmp_path_factory.mktemp("landmarks") / "landmark_images",
                            classes=CLASSES, train_per_class=6, test_per_class=2, seed=1)
    return data.LandmarkData(root, data.validate_layout(root, CLASSES), "test fixture", True)


@pytest.fixture(scope="session")
def tiny_predictor(tmp_path_factory, tiny_dataset) -> tuple[Path, torch.nn.Module]:
    """An untrained scratch CNN exported as a TorchScript predictor, and its eager twin."""
    torch.manual_seed(0)
    cnn = model.LandmarkCNN(CLASSES, (8, 16), dropout=0.0).eval()
    args = (tiny_dataset.class_names, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], 73, 64)
    path, _ = predictor.export(cnn, *args, tmp_path_factory.mktemp("predictor") / "predictor.pt")
    return path, predictor.Predictor(cnn, *args).eval()


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
