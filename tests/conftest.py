"""Shared fixtures. Tests never touch the network; real-data tests need DATA_DIR and skip without it."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

import common  # noqa: F401  (sets OpenMP's passive wait policy before any test imports torch)

matplotlib.use("Agg")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real datasets (`DATA_DIR`, e.g. ../shared/data); skips the test when absent."""
    from common.paths import data_dir

    if not os.environ.get("DATA_DIR"):
        pytest.skip("needs the real datasets: set DATA_DIR (e.g. DATA_DIR=../shared/data)")
    folder = data_dir()
    if not folder.is_dir():
        pytest.skip(f"DATA_DIR={folder} does not exist")
    return folder
