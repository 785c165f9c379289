"""The landmark app: upload photos, see each one's landmark, or "none of the landmarks I know",
with its five most likely landmarks.

`app.ipynb` only calls `page()`; `make app` serves that notebook as a web page with Voila
(`python -m landmark_classifier.src.app --help`). The app runs the committed ONNX predictor with
ONNX Runtime through `predictor.py` (the CLI's code): no torch import, so the page is interactive
seconds after it opens, and an upload is answered in a fraction of a second.

Each upload gets a card: the photo (a JPEG thumbnail in an `ipywidgets.Image`), its top-5 as
text (names, percentages) drawn as a bar chart. Several files at once give several cards; the
newest batch goes on top. A file that is not a usable image gets one message that names it, and
the app keeps working. `LandmarkApp.classify` is the per-file step, callable without a browser
(the unit tests do).
"""
from __future__ import annotations

import argparse
import html
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ipywidgets as widgets
from PIL import Image

from common.images import ImageError, load_image
from common.serving import ModelFileError
from landmark_classifier.src import predictor

PROJECT_DIR = Path(__file__).resolve().parents[1]
NOTEBOOK = PROJECT_DIR / "app.ipynb"
MODEL_ENV = "LANDMARK_MODEL"  # the page's model when the notebook's MODEL parameter is None
PREVIEW_PIXELS = 320          # the preview's longest side
MAX_CARDS = 24                # older results are dropped from the page beyond this


def default_model_path() -> Path:
    """The committed predictor (written by transfer_learning.ipynb's run of record)."""
    return predictor.default_model_path()


def resolve_model_path(model: str | os.PathLike | None = None) -> Path:
    """`model`, else $LANDMARK_MODEL, else the committed predictor."""
    return Path(model or os.environ.get(MODEL_ENV) or default_model_path()).expanduser()


def display_name(class_name: str) -> str:
    """A class folder name as people read it: "06.Niagara_Falls" -> "Niagara Falls"."""
    return re.sub(r"^\d+[._ -]", "", class_name).replace("_", " ").strip() or class_name


def decode_upload(content: Any, name: str, min_side: int | None = None) -> Image.Image:
    """An upload as an RGB image (ImageError naming it when it is not one).

    A JPEG whose short side is at least twice `min_side` is decoded at 1/2, 1/4 or 1/8 scale
    (libjpeg's DCT scaling, `Image.draft`), keeping the short side >= `min_side`: the model shrinks
    it to its own input size anyway. Measured on a 4032 x 3024 phone photo on 2 busy cores: decode
    0.79 -> 0.19 s, the model's resize + forward pass 0.72 -> 0.06 s, the preview 0.42 -> 0.03 s."""
    if min_side and isinstance(content, (bytes, bytearray)) and bytes(content[:2]) == b"\xff\xd8":
        try:
            image = Image.open(io.BytesIO(content))
            image.draft("RGB", (min_side, min_side))
        except Exception:  # noqa: BLE001 - not decodable this way: load_image says why below
            pass
        else:
            return _load(image, name)
    return _load(content, name)


def _load(source: Any, name: str) -> Image.Image:
    try:
        return load_image(source, name=name)
    except OSError as err:  # PIL's "Truncated File Read" in a JPEG header escapes load_image
        raise ImageError(f"{name}: cannot decode the image ({err})") from None


def error_message(name: str, err: Exception) -> str:
    """One sentence that names the file once ("Cannot classify x.png: the file is empty")."""
    reason = str(err).strip()
    if reason.startswith(f"{name}: "):  # ImageError messages start with the file's name
        reason = reason[len(name) + 2:]
    if not isinstance(err, ImageError):
        reason = f"unexpected error ({type(err).__name__}: {reason})"
    return f"Cannot classify {name}: {reason}"


def _percent(p: float) -> str:
    return "<0.1%" if p < 0.0005 else f"{p:.1%}"


def top_k_html(top: list[tuple[str, float]], names: dict[str, str] | None = None, *, guesses: bool = False) -> str:
    """The top-k as text, one row per landmark with its percentage and a bar of that length.
    `names` maps class names to what the page shows (default: `display_name`); `guesses=True`
    greys them out (the photo shows none of the landmarks the model knows)."""
    names = names or {}
    rows = []
    for rank, (label, p) in enumerate(top, 1):
        width = max(0.0, min(100.0, 100 * p))
        rows.append(
            f"<tr><td class='lm-rank'>{rank}.</td>"
            f"<td class='lm-name'>{html.escape(names.get(label) or display_name(label))}</td>"
            f"<td class='lm-pct'>{_percent(p)}</td><td class='lm-bar-cell' aria-hidden='true'>"
            f"<div class='lm-bar' style='width:{width:.1f}%'></div></td></tr>")
    caption = "Best guesses (none of them is likely)" if guesses else f"Top {len(top)} landmarks"
    return (f"<table class='lm-top{' lm-guesses' * guesses}' style='border-collapse:collapse;min-width:360px'>"
            f"<caption style='text-align:left;font-weight:bold'>{caption}</caption>"
            + "".join(rows) + "</table>")


