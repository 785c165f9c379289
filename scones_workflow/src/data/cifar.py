"""CIFAR-100's bicycles and motorcycles: the public python tarball (md5-verified), extracted to PNGs + `.lst` files."""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from common.downloads import fetch

from .lst import SPLITS, write_split

CIFAR_FINE_LABELS = {8: 0, 48: 1}  # CIFAR-100 fine label -> our label
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
# The published checksum (an md5); common.downloads.fetch checks it through pooch.
CIFAR_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"


def download_cifar(dest_dir: Path) -> Path:
    """The CIFAR-100 tarball (161 MB) in `dest_dir`, downloaded with a progress bar and md5-checked
    by pooch (a mismatch raises ValueError naming the file, which is deleted)."""
    return fetch(CIFAR_URL, dest_dir, md5=CIFAR_MD5, what="CIFAR-100 (python version)")


def cifar_to_scones(tarball: Path, root: Path) -> None:
    """Extract bicycles and motorcycles from the CIFAR-100 python tarball into `root` (PNGs + .lst)."""
    with tarfile.open(tarball, "r:gz") as archive:
        for split in SPLITS:
            member = f"cifar-100-python/{split}"
            try:
                raw = archive.extractfile(member)
            except KeyError:
                raise ValueError(f"{tarball} has no member {member}: not the CIFAR-100 python version") from None
            batch = pickle.load(io.BytesIO(raw.read()), encoding="bytes")
            for key in (b"data", b"fine_labels", b"filenames"):
                if key not in batch:
                    raise ValueError(f"{tarball}:{member} has no key {key.decode()}")
            fine = np.asarray(batch[b"fine_labels"])
            keep = np.flatnonzero(np.isin(fine, list(CIFAR_FINE_LABELS)))
            images = np.asarray(batch[b"data"], dtype=np.uint8)[keep].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            labels = np.array([CIFAR_FINE_LABELS[int(f)] for f in fine[keep]])
            names = [batch[b"filenames"][i].decode() for i in keep]
            write_split(root, split, images, labels, names, keep.tolist())
