"""What names the photos: the fine-tuned Lite2's linear head, the soft vote of its nearest training
photos, a second opinion (a frozen second backbone's features beside Lite2's), or the last two with
their logits added (shipped in the full profile).

The bank's vote (`export.BankHead`, `TransferConfig.bank_tau`). The file already carries the training
photos' and thumbnails' normalised features for its knn score; each class scores
log sum exp(cosine / tau) over its photos there, so a photo is named after the known photos it is
most like, at no file size.

The second opinion (`TransferConfig.second_backbone`). A logistic head on Lite2's features *and* a
frozen ImageNet MobileNetV2's features of the same view: two networks trained differently make
different mistakes. The second network sees exactly the served view: the Lite2 crop (its
normalisation undone), resized to its own input size and normalised its way (`SecondOpinion`),
inside the same exported graph. Its weights, like Lite2's frozen trunk's, are stored float16
(`common.backbones.store_half`): at float32 each file would be 35 MB, over the 30 MB a committed
model may take (`export.MAX_FILE_MB`).

Both (`export.SumHead`): the fused head's logits plus the bank's, a product of the two
distributions. Chosen by 5-fold cross-validation on the training and validation photos pooled
(1,657 GLDv2 photos, five times the validation set; the test photos are not read),
`python -m landmark_classifier.src.fusion`, 2026-12-07, frozen weights stored float16:

    fine-tuned Lite2, linear head     96.14 % of the photos (64 wrong), thumbnails 93.36 % (110 wrong)
    named by the bank (tau 0.02)      96.86 % (52 wrong),              thumbnails 93.66 % (105 wrong)
    + frozen MobileNetV2 features     96.80 % (53 wrong),              thumbnails 94.33 % (94 wrong)
    both, logits added (shipped)      97.40 % (43 wrong),              thumbnails 94.33 % (94 wrong)

Both beat the bank alone in four folds of five (one photo worse in the other); the JSON, per fold
included, is `landmark_classifier/models/fusion_cv.json` (the notebook reports it). The cost: the
tagger reads every photo with a second network (`tag_benchmark` has the rate).

With a second opinion, only naming changes: "no known landmark" is still decided on the Lite2
features alone (`export.OpenSetRule.feature_dims`), the score the held-out-class protocol measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.backbones import Backbone, half_suffix, load_backbone, store_half
from common.transfer import ActivationCache, Activations, Classifier, Prepare, fit_logistic_head, fit_top, mirror_mean
from landmark_classifier.src import openset
from landmark_classifier.src.export import BankHead, SumHead


class SecondOpinion(nn.Module):
    """The first backbone's normalised crop (N x 3 x S x S) -> the second backbone's features (N x D)
    of the same view: pixels = x * std1 + mean1, resized to its input size, (pixels - mean2) / std2.
    The normalisation is per channel and affine, so it is applied after the (linear) resize as one
    scale and shift."""

    def __init__(self, second: Backbone, first_mean: tuple[float, ...], first_std: tuple[float, ...],
                 half: bool = True) -> None:
        super().__init__()
        self.module = second.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        if half:  # frozen ImageNet weights stored float16: 4.5 MB in a file, not 9 (the 30 MB cap)
            store_half(self.module)
        self.size, self.dim = second.input_size, second.feature_dim
        mean1, std1 = torch.tensor(first_mean), torch.tensor(first_std)
        mean2, std2 = torch.tensor(second.mean), torch.tensor(second.std)
        self.register_buffer("scale", (std1 / std2).view(1, 3, 1, 1))
        self.register_buffer("shift", ((mean1 - mean2) / std2).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=[self.size, self.size], mode="bilinear", antialias=True, align_corners=False)
        return self.module(x * self.scale + self.shift)


class FusedClassifier(Classifier):
    """`Classifier` whose features are [the top's | the second opinion's] (what the head reads)."""

    def __init__(self, trunk: nn.Module, top: nn.Module, head: nn.Linear, second: SecondOpinion,
                 dropout: float = 0.2) -> None:
        super().__init__(trunk, top, head, dropout)
        self.second = second

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.top(self.trunk(x)), self.second(x)], 1)


def second_cache(first: Backbone, second: Backbone, cache_dir: Path | None, batch_size: int = 32) -> ActivationCache:
    """The second opinion's features of photos (and their mirrors), cached per photo like the trunk's."""
    opinion = SecondOpinion(second, first.mean, first.std)
    path = None if cache_dir is None else (Path(cache_dir) / f"second_{second.name}_for_{first.name}_crop"
                                           f"{first.input_size}{half_suffix(opinion)}.pt")
    return ActivationCache(Prepare(first, first.input_size, "crop"), opinion, path, batch_size=batch_size)


def load_second(name: str | None) -> tuple[Backbone | None, str]:
    """(the second backbone, "") or (None, why not): a missing weights file means no second opinion."""
    if name is None:
        return None, "off in this profile: TransferConfig.second_backbone is None"
    try:
        return load_backbone(name), ""
    except Exception as err:  # noqa: BLE001 - a missing weights package, a failed download
        return None, f"{type(err).__name__}: {str(err).splitlines()[0]}"


def _mean(acts: Activations) -> torch.Tensor:
    return (acts.plain.float() + acts.mirror.float()) / 2


@dataclass
class Fused:
    """What names the photos: the fine-tuned top (`base`, whose features also score the open set)
    and its linear head, or a soft vote of the knn bank (`export.BankHead`), or, with a second
    opinion, a logistic head on both networks' features; temperature from validation."""
    base: openset.Fitted
    cache: ActivationCache                 # the first backbone's trunk
    second: ActivationCache | None         # the second opinion's features (None: the base alone)
    head: nn.Linear
    temperature: float
    note: dict = field(default_factory=dict)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 photos -> the served features (image + mirror mean), from the caches."""
        own = mirror_mean(self.base.top, self.cache(images, desc="trunk"))
        if self.second is None:
            return own
        return torch.cat([own, _mean(self.second(images, desc="second opinion"))], 1)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        """The calibrated probabilities the file serves for uint8 photos."""
        return torch.softmax(self.head(self.features(images)) / self.temperature, 1).numpy()

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self.probabilities(images).argmax(1) == labels.numpy()).mean())

    @property
    def own_head(self) -> bool:
        """Named by the base's own linear head (the model the open-set protocol measured)."""
        return self.head is self.base.head

    def classifier(self, trunk: nn.Module, dropout: float) -> Classifier:
        """The model to export."""
        if self.second is None:
            return Classifier(trunk, self.base.top, self.head, dropout).eval()
        return FusedClassifier(trunk, self.base.top, self.head, self.second.pair.trunk, dropout).eval()

    def rule(self, rule, valid: torch.Tensor, tpr: float):
        """The open-set `rule` (fitted on the base) for this file: this temperature; knn / mahalanobis
        read the base's features only; msp / energy thresholds refitted on these logits (photos
        and thumbnails of validation, `valid`) to keep `tpr` of them."""
        if self.own_head:
            return rule
        changed = replace(rule, temperature=self.temperature,
                          feature_dims=self.base.head.in_features if self.second is not None else None)
        if rule.method in ("msp", "energy"):
            with torch.no_grad():
                logits = self.head(self.features(valid))
            score = openset.msp if rule.method == "msp" else openset.energy
            changed = replace(changed, threshold=float(np.quantile(score(logits, self.temperature), 1 - tpr)))
        return changed


