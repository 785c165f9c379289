"""Tag a whole photo library: every photo under files, folders or s3:// prefixes gets one JSON line.

`python -m landmark_classifier.src.tag SOURCE... --out tags.jsonl` streams the sources (folders are
walked one directory at a time, S3 prefixes listed one page at a time: millions of photos are never
listed into memory), decodes and predicts photos on a thread pool (PIL and ONNX Runtime release the
GIL; large JPEGs are decoded at 1/2-1/8 scale with libjpeg's draft mode, never below twice the model's
resize size), and appends one line per photo to --out, a batch of --batch lines at a time:

    {"file", "landmark" (null: no known landmark), "confidence", "top": [[name, p], ...],   <- predictor --json
     "gps": {"latitude", "longitude"} or null, "source": "metadata" | "model", "version"}
    {"file", "error", "kind", "version"}                                                    <- an unreadable file

`source` says where the photo's location comes from: its EXIF GPS ("metadata") or, without one, the
landmark the model sees ("model"). `version` is the file's size and mtime (local) or its ETag (S3):
a rerun skips every (file, version) already in --out, so a changed file is tagged again.

Safe to kill: lines are appended a batch at a time with flush + fsync, so a kill -9 loses at most the
batch in flight; a half-written last line is dropped when the next run starts; an exclusive lock
(fcntl.flock on OUT.lock) stops a second run on the same --out.

ONNX batches: the predictor takes N x 3 x H x W of one size and resizes inside its graph. By default
(--onnx-batch 1) each thread runs its own photo at its own size, one ONNX Runtime thread each, as the
one-file CLI does. With --onnx-batch N > 1 each thread instead resizes its photo to the graph's resize
size (the same antialiased bilinear resize) and keeps the square window that holds the graph's centre
crop, so all photos share one size and the main thread runs them N at a time. Measured on 2 cores
(tag_benchmark.py), one photo per run was faster: batches cost more per photo on the CPU.
"""
from __future__ import annotations

import argparse
import collections
import fcntl
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image

from common import s3io
from common.images import ImageError, load_image
from common.serving import ModelFileError, OnnxModel
from landmark_classifier.src import predictor
from landmark_classifier.src.resize import resized_size

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
GPS_IFD = ExifTags.IFD.GPSInfo  # 0x8825


@dataclass(frozen=True)
class TagConfig:
    """One run of the tagger (the CLI's options)."""
    out: Path
    model: Path = predictor.DEFAULT_MODEL
    k: int = 5
    batch: int = 32  # lines per write + fsync (a kill loses at most these)
    onnx_batch: int = 1  # photos per ONNX run (1: each photo at its own size, predicted in its thread)
    workers: int = max(2, os.cpu_count() or 2)  # decoding threads
    threads: int = 1  # ONNX Runtime intra-op threads
    endpoint_url: str | None = None  # S3 endpoint (MinIO, moto server); default: boto3's resolution
    progress: bool = True


@dataclass(frozen=True)
class Photo:
    """One photo to tag: where it is and which version of it (size:mtime_ns locally, the ETag on S3)."""
    file: str
    version: str
    s3: Any = None  # the boto3 client of an S3 photo


# ------------------------------------------------------------------------------------- sources

def _walk(folder: Path) -> Iterator[Path]:
    """Image files under `folder`, depth first, one directory listing in memory at a time (hidden
    entries skipped; symlinked files followed, symlinked folders not: no loops)."""
    with os.scandir(folder) as entries:
        listed = sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)
    for entry in listed:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))
        elif entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES):
            yield Path(entry.path)


def _local(path: Path) -> Photo:
    try:
        stat = path.stat()
        return Photo(str(path), f"{stat.st_size}:{stat.st_mtime_ns}")
    except OSError:
        return Photo(str(path), "missing")  # decoding names the problem in an error line


def iter_photos(sources: Iterable[str], endpoint_url: str | None = None) -> Iterator[Photo]:
    """Every photo of the sources, lazily: a file as given, a folder's image files, an S3 prefix's."""
    for source in sources:
        if source.startswith("s3://"):
            client = s3io.to_path(source, endpoint_url=endpoint_url).client.client
            for entry in s3io.iter_objects(source, client=client):
                if entry["uri"].lower().endswith(IMAGE_SUFFIXES):
                    yield Photo(entry["uri"], entry["etag"], client)
        elif Path(source).is_dir():
            yield from map(_local, _walk(Path(source)))
        else:
            yield _local(Path(source))


