"""What a run spends: one frozen `Config`, its profiles `tiny`, `quick` and `full` as named instances.

The notebook picks one with `common.profiles.choose(PROFILES, PROFILE)` and hands it down:
`experiments.experiments(config)` scales the epochs of `experiments.EXPERIMENTS` (the models, as
data), `data.load_mnist` gets its training-set size and validation split, the serving benchmark its
repeats.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    train_limit: int | None   # training images used (None: all of them, 55,000 on MNIST)
    epoch_scale: float        # share of each experiment's epochs (at least one epoch each)
    serving_repeats: int      # timed repeats per model in the TorchScript vs ONNX Runtime comparison
    valid_size: int = 5000    # training images held out for validation (a tenth at most on the stand-in)
    seed: int = 0             # the validation split's and the training's


TINY = Config(train_limit=512, epoch_scale=0.0, serving_repeats=6)   # one epoch each: seconds, for the tests
QUICK = Config(train_limit=10_000, epoch_scale=0.25, serving_repeats=6)
FULL = Config(train_limit=None, epoch_scale=1.0, serving_repeats=60)

PROFILES = {"tiny": TINY, "quick": QUICK, "full": FULL}
