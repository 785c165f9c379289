"""The bulk tagger (`src/tag.py`) against the one-file CLI, in photos per second and peak memory.

    python -m landmark_classifier.tag_benchmark [--photos-dir DIR] [--runs 3] [--many 20000] [--many-runs 1]
                                                [--phone 40] [--phone-size 4032x3024]

In one process, on the real test photos (DATA_DIR/landmark_gldv2/test, 414 photos) unless
--photos-dir is given, each measured --runs times (the median is reported):

- `cli_loop`: the one-file CLI as `python -m landmark_classifier.src.predictor --json PHOTO...` runs it,
  in process: the model loaded once, then `predictor.predict` + the --json line for each file in turn;
- `cli_per_process`: a shell loop starting the CLI once per photo (`for f in *.jpg; do python -m ...
  predictor --json "$f"; done`), on the first --per-process photos only (each start loads ONNX Runtime
  and the model: seconds, not milliseconds);
- `tagger`: the tagger as it runs by default (each photo decoded and predicted at its own size in one of
  the pool's threads, one ONNX Runtime thread each; lines written + fsynced 32 at a time);
- `tagger_onnx_batch16`: the tagger with --onnx-batch 16 (photos resized to one size in the threads,
  16 photos per ONNX run in the main thread);
- `cli_loop_phone`, `tagger_phone`: the first --phone photos re-encoded as phone-sized JPEGs
  (--phone-size, default 4032 x 3024, 12 MP, quality 90), where decoding, not the model, dominates;
- `tagger_<many>`: the tagger on --many photos: the test photos repeated by symlinks in a temp folder
  (so the page cache holds them: this measures decoding and the model, not a disk).

Each row: photos/s and the process's peak resident memory during that measurement (sampled every
20 ms from /proc/self/status), so the tagger's memory on 414 and on 20,000 photos compare directly.
Prints one JSON object (and writes it to --json when given).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from landmark_classifier.src import predictor, tag

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class MeasuredRate:
    """A tagger row of the run of record: photos/s on `cores` logical CPUs (os.cpu_count(), the "cores" of the
    benchmark's JSON; an instance's vCPUs count the same way)."""
    photos: str
    row: str
    photos_per_s: float
    cores: int

    @property
    def per_core(self) -> float:
        return self.photos_per_s / self.cores


# The run of record (`python -m landmark_classifier.tag_benchmark`, MEASURED_ON, this project's 2-core machine):
# the landmark README's table shows these rows and a test checks it says the same. The one place in code for
# these figures: `batch_transform --plan` prices a million photos from them.
MEASURED_ON = "2026-12-07"
TAGGER_RATES = (
    MeasuredRate("the 256-px test photos", "tagger", 50.86, 2),
    MeasuredRate("phone-sized photos (4032 x 3024 JPEGs)", "tagger_phone", 35.47, 2),
)


class PeakRss:
    """The largest VmRSS (MB) of this process while the block runs, sampled every 20 ms."""

    def __enter__(self) -> PeakRss:
        self.peak, self._stop = _rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure(work: Callable[[], int], runs: int) -> dict:
    """Median photos/s of `runs` calls of `work` (which returns how many photos it handled), and the
    peak RSS over all of them."""
    rates = []
    with PeakRss() as rss:
        for _ in range(runs):
            started = time.perf_counter()
            photos = work()
            rates.append(photos / (time.perf_counter() - started))
    return {"photos": photos, "runs": runs, "photos_per_s": round(statistics.median(rates), 2),
            "all_photos_per_s": [round(r, 2) for r in rates], "peak_rss_mb": round(rss.peak, 1)}


def cli_loop(model_path: Path, files: list[Path]) -> Callable[[], int]:
    model = predictor.load(model_path)
    shown = dict(zip(model.class_names, predictor.display_names(model)))

    def work() -> int:
        for file in files:
            json.dumps(predictor.predict(model, file, name=str(file)).as_json(str(file), shown))
        return len(files)
    return work


def cli_per_process(model_path: Path, files: list[Path]) -> Callable[[], int]:
    def work() -> int:
        for file in files:
            subprocess.run([sys.executable, "-m", "landmark_classifier.src.predictor", "--json", "--model",
                            str(model_path), str(file)], cwd=REPO, check=True, capture_output=True)
        return len(files)
    return work


def tagger(model_path: Path, folder: Path, onnx_batch: int, work_dir: Path) -> Callable[[], int]:
    def work() -> int:
        out = Path(tempfile.mkdtemp(dir=work_dir)) / "tags.jsonl"  # a fresh file: nothing to resume
        summary = tag.run([str(folder)], tag.TagConfig(out, model_path, onnx_batch=onnx_batch, progress=False))
        return summary.new
    return work


def reencoded(files: list[Path], size: tuple[int, int], folder: Path) -> Path:
    """`files` resized to `size` (landscape; portrait photos turned) and saved as JPEG quality 90."""
    from PIL import Image

    folder.mkdir(parents=True)
    for i, file in enumerate(files):
        with Image.open(file) as image:
            shape = size if image.width >= image.height else size[::-1]
            image.convert("RGB").resize(shape, Image.Resampling.BICUBIC).save(folder / f"{i:04d}.jpg", quality=90)
    return folder


def repeated(files: list[Path], count: int, folder: Path) -> Path:
    """`count` symlinks to `files` (cycled), 1,000 a sub-folder, as a big library's layout."""
    for i in range(count):
        link = folder / f"{i // 1000:03d}" / f"{i:06d}{files[i % len(files)].suffix.lower()}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(files[i % len(files)].resolve())
    return folder