# ------------------------------------------------------------------------------------ decoding

def _rational(value: Any) -> float:
    return float(value[0]) / float(value[1]) if isinstance(value, tuple) else float(value)


def _degrees(dms: Any, ref: Any, negative: str) -> float:
    degrees, minutes, seconds = (_rational(v) for v in dms)
    value = degrees + minutes / 60 + seconds / 3600
    ref = ref.decode() if isinstance(ref, bytes) else str(ref or "")
    return -value if ref.strip().upper() == negative else value


def read_gps(image: Image.Image) -> dict[str, float] | None:
    """The EXIF GPS position of an opened image in decimal degrees (S and W negative), or None when it
    has none or an impossible one (a camera without a fix writes zeros with no refs, or junk)."""
    try:
        gps = image.getexif().get_ifd(GPS_IFD)
        latitude = _degrees(gps[2], gps.get(1), "S")
        longitude = _degrees(gps[4], gps.get(3), "W")
    except (KeyError, TypeError, ValueError, ZeroDivisionError, AttributeError, OSError, SyntaxError):
        return None
    if not (abs(latitude) <= 90 and abs(longitude) <= 180) or np.isnan(latitude + longitude):
        return None
    return {"latitude": round(latitude, 6), "longitude": round(longitude, 6)}


def _open(photo: Photo) -> Image.Image | Any:
    """The photo opened by PIL (no pixels decoded yet), or its source when PIL cannot open it."""
    if photo.s3 is not None:
        bucket, key = photo.file[len("s3://"):].split("/", 1)
        data = photo.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        if not data:  # the kind a 0-byte local file gets ("empty"), not PIL's "not an image"
            raise ImageError(f"{photo.file}: the file is empty (0 bytes)")
        return open_image(io.BytesIO(data))
    return open_image(photo.file)


def open_image(source: Any) -> Image.Image | Any:
    """`source` (a path or a file object) opened by PIL, or `source` itself when PIL cannot open it
    (load_image then raises the ImageError that says why)."""
    try:
        return Image.open(source)
    except Exception:  # noqa: BLE001 - load_image below gives the error that names the file
        return source


def square_window(image: Image.Image, resize: int, crop: int) -> Image.Image:
    """The graph's resize (short side to `resize`, antialiased bilinear) done here, keeping the
    `resize` x `resize` square whose centre crop is the graph's centre crop of the whole photo."""
    width, height = image.size
    new_height, new_width = resized_size(height, width, resize)
    image = image.resize((new_width, new_height), Image.Resampling.BILINEAR)
    inner = (resize - crop) // 2
    left, top = (new_width - crop) // 2 - inner, (new_height - crop) // 2 - inner
    return image.crop((left, top, left + resize, top + resize))


@dataclass(frozen=True)
class Decoder:
    """Decode one photo into what the predictor takes (3 x H x W uint8) plus its EXIF GPS."""
    resize: int
    crop: int
    square: bool  # resize in the thread to the graph's square window (batches of one size)
    labeller: Labeller | None = None  # given: predict in the thread too (one photo per ONNX run)

    def __call__(self, photo: Photo) -> tuple[np.ndarray | predictor.Prediction, dict | None]:
        array, gps = self.decode(photo)
        return (self.labeller.predictions([array])[0] if self.labeller else array), gps

    @classmethod
    def for_model(cls, model: OnnxModel, square: bool = False, labeller: Labeller | None = None) -> Decoder:
        """The decoder for the file's input contract (its resize and crop sizes)."""
        return cls(int(model.metadata.get("resize_size", 256)), int(model.metadata.get("crop_size", 224)),
                   square=square and "resize_size" in model.metadata, labeller=labeller)

    def decode(self, photo: Photo) -> tuple[np.ndarray, dict | None]:
        return self.decode_image(_open(photo), photo.file)

    def decode_image(self, opened: Image.Image | Any, name: str) -> tuple[np.ndarray, dict | None]:
        """An opened photo (`open_image`) as 3 x H x W uint8 plus its EXIF GPS; ImageError names `name`."""
        gps = None
        if isinstance(opened, Image.Image):
            gps = read_gps(opened)
            if opened.format == "JPEG":  # libjpeg decodes at 1/2..1/8 scale, never below 2x the resize
                opened.draft("RGB", (2 * self.resize, 2 * self.resize))
        try:
            image = load_image(opened, name=name)
            if self.square:
                image = square_window(image, self.resize, self.crop)
            pixels = np.asarray(image, dtype=np.uint8)
        except OSError as err:  # PIL's "Truncated File Read" escapes load_image
            raise ImageError(f"{name}: cannot decode the image ({err})") from None
        return np.ascontiguousarray(pixels.transpose(2, 0, 1)), gps


