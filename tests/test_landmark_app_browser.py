"""The landmark app as a user meets it: Voila serves app.ipynb, headless Chromium uploads files.

Starts the page server on a free 127.0.0.1 port (as `make app` does), opens the page with Playwright
driving Debian's Chromium, uploads a real photo (DATA_DIR/landmark_gldv2; a generated JPEG without
it), a photo of no landmark, a broken file, two files at once (one of them the first photo again) and a 14 MB photo, and reads
the page's text. The
committed predictor answers. Everything started is stopped by its PID, also when the test fails.
Timings are not asserted here: `python -m landmark_classifier.src.app_screenshot` measures them.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from landmark_classifier.src import app, openset
from landmark_classifier.src import app_screenshot as browser_tools

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(browser_tools.CHROMIUM).is_file(),
                       reason=f"needs Debian's Chromium at {browser_tools.CHROMIUM}: "
                              "apt-get install -y chromium chromium-driver (.ci/run does)"),
]

PERCENT = re.compile(r"^(\d{1,3}\.\d%|<0\.1%)$")


def a_photo(tmp_path: Path) -> Path:
    try:
        return browser_tools.default_photo()
    except FileNotFoundError:  # no real data here: any JPEG will do, the committed model answers something
        rng = np.random.default_rng(0)
        path = tmp_path / "generated_photo.jpg"
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(path)
        return path


def top5_rows(card) -> list[tuple[str, str]]:
    rows = card.locator("table.lm-top tr")
    return [(rows.nth(i).locator(".lm-name").inner_text(), rows.nth(i).locator(".lm-pct").inner_text())
            for i in range(rows.count())]


def test_upload_photos_and_a_broken_file_in_a_real_browser(tmp_path):
    from playwright.sync_api import sync_playwright

    model = app.resolve_model_path()
    assert model.is_file(), f"{model}: the committed predictor is missing"
    class_names = set(app.LandmarkApp(model).display_names.values())  # what the page calls them
    photo = a_photo(tmp_path)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photo.read_bytes()[:1500])
    nothing = tmp_path / "coffee.jpg"
    openset.everyday_photos()["skimage coffee"].save(nothing, quality=90)
    second = tmp_path / "second.png"
    Image.open(photo).convert("RGB").rotate(90, expand=True).save(second)

    log_path = tmp_path / "voila.log"
    with open(log_path, "w") as log, app.AppServer(log=log) as server, sync_playwright() as playwright:
        server.wait_ready()
        chromium = browser_tools.launch(playwright)
        try:
            page, _ = browser_tools.open_app(chromium, server.url, timeout_s=45)
            try:
                browser_tools.upload(page, [photo])
                card = page.locator(".lm-card").first
                rows = top5_rows(card)
                assert len(rows) == 5 and all(name in class_names for name, _ in rows), rows
                assert all(PERCENT.match(pct) for _, pct in rows), rows
                assert photo.name in card.inner_text() and "Top 5 landmarks" in card.inner_text()
                assert card.locator("img").evaluate("img => img.naturalWidth") > 0  # the preview shows

                # a photo of no landmark (scikit-image's coffee cup): the page says so, the guesses greyed
                browser_tools.upload(page, [nothing])
                card = page.locator(".lm-card").first
                assert f"none of the {len(class_names)} landmarks I know" in card.inner_text(), card.inner_text()
                assert "Best guesses" in card.inner_text() and len(top5_rows(card)) == 5
                assert card.locator("table.lm-guesses").count() == 1
                browser_tools.upload(page, [broken])
                error = page.locator(".lm-card").first.inner_text().strip()
                assert error.startswith("Cannot classify broken.jpg: "), error
                assert page.locator("body").inner_text().count("broken.jpg") == 1

                browser_tools.upload(page, [photo, second])  # after the error: two at once, one seen before
                newest = [page.locator(".lm-card").nth(i) for i in range(2)]
                assert photo.name in newest[0].inner_text() and "second.png" in newest[1].inner_text()
                assert top5_rows(newest[0]) == rows  # the same photo again, the same answer
                assert len(top5_rows(newest[1])) == 5
                assert page.locator(".lm-card").count() == 5

                # over tornado's default 10 MiB websocket message: the upload must still arrive
                big = tmp_path / "big_photo.jpg"
                rng = np.random.default_rng(1)
                Image.fromarray(rng.integers(0, 255, (3000, 4000, 3), dtype=np.uint8)).save(big, quality=95)
                assert big.stat().st_size > 10 * 2**20
                browser_tools.upload(page, [big], timeout_s=60)
                assert len(top5_rows(page.locator(".lm-card").first)) == 5
            except Exception:
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                raise
        finally:
            chromium.close()
    assert server.process.poll() is not None  # stopped
    assert "Traceback" not in log_path.read_text()
