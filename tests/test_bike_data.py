from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bike_sharing_autogluon.src import data
from tests.bike_fixtures import uci_hour, write_kaggle_dir


def test_uci_derivation_splits_days_and_formats_numbers_like_kaggle():
    hour = uci_hour(months=(1,))
    hour.loc[0, ["temp", "atemp", "hum", "windspeed"]] = [0.24, 0.2879, 0.81, 0.0]
    hour.loc[1, ["temp", "atemp", "hum", "windspeed"]] = [1.0, 0.5, 0.8, 0.3881]
    texts = data.kaggle_files_from_uci(hour)

    train_lines = texts["train.csv"].splitlines()
    assert train_lines[0] == "datetime,season,holiday,workingday,weather,temp,atemp,humidity,windspeed,casual,registered,count"
    first = train_lines[1].split(",")
    assert first[0] == "2011-01-01 00:00:00"
    assert first[5:9] == ["9.84", "14.395", "81", "0"]
    assert train_lines[2].split(",")[5:9] == ["41", "25", "80", "26.0027"]
    assert len(train_lines) - 1 == 19 * 24
    test_lines = texts["test.csv"].splitlines()
    assert len(test_lines) - 1 == 12 * 24 and test_lines[1].startswith("2011-01-20 00:00:00,")
    sample = texts["sampleSubmission.csv"].splitlines()
    assert sample[0] == "datetime,count" and sample[1] == "2011-01-20 00:00:00,0"
    assert all(text.endswith("\n") and "\r" not in text for text in texts.values())


def test_uci_truth_covers_test_days_only():
    truth = data.truth_from_uci(uci_hour(months=(1,)))
    assert len(truth) == 12 * 24 and truth.index.day.min() == 20


def test_read_kaggle_dir_round_trip(tmp_path):
    folder = write_kaggle_dir(tmp_path)
    train, test, sample = data.read_kaggle_dir(folder)
    assert list(train.columns) == data.COLUMNS["train.csv"]
    assert pd.api.types.is_datetime64_any_dtype(train["datetime"]) and train["count"].dtype.kind in "iu"
    assert len(test) == len(sample) == (12 + 9) * 24  # Jan 20-31, Feb 20-28


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.replace("windspeed,casual", "wind,casual", 1), r"missing column\(s\) \['windspeed'\]"),
    (lambda t: t.replace("2011-01-01 00:00:00,1,", "2011-01-01 00:00:00,x,", 1),
     r"column 'season' line 2 has 'x', expected a number"),
    (lambda t: t.replace("2011-01-01 05:00:00", "2011-13-01 05:00:00", 1), r"column 'datetime' line 7 .*expected a datetime"),
    (lambda t: t.rsplit(",", 2)[0] + "\n", r"column '(registered|count)' has 1 empty value.*truncated"),
    (lambda t: t.splitlines()[0] + "\n", r"header but no rows"),
    (lambda t: "", r"is empty \(0 bytes\)"),
])
def test_bad_train_csv_names_file_and_column(tmp_path, mutate, message):
    folder = write_kaggle_dir(tmp_path)
    path = folder / "train.csv"
    path.write_text(mutate(path.read_text()))
    with pytest.raises(ValueError, match=message) as err:
        data.read_kaggle_csv(path)
    assert str(path) in str(err.value)


def test_test_and_sample_submission_must_match(tmp_path):
    folder = write_kaggle_dir(tmp_path)
    sample = folder / "sampleSubmission.csv"
    lines = sample.read_text().splitlines()
    sample.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"test has 504 rows but the sample submission has 503"):
        data.read_kaggle_dir(folder)
    lines[5] = "2011-01-20 09:00:00,0"
    sample.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"'datetime' differs on line 6"):
        data.read_kaggle_dir(folder)


def test_load_prefers_data_dir_files(tmp_path):
    write_kaggle_dir(tmp_path)
    bike = data.load(tmp_path, allow_network=False)
    assert not bike.stand_in and "Kaggle competition files" in bike.source
    assert len(bike.train) == (19 + 19) * 24


def test_load_derives_kaggle_files_from_uci_hour_csv_in_data_dir(tmp_path, monkeypatch):
    folder = tmp_path / "bike_sharing"
    folder.mkdir()
    hour = uci_hour()
    hour.to_csv(folder / "hour.csv", index=False)
    with pytest.raises(ValueError, match=rf"hour.csv has {len(hour)} rows, the UCI dataset has 17379"):
        data.load(tmp_path, allow_network=False)
    monkeypatch.setattr(data, "UCI_ROWS", len(hour))  # the fixture is two months, not two years
    bike = data.load(tmp_path, allow_network=False)
    assert "UCI" in bike.source and not bike.stand_in
    assert (folder / "train.csv").exists() and bike.truth is not None and len(bike.truth) == len(bike.test)


