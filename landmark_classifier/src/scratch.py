"""The from-scratch CNN's training run: loaders over the cached small tensors, the model, `train.fit`.

One function, `train_scratch`, so that the notebook and a resumed run do exactly the same thing.
Its checkpoints live in a folder named after the configuration and the data (`checkpoint_dir`):
a run interrupted (or stopped by a cell time-out) resumes where it was, and never from the
checkpoint of another configuration or dataset. The training time reported is the sum of the
epochs' times, so it is the same whether the epochs ran in one go or across a resume.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from common.training import History, get_loss, get_optimizer, get_scheduler
from landmark_classifier.src import data, model, train
from landmark_classifier.src.config import ScratchConfig

EVAL_BATCH = 128


@dataclass
class ScratchRun:
    model: model.LandmarkCNN
    history: History
    train_seconds: float  # sum of the epochs' wall times
    checkpoint_dir: Path
    resumed_epochs: int  # epochs that had run before this call (0: trained here from scratch)


def checkpoint_dir(root: Path, config: ScratchConfig, landmarks: data.LandmarkData, seed: int = 0) -> Path:
    key = json.dumps({"config": asdict(config), "classes": landmarks.class_names, "counts": landmarks.counts,
                      "root": str(landmarks.root), "seed": seed}, sort_keys=True, default=str)
    return Path(root) / f"scratch_{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def eval_loader(images: torch.Tensor, labels: torch.Tensor, splits: data.Splits, config: ScratchConfig):
    transform = data.eval_transform(config.image_size, splits.mean, splits.std, config.resize_size)
    return data.make_loader(images, labels, transform, batch_size=EVAL_BATCH, shuffle=False)


def train_scratch(splits: data.Splits, config: ScratchConfig, device: torch.device, checkpoints: Path,
                  seed: int = 0) -> ScratchRun:
    """Train `LandmarkCNN` on `splits` (decoded at `config.resize_size`) as `config` says, resuming
    from `checkpoints/last.pt` when an earlier run of the same configuration left one."""
    if splits.size != config.resize_size:
        raise ValueError(f"the splits are decoded at {splits.size} px; this configuration needs {config.resize_size}")
    torch.manual_seed(seed)
    cnn = model.LandmarkCNN(len(splits.class_names), config.widths, config.blocks_per_stage, config.dropout)
    cnn = cnn.to(memory_format=torch.channels_last)
    train_loader = data.make_loader(*splits.train, data.train_transform(config.image_size, splits.mean, splits.std,
                                                                        trivial_augment=config.trivial_augment),
                                    batch_size=config.batch_size, shuffle=True, seed=seed)
    valid_loader = eval_loader(*splits.valid, splits, config)
    optimizer = get_optimizer(cnn, config.optimizer, config.lr, config.weight_decay)
    opt = train.Optimisation(get_loss(config.label_smoothing), optimizer,
                             get_scheduler(optimizer, config.schedule, config.epochs * len(train_loader)), config.epochs)
    last = Path(checkpoints) / "last.pt"
    before = torch.load(last, weights_only=False)["epoch"] if last.exists() else 0
    history = train.fit(cnn, (train_loader, valid_loader), opt, device=device, checkpoint_dir=checkpoints,
                        resume=True, desc="scratch CNN epochs", mirror=config.mirror_eval)
    return ScratchRun(cnn.eval(), history, round(sum(history.epoch_seconds), 1), Path(checkpoints), before)
