"""common.serving: ONNX export verified against eager PyTorch, metadata, ONNX Runtime serving without torch."""
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common import serving


class AnySizeClassifier(nn.Module):
    """Takes what a server receives (uint8 N x 3 x H x W, any size) and resizes it itself."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float() / 255, size=[16, 16], mode="bilinear", antialias=True, align_corners=False)
        return self.fc(self.conv(x).mean((2, 3))).softmax(1)


def images(*sizes, batch=1):
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, generator=generator) for h, w in sizes]


METADATA = {"class_names": ["bicycle", "motorcycle", "other"], "mean": [0.5, 0.5, 0.5],
            "input": "uint8 N x 3 x H x W RGB, any size", "training_run": {"profile": "test"}}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = AnySizeClassifier().eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    serving.export_onnx(model, images((40, 50), batch=2)[0], path, metadata=METADATA, dynamic_hw=True,
                        check_inputs=images((90, 20), (33, 47), batch=3))
    return model, path


def test_export_matches_eager_at_sizes_and_batches_it_never_saw(exported):
    model, path = exported
    inputs = images((512, 513), (1080, 1920), (20, 90), (7, 7)) + images((64, 64), batch=5)
    assert serving.verify_onnx(path, model, inputs) < 1e-5


def test_metadata_travels_in_the_file(exported):
    _, path = exported
    loaded = serving.load_onnx(path)
    assert loaded.metadata == METADATA
    assert serving.read_metadata(path) == METADATA
    assert loaded.class_names == ["bicycle", "motorcycle", "other"]
    assert loaded.input_type == "tensor(uint8)"
    out = loaded.run(images((30, 40), batch=2)[0].numpy())
    assert out.shape == (2, 3) and np.allclose(out.sum(1), 1, atol=1e-5)


def test_a_mismatch_fails_loudly_and_a_failed_export_keeps_the_previous_file(exported, tmp_path):
    model, path = exported
    changed = AnySizeClassifier().eval()  # other weights: the file no longer matches this module
    with pytest.raises(serving.ExportMismatch, match=r"for input \(1, 3, 64, 64\)"):
        serving.verify_onnx(path, changed, images((64, 64)))
    target = tmp_path / "kept.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(serving.ExportMismatch):
        serving.export_onnx(model, images((40, 50))[0], target, metadata={}, atol=-1.0)  # nothing passes
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.onnx"]  # no temporary file left


def test_bad_model_files_are_named(tmp_path):
    with pytest.raises(serving.ModelFileError, match="missing.onnx: no such model file"):
        serving.load_onnx(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    with pytest.raises(serving.ModelFileError, match="garbage.onnx: not a loadable ONNX model"):
        serving.load_onnx(garbage)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        serving.session_options(threads=0)


def test_serving_imports_no_torch(exported):
    _, path = exported
    code = ("import sys, numpy as np; from common import serving; "
            f"m = serving.load_onnx({str(path)!r}, threads=2); "
            "p = m.run(np.zeros((1, 3, 24, 24), np.uint8)); "
            "assert 'torch' not in sys.modules, 'serving imported torch'; print(p.shape)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 3)"


def test_torchscript_round_trip_is_the_seed_format(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval()
    path, how = serving.save_torchscript(model, tmp_path / "m.pt")
    assert how == "scripted"
    x = torch.randn(4, 3, 2, 2)
    assert torch.allclose(serving.load_torchscript(path)(x), model(x))
    with pytest.raises(serving.ModelFileError, match="nope.pt"):
        serving.load_torchscript(tmp_path / "nope.pt")


def test_softmax_is_stable():
    p = serving.softmax(np.array([[1000.0, 1000.0], [0.0, -1000.0]]))
    assert np.allclose(p, [[0.5, 0.5], [1.0, 0.0]])


def test_export_leaves_every_submodule_in_its_mode(tmp_path):
    inner = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.LazyLinear(2)).eval()
    inner(torch.zeros(1, 3, 4, 4))
    wrapper = nn.Sequential(inner)  # new, so in train mode, around a model in eval mode
    serving.export_onnx(wrapper, torch.rand(2, 3, 4, 4), tmp_path / "m.onnx", metadata={})
    serving.save_torchscript(wrapper, tmp_path / "m.pt")
    assert wrapper.training and not any(m.training for m in inner.modules())


def test_runtime_comparison_measures_each_runtime_in_its_own_fresh_process(exported, tmp_path):
    from common.runtime_benchmark import compare

    model, onnx_path = exported
    pt, _ = serving.save_torchscript(model, tmp_path / "m.pt")
    ballast = bytearray(400 * 2**20)  # a big parent must not inflate the children's peak memory
    rows = compare(pt, onnx_path, lambda n: images((24, 24), batch=n)[0].numpy(), model="tiny", repeats=3,
                   batch=4, cold_starts=1)
    del ballast
    ts, ort, ratio = rows
    assert [r["runtime"] for r in rows] == ["TorchScript", "ONNX Runtime", "ONNX Runtime speed-up (x)"]
    assert ts["imports torch"] is True and ort["imports torch"] is False
    assert ort["serving peak RSS MB"] < 300 < ts["serving peak RSS MB"] + 300
    assert ratio["p50 ms (1 thread)"] == round(ts["p50 ms (1 thread)"] / ort["p50 ms (1 thread)"], 2)
    assert ratio["batch-4 images/s"] > 0 and ort["cold start s"] > 0


def test_the_exported_file_names_no_path_of_this_machine(exported):
    from common.paths import REPO_ROOT

    _, path = exported
    assert str(REPO_ROOT).encode() not in path.read_bytes()  # the exporter's stack traces are dropped


def test_report_paths_are_relative_to_the_repository_or_the_data_folder(monkeypatch, tmp_path):
    from common import paths

    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert paths.display(paths.REPO_ROOT / "reports" / "x") == "reports/x"
    assert paths.display(tmp_path / "scones" / "train") == "DATA_DIR/scones/train"
    assert paths.display("/elsewhere/file") == "/elsewhere/file"
