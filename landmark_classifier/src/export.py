"""Export a trained landmark model as the deployable predictor: one ONNX file (served) and one
TorchScript file (the seed's format), each carrying its own preprocessing.

`ServingModel` is what both files contain: a uint8 `N x 3 x H x W` RGB batch of any size in;
out, two tensors: `probabilities` (N x classes, calibrated by the temperature) and `known_score`
(N: how much the photo looks like one of the known classes; below the file's threshold the answer is
"no known landmark", see `OpenSetRule`); `UprightServingModel` adds a third, `orientation` (N x 4:
which quarter turn the photo is stored at, see `orientation.py`). Inside: resize the short side to `resize_size` (bilinear,
antialiased), centre-crop `crop_size`, normalise, the model's features, optionally averaged over
the image and its mirror (what validation measured; `mirror=True`), the head, softmax(logits / T).

The resize arithmetic uses integer operations only (`//`, `%`, `*`): torch.export keeps them
symbolic, so the ONNX graph computes each image's size, while Python float arithmetic
(`round(h * scale)`) would be frozen at the example's size. Rounding is half to even, as
Python's `round` and so as the training pipeline's decoding (`data.square_uint8`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from common.backbones import stored_half
from common.serving import export_onnx, save_torchscript
from landmark_classifier.src.resize import resized_size, round_half_even_div  # noqa: F401 - part of this API

if TYPE_CHECKING:  # orientation.py imports common.transfer's training code; the export needs none of it
    from landmark_classifier.src.orientation import Orientation

INPUT_CONTRACT = "uint8 N x 3 x H x W RGB, any size"
# What a committed model may take (MiB). Lite2 + its kNN bank was ~25 MB; MobileNetV2's features for
# naming (`fusion.py`) add ~10 MB at float32, so both networks' frozen weights are stored float16
# (`common.backbones.store_half`).
MAX_FILE_MB = 30


@dataclass(frozen=True)
class Preprocessing:
    """How the served model sees an image (the same as evaluation in the notebooks)."""
    resize_size: int
    crop_size: int
    mean: tuple[float, ...]  # in [0, 1] units, per channel
    std: tuple[float, ...]
    mirror: bool = False  # average the logits of the image and its mirror

    def __post_init__(self) -> None:
        if self.crop_size > self.resize_size:
            raise ValueError(f"crop_size {self.crop_size} is larger than resize_size {self.resize_size}")


OPEN_SET_METHODS = ("msp", "energy", "mahalanobis", "knn")


@dataclass(frozen=True)
class OpenSetRule:
    """How the served model says "no known landmark": `known_score` below `threshold` (see
    `openset.py` for the methods and how the threshold is chosen). `temperature` divides the
    logits before the softmax (calibration). The default accepts every photo (a closed-set model)."""
    method: str = "msp"  # "msp": top calibrated probability; "energy": T logsumexp(logits / T); "mahalanobis"
    temperature: float = 1.0
    threshold: float = 0.0
    means: torch.Tensor | None = None      # mahalanobis: class means of the features (classes x features)
    precision: torch.Tensor | None = None  # mahalanobis: the shared inverse covariance
    bank: torch.Tensor | None = None       # knn: the training photos' L2-normalised features (stored float16)
    k: int = 10                            # knn: the neighbour whose distance is the score
    note: dict[str, Any] = field(default_factory=dict)  # what the choice was measured on (the file's metadata)
    # knn / mahalanobis read the first `feature_dims` features (None: all): with a second backbone's
    # features appended for naming (`fusion.py`), the open-set score stays the one the protocol measured.
    feature_dims: int | None = None

    def __post_init__(self) -> None:
        if self.method not in OPEN_SET_METHODS:
            raise ValueError(f"open-set method must be one of {', '.join(OPEN_SET_METHODS)}, got {self.method!r}")
        if self.method == "mahalanobis" and (self.means is None or self.precision is None):
            raise ValueError("the mahalanobis rule needs the class means and the precision matrix")
        if self.method == "knn" and (self.bank is None or not 1 <= self.k <= len(self.bank)):
            raise ValueError("the knn rule needs the training features (at least k of them)")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    def metadata(self) -> dict[str, Any]:
        extra = {"k": self.k, "bank": len(self.bank)} if self.method == "knn" else {}
        if self.feature_dims is not None:
            extra["feature_dims"] = self.feature_dims
        return {"method": self.method, "temperature": round(self.temperature, 6), "threshold": float(self.threshold),
                "known_if": "known_score >= threshold", **extra, **self.note}


class KnownScore(nn.Module):
    """(features, logits) -> N scores, higher = more like a known class (scriptable)."""

    def __init__(self, rule: OpenSetRule) -> None:
        super().__init__()
        self.method, self.temperature, self.k = rule.method, float(rule.temperature), int(rule.k)
        self.dims = int(rule.feature_dims or 0)  # 0: every feature
        means = rule.means if rule.means is not None else torch.zeros(0, 0)
        precision = rule.precision if rule.precision is not None else torch.zeros(0, 0)
        bank = rule.bank if rule.bank is not None else torch.zeros(0, 0)
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float32))
        self.register_buffer("precision", torch.as_tensor(precision, dtype=torch.float32))
        # float16 halves the file (a few thousand x 1280 features: 7 MB, not 14); the distances barely move
        self.register_buffer("bank", torch.as_tensor(bank, dtype=torch.float16))

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.dims:
            features = features[:, :self.dims]
        if self.method == "knn":  # minus the Euclidean distance of unit vectors to the k-th nearest: sqrt(2 - 2 cos)
            unit = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
            cosine = (unit @ self.bank.float().t()).topk(self.k, dim=1).values[:, -1]
            return -(2 - 2 * cosine).clamp_min(0).sqrt()
        if self.method == "mahalanobis":
            gaps = features[:, None, :] - self.means[None]  # N x classes x features
            distances = ((gaps @ self.precision) * gaps).sum(2)
            return -distances.min(1).values
        if self.method == "energy":
            return self.temperature * torch.logsumexp(logits / self.temperature, 1)
        return torch.softmax(logits / self.temperature, 1).max(1).values


class BankHead(nn.Module):
    """Naming by the known photos a photo is most like: features -> N x classes logits,

        logit_c = log sum over the bank's photos of class c of exp(cos(features, photo) / tau)

    a soft nearest-neighbour vote (as tau -> 0, the nearest photo's class). The bank is the knn
    score's (the training photos' and thumbnails' L2-normalised features, float16); in a file with
    the knn rule it is stored once (`ServingModel` shares it). Chosen by cross-validation over the
    linear head (`fusion.py`)."""

    def __init__(self, bank: torch.Tensor, labels: torch.Tensor, classes: int, tau: float) -> None:
        super().__init__()
        if not tau > 0:
            raise ValueError(f"the bank's tau must be positive, got {tau}")
        if len(bank) != len(labels) or not len(bank):
            raise ValueError(f"the bank has {len(bank)} features and {len(labels)} labels: one label per feature")
        self.register_buffer("bank", torch.as_tensor(bank, dtype=torch.float16))
        self.register_buffer("onehot", F.one_hot(torch.as_tensor(labels).long(), classes).to(torch.float16))
        self.tau, self.in_features, self.out_features = float(tau), int(bank.shape[1]), int(classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        unit = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
        votes = unit @ self.bank.float().t() / self.tau
        top = votes.max(1, keepdim=True).values  # exp(votes - top) <= 1: no overflow at small tau
        # a class with no photo near enough sums to ~0: its logit is floored ~69 below the best
        return torch.log((torch.exp(votes - top) @ self.onehot.float()).clamp_min(1e-30)) + top


class SumHead(nn.Module):
    """Two heads' logits added (a product of their probabilities): `linear` reads all the features,
    `bank` (a `BankHead`) the first `bank.in_features` (the fine-tuned backbone's, with a second
    backbone's appended; see `fusion.py`)."""

    def __init__(self, linear: nn.Linear, bank: BankHead) -> None:
        super().__init__()
        if linear.out_features != bank.out_features:
            raise ValueError(f"the heads name {linear.out_features} and {bank.out_features} classes")
        self.linear, self.bank = linear, bank
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features) + self.bank(features[:, :self.bank.in_features])


HEADS = (nn.Linear, BankHead, SumHead)  # what `split_head` takes for a head


class _Features(nn.Module):
    """A `common.transfer.Classifier`'s penultimate features (the part before its head)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(features, head) of a model with `features()` and a linear `head` (the transfer Classifier);
    any other model is all features, its logits, with an identity head."""
    if hasattr(model, "features") and isinstance(getattr(model, "head", None), HEADS):
        return _Features(model), model.head
    return model, nn.Identity()


class ServingModel(nn.Module):
    """uint8 N x 3 x H x W (any H, W >= 2) -> (N x classes probabilities, N known scores)."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing, class_names: list[str],
                 rule: OpenSetRule | None = None, *, head: nn.Module | None = None) -> None:
        """`model`: the whole model (split by `split_head`), or with `head` given, its features part."""
        super().__init__()
        if len(class_names) < 2:
            raise ValueError(f"need at least 2 class names, got {class_names}")
        rule = rule or OpenSetRule()
        if rule.method == "mahalanobis" and head is None and isinstance(split_head(model)[1], nn.Identity):
            raise ValueError("the mahalanobis rule needs a model with features() and a linear head")
        self.features, self.head = (model, head) if head is not None else split_head(model)
        self.score = KnownScore(rule)
        bank = self.head.bank if isinstance(self.head, SumHead) else self.head
        if isinstance(bank, BankHead) and torch.equal(bank.bank, self.score.bank):
            self.score.bank = bank.bank  # one tensor: both exporters then store the bank once
        self.temperature = float(rule.temperature)
        self.class_names = list(class_names)  # TorchScript users read them from the .pt file
        self.resize_size = preprocessing.resize_size
        self.crop_size = preprocessing.crop_size
        self.mirror = preprocessing.mirror
        # 0..255 pixels normalised in one step: (x / 255 - mean) / std == (x - 255 mean) / (255 std)
        self.register_buffer("mean", torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1) * 255)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2], x.shape[3]
        new_height, new_width = resized_size(height, width, self.resize_size)
        x = F.interpolate(x.float(), size=[new_height, new_width], mode="bilinear", align_corners=False,
                          antialias=True)
        top = (new_height - self.crop_size) // 2
        left = (new_width - self.crop_size) // 2
        x = x[:, :, top:top + self.crop_size, left:left + self.crop_size]
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.preprocess(x)
        if self.mirror:  # the head reads the mean features of the image and its mirror (as training did)
            count = x.shape[0]
            features = self.features(torch.cat([x, x.flip(3)]))
            features = (features[:count] + features[count:]) / 2
        else:
            features = self.features(x)
        logits = self.head(features)
        return torch.softmax(logits / self.temperature, dim=1), self.score(features, logits)


class UprightServingModel(ServingModel):
    """`ServingModel` with a third output, `orientation` (N x 4: p(the photo is the upright photo
    turned q quarters counter-clockwise), see `orientation.py`), read from the trunk's map of the
    photo as it is (not its mirror). Needs the model in two parts: `trunk` -> maps, `top` -> features;
    with `second` (`fusion.SecondOpinion`), its features of the same input are appended."""

    def __init__(self, trunk: nn.Module, top: nn.Module, head: nn.Module, orientation: nn.Module,
                 preprocessing: Preprocessing, class_names: list[str], rule: OpenSetRule | None = None,
                 second: nn.Module | None = None) -> None:
        super().__init__(nn.Identity(), preprocessing, class_names, rule, head=head)
        self.trunk, self.top, self.orientation, self.second = trunk, top, orientation, second

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        x = self.preprocess(x)
        count = x.shape[0]
        both = torch.cat([x, x.flip(3)]) if self.mirror else x
        maps = self.trunk(both)
        features = self.top(maps)
        if self.second is not None:
            features = torch.cat([features, self.second(both)], 1)
        if self.mirror:
            features = (features[:count] + features[count:]) / 2
        logits = self.head(features)
        return (torch.softmax(logits / self.temperature, dim=1), self.score(features, logits),
                torch.softmax(self.orientation(maps[:count]), dim=1))


def check_inputs(seed: int = 0) -> list[torch.Tensor]:
    """The sizes an export must agree with eager on: portrait, a 512 x 513 tie, a 1920 x 1080
    phone photo, a batch of small squares, a panorama."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(1, 3, 400, 300), (1, 3, 512, 513), (1, 3, 1080, 1920), (2, 3, 64, 64), (1, 3, 120, 700)]
    return [torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator) for shape in shapes]


