"""The deployable predictor: ONNX and TorchScript export equal eager at any size, ONNX Runtime
serving without torch, top-k, every kind of photo, every bad input, the CLI, the benchmark."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from common.images import ImageError
from common.paths import REPO_ROOT
from common.serving import ModelFileError, load_onnx, load_torchscript, read_metadata
from landmark_classifier import benchmark
from landmark_classifier.src import export, predictor
from tests.landmark_fixtures import CLASSES, encode, tiny_dataset, tiny_export, tiny_predictor  # noqa: F401

STABLE_KEYS = ("class_names", "input", "mean", "std", "model_name", "training_run")


@pytest.fixture(scope="module")
def photo(tiny_dataset) -> Image.Image:
    return Image.open(next((tiny_dataset.root / "test").rglob("*.jpg"))).convert("RGB")


def test_resize_arithmetic_matches_python_round_half_even():
    rng = random.Random(0)
    pairs = [(512, 513), (513, 512), (1080, 1920), (2, 16384), (3, 2), (300, 300)]
    pairs += [(rng.randint(2, 5000), rng.randint(2, 5000)) for _ in range(2000)]
    for height, width in pairs:
        for size in (64, 73, 256, 297):
            short = min(height, width)
            assert export.resized_size(height, width, size) == (round(height * size / short),
                                                                 round(width * size / short)), (height, width, size)
    assert export.round_half_even_div(5, 2) == 2 and export.round_half_even_div(7, 2) == 4  # ties to even


def test_onnx_and_torchscript_equal_eager_at_any_size(tiny_export):
    eager = tiny_export.eager
    session = load_onnx(tiny_export.onnx_path)
    scripted = load_torchscript(tiny_export.torchscript_path)
    sizes = [(1, 3, 640, 360), (1, 3, 512, 513), (1, 3, 1080, 1920), (3, 3, 50, 50), (1, 3, 2, 900)]
    for shape in sizes:
        x = torch.randint(0, 256, shape, dtype=torch.uint8)
        with torch.no_grad():
            expected, expected_score = (t.numpy() for t in eager(x))
            from_script, script_score = (t.numpy() for t in scripted(x))
        outputs = session.run_all(x.numpy())
        from_onnx = outputs["probabilities"]
        assert from_onnx.shape == (shape[0], CLASSES), shape
        assert np.allclose(from_onnx, expected, atol=1e-4), shape
        assert np.allclose(from_script, expected, atol=1e-5), shape
        assert np.allclose(from_onnx.sum(1), 1, atol=1e-5)
        # a closed-set export's known score is the top probability (its rule accepts every photo)
        assert np.allclose(outputs["known_score"], from_onnx.max(1), atol=1e-5), shape
        assert np.allclose(script_score, expected_score, atol=1e-5), shape


def test_metadata_carries_what_a_predictor_needs(tiny_export, tiny_dataset):
    metadata = read_metadata(tiny_export.onnx_path)
    assert all(key in metadata for key in STABLE_KEYS)
    assert metadata["class_names"] == tiny_dataset.class_names
    assert metadata["input"] == "uint8 N x 3 x H x W RGB, any size" and metadata["mirror_average"] is True
    assert metadata["display_names"] == [name.split(".", 1)[1].replace("_", " ") for name in tiny_dataset.class_names]


def test_the_mirror_average_is_what_the_file_computes(tiny_export):
    x = torch.randint(0, 256, (2, 3, 80, 120), dtype=torch.uint8)
    eager = tiny_export.eager
    with torch.no_grad():
        crops = eager.preprocess(x)
        expected = torch.softmax((eager.features(crops) + eager.features(crops.flip(3))) / 2, 1).numpy()
    assert np.allclose(load_onnx(tiny_export.onnx_path).run(x.numpy()), expected, atol=1e-4)


def test_an_oversized_export_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(export, "MAX_FILE_MB", 0.0001)
    from landmark_classifier.src.model import LandmarkCNN

    cnn = LandmarkCNN(2, (4,), dropout=0.0).eval()
    with pytest.raises(ValueError, match="over the 0.0001 MB"):
        export.export_predictor(cnn, export.Preprocessing(40, 32, (0.5,) * 3, (0.5,) * 3),
                                export.ModelCard(["a", "b"], "toy", {}), tmp_path)


def test_top_k_lists_names_and_probabilities_most_likely_first(tiny_predictor, photo):
    model = predictor.load(tiny_predictor[0])
    ranked = predictor.top_k(model, photo, k=5)
    assert len(ranked) == CLASSES  # k is capped by the number of classes
    names, probabilities = zip(*ranked)
    assert set(names) == set(model.class_names) and list(probabilities) == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert len(predictor.top_k(model, photo, k=2)) == 2
    with pytest.raises(ValueError, match="k must be at least 1"):
        predictor.top_k(model, photo, k=0)


def _variants(photo: Image.Image) -> dict[str, bytes]:
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees, as phones store portraits
    sixteen = Image.fromarray((np.asarray(photo.convert("L"), dtype=np.uint16) * 257))
    return {
        "rgba.png": encode(rgba, "PNG"),
        "gray.jpg": encode(photo.convert("L"), "JPEG"),
        "palette.png": encode(photo.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "sixteen_bit.png": encode(sixteen, "PNG"),
        "cmyk.jpg": encode(photo.convert("CMYK"), "JPEG"),
        "exif_rotated.jpg": encode(photo, "JPEG", exif=exif),
        "panorama.jpg": encode(photo.resize((1600, 200)), "JPEG"),
        "phone.jpg": encode(photo.resize((1920, 1080)), "JPEG"),
        "tiny.png": encode(photo.resize((3, 2)), "PNG"),
    }


def test_every_kind_of_real_photo_works(tiny_predictor, photo):
    model = predictor.load(tiny_predictor[0])
    for name, content in _variants(photo).items():
        ranked = predictor.top_k(model, content, name=name)
        assert len(ranked) == CLASSES and sum(p for _, p in ranked) == pytest.approx(1.0, abs=1e-5), name


def test_every_bad_input_raises_an_error_naming_it(tiny_predictor, photo, tmp_path):
    model = predictor.load(tiny_predictor[0])
    jpeg = encode(photo, "JPEG")
    huge = tmp_path / "huge.png"
    Image.new("1", (8000, 7000)).save(huge)  # 56 megapixels, a few KB on disk
    cases = {
        "notes.txt": (b"not an image at all", "not an image"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "cannot decode"),
        "empty.jpg": (b"", "0 bytes"),
        str(huge): (huge, "too large"),
        str(tmp_path / "missing.jpg"): (tmp_path / "missing.jpg", "no such file"),
    }
    for name, (source, message) in cases.items():
        with pytest.raises(ImageError, match=message) as err:
            predictor.top_k(model, source, name=None if isinstance(source, type(tmp_path)) else name)
        assert str(err.value).count(name) == 1  # named once


def test_a_model_file_that_is_not_a_landmark_predictor_is_named(tmp_path, tiny_predictor):
    with pytest.raises(ModelFileError, match="no exported predictor"):
        predictor.load(tmp_path / "none.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(ModelFileError, match="broken.onnx"):
        predictor.load(broken)


def test_cli_prints_top_k_per_image_and_names_bad_files(tiny_predictor, tiny_dataset, tmp_path, capsys):
    images = sorted((tiny_dataset.root / "test").rglob("*.jpg"))[:2]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    header = tmp_path / "header_only.jpg"
    header.write_bytes(b"\xff\xd8\xff\xe0 a truncated header")
    code = predictor.main([*map(str, images), str(bad), str(header), "--model", str(tiny_predictor[0]), "-k", "2"])
    out, err = capsys.readouterr()
    assert code == 1 and f"{bad}: not an image" in err and err.count(str(bad)) == 1
    assert f"{header}: cannot decode the image" in err
    for image in images:
        assert str(image) in out
    assert out.count("  1. ") == 2 and out.count("  2. ") == 2 and "  3. " not in out
    assert predictor.main([str(images[0]), "--model", str(tmp_path / "none.onnx")]) == 2
    assert "no exported predictor" in capsys.readouterr().err
    assert predictor.default_model_path() == REPO_ROOT / "landmark_classifier" / "models" / "landmark_predictor.onnx"


def test_serving_imports_no_torch(tiny_predictor, tiny_dataset):
    image = next((tiny_dataset.root / "test").rglob("*.jpg"))
    code = ("import sys, json\n"
            "from landmark_classifier.src import predictor\n"
            f"model = predictor.load({str(tiny_predictor[0])!r})\n"
            f"top = predictor.top_k(model, {str(image)!r}, 2)\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'top': top}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["torch"] is False and len(answer["top"]) == 2


def test_the_committed_predictor_is_a_complete_small_file():
    path = predictor.default_model_path()
    if not path.exists():
        pytest.skip(f"{path} is not committed yet (transfer_learning.ipynb's run of record writes it)")
    metadata = read_metadata(path)
    assert all(key in metadata for key in STABLE_KEYS) and len(metadata["class_names"]) >= 2
    assert path.stat().st_size <= 30 * 2**20 and path.with_suffix(".pt").stat().st_size <= 30 * 2**20
    model = predictor.load(path)
    probabilities = model.run(np.zeros((1, 3, 300, 200), dtype=np.uint8))
    assert probabilities.shape == (1, len(metadata["class_names"]))


def test_upload_latency_reports_percentiles(tiny_predictor):
    result = benchmark.measure_upload(tiny_predictor[0], benchmark.sample_photo((200, 150)), runs=5, warmup=1)
    assert 0 < result["p50_ms"] <= result["p95_ms"] and result["runs"] == 5 and result["threads"] == 1
    with pytest.raises(ValueError, match="runs must be at least 1"):
        benchmark.measure_upload(tiny_predictor[0], benchmark.sample_photo((200, 150)), runs=0)


@pytest.mark.slow
def test_runtime_comparison_has_both_runtimes_and_ratios(tiny_predictor, capsys):
    rows = benchmark.compare_runtimes(tiny_predictor[0], runs=2, cold_starts=1, batch=4)
    assert [r["runtime"] for r in rows] == ["TorchScript", "ONNX Runtime", "ONNX Runtime speed-up (x)"]
    ort = rows[1]
    assert ort["imports torch"] is False and ort["cold start s"] > 0 and ort["batch-4 images/s"] > 0
    assert all(k in ort for k in ("p50 ms (1 thread)", "p95 ms (2 threads)", "serving peak RSS MB"))
    assert benchmark.main(["--model", str(tiny_predictor[0]), "--runs", "2", "--upload-only"]) == 0
    assert "upload (decode + predict) p50" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        benchmark.main(["--help"])


@pytest.mark.data
def test_the_committed_predictor_scores_the_recorded_accuracy_through_predictor_py(real_data_dir):
    """The README's transfer-learning test accuracy is the shipped file's: the committed ONNX
    predictor, fed every test photo's file through `predictor.py` as the CLI and the app do,
    scores exactly what the run of record reports."""
    from landmark_classifier.src import data, evaluate

    recorded = json.loads((REPO_ROOT / "reports" / "landmark_classifier" / "metrics.json").read_text())
    folder = real_data_dir / (recorded["data"].get("dataset") or "")
    if recorded["data"]["stand_in"] or not (folder / "test").is_dir():
        pytest.skip(f"the record's dataset is not in DATA_DIR ({folder})")
    model = predictor.load(predictor.DEFAULT_MODEL, threads=2)
    landmarks = data.open_dataset(folder)
    assert model.class_names == landmarks.class_names
    paths, labels = data.list_images(folder / "test", landmarks.class_names)
    served = evaluate.evaluate_served(model, paths, labels, landmarks.display_names)
    assert served.accuracy == pytest.approx(recorded["summary"]["transfer learning test accuracy"], abs=1e-4)
