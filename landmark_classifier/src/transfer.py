"""Transfer learning: an ImageNet backbone (`common.backbones`) with a new linear head.

Two paths:
- fast (frozen backbone): extract features once (`features`), then train only the head on
  the stored features (`train_head`), which takes seconds;
- accurate (fine-tuning): unfreeze the last `trainable_stages` stages and train end to end on
  augmented images with `train.fit`, starting from the fast path's head (a linear probe first
  keeps the random head from wrecking the pretrained features in the first steps).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import v2

from common.backbones import Backbone, extract_features, load_backbone
from common.downloads import DownloadError
from landmark_classifier.src import data as data_module
from landmark_classifier.src.optimization import get_loss, get_optimizer, get_scheduler
from landmark_classifier.src.train import History, fit


class TransferModel(nn.Module):
    """backbone features -> dropout -> linear, with frozen BatchNorm layers kept in eval mode."""

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.backbone = backbone.module
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.feature_dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def train(self, mode: bool = True) -> "TransferModel":
        """As nn.Module.train, but BatchNorm layers whose weights are frozen stay in eval mode,
        so their running statistics (learnt on ImageNet) are not overwritten."""
        super().train(mode)
        for layer in self.backbone.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in layer.parameters()):
                layer.eval()
        return self


def build(backbone: Backbone, num_classes: int, trainable_stages: int = 0, dropout: float = 0.2) -> TransferModel:
    """A TransferModel whose backbone is frozen except its last `trainable_stages` stages."""
    backbone.freeze(trainable_stages)
    return TransferModel(backbone, num_classes, dropout)


def try_load(name: str) -> tuple[Backbone | None, str]:
    """(backbone, "") or (None, why it is unavailable): offline, torchvision weights cannot download."""
    try:
        return load_backbone(name), ""
    except DownloadError as err:
        return None, str(err).splitlines()[0]


def eval_transform(backbone: Backbone) -> v2.Compose:
    """The backbone's own evaluation preprocessing (its resize and crop sizes, mean and std)."""
    return data_module.eval_transform(backbone.input_size, list(backbone.mean), list(backbone.std),
                                      backbone.resize_size)


def train_transform(backbone: Backbone) -> v2.Compose:
    return data_module.train_transform(backbone.input_size, list(backbone.mean), list(backbone.std))


def features(backbone: Backbone, images: torch.Tensor, device: torch.device, batch_size: int = 32,
             desc: str = "features") -> torch.Tensor:
    """Frozen-backbone features of uint8 images (preprocessed as at evaluation)."""
    labels = torch.zeros(len(images), dtype=torch.long)
    loader = data_module.make_loader(images, labels, eval_transform(backbone), batch_size=batch_size, shuffle=False)
    return extract_features(backbone.module, loader, device, desc=f"{backbone.name} {desc}")[0]


def train_head(model: TransferModel, train_features: torch.Tensor, train_labels: torch.Tensor,
               valid_features: torch.Tensor, valid_labels: torch.Tensor, *, epochs: int, lr: float,
               weight_decay: float, label_smoothing: float, device: torch.device, seed: int = 0,
               batch_size: int = 64) -> History:
    """Train `model.head` alone on stored features (the fast path); the backbone is untouched."""
    train_loader = DataLoader(TensorDataset(train_features, train_labels), batch_size=batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(seed))
    valid_loader = DataLoader(TensorDataset(valid_features, valid_labels), batch_size=256)
    optimizer = get_optimizer(model.head, "adamw", lr=lr, weight_decay=weight_decay)
    scheduler = get_scheduler(optimizer, "cosine", epochs * len(train_loader), warmup_steps=len(train_loader))
    return fit(model.head, train_loader, valid_loader, loss_fn=get_loss(label_smoothing), optimizer=optimizer,
               scheduler=scheduler, epochs=epochs, device=device, desc="head epochs")


def finetune(model: TransferModel, backbone: Backbone, train: tuple[torch.Tensor, torch.Tensor],
             valid: tuple[torch.Tensor, torch.Tensor], *, epochs: int, lr: float, weight_decay: float,
             label_smoothing: float, device: torch.device, batch_size: int = 32, seed: int = 0,
             checkpoint_dir: Path | None = None) -> History:
    """Train the unfrozen stages and the head end to end on augmented images (the accurate path)."""
    train_loader = data_module.make_loader(*train, train_transform(backbone), batch_size=batch_size,
                                           shuffle=True, seed=seed)
    valid_loader = data_module.make_loader(*valid, eval_transform(backbone), batch_size=batch_size, shuffle=False)
    optimizer = get_optimizer(model, "adamw", lr=lr, weight_decay=weight_decay)
    steps = epochs * len(train_loader)
    scheduler = get_scheduler(optimizer, "cosine", steps, warmup_steps=max(1, steps // 10))
    return fit(model, train_loader, valid_loader, loss_fn=get_loss(label_smoothing), optimizer=optimizer,
               scheduler=scheduler, epochs=epochs, device=device, checkpoint_dir=checkpoint_dir,
               desc=f"fine-tuning {backbone.name}")
