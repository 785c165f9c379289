"""The models the notebook trains, in story order, and their epochs under a profile (`config.py`).

The seed's two MLPs keep the seed's settings exactly; each later model changes one
thing the seed listed as future work, so the comparison table reads as an ablation.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import nn

from mnist_classifier.src.config import Config
from mnist_classifier.src.model import CNN, MLP
from mnist_classifier.src.train import TrainConfig


@dataclass(frozen=True)
class Experiment:
    name: str          # file names; contains "cnn" exactly for convolutional models
    description: str
    build: Callable[[], nn.Module]
    config: TrainConfig


EXPERIMENTS = (
    Experiment("mlp_baseline", "the seed's baseline: 784-128-64-10, ReLU, Adam 1e-3, 5 epochs",
               lambda: MLP((128, 64)), TrainConfig(epochs=5, batch_size=64, optimizer="adam", lr=1e-3)),
    Experiment("mlp_improved", "the seed's improved MLP: 784-256-128-10, dropout 0.2, SGD momentum 0.9, 10 epochs",
               lambda: MLP((256, 128), dropout=0.2),
               TrainConfig(epochs=10, batch_size=64, optimizer="sgd", lr=0.01, momentum=0.9)),
    Experiment("mlp_bn_onecycle", "+ batch norm and a one-cycle learning-rate schedule (the seed's future work), "
                                  "15 epochs",
               lambda: MLP((256, 128), dropout=0.2, batch_norm=True),
               TrainConfig(epochs=15, batch_size=128, optimizer="sgd", lr=0.2, momentum=0.9, weight_decay=1e-4,
                           schedule="onecycle")),
    Experiment("mlp_bn_onecycle_aug", "+ random affine augmentation (rotation, scale, shift), 25 epochs",
               lambda: MLP((256, 128), dropout=0.2, batch_norm=True),
               TrainConfig(epochs=25, batch_size=128, optimizer="sgd", lr=0.2, momentum=0.9, weight_decay=1e-4,
                           schedule="onecycle", augment=True)),
    Experiment("cnn", "CNN: 4 conv-BN-ReLU blocks (32-64-128-128), global pooling, augmentation, one-cycle SGD, "
                      "early stopping",
               lambda: CNN((32, 64, 128, 128)),
               TrainConfig(epochs=12, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                           schedule="onecycle", augment=True, patience=5)),
)


def experiments(config: Config) -> list[Experiment]:
    """EXPERIMENTS with epochs scaled by `config.epoch_scale` (at least one epoch each)."""
    scale = config.epoch_scale
    return [replace(e, config=replace(e.config, epochs=max(1, round(e.config.epochs * scale))))
            for e in EXPERIMENTS]
