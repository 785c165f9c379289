"""The notebooks' settings: the profiles, the training budgets per profile and data kind, and where
a run's caches and models go.

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
from common.transfer import FinetuneConfig
from landmark_classifier.src.transfer import TransferConfig

PROJECT = "landmark_classifier"
PROJECT_DIR = paths.REPO_ROOT / PROJECT
CACHE_DIR = PROJECT_DIR / ".cache"  # decoded-image and activation caches (git-ignored)
PREDICTOR_STEM = "landmark_predictor"  # .onnx (served) and .pt (TorchScript, the seed's format)
PREDICTOR_FILE = f"{PREDICTOR_STEM}.onnx"
COMMITTED_PREDICTOR = PROJECT_DIR / "models" / PREDICTOR_FILE
PROFILES = ("tiny", "quick", "full")


def exported_dir(report_dir: str | os.PathLike) -> Path:
    """Where a run exports its predictor: `REPORT_DIR/models/`. The runner copies it into
    `landmark_classifier/models/` (committed) only for the run of record (full profile, real data)."""
    folder = Path(report_dir) / "models"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def models_dir(profile: str) -> Path:
    """Checkpoints and exported predictors of one profile (git-ignored: `landmark_classifier/models/`)."""
    check_profile(profile)
    folder = PROJECT_DIR / "models" / profile
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")


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


_SCRATCH = {
    # (profile, stand_in) -> config. On the stand-in TrivialAugment is off: it costs more CPU per
    # image than the small network's forward and backward pass, and the budget is minutes.
    ("tiny", True): ScratchConfig(64, (8, 16, 32), 1, 0.1, 2, 16, 3e-3, 1e-4, 0.0, trivial_augment=False),
    ("quick", True): ScratchConfig(64, (24, 48, 96, 192), 1, 0.2, 8, 32, 3e-3, 0.05, 0.1, trivial_augment=False),
    ("full", True): ScratchConfig(80, (32, 64, 128, 256), 1, 0.2, 30, 32, 3e-3, 0.05, 0.1, trivial_augment=False),
    ("tiny", False): ScratchConfig(64, (8, 16, 32), 1, 0.1, 1, 32, 3e-3, 1e-4, 0.0),
    ("quick", False): ScratchConfig(96, (32, 64, 128, 256), 1, 0.3, 10, 32, 3e-3, 0.05, 0.1),
    # 112 px crops of photos decoded once at 128 px: ~50 s an epoch on 2 busy cores
    ("full", False): ScratchConfig(112, (32, 64, 128, 256), 1, 0.3, 40, 32, 3e-3, 0.05, 0.1),
}

LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
_TRANSFER = {
    # The cached pass makes fine-tuning the last blocks cheap (seconds per epoch on 2 cores).
    # `tiny` (the tests) walks full's code path with tiny budgets: two backbones at two decode sizes,
    # a strength search, fine-tuning, the time budget; so what breaks `make run` breaks the tests.
    ("tiny", True): TransferConfig(("efficientnet_lite0", "efficientnet_lite1"), 1, (0.3, 1.0),
                                   FinetuneConfig(epochs=1, lr=3e-4, batch_size=16), budget_seconds=600),
    ("quick", True): TransferConfig(("efficientnet_lite0",), 2, (0.3, 1.0), FinetuneConfig(epochs=4, lr=3e-4)),
    ("full", True): TransferConfig(LITE, 2, (0.3, 1.0, 3.0, 10.0), FinetuneConfig(epochs=8, lr=3e-4),
                                   budget_seconds=600),
    ("tiny", False): TransferConfig(("efficientnet_lite0", "efficientnet_lite1"), 1, (0.3, 1.0),
                                    FinetuneConfig(epochs=1, lr=3e-4), budget_seconds=1800),
    # quick, a first look: Lite0's frozen features and a logistic head, no fine-tuning. Its cost is
    # decoding the photos and one trunk pass over them (cached: a second run takes seconds).
    ("quick", False): TransferConfig(("efficientnet_lite0",), 2, (1.0, 3.0), None),
    # The 10 minutes on 2 cores is for the chosen model's training; comparing the three
    # backbones (a pass over every photo and its mirror each) gets 30, so a busy machine skips some.
    ("full", False): TransferConfig(LITE, 2, (0.3, 1.0, 3.0, 10.0), FinetuneConfig(epochs=2, lr=3e-4),
                                    budget_seconds=1800),
}


def scratch_config(profile: str, stand_in: bool) -> ScratchConfig:
    check_profile(profile)
    return _SCRATCH[(profile, stand_in)]


def transfer_config(profile: str, stand_in: bool) -> TransferConfig:
    check_profile(profile)
    return _TRANSFER[(profile, stand_in)]


def standin_size(profile: str) -> str:
    """The tests' tiny profile uses a smaller stand-in than quick and full."""
    check_profile(profile)
    return "small" if profile == "tiny" else "standard"

