"""Transfer learning from ImageNet EfficientNet-Lite backbones, cheap enough for 2 CPU cores.

The expensive part is the backbone's forward pass, so it runs once per image (and once for its
mirror image): the backbone is cut in two, a frozen `trunk` (stem and all but the last
`top_blocks` blocks) and a `top` (those blocks, the 1 x 1 head convolution, average pooling).
The trunk's activations of every image and its mirror are cached (`activations`); everything
after that trains on the cache:

- frozen + head: the top, frozen, turns the activations into 1280 features; the mean of an
  image's and its mirror's features trains a logistic regression (`fit_logistic_head`, its
  regularisation chosen on validation) that becomes a linear layer;
- fine-tuned: the top's blocks and the head train end to end on the cached activations of the
  images and their mirrors (`finetune_top`), starting from the logistic head.

`compare` fits both for each backbone; `select` picks one on validation accuracy only (then
lower validation loss, then less training time); the notebook evaluates the chosen model on the
test set once. Every model is evaluated as it is served: the mean of the logits for the image
and its mirror (`export.Preprocessing(mirror=True)`).
"""
from __future__ import annotations

import copy
import hashlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn
from tqdm.auto import tqdm

from common.backbones import LITE_BACKBONES, Backbone, load_backbone
from common.resources import PeakMemory
from landmark_classifier.src.optimization import get_loss, get_scheduler
from landmark_classifier.src.train import History


# ------------------------------------------------------------------------------- the model

class LiteTrunk(nn.Module):
    """EfficientNet-Lite's stem and its first `upto` blocks (frozen; run once per image)."""

    def __init__(self, net: nn.Module, upto: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[:upto])
        self.rate, self.total = net._global_params.drop_connect_rate or 0.0, len(net._blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for index, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=self.rate * index / self.total)
        return x


class LiteTop(nn.Module):
    """The last blocks, the head convolution and average pooling: activations -> 1280 features."""

    def __init__(self, net: nn.Module, start: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(net._blocks[start:])
        self.head = nn.Sequential(net._conv_head, net._bn1, net._swish, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.rate, self.start, self.total = net._global_params.drop_connect_rate or 0.0, start, len(net._blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for offset, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=self.rate * (self.start + offset) / self.total)
        return self.head(x)


class Classifier(nn.Module):
    """trunk -> top -> dropout -> linear: the model that is exported (normalised crops in, logits out)."""

    def __init__(self, trunk: nn.Module, top: nn.Module, head: nn.Linear, dropout: float = 0.2) -> None:
        super().__init__()
        self.trunk, self.top, self.dropout, self.head = trunk, top, nn.Dropout(dropout), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.top(self.trunk(x))))


def split(backbone: Backbone, top_blocks: int) -> tuple[LiteTrunk, LiteTop]:
    """Cut an EfficientNet-Lite backbone before its last `top_blocks` blocks; all weights frozen."""
    if backbone.name not in LITE_BACKBONES:
        raise ValueError(f"transfer.split supports {', '.join(LITE_BACKBONES)}, not {backbone.name}")
    net = backbone.module
    if not 0 <= top_blocks < len(net._blocks):
        raise ValueError(f"{backbone.name} has {len(net._blocks)} blocks; top_blocks must be in "
                         f"0..{len(net._blocks) - 1}, got {top_blocks}")
    for p in net.parameters():
        p.requires_grad_(False)
    upto = len(net._blocks) - top_blocks
    return LiteTrunk(net, upto).eval(), LiteTop(net, upto).eval()


# ------------------------------------------------------------------------- the cached pass

def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The centre `size` x `size` of square uint8 images decoded at the backbone's resize size."""
    top = (images.shape[2] - size) // 2
    left = (images.shape[3] - size) // 2
    return images[:, :, top:top + size, left:left + size]


def normalise(images: torch.Tensor, backbone: Backbone) -> torch.Tensor:
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


