"""Transfer learning from ImageNet EfficientNet-Lite backbones, cheap enough for 2 CPU cores: one kit
for the landmark and Scones projects.

The expensive part is the backbone's forward pass, so it runs once per image and once for its
mirror image:

- `split` cuts a backbone in two: a frozen `LiteTrunk` (stem and all but the last `top_blocks`
  blocks) and a `LiteTop` (those blocks, the 1 x 1 head convolution, average pooling).
- `ActivationCache` runs the trunk (behind `Prepare`: uint8 images in) over images and their
  mirrors (`ImageAndMirror`) and keeps each result under the image's content, on disk: any subset of images (a
  validation fold, the training set plus captured photos) reuses what was computed before.
- Everything after that trains on the cache: `fit_logistic_head` (a logistic regression on the
  frozen top's features, as one linear layer) and `fit_top` (the top's blocks and a linear head
  trained end to end on the activations of the images and their mirrors), which keeps its best
  epoch by `common.training.BestEpoch`, the rule every loop here uses.

Every score is of the model as served: the mean of the logits for an image and its mirror.
"""
from __future__ import annotations

import copy
import hashlib
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn
from tqdm.auto import tqdm

from common import torchkit
from common.backbones import LITE_BACKBONES, Backbone
from common.training import BestEpoch, History, get_loss, get_optimizer, get_scheduler

# ------------------------------------------------------------------------------- the model


class Prepare(nn.Module):
    """uint8 N x 3 x H x W -> the backbone's normalised `size` x `size` input.

    `how="crop"`: the centre square of images already decoded at the resize size (landmark photos,
    decoded once and cached); `how="resize"`: the whole image scaled (bilinear, antialiased) to the
    size (CIFAR's 32 px squares, Scones). The output size is a constant, so an exported graph takes
    any input size."""

    def __init__(self, backbone: Backbone, size: int, how: str = "crop") -> None:
        super().__init__()
        if how not in ("crop", "resize"):
            raise ValueError(f"how must be 'crop' or 'resize', got {how!r}")
        self.size, self.how = size, how
        # 0..255 pixels normalised in one step: (x / 255 - mean) / std == (x - 255 mean) / (255 std)
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.how == "resize":
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        else:
            top, left = (x.shape[2] - self.size) // 2, (x.shape[3] - self.size) // 2
            x = x[:, :, top:top + self.size, left:left + self.size]
        return _fast((x - self.mean) / self.std)


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
    """trunk -> top -> dropout -> linear: normalised crops in, logits out."""

    def __init__(self, trunk: nn.Module, top: nn.Module, head: nn.Linear, dropout: float = 0.2) -> None:
        super().__init__()
        self.trunk, self.top, self.dropout, self.head = trunk, top, nn.Dropout(dropout), head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features (what the head and the open-set scores read)."""
        return self.top(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


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


# Channels-last memory layout: oneDNN's depthwise and 1 x 1 convolutions, most of EfficientNet,
# ran 8x and 3x faster in it on this CPU (measured, one thread). Layout only: same numbers.
def _fast(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------- the cached pass

@dataclass
class Activations:
    """The trunk's output for each image and for its mirror image (float16: half the memory)."""
    plain: torch.Tensor
    mirror: torch.Tensor
    seconds: float = 0.0  # what the trunk pass cost (when read from the cache: when it was computed)
    cached: bool = False  # True: nothing was computed this time

    def __len__(self) -> int:
        return len(self.plain)

    def both(self) -> torch.Tensor:
        """Images, then their mirrors: the training set of `fit_top` (float16)."""
        return torch.cat([self.plain, self.mirror])

    def subset(self, index: torch.Tensor | np.ndarray) -> Activations:
        index = torch.as_tensor(index)
        return Activations(self.plain[index], self.mirror[index], self.seconds, self.cached)

    @staticmethod
    def join(*parts: Activations) -> Activations:
        """One set of the parts' images, in order (e.g. photos and their thumbnails)."""
        return Activations(torch.cat([p.plain for p in parts]), torch.cat([p.mirror for p in parts]),
                           round(sum(p.seconds for p in parts), 2), all(p.cached for p in parts))


