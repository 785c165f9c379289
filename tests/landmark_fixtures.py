"""Generated landmark images and a tiny exported predictor, shared by the landmark tests (no network)."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from common.transfer import Classifier
from landmark_classifier.src import data, export, model, standin_photos

CLASSES = 3


def toy_classifier(classes: int = CLASSES) -> Classifier:
    """A tiny trunk / top / linear head model with the transfer Classifier's parts (seeded)."""
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU())
    top = nn.Sequential(nn.Conv2d(4, 6, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(trunk, top, nn.Linear(6, classes)).eval()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> data.LandmarkData:
    """3 classes x (6 train + 2 test) generated scenes in the real dataset's folder layout."""
    root = standin_photos.generate(tmp_path_factory.mktemp("landmarks") / "landmark_images",
                            classes=CLASSES, train_per_class=6, test_per_class=2, seed=1)
    names = data.validate_layout(root, CLASSES)
    return data.LandmarkData(root, names, "test fixture", True, counts=data.layout_counts(root, names))


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_dataset) -> export.Exported:
    """An untrained scratch CNN exported as the deployable pair (ONNX + TorchScript)."""
    torch.manual_seed(0)
    cnn = model.LandmarkCNN(CLASSES, (8, 16), dropout=0.0).eval()
    preprocessing = export.Preprocessing(73, 64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), mirror=True)
    card = export.ModelCard(tiny_dataset.class_names, "tiny test CNN", {"profile": "test"}, tiny_dataset.display_names)
    exported = export.export_predictor(cnn, preprocessing, card, tmp_path_factory.mktemp("predictor"))
    exported.eager = export.ServingModel(cnn, preprocessing, tiny_dataset.class_names).eval()
    return exported


@pytest.fixture(scope="session")
def tiny_predictor(tiny_export) -> tuple[Path, torch.nn.Module]:
    """(path of the exported ONNX predictor, its eager twin)."""
    return tiny_export.onnx_path, tiny_export.eager


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
