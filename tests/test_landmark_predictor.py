"""The TorchScript predictor: export equals eager, top-5 format, every kind of photo, every bad input, the CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from common.backbones import efficientnet_lite0
from common.images import ImageError
from landmark_classifier import benchmark
from landmark_classifier.src import predictor, transfer
from tests.landmark_fixtures import CLASSES, encode, tiny_dataset, tiny_predictor  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def photo(tiny_dataset) -> Image.Image:
    return Image.open(next((tiny_dataset.root / "test").rglob("*.jpg"))).convert("RGB")


def test_scripted_export_equals_eager_for_any_size_and_dtype(tiny_predictor):
    path, eager = tiny_predictor
    exported = predictor.load(path)
    assert list(exported.class_names) == list(eager.class_names)
    with torch.no_grad():
        for image in (torch.randint(0, 256, (3, 120, 90), dtype=torch.uint8),  # portrait, uint8
                      torch.rand(2, 3, 50, 300),  # a batch of float panoramas smaller than the crop
                      torch.randint(0, 256, (1, 40, 40), dtype=torch.uint8)):  # grayscale
            out = exported(image)
            assert torch.allclose(out, eager(image), atol=1e-6)
            assert out.shape[1] == CLASSES and torch.allclose(out.sum(1), torch.ones(len(out)), atol=1e-5)


def test_traced_efficientnet_export_equals_eager(tmp_path):
    backbone = efficientnet_lite0(pretrained=False)
    model = transfer.build(backbone, 4).eval()
    args = (["a", "b", "c", "d"], list(backbone.mean), list(backbone.std), 256, 224)
    path, how = predictor.export(model, *args, tmp_path / "lite0.pt")
    assert how == "traced"
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(predictor.load(path)(image), predictor.Predictor(model, *args).eval()(image), atol=1e-5)


def test_top_k_lists_names_and_probabilities_most_likely_first(tiny_predictor, photo):
    module = predictor.load(tiny_predictor[0])
    ranked = predictor.top_k(module, photo, k=5)
    assert len(ranked) == CLASSES  # k is capped by the number of classes
    names, probabilities = zip(*ranked)
    assert set(names) == set(module.class_names) and list(probabilities) == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert len(predictor.top_k(module, photo, k=2)) == 2


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
        "tiny.png": encode(photo.resize((3, 2)), "PNG"),
    }


def test_every_kind_of_real_photo_works(tiny_predictor, photo):
    module = predictor.load(tiny_predictor[0])
    for name, content in _variants(photo).items():
        ranked = predictor.top_k(module, content, name=name)
        assert len(ranked) == CLASSES and sum(p for _, p in ranked) == pytest.approx(1.0, abs=1e-5), name


def test_every_bad_input_raises_an_error_naming_it(tiny_predictor, photo, tmp_path):
    module = predictor.load(tiny_predictor[0])
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
            predictor.top_k(module, source, name=None if isinstance(source, type(tmp_path)) else name)
        assert name in str(err.value)


def test_cli_prints_top_k_per_image_and_names_bad_files(tiny_predictor, tiny_dataset, tmp_path, capsys):
    images = sorted((tiny_dataset.root / "test").rglob("*.jpg"))[:2]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    code = predictor.main([*map(str, images), str(bad), "--model", str(tiny_predictor[0]), "-k", "2"])
    out, err = capsys.readouterr()
    assert code == 1 and f"{bad}: not an image" in err
    for image in images:
        assert str(image) in out
    assert out.count("  1. ") == 2 and out.count("  2. ") == 2 and "  3. " not in out
    assert predictor.main([str(images[0]), "--model", str(tmp_path / "none.pt")]) == 2
    assert "no exported predictor" in capsys.readouterr().err


def test_benchmark_reports_percentiles(tiny_predictor, capsys):
    result = benchmark.measure_latency(tiny_predictor[0], benchmark.sample_photo((200, 150)), runs=5, warmup=1,
                                       threads=1)
    assert 0 < result["p50_ms"] <= result["p95_ms"] and result["runs"] == 5 and result["threads"] == 1
    assert benchmark.main(["--model", str(tiny_predictor[0]), "--runs", "2", "--threads", "1"]) == 0
    assert "p50" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        benchmark.main(["--help"])
