"""The `.lst` files SageMaker's image-classification algorithm reads, and the image folders beside them.

A `.lst` file is tab-separated `index<TAB>label<TAB>relative path`, with label 0 = bicycle and
1 = motorcycle; `root/<split>.lst` lists the PNGs under `root/<split>/`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from common import s3io

from ..lambdas.constants import CLASS_NAMES

CLASSES = CLASS_NAMES  # label 0 = bicycle, 1 = motorcycle: the endpoint's output order
SPLITS = ("train", "test")


def read_lst(path: Path) -> pd.DataFrame:
    """Read a `.lst` file and check every row; errors name the file and the line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3 or not parts[0].strip().isdigit() or parts[1].strip() not in ("0", "1"):
            raise ValueError(f"{path}, line {number}: expected 'index<TAB>0|1<TAB>file', got {line!r}")
        rows.append((int(parts[0]), int(parts[1]), parts[2].strip()))
    if not rows:
        raise ValueError(f"{path} lists no images")
    frame = pd.DataFrame(rows, columns=["index", "label", "file"])
    frame["class_name"] = frame["label"].map(dict(enumerate(CLASSES)))
    return frame


def write_split(root: Path, split: str, images: np.ndarray, labels: np.ndarray, names: list[str],
                indices: list[int]) -> None:
    """Write `root/split/<name>` PNGs and `root/split.lst` (file paths relative to root/split)."""
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    for image, name in zip(images, names):
        Image.fromarray(image).save(folder / name)
    lines = [f"{i}\t{int(label)}\t{name}" for i, label, name in zip(indices, labels, names)]
    s3io.write_text(root / f"{split}.lst", "\n".join(lines) + "\n")
