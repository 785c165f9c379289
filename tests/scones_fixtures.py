"""Small images and a stand-in model for the scones_workflow tests (no network, no training)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from common.images import load_image


def png_bytes(mode: str = "RGB", size: tuple[int, int] = (32, 32), value: int = 40, fmt: str = "PNG") -> bytes:
    """An image file in `mode` ("RGB", "RGBA", "L", "P") filled with `value` plus a gradient."""
    gradient = np.add.outer(np.arange(size[1]), np.arange(size[0])) % 16
    pixels = np.clip(gradient + value, 0, 255).astype(np.uint8)
    image = Image.fromarray(np.stack([pixels] * 3, axis=-1)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def fake_predict(data: bytes) -> list[float]:
    """Decodes like the real predictor (ImageError on bad input); dark images are 'bicycle' with high
    confidence, bright ones ambiguous, so thresholds can be exercised without a model."""
    image = np.asarray(load_image(data, name="request body"), dtype=np.float64)
    p_motorcycle = 0.01 + 0.5 * image.mean() / 255
    return [1 - p_motorcycle, p_motorcycle]


def cifar_batch(n: int, fine_labels: list[int], seed: int = 0) -> dict:
    """A CIFAR-100-format batch (the pickled dict of the python version)."""
    rng = np.random.default_rng(seed)
    labels = [fine_labels[i % len(fine_labels)] for i in range(n)]
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": labels,
            b"filenames": [f"img_{i:03d}.png".encode() for i in range(n)]}
