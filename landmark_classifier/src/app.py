"""The ipywidgets app: upload a photo, see it with its top-5 landmarks as a bar chart.

It uses only the exported TorchScript file. `LandmarkApp.classify` is the callback behind
the upload button; it is a plain method so a headless notebook run (and the tests) can call
it on an image directly. A file that is not a usable image shows the error message, never a
traceback.
"""
from __future__ import annotations

import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import HTML
from IPython.display import Image as PngImage
from matplotlib.figure import Figure

from common import plotting
from common.images import ImageError, load_image
from landmark_classifier.src import predictor as predictor_module


@dataclass
class Result:
    name: str
    top: list[tuple[str, float]]  # empty when the image was rejected
    error: str = ""
    figure: Figure | None = None


class LandmarkApp:
    def __init__(self, predictor_path: str | Path, k: int = 5) -> None:
        self.predictor = predictor_module.load(predictor_path)
        self.k = k
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="Upload photo")
        self.output = widgets.Output()
        self.upload.observe(self._on_upload, names="value")
        self.widget = widgets.VBox([
            widgets.HTML("<b>Where was this photo taken?</b> Upload a photo of a landmark."),
            self.upload, self.output])

    def _on_upload(self, change: dict[str, Any]) -> None:
        for item in change["new"]:  # ipywidgets 8: a tuple of {"name", "content", ...}
            self.classify(bytes(item["content"]), item["name"])

    def classify(self, content: Any, name: str, save_to: str | Path | None = None) -> Result:
        """Classify one upload (bytes, a path, ...) and show the photo and its top-k in the output area."""
        self.output.outputs = ()
        try:
            image = load_image(content, name=name)
            top = predictor_module.top_k(self.predictor, image, self.k, name=name)
        except ImageError as err:
            self._show(HTML(f"<p style='color:#b00020'><b>Cannot classify {html.escape(name)}:</b> "
                            f"{html.escape(str(err))}</p>"))
            return Result(name, [], str(err))
        figure = top_k_chart(top, name, save_to)
        thumbnail = image.copy()
        thumbnail.thumbnail((320, 320))
        self._show(thumbnail, PngImage(data=_png(figure)))
        plt.close(figure)
        return Result(name, top, figure=figure)

    def _show(self, *objects: Any) -> None:
        """Append to the output area by setting the widget's state. Not `with self.output:`, which
        routes the running cell's messages into the widget and has hung headless (papermill) runs
        here, as in jupyter/nbclient#312."""
        for obj in objects:
            self.output.append_display_data(obj)


def _png(figure: Figure) -> bytes:
    """The figure as PNG bytes: displays the same with any matplotlib backend (Agg included)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def top_k_chart(top: list[tuple[str, float]], name: str, save_to: str | Path | None = None) -> Figure:
    """A bar chart of the top-k probabilities (class names without their "NN." prefix)."""
    labels = [label.split(".", 1)[-1].replace("_", " ") for label, _ in top]
    return plotting.bar_chart(labels, [p for _, p in top], xlabel="probability",
                              title=f"Top {len(top)} landmarks: {name}", save_to=save_to)
