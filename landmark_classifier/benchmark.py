"""Latency of the exported predictor for one photo on the CPU: p50 and p95 over repeated runs.

    python -m landmark_classifier.benchmark [--model FILE] [--image PHOTO] [--runs 50] [--threads 1]

One timed run is what the app does per upload: decode the JPEG bytes (`common.images.load_image`),
convert to a tensor, resize + crop + normalise + model + softmax (all inside the TorchScript file).
Without --image it times a generated 1024 x 768 JPEG (a typical downsized phone photo).
"""
from __future__ import annotations

import argparse
import io
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from landmark_classifier.src import predictor as predictor_module
from landmark_classifier.src.standin import LANDMARKS, draw_scene


def sample_photo(size: tuple[int, int] = (1024, 768), seed: int = 0) -> bytes:
    """JPEG bytes of a generated scene, for timing when no photo is given."""
    buffer = io.BytesIO()
    draw_scene(next(iter(LANDMARKS)), random.Random(seed), size).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@torch.no_grad()
def measure_latency(model_path: str | Path, photo: bytes, *, runs: int = 50, warmup: int = 3,
                    threads: int | None = None) -> dict[str, float]:
    """p50, p95 and mean milliseconds of decode + predict for `photo` (JPEG/PNG bytes)."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        model = predictor_module.load(model_path)
        timings = []
        for i in range(warmup + runs):
            started = time.perf_counter()
            model(predictor_module.to_tensor(photo, name="benchmark photo"))
            if i >= warmup:
                timings.append((time.perf_counter() - started) * 1000)
    finally:
        torch.set_num_threads(previous)
    values = np.asarray(timings)
    return {"p50_ms": round(float(np.percentile(values, 50)), 2), "p95_ms": round(float(np.percentile(values, 95)), 2),
            "mean_ms": round(float(values.mean()), 2), "runs": runs, "threads": threads or os.cpu_count() or 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m landmark_classifier.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(predictor_module.default_model_path()),
                        help="exported predictor (default: %(default)s)")
    parser.add_argument("--image", help="a photo to time (default: a generated 1024 x 768 JPEG)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs (default: 50)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    try:
        photo = Path(args.image).read_bytes() if args.image else sample_photo()
        result = measure_latency(args.model, photo, runs=args.runs, threads=args.threads)
    except (OSError, ValueError) as err:  # a missing file, an ImageError (a ValueError) naming the photo
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.model}: p50 {result['p50_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms, "
          f"mean {result['mean_ms']:.1f} ms over {result['runs']} runs on {result['threads']} CPU thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
