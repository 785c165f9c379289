"""What every training loop here shares: loss, optimizer and schedule builders (stepped once per
batch), the per-epoch history, and the one rule by which a loop keeps its best epoch.

Used by the landmark scratch CNN (`landmark_classifier/src/train.py`), MNIST's loops and the
transfer kit's fine-tuning (`common.transfer.fit_top`, landmark and Scones): a fix here reaches all.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

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
