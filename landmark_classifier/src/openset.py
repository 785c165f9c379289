"""Open set: "no known landmark" as an answer, with confidences that mean what they say.

Most photos a photo service sees show none of the landmarks the model knows. This module measures
how well established scores tell the known landmarks' photos from the rest, and picks one:

- `msp`: the largest softmax probability after temperature scaling (Hendrycks & Gimpel 2017;
  Guo et al. 2017 for the temperature);
- `energy`: T * logsumexp(logits / T) (Liu et al. 2020);
- `mahalanobis`: minus the smallest Mahalanobis distance of the penultimate features to a class
  mean, one shared covariance (Lee et al. 2018; scikit-learn's Ledoit-Wolf estimate);
- `knn`: minus the distance of the L2-normalised features to their k-th nearest training photo
  (Sun et al. 2022; scikit-learn's NearestNeighbors);
- `oe + msp`, `oe + energy`: the same scores of a model fine-tuned with outlier exposure
  (Hendrycks et al. 2019): real photos of no landmark pushed towards the uniform distribution.

The protocol (`heldout_protocol`): train on 9 of the 12 landmarks, treat the other 3 as unknown,
four rotations. The method is chosen on *validation* (the held-out classes' validation photos); its
threshold keeps `tpr` of the known validation photos and its temperature is fitted on them; the
test photos are scored once. Known photos are trained on and validated as themselves and as
`thumbnail_size`-px thumbnails, so the score does not simply flag small or blurry photos.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.images import load_image
from common.transfer import Activations, FinetuneConfig, fit_logistic_head, fit_top, mirror_mean

METHODS = ("msp", "energy", "mahalanobis", "knn", "oe + msp", "oe + energy")


@dataclass(frozen=True)
class OpenSetConfig:
    thumbnail_size: int = 64     # known photos are also trained and validated as thumbnails this big
    tpr: float = 0.95            # the share of known validation photos the threshold keeps
    knn_k: int = 10
    heldout: int = 3             # classes treated as unknown in each rotation of the protocol
    rotations: int = 4
    ece_bins: int = 15
    methods: tuple[str, ...] = METHODS


# ------------------------------------------------------------------------------- the photos

def thumbnails(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 N x 3 x R x R photos as `size`-px thumbnails (area-averaged, as photo services make
    them), enlarged back to R x R the way the served predictor resizes (bilinear, antialiased)."""
    resize = images.shape[-1]
    small = F.interpolate(images.float(), size=[size, size], mode="bilinear", antialias=True, align_corners=False)
    small = small.round().clamp(0, 255)
    big = F.interpolate(small, size=[resize, resize], mode="bilinear", antialias=True, align_corners=False)
    return big.round().clamp(0, 255).to(torch.uint8)


def _square(image, size: int) -> torch.Tensor:
    from landmark_classifier.src.data import square_uint8

    return square_uint8(image, size)


def _mnist(raw: Path, split: str, count: int) -> list:
    from PIL import Image

    with gzip.open(raw / f"{split}-images-idx3-ubyte.gz") as handle:
        pixels = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    return [Image.fromarray(p).convert("RGB") for p in pixels[:count]]


# skimage's bundled photographs (scikit-image.org/docs/stable/api/skimage.data.html), scikit-learn's two
# sample photos and matplotlib's Grace Hopper: everyday photos of no landmark, at their own sizes.
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock_motion", "coffee", "coins", "grass",
                  "gravel", "hubble_deep_field", "ihc", "moon", "motorcycle_left", "page", "retina", "rocket", "text")


