"""Training and evaluation loops, as in pytorch/examples' mnist/main.py, plus what the seed listed
as future work: learning-rate schedules, augmentation and early stopping on validation accuracy.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from common import container, paths, training
from common.torchkit import Cost
from mnist_classifier.src.data import MEAN, STD, MnistData, Split, batches

BACKGROUND = (0 - MEAN) / STD  # a black pixel after normalisation


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 64
    optimizer: str = "adam"            # "adam" or "sgd"
    lr: float = 1e-3                   # the peak learning rate with "onecycle"
    momentum: float = 0.9              # SGD only
    weight_decay: float = 0.0
    schedule: str | None = None        # None, "onecycle" or "cosine"
    augment: bool = False              # random affine: rotation, scale, shift
    label_smoothing: float = 0.0
    patience: int | None = None        # stop after this many epochs without a better validation accuracy


@dataclass
class History(training.History):
    """common.training's per-epoch curves (lr here: one value per epoch), plus what the MNIST report
    shows: the epoch numbers, the training accuracy and the total seconds."""
    epoch: list[int] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, list[float]]:
        return {"train_loss": self.train_loss, "valid_loss": self.valid_loss,
                "train_accuracy": self.train_accuracy, "valid_accuracy": self.valid_accuracy}


@dataclass
class Trained:
    """A model trained elsewhere (a training job, `sagemaker_entry.load_trained`): its weights, history
    and what its training cost, for `results.train_and_report(..., trained=...)`."""
    model: nn.Module
    history: History
    cost: Cost


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    predictions: torch.Tensor    # N int64
    probabilities: torch.Tensor  # N x 10


def random_affine(images: torch.Tensor, generator: torch.Generator | None = None, *, degrees: float = 10.0,
                  scale: tuple[float, float] = (0.9, 1.1), shift: float = 2.0) -> torch.Tensor:
    """A different random rotation, scale and shift (pixels) for every image of the batch, in one
    `grid_sample` call: far cheaper than per-image PIL transforms, and the border stays black."""
    n = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    angle = torch.deg2rad(uniform(-degrees, degrees))
    factor = uniform(*scale)
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    tx, ty = (uniform(-shift, shift) * 2 / images.shape[-1] for _ in range(2))
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    # grid_sample pads with zeros: shift so that zero is the background, then shift back.
    moved = F.grid_sample(images - BACKGROUND, grid, align_corners=False, padding_mode="zeros")
    return moved + BACKGROUND


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=config.momentum > 0)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {config.optimizer!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """Stepped after every batch (None: constant learning rate)."""
    total = config.epochs * steps_per_epoch
    if config.schedule is None:
        return None
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    raise ValueError(f"schedule must be None, 'onecycle' or 'cosine', got {config.schedule!r}")


def _uses_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, device: torch.device | str = "cpu", batch_size: int = 1000) -> Evaluation:
    """Loss, accuracy, predictions and class probabilities of `model` on `split`."""
    model.eval()
    logits = torch.cat([model(x.to(device)).float().cpu() for x, _ in batches(split, batch_size)])
    return Evaluation(
        loss=F.cross_entropy(logits, split.labels).item(),
        accuracy=(logits.argmax(1) == split.labels).sum().item() / len(split),  # exact, not float32
        predictions=logits.argmax(1),
        probabilities=logits.softmax(1),
    )


def _shard_loss(logits: torch.Tensor, labels: torch.Tensor, config: TrainConfig, share: float) -> torch.Tensor:
    """The loss to back-propagate for this process's shard of a batch: its mean loss weighted by its
    share of the batch (shard size x processes / batch size), so that DDP's average over the processes
    is the whole batch's mean even when the last batch does not divide evenly (1.0 alone)."""
    if not len(labels):  # a process with no sample in a short last batch still joins the all-reduce
        return logits.sum() * 0.0
    loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
    return loss if share == 1.0 else loss * share