def image_key(image: np.ndarray | torch.Tensor) -> str:
    """A name for an image's content (its shape and pixels): the cache's key."""
    array = np.ascontiguousarray(image.numpy() if isinstance(image, torch.Tensor) else image)
    return hashlib.sha1(f"{array.shape}".encode() + array.tobytes()).hexdigest()[:20]


# The engine that runs the trunk pass. `python -m common.transfer_benchmark` (medians of 5 interleaved
# rounds of 32 images + mirrors, one process, 2 busy cores, 2026-12-06): ONNX Runtime 6.5 ms per image
# vs eager channels-last PyTorch 27.5 ms for Scones' Lite0 at 160 px (4.2x), 12.6 vs 134 ms for
# landmark's Lite2 at 260 px (10.7x). The export costs seconds once per input size.
ENGINES = ("onnxruntime", "torch")
ENGINE = "onnxruntime"


class ImageAndMirror(nn.Module):
    """uint8 N x 3 x H x W -> the trunk's activations of the prepared images, then of their mirrors (2N).

    The mirror is taken of the *prepared* input, as the served models do: a centre crop whose
    margins differ by a pixel (Lite2: 297 -> 260 px) is not symmetric, so mirroring before it would
    shift the mirror image by one pixel against what the predictor sees."""

    def __init__(self, prepare: nn.Module, trunk: nn.Module) -> None:
        super().__init__()
        self.prepare, self.trunk = prepare, trunk

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.prepare(images)
        return self.trunk(torch.cat([x, x.flip(3)]))


class ActivationCache:
    """Trunk activations per image content, the image's and its mirror's, float16, in one file.

    `prepare` maps uint8 N x 3 x H x W images to the trunk's input (`Prepare`), `trunk` that to
    activations (`LiteTrunk`); `path` names the file (None: memory only). The file name must
    change with everything that changes the activations (backbone, cut, input size): callers build
    it from those. `engine` runs the pass in ONNX Runtime (exported once per input size, beside the
    cache) or in eager PyTorch (channels-last)."""

    def __init__(self, prepare: nn.Module, trunk: nn.Module, path: str | Path | None, *, engine: str = ENGINE,
                 batch_size: int = 32) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        self.pair, self.engine, self.batch_size = ImageAndMirror(prepare, trunk).eval(), engine, batch_size
        if engine == "torch":  # here, not under inference mode: weights converted there could not train later
            self.pair.to(memory_format=torch.channels_last)
        self.path = None if path is None else Path(path)
        self.store: dict[str, torch.Tensor] = {}   # key -> 2 x C x h x w (image, mirror)
        self.cost: dict[str, float] = {}           # key -> seconds its pass took
        if self.path is not None and self.path.is_file():
            stored = torch.load(self.path)
            if isinstance(stored, dict) and {"activations", "seconds"} <= set(stored):
                self.store, self.cost = stored["activations"], stored["seconds"]
        self.computed = 0
        self._sessions: dict[tuple[int, ...], object] = {}

    def missing(self, images: torch.Tensor) -> list[int]:
        return [i for i, image in enumerate(images) if image_key(image) not in self.store]

    def __call__(self, images: torch.Tensor, desc: str = "trunk") -> Activations:
        """Activations of uint8 N x 3 x H x W `images` and their mirrors, computing (and saving) the missing."""
        keys = [image_key(image) for image in images]
        missing = [i for i, key in enumerate(keys) if key not in self.store]
        for start in tqdm(range(0, len(missing), self.batch_size), desc=desc, unit="batch", leave=False):
            chunk = missing[start:start + self.batch_size]
            started = time.perf_counter()
            out = self._run(images[chunk]).to(torch.float16)
            share = (time.perf_counter() - started) / len(chunk)
            for row, i in enumerate(chunk):
                self.store[keys[i]] = torch.stack([out[row], out[len(chunk) + row]]).clone()
                self.cost[keys[i]] = share
        if missing:
            self.computed += len(missing)
            if self.path is not None:
                torchkit.save({"activations": self.store, "seconds": self.cost}, self.path)
        both = torch.stack([self.store[key] for key in keys]) if keys else torch.zeros(0, 2)
        return Activations(both[:, 0], both[:, 1], round(sum(self.cost[key] for key in keys), 2),
                           cached=not missing)

    @torch.inference_mode()
    def _run(self, images: torch.Tensor) -> torch.Tensor:
        """The activations of `images`, then of their mirrors (2N)."""
        if self.engine == "torch":
            return self.pair(images).contiguous()
        shape = tuple(images.shape[1:])
        if shape not in self._sessions:
            self._sessions[shape] = self._export(images[:2])
        return torch.from_numpy(self._sessions[shape].run(images.numpy()))

    def _export(self, example: torch.Tensor):
        from common.serving import export_onnx, load_onnx

        folder = self.path.parent if self.path is not None else Path(tempfile.mkdtemp(prefix="trunk-"))
        stem = self.path.stem if self.path is not None else "trunk"
        onnx_path = folder / f"{stem}.{'x'.join(map(str, example.shape[1:]))}.onnx"
        if not onnx_path.is_file():
            export_onnx(self.pair, example, onnx_path, metadata={"what": "frozen trunk for the activation cache"},
                        check_inputs=[example[:1]], atol=1e-3)
        return load_onnx(onnx_path, threads=torch.get_num_threads())


