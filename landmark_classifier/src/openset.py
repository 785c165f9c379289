"""Open set: "no known landmark" as an answer, with confidences that mean what they say.

Most photos a photo service sees show none of the landmarks the model knows. This module measures
how well established scores tell the known landmarks' photos from the rest, and picks one:

- `msp`: the largest softmax probability after temperature scaling (Hendrycks & Gimpel 2017;
  Guo et al. 2017 for the temperature);
- `energy`: T * logsumexp(logits / T) (Liu et al. 2020);
- `mahalanobis`: minus the smallest Mahalanobis distance of the penultimate features to a class
  mean, one shared covariance (Lee et al. 2018; scikit-learn's Ledoit-Wolf estimate);
- `knn k=K`: minus the distance of the L2-normalised features to their K-th nearest training photo
  (Sun et al. 2022; scikit-learn's NearestNeighbors), once per K in `knn_ks`: K is chosen like the method;
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
from dataclasses import dataclass, field, replace
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
    # k of kNN, chosen on validation with the method. Measured on the protocol (2026-12-06, first two
    # rotations, validation / test FPR at 95% TPR): k=1 0.17 / 0.13, k=5 0.26 / 0.18, k=10 0.29 / 0.22,
    # k=50 0.39 / 0.38: with photos and their thumbnails in the bank, the nearest one says most.
    knn_ks: tuple[int, ...] = (1, 5, 10)
    heldout: int = 3             # classes treated as unknown in each rotation of the protocol
    rotations: int = 4
    ece_bins: int = 15
    methods: tuple[str, ...] = METHODS
    # Fine-tuning for the open set drops label smoothing: smoothing pulls each class's penultimate
    # features into a tight cluster and erases how far a photo is from the training photos. Measured
    # on the protocol (2026-12-06, Lite2, knn, validation / test FPR at 95% TPR against held-out
    # landmarks): smoothing 0.1, four rotations: 0.49 / 0.37; none, the first two rotations: 0.29 / 0.22.
    label_smoothing: float = 0.0
    per_source: int = 1000       # CIFAR vehicles and MNIST digits for outlier exposure (each)
    scored_digits: int = 500     # MNIST test digits scored



def method_names(config: OpenSetConfig) -> list[str]:
    """`config.methods`, with `knn` once per k in `config.knn_ks` ("knn k=1", ...)."""
    return [name for method in config.methods
            for name in ([f"knn k={k}" for k in config.knn_ks] if method == "knn" else [method])]


def knn_k(method: str) -> int:
    """K of a "knn k=K" method name."""
    return int(method.rpartition("k=")[2])


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
    """Real photos of no landmark, as PIL images at their own sizes. `train` (Scones' CIFAR training
    vehicles and MNIST training digits) is for outlier exposure only; `sets` are scored, never trained on."""
    train: list
    sets: dict[str, list] = field(default_factory=dict)  # name -> images (evaluation only)
    sources: dict[str, str] = field(default_factory=dict)

    def squares(self, size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(exposure images, {name: scored images}) as uint8 squares at `size` (the backbone's resize size)."""
        stack = lambda images: (torch.stack([_square(image, size) for image in images]) if images  # noqa: E731
                                else torch.zeros(0, 3, size, size, dtype=torch.uint8))
        return stack(self.train), {name: stack(images) for name, images in self.sets.items()}


def non_landmarks(data_dir: Path, config: OpenSetConfig) -> NonLandmarks:
    """Scones' CIFAR vehicles (train for exposure, test scored), MNIST digits (likewise) and the
    bundled everyday photos (scored only). A dataset missing from `data_dir` is left out."""
    data_dir = Path(data_dir)
    train, sets, sources = [], {}, {}
    scones = data_dir / "scones"
    if (scones / "train").is_dir():
        train += [load_image(p) for p in sorted((scones / "train").glob("*.png"))[:config.per_source]]
        sets["CIFAR vehicles (Scones test)"] = [load_image(p) for p in sorted((scones / "test").glob("*.png"))]
        sources["CIFAR vehicles"] = (f"{len(train)} Scones training images (32 px) for exposure, "
                                     f"the {len(sets['CIFAR vehicles (Scones test)'])} test images scored")
    raw = data_dir / "mnist" / "MNIST" / "raw"
    if (raw / "train-images-idx3-ubyte.gz").is_file():
        train += _mnist(raw, "train", config.per_source)
        sets["MNIST digits (test)"] = _mnist(raw, "t10k", config.scored_digits)
        sources["MNIST digits"] = f"{config.per_source} training digits for exposure, {config.scored_digits} test digits scored"
    everyday = everyday_photos()
    sets["everyday photos (skimage, sklearn, matplotlib)"] = list(everyday.values())
    sources["everyday photos"] = f"{len(everyday)} bundled photographs, scored only: {', '.join(everyday)}"
    return NonLandmarks(train, sets, sources)


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
    return float(log_t.detach().exp())


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
        gaps = (x[:, None, :] - self.means[None]).reshape(-1, x.shape[1])  # (N x classes) x features
        distances = ((gaps @ self.precision) * gaps).sum(1).reshape(len(x), -1)  # one BLAS product
        return -distances.min(1)


