"""What every training loop here shares: loss, optimizer and schedule builders (stepped once per
batch), the per-epoch history, the one rule by which a loop keeps its best epoch, and its checkpoints
(`Checkpoints`: saved every epoch, resumed with the random state, so a resumed run ends as an
uninterrupted one would).

Used by the landmark scratch CNN (`landmark_classifier/src/train.py`), MNIST's loops and the
transfer kit's fine-tuning (`common.transfer.fit_top`, landmark and Scones): a fix here reaches all.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from common import torchkit

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")


def get_loss(label_smoothing: float = 0.0) -> nn.CrossEntropyLoss:
    """Cross-entropy; label smoothing (e.g. 0.1) keeps the model from over-confident logits."""
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def get_optimizer(model: nn.Module, name: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.05,
                  momentum: float = 0.9) -> torch.optim.Optimizer:
    """An optimizer over the trainable parameters only (frozen backbones stay out).

    Weight decay applies to weight matrices and kernels, not to biases and norm scales
    (decaying those only hurts)."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters (is everything frozen?)")
    decay = [p for _, p in trainable if p.ndim > 1]
    no_decay = [p for _, p in trainable if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


def get_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int,
                  warmup_steps: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-batch schedule over `total_steps` batches.

    onecycle: warm up to the optimizer's lr for 30% of the steps, then cosine anneal to ~0
    (fast convergence on short budgets); cosine: linear warm-up for `warmup_steps`, then cosine
    decay; constant: the lr as set."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if name == "onecycle":
        max_lrs = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=total_steps,
                                                   pct_start=0.3, div_factor=10, final_div_factor=100)
    if name == "cosine":
        def factor(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise ValueError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")


@dataclass
class History:
    """Per-epoch curves of one training run (`lr`: one value per batch)."""
    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    valid_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best_epoch: int = 0  # 1-based; 0 until an epoch has run (or when there was no validation)

    def curves(self) -> dict[str, list[float]]:
        """The per-epoch series, as `common.plotting.loss_curves` takes them."""
        return {"train loss": self.train_loss, "valid loss": self.valid_loss, "valid accuracy": self.valid_accuracy}


class BestEpoch:
    """The one rule every loop here keeps its best epoch by: the highest validation accuracy, ties to
    the lower validation loss, then to the earlier epoch.

    Accuracy first because it is what the projects select models on (the candidates, the
    experiments) and what they report; the loss breaks the ties that a few hundred validation
    images produce often (one image is 0.3-0.7 points). `update` copies the weights of a better
    epoch; `restore` puts them back into the module."""

    def __init__(self, accuracy: float = -math.inf, loss: float = math.inf, epoch: int = 0) -> None:
        self.accuracy, self.loss, self.epoch = accuracy, loss, epoch
        self.state: dict[str, torch.Tensor] | None = None

    def better(self, accuracy: float, loss: float) -> bool:
        return (accuracy, -loss) > (self.accuracy, -self.loss)

    def update(self, epoch: int, accuracy: float, loss: float, module: nn.Module) -> bool:
        """Keep `module`'s weights if this epoch beats the best so far; True if it did."""
        if not self.better(accuracy, loss):
            return False
        self.accuracy, self.loss, self.epoch = accuracy, loss, epoch
        self.state = copy.deepcopy(module.state_dict())
        return True

    def restore(self, module: nn.Module) -> None:
        """Load the best epoch's weights (no-op when no epoch was validated)."""
        if self.state is not None:
            module.load_state_dict(self.state)


# ------------------------------------------------------------------- checkpoints and resume

def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, epoch: int, history: dict,
             generators: tuple[torch.Generator, ...] = ()) -> dict:
    """Everything a loop needs to continue after `epoch` as if it had never stopped: weights,
    optimizer and schedule, the history so far, and the random state (torch's global generator, which
    dropout and the image transforms draw from, the current GPU's, and the loop's own `generators`, which
    shuffle and augment), so a resumed run gives the same weights as an uninterrupted one (on the CPU; GPU
    kernels need not be deterministic)."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": epoch, "history": history,
            "rng": {"torch": torch.get_rng_state(), "generators": [g.get_state() for g in generators],
                    "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}}


def restore(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
            generators: tuple[torch.Generator, ...] = ()) -> None:
    """Load a `snapshot` into the loop's objects (a checkpoint from before the random state was kept
    resumes with the weights, optimizer and schedule only)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    rng = state.get("rng")
    if rng is None:
        return
    torch.set_rng_state(rng["torch"].cpu())
    for generator, saved in zip(generators, rng["generators"]):
        generator.set_state(saved.cpu())
    if rng["cuda"] is not None and torch.cuda.is_available():  # the current device's (each process has one)
        torch.cuda.set_rng_state(rng["cuda"].cpu())


class Checkpoints:
    """A loop's checkpoints in `folder`: `last.pt` (a `snapshot` after the latest epoch, plus the best
    epoch's rank) and `best.pt` (the best epoch's weights, written only when they change).

    Every epoch ends with a save, so an interrupted run (a spot instance reclaimed, a killed kernel)
    loses at most the epoch it was in; `torchkit.save` writes atomically, so a kill mid-save leaves the
    previous file. With `writes=False` (every process but rank 0 of a distributed run) nothing is
    written, and every process reads what rank 0 wrote. `folder=None`: no checkpoints."""

    def __init__(self, folder: str | Path | None, *, writes: bool = True) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.writes = writes

    @property
    def last(self) -> Path | None:
        return self.folder / "last.pt" if self.folder is not None else None

    def save(self, state: dict, best: BestEpoch, improved: bool) -> None:
        if self.folder is None or not self.writes:
            return
        if improved and best.state is not None:
            torchkit.save(best.state, self.folder / "best.pt")
        torchkit.save({**state, "best": (best.accuracy, best.loss, best.epoch)}, self.folder / "last.pt")

    def load(self, device: torch.device | str = "cpu") -> tuple[dict, BestEpoch] | None:
        """(the last snapshot, the best epoch with its weights), or None when there is none."""
        if self.last is None or not self.last.exists():
            return None
        state = torch.load(self.last, map_location=device, weights_only=False)
        # (accuracy, loss, epoch) of the best epoch; a checkpoint from before that rule kept the loss only
        best = BestEpoch(*state.get("best", (-math.inf, state.get("best_valid_loss", math.inf),
                                             state["history"].get("best_epoch", 0))))
        best_file = self.folder / "best.pt"
        if best_file.exists():
            best.state = torch.load(best_file, map_location=device)
        return state, best