def error_kind(err: Exception) -> str:
    """A short name for why a photo could not be tagged (the summary counts them)."""
    text = str(err)
    for kind, marker in (("missing", "no such file"), ("empty", "empty"), ("not an image", "not an image"),
                         ("too large", "too large"), ("truncated or corrupt", "cannot decode")):
        if marker in text:
            return kind
    return "unreadable" if isinstance(err, OSError) else type(err).__name__


# ----------------------------------------------------------------------------------- inference

@dataclass
class Labeller:
    """The predictor with what turns its outputs into --json lines."""
    model: OnnxModel
    k: int
    shown: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.shown = dict(zip(self.model.class_names, predictor.display_names(self.model)))

    def predictions(self, arrays: list[np.ndarray]) -> list[predictor.Prediction]:
        """One Prediction per array: one ONNX run when they share a size, else one run each."""
        if len({a.shape for a in arrays}) > 1:
            return [p for a in arrays for p in self.predictions([a])]
        return predictor.predictions(self.model, predictor.run(self.model, np.stack(arrays)), self.k)

    def tags(self, prediction: predictor.Prediction, gps: dict | None) -> dict[str, Any]:
        """What is known about one photo (TAG_KEYS): the predictor's --json answer, its GPS and the source
        of its location. The served container answers these; a line adds the photo's file and version."""
        answer = prediction.as_json("", self.shown)
        del answer["file"]
        return {**answer, "gps": gps, "source": "metadata" if gps else "model"}

    def line(self, photo: Photo, prediction: predictor.Prediction, gps: dict | None) -> dict[str, Any]:
        return {"file": photo.file, **self.tags(prediction, gps), "version": photo.version}


TAG_KEYS = ("landmark", "confidence", "top", "gps", "source")  # a line's keys between "file" and "version"


def error_record(err: Exception) -> dict[str, Any]:
    """Why a photo could not be tagged: an error line without its file and version (what the served
    container answers for a bad photo under Batch Transform)."""
    return {"error": str(err), "kind": error_kind(err)}


def error_line(photo: Photo, err: Exception) -> dict[str, Any]:
    return {"file": photo.file, **error_record(err), "version": photo.version}


# ------------------------------------------------------------------------ the output: resume, lock

def photo_key(file: str, version: str) -> bytes:
    """12 bytes per tagged photo in the resume set (a million photos: ~70 MB), not the whole path."""
    return hashlib.blake2b(f"{file}\0{version}".encode(), digest_size=12).digest()


class OutputLocked(RuntimeError):
    """Another run holds the output's lock."""