class KNN:
    """Minus the Euclidean distance of the L2-normalised features to their k-th nearest training photo,
    for any k up to `max_k` (one neighbour search answers them all)."""

    def __init__(self, features: torch.Tensor, max_k: int, labels: torch.Tensor | None = None) -> None:
        from sklearn.neighbors import NearestNeighbors

        self.bank = F.normalize(features.float(), dim=1)
        self.labels = labels  # the bank's classes (naming by the bank: `export.BankHead`)
        self.index = NearestNeighbors(n_neighbors=max_k).fit(self.bank.numpy())

    def __call__(self, features: torch.Tensor, k: int) -> np.ndarray:
        distances, _ = self.index.kneighbors(F.normalize(features.float(), dim=1).numpy(), n_neighbors=k)
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
    C: float | None = None  # the starting head's strength, as validation chose it (`refit_model` reuses it)
    best_epoch: int | None = None  # the fine-tuning epoch validation kept (None: the last, as `refit_model` keeps)
    seen: dict = field(default_factory=dict, repr=False)  # id(activations) -> (activations, features)

    def features(self, acts: Activations) -> torch.Tensor:
        """The penultimate features, as served (image + mirror); each set's computed once (the top's
        forward pass is most of the scoring's cost, and every method reads the same features)."""
        key = id(acts.plain)
        if key not in self.seen:
            self.seen[key] = (acts, mirror_mean(self.top, acts))  # holding `acts` keeps its id unique
        return self.seen[key][1]

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
        if name.startswith("knn k="):
            return self.knn(features, knn_k(name)), logits
        raise ValueError(f"unknown open-set method {method!r}; choose from {', '.join(METHODS)} (knn as 'knn k=K')")


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

    @staticmethod
    def join(*parts: Known) -> Known:
        """One set of the parts' photos, in order (e.g. the training and validation photos)."""
        return Known(Activations.join(*(p.photos for p in parts)), Activations.join(*(p.thumbs for p in parts)),
                     torch.cat([p.labels for p in parts]))


def fit_model(top: nn.Module, train: Known, valid: Known, tune: FinetuneConfig, config: OpenSetConfig, *,
              outliers: Activations | None = None, Cs: tuple[float, ...] = (0.3, 1.0)) -> Fitted:
    """A logistic head on the frozen top's features, then the top fine-tuned on photos and their
    thumbnails (and `outliers` for exposure); temperature fitted on the validation photos and thumbnails."""
    train_acts, train_y = train.both()
    valid_acts, valid_y = valid.both()
    tune = replace(tune, label_smoothing=config.label_smoothing)
    head = fit_logistic_head(mirror_mean(top, train_acts), train_y, mirror_mean(top, valid_acts), valid_y, Cs)
    top, linear, history = fit_top(top, head.linear, train_acts, train_y, valid_acts, valid_y, tune, outliers)
    fitted = _scored(top, linear, train_acts, train_y, config, C=head.C)
    fitted.best_epoch = history.best_epoch
    fitted.temperature = fit_temperature(linear(fitted.features(valid_acts)), valid_y)
    return fitted


def refit_model(model: Fitted, top: nn.Module, pooled: Known, tune: FinetuneConfig, config: OpenSetConfig, *,
                outliers: Activations | None = None) -> Fitted:
    """`model`'s recipe run again on `pooled` (its training and validation photos together), with
    nothing left to choose: the starting head's strength C as validation chose it, the last epoch
    (what the cross-validation measured), and `model`'s temperature, fitted with validation held out.
    Its knn bank / class means hold every pooled photo. A quarter more photos is worth it: in the
    5-fold CV of the shipped naming, fitting each fold on 80% of its photos instead of all of them left
    57 of 1,657 photos wrong instead of 43 (models/fusion_cv_share80.json against fusion_cv.json)."""
    if model.C is None:
        raise ValueError("refit_model needs the model's C (fit it with fit_model)")
    acts, y = pooled.both()
    tune = replace(tune, label_smoothing=config.label_smoothing)
    features = mirror_mean(top, acts)
    head = fit_logistic_head(features, y, features, y, Cs=(model.C,))
    top, linear, _ = fit_top(top, head.linear, acts, y, None, None, tune, outliers)
    refitted = _scored(top, linear, acts, y, config, C=model.C)
    refitted.temperature = model.temperature
    return refitted


