"""Landmark photos in the Udacity layout: find or download them (or a labelled stand-in), decode once, split.

Sources, in order (`locate`):
1. `DATA_DIR/landmark_images/{train,test}/NN.Name/*.jpg` (the Udacity set, 50 classes).
2. The public Udacity zip, downloaded into DATA_DIR and extracted there. Udacity publishes no checksum,
   so the integrity check is the extracted layout (`validate_layout`).
3. `DATA_DIR/landmark_gldv2/`: real GLDv2 photos of 12 landmarks in the same layout (the data these
   machines have; not the Udacity 50, so not comparable with the seed's numbers).
4. Offline: a generated stand-in in the same layout (`standin_photos.py`), announced loudly and marked
   `stand_in=True` so notebooks, metrics.json and the README say so.
`locate(..., dataset="folder")` (the notebooks' DATASET parameter) skips the search and uses
`DATA_DIR/folder`, any dataset in that layout: at least 2 class folders, the same in train/ and
test/, none empty, images of any size (a phone photo is decoded at reduced size, see `open_reduced`).

CPU efficiency: every JPEG is decoded once, resized (short side) and centre-cropped to a square,
and the uint8 tensors are cached on disk (`decode`); training then crops and augments those
small tensors instead of full-size photos. Eval preprocessing (resize short side, centre crop)
is the same as the exported predictor's, so validation numbers carry over to the app.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2
from tqdm.auto import tqdm

from common import torchkit
from common.container import Distributed
from common.downloads import DownloadError, extract_zip, fetch
from common.images import ImageError, load_image
from common.paths import display as shown_path
from landmark_classifier.src import standin_photos

URL = "https://udacity-dlnfd.s3-us-west-1.amazonaws.com/datasets/landmark_images.zip"
FOLDER = "landmark_images"
NUM_CLASSES = 50  # the Udacity set; other datasets may have any number >= MIN_CLASSES
MIN_CLASSES = 2
GLDV2_FOLDER = "landmark_gldv2"
# What the report says about the datasets it knows; any other folder is described by its counts.
KNOWN_DATASETS = {
    FOLDER: "the Udacity landmark_images dataset (50 landmarks)",
    GLDV2_FOLDER: ("real photos from the Google Landmarks Dataset v2 (GLDv2): 12 landmarks, not the Udacity 50, "
                   "so not comparable with the seed's 51% (scratch) / 75% (transfer)"),
}
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
    class_names: list[str]  # folder names, e.g. "06.Niagara_Falls"
    source: str
    stand_in: bool
    note: str = ""
    counts: dict[str, int] | None = None  # images per split, from the layout check

    @property
    def display_names(self) -> list[str]:
        return [display_name(name) for name in self.class_names]

    @property
    def name(self) -> str:
        """The dataset's folder name (e.g. "landmark_gldv2")."""
        return self.root.name


def display_name(folder: str) -> str:
    """"06.Niagara_Falls" -> "Niagara Falls": the numeric prefix dropped, underscores as spaces."""
    shown = re.sub(r"^\d+[._ -]", "", folder).replace("_", " ").strip()
    return shown or folder


