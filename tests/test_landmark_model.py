"""Scratch CNN shapes, the shared optimisation helpers (common.training), one training step, checkpoints and resume."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from common import training
from landmark_classifier.src import model, train


def test_forward_shapes_and_parameter_count():
    cnn = model.LandmarkCNN(50, (16, 32, 64), blocks_per_stage=2, dropout=0.2)
    assert cnn(torch.randn(2, 3, 64, 64)).shape == (2, 50)
    assert cnn(torch.randn(1, 3, 97, 131)).shape == (1, 50)  # any size: global average pooling
    small = model.LandmarkCNN(50, (16, 32, 64), blocks_per_stage=1)
    assert 0 < model.count_parameters(small) < model.count_parameters(cnn) < 1_000_000
    default = model.LandmarkCNN()
    assert 1_000_000 < model.count_parameters(default) < 2_000_000  # the seed's VGG head alone was larger


@pytest.mark.parametrize("kwargs, message", [({"num_classes": 1}, "num_classes"), ({"widths": ()}, "at least one"),
                                             ({"dropout": 1.0}, "dropout")])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.LandmarkCNN(**kwargs)


def test_optimizer_skips_frozen_parameters_and_decays_only_weights():
    cnn = model.LandmarkCNN(5, (8, 16))
    for p in cnn.stem.parameters():
        p.requires_grad_(False)
    optimizer = training.get_optimizer(cnn, "sgd", lr=0.1, weight_decay=0.01)
    trainable = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not trainable & {id(p) for p in cnn.stem.parameters()}
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])
    for p in cnn.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        training.get_optimizer(cnn)
    with pytest.raises(ValueError, match="unknown optimizer"):
        training.get_optimizer(model.LandmarkCNN(5, (8,)), "lion")


def test_schedules_warm_up_and_decay():
    for name in ("onecycle", "cosine"):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = training.get_scheduler(optimizer, name, total_steps=100, warmup_steps=10)
        rates = []
        for _ in range(100):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        peak = rates.index(max(rates))
        assert 0 < peak < 50 and rates[0] < max(rates) and rates[-1] < 0.05 * max(rates), name
    with pytest.raises(ValueError, match="unknown schedule"):
        training.get_scheduler(optimizer, "step", 10)
    with pytest.raises(ValueError, match="label_smoothing"):
        training.get_loss(1.0)
    assert training.get_loss(0.1).label_smoothing == 0.1


def _loaders(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(24, 3, 32, 32, generator=generator)
    labels = torch.arange(24) % 3
    images[labels == 1, 0] += 1.5  # learnable: class 1 is redder, class 2 bluer
    images[labels == 2, 2] += 1.5
    dataset = TensorDataset(images, labels)
    return (DataLoader(dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed)),
            DataLoader(dataset, batch_size=24))


def _setup(epochs: int):
    torch.manual_seed(0)
    cnn = model.LandmarkCNN(3, (8, 16), dropout=0.0)
    optimizer = training.get_optimizer(cnn, "adamw", lr=3e-3)
    scheduler = training.get_scheduler(optimizer, "cosine", epochs * 3)
    return cnn, optimizer, scheduler


def _opt(optimizer, scheduler, epochs):
    return train.Optimisation(training.get_loss(), optimizer, scheduler, epochs)


def test_training_lowers_the_loss():
    train_loader, valid_loader = _loaders()
    cnn, optimizer, scheduler = _setup(4)
    loss_fn = training.get_loss()
    before, _ = train.evaluate(cnn, valid_loader, loss_fn, torch.device("cpu"))
    history = train.fit(cnn, (train_loader, valid_loader), _opt(optimizer, scheduler, 4), device=torch.device("cpu"))
    after, accuracy = train.evaluate(cnn, valid_loader, loss_fn, torch.device("cpu"))
    # fit returns the best epoch by common.training.BestEpoch: highest accuracy, ties to the lower loss
    best = history.best_epoch - 1  # BestEpoch: the highest accuracy, then the lowest loss (history rounds both)
    assert history.valid_accuracy[best] == max(history.valid_accuracy)
    assert history.valid_loss[best] == min(loss for loss, accuracy in zip(history.valid_loss, history.valid_accuracy)
                                           if accuracy == history.valid_accuracy[best])
    assert after < before and history.valid_loss[best] == pytest.approx(after, rel=1e-4)
    assert accuracy == pytest.approx(history.valid_accuracy[best], abs=1e-4)
    assert len(history.train_loss) == 4 and len(history.lr) == 4 * 3 and 1 <= history.best_epoch <= 4
    assert set(history.curves()) == {"train loss", "valid loss", "valid accuracy"}


def test_checkpoint_resume_continues_where_it_stopped(tmp_path):
    device = torch.device("cpu")
    train_loader, valid_loader = _loaders()
    cnn, optimizer, scheduler = _setup(3)
    train.fit(cnn, (train_loader, valid_loader), _opt(optimizer, scheduler, 2), device=device,
              checkpoint_dir=tmp_path)  # "interrupted" after 2 of 3 epochs (the schedule is for 3)
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()
    saved = torch.load(tmp_path / "last.pt", weights_only=False)
    assert saved["epoch"] == 2 and len(saved["history"]["train_loss"]) == 2

    cnn2, optimizer2, scheduler2 = _setup(3)
    history = train.fit(cnn2, _loaders(), _opt(optimizer2, scheduler2, 3), device=device, checkpoint_dir=tmp_path,
                        resume=True)
    assert len(history.train_loss) == 3 and history.train_loss[:2] == saved["history"]["train_loss"]
    assert len(history.lr) == 9 and history.lr[:6] == saved["history"]["lr"]
    assert torch.load(tmp_path / "last.pt", weights_only=False)["epoch"] == 3
    best = torch.load(tmp_path / "best.pt")
    assert all(torch.equal(best[k], v) for k, v in cnn2.state_dict().items())  # fit returns the best weights


def test_a_diverging_loss_stops_training_with_a_clear_error():
    train_loader, valid_loader = _loaders()
    cnn, optimizer, _ = _setup(1)
    with pytest.raises(FloatingPointError, match="loss became"):
        train.train_one_epoch(cnn, train_loader, lambda out, y: out.sum() * float("nan"), optimizer, None,
                              torch.device("cpu"))