# Channels-last memory layout: oneDNN's depthwise and 1 x 1 convolutions, most of EfficientNet,
# ran 8x and 3x faster in it on this CPU (measured, one thread). Layout only: same numbers.
CHANNELS_LAST = torch.channels_last


def _fast(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=CHANNELS_LAST)


@dataclass
class Activations:
    """The trunk's output for each image and for its mirror image (float16 on the CPU: half the memory)."""
    plain: torch.Tensor
    mirror: torch.Tensor
    seconds: float = 0.0  # time the trunk pass took (when read from the cache: when it was computed)
    cached: bool = False

    def __len__(self) -> int:
        return len(self.plain)


@torch.no_grad()
def activations(trunk: nn.Module, backbone: Backbone, images: torch.Tensor, *, batch_size: int = 32,
                cache_file: Path | None = None, desc: str = "trunk") -> Activations:
    """Trunk activations of centre-cropped `images` and their mirrors, cached in `cache_file`."""
    if cache_file is not None and Path(cache_file).exists():
        stored = torch.load(cache_file)
        return Activations(stored["plain"], stored["mirror"], stored["seconds"], cached=True)
    started = time.perf_counter()
    plain, mirror = [], []
    trunk.eval().to(memory_format=CHANNELS_LAST)
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False):
        x = normalise(center_crop(images[start:start + batch_size], backbone.input_size), backbone)
        out = trunk(_fast(torch.cat([x, x.flip(3)]))).contiguous()
        plain.append(out[:len(x)].half())
        mirror.append(out[len(x):].half())
    result = Activations(torch.cat(plain), torch.cat(mirror), round(time.perf_counter() - started, 2))
    if cache_file is not None:
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(cache_file).with_suffix(".tmp")
        torch.save({"plain": result.plain, "mirror": result.mirror, "seconds": result.seconds}, tmp)
        tmp.replace(cache_file)
    return result


def cache_name(backbone: Backbone, top_blocks: int, images: torch.Tensor, split_name: str) -> str:
    """A cache file name that changes with the backbone, the cut and the images' content."""
    digest = hashlib.sha1(images.numpy().tobytes()).hexdigest()[:12]
    return f"act_{backbone.name}_{top_blocks}_{split_name}_{len(images)}_{digest}.pt"


@torch.no_grad()
def top_features(top: nn.Module, acts: Activations, batch_size: int = 256) -> torch.Tensor:
    """Mirror-averaged features: the mean of the frozen top's output for an image and its mirror."""
    top.eval().to(memory_format=CHANNELS_LAST)
    out = []
    for start in range(0, len(acts), batch_size):
        pair = torch.cat([acts.plain[start:start + batch_size], acts.mirror[start:start + batch_size]]).float()
        features = top(_fast(pair))
        count = len(features) // 2
        out.append((features[:count] + features[count:]) / 2)
    return torch.cat(out)


# --------------------------------------------------------------------------- frozen + head

@dataclass
class LogisticHead:
    linear: nn.Linear  # the fitted regression as a layer on unscaled features
    C: float
    valid_accuracy: float
    valid_loss: float  # cross-entropy of the predicted probabilities
    searched: dict[float, float] = field(default_factory=dict)  # C -> validation accuracy


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(nn.functional.cross_entropy(logits, labels))


