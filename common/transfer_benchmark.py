"""Which engine runs the transfer kit's trunk pass faster: ONNX Runtime or eager PyTorch (channels-last)?

    python -m common.transfer_benchmark [--rounds 5] [--batch 32] [--out trunk_engines.json]

Both projects' trunks are measured on random uint8 images of the size they cache: Scones (Lite0,
CIFAR's 32 px resized to 160, cut before block 13) and landmark (Lite2, 297 px squares centre-cropped
to 260, all but the last 2 blocks). The engines alternate within each round (a shared machine's
load hits both alike); the table gives the median seconds per image and the ratio torch / ONNX
Runtime. `common.transfer.ENGINE` is set from this measurement.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from common import transfer
from common.backbones import load_backbone

CASES = {  # name -> (backbone, top_blocks, image size, Prepare size, how)
    "scones: lite0 32px -> 160, split 13": ("efficientnet_lite0", 3, 32, 160, "resize"),
    "landmark: lite2 297px -> 260 crop, last 2 blocks": ("efficientnet_lite2", 2, 297, 260, "crop"),
}


def measure(case: tuple, batch: int, rounds: int) -> dict:
    name, top_blocks, image_size, size, how = case
    backbone = load_backbone(name)
    trunk, _ = transfer.split(backbone, top_blocks)
    prepare = transfer.Prepare(backbone, size, how)
    images = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8)
    caches = {engine: transfer.ActivationCache(prepare, trunk, None, engine=engine, batch_size=batch)
              for engine in transfer.ENGINES}
    for cache in caches.values():  # warm-up: ONNX export and session, oneDNN kernels
        cache._run(images)
    seconds = {engine: [] for engine in caches}
    for _ in range(rounds):
        for engine, cache in caches.items():
            started = time.perf_counter()
            cache._run(images)
            seconds[engine].append((time.perf_counter() - started) / batch)
    medians = {engine: statistics.median(values) for engine, values in seconds.items()}
    return {**{f"{engine} ms/image (image + mirror)": round(1000 * m, 2) for engine, m in medians.items()},
            "torch / onnxruntime": round(medians["torch"] / medians["onnxruntime"], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.transfer_benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per engine (median reported)")
    parser.add_argument("--batch", type=int, default=32, help="images per round (and their mirrors)")
    parser.add_argument("--out", help="also write the table as JSON here")
    args = parser.parse_args(argv)
    rows = {label: measure(case, args.batch, args.rounds) for label, case in CASES.items()}
    rows["threads"] = torch.get_num_threads()
    print(json.dumps(rows, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
