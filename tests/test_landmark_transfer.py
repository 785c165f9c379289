"""The landmark comparison on the shared transfer kit (tests/test_transfer_kit.py tests the kit):
selection uses validation only, a backbone over the time budget is skipped with the reason."""
from __future__ import annotations

import pytest
import torch

from common.training import History
from common.transfer import Activations
from landmark_classifier.src import transfer


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
        acts = Activations(torch.zeros(1), torch.zeros(1), seconds=300.0)
        return transfer.BackboneData(backbone, None, None, acts, acts, None, None, None)

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


def test_prepare_stores_the_frozen_trunk_half_and_keys_its_cache_so(tmp_path):
    """half_trunk: the trunk's weights float16 (the file's room for a second opinion), the fine-tuned
    top's untouched; the activation cache is named for it, so float32 activations are never reused."""
    from common.backbones import efficientnet_lite, stored_half

    backbone = efficientnet_lite(0, pretrained=False)
    images = torch.randint(0, 256, (4, 3, backbone.input_size, backbone.input_size), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 0, 1])
    config = transfer.TransferConfig(backbones=(backbone.name,), top_blocks=1)
    data = transfer.prepare(backbone, (images, labels), (images[:2], labels[:2]), config, tmp_path)
    assert stored_half(data.trunk) and not stored_half(data.top)
    assert any(p.requires_grad is False and p.dtype == torch.float16 for p in data.trunk.parameters())
    assert all(p.dtype == torch.float32 for p in data.top.parameters())
    assert [p.name for p in tmp_path.glob("trunk_pairs_*.pt")] == [f"trunk_pairs_{backbone.name}_top1_crop224_w16.pt"]
    assert data.train.plain.shape[0] == 4