def test_load_falls_back_to_labelled_stand_in(tmp_path):
    pytest.importorskip("ISLP", reason="the stand-in comes from the ISLP package")
    bike = data.load(tmp_path, allow_network=False)
    assert bike.stand_in and "ISLP" in bike.source
    assert bike.train["datetime"].dt.year.unique().tolist() == [2011]
    assert bike.train["datetime"].dt.day.max() == 19 and bike.test["datetime"].dt.day.min() == 20
    assert len(bike.truth) == len(bike.test)


def test_broken_uci_zip_is_named(tmp_path):
    (tmp_path / "bike_sharing").mkdir()
    (tmp_path / "bike_sharing" / data.UCI_ZIP).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"bike\+sharing\+dataset.zip: not a readable UCI hour.csv"):
        data.load(tmp_path, allow_network=False)


def test_no_network_error_says_what_to_place_where(tmp_path, monkeypatch):
    from common.downloads import DownloadError

    def offline(url, dest_dir, **kwargs):
        raise DownloadError(f"could not download {url}; place bike+sharing+dataset.zip in {dest_dir}/")

    monkeypatch.setattr(data, "fetch", offline)
    monkeypatch.setattr(data, "kaggle_credentials_available", lambda: False)
    monkeypatch.setattr(data, "islp_as_uci_hour", lambda: (_ for _ in ()).throw(ImportError("no ISLP")))
    with pytest.raises(FileNotFoundError, match=r"train.csv, test.csv and sampleSubmission.csv.*bike_sharing"):
        data.load(tmp_path)


def test_validation_split_holds_out_days_15_to_19():
    train, _, _ = (pd.read_csv(pd.io.common.StringIO(t), parse_dates=["datetime"])
                   for t in data.kaggle_files_from_uci(uci_hour(months=(1,))).values())
    fit, valid = data.validation_split(train)
    assert fit["datetime"].dt.day.max() == 14 and set(valid["datetime"].dt.day) == {15, 16, 17, 18, 19}


def test_block_folds_validate_every_training_hour_once_by_blocks_of_days():
    train, _, _ = (pd.read_csv(pd.io.common.StringIO(t), parse_dates=["datetime"])
                   for t in data.kaggle_files_from_uci(uci_hour(months=(1, 2))).values())
    folds = data.block_folds(train)
    assert len(folds) == 4
    held_out = np.concatenate([valid for _, valid in folds])
    assert sorted(held_out) == list(range(len(train)))  # each hour validated exactly once
    day = train["datetime"].dt.day
    for (fit, valid), (first, last) in zip(folds, data.DAY_BLOCKS):
        assert not set(fit) & set(valid) and len(fit) + len(valid) == len(train)
        assert set(day.iloc[valid]) == set(range(first, last + 1))  # the same block of days ...
        assert set(train["datetime"].dt.month.iloc[valid]) == {1, 2}  # ... in every month
    assert list(data.day_blocks(pd.Series(pd.to_datetime(["2011-01-05 00:00", "2011-01-06 00:00", "2011-02-14 00:00",
                                                           "2011-02-15 23:00"])))) == [0, 1, 2, 3]


def test_block_folds_refuse_test_days_and_single_blocks():
    stamps = pd.Series(pd.to_datetime(["2011-01-19 23:00", "2011-01-20 00:00"]))
    with pytest.raises(ValueError, match=r"2011-01-20 00:00:00 is on day 20, outside every block"):
        data.day_blocks(stamps)
    one_block = pd.DataFrame({"datetime": pd.to_datetime(["2011-01-01", "2011-02-03"])})
    with pytest.raises(ValueError, match="at least 2 of the blocks"):
        data.block_folds(one_block)


@pytest.mark.data
def test_real_kaggle_files_load_and_uci_derivation_is_byte_identical_for_2011(real_data_dir):
    """ISLP ships UCI's 2011 hours: deriving Kaggle's files from them must give Kaggle's 2011 lines exactly."""
    folder = real_data_dir / "bike_sharing"
    train, test, sample = data.read_kaggle_dir(folder)
    assert (len(train), len(test), len(sample)) == (10886, 6493, 6493)
    pytest.importorskip("ISLP", reason="UCI's 2011 hours come from the ISLP package")
    derived = data.kaggle_files_from_uci(data.islp_as_uci_hour())
    for name, text in derived.items():
        real = (folder / name).read_text().splitlines(keepends=True)
        real_2011 = "".join([real[0]] + [line for line in real[1:] if line.startswith("2011-")])
        assert text == real_2011, name


def test_kaggle_download_failure_says_what_to_do(tmp_path, monkeypatch):
    import sys
    import types

    class RefusingApi:
        def authenticate(self):
            pass

        def competition_download_files(self, *args, **kwargs):
            raise PermissionError("403 Forbidden")

    # `import kaggle` itself authenticates, so the whole package is replaced by a stand-in
    for name in ("kaggle", "kaggle.api", "kaggle.api.kaggle_api_extended"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["kaggle.api.kaggle_api_extended"].KaggleApi = RefusingApi
    with pytest.raises(RuntimeError, match=r"PermissionError: 403 Forbidden\). Accept the rules .*sampleSubmission"):
        data.download_from_kaggle(tmp_path / "bike_sharing")
