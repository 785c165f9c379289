"""The Udacity landmark dataset: find or download it (or a labelled stand-in), decode it once, split it.

Sources, in order (`locate`):
1. `DATA_DIR/landmark_images/{train,test}/NN.Name/*.jpg` (50 classes).
2. The public zip, downloaded into DATA_DIR and extracted there. Udacity publishes no checksum,
   so the integrity check is the extracted layout: 50 class folders in train/ and test/, none empty.
3. Offline: a generated stand-in in the same layout (`standin.py`), announced loudly and marked
   `stand_in=True` so notebooks, metrics.json and the README say so.

CPU efficiency: every JPEG is decoded once, resized (short side) and centre-cropped to a square,
and the uint8 tensors are cached on disk (`decode`); training then crops and augments those
small tensors instead of full-size photos. Eval preprocessing (resize short side, centre crop)
is the same as the exported predictor's, so validation numbers carry over to the app.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm.auto import tqdm

from common.downloads import DownloadError, extract_zip, fetch
from common.images import load_image
from landmark_classifier.src import standin

URL = "https://udacity-dlnfd.s3-us-west-1.amazonaws.com/datasets/landmark_images.zip"
FOLDER = "landmark_images"
NUM_CLASSES = 50
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
# Set to 1 to never try the download (tests, air-gapped machines): straight to the stand-in.
OFFLINE_ENV = "LANDMARK_OFFLINE"

# Stand-in sizes: `small` for the tests' tiny profile, `standard` otherwise.
STANDIN_SIZES = {
    "small": {"classes": 4, "train_per_class": 10, "test_per_class": 4},
    "standard": {"classes": 9, "train_per_class": 40, "test_per_class": 12},
}


@dataclass
class LandmarkData:
    root: Path  # holds train/ and test/
    class_names: list[str]
    source: str
    stand_in: bool
    note: str = ""


def class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def validate_layout(root: Path, num_classes: int | None = NUM_CLASSES) -> list[str]:
    """Check `root/train` and `root/test` hold the same class folders (`num_classes` of them), none empty.

    Returns the class names. Raises ValueError naming the folder at fault."""
    names = None
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise ValueError(f"{folder} is missing: expected {root}/train/<class>/ and {root}/test/<class>/")
        found = class_folders(folder)
        if num_classes is not None and len(found) != num_classes:
            raise ValueError(f"{folder} has {len(found)} class folders, expected {num_classes}")
        if names is not None and found != names:
            differ = sorted(set(found) ^ set(names))
            raise ValueError(f"{folder} and {root / 'train'} list different classes: {differ[:5]}")
        for name in found:
            if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in (folder / name).iterdir()):
                raise ValueError(f"{folder / name} holds no images")
        names = found
    return names


def download(data_dir: Path) -> Path:
    """Download and extract the real dataset into `data_dir`; returns `data_dir/landmark_images`."""
    zip_path = fetch(URL, data_dir, what="the Udacity landmark_images dataset")
    extract_zip(zip_path, data_dir)
    root = data_dir / FOLDER
    validate_layout(root)
    return root


def locate(data_dir: Path, *, allow_download: bool | None = None, standin_size: str = "standard") -> LandmarkData:
    """The real dataset when present or downloadable, else the generated stand-in (said loudly).

    `allow_download` defaults to True unless the environment variable LANDMARK_OFFLINE is 1."""
    data_dir = Path(data_dir)
    if allow_download is None:
        allow_download = os.environ.get(OFFLINE_ENV, "") != "1"
    root = data_dir / FOLDER
    if root.exists():
        return LandmarkData(root, validate_layout(root), f"the Udacity landmark_images dataset ({root})", False)
    reason = f"{OFFLINE_ENV}=1, download not attempted"
    if allow_download:
        try:
            root = download(data_dir)
            return LandmarkData(root, class_folders(root / "train"),
                                f"the Udacity landmark_images dataset, downloaded to {root}", False)
        except DownloadError as err:
            print(err)  # the whole story; the stand-in's label keeps the gist ("ConnectionError")
            cause = str(err).splitlines()[0].rpartition(f"{URL}: ")[2]
            reason = f"the download failed: {cause.split(': ')[0] or 'unknown error'}"
    return make_standin(data_dir, standin_size, reason)


def make_standin(data_dir: Path, size: str, reason: str) -> LandmarkData:
    if size not in STANDIN_SIZES:
        raise ValueError(f"unknown stand-in size {size!r}; choose from {', '.join(STANDIN_SIZES)}")
    spec = STANDIN_SIZES[size]
    root = standin.generate(Path(data_dir) / f"{FOLDER}_standin_{size}", **spec)
    names = validate_layout(root, spec["classes"])
    print("=" * 78)
    print(f"STAND-IN DATA: the real landmark dataset is not in {data_dir / FOLDER} ({reason}).")
    print(f"Using {spec['classes']} classes of generated scenes in {root}; numbers are NOT real-data results.")
    print("=" * 78, flush=True)
    source = (f"generated stand-in: {spec['classes']} classes of procedurally drawn landmark scenes, "
              f"{spec['train_per_class']} train + {spec['test_per_class']} test images per class")
    note = (f"The Udacity landmark_images dataset was not available ({reason}); "
            "real-data numbers come only from a run with DATA_DIR/landmark_images present.")
    return LandmarkData(root, names, source, True, note)


def list_images(split_dir: Path, class_names: list[str]) -> tuple[list[Path], np.ndarray]:
    """Image paths of one split and their class indices (in `class_names` order)."""
    paths, labels = [], []
    for index, name in enumerate(class_names):
        files = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [index] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def stratified_split(labels: np.ndarray, valid_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded, stratified train/validation split."""
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    indices = np.arange(len(labels))
    train_idx, valid_idx = train_test_split(indices, test_size=valid_fraction, stratify=labels, random_state=seed)
    return np.sort(train_idx), np.sort(valid_idx)


