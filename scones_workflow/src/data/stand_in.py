"""Offline with no CIFAR-100: a generated two-class stand-in (drawings of bicycles and motorcycles) in the
staged layout, labelled as stand-in wherever it shows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .lst import CLASSES, SPLITS, write_split


def _draw_vehicle(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A crude side view: two wheels and a frame; a motorcycle has thick wheels and a solid body."""
    scale = 4  # draw large, then downsample for anti-aliasing
    canvas = size * scale
    background = tuple(int(v) for v in rng.integers(120, 256, 3))
    image = Image.new("RGB", (canvas, canvas), background)
    draw = ImageDraw.Draw(image)
    color = tuple(int(v) for v in rng.integers(0, 110, 3))
    radius = int(rng.integers(18, 26))
    gap = int(rng.integers(54, 70))
    cx, cy = int(rng.integers(radius + 4, canvas - gap - radius - 4)), int(rng.integers(70, 96))
    wheel = 4 if label == 0 else 14
    for x in (cx, cx + gap):
        draw.ellipse([x - radius, cy - radius, x + radius, cy + radius], outline=color, width=wheel)
    if label == 0:
        top = cy - radius - 8
        for a, b in [((cx, cy), (cx + gap // 2, cy)), ((cx + gap // 2, cy), (cx + gap // 3, top)),
                     ((cx + gap // 3, top), (cx + gap, cy)), ((cx, cy), (cx + gap // 3, top))]:
            draw.line([a, b], fill=color, width=4)
    else:
        body = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.rounded_rectangle([cx + 6, cy - radius - 22, cx + gap - 6, cy - 4], radius=10, fill=body)
    noise = rng.normal(0, 8, (size, size, 3))
    small = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float64)
    return np.clip(small + noise, 0, 255).astype(np.uint8)


def generate_stand_in(root: Path, n_train: int = 200, n_test: int = 60, seed: int = 0) -> None:
    """Write a synthetic two-class dataset in the staged layout (balanced, shuffled)."""
    rng = np.random.default_rng(seed)
    counts = {"train": n_train, "test": n_test}
    for split in SPLITS:
        labels = rng.permutation(np.arange(counts[split]) % 2)
        images = np.stack([_draw_vehicle(int(label), rng) for label in labels])
        names = [f"standin_{CLASSES[label]}_{split}_{i:04d}.png" for i, label in enumerate(labels)]
        write_split(root, split, images, labels, names, list(range(len(labels))))