STYLE = """<style>
.lm-top td {padding: 2px 6px; vertical-align: middle; font-size: 14px}
.lm-rank {color: #666; text-align: right}
.lm-pct {text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap}
.lm-bar-cell {width: 200px}
.lm-bar {height: 14px; background: #1f77b4; border-radius: 2px; min-width: 1px}
.lm-error {color: #b00020; font-weight: bold}
.lm-guesses td {color: #999}
.lm-guesses .lm-bar {background: #ccc}
.lm-none {color: #444; font-weight: bold}
</style>"""


def _thumbnail_jpeg(image: Any) -> bytes:
    preview = image.copy()
    preview.thumbnail((PREVIEW_PIXELS, PREVIEW_PIXELS))
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


@dataclass
class Result:
    name: str
    top: list[tuple[str, float]] = field(default_factory=list)  # empty when the file was rejected
    landmark: str | None = None  # the class name; None: no known landmark (or an error)
    error: str = ""
    seconds: float = 0.0
    card: widgets.Widget | None = None


class LandmarkApp:
    """The upload button, a status line and one result card per uploaded file."""

    def __init__(self, model_path: str | os.PathLike | None = None, k: int = 5, threads: int | None = None) -> None:
        self.model_path = resolve_model_path(model_path)
        threads = threads or max(1, min(4, os.cpu_count() or 1))
        self.model = predictor.load(self.model_path, threads=threads)  # checks the metadata and input type
        self.class_names = self.model.class_names  # fails now (naming the file) if the metadata lacks them
        # the names people read: the model's own (metadata "display_names"), else from the class folders
        shown = self.model.metadata.get("display_names") or [display_name(c) for c in self.class_names]
        self.display_names = dict(zip(self.class_names, shown))
        self.k = k
        # big JPEGs are decoded at a reduced scale that keeps twice the short side the model resizes to
        resize = self.model.metadata.get("resize_size")
        self.decode_side = 2 * int(resize) if resize else None
        self.upload = widgets.FileUpload(accept="image/*", multiple=True, description="Upload photos",
                                         button_style="primary", layout=widgets.Layout(width="auto"))
        self.status = widgets.HTML("Choose one or more photos (JPEG, PNG, ...).")
        self.results = widgets.VBox()
        self.upload.observe(self._on_upload, names="value")
        landmarks = ", ".join(self.display_names.values())
        self.widget = widgets.VBox([
            widgets.HTML(f"{STYLE}<p>The model knows {len(self.class_names)} landmarks: "
                         f"{html.escape(landmarks)}. A photo of anything else gets "
                         f"\"none of the {len(self.class_names)} landmarks I know\".</p>"),
            widgets.HBox([self.upload, self.status], layout=widgets.Layout(align_items="center")),
            self.results], layout=widgets.Layout(padding="8px"))

    def _on_upload(self, change: dict[str, Any]) -> None:
        items = change["new"]  # ipywidgets 8: a tuple of {"name", "content", "type", ...}
        if not items:
            return  # our own reset below
        self.upload.disabled = True
        self.status.value = f"Classifying {len(items)} file{'s' * (len(items) > 1)}..."
        start = time.perf_counter()
        try:
            self.classify_many([(bytes(item["content"]), item["name"]) for item in items])
        finally:
            # Forget the upload: the same file chosen again is then a change, so it is classified again.
            self.upload.value = ()
            self.upload.disabled = False
        self.status.value = (f"{len(items)} file{'s' * (len(items) > 1)} classified in "
                             f"{time.perf_counter() - start:.2f} s.")

    def classify_many(self, files: list[tuple[Any, str]]) -> list[Result]:
        """Classify a batch of (content, name) and put its cards on top of the earlier ones."""
        results = [self.classify(content, name) for content, name in files]
        cards = [r.card for r in results if r.card is not None]
        self.results.children = tuple(cards + list(self.results.children))[:MAX_CARDS]
        return results

    def classify(self, content: Any, name: str) -> Result:
        """One file (bytes, a path, ...) -> its Result with a card to show; never raises for bad input."""
        start = time.perf_counter()
        try:
            image = decode_upload(content, name, self.decode_side)
            answer = predictor.predict(self.model, image, self.k, name=name)
            preview = _thumbnail_jpeg(image)
        except Exception as err:  # noqa: BLE001 - any failure is shown on the page; the app keeps serving
            message = error_message(name, err)
            card = widgets.HTML(f"<p class='lm-error' role='alert'>{html.escape(message)}</p>")
            card.add_class("lm-card")
            return Result(name, error=message, seconds=time.perf_counter() - start, card=card)
        if answer.landmark is None:
            verdict = f"<span class='lm-none'>none of the {len(self.class_names)} landmarks I know</span>"
        else:
            verdict = f"{html.escape(self.display_names[answer.landmark])} ({_percent(answer.confidence)})"
        card = widgets.HBox([
            widgets.Image(value=preview, format="jpeg", layout=widgets.Layout(max_width=f"{PREVIEW_PIXELS}px")),
            widgets.HTML(f"<div style='padding-left:16px'><div><b>{html.escape(name)}</b>: {verdict}</div>"
                         f"{top_k_html(answer.top, self.display_names, guesses=answer.landmark is None)}</div>"),
        ], layout=widgets.Layout(align_items="flex-start", margin="8px 0",
                                 border_bottom="1px solid #ddd", padding="0 0 8px 0"))
        card.add_class("lm-card")
        return Result(name, answer.top, answer.landmark, seconds=time.perf_counter() - start, card=card)


