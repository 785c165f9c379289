"""The three model families: the seed's two MLPs (optionally with batch norm) and a small CNN.

Every model takes `N x 1 x 28 x 28` normalised images and returns `N x 10` logits
(CrossEntropyLoss applies the softmax), which is also the TorchScript contract.

The served model (`export_onnx`) wraps it so that the ONNX file takes pixels in [0, 1] in the
MNIST layout (`predict.to_mnist_layout`) and returns probabilities: normalisation lives in the
graph, so a predictor needs nothing but ONNX Runtime and the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from common import serving, torchkit
from mnist_classifier.src.data import CLASSES, MEAN, STD


class MLP(nn.Module):
    """784 -> hidden... -> 10 with ReLU; dropout and batch norm optional.

    `MLP((128, 64))` is the seed's baseline; `MLP((256, 128), dropout=0.2)` its improved model.
    """

    def __init__(self, hidden: tuple[int, ...] = (128, 64), dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = 28 * 28
        for size in hidden:
            # With batch norm right after it, the linear layer's bias is redundant.
            layers.append(nn.Linear(width, size, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, 10))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class CNN(nn.Module):
    """Conv-BN-ReLU blocks, max-pooling between them, global average pooling, one linear layer.

    Four blocks of (32, 64, 128, 128) channels at 28, 14, 7 and 3 pixels: 241 k parameters.
    The fourth block is cheap (it works on 3 x 3 maps) but necessary: it widens the receptive
    field from 15 to 31 pixels, so the pooled features see the whole digit (with three blocks
    validation accuracy stalled near 98%). Global pooling instead of a large dense layer keeps
    the model small; the random shifts of the augmentation do the rest."""

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 128), dropout: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for i, c_out in enumerate(channels):
            if i:
                layers.append(nn.MaxPool2d(2))
            layers += _conv_block(c_in, c_out)
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def export_torchscript(model: nn.Module, path: str | Path) -> Path:
    """Save `model` (eval mode, CPU) as TorchScript: loadable with `torch.jit.load`, no class needed."""
    return serving.save_torchscript(model, path)[0]


class ServingModel(nn.Module):
    """Pixels in [0, 1] (N x 1 x 28 x 28, MNIST layout) -> digit probabilities (N x 10)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels - MEAN) / STD).softmax(1)


SERVING_INPUT = "float32 N x 1 x 28 x 28, pixels in [0, 1], white digit on black in the MNIST layout"


def export_onnx(model: nn.Module, path: str | Path, *, name: str, training_run: dict[str, Any]) -> Path:
    """The served model as ONNX, checked against the eager model on batches of 1 and 7."""
    generator = torch.Generator().manual_seed(0)
    example, other = (torch.rand(n, 1, 28, 28, generator=generator) for n in (2, 7))
    metadata = {"class_names": list(CLASSES), "input": SERVING_INPUT, "mean": [MEAN], "std": [STD],
                "normalisation": "applied inside the graph", "model_name": name, "training_run": training_run}
    return serving.export_onnx(ServingModel(model.cpu()), example, path, metadata=metadata,
                               check_inputs=[other, example[:1]], atol=1e-4)


def save_state_dict(model: nn.Module, path: str | Path) -> Path:
    """The seed's `torch.save(model.state_dict(), "mnist_model.pth")`, written atomically."""
    return torchkit.save(model.state_dict(), path)