def fit_logistic_head(train_x: torch.Tensor, train_y: torch.Tensor, valid_x: torch.Tensor, valid_y: torch.Tensor,
                      Cs: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0), max_iter: int = 1000) -> LogisticHead:
    """Multinomial logistic regression on standardised features, C chosen on validation accuracy
    (then loss). The scaler is folded into the weights, so the result is one nn.Linear."""
    scaler = StandardScaler().fit(train_x.numpy())
    xs, vs = scaler.transform(train_x.numpy()), scaler.transform(valid_x.numpy())
    best, searched = None, {}
    for C in Cs:
        with warnings.catch_warnings():  # a few more iterations would not change the accuracy
            warnings.simplefilter("ignore", ConvergenceWarning)
            regression = LogisticRegression(C=C, max_iter=max_iter).fit(xs, train_y.numpy())
        logits = torch.from_numpy(regression.decision_function(vs)).float()
        if logits.ndim == 1:  # two classes: sklearn gives one column
            logits = torch.stack([-logits / 2, logits / 2], 1)
        accuracy = float((logits.argmax(1) == valid_y).float().mean())
        loss = _cross_entropy(logits, valid_y)
        searched[C] = round(accuracy, 4)
        if best is None or (accuracy, -loss) > (best[0], -best[1]):
            best = (accuracy, loss, C, regression)
    accuracy, loss, C, regression = best
    coef, intercept = regression.coef_, regression.intercept_
    if coef.shape[0] == 1:
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    weight = coef / scaler.scale_  # w . (x - m) / s  ==  (w / s) . x - (w / s) . m
    bias = intercept - weight @ scaler.mean_
    linear = nn.Linear(train_x.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight).float())
        linear.bias.copy_(torch.from_numpy(bias).float())
    return LogisticHead(linear, C, accuracy, loss, searched)


# -------------------------------------------------------------------------------- fine-tune

@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int
    lr: float
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    batch_size: int = 64
    dropout: float = 0.2


@torch.no_grad()
def mirror_logits(top: nn.Module, head: nn.Module, acts: Activations, batch_size: int = 256) -> torch.Tensor:
    """Logits as served: the mean over the image and its mirror."""
    top.eval().to(memory_format=CHANNELS_LAST)
    head.eval()
    out = []
    for start in range(0, len(acts), batch_size):
        pair = torch.cat([acts.plain[start:start + batch_size], acts.mirror[start:start + batch_size]]).float()
        logits = head(top(_fast(pair)))
        count = len(logits) // 2
        out.append((logits[:count] + logits[count:]) / 2)
    return torch.cat(out)