def train_epoch(model: nn.Module, split: Split, optimizer: torch.optim.Optimizer, config: TrainConfig,
                scheduler=None, *, device: torch.device | str = "cpu", generator: torch.Generator | None = None,
                desc: str = "train") -> tuple[float, float]:
    """One pass over `split`; returns the mean training loss and accuracy (as seen while training).

    In a torchrun process group each process trains on its shard of every batch (every `world_size`-th
    image from its rank, the share `DistributedSampler` would give it) of the same shuffled, augmented
    batches a single process draws: so the processes together take the single process's steps."""
    group = container.current()
    model.train()
    memory_format = torch.channels_last if _uses_convolutions(model) else torch.contiguous_format
    total_loss, correct, seen = 0.0, 0, 0
    steps = math.ceil(len(split) / config.batch_size)
    progress = tqdm(batches(split, config.batch_size, shuffle=True, generator=generator), total=steps,
                    desc=desc, unit="batch", leave=False, mininterval=2.0, disable=not group.is_main)
    for images, labels in progress:
        if config.augment:  # the whole batch, so the generator moves as in a single process
            images = random_affine(images, generator)
        batch = len(labels)
        images, labels = images[group.rank::group.world_size], labels[group.rank::group.world_size]
        images = images.to(device, memory_format=memory_format)
        labels = labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        logits = model(images)
        loss = _shard_loss(logits, labels, config, len(labels) * group.world_size / batch)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.item() * batch / group.world_size
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        progress.set_postfix(loss=f"{total_loss / seen:.4f}", refresh=False)
    total_loss, correct, seen = group.sum([total_loss, correct, seen])
    return total_loss / seen, correct / seen


def fit(model: nn.Module, data: MnistData, config: TrainConfig, *, device: torch.device | str = "cpu",
        seed: int = 0, name: str = "model", checkpoint_dir: Path | None = None) -> History:
    """Train on `data.train`, validate after every epoch, keep the weights of the best epoch by the rule
    every loop here uses (`common.training.BestEpoch`: highest validation accuracy, ties to the lower
    loss; restored at the end), and stop early after `config.patience` epochs without a better accuracy.

    With `checkpoint_dir`, every epoch ends with a checkpoint there (`common.training.Checkpoints`) and
    a run that finds one continues from it, ending with the weights an uninterrupted run ends with.
    In a torchrun process group (`common.container.current()`) the model trains in DDP on each
    process's shard of every batch, all processes validate the same model and stop together, and only
    rank 0 prints and writes; alone (the notebook) it trains as it always did."""
    group = container.current()
    generator = torch.Generator().manual_seed(seed)
    if _uses_convolutions(model):
        model.to(memory_format=torch.channels_last)  # 1.5x faster convolutions on CPU
    model.to(device)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, math.ceil(len(data.train) / config.batch_size))
    history, best, stale, start = History(), training.BestEpoch(), 0, 0
    checkpoints = training.Checkpoints(checkpoint_dir, writes=group.is_main)
    resumed = checkpoints.load(device)
    if resumed is not None:
        state, best = resumed
        training.restore(state, model, optimizer, scheduler, (generator,))
        history, start, stale = History(**state["history"]), state["epoch"], state["stale"]
        say(f"{name}: resumed from {paths.display(checkpoints.last)} after epoch {start}")
    trained = group.wrap(model)
    started = time.perf_counter() - history.seconds
    for epoch in range(start + 1, config.epochs + 1):
        if group.any(config.patience is not None and stale >= config.patience):
            say(f"early stop: no better validation accuracy for {stale} epochs")
            break
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_accuracy = train_epoch(trained, data.train, optimizer, config, scheduler, device=device,
                                                 generator=generator, desc=f"{name} epoch {epoch}/{config.epochs}")
        group.sync_buffers(model)
        valid = evaluate(model, data.valid, device)
        for key, value in (("epoch", epoch), ("train_loss", train_loss), ("valid_loss", valid.loss),
                           ("train_accuracy", train_accuracy), ("valid_accuracy", valid.accuracy), ("lr", lr)):
            getattr(history, key).append(value)
        say(f"[Epoch {epoch}] {train_loss:.4f} -> {valid.loss:.4f}  "
            f"(train acc {train_accuracy:.2%}, valid acc {valid.accuracy:.2%})")
        # Patience counts epochs without a better accuracy: a loss that creeps down at the same accuracy
        # may replace the kept weights (a tie broken) but is not progress worth waiting for.
        stale = 0 if valid.accuracy > best.accuracy else stale + 1
        improved = best.update(epoch, valid.accuracy, valid.loss, model)
        if improved:
            history.best_epoch = epoch
        history.seconds = round(time.perf_counter() - started, 2)
        checkpoints.save({**training.snapshot(model, optimizer, scheduler, epoch, asdict(history), (generator,)),
                          "stale": stale}, best, improved)
    history.seconds = round(time.perf_counter() - started, 2)
    best.restore(model)
    model.to(memory_format=torch.contiguous_format)
    say(f"best validation accuracy {best.accuracy:.2%} at epoch {history.best_epoch}; {history.seconds:.0f} s")
    return history


def say(text: str) -> None:
    """Print on rank 0 only (every process of a torchrun group runs the same loop)."""
    if container.current().is_main:
        print(text, flush=True)
