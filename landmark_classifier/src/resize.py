"""The served graph's resize arithmetic, in integer operations only, without torch.

`export.ServingModel` uses it inside the exported graph: torch.export keeps `//`, `%` and `*`
symbolic, so the ONNX file computes each image's size (Python float arithmetic, `round(h * scale)`,
would be frozen at the example's size). The bulk tagger (`tag.py`) does the same resize before the
graph without importing torch. Rounding is half to even, as Python's `round` and so as the
training pipeline's decoding (`data.square_uint8`).
"""
from __future__ import annotations


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