@torch.no_grad()
def mirror_mean(module: nn.Module, acts: Activations, *, mirror: bool = True, batch_size: int = 256) -> torch.Tensor:
    """`module`'s output (eval mode) on the activations, averaged over each image and its mirror
    (`mirror=False`: the image alone): the frozen top's features, or logits as served."""
    module.eval().to(memory_format=torch.channels_last)
    out = []
    for start in range(0, len(acts), batch_size):
        plain = acts.plain[start:start + batch_size]
        if not mirror:
            out.append(module(_fast(plain.float())))
            continue
        both = module(_fast(torch.cat([plain, acts.mirror[start:start + batch_size]]).float()))
        out.append((both[:len(plain)] + both[len(plain):]) / 2)
    return torch.cat(out)


# --------------------------------------------------------------------------- frozen + head

@dataclass
class LogisticHead:
    linear: nn.Linear  # the fitted regression as a layer on unscaled features
    C: float
    valid_accuracy: float
    valid_loss: float  # cross-entropy of the predicted probabilities
    searched: dict[float, float] = field(default_factory=dict)  # C -> validation accuracy


def accuracy_and_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy, cross-entropy) of logits."""
    return float((logits.argmax(1) == labels).float().mean()), float(F.cross_entropy(logits, labels))


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
        accuracy, loss = accuracy_and_loss(logits, valid_y)
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
    dropout: float = 0.2       # before the linear head, while training
    schedule: str = "cosine"   # common.training.get_scheduler: "cosine" warms up for one epoch
    # While training, every BatchNorm keeps its ImageNet statistics (with a thousand images, batch
    # statistics would be noisier, and with the library's momentum of 0.01 re-estimated ones lag
    # the weights for epochs). drop_connect=True also trains the blocks' stochastic depth (train
    # mode, BatchNorm in eval); False runs the top exactly as at inference. Measured by 5-fold
    # cross-validation on the training images of both projects (2026-12-06), off / on:
    #   Scones, Lite0 160 px, 1,000 CIFAR images: 96.0 % / 97.1 % (960 / 971 right)
    #     `python -m scones_workflow.src.training.selection --folds 5 --only ...`
    #   landmark, Lite2, 1,657 GLDv2 photos, 2 epochs: 95.8 % / 96.0 % (1,587 / 1,590 right)
    #     `python -m landmark_classifier.src.transfer`
    # On (Scones' old way) wins on one project and ties on the other, so it is the default.
    drop_connect: bool = True
    mirror: bool = True        # validate on the mean of the image's and its mirror's logits (as served)
    seed: int = 0
    # Outlier exposure (Hendrycks et al. 2019), used when `fit_top` is given outliers: each step adds
    # this weight times the cross-entropy from the outliers' softmax to the uniform distribution, so
    # images of no known class learn low confidence. 0.5 is the paper's weight.
    outlier_weight: float = 0.5


def _top_mode(top: nn.Module, config: FinetuneConfig) -> None:
    if config.drop_connect:
        torchkit.train_mode(top, True, eval_batch_norm="all")
    else:
        top.eval()  # gradients still flow through eval-mode layers


def fit_top(top: LiteTop, head: nn.Linear, train: Activations, train_y: torch.Tensor, valid: Activations | None,
            valid_y: torch.Tensor | None, config: FinetuneConfig,
            outliers: Activations | None = None) -> tuple[LiteTop, nn.Linear, History]:
    """Train copies of `top` and `head` on the cached activations of the images and their mirrors.

    `outliers`: activations of images of no class (and their mirrors) for outlier exposure: each
    step also draws half a batch of them (`config.outlier_weight`).

    With `valid`, returns the weights of the best epoch (`BestEpoch`) on served logits; without,
    the last epoch's (cross-validation folds). Reproducible: the batch order has its own generator,
    and dropout / drop connect draw from torch's, seeded inside `fork_rng` (the caller's random
    state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return _fit_top(copy.deepcopy(top), copy.deepcopy(head), train, train_y, valid, valid_y, config, outliers)