@dataclass
class Exported:
    onnx_path: Path
    torchscript_path: Path
    torchscript_how: str  # "scripted" (the inner model scripted or traced, the wrapper scripted)
    onnx_mb: float
    torchscript_mb: float
    metadata: dict[str, Any] = field(default_factory=dict)


def _scriptable(model: nn.Module, crop_size: int) -> tuple[nn.Module, str]:
    """The model (its features part) as TorchScript: scripted when it can be, else traced at the
    fixed crop size (EfficientNet-Lite's code is not scriptable; after the crop its input size never
    changes). Weights stored half (`store_half`, a parametrization) script but fail to run: traced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not stored_half(model):
            try:
                return torch.jit.script(model), "scripted"
            except Exception:  # noqa: BLE001 - TorchScript raises many types for unsupported Python
                pass
        example = torch.zeros(2, 3, crop_size, crop_size)
        return torch.jit.trace(model, example, check_trace=False), "traced"


@dataclass(frozen=True)
class ModelCard:
    """What the exported file says about its model, besides the graph (stored in its metadata)."""
    class_names: list[str]
    model_name: str
    training_run: dict[str, Any]
    display_names: list[str] | None = None  # readable class names (default: class_names)


def export_predictor(model: nn.Module, preprocessing: Preprocessing, card: ModelCard, folder: Path, *,
                     extra_checks: list[torch.Tensor] = (), stem: str = "landmark_predictor",
                     rule: OpenSetRule | None = None, orientation: Orientation | None = None) -> Exported:
    """Write `folder/stem.onnx` and `folder/stem.pt`, each checked against the eager model.

    The ONNX file is verified by `common.serving.export_onnx` on `check_inputs()` plus
    `extra_checks` (e.g. real test photos); its metadata carries what a predictor needs, the
    open-set `rule` (default: accept every photo) included. With `orientation` (an
    `orientation.Orientation`; `model` then a `common.transfer.Classifier`) the files also output
    the photo's quarter turn, and the metadata carries the predictor's rerun rule."""
    class_names = card.class_names
    rule = rule or OpenSetRule()
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    if orientation is None:
        serving = ServingModel(model, preprocessing, class_names, rule).eval()
    else:
        serving = UprightServingModel(model.trunk, model.top, model.head, orientation.head.cpu().eval(),
                                      preprocessing, class_names, rule, getattr(model, "second", None)).eval()
    metadata = {
        "class_names": list(class_names),
        "display_names": list(card.display_names or class_names),
        "input": INPUT_CONTRACT,
        "mean": list(preprocessing.mean),
        "std": list(preprocessing.std),
        "resize_size": preprocessing.resize_size,
        "crop_size": preprocessing.crop_size,
        "mirror_average": preprocessing.mirror,
        "output": "probabilities: N x classes (softmax of logits / temperature), columns in class_names order; "
                  "known_score: N (no known landmark where below open_set.threshold)",
        "open_set": rule.metadata(),
        **({"orientation": orientation.metadata()} if orientation is not None else {}),
        "model_name": card.model_name,
        "training_run": {"exported_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **card.training_run},
    }
    folder = Path(folder)
    example = torch.randint(0, 256, (1, 3, 300, 400), dtype=torch.uint8)
    onnx_path = export_onnx(serving, example, folder / f"{stem}.onnx", metadata=metadata, dynamic_hw=True,
                            check_inputs=[*check_inputs(), *extra_checks], atol=1e-4,
                            output_names=("probabilities", "known_score", "orientation")[:3 if orientation else 2])
    if orientation is None:
        inner, how = _scriptable(serving.features, preprocessing.crop_size)
        scripted = ServingModel(inner, preprocessing, class_names, rule, head=serving.head).eval()
    else:
        trunk, how = _scriptable(serving.trunk, preprocessing.crop_size)
        with torch.no_grad():
            maps = serving.trunk(torch.zeros(2, 3, preprocessing.crop_size, preprocessing.crop_size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            top = torch.jit.trace(serving.top, maps, check_trace=False)
        second = None
        if serving.second is not None:
            second, _ = _scriptable(serving.second, preprocessing.crop_size)
        scripted = UprightServingModel(trunk, top, serving.head, serving.orientation, preprocessing, class_names,
                                       rule, second).eval()
    torchscript_path, wrapper = save_torchscript(scripted, folder / f"{stem}.pt", example)
    sizes = {p: p.stat().st_size / 2**20 for p in (onnx_path, torchscript_path)}
    for path, size in sizes.items():
        if size > MAX_FILE_MB:
            raise ValueError(f"{path} is {size:.1f} MB, over the {MAX_FILE_MB} MB a committed predictor may take")
    return Exported(onnx_path, torchscript_path, f"{how} model in a {wrapper} wrapper", round(sizes[onnx_path], 1),
                    round(sizes[torchscript_path], 1), metadata)
