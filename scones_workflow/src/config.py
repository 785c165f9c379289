"""The workflow's settings per profile, nanoGPT style: one frozen `Config` per profile (`PROFILES`,
chosen with `config_for(PROFILE)` by the notebook and the CLI) holding the model's `TrainConfig` and
the sizes of the runs around it. The workflow's fixed constants (threshold, variants, alarm) are
`lambdas/constants.py`: the Lambdas and template.yaml read them too.
"""
from __future__ import annotations

from dataclasses import dataclass

from common.profiles import choose

from .training.model import TrainConfig


@dataclass(frozen=True)
class LoadTest:
    executions: int         # local Step Functions executions, `concurrency` at a time
    concurrency: int
    endpoint_requests: int  # requests straight to the endpoint, from `concurrency` clients


@dataclass(frozen=True)
class Config:
    name: str
    train: TrainConfig
    workflow_images: int | None  # test images sent through the local state machine (None: all 200)
    traffic: int                 # captured requests to the two-variant endpoint (monitoring, retraining)
    load: LoadTest
    benchmark_repeats: int       # TorchScript vs ONNX Runtime timings per runtime
    cold_starts: int


TINY = Config("tiny", TrainConfig(backbone="efficientnet_lite0", resolution=64, split_block=14, epochs=2),
              workflow_images=20, traffic=20, load=LoadTest(24, 4, 24), benchmark_repeats=6, cold_starts=1)
QUICK = Config("quick", TrainConfig(resolution=128, epochs=4), workflow_images=60, traffic=100,
               load=LoadTest(100, 8, 200), benchmark_repeats=50, cold_starts=3)
FULL = Config("full", TrainConfig(), workflow_images=None, traffic=200, load=LoadTest(200, 8, 600),
              benchmark_repeats=50, cold_starts=3)
PROFILES = {config.name: config for config in (TINY, QUICK, FULL)}


def config_for(profile: str) -> Config:
    """The profile's `Config`, or a ValueError naming the profiles there are."""
    return choose(PROFILES, profile)
