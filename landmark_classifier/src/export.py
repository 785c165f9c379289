"""Export a trained landmark model as the deployable predictor: one ONNX file (served) and one
TorchScript file (the seed's format), each carrying its own preprocessing.

`ServingModel` is what both files contain: a uint8 `N x 3 x H x W` RGB batch of any size in,
class probabilities out. Inside: resize the short side to `resize_size` (bilinear, antialiased),
centre-crop `crop_size`, normalise, the model, optionally the mean of the model's logits for
the image and its mirror (what validation measured; `mirror=True`), softmax.

The resize arithmetic uses integer operations only (`//`, `%`, `*`): torch.export keeps them
symbolic, so the ONNX graph computes each image's size, while Python float arithmetic
(`round(h * scale)`) would be frozen at the example's size. Rounding is half to even, as
Python's `round` and so as the training pipeline's decoding (`data.square_uint8`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.serving import export_onnx, save_torchscript

INPUT_CONTRACT = "uint8 N x 3 x H x W RGB, any size"
MAX_FILE_MB = 30


def round_half_even_div(num: int, den: int) -> int:
    """round(num / den) for num >= 0, den > 0, with ties to even, in integer operations only."""
    twice = 2 * num + den
    up = twice // (2 * den)  # round half up
    tie = (2 * den - twice % (2 * den)) // (2 * den)  # 1 exactly at a tie, else 0
    return up - tie * (up % 2)


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing the short side to `size`, keeping the aspect ratio."""
    taller = 1 - 1 // ((height - 1) // width + 1)  # 1 if height > width else 0, without a comparison
    short = width * taller + height * (1 - taller)
    return round_half_even_div(height * size, short), round_half_even_div(width * size, short)


@dataclass(frozen=True)
class Preprocessing:
    """How the served model sees an image (the same as evaluation in the notebooks)."""
    resize_size: int
    crop_size: int
    mean: tuple[float, ...]  # in [0, 1] units, per channel
    std: tuple[float, ...]
    mirror: bool = False  # average the logits of the image and its mirror

    def __post_init__(self) -> None:
        if self.crop_size > self.resize_size:
            raise ValueError(f"crop_size {self.crop_size} is larger than resize_size {self.resize_size}")


class ServingModel(nn.Module):
    """uint8 N x 3 x H x W (any H, W >= 2) -> N x classes probabilities."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing, class_names: list[str]) -> None:
        super().__init__()
        if len(class_names) < 2:
            raise ValueError(f"need at least 2 class names, got {class_names}")
        self.model = model
        self.class_names = list(class_names)  # TorchScript users read them from the .pt file
        self.resize_size = preprocessing.resize_size
        self.crop_size = preprocessing.crop_size
        self.mirror = preprocessing.mirror
        # 0..255 pixels normalised in one step: (x / 255 - mean) / std == (x - 255 mean) / (255 std)
        self.register_buffer("mean", torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1) * 255)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2], x.shape[3]
        new_height, new_width = resized_size(height, width, self.resize_size)
        x = F.interpolate(x.float(), size=[new_height, new_width], mode="bilinear", align_corners=False,
                          antialias=True)
        top = (new_height - self.crop_size) // 2
        left = (new_width - self.crop_size) // 2
        x = x[:, :, top:top + self.crop_size, left:left + self.crop_size]
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x)
        if self.mirror:
            count = x.shape[0]
            logits = self.model(torch.cat([x, x.flip(3)]))
            logits = (logits[:count] + logits[count:]) / 2
        else:
            logits = self.model(x)
        return torch.softmax(logits, dim=1)


def check_inputs(seed: int = 0) -> list[torch.Tensor]:
    """The sizes an export must agree with eager on: portrait, a 512 x 513 tie, a 1920 x 1080
    phone photo, a batch of small squares, a panorama."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(1, 3, 400, 300), (1, 3, 512, 513), (1, 3, 1080, 1920), (2, 3, 64, 64), (1, 3, 120, 700)]
    return [torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator) for shape in shapes]


@dataclass
class Exported:
    onnx_path: Path
    torchscript_path: Path
    torchscript_how: str  # "scripted" (the inner model scripted or traced, the wrapper scripted)
    onnx_mb: float
    torchscript_mb: float
    metadata: dict[str, Any] = field(default_factory=dict)


def _scriptable(model: nn.Module, crop_size: int) -> tuple[nn.Module, str]:
    """The model as TorchScript: scripted when it can be, else traced at the fixed crop size
    (EfficientNet-Lite's code is not scriptable; after the crop its input size never changes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.jit.script(model), "scripted"
        except Exception:  # noqa: BLE001 - TorchScript raises many types for unsupported Python
            example = torch.zeros(2, 3, crop_size, crop_size)
            return torch.jit.trace(model, example, check_trace=False), "traced"


@dataclass(frozen=True)
class ModelCard:
    """What the exported file says about its model, besides the graph (stored in its metadata)."""
    class_names: list[str]
    model_name: str
    training_run: dict[str, Any]
    display_names: list[str] | None = None  # readable class names (default: class_names)


def export_predictor(model: nn.Module, preprocessing: Preprocessing, card: ModelCard, folder: Path, *,
                     extra_checks: list[torch.Tensor] = (), stem: str = "landmark_predictor") -> Exported:
    """Write `folder/stem.onnx` and `folder/stem.pt`, each checked against the eager model.

    The ONNX file is verified by `common.serving.export_onnx` on `check_inputs()` plus
    `extra_checks` (e.g. real test photos); its metadata carries what a predictor needs."""
    class_names = card.class_names
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    serving = ServingModel(model, preprocessing, class_names).eval()
    metadata = {
        "class_names": list(class_names),
        "display_names": list(card.display_names or class_names),
        "input": INPUT_CONTRACT,
        "mean": list(preprocessing.mean),
        "std": list(preprocessing.std),
        "resize_size": preprocessing.resize_size,
        "crop_size": preprocessing.crop_size,
        "mirror_average": preprocessing.mirror,
        "output": "probabilities N x classes (softmax), columns in class_names order",
        "model_name": card.model_name,
        "training_run": {"exported_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **card.training_run},
    }
    folder = Path(folder)
    example = torch.randint(0, 256, (1, 3, 300, 400), dtype=torch.uint8)
    onnx_path = export_onnx(serving, example, folder / f"{stem}.onnx", metadata=metadata, dynamic_hw=True,
                            check_inputs=[*check_inputs(), *extra_checks], atol=1e-4)
    inner, how = _scriptable(model, preprocessing.crop_size)
    scripted = ServingModel(inner, preprocessing, class_names).eval()
    torchscript_path, _ = save_torchscript(scripted, folder / f"{stem}.pt", example)
    sizes = {p: p.stat().st_size / 2**20 for p in (onnx_path, torchscript_path)}
    for path, size in sizes.items():
        if size > MAX_FILE_MB:
            raise ValueError(f"{path} is {size:.1f} MB, over the {MAX_FILE_MB} MB a committed predictor may take")
    return Exported(onnx_path, torchscript_path, f"{how} model in a scripted wrapper", round(sizes[onnx_path], 1),
                    round(sizes[torchscript_path], 1), metadata)
