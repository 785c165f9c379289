"""The deployable predictor: preprocessing + model + softmax in one TorchScript file.

The exported file needs no Python model code: `torch.jit.load(path)` gives a module that
takes a uint8 (0..255) or float (0..1) image tensor, C x H x W or N x C x H x W of any size,
resizes the short side, centre-crops, normalises, and returns class probabilities. Its
`class_names` attribute names the columns.

Export scripts the model when it can (the from-scratch CNN) and traces it otherwise
(EfficientNet-Lite0's code is not scriptable; traced at the fixed crop size, it needs no
control flow); the preprocessing wrapper is always scripted, so any image size works.

CLI: `python -m landmark_classifier.src.predictor IMAGE ... [--model FILE] [-k 5]` prints the
top-k landmarks of each image; an unreadable image prints an error naming it (exit code 1).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.images import ImageError, load_image
from landmark_classifier.src.helpers import PREDICTOR_FILE, PROJECT_DIR


class Predictor(nn.Module):
    def __init__(self, model: nn.Module, class_names: list[str], mean: list[float], std: list[float],
                 resize_size: int, crop_size: int) -> None:
        super().__init__()
        if not class_names:
            raise ValueError("class_names is empty")
        if crop_size > resize_size:
            raise ValueError(f"crop_size {crop_size} is larger than resize_size {resize_size}")
        self.model = model
        self.class_names = list(class_names)  # TorchScript infers List[str] (never empty: >= 1 class)
        self.resize_size = resize_size
        self.crop_size = crop_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or (x.shape[1] != 1 and x.shape[1] != 3):
            raise ValueError("expected an image tensor C x H x W or N x C x H x W with C = 1 or 3")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        height, width = x.shape[2], x.shape[3]
        scale = self.resize_size / min(height, width)
        new_h = max(self.resize_size, int(round(height * scale)))
        new_w = max(self.resize_size, int(round(width * scale)))
        x = F.interpolate(x, size=[new_h, new_w], mode="bilinear", align_corners=False, antialias=True)
        top = (new_h - self.crop_size) // 2
        left = (new_w - self.crop_size) // 2
        x = x[:, :, top:top + self.crop_size, left:left + self.crop_size]
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.model(self.preprocess(x)), dim=1)


def export(model: nn.Module, class_names: list[str], mean: list[float], std: list[float], resize_size: int,
           crop_size: int, path: str | Path) -> tuple[Path, str]:
    """Write the TorchScript predictor to `path`; returns (path, "scripted" or "traced")."""
    model = model.cpu().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, but still the portable format
        try:
            inner, how = torch.jit.script(model), "scripted"
        except Exception:  # noqa: BLE001 - TorchScript raises many types for unsupported Python
            example = torch.zeros(1, 3, crop_size, crop_size)
            inner, how = torch.jit.trace(model, example, check_trace=False), "traced"
        scripted = torch.jit.script(Predictor(inner, class_names, mean, std, resize_size, crop_size))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    scripted.save(str(tmp))
    tmp.replace(path)
    return path, how


def load(path: str | Path) -> torch.jit.ScriptModule:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no exported predictor here; run transfer_learning.ipynb "
                                f"(or cnn_from_scratch.ipynb) to export one")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def to_tensor(image: Any, name: str | None = None) -> torch.Tensor:
    """Any image `common.images.load_image` accepts, as a 3 x H x W uint8 tensor (raises ImageError)."""
    array = np.asarray(load_image(image, name=name), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


@torch.no_grad()
def top_k(predictor: nn.Module, image: Any, k: int = 5, name: str | None = None) -> list[tuple[str, float]]:
    """The k most likely landmarks as (class name, probability), most likely first."""
    probabilities = predictor(to_tensor(image, name))[0]
    values, indices = probabilities.topk(min(k, len(probabilities)))
    names = list(predictor.class_names)
    return [(names[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]


def default_model_path() -> Path:
    """Where transfer_learning.ipynb's full run (the run of record) exports the predictor."""
    return PROJECT_DIR / "models" / "full" / PREDICTOR_FILE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m landmark_classifier.src.predictor",
        description="Top-k landmarks of each image, from the exported TorchScript predictor.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--model", default=str(default_model_path()),
                        help="exported predictor (default: %(default)s, written by transfer_learning.ipynb)")
    parser.add_argument("-k", type=int, default=5, help="how many landmarks to list (default: 5)")
    args = parser.parse_args(argv)
    try:
        predictor = load(args.model)
    except (FileNotFoundError, RuntimeError) as err:
        print(f"error: cannot load the predictor {args.model}: {err}", file=sys.stderr)
        return 2
    failed = 0
    for image in args.images:
        try:
            ranked = top_k(predictor, image, args.k)
        except ImageError as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        print(image)
        for rank, (label, probability) in enumerate(ranked, 1):
            print(f"  {rank}. {label:<40s} {probability:6.1%}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
