"""The deployable predictor, served with ONNX Runtime (no torch import on this path).

The committed file `landmark_classifier/models/landmark_predictor.onnx` (written by
transfer_learning.ipynb's run of record, see `export.py`) is the whole model: it takes a uint8
N x 3 x H x W RGB batch of any size, resizes, crops and normalises inside the graph, and returns
calibrated class probabilities and a known score; its metadata names the classes, the input
contract, the normalisation, the open-set rule (below its threshold a photo shows "no known
landmark"), which way up the photo is (a photo stored sideways is also named turned back, see
`orientation.py` and `run`), the model and the run that trained it. Decoding stays here (`common.images.load_image`: EXIF
rotation, transparency, 16-bit, CMYK, ... and a clear error naming any file that is not an image).

CLI: `python -m landmark_classifier.src.predictor IMAGE ... [--model FILE.onnx] [-k 5] [--json]`
prints each image's landmark, or "no known landmark", with the top-k guesses; `--json` prints one
JSON object per line (`{"file", "landmark", "confidence", "top"}`; `{"file", "error"}` for an
unreadable image). An unreadable image exits with code 1, a missing or broken model file with 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.images import ImageError, load_image
from common.serving import ModelFileError, OnnxModel, load_onnx

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
DEFAULT_MODEL = MODELS_DIR / "landmark_predictor.onnx"
REQUIRED_METADATA = ("class_names", "input", "model_name")


def default_model_path() -> Path:
    """The committed predictor of the run of record (the CLI's and the app's default)."""
    return DEFAULT_MODEL


def load(path: str | Path = DEFAULT_MODEL, *, threads: int = 1) -> OnnxModel:
    """The exported predictor as an ONNX Runtime session; ModelFileError (a ValueError) names the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no exported predictor here; run transfer_learning.ipynb "
                             f"(or use the committed {DEFAULT_MODEL.name})")
    model = load_onnx(path, threads=threads)
    missing = [key for key in REQUIRED_METADATA if key not in model.metadata]
    if missing:
        raise ModelFileError(f"{path}: not a landmark predictor (its metadata lacks {', '.join(missing)})")
    if model.input_type != "tensor(uint8)":
        raise ModelFileError(f"{path}: expects {model.input_type}, not the uint8 images a landmark predictor takes")
    return model


def display_names(model: OnnxModel) -> list[str]:
    """Readable class names ("Niagara Falls"), from the metadata; else the folder names as they are."""
    return list(model.metadata.get("display_names") or model.class_names)


def to_array(image: Any, name: str | None = None) -> np.ndarray:
    """Any image `common.images.load_image` accepts, as a 3 x H x W uint8 array (raises ImageError)."""
    try:
        pixels = np.asarray(load_image(image, name=name), dtype=np.uint8)
    except OSError as err:  # PIL's "Truncated File Read" in a JPEG header escapes load_image
        label = name or (str(image) if isinstance(image, (str, Path)) else f"<{type(image).__name__}>")
        raise ImageError(f"{label}: cannot decode the image ({err})") from None
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def two_way(turns: np.ndarray) -> np.ndarray:
    """N x 4 turn probabilities -> the weights the answers are mixed with: upright and the most
    likely other turn, renormalised (two nonzero per row; `orientation.py` chose the rule)."""
    rows = np.arange(len(turns))
    likely = 1 + turns[:, 1:].argmax(1)
    weights = np.zeros_like(turns)
    weights[:, 0], weights[rows, likely] = turns[:, 0], turns[rows, likely]
    return weights / weights.sum(1, keepdims=True)


def run(model: OnnxModel, batch: np.ndarray) -> dict[str, np.ndarray]:
    """The file's outputs for a uint8 N x 3 x H x W batch, by output name (the probabilities first).

    A file that also says which way up each photo is (an `orientation` output and rule, see
    `orientation.py`) names a photo whose upright probability is below the rule's `rerun_below`
    also turned back by its most likely turn q, and mixes the two answers by p(upright) and p(q);
    `turned_back` (N) then says by how many quarter turns (0: named as stored only)."""
    outputs = model.run_all(batch)
    rule = model.metadata.get("orientation")
    if rule is None or "orientation" not in outputs:
        return outputs
    turns = outputs.pop("orientation")
    mixed = {name: np.array(values, copy=True) for name, values in outputs.items()}
    turned_back = np.zeros(len(batch), dtype=np.int64)
    rerun = np.flatnonzero(turns[:, 0] < float(rule["rerun_below"]))
    for row, weight in zip(rerun, two_way(turns[rerun])):
        turned_back[row] = quarters = int(weight[1:].argmax()) + 1
        back = model.run_all(np.ascontiguousarray(np.rot90(batch[row], -quarters, axes=(1, 2)))[None])
        for name in mixed:
            mixed[name][row] = weight[0] * outputs[name][row] + weight[quarters] * back[name][0]
    return {**mixed, "turned_back": turned_back}


