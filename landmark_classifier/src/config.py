"""The notebooks' settings, nanoGPT style: one frozen `Config` per profile (`PROFILES`, chosen with
`config_for(PROFILE)`), holding the training budgets for real photos and for the stand-in; and
where a run's caches and models go.

Budgets depend on the data. On real photos `full` is the run of record (the issue's targets on 2
CPU cores: transfer >= 99% test accuracy in under 10 minutes, scratch CNN >= 85% in under 30);
on the small generated stand-in every profile is kept to minutes; `tiny` (the tests) to seconds.
The metrics.json the notebooks share is written by `results.py`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common import paths
from common.profiles import choose
from common.transfer import FinetuneConfig
from landmark_classifier.src.openset import OpenSetConfig
from landmark_classifier.src.transfer import TransferConfig

PROJECT = "landmark_classifier"
PROJECT_DIR = paths.REPO_ROOT / PROJECT
CACHE_DIR = PROJECT_DIR / ".cache"  # decoded-image and activation caches (git-ignored)
PREDICTOR_STEM = "landmark_predictor"  # .onnx (served) and .pt (TorchScript, the seed's format)
PREDICTOR_FILE = f"{PREDICTOR_STEM}.onnx"
COMMITTED_PREDICTOR = PROJECT_DIR / "models" / PREDICTOR_FILE


def exported_dir(report_dir: str | os.PathLike) -> Path:
    """Where a run exports its predictor: `REPORT_DIR/models/`. The runner copies it into
    `landmark_classifier/models/` (committed) only for the run of record (full profile, real data)."""
    folder = Path(report_dir) / "models"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def models_dir(profile: str) -> Path:
    """Checkpoints and exported predictors of one profile (git-ignored: `landmark_classifier/models/`)."""
    folder = PROJECT_DIR / "models" / config_for(profile).name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass(frozen=True)
class ScratchConfig:
    image_size: int  # the training crop
    widths: tuple[int, ...]
    blocks_per_stage: int
    dropout: float
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    label_smoothing: float
    optimizer: str = "adamw"
    schedule: str = "onecycle"
    trivial_augment: bool = True
    mirror_eval: bool = True  # validate, test and serve on the mean of the image's and its mirror's logits

    @property
    def resize_size(self) -> int:
        """The short side images are decoded (and, in the predictor, resized) to before the centre crop."""
        return round(self.image_size * 8 / 7)


@dataclass(frozen=True)
class Budget:
    """What a profile trains on one kind of data."""
    scratch: ScratchConfig
    transfer: TransferConfig
    open_set: OpenSetConfig = OpenSetConfig()


@dataclass(frozen=True)
class Config:
    """One profile. Budgets depend on the data: real photos, or the small generated stand-in that
    every profile keeps to minutes (`standin_size`: the tests' tiny profile uses a smaller one)."""
    name: str
    real: Budget
    stand_in: Budget
    standin_size: str = "standard"

    def budget(self, stand_in: bool) -> Budget:
        return self.stand_in if stand_in else self.real


LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# On the stand-in TrivialAugment is off: it costs more CPU per image than the small network's forward
# and backward pass, and the budget is minutes.
# Stages of at least 16 channels: torch 2.15's CPU backward pass corrupts memory ("double free or
# corruption", exit 134/139) with 8-channel stages at batches of 17 or 19 images and 2+ threads
# (reproduced 2026-12-06: LandmarkCNN(3, (8, 16, 32)), 64 px); 16-32-64 passed every batch size tried.
_TINY_CNN = dict(widths=(16, 32, 64), blocks_per_stage=1, dropout=0.1, lr=3e-3, weight_decay=1e-4, label_smoothing=0.0)
_CNN = dict(blocks_per_stage=1, lr=3e-3, weight_decay=0.05, label_smoothing=0.1)
# The cached pass makes fine-tuning the last blocks cheap (seconds per epoch on 2 cores).
# `tiny` (the tests) walks full's code path with tiny budgets: two backbones at two decode sizes,
# a strength search, fine-tuning, the time budget; so what breaks `make run` breaks the tests.
_TINY_TRANSFER = dict(backbones=("efficientnet_lite0", "efficientnet_lite1"), top_blocks=1, Cs=(0.3, 1.0))
# The small stand-in has 4 classes: one held out at a time; few non-landmark photos for exposure.
_TINY_OPEN_SET = OpenSetConfig(heldout=1, rotations=2, per_source=20, scored_digits=20)

TINY = Config(
    "tiny",
    real=Budget(ScratchConfig(64, **_TINY_CNN, epochs=1, batch_size=32),
                TransferConfig(**_TINY_TRANSFER, finetune=FinetuneConfig(epochs=1, lr=3e-4), budget_seconds=1800),
                _TINY_OPEN_SET),
    stand_in=Budget(ScratchConfig(64, **_TINY_CNN, epochs=2, batch_size=16, trivial_augment=False),
                    TransferConfig(**_TINY_TRANSFER, finetune=FinetuneConfig(epochs=1, lr=3e-4, batch_size=16),
                                   budget_seconds=600), _TINY_OPEN_SET),
    standin_size="small",
)
QUICK = Config(
    "quick",
    real=Budget(ScratchConfig(96, (32, 64, 128, 256), dropout=0.3, epochs=10, batch_size=32, **_CNN),
                # a first look: Lite0's frozen features and a logistic head, no fine-tuning. Its cost is
                # decoding the photos and one trunk pass over them (cached: a second run takes seconds).
                TransferConfig(("efficientnet_lite0",), 2, (1.0, 3.0), None)),
    stand_in=Budget(ScratchConfig(64, (24, 48, 96, 192), dropout=0.2, epochs=8, batch_size=32, trivial_augment=False,
                                  **_CNN),
                    TransferConfig(("efficientnet_lite0",), 2, (0.3, 1.0), FinetuneConfig(epochs=4, lr=3e-4))),
)
FULL = Config(
    "full",
    # 112 px crops of photos decoded once at 128 px: ~50 s an epoch on 2 busy cores. The 10
    # minutes on 2 cores is for the chosen model's training; comparing the three backbones (a pass
    # over every photo and its mirror each) gets 30, so a busy machine skips some.
    real=Budget(ScratchConfig(112, (32, 64, 128, 256), dropout=0.3, epochs=40, batch_size=32, **_CNN),
                # Named by a frozen MobileNetV2's features beside the fine-tuned ones, their head's logits
                # added to the bank's vote (fusion.py): by 5-fold cross-validation on the training and
                # validation photos 97.40% (43 wrong), the bank's vote alone 96.86%, the linear head 96.14%
                # (models/fusion_cv.json). Both networks' frozen weights are stored float16 so each file
                # stays under 30 MB; the cost is a third of the tagging rate (a second network per photo).
                TransferConfig(LITE, 2, (0.3, 1.0, 3.0, 10.0), FinetuneConfig(epochs=2, lr=3e-4), budget_seconds=1800,
                               second_backbone="mobilenet_v2")),
    stand_in=Budget(ScratchConfig(80, (32, 64, 128, 256), dropout=0.2, epochs=30, batch_size=32, trivial_augment=False,
                                  **_CNN),
                    TransferConfig(LITE, 2, (0.3, 1.0, 3.0, 10.0), FinetuneConfig(epochs=8, lr=3e-4), budget_seconds=600)),
)
PROFILES = {config.name: config for config in (TINY, QUICK, FULL)}


def config_for(profile: str) -> Config:
    """The profile's `Config`, or a ValueError naming the profiles there are."""
    return choose(PROFILES, profile)