def _scored(top: nn.Module, linear: nn.Linear, acts: Activations, labels: torch.Tensor, config: OpenSetConfig,
            C: float) -> Fitted:
    """A fitted top + head with the open-set scores' statistics of the photos it was trained on."""
    features = mirror_mean(top, acts)
    return Fitted(top, linear, Mahalanobis(features, labels), KNN(features, max(config.knn_ks), labels), C=C)


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

    exposure, scored = others.squares(splits.train[0].shape[-1])
    return Photos(known(*splits.train, "train"), known(*splits.valid, "valid"), known(*splits.test, "test"),
                  cache(exposure, desc="non-landmarks (exposure)"),
                  {name: cache(images, desc=name) for name, images in scored.items()})


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
    for method in method_names(config):
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
    """The mean over rotations of each method's numbers, in the order of `method_names`."""
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


# ------------------------------------------------------------------- the shipped model and its file

def rule_for(model: Fitted, method: str, valid: Known, config: OpenSetConfig, note: dict | None = None):
    """The export's `OpenSetRule` for `model`: its temperature, and the threshold that keeps
    `config.tpr` of the known validation photos and thumbnails."""
    from landmark_classifier.src.export import OpenSetRule

    acts, _ = valid.both()
    threshold = float(np.quantile(model.scores(acts, method)[0], 1 - config.tpr))
    name = method.removeprefix("oe + ")
    means = precision = bank = None
    if name == "mahalanobis":
        means = torch.from_numpy(model.mahalanobis.means).float()
        precision = torch.from_numpy(model.mahalanobis.precision).float()
    k = 1
    if name.startswith("knn"):
        name, bank, k = "knn", model.knn.bank, knn_k(name)
    return OpenSetRule(name, model.temperature, threshold, means, precision, bank, k,
                       note={"chosen": method, "tpr_on_validation": config.tpr, **(note or {})})


def refit_rule(rule, model: Fitted):
    """`rule` (an `export.OpenSetRule` fitted with validation held out) for `model` refitted on the
    training and validation photos (`refit_model`): its method, temperature and threshold kept, its
    statistics (the knn bank, the class means) read from `model`."""
    note = {**rule.note, "threshold and temperature from": "the model fitted with validation held out "
            "(the shipped one is refitted on the training and validation photos)"}
    if rule.method == "knn":
        return replace(rule, bank=model.knn.bank, note=note)
    if rule.method == "mahalanobis":
        return replace(rule, means=torch.from_numpy(model.mahalanobis.means).float(),
                       precision=torch.from_numpy(model.mahalanobis.precision).float(), note=note)
    return replace(rule, note=note)


def downscaled(path: Path, size: int):
    """The photo as a thumbnail whose short side is `size` px (what a photo service may send)."""
    image = load_image(path)
    scale = size / min(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        resample=3, reducing_gap=None)  # 3: bicubic


@dataclass
class ServedOpenSet:
    """The exported file on the test photos, their thumbnails and the non-landmark photos."""
    probabilities: np.ndarray  # calibrated, test photos x classes
    accepted: np.ndarray       # bool per test photo
    thumbnail_probabilities: np.ndarray
    thumbnail_accepted: np.ndarray
    turned_away: dict[str, float]  # non-landmark set -> share answered "no known landmark"
    examples: dict[str, list[dict]]
    run_again: dict[str, float] = field(default_factory=dict)  # kind of photo -> share also named turned back


def evaluate_file(served, test_paths: list[Path], others: NonLandmarks, config: OpenSetConfig) -> ServedOpenSet:
    """Every answer through `predictor.predict` (the CLI's and the app's path)."""
    from landmark_classifier.src import predictor
    from tqdm.auto import tqdm

    def answers(images, desc):
        return [predictor.predict(served, image, k=len(served.class_names), name=str(name))
                for name, image in tqdm(images, desc=desc, leave=False)]

    def table(found):
        order = {c: i for i, c in enumerate(served.class_names)}
        probabilities = np.zeros((len(found), len(order)))
        for row, answer in enumerate(found):
            for label, p in answer.top:
                probabilities[row, order[label]] = p
        return probabilities, np.array([a.landmark is not None for a in found])

    def again(found) -> float:  # the share the file's orientation rule named turned back too (one more run each)
        return round(float(np.mean([a.turned_back > 0 for a in found])), 4)

    found = answers([(p, p) for p in test_paths], "test photos")
    thumbs_found = answers([(p, downscaled(p, config.thumbnail_size)) for p in test_paths], "test thumbnails")
    run_again = {"known test photos": again(found),  # keyed as `report`'s rows
                 f"known test photos as {config.thumbnail_size}-px thumbnails": again(thumbs_found)}
    turned, examples = {}, {}
    for name, images in others.sets.items():
        found_other = answers(list(enumerate(images)), name)
        turned[name] = round(float(np.mean([a.landmark is None for a in found_other])), 4)
        run_again[f"no landmark: {name}"] = again(found_other)
        examples[name] = [{"answer": a.landmark or "no known landmark", "top": a.top[0][0],
                           "confidence": round(a.confidence, 3)} for a in found_other[:5]]
    return ServedOpenSet(*table(found), *table(thumbs_found), turned, examples, run_again)


