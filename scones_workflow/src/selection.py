"""Model selection by 5-fold cross-validation on the training images (the test set is not read).

    python -m scones_workflow.src.selection [--data-dir ../shared/data] [--out selection.json]

Every candidate in CANDIDATES is scored with and without the test-time flip; trunk activations are
cached per image (scones_workflow/artifacts/cache), so a second run only retrains the heads.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from common import paths

from . import data, model

BASE = model.TrainConfig()
# (name, config): the seed's Lite0 setup first, then Lite2 at several resolutions and split points.
CANDIDATES = [
    ("lite0 160px split13", replace(BASE, backbone="efficientnet_lite0", resolution=160, split_block=13)),
    ("lite2 128px split15", replace(BASE, resolution=128)),
    ("lite2 160px split15", replace(BASE, resolution=160)),
    ("lite2 160px split11", replace(BASE, resolution=160, split_block=11)),
    ("lite2 192px split15", replace(BASE, resolution=192)),
    ("lite2 224px split15", replace(BASE, resolution=224)),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scones_workflow.src.selection", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=str(paths.REPO_ROOT / "scones_workflow" / "artifacts" / "selection.json"))
    parser.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
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
        scores = model.cross_validate(images, labels, config, cache_dir=cache)
        rows.append({"name": name, **scores, "seconds": round(time.perf_counter() - started, 1),
                     "config": asdict(config)})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "config"}), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