def class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def validate_layout(root: Path, num_classes: int | None = None) -> list[str]:
    """Check `root/train` and `root/test` hold the same class folders (at least 2, or exactly
    `num_classes` when given), each with at least one image.

    Returns the class names; `layout_counts` gives the image counts. Raises ValueError naming
    the folder at fault."""
    names = None
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise ValueError(f"{folder} is missing: expected {root}/train/<class>/ and {root}/test/<class>/")
        found = class_folders(folder)
        if num_classes is not None and len(found) != num_classes:
            raise ValueError(f"{folder} has {len(found)} class folders, expected {num_classes}")
        if len(found) < MIN_CLASSES:
            raise ValueError(f"{folder} has {len(found)} class folder(s): a classifier needs at least "
                             f"{MIN_CLASSES} (expected {folder}/<class>/*.jpg)")
        if names is not None and found != names:
            differ = sorted(set(found) ^ set(names))
            raise ValueError(f"{folder} and {root / 'train'} list different classes: {differ[:5]}")
        for name in found:
            if not _images_in(folder / name):
                raise ValueError(f"{folder / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        names = found
    return names


def layout_counts(root: Path, class_names: list[str]) -> dict[str, int]:
    """Images per split ({"train": n, "test": n}) of a validated layout."""
    return {split: sum(len(_images_in(root / split / name)) for name in class_names) for split in ("train", "test")}


def describe(root: Path, class_names: list[str], counts: dict[str, int]) -> str:
    """What the report says the data was: the known datasets by name, any other by its folder."""
    what = KNOWN_DATASETS.get(root.name, f"real photos from {root.name}/")
    return (f"{what}; {len(class_names)} classes, {counts['train']:,} train / {counts['test']:,} test images "
            f"({shown_path(root)})")


def open_dataset(root: Path, num_classes: int | None = None) -> LandmarkData:
    """A real dataset in the Udacity layout, checked; prints its class and image counts."""
    names = validate_layout(root, num_classes)
    counts = layout_counts(root, names)
    print(f"{shown_path(root)}: {len(names)} classes, {counts['train']:,} train / {counts['test']:,} test images")
    return LandmarkData(root, names, describe(root, names, counts), False, counts=counts)


def download(data_dir: Path) -> Path:
    """Download and extract the real dataset into `data_dir`; returns `data_dir/landmark_images`."""
    zip_path = fetch(URL, data_dir, what="the Udacity landmark_images dataset")
    extract_zip(zip_path, data_dir)
    root = data_dir / FOLDER
    validate_layout(root, NUM_CLASSES)
    return root


def locate(data_dir: Path, *, dataset: str | None = None, allow_download: bool | None = None,
           standin_size: str = "standard") -> LandmarkData:
    """`DATA_DIR/dataset` when named; else the Udacity set (present or downloaded), else
    `DATA_DIR/landmark_gldv2`, else the generated stand-in (said loudly).

    `allow_download` defaults to True unless the environment variable LANDMARK_OFFLINE is 1."""
    data_dir = Path(data_dir)
    if dataset:
        root = data_dir / dataset
        if not root.is_dir():
            raise ValueError(f"DATASET={dataset!r}: {root} is not a folder (expected {root}/train/<class>/*.jpg "
                             f"and {root}/test/<class>/*.jpg)")
        return open_dataset(root)
    if allow_download is None:
        allow_download = os.environ.get(OFFLINE_ENV, "") != "1"
    root = data_dir / FOLDER
    if root.exists():
        return open_dataset(root)
    reason = f"{OFFLINE_ENV}=1, download not attempted"
    if allow_download:
        try:
            root = download(data_dir)
            found = open_dataset(root)
            found.source += ", downloaded"
            return found
        except DownloadError as err:
            print(err)  # the whole story; the stand-in's label keeps the gist ("ConnectionError")
            cause = str(err).splitlines()[0].rpartition(f"{URL}: ")[2]
            reason = f"the download failed: {cause.split(': ')[0] or 'unknown error'}"
    if (data_dir / GLDV2_FOLDER).exists():
        print(f"The Udacity landmark_images dataset is not available ({reason}); "
              f"using {shown_path(data_dir / GLDV2_FOLDER)}.")
        return open_dataset(data_dir / GLDV2_FOLDER)
    return make_standin(data_dir, standin_size, reason)


def make_standin(data_dir: Path, size: str, reason: str) -> LandmarkData:
    if size not in STANDIN_SIZES:
        raise ValueError(f"unknown stand-in size {size!r}; choose from {', '.join(STANDIN_SIZES)}")
    spec = STANDIN_SIZES[size]
    root = standin_photos.generate(Path(data_dir) / f"{FOLDER}_standin_{size}", **spec)
    names = validate_layout(root, spec["classes"])
    counts = layout_counts(root, names)
    print("=" * 78)
    print(f"STAND-IN DATA: the real landmark dataset is not in {shown_path(data_dir / FOLDER)} ({reason}).")
    print(f"Using {spec['classes']} classes of generated scenes in {shown_path(root)}; "
          "numbers are NOT real-data results.")
    print("=" * 78, flush=True)
    source = (f"generated stand-in: {spec['classes']} classes of procedurally drawn landmark scenes, "
              f"{spec['train_per_class']} train + {spec['test_per_class']} test images per class")
    note = (f"No real landmark photos were available ({reason}; no {GLDV2_FOLDER}/ either); "
            "real-data numbers come only from a run on a real dataset in DATA_DIR.")
    return LandmarkData(root, names, source, True, note, counts)


def list_images(split_dir: Path, class_names: list[str]) -> tuple[list[Path], np.ndarray]:
    """Image paths of one split and their class indices (in `class_names` order)."""
    paths, labels = [], []
    for index, name in enumerate(class_names):
        files = _images_in(split_dir / name)
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


def open_reduced(path: Path, size: int) -> Image.Image:
    """`load_image(path)`, but a large JPEG is decoded at a reduced scale (1/2, 1/4 or 1/8, never
    below twice `size`): a 12-megapixel phone photo decodes ~10x faster, and the result is
    resized to `size` anyway. Anything PIL cannot open goes to `load_image` for its error."""
    try:
        image = Image.open(path)
        if image.format == "JPEG":
            image.draft("RGB", (2 * size, 2 * size))
    except Exception:  # noqa: BLE001 - load_image raises the ImageError that names the file
        try:
            return load_image(path)
        except OSError as err:  # PIL's "Truncated File Read" while reading the header
            raise ImageError(f"{path}: cannot decode the image ({err})") from None
    return load_image(image, name=str(path))


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
    digest = hashlib.sha1(f"{size}|v2".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


@dataclass
class Decoded:
    """Images decoded from `paths`: `images[i]` is `paths[kept[i]]`; unreadable files are listed in `skipped`."""
    images: torch.Tensor  # N x 3 x size x size uint8
    kept: np.ndarray  # indices into the paths that were decoded
    skipped: list[str]  # "path: why" for each file that is not a usable image


def decode_images(paths: list[Path], size: int, cache_dir: Path | None = None, desc: str = "decoding") -> Decoded:
    """Every image as a `size` x `size` uint8 square, decoded once and cached in `cache_dir`.

    A file that is not a usable image (truncated, empty, not an image) is skipped with a warning
    naming it, so one bad download does not stop a training run. The cache key covers the paths,
    their sizes and modification times, and `size`."""
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"images_{size}_{_cache_key(paths, size)}.pt"
        if cache.exists():
            stored = torch.load(cache)
            return Decoded(stored["images"], stored["kept"].numpy(), stored["skipped"])
    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    kept, skipped = [], []
    for i, path in enumerate(tqdm(paths, desc=desc, unit="img", leave=False)):
        try:
            images[len(kept)] = square_uint8(open_reduced(path, size), size)
        except ImageError as err:
            skipped.append(str(err))
            warnings.warn(f"skipped an unreadable image: {err}", stacklevel=2)
            continue
        kept.append(i)
    result = Decoded(images[:len(kept)].clone(), np.asarray(kept, dtype=np.int64), skipped)
    if cache is not None:  # atomic: an interrupted run never leaves half a cache
        torchkit.save({"images": result.images, "kept": torch.from_numpy(result.kept), "skipped": skipped}, cache)
    return result


def decode(paths: list[Path], size: int, cache_dir: Path | None = None, desc: str = "decoding") -> torch.Tensor:
    """All images as one N x 3 x size x size uint8 tensor; ImageError if any is unreadable."""
    decoded = decode_images(paths, size, cache_dir, desc)
    if decoded.skipped:
        raise ImageError(decoded.skipped[0])
    return decoded.images


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
    skipped: list[str] = field(default_factory=list)  # unreadable files, "path: why"

    @property
    def display_names(self) -> list[str]:
        return [display_name(name) for name in self.class_names]


def load_splits(data: LandmarkData, size: int, cache_dir: Path | None = None, *,
                valid_fraction: float = 0.2, seed: int = 0) -> Splits:
    """Decode train/ and test/ at `size` (cached), split train/ into train and validation.

    The split depends only on the file list and the seed, never on `size`, so every notebook and
    decode size validates on the same images. Mean and std come from the training part only
    (cached beside the images)."""
    train_paths, train_labels = list_images(data.root / "train", data.class_names)
    test_paths, test_labels = list_images(data.root / "test", data.class_names)
    train_idx, valid_idx = stratified_split(train_labels, valid_fraction, seed)
    decoded_train = decode_images(train_paths, size, cache_dir, desc="decoding train/")
    decoded_test = decode_images(test_paths, size, cache_dir, desc="decoding test/")
    # position of each kept file in the decoded tensor (-1: skipped)
    position = np.full(len(train_paths), -1)
    position[decoded_train.kept] = np.arange(len(decoded_train.kept))
    train_idx, valid_idx = (position[idx][position[idx] >= 0] for idx in (train_idx, valid_idx))
    labels = torch.from_numpy(train_labels[decoded_train.kept])
    all_train = decoded_train.images
    stats_file = None
    if cache_dir is not None:
        kept_paths = [train_paths[i] for i in decoded_train.kept[train_idx]]
        stats_file = Path(cache_dir) / f"stats_{_cache_key(kept_paths, size)}_{seed}.json"
    mean, std = channel_stats(all_train[train_idx], stats_file)
    return Splits(size, data.class_names,
                  (all_train[train_idx], labels[train_idx]), (all_train[valid_idx], labels[valid_idx]),
                  (decoded_test.images, torch.from_numpy(test_labels[decoded_test.kept])),
                  [test_paths[i] for i in decoded_test.kept], mean, std,
                  decoded_train.skipped + decoded_test.skipped)


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
                seed: int = 0, workers: int | None = None, shard: Distributed | None = None) -> DataLoader:
    """Batches of `transform`ed images. With `shard` (a distributed run's training loader), each
    process gets its `DistributedSampler` share of every epoch, `batch_size` being the global batch."""
    workers = loader_workers() if workers is None else workers
    dataset = TensorImages(images, labels, transform)
    if shard is not None and shard.distributed:
        sampler = DistributedSampler(dataset, shard.world_size, shard.rank, shuffle=shuffle, seed=seed)
        return DataLoader(dataset, batch_size=shard.shard(batch_size), sampler=sampler, num_workers=workers,
                          persistent_workers=workers > 0)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                      num_workers=workers, persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None)
