"""The app page in a real browser: its screenshot for the README, and its timings.

    python -m landmark_classifier.src.app_screenshot            # a real test photo from DATA_DIR
    python -m landmark_classifier.src.app_screenshot --photo my.jpg --runs 5 --out /tmp/shot.png

Serves app.ipynb with Voila on a free 127.0.0.1 port (`app.AppServer`, as `make app` does), drives
headless Debian Chromium with Playwright for Python, and per run: opens the page as a first visit
(a new browser context; timing until the upload button works), uploads the photo (until its card
is shown), a broken file (until its error is shown) and the photo again, then opens the page once
more in the same context (a revisit). Writes the screenshot of the first answer and, beside it,
`<name>.json` with the photo, the answer as the page shows it, the median and worst timings, and
the CPU seconds all processes (browser, server, kernels) spent: on a machine shared with other
jobs the wall times vary with their load, the CPU cost does not. The README report shows both
files (`common/report.py`). The browser test (tests/test_landmark_app_browser.py) uses the same
helpers. Chromium must be Debian's (`apt-get install chromium`): Playwright's own browser
download does not work offline.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from landmark_classifier.src import app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
VIEWPORT = {"width": 1100, "height": 800}
DEFAULT_OUT = app.PROJECT_DIR.parent / "reports" / "landmark_classifier" / "app_screenshot.png"


def launch(playwright: Any) -> Any:
    """Headless Debian Chromium (FileNotFoundError naming it when it is not installed)."""
    if not Path(CHROMIUM).is_file():
        raise FileNotFoundError(f"{CHROMIUM} not found: apt-get install -y chromium chromium-driver")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def open_app(browser: Any, url: str, timeout_s: float = 60) -> tuple[Any, float]:
    """A new page on the app; seconds until the upload button works. `browser` is a Browser (a new
    context: a first visit, nothing cached) or a BrowserContext (a revisit with its cache)."""
    page = browser.new_page(**({"viewport": VIEWPORT} if hasattr(browser, "new_context") else {}))
    start = time.perf_counter()
    page.goto(url, timeout=timeout_s * 1000)
    page.wait_for_selector(".widget-upload:not([disabled])", timeout=timeout_s * 1000)
    return page, time.perf_counter() - start


def cpu_seconds() -> float:
    """CPU time (user + system) used so far by every process this one started: the page server,
    its kernels, Playwright's driver and Chromium. Wall times on a busy machine say little about
    what a page view costs; this does."""
    import psutil

    total = 0.0
    for process in psutil.Process().children(recursive=True):
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:  # it just ended
            pass
    return total


def cards(page: Any) -> int:
    return page.locator(".lm-card").count()


def upload(page: Any, files: list[str | Path], timeout_s: float = 20) -> float:
    """Choose `files` with the upload button; seconds until their cards are on the page."""
    before = cards(page)
    with page.expect_file_chooser(timeout=timeout_s * 1000) as chooser:
        page.click(".widget-upload")
    start = time.perf_counter()
    chooser.value.set_files([str(f) for f in files])
    page.wait_for_function(f"document.querySelectorAll('.lm-card').length >= {before + len(files)}",
                           timeout=timeout_s * 1000)
    page.wait_for_selector(".widget-upload:not([disabled])", timeout=timeout_s * 1000)
    return time.perf_counter() - start


def newest_card_text(page: Any) -> str:
    return page.locator(".lm-card").first.inner_text()


def default_photo(data_dir: str | os.PathLike | None = None) -> Path:
    """A real test photo: the first (by name) of the first landmark in landmark_gldv2/test, under
    `data_dir`, else $DATA_DIR, else the workplace's ../shared/data (as the Makefile chooses)."""
    from common.paths import REPO_ROOT, data_dir as resolve_data_dir

    folders = [resolve_data_dir(data_dir)]
    if data_dir is None and not os.environ.get("DATA_DIR"):
        folders.append(REPO_ROOT.parent / "shared" / "data")
    for folder in folders:
        photos = sorted((folder / "landmark_gldv2" / "test").glob("*/*.jpg"))
        plain = [p for p in photos if "%" not in p.name]  # names as users write them, not URL-encoded
        if photos:
            return (plain or photos)[0]
    raise FileNotFoundError(f"no photos in landmark_gldv2/test under {' or '.join(map(str, folders))}: "
                            "set DATA_DIR or pass --photo")


