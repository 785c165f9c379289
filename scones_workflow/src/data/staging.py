"""Stage the Scones Unlimited images: CIFAR-100 bicycles and motorcycles as PNGs plus `.lst` files.

Sources, in order (`stage`):
1. `DATA_DIR/scones/` with `train/`, `test/`, `train.lst`, `test.lst` (the layout `lst.write_split` writes).
2. The CIFAR-100 python tarball (public, md5-verified), from which the two classes are extracted (`cifar`).
3. Offline with neither: a generated two-class stand-in in the same layout (`stand_in`), under
   `DATA_DIR/scones_stand_in/`, labelled as stand-in wherever it shows.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common import s3io
from common.downloads import DownloadError
from common.images import load_image

from . import cifar
from .lst import SPLITS, read_lst
from .stand_in import generate_stand_in

log = logging.getLogger(__name__)


@dataclass
class SconesData:
    """A staged folder: its two splits as read from the .lst files, where they came from."""
    root: Path
    train: pd.DataFrame  # columns: index, label, file (relative to root), class_name
    test: pd.DataFrame
    source: str
    stand_in: bool

    def frame(self, split: str) -> pd.DataFrame:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return getattr(self, split)


def open_folder(root: Path, source: str, stand_in: bool) -> SconesData:
    """Read a staged folder; the `file` column becomes `<split>/<name>`."""
    frames = {}
    for split in SPLITS:
        frame = read_lst(root / f"{split}.lst")
        frame["file"] = split + "/" + frame["file"]
        missing = [f for f in frame["file"] if not (root / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{root / (split + '.lst')} lists {len(missing)} missing image(s), "
                                    f"e.g. {root / missing[0]}")
        frames[split] = frame
    return SconesData(root, frames["train"], frames["test"], source, stand_in)


def stage(data_dir: Path, *, download: bool = True) -> SconesData:
    """The staged dataset: DATA_DIR/scones, else CIFAR-100 (downloaded), else the generated stand-in."""
    data_dir = Path(data_dir)
    real = data_dir / "scones"
    if (real / "train.lst").is_file() and (real / "test.lst").is_file():
        return open_folder(real, "CIFAR-100 bicycles and motorcycles (DATA_DIR/scones)", stand_in=False)
    if download:
        try:
            tarball = cifar.download_cifar(data_dir / "cifar-100")
        except DownloadError as err:
            log.warning("CIFAR-100 unavailable, using the generated stand-in: %s", err)
        else:
            cifar.cifar_to_scones(tarball, real)
            return open_folder(real, "CIFAR-100 bicycles and motorcycles, extracted to DATA_DIR/scones", stand_in=False)
    stand_in = data_dir / "scones_stand_in"
    if not (stand_in / "test.lst").is_file():
        generate_stand_in(stand_in)
    return open_folder(stand_in, "generated drawings of bicycles and motorcycles (no CIFAR-100 available)",
                       stand_in=True)


def load_arrays(data: SconesData, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x H x W x 3 uint8) and labels of a split, optionally its first `limit` rows."""
    frame = data.frame(split).iloc[:limit]
    images = np.stack([np.asarray(load_image(data.root / f)) for f in frame["file"]])
    return images, frame["label"].to_numpy()


def upload(data: SconesData, s3_uri: str, *, endpoint_url: str | None = None) -> list[str]:
    """Copy the staged folder (PNGs and .lst files) to `s3_uri`, keys relative to the folder."""
    return s3io.upload_folder(data.root, s3_uri, endpoint_url=endpoint_url)