def photos_in(folder: Path) -> list[Path]:
    return [Path(photo.file) for photo in tag.iter_photos([str(folder)])]


@dataclass(frozen=True)
class Plan:
    """What to time besides the photos themselves."""
    runs: int = 3
    many: int = 20000
    many_runs: int = 1
    per_process: int = 20
    phone: int = 40
    phone_size: tuple[int, int] = (4032, 3024)


def benchmark(photos_dir: Path, model_path: Path, plan: Plan = Plan()) -> dict:
    files = photos_in(photos_dir)
    if not files:
        raise FileNotFoundError(f"{photos_dir}: no photos to time")
    result = {"photos_dir": str(photos_dir), "model": str(model_path), "cores": os.cpu_count(),
              "plan": asdict(plan), "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "rows": {}}
    rows, runs = result["rows"], plan.runs
    with tempfile.TemporaryDirectory(prefix="tag_benchmark_") as work_dir:
        work = Path(work_dir)
        rows["cli_loop"] = measure(cli_loop(model_path, files), runs)
        if plan.per_process:
            rows["cli_per_process"] = measure(cli_per_process(model_path, files[:plan.per_process]), runs)
        rows["tagger"] = measure(tagger(model_path, photos_dir, 1, work), runs)
        rows["tagger_onnx_batch16"] = measure(tagger(model_path, photos_dir, 16, work), runs)
        if plan.phone:
            phone = reencoded(files[:plan.phone], plan.phone_size, work / "phone")
            rows["cli_loop_phone"] = measure(cli_loop(model_path, photos_in(phone)), runs)
            rows["tagger_phone"] = measure(tagger(model_path, phone, 1, work), runs)
        if plan.many:
            folder = repeated(files, plan.many, work / "many")
            rows[f"tagger_{plan.many}"] = measure(tagger(model_path, folder, 1, work), plan.many_runs)
    base = {name: rows["cli_loop_phone" if "phone" in name else "cli_loop"]["photos_per_s"] for name in rows}
    result["speedup_vs_cli_loop"] = {name: round(row["photos_per_s"] / base[name], 2) for name, row in rows.items()}
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m landmark_classifier.tag_benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    data_dir = Path(os.environ.get("DATA_DIR", REPO.parent / "shared" / "data"))
    parser.add_argument("--photos-dir", type=Path, default=data_dir / "landmark_gldv2" / "test",
                        help="the photos to time (default: %(default)s)")
    parser.add_argument("--model", type=Path, default=predictor.DEFAULT_MODEL, help="default: %(default)s")
    parser.add_argument("--runs", type=int, default=3, help="runs per row on --photos-dir (median; default: 3)")
    parser.add_argument("--many", type=int, default=20000, help="photos of the big run (0: none; default: 20000)")
    parser.add_argument("--many-runs", type=int, default=1, help="runs of the big one (default: 1)")
    parser.add_argument("--per-process", type=int, default=20,
                        help="photos for the one-process-per-photo loop (0: skip; default: 20)")
    parser.add_argument("--phone", type=int, default=40, help="photos re-encoded phone-sized (0: skip; default: 40)")
    parser.add_argument("--phone-size", default="4032x3024", help="their size, WxH (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.many_runs < 1:
        parser.error("--runs and --many-runs must be at least 1")
    try:
        phone_size = tuple(int(v) for v in args.phone_size.lower().split("x"))
        assert len(phone_size) == 2 and min(phone_size) > 0
    except (ValueError, AssertionError):
        parser.error(f"--phone-size must be WxH, e.g. 4032x3024, got {args.phone_size!r}")
    plan = Plan(args.runs, args.many, args.many_runs, args.per_process, args.phone, phone_size)
    result = benchmark(args.photos_dir, args.model, plan)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