def both(images: torch.Tensor, labels: torch.Tensor, thumbnail_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The photos and their thumbnails (as the open-set models train), with labels."""
    return torch.cat([images, openset.thumbnails(images, thumbnail_size)]), torch.cat([labels, labels])


def bank_head(base: openset.Fitted, tau: float) -> BankHead:
    """Naming by the base's knn bank (its training photos and thumbnails) at `tau`."""
    if base.knn.labels is None:
        raise ValueError("the knn bank has no labels: build openset.KNN with the training labels")
    return BankHead(base.knn.bank, base.knn.labels, base.head.out_features, tau)


def fit(base: openset.Fitted, cache: ActivationCache, second: ActivationCache | None,
        train: tuple[torch.Tensor, torch.Tensor], valid: tuple[torch.Tensor, torch.Tensor], thumbnail_size: int,
        Cs: tuple[float, ...] = (0.1, 0.3, 1.0), *, bank_tau: float | None = None) -> Fused:
    """What names the photos, temperature fitted on validation's photos and thumbnails:
    - `second`: a logistic head on both networks' features of the training photos and thumbnails
      (C chosen on validation's); with `bank_tau` too, its logits plus the bank vote's (`SumHead`);
    - `bank_tau` alone: the knn bank's vote;
    - neither: the base as it is."""
    if second is None and bank_tau is None:
        return Fused(base, cache, None, base.head, base.temperature, {"second opinion": None})
    (vx, vy) = both(*valid, thumbnail_size)
    named = _named(base, cache, second, both(*train, thumbnail_size), (vx, vy), Cs, bank_tau)
    with torch.no_grad():
        named.temperature = openset.fit_temperature(named.head(named.features(vx)), vy)
    return named


def _named(base: openset.Fitted, cache: ActivationCache, second: ActivationCache | None, train, valid,
           Cs: tuple[float, ...], bank_tau: float | None) -> Fused:
    """`fit`'s heads (temperature 1) on `train` photos and thumbnails, C chosen on `valid`'s."""
    if second is None:
        return Fused(base, cache, None, bank_head(base, bank_tau), 1.0, {"bank tau": bank_tau})
    draft = Fused(base, cache, second, base.head, 1.0)
    (tx, ty), (vx, vy) = train, valid
    train_features = draft.features(tx)
    valid_features = train_features if vx is tx else draft.features(vx)  # the refit passes one set as both
    head = fit_logistic_head(train_features, ty, valid_features, vy, Cs)
    named = Fused(base, cache, second, head.linear, 1.0,
                  {"C": head.C, "validation accuracy by C (photos and thumbnails)": head.searched})
    if bank_tau is not None:
        named.head = SumHead(head.linear, bank_head(base, bank_tau))
        named.note["bank tau"] = bank_tau
    return named


def refit(fused: Fused, base: openset.Fitted, pooled: tuple[torch.Tensor, torch.Tensor], thumbnail_size: int) -> Fused:
    """`fused`'s way of naming run again over `base` refitted on the training and validation photos
    (`openset.refit_model`), on those photos (`pooled`: uint8 images, labels) and their thumbnails:
    the fused head's C as validation chose it, the bank now `base`'s, `fused`'s temperature kept
    (fitted with validation held out)."""
    if fused.own_head:
        return Fused(base, fused.cache, None, base.head, fused.temperature, dict(fused.note))
    photos = both(*pooled, thumbnail_size)
    Cs = (fused.note["C"],) if fused.second is not None else ()
    named = _named(base, fused.cache, fused.second, photos, photos, Cs, fused.note.get("bank tau"))
    named.temperature, named.note = fused.temperature, dict(fused.note)  # what validation chose, kept
    return named


def naming(base: openset.Fitted, cache: ActivationCache, backbone: Backbone, config, train, valid,
           thumbnail_size: int, cache_dir: Path | None) -> tuple[Fused, str]:
    """What names the shipped model's photos, as `config` (a `TransferConfig`) says: a second opinion
    when `second_backbone` loads, the bank's vote when `bank_tau` is set (both: their logits added),
    else the linear head. Returns the fitted `Fused` and its words for the model's label ("" for the
    linear head)."""
    second, why = load_second(config.second_backbone)
    opinion = None if second is None else second_cache(backbone, second, cache_dir)
    fused = fit(base, cache, opinion, train, valid, thumbnail_size, bank_tau=config.bank_tau)
    fused.note["second opinion"] = second.name if second is not None else f"none ({why})"
    words = [f"frozen {second.name} features"] if second is not None else []
    if config.bank_tau is not None:
        words.append(f"the nearest training photos (bank vote, tau {config.bank_tau:g})")
    return fused, (f"; named by {' + '.join(words)}" if words else "")


def report_note(fused: Fused, base_valid: dict, valid_named: dict, record: Path | None = None) -> dict | None:
    """How the shipped file names photos, for the report: its validation accuracy against the linear
    head's and the cross-validation that chose it (None: named by the linear head)."""
    if fused.own_head:
        return None
    ways = ([f"frozen {fused.note['second opinion']} features beside the fine-tuned ones"] if fused.second is not None
            else [])
    if "bank tau" in fused.note:
        ways.append(f"the soft vote of the nearest training photos and thumbnails (tau {fused.note['bank tau']:g})")
    how = ", logits added to ".join(ways)
    return {"named by": how, **{k: v for k, v in fused.note.items() if k not in ("second opinion", "bank tau")},
            "validation accuracy, linear head (photos)": round(base_valid["photos"], 4),
            "validation accuracy, linear head (thumbnails)": round(base_valid["thumbnails"], 4),
            "validation accuracy as named (photos)": round(valid_named["photos"], 4),
            "validation accuracy as named (thumbnails)": round(valid_named["thumbnails"], 4),
            **cross_validation_summary(CV_RECORD if record is None else record, cv_row(fused))}


def cv_row(fused: Fused) -> str:
    """`fused`'s row in the cross-validation record."""
    return {(True, True): "fused + bank", (True, False): "fused", (False, True): "bank"}.get(
        (fused.second is not None, "bank tau" in fused.note), "base")


# ----------------------------------------------------------------------- the choice, by CV

CV_RECORD = Path(__file__).resolve().parents[1] / "models" / "fusion_cv.json"  # written by main(), committed


def cross_validation_summary(path: Path = CV_RECORD, way: str = "fused") -> dict:
    """The recorded cross-validation of one way of naming ("fused", "bank" or "fused + bank") against
    the linear head ("base"), as summary lines."""
    import json

    if not Path(path).is_file():
        return {"chosen by": f"cross-validation not recorded ({path.name} missing: python -m landmark_classifier.src.fusion)"}
    cv = json.loads(Path(path).read_text())
    if way not in cv:
        return {"chosen by": f"{path.name} has no '{way}' row: rerun python -m landmark_classifier.src.fusion"}
    return {"chosen by": f"{cv['folds']}-fold cross-validation on {cv['photos']} training and validation photos "
                         f"({cv['data'].split(':')[0]}; `{cv['command']}`)",
            "CV accuracy, linear head (photos)": cv["base"]["photos"]["accuracy"],
            "CV accuracy as named (photos)": cv[way]["photos"]["accuracy"],
            "CV accuracy, linear head (thumbnails)": cv["base"]["thumbnails"]["accuracy"],
            "CV accuracy as named (thumbnails)": cv[way]["thumbnails"]["accuracy"]}


def cross_validate(base_top: nn.Module, cache: ActivationCache, second: ActivationCache, images: torch.Tensor,
                   labels: torch.Tensor, tune, thumbnail_size: int, *, folds: int = 5, C: float = 0.3,
                   bank_tau: float = 0.02, seed: int = 0, share: float = 1.0,
                   progress: Callable[[str], None] = print) -> dict:
    """Stratified k-fold accuracy, photos and thumbnails, of four ways to name them: the fine-tuned
    base's linear head ("base"), the soft vote of its bank of the fold's training photos and thumbnails
    at `bank_tau` ("bank"), with the second opinion ("fused"), and the last two's logits added
    ("fused + bank", `export.SumHead`). In each fold the base fine-tunes on
    the fold's photos and thumbnails (the shipped recipe, last epoch); a logistic head of strength `C`
    reads both networks' features. `share` < 1 fits each fold on that stratified share of its
    training part only (the same held-out photos): what more photos are worth (the refit's case)."""
    from sklearn.model_selection import train_test_split

    from landmark_classifier.src.transfer import starting_head, stratified_folds

    photos, thumbs = cache(images, desc="photos"), cache(openset.thumbnails(images, thumbnail_size), desc="thumbnails")
    extra = [_mean(second(images, desc="second: photos")),
             _mean(second(openset.thumbnails(images, thumbnail_size), desc="second: thumbnails"))]
    wrong = {name: {"photos": 0, "thumbnails": 0} for name in ("base", "bank", "fused", "fused + bank")}
    per_fold = []
    for number, (fit_idx, held) in enumerate(stratified_folds(labels, folds, seed)):
        if share < 1:
            try:
                fit_idx = torch.as_tensor(train_test_split(fit_idx.numpy(), train_size=share, random_state=seed,
                                                           stratify=labels[fit_idx].numpy())[0])
            except ValueError as err:  # a class with one photo in the fold, or too few left over to stratify
                raise ValueError(f"share {share:g} of fold {number + 1}'s {len(fit_idx)} training photos cannot "
                                 f"keep every landmark's share ({err})") from err
        acts = Activations.join(photos.subset(fit_idx), thumbs.subset(fit_idx))
        y = torch.cat([labels[fit_idx], labels[fit_idx]])
        top, linear, _ = fit_top(base_top, starting_head(base_top, acts, y, C), acts, y, None, None, tune)
        own = mirror_mean(top, acts)
        joined = torch.cat([own, torch.cat([extra[0][fit_idx], extra[1][fit_idx]])], 1)
        head = fit_logistic_head(joined, y, joined, y, Cs=(C,))
        bank = BankHead(F.normalize(own, dim=1), y, int(labels.max()) + 1, bank_tau)
        fold = {}
        for kind, held_acts, held_extra in (("photos", photos.subset(held), extra[0][held]),
                                            ("thumbnails", thumbs.subset(held), extra[1][held])):
            held_own = mirror_mean(top, held_acts)
            joined_held = torch.cat([held_own, held_extra], 1)
            with torch.no_grad():
                named = {"base": linear(held_own), "bank": bank(held_own), "fused": head.linear(joined_held),
                         "fused + bank": SumHead(head.linear, bank)(joined_held)}  # the module that ships
            for name, logits in named.items():
                missed = int((logits.argmax(1) != labels[held]).sum())
                wrong[name][kind] += missed
                fold[f"{name} {kind}"] = round(1 - missed / len(held), 4)
        per_fold.append(fold)
        progress(f"fold {number + 1}/{folds}: {fold}")
    total = len(labels)
    return {"photos": total, "folds": folds, "fitted on (share of each fold's training part)": share,
            "C": C, "bank tau": bank_tau,
            **{name: {kind: {"accuracy": round(1 - n / total, 4), "wrong": n} for kind, n in counts.items()}
               for name, counts in wrong.items()},
            "per fold": per_fold}


def main(argv: list[str] | None = None) -> int:
    """python -m landmark_classifier.src.fusion: the ways of naming photos, by k-fold CV."""
    import argparse
    import json
    from dataclasses import replace as with_

    from common import paths
    from landmark_classifier.src import data as landmark_data
    from landmark_classifier.src.config import CACHE_DIR, config_for
    from landmark_classifier.src.transfer import prepare

    parser = argparse.ArgumentParser(prog="python -m landmark_classifier.src.fusion", description=(
        "Cross-validate four ways of naming photos: the fine-tuned backbone's linear head, the soft vote of "
        "its nearest training photos (the bank), a head on its features and a frozen second backbone's, and "
        "the last two's logits added; on the training and validation photos pooled (the test photos are not "
        "read), with the full profile's backbone and recipe."))
    parser.add_argument("--data-dir", default=None, help="default: $DATA_DIR, else <repo>/data")
    parser.add_argument("--dataset", default="landmark_gldv2", help="a folder under DATA_DIR (Udacity layout)")
    parser.add_argument("--backbone", default="efficientnet_lite2")
    parser.add_argument("--second", default="mobilenet_v2", help="the frozen second backbone (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--bank-tau", type=float, default=config_for("full").real.transfer.bank_tau or 0.02,
                        help="tau of the bank's soft nearest-neighbour vote (default: the full profile's, %(default)s)")
    parser.add_argument("--share", type=float, default=1.0,
                        help="fit each fold on this stratified share of its training part (the same held-out photos): "
                             "what more photos are worth, e.g. 0.8 (default: %(default)s, all of it)")
    parser.add_argument("--json", type=Path, default=None,
                        help=f"also write the result here (default: {CV_RECORD}, the record the notebook reports; "
                             "with --share below 1, fusion_cv_share<percent>.json beside it)")
    args = parser.parse_args(argv)
    if not 0 < args.share <= 1:
        parser.error(f"--share must be in (0, 1], got {args.share}")
    if args.json is None:
        percent = args.share * 100
        if abs(percent - round(percent)) > 1e-9:
            parser.error(f"--share {args.share:g} is not a whole percent: name the record with --json")
        args.json = CV_RECORD if args.share == 1 else CV_RECORD.with_name(f"fusion_cv_share{round(percent)}.json")
    landmarks = landmark_data.locate(paths.data_dir(args.data_dir), dataset=args.dataset)
    budget = config_for("full").budget(landmarks.stand_in)
    config, open_config = budget.transfer, budget.open_set
    first = load_backbone(args.backbone)
    second, why = load_second(args.second)
    if second is None:
        parser.error(f"no second backbone: {why}")
    splits = landmark_data.load_splits(landmarks, first.resize_size, CACHE_DIR)
    prepared = prepare(first, splits.train, splits.valid, config, CACHE_DIR)
    images, labels = torch.cat([splits.train[0], splits.valid[0]]), torch.cat([splits.train[1], splits.valid[1]])
    tune = with_(config.finetune, label_smoothing=open_config.label_smoothing)
    result = cross_validate(prepared.top, prepared.cache, second_cache(first, second, CACHE_DIR), images, labels,
                            tune, open_config.thumbnail_size, folds=args.folds, bank_tau=args.bank_tau,
                            share=args.share)
    result = {"data": landmarks.source, "backbone": first.name, "second": second.name,
              "recipe": f"fine-tuned last {config.top_blocks} blocks, {tune.epochs} epochs, photos and thumbnails",
              "command": "python -m landmark_classifier.src.fusion" + (f" --share {args.share:g}" if args.share < 1 else ""),
              **result}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