def page(model: str | os.PathLike | None = None) -> widgets.Widget:
    """What app.ipynb shows: the app, or a message naming the model file when it cannot load."""
    try:
        return LandmarkApp(model).widget
    except ModelFileError as err:
        return widgets.HTML(
            f"<p class='lm-error' style='color:#b00020'><b>The app cannot start:</b> {html.escape(str(err))}.</p>"
            "<p>The predictor is committed as <code>landmark_classifier/models/landmark_predictor.onnx</code>; "
            "<code>make run PROJECTS=landmark_classifier</code> exports it again.</p>")


def top_k_chart(top: list[tuple[str, float]], name: str, save_to: str | os.PathLike | None = None):
    """The top-k as a matplotlib bar chart (for reports; the page draws its own bars)."""
    from common import plotting

    return plotting.bar_chart([display_name(label) for label, _ in top], [p for _, p in top],
                              xlabel="probability", title=f"Top {len(top)} landmarks: {name}", save_to=save_to)


# ------------------------------------------------------------------------------ the page server

def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# An upload travels to the kernel as one websocket message; tornado's default limit (10 MiB) drops
# the connection for a larger photo and the page stops answering. 64 MiB takes any phone photo.
MAX_UPLOAD_BYTES = 64 * 2**20
# Measured in headless Chromium on 2 busy cores: loading only the widget extensions (not every
# JupyterLab extension in the venv, e.g. plotly's 4.8 MB bundle) saves 2-5 s per page view, and
# a pre-heated kernel (the notebook already executed when a visitor arrives) 1-2 s more.
VOILA_ARGS = ("--theme=light", "--preheat_kernel=True", "--pool_size=1",
              f"--Voila.tornado_settings={{'websocket_max_message_size': {MAX_UPLOAD_BYTES}}}",
              "--VoilaConfiguration.extension_allowlist=@jupyter-widgets/jupyterlab-manager",
              "--VoilaConfiguration.extension_allowlist=@voila-dashboards/widgets-manager8",
              # Each page view gets its own kernel, which Voila keeps after the page is closed (measured:
              # one more python process per view); shut down those left idle with no page for 2 minutes.
              "--MappingKernelManager.cull_interval=30", "--MappingKernelManager.cull_idle_timeout=120")


class AppServer:
    """Voila serving app.ipynb on 127.0.0.1, in its own process group (stopped by its PID)."""

    def __init__(self, port: int | None = None, model: str | os.PathLike | None = None,
                 log: Any = None, voila_args: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = dict(os.environ)
        if model:
            env[MODEL_ENV] = str(Path(model).resolve())
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        command = [sys.executable, "-m", "voila", str(NOTEBOOK), f"--port={self.port}", "--no-browser",
                   "--Voila.ip=127.0.0.1", "--Voila.port_retries=0", *VOILA_ARGS, *voila_args]
        self.process = subprocess.Popen(command, env=env, cwd=PROJECT_DIR, start_new_session=True,
                                        stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds until the server answers (RuntimeError if it exits or does not answer in time)."""
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"voila exited with code {self.process.returncode} before serving {self.url}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return time.perf_counter() - start
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"voila did not answer on {self.url} within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the server and its kernels: SIGTERM to its process group, SIGKILL if it lingers."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        else:  # the server is gone; its kernels may not be
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def __enter__(self) -> AppServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m landmark_classifier.src.app",
        description="Serve the landmark app (app.ipynb) as a web page with Voila on 127.0.0.1 and print its "
                    "URL; Ctrl+C stops it. `jupyter lab landmark_classifier/app.ipynb` opens the same notebook.")
    parser.add_argument("--port", type=int, default=None, help="port to serve on (default: a free one)")
    parser.add_argument("--model", default=None,
                        help=f"ONNX predictor (default: ${MODEL_ENV}, else {default_model_path()})")
    args = parser.parse_args(argv)
    model = resolve_model_path(args.model)
    if not model.is_file():
        print(f"error: {model}: no such model file (the committed predictor is {default_model_path()}; "
              "`make run PROJECTS=landmark_classifier` exports it)", file=sys.stderr)
        return 2
    # Ctrl+C (SIGINT) and SIGTERM both stop the server and its kernels, also when started in the background
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = AppServer(args.port, model, log=sys.stderr)
    try:
        server.wait_ready()
        print(f"The landmark app is at {server.url}  (Ctrl+C stops it)", flush=True)
        server.process.wait()
    except KeyboardInterrupt:
        pass
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
