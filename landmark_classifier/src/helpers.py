"""What the three notebooks share: budgets per profile, where models go, the shared metrics.json.

Budgets depend on the data: on the real dataset `full` is the run of record (the issue's
targets: scratch CNN >= 65% in under 60 minutes, transfer >= 88% in under 10, on 2 CPU cores);
on the small generated stand-in every profile is kept to minutes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import paths, report
from landmark_classifier.src.data import LandmarkData

PROJECT = "landmark_classifier"
TITLE = "Landmark classification (CNN from scratch, transfer learning, TorchScript predictor)"
PROJECT_DIR = paths.REPO_ROOT / PROJECT
CACHE_DIR = PROJECT_DIR / ".cache"  # decoded-image caches (git-ignored)
PREDICTOR_FILE = "landmark_predictor.pt"
PROFILES = ("tiny", "quick", "full")


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
    image_size: int
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

    @property
    def resize_size(self) -> int:
        """The short side images are decoded (and, in the predictor, resized) to before the centre crop."""
        return round(self.image_size * 256 / 224)


@dataclass(frozen=True)
class TransferConfig:
    backbones: tuple[str, ...]
    head_epochs: int
    head_lr: float
    finetune_epochs: int
    trainable_stages: int
    finetune_lr: float
    batch_size: int = 32
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1


ALL_BACKBONES = ("efficientnet_lite0", "resnet18", "efficientnet_b0", "convnext_tiny")

_SCRATCH = {
    # (profile, stand_in) -> config. On the stand-in TrivialAugment is off: it costs more CPU per
    # image than the small network's forward and backward pass, and the budget is minutes.
    ("tiny", True): ScratchConfig(64, (8, 16, 32), 1, 0.1, 2, 16, 3e-3, 1e-4, 0.0, trivial_augment=False),
    ("quick", True): ScratchConfig(64, (24, 48, 96, 192), 1, 0.2, 8, 32, 3e-3, 0.05, 0.1, trivial_augment=False),
    ("full", True): ScratchConfig(80, (32, 64, 128, 256), 1, 0.2, 30, 32, 3e-3, 0.05, 0.1, trivial_augment=False),
    ("tiny", False): ScratchConfig(64, (8, 16, 32), 1, 0.1, 1, 32, 3e-3, 1e-4, 0.0),
    ("quick", False): ScratchConfig(112, (32, 64, 128, 256), 1, 0.3, 6, 64, 3e-3, 0.05, 0.1),
    # Not yet run on the real data here (it is not available): sized from throughput measured on
    # the stand-in to fit the 60-minute budget on 2 cores; the 65% target is unverified.
    ("full", False): ScratchConfig(128, (32, 64, 128, 256), 1, 0.3, 35, 64, 3e-3, 0.05, 0.1),
}

_TRANSFER = {
    # Fine-tuning on the stand-in's 288 training images has not beaten the frozen backbone (measured:
    # 0.944 -> 0.944 validation accuracy at lr 1e-4, lower at 3e-4); it runs to show the path works.
    ("tiny", True): TransferConfig(("efficientnet_lite0",), 10, 3e-3, 1, 1, 1e-4, batch_size=16),
    ("quick", True): TransferConfig(ALL_BACKBONES, 40, 3e-3, 0, 0, 1e-4),
    ("full", True): TransferConfig(ALL_BACKBONES, 60, 3e-3, 1, 2, 1e-4),
    ("tiny", False): TransferConfig(("efficientnet_lite0",), 5, 3e-3, 0, 0, 1e-4),
    ("quick", False): TransferConfig(ALL_BACKBONES, 40, 3e-3, 0, 0, 1e-4),
    ("full", False): TransferConfig(ALL_BACKBONES, 60, 3e-3, 1, 2, 1e-4),
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


def update_metrics(report_dir: str | os.PathLike, *, profile: str, data: LandmarkData,
                   summary: dict[str, Any] | None = None, tables: list[dict] | None = None,
                   figures: list[dict] | None = None, **sections: Any) -> Path:
    """Read-modify-write the project's metrics.json: each notebook adds its own entries.

    Tables and figures replace those of the same title (re-running one notebook does not
    duplicate them); a file left by a run of another profile is started afresh."""
    folder = Path(report_dir)
    metrics: dict[str, Any] = {}
    if (folder / "metrics.json").exists():
        metrics = report.read_metrics(folder)
        if metrics.get("profile") != profile:
            metrics = {}
    metrics.update(project=PROJECT, title=TITLE, profile=profile,
                   data={"source": data.source, "stand_in": data.stand_in, "note": data.note})
    metrics.setdefault("summary", {}).update(summary or {})
    for key, new in (("tables", tables or []), ("figures", figures or [])):
        titles = {item["title"] for item in new}
        metrics[key] = [item for item in metrics.get(key, []) if item["title"] not in titles] + new
    metrics.update(sections)
    return report.write_metrics(folder, metrics)
