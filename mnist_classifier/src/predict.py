"""Predict the digit in one image from any source, with the exported ONNX model and ONNX Runtime.

No torch on this path: the predictor needs onnxruntime, Pillow, numpy and scipy, and starts in
a fraction of a second. MNIST digits are white on black, fitted into a 20 x 20 box keeping their aspect ratio,
and centred by their centre of mass in a 28 x 28 frame. `to_mnist_layout` does the same
to a photo or a drawing, so that the models see what they were trained on.

    python -m mnist_classifier.src.predict digit.png [more.jpg ...] [--model M.onnx] [--invert yes|no|auto]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from common import serving
from common.images import load_image

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
DEFAULT_MODEL = MODELS_DIR / "cnn.onnx"
MAX_PIXELS = 25_000_000  # a photo of a digit needs far fewer; bigger input is refused unread
INK_THRESHOLD = 0.2      # share of the intensity range above the background that counts as ink


@dataclass
class Prediction:
    digit: int
    probabilities: list[float]  # 10 values, summing to 1

    @property
    def confidence(self) -> float:
        return self.probabilities[self.digit]


def to_mnist_layout(gray: np.ndarray, *, invert: bool | None = None, name: str = "image") -> np.ndarray:
    """A grayscale image (H x W floats in [0, 1]) -> 28 x 28 floats in [0, 1], white digit on black.

    `invert`: True for dark-on-light input (ink on paper), False for MNIST-style input,
    None to decide from the border, which is background in any sensible digit picture.
    """
    if invert is None:
        border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
        invert = float(np.median(border)) > 0.5
    if invert:
        gray = 1.0 - gray
    gray = gray - np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]]))
    gray = np.clip(gray, 0, None)
    if gray.max() <= 0.05:
        raise ValueError(f"{name}: no digit found (the image is blank)")
    gray = gray / gray.max()
    rows, cols = np.nonzero(gray > INK_THRESHOLD)
    digit = gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1]

    # Fit the longer side into 20 pixels, keeping the aspect ratio (a "1" stays thin).
    height, width = digit.shape
    scale = 20.0 / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = np.asarray(Image.fromarray(digit.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS))
    resized = np.clip(resized, 0, 1)

    # Paste into 28 x 28 so that the centre of mass lands on the centre, as MNIST was made.
    canvas = np.zeros((28, 28), dtype=np.float32)
    top, left = (28 - resized.shape[0]) // 2, (28 - resized.shape[1]) // 2
    canvas[top:top + resized.shape[0], left:left + resized.shape[1]] = resized
    cy, cx = ndimage.center_of_mass(canvas)
    shift = (int(round(13.5 - cy)), int(round(13.5 - cx)))
    return ndimage.shift(canvas, shift, order=0, mode="constant", cval=0.0)


def preprocess(source: Any, *, invert: bool | None = None, name: str | None = None) -> np.ndarray:
    """Any image source (path, bytes, PIL image, numpy array) -> 1 x 1 x 28 x 28 float32 pixels in [0, 1].

    That is the served model's input (`model.SERVING_INPUT`); it normalises inside its graph."""
    label = name or (str(source) if isinstance(source, (str, Path)) else f"<{type(source).__name__}>")
    image = load_image(source, mode="L", max_pixels=MAX_PIXELS, name=label)
    gray = np.asarray(image, dtype=np.float32) / 255.0
    pixels = to_mnist_layout(gray, invert=invert, name=label)
    return pixels.astype(np.float32).reshape(1, 1, 28, 28)


class DigitPredictor:
    """An exported ONNX model (`model.export_onnx`: pixels -> probabilities) behind one ONNX Runtime session."""

    def __init__(self, model: str | Path = DEFAULT_MODEL, *, threads: int = 1) -> None:
        self.model = serving.load_onnx(model, threads=threads)  # ModelFileError names a missing/bad file

    def predict(self, source: Any, *, invert: bool | None = None, name: str | None = None) -> Prediction:
        probabilities = self.model.run(preprocess(source, invert=invert, name=name))[0]
        return Prediction(int(probabilities.argmax()), [round(float(p), 6) for p in probabilities])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_classifier.src.predict",
        description="Print the digit (and its probability) in each image: PNG, JPEG or any format PIL reads, "
                    "white-on-black or dark-on-light.")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), metavar="FILE.onnx",
                        help="exported ONNX model (default: mnist_classifier/models/cnn.onnx, the committed CNN)")
    parser.add_argument("--invert", choices=["auto", "yes", "no"], default="auto",
                        help="invert dark-on-light drawings: auto decides from the image border (default)")
    args = parser.parse_args(argv)
    try:
        predictor = DigitPredictor(args.model)
    except serving.ModelFileError as err:
        print(f"error: cannot load the model: {err}", file=sys.stderr)
        return 2
    invert = {"auto": None, "yes": True, "no": False}[args.invert]
    failed = 0
    for path in args.images:
        try:
            result = predictor.predict(path, invert=invert)
        except ValueError as err:  # ImageError (not an image, truncated, too large) or a blank image
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        top = sorted(range(10), key=lambda d: -result.probabilities[d])[:3]
        others = ", ".join(f"{d}: {result.probabilities[d]:.3f}" for d in top[1:])
        print(f"{path}: {result.digit} (p={result.confidence:.3f}; next {others})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
