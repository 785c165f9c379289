"""Stage the Scones Unlimited images: CIFAR-100 bicycles and motorcycles as PNGs plus `.lst` files.

Sources, in order (`stage`):
1. `DATA_DIR/scones/` with `train/`, `test/`, `train.lst`, `test.lst` (the layout this module writes).
2. The CIFAR-100 python tarball (public, md5-verified), from which the two classes are extracted.
3. Offline with neither: a generated two-class stand-in in the same layout, under
   `DATA_DIR/scones_stand_in/`, labelled as stand-in wherever it shows.

A `.lst` file is what SageMaker's image-classification algorithm reads: tab-separated
`index<TAB>label<TAB>relative path`, with label 0 = bicycle and 1 = motorcycle.
"""
from __future__ import annotations

import io
import logging
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from common import s3io
from common.downloads import DownloadError, fetch
from common.images import load_image

log = logging.getLogger(__name__)

CLASSES = ("bicycle", "motorcycle")
CIFAR_FINE_LABELS = {8: 0, 48: 1}  # CIFAR-100 fine label -> our label
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
# The published checksum (an md5); common.downloads.fetch checks it through pooch.
CIFAR_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
SPLITS = ("train", "test")


@dataclass
class SconesData:
    root: Path
    train: pd.DataFrame  # columns: index, label, file (relative to root), class_name
    test: pd.DataFrame
    source: str
    stand_in: bool

    def frame(self, split: str) -> pd.DataFrame:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return getattr(self, split)


# --------------------------------------------------------------------------- .lst files

def read_lst(path: Path) -> pd.DataFrame:
    """Read a `.lst` file and check every row; errors name the file and the line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3 or not parts[0].strip().isdigit() or parts[1].strip() not in ("0", "1"):
            raise ValueError(f"{path}, line {number}: expected 'index<TAB>0|1<TAB>file', got {line!r}")
        rows.append((int(parts[0]), int(parts[1]), parts[2].strip()))
    if not rows:
        raise ValueError(f"{path} lists no images")
    frame = pd.DataFrame(rows, columns=["index", "label", "file"])
    frame["class_name"] = frame["label"].map(dict(enumerate(CLASSES)))
    return frame


def write_split(root: Path, split: str, images: np.ndarray, labels: np.ndarray, names: list[str],
                indices: list[int]) -> None:
    """Write `root/split/<name>` PNGs and `root/split.lst` (file paths relative to root/split)."""
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    for image, name in zip(images, names):
        Image.fromarray(image).save(folder / name)
    lines = [f"{i}\t{int(label)}\t{name}" for i, label, name in zip(indices, labels, names)]
    s3io.write_text(root / f"{split}.lst", "\n".join(lines) + "\n")


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


# --------------------------------------------------------------------------- CIFAR-100

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


# --------------------------------------------------------------------------- stand-in

def _draw_vehicle(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A crude side view: two wheels and a frame; a motorcycle has thick wheels and a solid body."""
    scale = 4  # draw large, then downsample for anti-aliasing
    canvas = size * scale
    background = tuple(int(v) for v in rng.integers(120, 256, 3))
    image = Image.new("RGB", (canvas, canvas), background)
    draw = ImageDraw.Draw(image)
    color = tuple(int(v) for v in rng.integers(0, 110, 3))
    radius = int(rng.integers(18, 26))
    gap = int(rng.integers(54, 70))
    cx, cy = int(rng.integers(radius + 4, canvas - gap - radius - 4)), int(rng.integers(70, 96))
    wheel = 4 if label == 0 else 14
    for x in (cx, cx + gap):
        draw.ellipse([x - radius, cy - radius, x + radius, cy + radius], outline=color, width=wheel)
    if label == 0:
        top = cy - radius - 8
        for a, b in [((cx, cy), (cx + gap // 2, cy)), ((cx + gap // 2, cy), (cx + gap // 3, top)),
                     ((cx + gap // 3, top), (cx + gap, cy)), ((cx, cy), (cx + gap // 3, top))]:
            draw.line([a, b], fill=color, width=4)
    else:
        body = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.rounded_rectangle([cx + 6, cy - radius - 22, cx + gap - 6, cy - 4], radius=10, fill=body)
    noise = rng.normal(0, 8, (size, size, 3))
    small = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float64)
    return np.clip(small + noise, 0, 255).astype(np.uint8)


def generate_stand_in(root: Path, n_train: int = 200, n_test: int = 60, seed: int = 0) -> None:
    """Write a synthetic two-class dataset in the staged layout (balanced, shuffled)."""
    rng = np.random.default_rng(seed)
    counts = {"train": n_train, "test": n_test}
    for split in SPLITS:
        labels = rng.permutation(np.arange(counts[split]) % 2)
        images = np.stack([_draw_vehicle(int(label), rng) for label in labels])
        names = [f"standin_{CLASSES[label]}_{split}_{i:04d}.png" for i, label in enumerate(labels)]
        write_split(root, split, images, labels, names, list(range(len(labels))))


# --------------------------------------------------------------------------- entry points

def stage(data_dir: Path, *, download: bool = True) -> SconesData:
    """The staged dataset: DATA_DIR/scones, else CIFAR-100 (downloaded), else the generated stand-in."""
    data_dir = Path(data_dir)
    real = data_dir / "scones"
    if (real / "train.lst").is_file() and (real / "test.lst").is_file():
        return open_folder(real, "CIFAR-100 bicycles and motorcycles (DATA_DIR/scones)", stand_in=False)
    if download:
        try:
            tarball = download_cifar(data_dir / "cifar-100")
        except DownloadError as err:
            log.warning("CIFAR-100 unavailable, using the generated stand-in: %s", err)
        else:
            cifar_to_scones(tarball, real)
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
