"""Local model: EfficientNet-Lite0 (ImageNet weights, offline) fine-tuned on its last blocks, on the CPU.

The network is cut in two at block `split_block`. The *trunk* (stem + early blocks) stays frozen, so
its activations are computed once per image (and once for its mirror image, the augmentation) and
cached on disk, keyed by the image's content; the *head* (the remaining blocks, the 1x1 head
convolution and a new 2-class linear layer) trains on those activations. Training the late,
low-resolution blocks costs a fraction of a forward pass, which is how fine-tuning fits in minutes on
2 cores. The trunk pass itself runs in ONNX Runtime (measured here: 2.6x faster than eager PyTorch
on 2 busy cores for Lite2 at 160 px).

The trained model is exported to ONNX (`export`): it takes what the server receives, a uint8
`N x 3 x H x W` RGB batch of any size, resizes and normalises inside the graph, averages the
prediction of the image and its mirror image (test-time flip, when the config says so) and returns
class probabilities. Class names, the input contract and the training run travel in the file's
metadata, so serving needs neither this module nor torch (`src/predictor.py`).
"""
from __future__ import annotations

import copy
import hashlib
import logging
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.backbones import Backbone, load_backbone
from common.torchkit import train_mode
from common.serving import export_onnx, load_onnx

from .data import CLASSES

log = logging.getLogger(__name__)

INPUT_CONTRACT = "uint8 N x 3 x H x W RGB, any size"


@dataclass(frozen=True)
class TrainConfig:
    # Chosen on the training images only (`python -m scones_workflow.src.selection`; the test set is not read).
    # 5-fold cross-validation over the 1,000 images, with / without the test-time flip, last epoch:
    #   Lite0 160 px, split 13, lr 1e-3: 0.962 / 0.960   (the smaller network: faster to serve)
    #   Lite2 160 px, split 18, lr 5e-4: 0.963 / 0.953
    # They tie (one image is 0.1 %), so the cheaper one serves. On the 15 % validation split (150 images,
    # best epoch, with the flip): Lite0 160 px split 13 0.973, Lite0 224 px split 13 0.967, Lite2 160 px split
    # 15 0.960, split 18 0.960. Also tried, both worse: frozen Lite0 features (224 px, pooled, image +
    # mirror) with logistic regression, 0.945 in 5-fold CV; every block of Lite0 fine-tuned at 128 px
    # (BatchNorm training, pad-4 random crop + flip, one-cycle AdamW 1e-3, 6 epochs): 0.927-0.940 on the
    # validation split from epoch 3 on. Out-of-fold probabilities of the same 5 folds: Lite0 224 px split 13
    # 0.966; Lite0 160 + Lite0 224 + Lite2 160 averaged 0.968. Dropout and drop connect drew from torch's
    # unseeded global generator then (seeded in `fit_head` since), and a config's CV moved by about a point
    # between runs (Lite2 160 px: 0.963, 0.950): every candidate here is a 95-97 % model, short of 98 %.
    backbone: str = "efficientnet_lite0"
    resolution: int = 160      # CIFAR's 32 px images are upsampled to this before the backbone
    split_block: int = 13      # blocks [0, split_block) are the frozen trunk; Lite0 has 16, Lite2 21
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    tta: bool = True           # average the prediction of the image and its mirror image
    val_fraction: float = 0.15
    seed: int = 0
    trunk_engine: str = "onnxruntime"  # or "torch" (tests: no export needed)


PROFILES = {
    "tiny": TrainConfig(backbone="efficientnet_lite0", resolution=64, split_block=14, epochs=2),
    "quick": TrainConfig(resolution=128, epochs=4),
    "full": TrainConfig(),
}


