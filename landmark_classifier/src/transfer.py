"""Which backbone, frozen or fine-tuned: the landmark comparison, on the shared transfer kit.

`common.transfer` does the work (the trunk/top split, the cached pass over every photo and its
mirror, the logistic head, fine-tuning); this module runs it for each configured backbone:

- frozen + head: the top, frozen, turns the activations into 1280 features; the mean of an
  image's and its mirror's features trains a logistic regression (its regularisation chosen on
  validation) that becomes a linear layer;
- fine-tuned: the top's blocks and the head train end to end on the cached activations of the
  images and their mirrors (`common.transfer.fit_top`), starting from the logistic head.

`compare` fits both for each backbone; `select` picks one on validation accuracy only (then
lower validation loss, then less training time); the notebook evaluates the chosen model on the
test set once. Every model is evaluated as it is served: the mean of the logits for the image
and its mirror (`export.Preprocessing(mirror=True)`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from common.backbones import LITE_BACKBONES, Backbone, half_suffix, load_backbone, store_half
from common.memory import PeakMemory
from common.training import History
from common.transfer import (ActivationCache, Activations, Classifier, FinetuneConfig, LiteTop, LiteTrunk, Prepare,
                             fit_logistic_head, fit_top, mirror_mean, split)


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
    # A frozen second backbone whose features the shipped head also reads (`fusion.py`: better by
    # cross-validation, at a bigger file and a third of the tagging rate); None: the chosen backbone alone.
    second_backbone: str | None = None
    # Name photos by the knn bank of training photos and thumbnails (a soft nearest-neighbour vote,
    # `export.BankHead`, at this tau) instead of the linear head: better by cross-validation (`fusion.py`),
    # at no file size (the open-set score already ships the bank); None: the linear head.
    bank_tau: float | None = 0.02
    # Store the frozen trunk's weights float16 (`common.backbones.store_half`; float32 arithmetic):
    # Lite2's trunk takes 6 MB less in each file, the room a second opinion needs under the 30 MB cap.
    half_trunk: bool = True
    # Refit the shipped model on the training and validation photos once everything is chosen (its C,
    # temperature, thresholds and rerun_below kept from the model fitted with validation held out):
    # a quarter more photos to learn from (`openset.refit_model`, `fusion.refit`).
    refit: bool = True


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
    cache: ActivationCache  # more photos through the same trunk (the open-set check's)


def prepare(backbone: Backbone, train: tuple[torch.Tensor, torch.Tensor], valid: tuple[torch.Tensor, torch.Tensor],
            config: TransferConfig, cache_dir: Path | None = None) -> BackboneData:
    """Cut the backbone and run its trunk once over train and validation images (and mirrors).

    `train` and `valid` are uint8 squares decoded at the backbone's resize size; the trunk sees
    their centre crop, normalised, as the exported predictor does."""
    trunk, top = split(backbone, config.top_blocks)
    if config.half_trunk:
        store_half(trunk)
    path = None if cache_dir is None else (
        Path(cache_dir) / f"trunk_pairs_{backbone.name}_top{config.top_blocks}_crop{backbone.input_size}"
                          f"{half_suffix(trunk)}.pt")
    cache = ActivationCache(Prepare(backbone, backbone.input_size, "crop"), trunk, path, batch_size=config.batch_size)
    acts = {name: cache(images, desc=f"{backbone.name} {name}") for name, (images, _) in (("train", train),
                                                                                        ("valid", valid))}
    return BackboneData(backbone, trunk, top, acts["train"], acts["valid"], train[1], valid[1], cache)


def fit_candidates(data: BackboneData, config: TransferConfig, extraction_seconds: float) -> list[Candidate]:
    """Frozen + logistic head, then (if configured) the fine-tuned top, for one backbone."""
    started = time.perf_counter()
    train_x, valid_x = mirror_mean(data.top, data.train), mirror_mean(data.top, data.valid)
    head = fit_logistic_head(train_x, data.train_y, valid_x, data.valid_y, config.Cs)
    frozen_seconds = extraction_seconds + time.perf_counter() - started
    name = data.backbone.name
    candidates = [Candidate(name, "frozen + logistic head", head.valid_accuracy, head.valid_loss, frozen_seconds,
                            Classifier(data.trunk, data.top, head.linear).eval(),
                            detail=f"C={head.C} (validation accuracy by C: {head.searched})")]
    if config.finetune is not None and config.top_blocks > 0:
        started = time.perf_counter()
        top, linear, history = fit_top(data.top, head.linear, data.train, data.train_y, data.valid,
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


# ------------------------------------------------------------- a fine-tuning choice, by CV

def stratified_folds(labels: torch.Tensor, folds: int, seed: int = 0):
    """(fit, held) index tensors of each of `folds` stratified folds of `labels`, shuffled with `seed`:
    the split every cross-validation here uses (`fusion.cross_validate` too)."""
    from sklearn.model_selection import StratifiedKFold

    for fit, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(labels.numpy(), labels.numpy()):
        yield torch.as_tensor(fit), torch.as_tensor(held)


def starting_head(top: nn.Module, acts: Activations, labels: torch.Tensor, C: float) -> nn.Linear:
    """A fold's head before fine-tuning, as the comparison starts: a logistic regression of strength `C`
    on the frozen top's served features (image + mirror mean) of the fold's training part."""
    features = mirror_mean(top, acts)
    return fit_logistic_head(features, labels, features, labels, Cs=(C,)).linear


def cross_validate(data: BackboneData, variants: dict[str, FinetuneConfig], *, C: float = 1.0, folds: int = 5,
                   seed: int = 0) -> dict[str, dict]:
    """Stratified k-fold accuracy (served: image + mirror) of fine-tuning variants on the training and
    validation photos pooled; the test photos are not read. Each fold starts from a logistic head of
    strength `C` fitted on that fold's training part, as the comparison does."""
    pooled = Activations(torch.cat([data.train.plain, data.valid.plain]), torch.cat([data.train.mirror, data.valid.mirror]))
    labels = torch.cat([data.train_y, data.valid_y])
    correct = {name: 0 for name in variants}
    seconds = {name: 0.0 for name in variants}
    for fit, held in stratified_folds(labels, folds, seed):
        fit_acts, held_acts = pooled.subset(fit), pooled.subset(held)
        head = starting_head(data.top, fit_acts, labels[fit], C)
        for name, config in variants.items():
            started = time.perf_counter()
            top, linear, _ = fit_top(data.top, head, fit_acts, labels[fit], None, None, config)
            seconds[name] += time.perf_counter() - started
            predicted = mirror_mean(nn.Sequential(top, linear), held_acts, mirror=config.mirror).argmax(1)
            correct[name] += int((predicted == labels[held]).sum())
    return {name: {"accuracy": round(correct[name] / len(labels), 4), "correct": correct[name],
                   "photos": len(labels), "folds": folds, "fit seconds": round(seconds[name], 1)} for name in variants}


