"""Train and validate loops: tqdm progress, per-batch learning-rate history, checkpoints, resume.

`fit` keeps two checkpoints in `checkpoint_dir`: `best.pt` (the weights with the lowest
validation loss so far) and `last.pt` (model, optimizer, scheduler and history after the
latest epoch, which `resume=True` continues from). When it returns, the model holds the best
weights, so what is evaluated and exported is the checkpoint that validated best.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from common import paths

# Per-batch progress bars only for loaders long enough to watch; shorter epochs get the epoch bar
# alone (in a notebook every bar is a widget, and hundreds of them bury the output).
BATCH_BAR_MIN = 50


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    valid_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)  # one value per batch
    epoch_seconds: list[float] = field(default_factory=list)
    best_epoch: int = 0  # 1-based; 0 until an epoch has run

    def curves(self) -> dict[str, list[float]]:
        """The per-epoch series, as `common.plotting.loss_curves` takes them."""
        return {"train loss": self.train_loss, "valid loss": self.valid_loss, "valid accuracy": self.valid_accuracy}


def train_one_epoch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None, device: torch.device,
                    desc: str = "train") -> tuple[float, list[float]]:
    """One pass over `loader`; returns the mean training loss and the learning rate of each batch."""
    model.train()
    total, count, rates = 0.0, 0, []
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, disable=len(loader) < BATCH_BAR_MIN)
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


def fit(model: nn.Module, train_loader: DataLoader, valid_loader: DataLoader, *, loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        epochs: int, device: torch.device, checkpoint_dir: Path | None = None, resume: bool = False,
        desc: str = "epochs", mirror: bool = False) -> History:
    """Train for `epochs` epochs in all (a resumed run does only the remaining ones); `mirror`
    validates on the mean of the logits for each image and its mirror."""
    model.to(device)
    history, start, best_loss = History(), 0, float("inf")
    last = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    best = Path(checkpoint_dir) / "best.pt" if checkpoint_dir else None
    if resume and last is not None and last.exists():
        state = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        history, start, best_loss = History(**state["history"]), state["epoch"], state["best_valid_loss"]
        print(f"resumed from {paths.display(last)} after epoch {start}")
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best is not None and best.exists() and start > 0:
        best_state = torch.load(best, map_location=device)
    epoch_bar = tqdm(range(start, epochs), desc=desc, unit="epoch", initial=start, total=epochs)
    for epoch in epoch_bar:
        started = time.perf_counter()
        train_loss, rates = train_one_epoch(model, train_loader, loss_fn, optimizer, scheduler, device,
                                            desc=f"epoch {epoch + 1}/{epochs}")
        valid_loss, valid_acc = evaluate(model, valid_loader, loss_fn, device, mirror=mirror)
        history.train_loss.append(round(train_loss, 5))
        history.valid_loss.append(round(valid_loss, 5))
        history.valid_accuracy.append(round(valid_acc, 5))
        history.lr += rates
        history.epoch_seconds.append(round(time.perf_counter() - started, 2))
        if valid_loss < best_loss:
            best_loss, history.best_epoch = valid_loss, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if best is not None:
                _atomic_save(best_state, best)
        if last is not None:
            _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict() if scheduler is not None else None,
                          "epoch": epoch + 1, "history": asdict(history), "best_valid_loss": best_loss}, last)
        epoch_bar.set_postfix(train_loss=f"{train_loss:.3f}", valid_loss=f"{valid_loss:.3f}",
                              valid_acc=f"{valid_acc:.3f}")
    model.load_state_dict(best_state)
    return history


def _atomic_save(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
