"""The predictor: MNIST-style preprocessing of any image, every bad input, the CLI, and the notebook."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from common.images import ImageError
from common.serving import ModelFileError
from mnist_classifier.src import predict
from mnist_classifier.src.model import CNN, MLP, export_onnx


def bar(width: int = 200, height: int = 300, *, dark_on_light: bool = True, mode: str = "L") -> Image.Image:
    """A vertical stroke (a "1") off-centre on a non-square canvas."""
    background, ink = (255, 0) if dark_on_light else (0, 255)
    image = Image.new("L", (width, height), background)
    ImageDraw.Draw(image).rectangle([40, 30, 60, 250], fill=ink)
    return image.convert(mode)


def ink_box(pixels: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(pixels > 0.2)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def test_layout_centres_by_mass_fits_20_pixels_and_keeps_the_aspect_ratio():
    pixels = predict.to_mnist_layout(np.asarray(bar(), dtype=np.float32) / 255)
    assert pixels.shape == (28, 28)
    cy, cx = ndimage.center_of_mass(pixels)
    assert abs(cy - 13.5) <= 0.5 and abs(cx - 13.5) <= 0.5
    height, width = ink_box(pixels)
    assert height == 20 and width <= 3  # a thin stroke stays thin


@pytest.mark.parametrize("dark_on_light", [True, False])
def test_inversion_is_detected_from_the_border(dark_on_light):
    pixels = predict.to_mnist_layout(np.asarray(bar(dark_on_light=dark_on_light), dtype=np.float32) / 255)
    assert pixels[0].max() == 0 and pixels.max() == pytest.approx(1.0, abs=0.05)  # white digit, black frame


def test_explicit_invert_overrides_the_guess():
    light = np.asarray(bar(), dtype=np.float32) / 255
    assert ink_box(predict.to_mnist_layout(light, invert=True)) == ink_box(predict.to_mnist_layout(light))
    with pytest.raises(ValueError, match="blank"):  # read as white-on-black, dark ink is no ink at all
        predict.to_mnist_layout(light, invert=False)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
def test_preprocess_accepts_every_source_and_mode(mode, tmp_path):
    image = bar(mode=mode) if mode != "I;16" else Image.fromarray(np.asarray(bar(), dtype=np.uint16) * 257)
    path = tmp_path / "digit.png"
    image.save(path)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    reference = predict.preprocess(bar())
    for source in (path, str(path), buffer.getvalue(), image, np.asarray(bar())):
        x = predict.preprocess(source)
        assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32  # the served model's input
        assert np.allclose(x, reference, atol=0.05), type(source)
    assert x.min() == 0.0 and x.max() == pytest.approx(1.0, abs=0.05)  # pixels; the graph normalises


def test_jpeg_input(tmp_path):
    path = tmp_path / "digit.jpg"
    bar().convert("RGB").save(path, quality=85)
    assert np.allclose(predict.preprocess(path), predict.preprocess(bar()), atol=0.3)


@pytest.mark.parametrize("source, message", [
    (b"", "0 bytes"),
    (b"definitely not an image", "not an image"),
    (np.zeros((0, 5)), "empty"),
    (Image.new("L", (50, 50), 255), "blank"),
])
def test_bad_inputs_raise_a_clear_value_error(source, message):
    with pytest.raises(ValueError, match=message):
        predict.preprocess(source)


def test_truncated_missing_empty_and_huge_files_name_the_file(tmp_path):
    good = io.BytesIO()
    bar().save(good, "PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.getvalue()[:200])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    huge = tmp_path / "huge.png"
    Image.new("1", (6000, 5000)).save(huge)  # 30 MP: over the predictor's 25 MP limit, small on disk
    for path, message in ((truncated, "cannot decode"), (empty, "empty"), (tmp_path / "missing.png", "no such file"),
                          (huge, "too large")):
        with pytest.raises(ImageError, match=message) as caught:
            predict.preprocess(path)
        assert str(path) in str(caught.value)


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_onnx(MLP((16,)), tmp_path_factory.mktemp("model") / "mlp.onnx", name="mlp",
                       training_run={"profile": "test"})


def test_predictor_returns_a_digit_and_ten_probabilities(exported_model):
    result = predict.DigitPredictor(exported_model).predict(bar())
    assert 0 <= result.digit <= 9 and len(result.probabilities) == 10
    assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-4)
    assert result.confidence == max(result.probabilities)


def test_the_served_model_agrees_with_the_eager_one(tmp_path):
    torch.manual_seed(1)
    model = CNN().eval()
    path = export_onnx(model, tmp_path / "cnn.onnx", name="cnn", training_run={"profile": "test"})
    pixels = predict.preprocess(bar())
    with torch.no_grad():
        eager = model((torch.from_numpy(pixels) - 0.1307) / 0.3081).softmax(1)[0].numpy()
    served = predict.DigitPredictor(path).predict(bar())
    assert np.allclose(served.probabilities, eager, atol=1e-5)
    assert predict.DigitPredictor(path).model.metadata["model_name"] == "cnn"


def test_missing_model_file_is_named(tmp_path):
    with pytest.raises(ModelFileError, match="nope.onnx"):
        predict.DigitPredictor(tmp_path / "nope.onnx")


def test_the_predictor_imports_no_torch(exported_model, tmp_path):
    import subprocess
    import sys

    digit = tmp_path / "one.png"
    bar().save(digit)
    code = ("import sys; from mnist_classifier.src import predict; "
            f"r = predict.DigitPredictor({str(exported_model)!r}).predict({str(digit)!r}); "
            "assert 'torch' not in sys.modules, 'the predictor imported torch'; print(len(r.probabilities))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "10"


def test_cli_prints_one_line_per_image_and_reports_bad_ones(exported_model, tmp_path, capsys):
    good = tmp_path / "one.png"
    bar().save(good)
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    assert predict.main([str(good), str(bad), "--model", str(exported_model)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"{good}: ") and "p=" in out
    assert str(bad) in err and "not an image" in err
    assert predict.main([str(good), "--model", str(tmp_path / "none.onnx")]) == 2
    assert "none.onnx" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict.main(["--help"])
    assert "dark-on-light" in capsys.readouterr().out
