"""The exported landmark predictor on the CPU: TorchScript vs ONNX Runtime side by side, and the
latency of one upload as the app and the CLI serve it.

    python -m landmark_classifier.benchmark [--model FILE.onnx] [--torchscript FILE.pt] [--runs 50]
    python -m landmark_classifier.benchmark --upload-only [--image PHOTO]

Runtimes (`common.runtime_benchmark.compare`): single-image p50/p95 with 1 and 2 threads, batch-32
throughput, cold start of a fresh process to its first prediction and that process's peak RSS,
and the ratios, all measured in one run on a uint8 640 x 480 photo batch (the models resize it
themselves). Upload latency: decode the JPEG bytes (`common.images.load_image`) and run the ONNX
file, what one upload costs; a generated 1024 x 768 JPEG unless --image is given.
"""
from __future__ import annotations

import argparse
import io
import random
import sys
import time
from pathlib import Path

import numpy as np

from landmark_classifier.src import predictor as predictor_module

INPUT_HW = (480, 640)


def sample_photo(size: tuple[int, int] = (1024, 768), seed: int = 0) -> bytes:
    """JPEG bytes of a generated scene, for timing when no photo is given."""
    from landmark_classifier.src.standin_photos import LANDMARKS, draw_scene

    buffer = io.BytesIO()
    draw_scene(next(iter(LANDMARKS)), random.Random(seed), size).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def photo_batch(n: int, seed: int = 0) -> np.ndarray:
    """n uint8 RGB images, 3 x 480 x 640, as the exported models take them."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3, *INPUT_HW), dtype=np.uint8)


def measure_upload(model_path: str | Path, photo: bytes, *, runs: int = 50, warmup: int = 3,
                   threads: int = 1) -> dict[str, float]:
    """p50, p95 and mean milliseconds of decode + ONNX Runtime predict for `photo` (JPEG/PNG bytes)."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    model = predictor_module.load(model_path, threads=threads)
    timings = []
    for i in range(warmup + runs):
        started = time.perf_counter()
        predictor_module.probabilities(model, photo, name="benchmark photo")
        if i >= warmup:
            timings.append((time.perf_counter() - started) * 1000)
    values = np.asarray(timings)
    return {"p50_ms": round(float(np.percentile(values, 50)), 2), "p95_ms": round(float(np.percentile(values, 95)), 2),
            "mean_ms": round(float(values.mean()), 2), "runs": runs, "threads": threads}


def compare_runtimes(onnx_path: str | Path, torchscript_path: str | Path | None = None, *, runs: int = 50,
                     cold_starts: int = 3, batch: int = 32) -> list[dict]:
    """TorchScript vs ONNX Runtime rows (and a ratio row) for the exported predictor pair; the
    throughput column times batches of `batch` photos."""
    from common import runtime_benchmark

    onnx_path = Path(onnx_path)
    torchscript_path = Path(torchscript_path) if torchscript_path else onnx_path.with_suffix(".pt")
    if not torchscript_path.is_file():
        raise FileNotFoundError(f"{torchscript_path}: no TorchScript file beside {onnx_path.name}")
    name = predictor_module.load(onnx_path).metadata.get("model_name", onnx_path.stem)
    return runtime_benchmark.compare(torchscript_path, onnx_path, photo_batch, model=name, repeats=runs,
                                     cold_starts=cold_starts, batch=batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m landmark_classifier.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(predictor_module.default_model_path()),
                        help="exported ONNX predictor (default: %(default)s)")
    parser.add_argument("--torchscript", default=None, help="its TorchScript twin (default: the .pt beside it)")
    parser.add_argument("--image", help="a photo to time the upload with (default: a generated 1024 x 768 JPEG)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per measurement (default: 50)")
    parser.add_argument("--upload-only", action="store_true", help="only the upload latency (no torch needed)")
    args = parser.parse_args(argv)
    try:
        photo = Path(args.image).read_bytes() if args.image else sample_photo()
        upload = measure_upload(args.model, photo, runs=args.runs)
        print(f"{args.model}: upload (decode + predict) p50 {upload['p50_ms']:.1f} ms, p95 {upload['p95_ms']:.1f} ms "
              f"over {upload['runs']} runs on 1 thread")
        if not args.upload_only:
            for row in compare_runtimes(args.model, args.torchscript, runs=args.runs):
                print("  " + ", ".join(f"{k}: {v}" for k, v in row.items() if k != "model"))
    except (OSError, ValueError) as err:  # a missing file, an ImageError (a ValueError) naming the photo
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
