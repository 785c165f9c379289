"""Data module on generated folder trees: layout checks, the offline fallback, splits, decoding, stats, transforms."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from landmark_classifier.src import config, data, results, standin_photos
from tests.landmark_fixtures import CLASSES, tiny_dataset  # noqa: F401 (fixture)


def test_validate_layout_accepts_the_fixture_and_names_each_problem(tiny_dataset, tmp_path):
    assert len(data.validate_layout(tiny_dataset.root)) == CLASSES  # any number of classes >= 2
    assert data.layout_counts(tiny_dataset.root, tiny_dataset.class_names) == {"train": 18, "test": 6}
    with pytest.raises(ValueError, match="has 3 class folders, expected 50"):
        data.validate_layout(tiny_dataset.root, 50)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dataset.root, broken)
    shutil.rmtree(broken / "test" / tiny_dataset.class_names[0])
    (broken / "test" / "99.Elsewhere").mkdir()
    with pytest.raises(ValueError, match="list different classes"):
        data.validate_layout(broken, CLASSES)
    shutil.rmtree(broken / "train")
    with pytest.raises(ValueError, match=r"broken/train is missing"):
        data.validate_layout(broken, CLASSES)


def test_empty_class_folder_is_named(tiny_dataset, tmp_path):
    broken = tmp_path / "empty_class"
    shutil.copytree(tiny_dataset.root, broken)
    folder = broken / "train" / tiny_dataset.class_names[1]
    for image in folder.iterdir():
        image.unlink()
    with pytest.raises(ValueError, match=f"{tiny_dataset.class_names[1]} holds no images"):
        data.validate_layout(broken, CLASSES)


def test_a_broken_real_folder_is_an_error_not_a_silent_fallback(tmp_path):
    standin_photos.generate(tmp_path / data.FOLDER, classes=1, train_per_class=1, test_per_class=1)
    with pytest.raises(ValueError, match="has 1 class folder.*at least 2"):
        data.locate(tmp_path, allow_download=False)


def test_display_names_come_from_the_folder_names():
    assert data.display_name("06.Niagara_Falls") == "Niagara Falls"
    assert data.display_name("11.Sydney_Opera_House") == "Sydney Opera House"
    assert data.display_name("Stonehenge") == "Stonehenge" and data.display_name("07") == "07"
    assert data.display_name("08.St._Peter's_Basilica") == "St. Peter's Basilica"


def test_the_dataset_parameter_names_any_folder_in_the_layout(tmp_path, capsys):
    standin_photos.generate(tmp_path / "my_landmarks", classes=2, train_per_class=2, test_per_class=1)
    standin_photos.generate(tmp_path / data.GLDV2_FOLDER, classes=3, train_per_class=1, test_per_class=1)
    found = data.locate(tmp_path, dataset="my_landmarks", allow_download=False)
    assert not found.stand_in and found.root == tmp_path / "my_landmarks" and len(found.class_names) == 2
    assert found.counts == {"train": 4, "test": 2} and "real photos from my_landmarks/" in found.source
    assert "2 classes, 4 train / 2 test images" in capsys.readouterr().out
    with pytest.raises(ValueError, match="DATASET='nowhere'.*is not a folder"):
        data.locate(tmp_path, dataset="nowhere")


def test_without_the_udacity_set_gldv2_comes_before_the_stand_in(tmp_path):
    standin_photos.generate(tmp_path / data.GLDV2_FOLDER, classes=3, train_per_class=1, test_per_class=1)
    found = data.locate(tmp_path, allow_download=False)
    assert not found.stand_in and found.name == data.GLDV2_FOLDER and "not the Udacity 50" in found.source
    standin_photos.generate(tmp_path / data.FOLDER, classes=2, train_per_class=1, test_per_class=1)
    assert data.locate(tmp_path, allow_download=False).name == data.FOLDER  # the Udacity set comes first


def test_unreadable_images_are_skipped_with_a_warning_naming_them(tiny_dataset, tmp_path):
    import shutil

    broken = tmp_path / "with_bad_file"
    shutil.copytree(tiny_dataset.root, broken)
    bad = broken / "train" / tiny_dataset.class_names[0] / "zz_truncated.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    landmarks = data.LandmarkData(broken, tiny_dataset.class_names, "test", True)
    with pytest.warns(UserWarning, match="zz_truncated.jpg"):
        splits = data.load_splits(landmarks, 32, tmp_path / "cache", valid_fraction=1 / 3)
    assert len(splits.train[1]) + len(splits.valid[1]) == 18 and len(splits.skipped) == 1
    assert str(bad) in splits.skipped[0]


def test_a_phone_sized_jpeg_is_decoded_at_reduced_scale(tmp_path):
    from PIL import Image

    path = tmp_path / "phone.jpg"
    Image.new("RGB", (4032, 3024), (200, 30, 30)).save(path, quality=80)
    image = data.open_reduced(path, 64)
    assert 128 <= min(image.size) < 3024 and image.mode == "RGB"
    assert data.square_uint8(image, 64).shape == (3, 64, 64)


def test_offline_falls_back_loudly_to_the_labelled_stand_in(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(data.STANDIN_SIZES, "small", {"classes": 2, "train_per_class": 5, "test_per_class": 2})
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    found = data.locate(tmp_path, standin_size="small")
    assert found.stand_in and "stand-in" in found.source and len(found.class_names) == 2
    assert "STAND-IN DATA" in capsys.readouterr().out
    assert found.root.parent == tmp_path and (found.root / "standin.json").exists()


def test_failed_download_falls_back_to_the_stand_in(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise data.DownloadError(f"could not download the dataset from {data.URL}: ConnectionError: no network\n"
                                 "To work offline, place landmark_images.zip in DATA_DIR/")

    monkeypatch.setattr(data, "fetch", offline)
    monkeypatch.setitem(data.STANDIN_SIZES, "small", {"classes": 2, "train_per_class": 5, "test_per_class": 2})
    found = data.locate(tmp_path, allow_download=True, standin_size="small")
    assert found.stand_in and "the download failed: ConnectionError" in found.note


def test_stratified_split_is_seeded_and_keeps_class_shares():
    labels = np.repeat(np.arange(5), 20)
    train_idx, valid_idx = data.stratified_split(labels, 0.2, seed=3)
    assert len(train_idx) == 80 and len(valid_idx) == 20 and not set(train_idx) & set(valid_idx)
    assert np.bincount(labels[valid_idx]).tolist() == [4] * 5
    assert np.array_equal(valid_idx, data.stratified_split(labels, 0.2, seed=3)[1])
    assert not np.array_equal(valid_idx, data.stratified_split(labels, 0.2, seed=4)[1])
    with pytest.raises(ValueError, match="valid_fraction"):
        data.stratified_split(labels, 1.5)


def test_load_splits_decodes_once_and_caches(tiny_dataset, tmp_path, monkeypatch):
    splits = data.load_splits(tiny_dataset, 40, tmp_path, valid_fraction=1 / 3)
    assert splits.train[0].shape == (12, 3, 40, 40) and splits.train[0].dtype == torch.uint8
    assert len(splits.valid[1]) == 6 and sorted(splits.valid[1].tolist()) == [0, 0, 1, 1, 2, 2]
    assert splits.test[0].shape == (6, 3, 40, 40) and len(splits.test_paths) == 6
    assert all(0 < m < 1 for m in splits.mean) and all(0 < s < 1 for s in splits.std)
    assert len(list(tmp_path.glob("images_40_*.pt"))) == 2 and len(list(tmp_path.glob("stats_*.json"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data, "load_image", no_decoding)
    again = data.load_splits(tiny_dataset, 40, tmp_path, valid_fraction=1 / 3)
    assert torch.equal(again.train[0], splits.train[0]) and again.mean == splits.mean


def test_channel_stats_match_numpy():
    images = torch.randint(0, 256, (7, 3, 9, 11), dtype=torch.uint8)
    mean, std = data.channel_stats(images)
    values = images.numpy().astype(np.float64) / 255
    assert np.allclose(mean, values.mean(axis=(0, 2, 3)), atol=1e-4)
    assert np.allclose(std, values.std(axis=(0, 2, 3)), atol=1e-4)


def test_square_uint8_keeps_the_centre_of_a_panorama():
    from PIL import Image

    panorama = Image.new("RGB", (400, 100), (255, 0, 0))
    panorama.paste((0, 0, 255), (150, 0, 250, 100))  # blue centre
    square = data.square_uint8(panorama, 32)
    assert square.shape == (3, 32, 32) and square[2, 16, 16] > 200 and square[0, 16, 16] < 60


def test_transforms_give_normalised_float_crops_and_loaders_batch_them():
    images = torch.randint(0, 256, (6, 3, 73, 73), dtype=torch.uint8)
    labels = torch.arange(6) % 3
    for transform in (data.train_transform(64, [0.5] * 3, [0.25] * 3),
                      data.train_transform(64, [0.5] * 3, [0.25] * 3, trivial_augment=False),
                      data.eval_transform(64, [0.5] * 3, [0.25] * 3)):
        out = transform(images[0])
        assert out.shape == (3, 64, 64) and out.dtype == torch.float32 and out.abs().max() <= 2.0 + 1e-6
    loader = data.make_loader(images, labels, data.eval_transform(64, [0.5] * 3, [0.25] * 3), batch_size=4,
                              shuffle=True, workers=0)
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [4, 2] and batches[0][0].shape == (4, 3, 64, 64)
    assert data.loader_workers() >= 0


def test_profiles_are_defined_for_both_kinds_of_data():
    assert list(config.PROFILES) == ["tiny", "quick", "full"]
    for profile in config.PROFILES:
        for stand_in in (True, False):
            budget = config.config_for(profile).budget(stand_in)
            assert budget.scratch.resize_size >= budget.scratch.image_size and budget.scratch.epochs >= 1
            assert budget.transfer.backbones[0] == "efficientnet_lite0"
    with pytest.raises(ValueError, match="unknown profile 'huge'; choose from tiny, quick, full"):
        config.config_for("huge")


def test_notebooks_share_metrics_json_by_read_modify_write(tmp_path, tiny_dataset):
    from common import report

    def table(title, value):
        return {"title": title, "columns": ["v"], "rows": [[value]]}

    results.update_metrics(tmp_path, profile="quick", data=tiny_dataset, summary={"a": 1}, tables=[table("T1", 1)])
    results.update_metrics(tmp_path, profile="quick", data=tiny_dataset, summary={"b": 2},
                           tables=[table("T1", 9), table("T2", 2)], app={"x": 1})
    metrics = report.read_metrics(tmp_path)
    assert metrics["summary"] == {"a": 1, "b": 2} and metrics["app"] == {"x": 1}
    assert [(t["title"], t["rows"]) for t in metrics["tables"]] == [("T1", [[9]]), ("T2", [[2]])]
    assert metrics["data"]["stand_in"] is True and metrics["profile"] == "quick"
    results.update_metrics(tmp_path, profile="full", data=tiny_dataset, summary={"c": 3})
    assert report.read_metrics(tmp_path)["summary"] == {"c": 3}  # another profile's leftovers are dropped
