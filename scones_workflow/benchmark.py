"""TorchScript vs ONNX Runtime for the served model, side by side, in one run (`common.runtime_benchmark`).

    python -m scones_workflow.benchmark [--onnx scones_workflow/models/scones_classifier.onnx] \
        --torchscript scones_workflow/artifacts/full/model.ts

Single-image p50/p95 with 1 and 2 threads, batch-32 throughput, cold start of a fresh process to its
first prediction and that process's peak RSS, for both runtimes on the same 32 x 32 uint8 input the
endpoint sees from CIFAR, plus the ratio row. Timings are medians from one run on a shared machine:
read the ratios. The notebook records the table in metrics.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from scones_workflow.src.serving.predictor import default_model


def make_input(n: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def compare(onnx_path: Path, torchscript_path: Path, *, model: str = "scones classifier", repeats: int = 50,
            cold_starts: int = 3) -> list[dict]:
    from common import runtime_benchmark

    return runtime_benchmark.compare(torchscript_path, onnx_path, make_input, model=model, repeats=repeats,
                                     cold_starts=cold_starts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scones_workflow.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", default=None, help="the served ONNX model (default: the committed one)")
    parser.add_argument("--torchscript", required=True, help="the same model as TorchScript (`train` writes both)")
    parser.add_argument("--repeats", type=int, default=50, help="single-image runs per measurement (default 50)")
    args = parser.parse_args(argv)
    rows = compare(Path(args.onnx or default_model()), Path(args.torchscript), repeats=args.repeats)
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