def measure(photo: Path, out: Path, runs: int = 5, model: str | os.PathLike | None = None,
            log: Any = None) -> dict[str, Any]:
    """Serve the app, drive it `runs` times, save the screenshot of the first answer; returns the record."""
    from playwright.sync_api import sync_playwright

    load_before = os.getloadavg()[0]
    scratch = tempfile.TemporaryDirectory(prefix="landmark_app_")
    broken = Path(scratch.name) / "broken_upload.jpg"  # a truncated copy of the photo
    broken.write_bytes(photo.read_bytes()[:2000])
    timings: dict[str, list[float]] = {"page interactive": [], "page interactive, revisit (browser cache)": [],
                                       "upload -> result": [], "bad file -> error": [],
                                       "same photo again -> result": []}
    cpu_used: dict[str, list[float]] = {"page interactive": [], "upload -> result": []}
    answer = error = ""
    try:
        with app.AppServer(model=model, log=log) as server, sync_playwright() as playwright:
            server.wait_ready()
            time.sleep(5)  # let the pre-heated kernel finish executing the notebook, as for any visitor
            browser = launch(playwright)
            try:
                for run in range(runs):
                    context = browser.new_context(viewport=VIEWPORT)
                    cpu = cpu_seconds()
                    page, seconds = open_app(context, server.url)
                    timings["page interactive"].append(seconds)
                    cpu_used["page interactive"].append(cpu_seconds() - cpu)
                    cpu = cpu_seconds()
                    timings["upload -> result"].append(upload(page, [photo]))
                    cpu_used["upload -> result"].append(cpu_seconds() - cpu)
                    if run == 0:
                        answer = newest_card_text(page)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        page.screenshot(path=str(out), full_page=True)
                    timings["bad file -> error"].append(upload(page, [broken]))
                    error = newest_card_text(page)
                    timings["same photo again -> result"].append(upload(page, [photo]))
                    page.close()
                    time.sleep(5)  # the pool pre-heats the next kernel, as between real visitors
                    page, seconds = open_app(context, server.url)  # the same visitor comes back
                    timings["page interactive, revisit (browser cache)"].append(seconds)
                    context.close()
                    time.sleep(5)
            finally:
                browser.close()
    finally:
        scratch.cleanup()
    model_path = app.resolve_model_path(model)
    from common.serving import read_metadata

    metadata = read_metadata(model_path)
    return {
        "photo": _relative_photo(photo),
        "answer": answer,
        "bad file message": error,
        "model": {"file": model_path.name, "model_name": metadata.get("model_name"),
                  "training_run": metadata.get("training_run")},
        "runs": runs,
        "median_seconds": {k: round(statistics.median(v), 3) for k, v in timings.items()},
        "max_seconds": {k: round(max(v), 3) for k, v in timings.items()},
        "median_cpu_seconds": {k: round(statistics.median(v), 3) for k, v in cpu_used.items()},
        "browser": f"headless Chromium ({CHROMIUM}); a first visit per run (a new browser context, "
                   "nothing cached) and a revisit in the same context",
        "machine": f"{os.cpu_count()} CPU cores shared with other jobs, {platform.machine()}, load average "
                   f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after",
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m landmark_classifier.src.app_screenshot",
    }


def _relative_photo(photo: Path) -> str:
    parts = photo.resolve().parts
    return "/".join(parts[-4:]) if "landmark_gldv2" in parts else photo.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m landmark_classifier.src.app_screenshot",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", type=Path, default=None,
                        help="photo to upload (default: a test photo of DATA_DIR/landmark_gldv2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="screenshot (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=5, help="page views to time (default: %(default)s)")
    parser.add_argument("--model", default=None, help="ONNX predictor (default: the committed one)")
    parser.add_argument("--update-readme", action="store_true",
                        help="then regenerate the README report from reports/ (as the runner does after a run "
                             "of record), so that it shows the new screenshot")
    args = parser.parse_args(argv)
    try:
        photo = args.photo or default_photo()
        if not photo.is_file():
            raise FileNotFoundError(f"{photo}: no such photo")
        record = measure(photo, args.out, args.runs, args.model)
    except (FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{args.out} ({record['photo']})")
    for key, value in record["median_seconds"].items():
        cpu = record["median_cpu_seconds"].get(key)
        print(f"  {key}: {value:.2f} s median of {args.runs}, max {record['max_seconds'][key]:.2f} s"
              + (f"; {cpu:.2f} CPU seconds (all processes, median)" if cpu is not None else ""))
    print(f"  {record['machine']}")
    if args.update_readme:
        from common import paths, report, run

        report.update_readme(paths.REPO_ROOT / "README.md", paths.REPO_ROOT / "reports", list(run.load_projects()))
        print("report section of README.md regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
