"""The scratch CNN's training: train and validate loops (tqdm progress, per-batch learning-rate
history, checkpoints, resume) and `train_scratch`, the run the notebook makes with them.

`fit` keeps two checkpoints in `checkpoint_dir`: `best.pt` (the weights of the best epoch so far,
by `common.training.BestEpoch`: highest validation accuracy, ties to the lower loss) and `last.pt`
(model, optimizer, scheduler and history after the latest epoch, which `resume=True` continues
from). When it returns, the model holds the best weights, so what is evaluated and exported is
the checkpoint that validated best.

`train_scratch` is one function so that the notebook and a resumed run do exactly the same thing.
Its checkpoints live in a folder named after the configuration and the data (`checkpoint_dir`):
a run interrupted (or stopped by a cell time-out) resumes where it was, and never from the
checkpoint of another configuration or dataset. The training time reported is the sum of the
epochs' times, so it is the same whether the epochs ran in one go or across a resume.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from common import container, paths
from common.training import (BestEpoch, Checkpoints, History, get_loss, get_optimizer, get_scheduler, restore,
                             snapshot)
from landmark_classifier.src import data, model
from landmark_classifier.src.config import ScratchConfig

# Per-batch progress bars only for loaders long enough to watch; shorter epochs get the epoch bar
# alone (in a notebook every bar is a widget, and hundreds of them bury the output).
BATCH_BAR_MIN = 50


@dataclass
class Optimisation:
    """How `fit` trains: the loss, the optimizer, its per-batch schedule, the number of epochs."""
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    epochs: int


def train_one_epoch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None, device: torch.device,
                    desc: str = "train") -> tuple[float, list[float]]:
    """One pass over `loader`; returns the mean training loss and the learning rate of each batch."""
    model.train()
    total, count, rates = 0.0, 0, []
    bar = tqdm(loader, desc=desc, unit="batch", leave=False,
               disable=len(loader) < BATCH_BAR_MIN or not container.current().is_main)
    for images, labels in bar:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: the loss became {loss.item()} (learning rate too high?)")
        loss.backward()
        optimizer.step()
        rates.append(optimizer.param_groups[0]["lr"])
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * len(labels)
        count += len(labels)
        bar.set_postfix(loss=f"{total / count:.3f}")
    return total / max(1, count), rates


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, desc: str = "predict",
            mirror: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels over `loader`, on the CPU; with `mirror`, the mean of the logits for each
    image and its mirror image (as the exported predictor computes them)."""
    model.eval()
    logits, labels = [], []
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False, disable=len(loader) < BATCH_BAR_MIN):
        images = images.to(device)
        if mirror:
            both = model(torch.cat([images, images.flip(3)])).float()
            logits.append(((both[:len(images)] + both[len(images):]) / 2).cpu())
        else:
            logits.append(model(images).float().cpu())
        labels.append(targets)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, loader: DataLoader, loss_fn: nn.Module, device: torch.device,
             desc: str = "validate", mirror: bool = False) -> tuple[float, float]:
    """Mean loss and accuracy over `loader`."""
    logits, labels = predict(model, loader, device, desc, mirror)
    return loss_fn(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def fit(model: nn.Module, loaders: tuple[DataLoader, DataLoader], opt: Optimisation, *, device: torch.device,
        checkpoint_dir: Path | None = None, resume: bool = False, desc: str = "epochs",
        mirror: bool = False) -> History:
    """Train on `loaders` (train, valid) for `opt.epochs` epochs in all (a resumed run does only the
    remaining ones); `mirror` validates on the mean of the logits for each image and its mirror.

    In a torchrun process group (`common.container.current()`) the model trains in
    DistributedDataParallel on the train loader's shard (its `DistributedSampler`, reshuffled every
    epoch), every rank validates the same model (rank 0's BatchNorm statistics), and only rank 0
    writes checkpoints; alone (a notebook) it trains as it always did."""
    train_loader, valid_loader = loaders
    group = container.current()
    model.to(device)
    history, start, best = History(), 0, BestEpoch()
    checkpoints = Checkpoints(checkpoint_dir, writes=group.is_main)
    # the loader's shuffling generator: part of the random state a resume restores
    generators = tuple(g for g in (train_loader.generator,) if g is not None)
    resumed = checkpoints.load(device) if resume else None
    if resumed is not None:
        state, best = resumed
        restore(state, model, opt.optimizer, opt.scheduler, generators)
        history, start = History(**state["history"]), state["epoch"]
        if group.is_main:
            print(f"resumed from {paths.display(checkpoints.last)} after epoch {start}")
    trained = group.wrap(model)
    epoch_bar = tqdm(range(start, opt.epochs), desc=desc, unit="epoch", initial=start, total=opt.epochs,
                     disable=not group.is_main)
    for epoch in epoch_bar:
        started = time.perf_counter()
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        train_loss, rates = train_one_epoch(trained, train_loader, opt.loss_fn, opt.optimizer, opt.scheduler, device,
                                            desc=f"epoch {epoch + 1}/{opt.epochs}")
        train_loss = group.mean(train_loss)
        group.sync_buffers(model)
        valid_loss, valid_acc = evaluate(model, valid_loader, opt.loss_fn, device, mirror=mirror)
        history.train_loss.append(round(train_loss, 5))
        history.valid_loss.append(round(valid_loss, 5))
        history.valid_accuracy.append(round(valid_acc, 5))
        history.lr += rates
        history.epoch_seconds.append(round(time.perf_counter() - started, 2))
        improved = best.update(epoch + 1, valid_acc, valid_loss, model)
        if improved:
            history.best_epoch = epoch + 1
        checkpoints.save(snapshot(model, opt.optimizer, opt.scheduler, epoch + 1, asdict(history), generators),
                         best, improved)
        epoch_bar.set_postfix(train_loss=f"{train_loss:.3f}", valid_loss=f"{valid_loss:.3f}",
                              valid_acc=f"{valid_acc:.3f}")
    best.restore(model)
    return history


# ------------------------------------------------------------------- the scratch CNN's run

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
                                    batch_size=config.batch_size, shuffle=True, seed=seed, shard=container.current())
    valid_loader = eval_loader(*splits.valid, splits, config)
    optimizer = get_optimizer(cnn, config.optimizer, config.lr, config.weight_decay)
    opt = Optimisation(get_loss(config.label_smoothing), optimizer,
                       get_scheduler(optimizer, config.schedule, config.epochs * len(train_loader)), config.epochs)
    last = Path(checkpoints) / "last.pt"
    before = torch.load(last, weights_only=False)["epoch"] if last.exists() else 0
    history = fit(cnn, (train_loader, valid_loader), opt, device=device, checkpoint_dir=checkpoints,
                        resume=True, desc="scratch CNN epochs", mirror=config.mirror_eval)
    return ScratchRun(cnn.eval(), history, round(sum(history.epoch_seconds), 1), Path(checkpoints), before)