def square_uint8(image: Image.Image, size: int) -> torch.Tensor:
    """Resize the short side to `size`, centre-crop a square: a 3 x size x size uint8 tensor."""
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize((max(size, round(width * scale)), max(size, round(height * scale))),
                           Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    array = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _cache_key(paths: list[Path], size: int) -> str:
    digest = hashlib.sha1(str(size).encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def decode(paths: list[Path], size: int, cache_dir: Path | None = None, desc: str = "decoding") -> torch.Tensor:
    """All images as one N x 3 x size x size uint8 tensor, decoded once and cached in `cache_dir`.

    The cache key covers the paths, their sizes and modification times, and `size`."""
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"images_{size}_{_cache_key(paths, size)}.pt"
        if cache.exists():
            return torch.load(cache)
    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, path in enumerate(tqdm(paths, desc=desc, unit="img", leave=False)):
        images[i] = square_uint8(load_image(path), size)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save(images, tmp)
        tmp.replace(cache)  # atomic: an interrupted run never leaves half a cache
    return images


def channel_stats(images: torch.Tensor, cache_file: Path | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (in [0, 1] units) of uint8 N x 3 x H x W images, cached as JSON."""
    if cache_file is not None and Path(cache_file).exists():
        stats = json.loads(Path(cache_file).read_text())
        return stats["mean"], stats["std"]
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(256):
        values = chunk.to(torch.float64) / 255
        total += values.sum(dim=(0, 2, 3))
        squares += (values ** 2).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean ** 2).clamp_min(1e-12).sqrt()
    result = [round(v, 4) for v in mean.tolist()], [round(v, 4) for v in std.tolist()]
    if cache_file is not None:
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        Path(cache_file).write_text(json.dumps({"mean": result[0], "std": result[1]}) + "\n")
    return result


@dataclass
class Splits:
    """Decoded images (uint8, square, `size` pixels) and labels of train, validation and test."""
    size: int
    class_names: list[str]
    train: tuple[torch.Tensor, torch.Tensor]
    valid: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    test_paths: list[Path]
    mean: list[float]
    std: list[float]


def load_splits(data: LandmarkData, size: int, cache_dir: Path | None = None, *,
                valid_fraction: float = 0.2, seed: int = 0) -> Splits:
    """Decode train/ and test/ at `size` (cached), split train/ into train and validation.

    Mean and std come from the training part only (cached beside the images)."""
    train_paths, train_labels = list_images(data.root / "train", data.class_names)
    test_paths, test_labels = list_images(data.root / "test", data.class_names)
    all_train = decode(train_paths, size, cache_dir, desc="decoding train/")
    test_images = decode(test_paths, size, cache_dir, desc="decoding test/")
    train_idx, valid_idx = stratified_split(train_labels, valid_fraction, seed)
    labels = torch.from_numpy(train_labels)
    stats_file = None
    if cache_dir is not None:
        stats_file = Path(cache_dir) / f"stats_{_cache_key([train_paths[i] for i in train_idx], size)}_{seed}.json"
    mean, std = channel_stats(all_train[train_idx], stats_file)
    return Splits(size, data.class_names,
                  (all_train[train_idx], labels[train_idx]), (all_train[valid_idx], labels[valid_idx]),
                  (test_images, torch.from_numpy(test_labels)), test_paths, mean, std)


def train_transform(size: int, mean: list[float], std: list[float], *, trivial_augment: bool = True) -> v2.Compose:
    """Random resized crop, flip, TrivialAugment (optional), then normalise: uint8 in, float out."""
    steps = [v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    if trivial_augment:
        steps.append(v2.TrivialAugmentWide())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def eval_transform(size: int, mean: list[float], std: list[float], resize: int | None = None) -> v2.Compose:
    """Resize the short side to `resize` (default: size * 256/224), centre-crop `size`, normalise."""
    resize = resize or round(size * 256 / 224)
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


class TensorImages(Dataset):
    """(transform(image), label) pairs over uint8 image tensors already in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        return (self.transform(image) if self.transform else image), self.labels[index]


def loader_workers() -> int:
    """Data-loader worker processes: none on 1-2 cores (they would steal the cores training needs),
    else up to 4, leaving two cores for the model."""
    return max(0, min(4, (os.cpu_count() or 1) - 2))


def make_loader(images: torch.Tensor, labels: torch.Tensor, transform, *, batch_size: int, shuffle: bool,
                seed: int = 0, workers: int | None = None) -> DataLoader:
    workers = loader_workers() if workers is None else workers
    return DataLoader(TensorImages(images, labels, transform), batch_size=batch_size, shuffle=shuffle,
                      num_workers=workers, persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None)
