"""Training and inference speed of every model, as medians over repeats and as ratios to the baseline.

    python -m mnist_classifier.benchmark [--repeats 5] [--threads 2] [--json speed.json]
    python -m mnist_classifier.benchmark --runtimes [--json runtimes.json]   # TorchScript vs ONNX Runtime

Training speed: optimisation steps (with the model's own batch size and augmentation)
on random batches after a warm-up. Inference: the committed TorchScript files
(mnist_classifier/models/*.pt) when present, else freshly built models, on batches of
1,000 and single images. Shared machines are noisy: compare ratios, not absolutes.

`--runtimes` serves each committed model both ways (`<name>.pt` with TorchScript, `<name>.onnx`
with ONNX Runtime) and prints single-image p50/p95 with 1 and 2 threads, batch-32 throughput,
cold start to the first prediction and serving peak RSS, with ONNX Runtime's speed-up.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from common.serving import load_torchscript
from mnist_classifier.src.data import Split
from mnist_classifier.src.experiments import EXPERIMENTS
from mnist_classifier.src.predict import MODELS_DIR
from mnist_classifier.src.train import make_optimizer, train_epoch


def runtimes(models_dir: Path = MODELS_DIR, names: list[str] | None = None, repeats: int = 60) -> pd.DataFrame:
    """TorchScript vs ONNX Runtime for every model exported both ways in `models_dir`."""
    from common.runtime_benchmark import compare

    names = names or [e.name for e in EXPERIMENTS]
    rows = []
    for name in names:
        pt, onnx = models_dir / f"{name}.pt", models_dir / f"{name}.onnx"
        if pt.is_file() and onnx.is_file():
            pixels = lambda n: torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(n)).numpy()  # noqa: E731
            rows += compare(pt, onnx, pixels, model=name, repeats=repeats)
    if not rows:
        raise FileNotFoundError(f"{models_dir}: no model exported both as .pt and .onnx; run the notebook first")
    return pd.DataFrame(rows)


def _median_rate(work, items: int, repeats: int) -> float:
    work()  # warm-up: allocator, oneDNN kernel selection
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        rates.append(items / (time.perf_counter() - started))
    return statistics.median(rates)


def benchmark(repeats: int = 5, train_batches: int = 20) -> pd.DataFrame:
    rows = []
    for experiment in EXPERIMENTS:
        config = experiment.config
        n = config.batch_size * train_batches
        split = Split(torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,)))
        model = experiment.build()
        if any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
            model.to(memory_format=torch.channels_last)  # as fit() trains it
        optimizer = make_optimizer(model, config)
        train_rate = _median_rate(lambda: train_epoch(model, split, optimizer, config), n, repeats)

        exported = MODELS_DIR / f"{experiment.name}.pt"
        source = "committed TorchScript" if exported.is_file() else "fresh model"
        inference = load_torchscript(exported) if exported.is_file() else experiment.build().eval()
        batch, single = torch.randn(1000, 1, 28, 28), torch.randn(1, 1, 28, 28)
        with torch.no_grad():
            batch_rate = _median_rate(lambda: inference(batch), 1000, repeats)
            single_rate = _median_rate(lambda: [inference(single) for _ in range(100)], 100, repeats)
        rows.append({"model": experiment.name, "train images/s": round(train_rate),
                     "inference images/s (batch 1000)": round(batch_rate),
                     "single-image latency ms": round(1000 / single_rate, 3), "inference model": source})
    table = pd.DataFrame(rows)
    base = table.iloc[0]
    table["train speed vs baseline"] = (table["train images/s"] / base["train images/s"]).round(3)
    table["inference speed vs baseline"] = (table["inference images/s (batch 1000)"]
                                            / base["inference images/s (batch 1000)"]).round(3)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_classifier.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (default 5)")
    parser.add_argument("--train-batches", type=int, default=20, help="batches per timed training run (default 20)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table to this JSON file")
    parser.add_argument("--runtimes", action="store_true",
                        help="compare TorchScript and ONNX Runtime serving the committed models instead")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR,
                        help="where the .pt and .onnx files are (default: the committed models)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.runtimes:
        table = runtimes(args.models_dir)
        print("TorchScript vs ONNX Runtime (speed-up row: > 1 means ONNX Runtime is faster or leaner)")
    else:
        table = benchmark(args.repeats, args.train_batches)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, medians of {args.repeats} repeats")
    print(table.to_string(index=False))
    if args.json:
        args.json.write_text(json.dumps(table.to_dict(orient="records"), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