def probabilities(model: OnnxModel, image: Any, name: str | None = None) -> np.ndarray:
    """The class probabilities of one image (columns in `model.class_names` order)."""
    return next(iter(run(model, to_array(image, name)[None]).values()))[0]


def top_k(model: OnnxModel, image: Any, k: int = 5, name: str | None = None) -> list[tuple[str, float]]:
    """The k most likely classes as (class folder name, probability), most likely first (closed set:
    `predict` also says whether the photo shows a known landmark at all)."""
    return predict(model, image, k, name).top


NO_LANDMARK = "no known landmark"


@dataclass
class Prediction:
    """One photo's answer: a known landmark (its class name), or None for "no known landmark".

    `confidence` is the calibrated probability of the best guess among the known landmarks;
    `known_score` is the open-set score the file's threshold was applied to; `turned_back`: the
    quarter turns the photo was also named turned back by (0: named as stored only; see `run`)."""
    landmark: str | None
    confidence: float
    top: list[tuple[str, float]]  # (class name, probability), most likely first
    known_score: float
    threshold: float
    turned_back: int = 0

    def as_json(self, file: str, shown: dict[str, str]) -> dict[str, Any]:
        """The CLI's --json line; `shown` maps class names to the names people read."""
        return {"file": file, "landmark": None if self.landmark is None else shown[self.landmark],
                "confidence": round(self.confidence, 4), "top": [[shown[c], round(p, 4)] for c, p in self.top]}


def open_set_rule(model: OnnxModel) -> dict[str, Any]:
    """The file's open-set rule; a file without one (an older, closed-set export) accepts every photo."""
    return model.metadata.get("open_set") or {"method": "msp", "temperature": 1.0, "threshold": 0.0}


def predict(model: OnnxModel, image: Any, k: int = 5, name: str | None = None) -> Prediction:
    """The landmark in one image, or "no known landmark" (None) when its known score is below the
    file's threshold, with the k best guesses either way."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return predictions(model, run(model, to_array(image, name)[None]), k)[0]


def predictions(model: OnnxModel, outputs: dict[str, np.ndarray], k: int = 5) -> list[Prediction]:
    """One Prediction per row of the file's outputs for a batch (`run`): the file's
    rule applied to its known score (an older file without one: the top probability, accepted)."""
    scores = next(iter(outputs.values()))  # the first output: the probabilities
    known = outputs.get("known_score", scores.max(axis=1))
    turned_back = outputs.get("turned_back", np.zeros(len(scores), dtype=np.int64))
    threshold = float(open_set_rule(model)["threshold"])
    answers = []
    for row, known_score, quarters in zip(scores, known, turned_back):
        order = np.argsort(-row, kind="stable")[:k]
        top = [(model.class_names[i], float(row[i])) for i in order]
        landmark = top[0][0] if float(known_score) >= threshold else None
        answers.append(Prediction(landmark, top[0][1], top, float(known_score), threshold, int(quarters)))
    return answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m landmark_classifier.src.predictor",
        description="The landmark in each image, or 'no known landmark' when it shows none of the landmarks the "
                    "model knows, with its top-k guesses and calibrated probabilities, from the exported ONNX "
                    "predictor (ONNX Runtime, CPU).")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ... any size)")
    parser.add_argument("--model", default=str(DEFAULT_MODEL),
                        help="exported predictor, an .onnx file (default: the committed %(default)s)")
    parser.add_argument("-k", type=int, default=5, help="how many landmarks to list (default: 5)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default: 1)")
    parser.add_argument("--json", action="store_true",
                        help='one JSON object per line: {"file", "landmark" (null: no known landmark), "confidence", '
                             '"top": [[name, probability], ...]}; {"file", "error"} for an unreadable image')
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error(f"-k must be at least 1, got {args.k}")
    try:
        model = load(args.model, threads=args.threads)
    except ModelFileError as err:
        print(f"error: cannot load the predictor: {err}", file=sys.stderr)
        return 2
    shown = dict(zip(model.class_names, display_names(model)))
    failed = 0
    for image in args.images:
        try:
            answer = predict(model, image, args.k, name=image)
        except ImageError as err:
            failed += 1
            if args.json:
                print(json.dumps({"file": image, "error": str(err)}), flush=True)
            else:
                print(f"error: {err}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps(answer.as_json(image, shown)), flush=True)
            continue
        print(f"{image}: " + (f"{shown[answer.landmark]} ({answer.confidence:.1%})" if answer.landmark else
                              f"{NO_LANDMARK}; best guesses:"))
        for rank, (label, probability) in enumerate(answer.top, 1):
            print(f"  {rank}. {shown[label]:<40s} {probability:6.1%}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
