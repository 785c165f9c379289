"""The shared transfer kit (common.transfer) and the training rules every loop uses (common.training):
the cut is exact, activations are cached per image content with their mirrors (both engines agree),
the logistic head folds into one layer, fine-tuning trains a copy of the top and keeps the best epoch
by the one rule, with drop connect as an explicit option."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common import transfer
from common.backbones import efficientnet_lite0
from common.training import BestEpoch


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    return efficientnet_lite0(pretrained=False)  # the same architecture; no weights needed


def _trunk(lite0, top_blocks=1, size=64):
    """((prepare, trunk), top): what ActivationCache and the top take."""
    trunk, top = transfer.split(lite0, top_blocks)
    return (transfer.Prepare(lite0, size, "crop"), trunk), top


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


def test_prepare_crops_or_resizes_and_normalises(lite0):
    images = torch.randint(0, 256, (2, 3, 80, 80), dtype=torch.uint8)
    cropped = transfer.Prepare(lite0, 64, "crop")(images)
    expected = (images[:, :, 8:72, 8:72].float() / 255 - torch.tensor(lite0.mean).view(1, 3, 1, 1)) / \
        torch.tensor(lite0.std).view(1, 3, 1, 1)
    assert torch.allclose(cropped, expected, atol=1e-5)
    assert transfer.Prepare(lite0, 48, "resize")(images).shape == (2, 3, 48, 48)
    with pytest.raises(ValueError, match="how must be"):
        transfer.Prepare(lite0, 48, "squash")


def test_activations_are_cached_per_image_content_with_their_mirrors(lite0, tmp_path):
    trunk, top = _trunk(lite0)
    images = torch.randint(0, 256, (3, 3, 72, 72), dtype=torch.uint8)
    path = tmp_path / "acts.pt"
    cache = transfer.ActivationCache(*trunk, path, engine="torch", batch_size=2)
    acts = cache(images)
    assert acts.plain.shape == acts.mirror.shape and len(acts) == 3 and not acts.cached and path.exists()
    assert cache.computed == 3 and acts.plain.dtype == torch.float16
    again = transfer.ActivationCache(*trunk, path, engine="torch")  # a new process: read from the file
    subset = again(images[[2, 0]])
    assert subset.cached and again.computed == 0 and torch.equal(subset.plain, acts.plain[[2, 0]])
    assert subset.seconds <= acts.seconds
    more = again(torch.cat([images[:1], images[:1].flip(2)]))  # one new image: only it runs
    assert again.computed == 1 and not more.cached
    features = transfer.mirror_mean(top, acts)
    with torch.no_grad():
        x = transfer.Prepare(lite0, 64, "crop")(images)
        expected = (lite0.module(x) + lite0.module(x.flip(3))) / 2
    assert torch.allclose(features, expected, atol=2e-2)  # activations are stored in float16
    with pytest.raises(ValueError, match="engine must be"):
        transfer.ActivationCache(*trunk, None, engine="tensorrt")


def test_the_mirror_is_of_the_prepared_image_as_served(lite0):
    """73 -> 64 px leaves margins of 4 and 5 pixels: mirroring the photo before the crop would shift the
    mirror by a pixel against the predictor, which flips the crop (Lite2's 297 -> 260 px is such a crop)."""
    (prepare, trunk), _ = _trunk(lite0, size=64)
    images = torch.randint(0, 256, (2, 3, 73, 73), dtype=torch.uint8)
    pair = transfer.ActivationCache(prepare, trunk, None, engine="torch")._run(images)  # float32, before storage
    with torch.no_grad():
        expected = trunk(prepare(images).flip(3))
        shifted = trunk(prepare(images.flip(3)))
    mirror = pair[len(images):]
    assert (mirror - expected).abs().max() < 1e-3 * (mirror - shifted).abs().max()


def test_onnxruntime_engine_agrees_with_torch(lite0, tmp_path):
    trunk, _ = _trunk(lite0, top_blocks=4)
    images = torch.randint(0, 256, (2, 3, 72, 72), dtype=torch.uint8)
    by_torch = transfer.ActivationCache(*trunk, None, engine="torch")(images)
    by_ort = transfer.ActivationCache(*trunk, tmp_path / "acts.pt", engine="onnxruntime")(images)
    assert torch.allclose(by_ort.plain.float(), by_torch.plain.float(), atol=2e-2)
    assert torch.allclose(by_ort.mirror.float(), by_torch.mirror.float(), atol=2e-2)
    assert list(tmp_path.glob("acts.3x72x72.onnx"))  # exported once per input size, beside the cache


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


def _acts(lite0):
    trunk, top = _trunk(lite0)
    images = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return top, transfer.ActivationCache(*trunk, None, engine="torch")(images), torch.tensor([0, 1, 2, 0, 1, 2])


def test_finetuning_trains_a_copy_of_the_top_and_keeps_the_best_epoch(lite0):
    top, acts, labels = _acts(lite0)
    linear = torch.nn.Linear(1280, 3)
    before = {k: v.clone() for k, v in top.state_dict().items()}
    config = transfer.FinetuneConfig(epochs=3, lr=1e-3, batch_size=4)
    tuned_top, tuned_head, history = transfer.fit_top(top, linear, acts, labels, acts, labels, config)
    assert len(history.valid_loss) == 3 and len(history.lr) == 3 * 3
    best = history.best_epoch - 1  # BestEpoch: the highest accuracy, then the lowest loss (history rounds both)
    top_accuracy = max(history.valid_accuracy)
    assert history.valid_accuracy[best] == top_accuracy
    assert history.valid_loss[best] == min(loss for loss, accuracy in zip(history.valid_loss, history.valid_accuracy)
                                           if accuracy == top_accuracy)
    logits = transfer.mirror_mean(nn.Sequential(tuned_top, tuned_head), acts)
    assert float(nn.functional.cross_entropy(logits, labels)) == pytest.approx(history.valid_loss[best], abs=1e-4)
    assert all(torch.equal(before[k], v) for k, v in top.state_dict().items())  # the original is untouched
    assert any(not torch.equal(before[k], v) for k, v in tuned_top.state_dict().items())
    assert not any(p.requires_grad for p in tuned_top.parameters())
    again = transfer.fit_top(top, linear, acts, labels, acts, labels, config)[2]
    assert again.train_loss == history.train_loss  # reproducible: seeded dropout and batch order


def test_drop_connect_is_an_explicit_option_and_batch_norm_keeps_imagenet_statistics(lite0):
    top, acts, labels = _acts(lite0)
    stats = {k: v.clone() for k, v in top.state_dict().items() if "running" in k}
    runs = {}
    for drop_connect in (False, True):
        config = transfer.FinetuneConfig(epochs=1, lr=1e-3, batch_size=4, dropout=0.0, drop_connect=drop_connect)
        tuned, _, history = transfer.fit_top(top, torch.nn.Linear(1280, 3), acts, labels, None, None, config)
        assert all(torch.equal(stats[k], tuned.state_dict()[k]) for k in stats)  # BatchNorm never re-estimated
        assert history.best_epoch == 0 and not history.valid_loss  # no validation: the last epoch
        runs[drop_connect] = history.train_loss[0]
    assert runs[True] != runs[False]  # drop connect really trains (a random depth per sample)


def test_best_epoch_rule_is_accuracy_then_loss_then_the_earlier_epoch():
    module = nn.Linear(1, 1)
    best = BestEpoch()
    assert best.update(1, 0.90, 0.50, module)
    assert not best.update(2, 0.89, 0.10, module)  # lower loss, lower accuracy: not better
    assert best.update(3, 0.90, 0.40, module)      # same accuracy, lower loss
    assert not best.update(4, 0.90, 0.40, module)  # a full tie keeps the earlier epoch
    with torch.no_grad():
        module.weight.fill_(7.0)
    best.restore(module)
    assert best.epoch == 3 and float(module.weight.detach()) != 7.0
