"""Retraining from data capture: pseudo-labels, a labelling queue, and a promotion gate.

    python -m scones_workflow retrain --captures LOCATION [--queue labelling_queue.csv]

1. Read every capture record under LOCATION (a folder or an s3:// prefix, as the endpoint writes them).
2. Confident inferences (highest probability >= the threshold) become training images labelled with the
   model's own prediction (pseudo-labels).
3. Low-confidence inferences go to a labelling queue: a CSV with one row per image (its PNG is saved next
   to it) and an empty `label` column that a person fills in with `bicycle` or `motorcycle`. Rows already
   in the queue keep their labels; a labelled row overrides the pseudo-label of the same image.
4. The model is retrained on the training set plus those images (captured images that are held-out test
   images are dropped first, so the gate below stays honest), evaluated on the held-out test set, and
   promoted (copied over the production model file) only if it is at least as accurate as that model.
"""
from __future__ import annotations

import base64
import io
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from common import paths, s3io
from common.images import ImageError, load_image

from ..monitoring import monitor
from ..data import CLASSES

log = logging.getLogger(__name__)

QUEUE_COLUMNS = ["event_id", "inference_id", "inference_time", "variant", "predicted_label", "confidence", "image",
                 "label"]
TRAIN_SIZE = (32, 32)  # the training images' size: captured images are resized to it


@dataclass
class CapturedImages:
    """Decoded captured images (resized to the training size) with their capture rows."""
    rows: pd.DataFrame
    images: np.ndarray
    undecodable: int = 0
    duplicates: int = 0


def decode_captures(captures: pd.DataFrame, size: tuple[int, int] = TRAIN_SIZE) -> CapturedImages:
    """The captured input images (BASE64 in the records), one per distinct image, at `size`."""
    from .model import image_key

    rows, images, seen, bad, dup = [], [], set(), 0, 0
    for _, row in captures.dropna(subset=["input_data"]).iterrows():
        try:
            image = load_image(base64.b64decode(row["input_data"]), name=f"captured event {row['event_id']}")
        except (ImageError, ValueError):
            bad += 1
            continue
        array = np.asarray(image.resize(size, Image.Resampling.BICUBIC) if image.size != size else image,
                           dtype=np.uint8)
        key = image_key(array)
        if key in seen:
            dup += 1
            continue
        seen.add(key)
        rows.append(row)
        images.append(array)
    frame = pd.DataFrame(rows).reset_index(drop=True) if rows else captures.iloc[:0].copy()
    stacked = np.stack(images) if images else np.zeros((0, *size, 3), dtype=np.uint8)
    return CapturedImages(frame, stacked, bad, dup)


def drop_images(captured: CapturedImages, held_out: np.ndarray) -> tuple[CapturedImages, int]:
    """`captured` without the images that are also in `held_out` (the test set); returns how many went."""
    from .model import image_key

    held = {image_key(image) for image in held_out}
    keep = np.array([image_key(image) not in held for image in captured.images], dtype=bool)
    if keep.all():
        return captured, 0
    return CapturedImages(captured.rows[keep].reset_index(drop=True), captured.images[keep],
                          captured.undecodable, captured.duplicates), int((~keep).sum())


# ----------------------------------------------------------------------------- labelling queue