def lock(out: Path):
    """An exclusive, non-blocking flock on OUT.lock, held while the returned file stays open (the
    kernel releases it when the process dies, even by kill -9)."""
    handle = open(out.with_name(out.name + ".lock"), "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OutputLocked(f"{out}: another tagging run is writing it (lock {handle.name})") from None
    return handle


def drop_partial_line(out: Path) -> int:
    """Cut a half-written last line (a run killed mid-write); returns the bytes dropped."""
    if not out.exists():
        return 0
    with open(out, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        chunk = 1 << 16
        end = size
        while end > 0:
            start = max(0, end - chunk)
            f.seek(start)
            data = f.read(end - start)
            if end == size and data.endswith(b"\n"):
                return 0
            cut = data.rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return size - (start + cut + 1)
            end = start
        f.truncate(0)
        return size


def read_done(out: Path, summary: Summary) -> set[bytes]:
    """Keys of the photos already in `out`, counting them into `summary`."""
    done: set[bytes] = set()
    if not out.exists():
        return done
    with open(out, encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
                key = photo_key(record["file"], record["version"])
                if key not in done:
                    summary.add(record, earlier=True)
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{out}, line {number}: not a tagger line ({text[:80]!r}); "
                                 f"use another --out") from None
            done.add(key)
    return done


def append(handle, records: list[dict]) -> None:
    """One write per batch, then flush + fsync: after a crash the file holds whole batches (and at
    most one half line, which the next start drops)."""
    handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    handle.flush()
    os.fsync(handle.fileno())


# --------------------------------------------------------------------------------- the summary

@dataclass
class Summary:
    landmarks: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)
    photos: int = 0  # tagged photos in the file (this run's and earlier runs')
    unknown: int = 0
    located: int = 0
    new: int = 0  # lines this run wrote
    skipped: int = 0  # photos of the sources already in the file
    seconds: float = 0.0

    def add(self, record: dict, earlier: bool = False) -> None:
        self.new += not earlier
        if "error" in record:
            self.errors[record.get("kind", "error")] += 1
            return
        self.photos += 1
        self.landmarks[record["landmark"] or predictor.NO_LANDMARK] += 1
        self.unknown += record["landmark"] is None
        self.located += record["source"] == "metadata"

    def as_dict(self) -> dict[str, Any]:
        share = (lambda n: round(n / self.photos, 4) if self.photos else 0.0)
        return {"photos": self.photos, "errors": dict(self.errors), "per_landmark": dict(self.landmarks.most_common()),
                "share_no_known_landmark": share(self.unknown), "share_located_by_metadata": share(self.located),
                "this_run": {"lines": self.new, "skipped_already_tagged": self.skipped,
                             "seconds": round(self.seconds, 2),
                             "photos_per_s": round(self.new / self.seconds, 2) if self.seconds else 0.0}}

    def text(self) -> str:
        d = self.as_dict()
        lines = [f"{d['photos']} photos tagged, {sum(self.errors.values())} unreadable "
                 f"(this run: {self.new} lines in {self.seconds:.1f} s, "
                 f"{d['this_run']['photos_per_s']} photos/s; {self.skipped} already tagged, skipped)"]
        lines += [f"  {count:>8}  {name}" for name, count in self.landmarks.most_common()]
        lines.append(f"no known landmark: {d['share_no_known_landmark']:.1%}; "
                     f"located by metadata (EXIF GPS): {d['share_located_by_metadata']:.1%}")
        if self.errors:
            lines.append("errors: " + ", ".join(f"{kind} {n}" for kind, n in self.errors.most_common()))
        return "\n".join(lines)


# ------------------------------------------------------------------------------------- the run

def _pending(photos: Iterable[Photo], done: set[bytes], summary: Summary) -> Iterator[Photo]:
    for photo in photos:
        if photo_key(photo.file, photo.version) in done:
            summary.skipped += 1
        else:
            yield photo


def _batches(photos: Iterator[Photo], pool: ThreadPoolExecutor, decoder: Decoder,
             size: int) -> Iterator[list[tuple[Photo, Future]]]:
    """Batches of (photo, decoding future), in order; the next batch decodes while this one runs."""
    window: collections.deque = collections.deque()
    exhausted = False
    while True:
        while not exhausted and len(window) < 2 * size:  # bounded: never more than 2 batches in flight
            photo = next(photos, None)
            if photo is None:
                exhausted = True
            else:
                window.append((photo, pool.submit(decoder, photo)))
        if not window:
            return
        yield [window.popleft() for _ in range(min(size, len(window)))]


def _tag_batch(batch: list[tuple[Photo, Future]], labeller: Labeller, onnx_batch: int) -> list[dict]:
    """The batch's lines, in order: predicted in the threads, or here `onnx_batch` photos a run."""
    results, records = [], {}
    for index, (photo, future) in enumerate(batch):
        try:
            results.append((index, photo, *future.result()))
        except Exception as err:  # noqa: BLE001 - any photo's failure is its error line, never the run's end
            records[index] = error_line(photo, err)
    arrays = [r for r in results if isinstance(r[2], np.ndarray)]
    predicted = {}
    for start in range(0, len(arrays), onnx_batch):
        chunk = arrays[start:start + onnx_batch]
        predicted.update(zip((index for index, *_ in chunk), labeller.predictions([a for _, _, a, _ in chunk])))
    for index, photo, result, gps in results:
        records[index] = labeller.line(photo, predicted.get(index, result), gps)
    return [records[i] for i in range(len(batch))]


def run(sources: list[str], config: TagConfig) -> Summary:
    """Tag every photo of `sources` not yet in `config.out`; returns the summary of the whole file."""
    from tqdm import tqdm

    model = predictor.load(config.model, threads=config.threads)
    labeller = Labeller(model, config.k)
    in_threads = config.onnx_batch == 1
    decoder = Decoder.for_model(model, square=not in_threads, labeller=labeller if in_threads else None)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    with lock(config.out):
        drop_partial_line(config.out)
        done = read_done(config.out, summary)
        started = time.perf_counter()
        bar = tqdm(unit=" photos", disable=not config.progress, smoothing=0.1, dynamic_ncols=True)
        try:
            with open(config.out, "a", encoding="utf-8") as out, \
                    ThreadPoolExecutor(config.workers, thread_name_prefix="decode") as pool:
                photos = _pending(iter_photos(sources, config.endpoint_url), done, summary)
                for batch in _batches(photos, pool, decoder, config.batch):
                    records = _tag_batch(batch, labeller, config.onnx_batch)
                    append(out, records)
                    for record in records:
                        summary.add(record)
                    bar.update(len(records))
        finally:
            bar.close()
            summary.seconds = time.perf_counter() - started
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m landmark_classifier.src.tag",
        description="Tag every photo under files, folders or s3:// prefixes with its landmark (or 'no known landmark') "
                    "and its EXIF GPS position, one JSON line per photo appended to --out. Resumable: a rerun skips "
                    "photos already in --out; a killed run loses at most the batch in flight.",
        epilog='Each line: {"file", "landmark" (null: no known landmark), "confidence", "top": [[name, p], ...], '
               '"gps": {"latitude", "longitude"} or null, "source": "metadata" (EXIF GPS) or "model", "version"}; '
               'an unreadable file: {"file", "error", "kind", "version"}. The summary goes to stderr. Exit code 0 '
               'when every photo has its line (error lines included), 2 when the model or --out cannot be used.')
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="image files, folders (walked recursively, image files only) or s3://bucket/prefix")
    parser.add_argument("--out", required=True, type=Path, help="the JSON Lines file to append to (e.g. tags.jsonl)")
    parser.add_argument("--model", type=Path, default=predictor.DEFAULT_MODEL,
                        help="exported predictor, an .onnx file (default: the committed %(default)s)")
    parser.add_argument("-k", type=int, default=5, help="guesses per photo (default: 5)")
    parser.add_argument("--batch", type=int, default=TagConfig.batch,
                        help="lines per write + fsync: a kill loses at most these (default: %(default)s)")
    parser.add_argument("--onnx-batch", type=int, default=1,
                        help="photos per ONNX run (default: 1, each photo at its own size in its thread: "
                             "measured faster on the CPU; N > 1 resizes photos to one size and runs N at once)")
    parser.add_argument("--workers", type=int, default=TagConfig.workers,
                        help="threads decoding and predicting (default: one per core, %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per run (default: 1)")
    parser.add_argument("--endpoint-url", help="S3 endpoint (MinIO, LocalStack); default: boto3's")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--summary-json", type=Path, help="also write the summary here as JSON")
    args = parser.parse_args(argv)
    missing = [source for source in args.sources if not source.startswith("s3://") and not Path(source).exists()]
    if missing:
        parser.error(f"no such file or folder: {', '.join(missing)}")
    for name in ("k", "batch", "onnx_batch", "workers", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    config = TagConfig(args.out, args.model, args.k, args.batch, args.onnx_batch, args.workers, args.threads,
                       args.endpoint_url, progress=not args.quiet)
    try:
        summary = run(args.sources, config)
    except (ModelFileError, OutputLocked, ValueError, OSError) as err:  # OSError: --out cannot be written
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: every photo written to {args.out} is whole; run the same command to go on",
              file=sys.stderr)
        return 130
    print(summary.text(), file=sys.stderr)
    if args.summary_json:
        s3io.write_text(args.summary_json, json.dumps(summary.as_dict(), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
