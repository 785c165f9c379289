"""One way to configure a project, nanoGPT style: a frozen dataclass holds every setting of a run,
its profiles are named instances of it, and the chosen one is passed down as one object.

Each project's `src/config.py` defines its `Config` and `PROFILES = {"tiny": ..., "quick": ...,
"full": ...}`; notebooks call `choose(PROFILES, PROFILE)` once and hand the result to `src`
functions (which read the fields they need, never a dozen loose arguments). A variant of a
profile is `dataclasses.replace(config, field=value)`: the instances themselves never change.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

C = TypeVar("C")

NAMES = ("tiny", "quick", "full")  # tiny: the tests (seconds); quick: a first look (minutes); full: the record


def choose(profiles: Mapping[str, C], name: str) -> C:
    """`profiles[name]`, or a ValueError that names the profile asked for and the ones there are."""
    try:
        return profiles[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose from {', '.join(profiles)}") from None