def finetune_top(top: LiteTop, head: nn.Linear, train: Activations, train_y: torch.Tensor, valid: Activations,
                 valid_y: torch.Tensor, config: FinetuneConfig, seed: int = 0) -> tuple[LiteTop, nn.Linear, History]:
    """Train copies of `top` and `head` on the cached activations of the images and their mirrors.

    BatchNorm layers keep their ImageNet statistics (eval mode: with ~1,300 images, batch
    statistics would be noisier than the ones learnt on ImageNet). Returns the weights of the
    epoch with the lowest validation loss (mirror-averaged logits) and the history."""
    top, head = copy.deepcopy(top).to(memory_format=CHANNELS_LAST), copy.deepcopy(head)
    for p in [*top.parameters(), *head.parameters()]:
        p.requires_grad_(True)
    inputs = torch.cat([train.plain, train.mirror])
    labels = torch.cat([train_y, train_y])
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, -(-len(inputs) // config.batch_size))
    parameters = [*top.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_scheduler(optimizer, "cosine", config.epochs * steps_per_epoch, warmup_steps=steps_per_epoch)
    loss_fn, dropout = get_loss(config.label_smoothing), nn.Dropout(config.dropout)
    history = History()
    best = (float("inf"), None)
    for epoch in tqdm(range(config.epochs), desc="fine-tuning", unit="epoch", leave=False):
        started = time.perf_counter()
        top.eval()  # BatchNorm statistics and drop-connect stay as in inference; gradients still flow
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for start in range(0, len(inputs), config.batch_size):
            index = order[start:start + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(head(dropout(top(_fast(inputs[index].float())))), labels[index])
            loss.backward()
            optimizer.step()
            history.lr.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
            total += loss.item() * len(index)
        logits = mirror_logits(top, head, valid)
        valid_loss = _cross_entropy(logits, valid_y)
        history.train_loss.append(round(total / len(inputs), 5))
        history.valid_loss.append(round(valid_loss, 5))
        history.valid_accuracy.append(round(float((logits.argmax(1) == valid_y).float().mean()), 5))
        history.epoch_seconds.append(round(time.perf_counter() - started, 2))
        if valid_loss < best[0]:
            best = (valid_loss, (copy.deepcopy(top.state_dict()), copy.deepcopy(head.state_dict())))
            history.best_epoch = epoch + 1
    top.load_state_dict(best[1][0])
    head.load_state_dict(best[1][1])
    for p in [*top.parameters(), *head.parameters()]:
        p.requires_grad_(False)
    return top.eval(), head.eval(), history


# ------------------------------------------------------------------------ compare, select

@dataclass(frozen=True)
class TransferConfig:
    """Everything the transfer comparison needs, passed down as one object."""
    backbones: tuple[str, ...] = LITE_BACKBONES
    top_blocks: int = 2  # blocks after the cached cut (fine-tuned; frozen in the frozen variant)
    Cs: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)  # logistic regression strengths searched on validation
    finetune: FinetuneConfig | None = FinetuneConfig(epochs=8, lr=3e-4)  # None: frozen only
    batch_size: int = 32  # for the trunk pass
    # Time budget of the whole comparison (None: none). A backbone whose projected cost (the time
    # the previous ones took, scaled by its FLOPs) would overrun it is not run, and the table says
    # so: on a busy machine the comparison shrinks instead of blowing the budget.
    budget_seconds: float | None = None


# Published multiply-adds per image at the native input size (billions), for projecting costs.
GIGA_FLOPS = {"efficientnet_lite0": 0.41, "efficientnet_lite1": 0.63, "efficientnet_lite2": 0.90}


@dataclass
class Candidate:
    """One trained model of the comparison, scored on validation only."""
    backbone: str
    method: str  # "frozen + logistic head" or "fine-tuned last N blocks"
    valid_accuracy: float
    valid_loss: float
    train_seconds: float
    model: Classifier
    history: History | None = None
    detail: str = ""

    def row(self) -> dict:
        return {"backbone": self.backbone, "method": self.method, "validation accuracy": round(self.valid_accuracy, 4),
                "validation loss": round(self.valid_loss, 4), "train seconds": round(self.train_seconds, 1),
                "detail": self.detail}


@dataclass
class Selection:
    chosen: Candidate
    candidates: list[Candidate]
    reason: str


def select(candidates: list[Candidate]) -> Selection:
    """The candidate with the highest validation accuracy; ties go to the lower validation loss,
    then to the faster one. Never looks at a test set."""
    if not candidates:
        raise ValueError("no candidates to select from (did every backbone fail to load?)")
    ranked = sorted(candidates, key=lambda c: (-c.valid_accuracy, c.valid_loss, c.train_seconds))
    chosen = ranked[0]
    tied = [c for c in candidates if c.valid_accuracy == chosen.valid_accuracy]
    reason = (f"highest validation accuracy ({chosen.valid_accuracy:.4f})" if len(tied) == 1 else
              f"validation accuracy {chosen.valid_accuracy:.4f} shared by {len(tied)} candidates; "
              f"lowest validation loss ({chosen.valid_loss:.4f})")
    return Selection(chosen, candidates, reason)


@dataclass
class BackboneData:
    """One backbone's cached pass: what `compare` needs for it."""
    backbone: Backbone
    trunk: LiteTrunk
    top: LiteTop
    train: Activations
    valid: Activations
    train_y: torch.Tensor
    valid_y: torch.Tensor


def prepare(backbone: Backbone, train: tuple[torch.Tensor, torch.Tensor], valid: tuple[torch.Tensor, torch.Tensor],
            config: TransferConfig, cache_dir: Path | None = None) -> BackboneData:
    """Cut the backbone and run its trunk once over train and validation images (and mirrors).

    `train` and `valid` are uint8 squares decoded at the backbone's resize size."""
    trunk, top = split(backbone, config.top_blocks)
    acts = {}
    for name, (images, _) in (("train", train), ("valid", valid)):
        cache = Path(cache_dir) / cache_name(backbone, config.top_blocks, images, name) if cache_dir else None
        acts[name] = activations(trunk, backbone, images, batch_size=config.batch_size, cache_file=cache,
                                 desc=f"{backbone.name} {name}")
    return BackboneData(backbone, trunk, top, acts["train"], acts["valid"], train[1], valid[1])


def fit_candidates(data: BackboneData, config: TransferConfig, extraction_seconds: float) -> list[Candidate]:
    """Frozen + logistic head, then (if configured) the fine-tuned top, for one backbone."""
    started = time.perf_counter()
    train_x, valid_x = top_features(data.top, data.train), top_features(data.top, data.valid)
    head = fit_logistic_head(train_x, data.train_y, valid_x, data.valid_y, config.Cs)
    frozen_seconds = extraction_seconds + time.perf_counter() - started
    name = data.backbone.name
    candidates = [Candidate(name, "frozen + logistic head", head.valid_accuracy, head.valid_loss, frozen_seconds,
                            Classifier(data.trunk, data.top, head.linear).eval(),
                            detail=f"C={head.C} (validation accuracy by C: {head.searched})")]
    if config.finetune is not None and config.top_blocks > 0:
        started = time.perf_counter()
        top, linear, history = finetune_top(data.top, head.linear, data.train, data.train_y, data.valid,
                                            data.valid_y, config.finetune)
        best = history.best_epoch - 1
        candidates.append(Candidate(
            name, f"fine-tuned last {config.top_blocks} blocks + head", history.valid_accuracy[best],
            history.valid_loss[best], frozen_seconds + time.perf_counter() - started,
            Classifier(data.trunk, top, linear, config.finetune.dropout).eval(), history,
            detail=f"{config.finetune.epochs} epochs at lr {config.finetune.lr:g}, best epoch {history.best_epoch}"))
    return candidates


@dataclass
class Comparison:
    selection: Selection
    skipped: dict[str, str]  # backbone -> why it could not be loaded
    peak_memory_mb: float
    backbones: dict[str, Backbone]


def compare(config: TransferConfig, images_for, cache_dir: Path | None = None) -> Comparison:
    """Fit every configured backbone (frozen and fine-tuned) and select one on validation.

    `images_for(backbone)` returns (train, valid) uint8 squares at that backbone's resize size."""
    candidates, skipped, loaded = [], {}, {}
    spent, spent_flops = 0.0, 0.0
    with PeakMemory(include_self=True) as memory:
        for name in config.backbones:
            if config.budget_seconds is not None and spent_flops > 0:
                projected = spent / spent_flops * GIGA_FLOPS.get(name, max(GIGA_FLOPS.values()))
                if spent + projected > config.budget_seconds:
                    skipped[name] = (f"not run: {spent:.0f} s spent, ~{projected:.0f} s more projected, over the "
                                     f"{config.budget_seconds:.0f} s budget on this machine")
                    continue
            try:
                backbone = load_backbone(name)
            except Exception as err:  # noqa: BLE001 - a missing weights package, a failed download
                skipped[name] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
                continue
            loaded[name] = backbone
            train, valid = images_for(backbone)
            data = prepare(backbone, train, valid, config, cache_dir)
            extraction = data.train.seconds + data.valid.seconds
            fitted = fit_candidates(data, config, extraction)
            candidates += fitted
            spent += max(c.train_seconds for c in fitted)
            spent_flops += GIGA_FLOPS.get(name, max(GIGA_FLOPS.values()))
    return Comparison(select(candidates), skipped, round(memory.peak_bytes / 2**20, 1), loaded)