class SconesNet(nn.Module):
    """uint8 images -> resize + normalise -> frozen trunk -> trainable head -> probabilities (N x 2)."""

    def __init__(self, backbone: Backbone, config: TrainConfig, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        net = backbone.module
        self.resolution, self.tta, self.backbone_name = config.resolution, config.tta, backbone.name
        self.mean_values, self.std_values = list(backbone.mean), list(backbone.std)
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1) * 255)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, copy.deepcopy(net._swish))
        self.trunk_blocks = nn.ModuleList(net._blocks[:config.split_block])
        self.head_blocks = nn.ModuleList(net._blocks[config.split_block:])
        self.head_conv = nn.Sequential(net._conv_head, net._bn1, copy.deepcopy(net._swish))
        n_blocks = len(net._blocks)
        rate = net._global_params.drop_connect_rate or 0.0
        self.drop_rates = [rate * (config.split_block + i) / n_blocks for i in range(len(self.head_blocks))]
        self.dropout = nn.Dropout(net._global_params.dropout_rate)
        self.classifier = nn.Linear(backbone.feature_dim, num_classes)
        for p in [*self.stem.parameters(), *self.trunk_blocks.parameters()]:
            p.requires_grad_(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x H x W (any size) -> normalised N x 3 x R x R. The output size is a constant, so
        the exported graph takes every input size (no arithmetic on the input's size to freeze)."""
        x = F.interpolate(images.float(), size=(self.resolution, self.resolution), mode="bilinear",
                          align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.preprocess(images))
        for block in self.trunk_blocks:
            x = block(x)
        return x

    def logits_from_trunk(self, x: torch.Tensor) -> torch.Tensor:
        for block, rate in zip(self.head_blocks, self.drop_rates):
            x = block(x, drop_connect_rate=rate)
        x = self.head_conv(x).mean(dim=(2, 3))
        return self.classifier(self.dropout(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.tta:  # one batch of 2N: the images and their mirror images
            n = images.shape[0]
            both = torch.softmax(self.logits_from_trunk(self.trunk(torch.cat([images, images.flip(3)]))), dim=1)
            return (both[:n] + both[n:]) / 2
        return torch.softmax(self.logits_from_trunk(self.trunk(images)), dim=1)

    def train_head(self, training: bool = True) -> None:
        """Train mode (dropout, drop connect) with every BatchNorm on its ImageNet statistics: with
        batches of 32 and this library's momentum of 0.01, re-estimated statistics lag the weights
        for epochs, and evaluation then sees a different network than training did."""
        train_mode(self, training, eval_batch_norm="all")


class _Trunk(nn.Module):
    def __init__(self, net: SconesNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.trunk(images)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """N x H x W x 3 uint8 -> N x 3 x H x W uint8 (a contiguous copy): what the server feeds the model."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(0, 3, 1, 2)))


# ----------------------------------------------------------------------------- activation cache

def image_key(image: np.ndarray) -> str:
    return hashlib.sha1(f"{image.shape}".encode() + np.ascontiguousarray(image).tobytes()).hexdigest()[:20]


def _cache_name(config: TrainConfig) -> str:
    return f"trunk_{config.backbone}_{config.resolution}px_split{config.split_block}"


class ActivationCache:
    """Trunk activations per image content (float16 on disk), so any subset of images (a validation fold,
    the training set plus captured images) reuses what was computed before."""

    def __init__(self, config: TrainConfig, cache_dir: Path | None) -> None:
        self.config = config
        self.path = None if cache_dir is None else Path(cache_dir) / f"{_cache_name(config)}.pt"
        self.store: dict[str, torch.Tensor] = {}
        if self.path is not None and self.path.is_file():
            self.store = torch.load(self.path)
        self.computed = 0

    def missing(self, images: np.ndarray) -> list[int]:
        return [i for i, image in enumerate(images) if image_key(image) not in self.store]

    def get(self, model: SconesNet, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
        """The trunk's output for `images` (float32), computing and saving the missing ones."""
        missing = self.missing(images)
        if missing:
            log.info("trunk pass for %d image(s) (%s, %s)", len(missing), _cache_name(self.config),
                     self.config.trunk_engine)
            run = self._runner(model)
            for start in range(0, len(missing), batch_size):
                chunk = missing[start:start + batch_size]
                out = run(images[chunk])
                for i, activation in zip(chunk, out):
                    self.store[image_key(images[i])] = activation.to(torch.float16).clone()
            self.computed += len(missing)
            self._save()
        return torch.stack([self.store[image_key(image)] for image in images]).float()

    def _runner(self, model: SconesNet):
        model.eval()
        if self.config.trunk_engine == "torch":
            def run(batch: np.ndarray) -> torch.Tensor:
                with torch.inference_mode():
                    return model.trunk(to_tensor(batch))
            return run
        folder = self.path.parent if self.path is not None else Path(tempfile.mkdtemp(prefix="scones-trunk-"))
        onnx_path = folder / f"{_cache_name(self.config)}.onnx"
        if not onnx_path.is_file():
            example = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
            export_onnx(_Trunk(model), example, onnx_path, metadata={"what": "frozen trunk for caching"},
                        check_inputs=[torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)], atol=1e-3)
        session = load_onnx(onnx_path, threads=2)
        return lambda batch: torch.from_numpy(session.run(to_tensor(batch).numpy()))

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(self.store, tmp)
        tmp.replace(self.path)


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified indices (fit, validation)."""
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_val = max(1, round(fraction * len(idx)))
        val.extend(idx[:n_val])
        fit.extend(idx[n_val:])
    return np.sort(fit), np.sort(val)


def mirrored(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images[:, :, ::-1])


# ----------------------------------------------------------------------------- training

@dataclass
class TrainResult:
    model: SconesNet
    history: dict[str, list[float]]
    best_epoch: int
    val_accuracy: float
    config: TrainConfig
    activations_cached: bool  # True: the trunk did not run (every activation came from the cache)
    n_fit: int = 0
    extra: dict = field(default_factory=dict)


@torch.no_grad()
def _logits(model: SconesNet, acts: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model.logits_from_trunk(acts[i:i + 128]) for i in range(0, len(acts), 128)])


def _evaluate(model: SconesNet, acts: torch.Tensor, mirror_acts: torch.Tensor | None, labels: torch.Tensor
              ) -> tuple[float, float]:
    """Validation loss and accuracy of the served prediction (with the test-time flip if configured)."""
    probs = torch.softmax(_logits(model, acts), 1)
    if mirror_acts is not None:
        probs = (probs + torch.softmax(_logits(model, mirror_acts), 1)) / 2
    loss = F.nll_loss(torch.log(probs.clamp_min(1e-8)), labels).item()
    return loss, (probs.argmax(1) == labels).float().mean().item()


def fit_head(model: SconesNet, fit_acts: torch.Tensor, fit_y: torch.Tensor, config: TrainConfig,
             val: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None
             ) -> tuple[dict[str, list[float]], int, float]:
    """Train the head on activations; with `val`, keep the epoch of best validation accuracy (ties:
    lower loss). Returns (history, best epoch, best validation accuracy).

    Reproducible: the batch order has its own generator, and dropout / drop connect draw from torch's
    global one, seeded here inside `fork_rng` so the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return _fit_head(model, fit_acts, fit_y, config, val)


def _fit_head(model: SconesNet, fit_acts: torch.Tensor, fit_y: torch.Tensor, config: TrainConfig,
              val: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None
              ) -> tuple[dict[str, list[float]], int, float]:
    generator = torch.Generator().manual_seed(config.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * -(-len(fit_acts) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps, pct_start=0.2)
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "val_accuracy": []}
    best, best_state, best_epoch = (-1.0, float("inf")), None, config.epochs
    for epoch in range(1, config.epochs + 1):
        model.train_head()
        order = torch.randperm(len(fit_acts), generator=generator)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            loss = F.cross_entropy(model.logits_from_trunk(fit_acts[batch]), fit_y[batch],
                                   label_smoothing=config.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        history["train_loss"].append(total / len(order))
        if val is None:
            continue
        val_loss, val_acc = _evaluate(model, *val)
        history["val_loss"].append(val_loss)
        history["val_accuracy"].append(val_acc)
        log.info("epoch %d: train loss %.4f, val loss %.4f, val accuracy %.4f", epoch, total / len(order),
                 val_loss, val_acc)
        if (val_acc, -val_loss) > (best[0], -best[1]):
            best, best_epoch = (val_acc, val_loss), epoch
            best_state = copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history, best_epoch, best[0]


def build(config: TrainConfig) -> SconesNet:
    return SconesNet(load_backbone(config.backbone), config)


def train(images: np.ndarray, labels: np.ndarray, config: TrainConfig, *, cache_dir: Path | None = None,
          extra_images: np.ndarray | None = None, extra_labels: np.ndarray | None = None,
          init_state: dict | None = None) -> TrainResult:
    """Fine-tune the head on a stratified fit split of `images`; keep the epoch with the best validation
    accuracy. `extra_images` (e.g. pseudo-labelled captures) join the fit split only, so validation stays
    on the original, labelled images. `init_state` (a trained model's state_dict) warm-starts training
    instead of the ImageNet weights. The test set is not seen here."""
    torch.manual_seed(config.seed)
    model = build(config)
    if init_state is not None:
        model.load_state_dict(init_state)
    cache = ActivationCache(config, cache_dir)
    fit_idx, val_idx = validation_split(labels, config.val_fraction, config.seed)
    fit_images, fit_labels = images[fit_idx], labels[fit_idx]
    if extra_images is not None and len(extra_images):
        fit_images = np.concatenate([fit_images, extra_images])
        fit_labels = np.concatenate([fit_labels, np.asarray(extra_labels)])
    # Augmentation: every fit image also as its mirror image (vehicles face both ways).
    fit_all = np.concatenate([fit_images, mirrored(fit_images)])
    val_images = images[val_idx]
    cached = not cache.missing(fit_all) and not cache.missing(val_images) and (
        not config.tta or not cache.missing(mirrored(val_images)))
    fit_acts = cache.get(model, fit_all)
    fit_y = torch.as_tensor(np.concatenate([fit_labels, fit_labels]))
    val_acts = cache.get(model, val_images)
    val_mirror = cache.get(model, mirrored(val_images)) if config.tta else None
    history, best_epoch, val_acc = fit_head(model, fit_acts, fit_y, config,
                                            (val_acts, val_mirror, torch.as_tensor(labels[val_idx])))
    return TrainResult(model, history, best_epoch, val_acc, config, cached, n_fit=len(fit_images))


@torch.no_grad()
def predict_proba(model: nn.Module, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
    """Probabilities from the eager model (uint8 N x H x W x 3 in)."""
    model.eval()
    return torch.cat([model(to_tensor(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]).numpy()


def cross_validate(images: np.ndarray, labels: np.ndarray, config: TrainConfig, *, folds: int = 5,
                   cache_dir: Path | None = None) -> dict:
    """Stratified k-fold accuracy of `config` on the training images (the model-selection measure: 1,000
    images in 5 folds are less noisy than one 150-image split). Each fold trains for `config.epochs`."""
    rng = np.random.default_rng(config.seed)
    fold_of = np.empty(len(labels), dtype=int)
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        fold_of[idx] = np.arange(len(idx)) % folds
    model = build(config)
    cache = ActivationCache(config, cache_dir)
    acts = cache.get(model, images)
    mirror_acts = cache.get(model, mirrored(images))
    initial = copy.deepcopy(model.state_dict())
    correct, correct_plain = 0, 0
    for fold in range(folds):
        fit, val = fold_of != fold, fold_of == fold
        model.load_state_dict(initial)
        fit_acts = torch.cat([acts[fit], mirror_acts[fit]])
        fit_y = torch.as_tensor(np.concatenate([labels[fit], labels[fit]]))
        fit_head(model, fit_acts, fit_y, config)
        y = torch.as_tensor(labels[val])
        correct += round(_evaluate(model, acts[val], mirror_acts[val], y)[1] * int(val.sum()))
        correct_plain += round(_evaluate(model, acts[val], None, y)[1] * int(val.sum()))
    return {"accuracy_with_flip": correct / len(labels), "accuracy": correct_plain / len(labels),
            "images": len(labels), "folds": folds}


# ----------------------------------------------------------------------------- export

def metadata(model: SconesNet, config: TrainConfig, training_run: dict) -> dict:
    """What the server needs besides the graph; stored JSON-encoded in the ONNX file."""
    flip = ", averaged with its mirror image" if model.tta else ""
    return {
        "class_names": list(CLASSES),
        "input": INPUT_CONTRACT,
        "output": f"probabilities N x {len(CLASSES)} ({', '.join(CLASSES)})",
        "mean": model.mean_values, "std": model.std_values,
        "preprocessing": f"resized to {model.resolution} x {model.resolution} (bilinear, antialiased) inside "
                         f"the graph, then (x/255 - mean) / std{flip}",
        "model_name": f"{model.backbone_name}, blocks {config.split_block}+ fine-tuned, {model.resolution} px"
                      + (", test-time flip" if model.tta else ""),
        "resolution": model.resolution,
        "config": asdict(config),
        "training_run": {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **training_run},
    }


def export(model: SconesNet, path: Path, config: TrainConfig, training_run: dict) -> Path:
    """Write the served ONNX file and check it against the eager model on several sizes (a portrait
    image, 512 x 513, a 1920 x 1080 photo): ExportMismatch if they disagree."""
    model = model.eval()
    torch.manual_seed(0)
    example = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    checks = [torch.randint(0, 256, shape, dtype=torch.uint8)
              for shape in [(1, 3, 32, 32), (3, 3, 64, 48), (1, 3, 512, 513), (1, 3, 1080, 1920)]]
    return export_onnx(model, example, path, metadata=metadata(model, config, training_run), dynamic_hw=True,
                       check_inputs=checks, atol=1e-4)


def without_tta(model: SconesNet) -> SconesNet:
    """The same weights, predicting from the image alone (half the compute): the A/B challenger."""
    plain = copy.deepcopy(model)
    plain.tta = False
    return plain


def config_without_tta(config: TrainConfig) -> TrainConfig:
    return replace(config, tta=False)