def everyday_photos() -> dict[str, object]:
    """{name: PIL image} of the bundled everyday photographs (none shows one of the landmarks)."""
    import matplotlib
    import skimage
    import sklearn.datasets

    found = {}
    folder = Path(skimage.__file__).parent / "data"
    for name in SKIMAGE_PHOTOS:
        path = next(iter(sorted(folder.glob(f"{name}.*"))), None)
        if path is not None:
            found[f"skimage {name}"] = load_image(path)
    for name in ("china", "flower"):
        found[f"sklearn {name}"] = load_image(Path(sklearn.datasets.__file__).parent / "images" / f"{name}.jpg")
    found["matplotlib grace_hopper"] = load_image(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    return found


@dataclass
class NonLandmarks:
    """Real photos of no landmark, uint8 squares at the backbone's resize size. `train` (Scones'
    CIFAR training vehicles and MNIST training digits) is for outlier exposure only; the others
    are scored, never trained on."""
    train: torch.Tensor
    sets: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> images (evaluation only)
    sources: dict[str, str] = field(default_factory=dict)


def non_landmarks(data_dir: Path, size: int, *, per_source: int = 1000) -> NonLandmarks:
    """Scones' CIFAR vehicles (train for exposure, test for scoring), MNIST digits (likewise) and
    the bundled everyday photos (scoring only). A missing dataset is left out and said so."""
    data_dir = Path(data_dir)
    train, sets, sources = [], {}, {}
    scones = data_dir / "scones"
    if (scones / "train").is_dir():
        files = sorted((scones / "train").glob("*.png"))[:per_source]
        train += [_square(load_image(p), size) for p in files]
        sets["CIFAR vehicles (Scones test)"] = torch.stack(
            [_square(load_image(p), size) for p in sorted((scones / "test").glob("*.png"))])
        sources["CIFAR vehicles"] = f"{len(files)} train images for exposure, the 200 test images scored"
    raw = data_dir / "mnist" / "MNIST" / "raw"
    if (raw / "train-images-idx3-ubyte.gz").is_file():
        train += [_square(image, size) for image in _mnist(raw, "train", per_source)]
        sets["MNIST digits (test)"] = torch.stack([_square(image, size) for image in _mnist(raw, "t10k", 500)])
        sources["MNIST digits"] = f"{per_source} train digits for exposure, 500 test digits scored"
    everyday = everyday_photos()
    sets["everyday photos (skimage, sklearn, matplotlib)"] = torch.stack([_square(image, size)
                                                                          for image in everyday.values()])
    sources["everyday photos"] = f"{len(everyday)} bundled photographs, scored only: {', '.join(everyday)}"
    return NonLandmarks(torch.stack(train) if train else torch.zeros(0, 3, size, size, dtype=torch.uint8),
                        sets, sources)


# ----------------------------------------------------------------------- scores and metrics

def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature minimising the cross-entropy of softmax(logits / T) (Guo et al. 2017)."""
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.exp())


def calibration(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict:
    """Expected calibration error (equal-width confidence bins) and the reliability table."""
    confidence, predicted = probabilities.max(1), probabilities.argmax(1)
    correct = predicted == labels
    edges = np.linspace(0, 1, bins + 1)
    rows, ece = [], 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            gap = abs(correct[inside].mean() - confidence[inside].mean())
            ece += inside.mean() * gap
            rows.append({"low": round(float(low), 3), "high": round(float(high), 3), "photos": int(inside.sum()),
                         "confidence": round(float(confidence[inside].mean()), 4),
                         "accuracy": round(float(correct[inside].mean()), 4)})
    return {"ece": round(float(ece), 4), "bins": rows}


def msp(logits: torch.Tensor, temperature: float) -> np.ndarray:
    return torch.softmax(logits / temperature, 1).max(1).values.numpy()


def energy(logits: torch.Tensor, temperature: float) -> np.ndarray:
    return (temperature * torch.logsumexp(logits / temperature, 1)).numpy()


class Mahalanobis:
    """Minus the smallest Mahalanobis distance to a class mean, with one shared covariance."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        from sklearn.covariance import LedoitWolf

        x, y = features.double().numpy(), labels.numpy()
        self.means = np.stack([x[y == c].mean(0) for c in np.unique(y)])
        self.precision = LedoitWolf().fit(x - self.means[y]).precision_

    def __call__(self, features: torch.Tensor) -> np.ndarray:
        x = features.double().numpy()
        gaps = x[:, None, :] - self.means[None]
        distances = np.einsum("ncd,de,nce->nc", gaps, self.precision, gaps)
        return -distances.min(1)


class KNN:
    """Minus the Euclidean distance of the L2-normalised features to their k-th nearest training photo."""

    def __init__(self, features: torch.Tensor, k: int) -> None:
        from sklearn.neighbors import NearestNeighbors

        self.k = k
        self.index = NearestNeighbors(n_neighbors=k).fit(F.normalize(features.float(), dim=1).numpy())

    def __call__(self, features: torch.Tensor) -> np.ndarray:
        distances, _ = self.index.kneighbors(F.normalize(features.float(), dim=1).numpy())
        return -distances[:, -1]


def separation(known: np.ndarray, unknown: np.ndarray, tpr: float = 0.95) -> dict:
    """AUROC (known = positive, higher score = more known) and the FPR at `tpr` TPR, on the same photos."""
    from sklearn.metrics import roc_auc_score

    scores = np.concatenate([known, unknown])
    truth = np.concatenate([np.ones(len(known)), np.zeros(len(unknown))])
    threshold = np.quantile(known, 1 - tpr)
    return {"auroc": round(float(roc_auc_score(truth, scores)), 4),
            "fpr_at_tpr": round(float((unknown >= threshold).mean()), 4)}


# ---------------------------------------------------------------------------- one model, scored

@dataclass
class Fitted:
    """A fine-tuned top + head and what the open-set scores need from the training photos."""
    top: nn.Module
    head: nn.Linear
    mahalanobis: Mahalanobis
    knn: KNN
    temperature: float = 1.0

    def features(self, acts: Activations) -> torch.Tensor:
        return mirror_mean(self.top, acts)  # the penultimate features, as served (image + mirror)

    def scores(self, acts: Activations, method: str) -> tuple[np.ndarray, torch.Tensor]:
        """(open-set score per image, higher = more known; logits) of `method` (without "oe + ")."""
        features = self.features(acts)
        logits = self.head(features)
        name = method.removeprefix("oe + ")
        if name == "msp":
            return msp(logits, self.temperature), logits
        if name == "energy":
            return energy(logits, self.temperature), logits
        if name == "mahalanobis":
            return self.mahalanobis(features), logits
        if name == "knn":
            return self.knn(features), logits
        raise ValueError(f"unknown open-set method {method!r}; choose from {', '.join(METHODS)}")


@dataclass
class Known:
    """Known-class photos: each photo's activations and its thumbnail's, with labels."""
    photos: Activations
    thumbs: Activations
    labels: torch.Tensor

    def subset(self, index) -> Known:
        index = torch.as_tensor(index)
        return Known(self.photos.subset(index), self.thumbs.subset(index), self.labels[index])

    def both(self) -> tuple[Activations, torch.Tensor]:
        return Activations.join(self.photos, self.thumbs), torch.cat([self.labels, self.labels])


def fit_model(top: nn.Module, train: Known, valid: Known, tune: FinetuneConfig, config: OpenSetConfig, *,
              outliers: Activations | None = None, Cs: tuple[float, ...] = (0.3, 1.0)) -> Fitted:
    """A logistic head on the frozen top's features, then the top fine-tuned on photos and their
    thumbnails (and `outliers` for exposure); temperature fitted on the validation photos and thumbnails."""
    train_acts, train_y = train.both()
    valid_acts, valid_y = valid.both()
    head = fit_logistic_head(mirror_mean(top, train_acts), train_y, mirror_mean(top, valid_acts), valid_y, Cs)
    top, linear, _ = fit_top(top, head.linear, train_acts, train_y, valid_acts, valid_y, tune, outliers)
    features = mirror_mean(top, train_acts)
    fitted = Fitted(top, linear, Mahalanobis(features, train_y), KNN(features, config.knn_k))
    fitted.temperature = fit_temperature(linear(fitted.features(valid_acts)), valid_y)
    return fitted


# ------------------------------------------------------------------------------ the protocol

@dataclass
class Photos:
    """Everything the protocol scores, as cached activations of one backbone's trunk."""
    train: Known
    valid: Known
    test: Known
    outliers: Activations                # non-landmark photos for exposure (never scored)
    non_landmarks: dict[str, Activations]  # name -> non-landmark photos scored only


def activations(cache, splits, others: NonLandmarks, config: OpenSetConfig) -> Photos:
    """The trunk's activations (`common.transfer.ActivationCache`) of every photo, its thumbnail,
    and the non-landmark photos. `splits`: `data.load_splits` at the backbone's resize size."""
    def known(images: torch.Tensor, labels: torch.Tensor, name: str) -> Known:
        return Known(cache(images, desc=f"{name} photos"),
                     cache(thumbnails(images, config.thumbnail_size), desc=f"{name} thumbnails"), labels)

    return Photos(known(*splits.train, "train"), known(*splits.valid, "valid"), known(*splits.test, "test"),
                  cache(others.train, desc="non-landmarks (exposure)"),
                  {name: cache(images, desc=name) for name, images in others.sets.items()})


def _classes(known: Known, keep: list[int]) -> Known:
    """The photos of the `keep` classes, relabelled 0..len(keep)-1 in that order."""
    index = torch.nonzero(torch.isin(known.labels, torch.tensor(keep))).flatten()
    part = known.subset(index)
    mapping = {old: new for new, old in enumerate(keep)}
    part.labels = torch.tensor([mapping[int(y)] for y in part.labels])
    return part


def rotations(num_classes: int, config: OpenSetConfig, seed: int = 0) -> list[list[int]]:
    """The held-out classes of each rotation: a seeded shuffle of the classes cut into groups."""
    order = np.random.default_rng(seed).permutation(num_classes).tolist()
    groups = [sorted(order[i:i + config.heldout]) for i in range(0, num_classes, config.heldout)]
    return groups[:config.rotations]


def _score_rotation(models: dict[str, Fitted], photos: Photos, unknown: list[int], config: OpenSetConfig) -> list[dict]:
    known_classes = [c for c in range(int(photos.train.labels.max()) + 1) if c not in unknown]
    valid_k, test_k = _classes(photos.valid, known_classes), _classes(photos.test, known_classes)
    valid_u, test_u = _classes(photos.valid, unknown), _classes(photos.test, unknown)
    rows = []
    for method in config.methods:
        model = models["oe" if method.startswith("oe") else "plain"]
        score = lambda acts: model.scores(acts, method)[0]  # noqa: E731
        valid_known = score(valid_k.photos)
        threshold = float(np.quantile(np.concatenate([valid_known, score(valid_k.thumbs)]), 1 - config.tpr))
        test_scores, logits = model.scores(test_k.photos, method)
        thumb_scores, thumb_logits = model.scores(test_k.thumbs, method)
        row = {"method": method, "held-out classes": unknown,
               "validation": separation(valid_known, score(valid_u.photos), config.tpr),
               "test: other landmarks": separation(test_scores, score(test_u.photos), config.tpr),
               "closed-set accuracy": round(float((logits.argmax(1) == test_k.labels).float().mean()), 4),
               "known photos kept": round(float((test_scores >= threshold).mean()), 4),
               "thumbnails named": round(float(((thumb_scores >= threshold) &
                                                (thumb_logits.argmax(1) == test_k.labels).numpy()).mean()), 4),
               "other landmarks turned away": round(float((score(test_u.photos) < threshold).mean()), 4)}
        for name, acts in photos.non_landmarks.items():
            row[f"turned away: {name}"] = round(float((score(acts) < threshold).mean()), 4)
        rows.append(row)
    return rows


def heldout_protocol(top: nn.Module, photos: Photos, tune: FinetuneConfig, config: OpenSetConfig,
                     progress=None) -> list[dict]:
    """Every method on every rotation: train on the known classes (photos + thumbnails; with and
    without outlier exposure), score validation and test. One row per (rotation, method)."""
    rows = []
    for unknown in rotations(int(photos.train.labels.max()) + 1, config):
        known_classes = [c for c in range(int(photos.train.labels.max()) + 1) if c not in unknown]
        train, valid = _classes(photos.train, known_classes), _classes(photos.valid, known_classes)
        models = {"plain": fit_model(top, train, valid, tune, config)}
        if any(m.startswith("oe") for m in config.methods):
            models["oe"] = fit_model(top, train, valid, tune, config, outliers=photos.outliers)
        rows += _score_rotation(models, photos, unknown, config)
        if progress is not None:
            progress(unknown)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """The mean over rotations of each method's numbers, in the order of `METHODS`."""
    table = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        flat = [{k: v for r_k, r_v in r.items() if isinstance(r_v, dict) for k, v in
                 ((f"{r_k} {m}", x) for m, x in r_v.items())} | {k: v for k, v in r.items() if isinstance(v, float)}
                for r in mine]
        table.append({"method": method, **{k: round(float(np.mean([f[k] for f in flat])), 4) for k in flat[0]}})
    return table


def choose(table: list[dict]) -> dict:
    """The method with the lowest validation FPR at the TPR (then the highest validation AUROC)."""
    return min(table, key=lambda r: (r["validation fpr_at_tpr"], -r["validation auroc"]))