def _uniform_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy from softmax(logits) to the uniform distribution (outlier exposure's term)."""
    return -F.log_softmax(logits, dim=1).mean()


def _fit_top(top: LiteTop, head: nn.Linear, train: Activations, train_y: torch.Tensor, valid: Activations | None,
             valid_y: torch.Tensor | None, config: FinetuneConfig,
             outliers: Activations | None) -> tuple[LiteTop, nn.Linear, History]:
    both = nn.ModuleList([top.to(memory_format=torch.channels_last), head])
    extra = None if outliers is None or not len(outliers) else outliers.both()
    for p in both.parameters():
        p.requires_grad_(True)
    inputs, labels = train.both(), torch.cat([train_y, train_y])
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = max(1, -(-len(inputs) // config.batch_size))
    optimizer = get_optimizer(both, "adamw", config.lr, config.weight_decay)
    scheduler = get_scheduler(optimizer, config.schedule, config.epochs * steps_per_epoch, warmup_steps=steps_per_epoch)
    loss_fn, dropout = get_loss(config.label_smoothing), nn.Dropout(config.dropout)
    history, best = History(), BestEpoch()
    for epoch in tqdm(range(1, config.epochs + 1), desc="fine-tuning", unit="epoch", leave=False):
        started = time.perf_counter()
        _top_mode(top, config)
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for start in range(0, len(inputs), config.batch_size):
            index = order[start:start + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(head(dropout(top(_fast(inputs[index].float())))), labels[index])
            if extra is not None:
                drawn = torch.randint(len(extra), (max(1, len(index) // 2),), generator=generator)
                loss = loss + config.outlier_weight * _uniform_loss(head(dropout(top(_fast(extra[drawn].float())))))
            loss.backward()
            optimizer.step()
            history.lr.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
            total += loss.item() * len(index)
        history.train_loss.append(round(total / len(inputs), 5))
        if valid is not None:
            logits = mirror_mean(nn.Sequential(top, head), valid, mirror=config.mirror)
            accuracy, valid_loss = accuracy_and_loss(logits, valid_y)
            history.valid_loss.append(round(valid_loss, 5))
            history.valid_accuracy.append(round(accuracy, 5))
            best.update(epoch, accuracy, valid_loss, both)
        history.epoch_seconds.append(round(time.perf_counter() - started, 2))
    best.restore(both)
    history.best_epoch = best.epoch
    for p in both.parameters():
        p.requires_grad_(False)
    return top.eval(), head.eval(), history