@dataclass
class OpenSetReport:
    """What the notebook shows and metrics.json records about the shipped file's open set."""
    ece_before: float
    ece_after: float
    curves: dict[str, list]  # reliability bins: "before (T = 1)", "after (T = ...)"
    rows: list[dict]         # one row per kind of photo
    summary: dict
    markdown: str


def _share(mask: np.ndarray) -> float:
    return round(float(np.mean(mask)), 4) if len(mask) else float("nan")


def report(served: ServedOpenSet, labels: np.ndarray, rule, config: OpenSetConfig) -> OpenSetReport:
    """Calibration before and after the temperature, and each kind of photo's answers."""
    after = served.probabilities
    # the file returns softmax(z / T): softmax(T log p) gives back softmax(z), the uncalibrated probabilities
    logits = rule.temperature * np.log(np.clip(after, 1e-30, None))
    before = np.exp(logits - logits.max(1, keepdims=True))
    before /= before.sum(1, keepdims=True)
    calibrated, raw = calibration(after, labels, config.ece_bins), calibration(before, labels, config.ece_bins)
    rows = []
    for what, probabilities, accepted in (("known test photos", after, served.accepted),
                                          (f"known test photos as {config.thumbnail_size}-px thumbnails",
                                           served.thumbnail_probabilities, served.thumbnail_accepted)):
        correct = probabilities.argmax(1) == labels
        rows.append({"photos": what, "count": len(labels), "named correctly": _share(accepted & correct),
                     "answered no known landmark": _share(~accepted), "closed-set accuracy": _share(correct),
                     "accuracy on the named": _share(correct[accepted])})
    for name, share in served.turned_away.items():
        rows.append({"photos": f"no landmark: {name}", "answered no known landmark": share})
    if any(served.run_again.values()):  # a file with an orientation rule: what it costs on each kind
        for row in rows:
            row["run again (sideways check)"] = served.run_again.get(row["photos"], float("nan"))
    known, thumbs = rows[0], rows[1]
    summary = {"open set: method": rule.note.get("chosen", rule.method), "open set: threshold": round(rule.threshold, 6),
               "open set: temperature": round(rule.temperature, 4),
               "known test photos named correctly (open set)": known["named correctly"],
               "known test photos answered no known landmark (the threshold's cost)": known["answered no known landmark"],
               f"{config.thumbnail_size}-px test thumbnails named correctly": thumbs["named correctly"],
               "calibration error (ECE) before temperature": raw["ece"],
               "calibration error (ECE) after temperature": calibrated["ece"],
               **{f"no-landmark photos answered so: {name}": share for name, share in served.turned_away.items()},
               **({f"run again by the sideways check: {name}": share for name, share in served.run_again.items()}
                  if any(served.run_again.values()) else {})}
    markdown = (f"**Open set ({summary['open set: method']}, threshold {rule.threshold:.4g}):** "
                f"{known['named correctly']:.1%} of the known test photos named correctly, "
                f"{known['answered no known landmark']:.1%} answered \"no known landmark\" (the threshold's cost); "
                f"{thumbs['named correctly']:.1%} of their {config.thumbnail_size}-px thumbnails named correctly. "
                + "; ".join(f"{name}: {share:.1%} answered \"no known landmark\""
                            for name, share in served.turned_away.items())
                + f". **Calibration error** {raw['ece']:.1%} before, {calibrated['ece']:.1%} after temperature "
                  f"{rule.temperature:.3f}.")
    curves = {"before (T = 1)": raw["bins"], f"after (T = {rule.temperature:.2f})": calibrated["bins"]}
    return OpenSetReport(raw["ece"], calibrated["ece"], curves, rows, summary, markdown)


# The fine-tuning recipe where a profile fine-tunes nothing (quick: frozen features only)
FALLBACK_TUNE = FinetuneConfig(epochs=1, lr=3e-4)


def closed_set_accuracy(model: Fitted, known: Known) -> dict[str, float]:
    """Accuracy (every photo named) on the photos and on their thumbnails."""
    return {kind: float((model.head(model.features(acts)).argmax(1) == known.labels).float().mean())
            for kind, acts in (("photos", known.photos), ("thumbnails", known.thumbs))}