def read_queue(path: str | Path) -> pd.DataFrame:
    """The labelling queue; a `label` that is neither empty nor a class name is an error naming the row."""
    path = str(path)
    if not s3io.exists(path):
        return pd.DataFrame(columns=QUEUE_COLUMNS)
    frame = pd.read_csv(io.StringIO(s3io.read_text(path)), dtype=str, keep_default_na=False)
    missing = [c for c in ("event_id", "label") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: the labelling queue has no column(s) {', '.join(missing)}")
    frame["label"] = frame["label"].str.strip().str.lower()
    bad = frame[(frame["label"] != "") & ~frame["label"].isin(CLASSES)]
    if not bad.empty:
        first = bad.index[0]
        raise ValueError(f"{path}, row {first + 2} (event {bad.loc[first, 'event_id']}): label "
                         f"{bad.loc[first, 'label']!r} is not one of {', '.join(CLASSES)} (or empty)")
    return frame


def update_queue(path: str | Path, low: CapturedImages) -> pd.DataFrame:
    """Add the low-confidence images not yet queued (their PNGs next to the CSV); keeps existing labels."""
    path = Path(path)
    queue = read_queue(path)
    known = set(queue["event_id"])
    image_dir = path.parent / f"{path.stem}_images"
    new = []
    for row, image in zip(low.rows.to_dict("records"), low.images):
        if row["event_id"] in known:
            continue
        image_dir.mkdir(parents=True, exist_ok=True)
        image_path = image_dir / f"{row['event_id']}.png"
        Image.fromarray(image).save(image_path)
        new.append({"event_id": row["event_id"], "inference_id": row.get("inference_id") or "",
                    "inference_time": str(row["inference_time"]), "variant": row.get("variant") or "",
                    "predicted_label": row["predicted_label"], "confidence": round(float(row["confidence"]), 4),
                    "image": image_path.relative_to(path.parent).as_posix(), "label": ""})
    if new:
        queue = pd.DataFrame(new) if queue.empty else pd.concat([queue, pd.DataFrame(new)], ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    queue.reindex(columns=QUEUE_COLUMNS).to_csv(path, index=False)
    return queue


def queue_low_confidence(captures_location: str | Path, queue_path: Path, *, threshold: float,
                         held_out: np.ndarray | None = None, endpoint_url: str | None = None) -> pd.DataFrame:
    """Only step 3: add the low-confidence captured images to the labelling queue (no training)."""
    decoded = decode_captures(monitor.read_captures(captures_location, endpoint_url=endpoint_url))
    if held_out is not None:
        decoded, _ = drop_images(decoded, held_out)
    low = decoded.rows["confidence"].to_numpy() < threshold if len(decoded.rows) else np.zeros(0, bool)
    return update_queue(queue_path, CapturedImages(decoded.rows[low].reset_index(drop=True), decoded.images[low]))


# ----------------------------------------------------------------------------- the round

@dataclass(frozen=True)
class LabelledImages:
    """The labelled images of a round: the training set (training keeps its own validation split) and the
    held-out test set, which no captured image may join and which gates the promotion."""
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


@dataclass(frozen=True)
class RoundFiles:
    """Where a round reads and writes: the production model to beat (replaced when promoted), the labelling
    queue CSV, the folder for the candidate model, and the trunk-activation cache (None: no cache)."""
    production_model: Path
    queue_path: Path
    out_dir: Path
    cache_dir: Path | None = None


@dataclass
class RetrainResult:
    captures: int
    distinct_images: int
    excluded_test_images: int
    pseudo_labelled: int
    queued: int
    human_labelled: int
    current_accuracy: float
    candidate_accuracy: float
    promoted: bool
    candidate_path: str
    production_path: str
    queue_path: str
    val_accuracy: float = 0.0
    train_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        verdict = ("PROMOTED: the candidate replaced the production model" if self.promoted else
                   "NOT promoted: the candidate is less accurate than the production model")
        return (f"{self.captures} captures, {self.distinct_images} distinct images ({self.excluded_test_images} "
                f"test images dropped); {self.pseudo_labelled} pseudo-labelled, {self.human_labelled} labelled by a "
                f"person, {self.queued} in the queue; test accuracy candidate {self.candidate_accuracy:.4f} vs "
                f"production {self.current_accuracy:.4f}: {verdict}")


def retrain(captures_location: str | Path, images: LabelledImages, files: RoundFiles, config, *, threshold: float,
            training_run: dict | None = None, endpoint_url: str | None = None,
            init_state: dict | None = None) -> RetrainResult:
    """One retraining round (see the module's docstring) on the captures under `captures_location`, training
    with `config` (the model's TrainConfig); returns what it did and measured. Captures at or above
    `threshold` become pseudo-labels. `init_state` (the production model's torch state_dict, when at hand)
    warm-starts the candidate: fine-tuning the production model on the new images for `config.epochs`
    instead of training from ImageNet weights."""
    import time

    from . import model
    from ..serving.predictor import Predictor

    train_images, train_labels = images.train_images, images.train_labels
    test_images, test_labels = images.test_images, images.test_labels
    production_model, queue_path, out_dir = files.production_model, files.queue_path, files.out_dir

    captures = monitor.read_captures(captures_location, endpoint_url=endpoint_url)
    decoded = decode_captures(captures)
    decoded, excluded = drop_images(decoded, test_images)
    confident = decoded.rows["confidence"].to_numpy() >= threshold if len(decoded.rows) else np.zeros(0, bool)
    low = CapturedImages(decoded.rows[~confident].reset_index(drop=True), decoded.images[~confident])
    queue = update_queue(queue_path, low)
    labelled = queue[queue["label"] != ""].set_index("event_id")["label"]

    labels = np.array([CLASSES.index(p) for p in decoded.rows["predicted_label"]], dtype=int) \
        if len(decoded.rows) else np.zeros(0, int)
    human = decoded.rows["event_id"].isin(labelled.index).to_numpy() if len(decoded.rows) else np.zeros(0, bool)
    for i in np.flatnonzero(human):
        labels[i] = CLASSES.index(labelled[decoded.rows["event_id"].iloc[i]])
    use = confident | human
    log.info("retraining on the %d training images (validation split kept) + %d captured images (%d pseudo-labelled, "
             "%d labelled by a person)", len(train_images), int(use.sum()), int((confident & ~human).sum()), int(human.sum()))

    started = time.perf_counter()
    result = model.train(train_images, train_labels, config, cache_dir=files.cache_dir,
                         extra_images=decoded.images[use], extra_labels=labels[use], init_state=init_state)
    seconds = time.perf_counter() - started
    out_dir = Path(out_dir)
    candidate_path = model.export(result.model, out_dir / "candidate.onnx", config, {
        **(training_run or {}), "retrained_from": paths.display(captures_location),
        "captured_images": int(use.sum()), "val_accuracy": round(result.val_accuracy, 4)})
    candidate_acc = _accuracy(Predictor(candidate_path), test_images, test_labels)
    current_acc = _accuracy(Predictor(production_model), test_images, test_labels)
    promoted = candidate_acc >= current_acc
    if promoted:
        tmp = Path(production_model).with_suffix(".promoting")
        shutil.copyfile(candidate_path, tmp)
        tmp.replace(production_model)
    return RetrainResult(len(captures), len(decoded.rows) + excluded, excluded, int((confident & ~human).sum()),
                         int((queue["label"] == "").sum()), int(human.sum()), current_acc, candidate_acc, promoted,
                         str(candidate_path), str(production_model), str(queue_path),
                         val_accuracy=result.val_accuracy, train_seconds=round(seconds, 1))


def _accuracy(predictor, images: np.ndarray, labels: np.ndarray) -> float:
    return float((predictor.predict_arrays(images).argmax(1) == labels).mean())


def simulate_uploads(images: np.ndarray, seed: int = 0, size: int = 96) -> list[bytes]:
    """Phone-style uploads of `images` for the notebook's production traffic: upscaled to `size` px,
    brightness and contrast jittered, JPEG-compressed."""
    rng = np.random.default_rng(seed)
    uploads = []
    for image in images:
        picture = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
        pixels = np.asarray(picture, dtype=np.float32)
        pixels = (pixels - pixels.mean()) * rng.uniform(0.8, 1.2) + pixels.mean() + rng.uniform(-20, 20)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG",
                                                                        quality=int(rng.integers(60, 90)))
        uploads.append(buffer.getvalue())
    return uploads
