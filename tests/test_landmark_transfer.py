"""Transfer learning: freezing (only the head trains), frozen BatchNorm, the fast feature path, skipped backbones."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from common.backbones import Backbone, efficientnet_lite0
from landmark_classifier.src import optimization, transfer


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return efficientnet_lite0(pretrained=False)  # the same architecture; no weights needed to test freezing


def toy_backbone() -> Backbone:
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Backbone("toy", module, 8, [module[0], module[1]], (0.5,) * 3, (0.25,) * 3, input_size=32, resize_size=36)


def _step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    optimizer = optimization.get_optimizer(model, "sgd", lr=0.1)
    model.train()
    optimizer.zero_grad()
    optimization.get_loss()(model(images), labels).backward()
    optimizer.step()


def test_frozen_backbone_only_the_head_trains(lite0):
    model = transfer.build(lite0, num_classes=3, trainable_stages=0)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0]))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.1.weight", "head.1.bias"}  # no weight, no BatchNorm statistic of the backbone moved
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_fine_tuning_unfreezes_only_the_last_stages(lite0):
    model = transfer.build(lite0, num_classes=3, trainable_stages=2)
    last_two = {id(p) for stage in lite0.stages[-2:] for p in stage.parameters()}
    for p in model.backbone.parameters():
        assert p.requires_grad == (id(p) in last_two)
    model.train()
    frozen_bn = [m for m in lite0.stages[0].modules() if isinstance(m, nn.BatchNorm2d)]
    live_bn = [m for m in lite0.stages[-1].modules() if isinstance(m, nn.BatchNorm2d)]
    assert frozen_bn and all(not m.training for m in frozen_bn) and all(m.training for m in live_bn)


def test_fast_path_features_then_head_in_seconds():
    backbone = toy_backbone()
    torch.manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 36, 36), dtype=torch.uint8)
    labels = torch.arange(12) % 3
    images[labels == 1, 0] = 255  # learnable colour cue
    features = transfer.features(backbone, images, torch.device("cpu"), batch_size=5)
    assert features.shape == (12, 8)
    model = transfer.build(backbone, 3)
    history = transfer.train_head(model, features, labels, features, labels, epochs=30, lr=0.05, weight_decay=0.0,
                                  label_smoothing=0.0, device=torch.device("cpu"), batch_size=4)
    assert history.valid_loss[-1] < history.valid_loss[0]
    assert history.valid_accuracy[history.best_epoch - 1] > 0.5


def test_finetune_runs_on_augmented_images(tmp_path):
    backbone = toy_backbone()
    model = transfer.build(backbone, 3, trainable_stages=1)
    images = torch.randint(0, 256, (9, 3, 36, 36), dtype=torch.uint8)
    labels = torch.arange(9) % 3
    history = transfer.finetune(model, backbone, (images, labels), (images, labels), epochs=2, lr=1e-3,
                                weight_decay=0.0, label_smoothing=0.1, device=torch.device("cpu"), batch_size=4,
                                checkpoint_dir=tmp_path)
    assert len(history.train_loss) == 2 and (tmp_path / "best.pt").exists()


def test_unavailable_torchvision_weights_are_skipped_with_the_reason(monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    backbone, why = transfer.try_load("resnet18")
    assert backbone is None and "could not download the ImageNet weights of resnet18" in why
