"""Transfer learning on the cached trunk pass: the cut is exact, the logistic head folds into one
layer, fine-tuning trains only the top, selection uses validation only."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common.backbones import efficientnet_lite0
from landmark_classifier.src import transfer
from landmark_classifier.src.train import History


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    return efficientnet_lite0(pretrained=False)  # the same architecture; no weights needed


def test_trunk_and_top_compute_the_backbones_features(lite0):
    trunk, top = transfer.split(lite0, 2)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        whole = lite0.module.eval()(x)
        assert torch.allclose(top(trunk(x)), whole, atol=1e-5)
    assert not any(p.requires_grad for p in lite0.module.parameters())
    assert len(top.blocks) == 2 and len(trunk.blocks) == len(lite0.module._blocks) - 2
    with pytest.raises(ValueError, match="top_blocks must be in"):
        transfer.split(lite0, 99)


def test_activations_are_cached_with_their_mirrors(lite0, tmp_path):
    trunk, top = transfer.split(lite0, 1)
    images = torch.randint(0, 256, (3, 3, 256, 256), dtype=torch.uint8)
    cache = tmp_path / transfer.cache_name(lite0, 1, images, "train")
    acts = transfer.activations(trunk, lite0, images, batch_size=2, cache_file=cache)
    assert acts.plain.shape == acts.mirror.shape and len(acts) == 3 and not acts.cached and cache.exists()
    again = transfer.activations(trunk, lite0, images, cache_file=cache)
    assert again.cached and torch.equal(again.plain, acts.plain) and again.seconds == acts.seconds
    features = transfer.top_features(top, acts)
    with torch.no_grad():
        x = transfer.normalise(transfer.center_crop(images, 224), lite0)
        expected = (lite0.module(x) + lite0.module(x.flip(3))) / 2
    assert torch.allclose(features, expected, atol=2e-2)  # activations are stored in float16


def test_logistic_head_is_one_linear_layer_chosen_on_validation():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 3
    labels = np.repeat(np.arange(3), 20)
    x = torch.from_numpy(centres[labels] + rng.normal(size=(60, 8)) + 5).float()  # offset: the scaler matters
    y = torch.from_numpy(labels)
    head = transfer.fit_logistic_head(x[::2], y[::2], x[1::2], y[1::2], Cs=(0.01, 1.0))
    assert set(head.searched) == {0.01, 1.0} and head.C in head.searched
    assert head.valid_accuracy == max(head.searched.values()) and head.valid_accuracy > 0.9
    with torch.no_grad():
        predicted = head.linear(x[1::2]).argmax(1)
    assert float((predicted == y[1::2]).float().mean()) == pytest.approx(head.valid_accuracy)


def test_two_classes_give_two_logits():
    x = torch.cat([torch.randn(10, 4) - 2, torch.randn(10, 4) + 2])
    y = torch.tensor([0] * 10 + [1] * 10)
    head = transfer.fit_logistic_head(x, y, x, y, Cs=(1.0,))
    assert head.linear.out_features == 2 and head.valid_accuracy == 1.0


def test_finetuning_trains_a_copy_of_the_top_on_activations(lite0):
    trunk, top = transfer.split(lite0, 1)
    images = torch.randint(0, 256, (6, 3, 256, 256), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    acts = transfer.activations(trunk, lite0, images)
    linear = torch.nn.Linear(1280, 3)
    before = {k: v.clone() for k, v in top.state_dict().items()}
    config = transfer.FinetuneConfig(epochs=2, lr=1e-3, batch_size=4)
    tuned_top, tuned_head, history = transfer.finetune_top(top, linear, acts, labels, acts, labels, config)
    assert len(history.valid_loss) == 2 and 1 <= history.best_epoch <= 2 and len(history.lr) == 2 * 3
    assert all(torch.equal(before[k], v) for k, v in top.state_dict().items())  # the original is untouched
    assert any(not torch.equal(before[k], v) for k, v in tuned_top.state_dict().items())
    assert not any(p.requires_grad for p in tuned_top.parameters())


def _candidate(name, accuracy, loss, seconds=1.0):
    return transfer.Candidate(name, "frozen + logistic head", accuracy, loss, seconds, model=None)


def test_selection_uses_validation_accuracy_then_loss_then_time():
    picked = transfer.select([_candidate("a", 0.95, 0.2), _candidate("b", 0.97, 0.5), _candidate("c", 0.96, 0.1)])
    assert picked.chosen.backbone == "b" and "highest validation accuracy" in picked.reason
    tied = transfer.select([_candidate("a", 0.97, 0.3), _candidate("b", 0.97, 0.2), _candidate("c", 0.97, 0.2, 0.5)])
    assert tied.chosen.backbone == "c" and "shared by 3 candidates" in tied.reason
    with pytest.raises(ValueError, match="no candidates"):
        transfer.select([])


def test_candidate_rows_are_plain_numbers():
    row = transfer.Candidate("efficientnet_lite0", "m", 0.98765, 0.12345, 12.345, model=None,
                             history=History()).row()
    assert row["validation accuracy"] == 0.9877 and row["train seconds"] == 12.3


def test_a_backbone_that_would_overrun_the_budget_is_skipped_with_the_reason(monkeypatch):
    calls = []

    def fake_load(name):
        calls.append(name)
        return name

    def fake_prepare(backbone, train, valid, config, cache_dir):
        acts = transfer.Activations(torch.zeros(1), torch.zeros(1), seconds=300.0)
        return transfer.BackboneData(backbone, None, None, acts, acts, None, None)

    def fake_fit(data, config, extraction):
        return [_candidate(data.backbone, 0.9, 0.3, seconds=extraction + 10)]

    monkeypatch.setattr(transfer, "load_backbone", fake_load)
    monkeypatch.setattr(transfer, "prepare", fake_prepare)
    monkeypatch.setattr(transfer, "fit_candidates", fake_fit)
    config = transfer.TransferConfig(budget_seconds=900)
    comparison = transfer.compare(config, lambda backbone: ((None, None), (None, None)))
    assert calls == ["efficientnet_lite0"]  # 610 s spent; Lite1 projected at ~940 s more
    assert set(comparison.skipped) == {"efficientnet_lite1", "efficientnet_lite2"}
    assert "over the 900 s budget" in comparison.skipped["efficientnet_lite1"]
    calls.clear()
    transfer.compare(transfer.TransferConfig(budget_seconds=None), lambda backbone: ((None, None), (None, None)))
    assert calls == list(transfer.GIGA_FLOPS)