def main(argv: list[str] | None = None) -> int:
    """python -m landmark_classifier.src.transfer: fine-tuning with and without drop connect, by k-fold CV."""
    import argparse
    import json
    from dataclasses import replace

    from common import paths
    from landmark_classifier.src import data as landmark_data
    from landmark_classifier.src.config import CACHE_DIR, config_for

    parser = argparse.ArgumentParser(prog="python -m landmark_classifier.src.transfer", description=(
        "Cross-validate the fine-tuning of the full profile with drop connect off and on (the choice "
        "common.transfer.FinetuneConfig.drop_connect documents), on the training photos only."))
    parser.add_argument("--data-dir", default=None, help="default: $DATA_DIR, else <repo>/data")
    parser.add_argument("--dataset", default="landmark_gldv2", help="a folder under DATA_DIR (Udacity layout)")
    parser.add_argument("--backbone", default="efficientnet_lite2")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="default: the full profile's")
    args = parser.parse_args(argv)
    landmarks = landmark_data.locate(paths.data_dir(args.data_dir), dataset=args.dataset)
    config = config_for("full").budget(landmarks.stand_in).transfer
    tune = config.finetune if args.epochs is None else replace(config.finetune, epochs=args.epochs)
    backbone = load_backbone(args.backbone)
    splits = landmark_data.load_splits(landmarks, backbone.resize_size, CACHE_DIR)
    prepared = prepare(backbone, splits.train, splits.valid, config, CACHE_DIR)
    variants = {f"drop_connect={flag}": replace(tune, drop_connect=flag) for flag in (False, True)}
    result = cross_validate(prepared, variants, folds=args.folds)
    print(json.dumps({"data": landmarks.source, "backbone": backbone.name, "epochs": tune.epochs, **result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
