"""Model selection on the training images (the test set is not read).

    python -m scones_workflow.src.training.selection [--data-dir ../shared/data] [--only NAME ...] [--folds 5]

Every candidate in CANDIDATES is trained on the stratified fit split and scored on the 15 % validation
split (150 images), with and without the test-time flip; `--folds K` scores by K-fold cross-validation
instead (less noisy, K times the cost: too slow on 2 shared cores for the run of record's session).
Trunk activations are cached per image (scones_workflow/artifacts/cache), so a second run only retrains.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from common import paths

from .. import data
from . import model

BASE = model.TrainConfig()
# (name, config): the seed's Lite0 setup first, then Lite2 at several split points and learning rates.
CANDIDATES = [
    ("lite0 160px split13", replace(BASE, backbone="efficientnet_lite0", resolution=160, split_block=13, lr=1e-3)),
    # the kit's fine-tuning option (common.transfer.FinetuneConfig.drop_connect), measured on both projects
    ("lite0 160px split13 no drop connect", replace(BASE, backbone="efficientnet_lite0", resolution=160,
                                                    split_block=13, lr=1e-3, drop_connect=False)),
    ("lite2 160px split15 lr1e-3", replace(BASE, split_block=15, lr=1e-3)),
    ("lite2 160px split15 lr3e-4", replace(BASE, split_block=15, lr=3e-4)),
    ("lite2 160px split18 lr5e-4", replace(BASE, split_block=18, lr=5e-4)),
    ("lite2 224px split18 lr5e-4", replace(BASE, resolution=224, split_block=18, lr=5e-4)),
    ("lite0 224px split13", replace(BASE, backbone="efficientnet_lite0", resolution=224, split_block=13, lr=1e-3)),
    ("lite0 224px split10", replace(BASE, backbone="efficientnet_lite0", resolution=224, split_block=10, lr=1e-3)),
]


def holdout(images, labels, config, cache) -> dict:
    """Validation accuracy (best epoch) with and without the test-time flip."""
    import torch

    result = model.train(images, labels, config, cache_dir=cache)
    _, val = model.validation_split(labels, config.val_fraction, config.seed)
    acts = model.activation_cache(result.model, config, cache)(model.to_tensor(images[val]))
    plain = model.scores(result.model, acts, torch.as_tensor(labels[val]), mirror=False)[1]
    with_flip = result.val_accuracy if config.tta else None
    return {"accuracy_with_flip": with_flip, "accuracy": plain, "images": int(len(val)), "best_epoch": result.best_epoch,
            "history": [round(v, 4) for v in result.history["val_accuracy"]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scones_workflow.src.training.selection", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=str(paths.REPO_ROOT / "scones_workflow" / "artifacts" / "selection.json"))
    parser.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    parser.add_argument("--folds", type=int, default=0, help="K-fold cross-validation instead of the split")
    args = parser.parse_args(argv)
    staged = data.stage(paths.data_dir(args.data_dir))
    images, labels = data.load_arrays(staged, "train")
    cache = paths.REPO_ROOT / "scones_workflow" / "artifacts" / "cache"
    rows = []
    out = Path(args.out)
    if out.is_file():
        rows = [r for r in json.loads(out.read_text()) if not args.only or r["name"] not in args.only]
    for name, config in CANDIDATES:
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        scores = (model.cross_validate(images, labels, config, folds=args.folds, cache_dir=cache) if args.folds
                  else holdout(images, labels, config, cache))
        rows.append({"name": name, **scores, "seconds": round(time.perf_counter() - started, 1),
                     "config": asdict(config)})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "config"}), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
